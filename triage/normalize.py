"""Text normalisation before tokenising, keeping a map back to the original text.

Every pass rewrites the text with a regular expression and carries an ``origin`` list
along: ``origin[i]`` is the index in the original text of normalised character ``i``.
Reasons can then point at the words the person actually typed, whatever the passes did
(NFKC, elongation, masking symbols, spacing, emoji).

What the passes do is configured in ``content/triage/normalize.yaml``; this module only
knows how to apply them.
"""

from __future__ import annotations

import bisect
import importlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jaconv

# Code points that are not valid in UTF-8 on their own (lone surrogates) or that a
# person never types on purpose (controls other than newline and tab).
_SURROGATES = re.compile("[\ud800-\udfff]")
# Two or more of a vowel after a kana of that vowel, at a word's end: いるうう, やだああ, むりいい
_VOWEL_TAIL = re.compile("(?P<k>[ぁ-ゖ])(?P<v>[あいうえお])(?P=v)+(?=[^ぁ-ゖ]|$)")
_VOWEL_OF: dict[str, str] = {}
for _row, _vowel in (
    ("あかさたなはまやらわがざだばぱぁゃ", "あ"),
    ("いきしちにひみりぎじぢびぴぃ", "い"),
    ("うくすつぬふむゆるぐずづぶぷぅゅ", "う"),
    ("えけせてねへめれげぜでべぺぇ", "え"),
    ("おこそとのほもよろをごぞどぼぽぉょ", "お"),
):
    for _kana in _row:
        _VOWEL_OF[_kana] = _vowel


def _drop_vowel_tail(m: re.Match[str]) -> str:
    k, v = str(m.group("k")), str(m.group("v"))
    if _VOWEL_OF.get(k) != v or k == v:
        return m.group()
    # 死ぬううう -> 死ぬ, やだああ -> やだ; but 大きいいい -> 大きい (adjectives end in い)
    return k + v if v in "いえ" else k


_REPEATED_MARKS = re.compile("(?P<p>[。、！？!?…])(?P=p)+")
# One kana word of three to five letters typed again straight after itself (しにたいしにたい
# しにたい): the dictionary cuts the run across the joins (し|に|たいし|に|...), so a sentence
# end goes between the copies. Only words ending as a predicate does (-い, -る, -た, -ぬ, -て,
# -う): a sound word (ガチャガチャ, ぴんぽんぴんぽん) is one word and stays whole.
_REPEATED_WORD = re.compile("(?P<w>[ぁ-ゖ]{2,4}[いるたぬてう]|[ァ-ヺ]{2,4}[イルタヌテウ])(?=(?P=w))")
_HALF_KANA = re.compile("[\uff66-\uff9d]{2,}")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ZERO_WIDTH = re.compile("[\u200b-\u200f\u2028-\u202f\u2060-\u206f\ufeff\ufe00-\ufe0f\U000e0000-\U000e007f]+")

HIRAGANA = "ぁ-ゖ"
KATAKANA = "ァ-ヺ"
KANJI = "一-鿿々〆ヶ"
JA_CHARS = f"{HIRAGANA}{KATAKANA}ー{KANJI}"

_KATA_TO_HIRA = {cp: cp - 0x60 for cp in range(ord("ァ"), ord("ヶ") + 1)}


def katakana_to_hiragana(text: str) -> str:
    """The second, phonetic reading: katakana folded into hiragana, one character for one."""
    return text.translate(_KATA_TO_HIRA)


_FOLD = {**_KATA_TO_HIRA, **{c: c + 32 for c in range(ord("A"), ord("Z") + 1)}}


def fold(text: str) -> str:
    """The form written words are matched in: katakana as hiragana, ASCII in lower case
    (リスカ finds りすか, HELP finds help). One character for one, so offsets hold."""
    return text.translate(_FOLD)


# For each letter, the other letters that ``fold`` turns into it (ア for あ, A for a).
_UNFOLD: dict[str, str] = {}
for _from, _to in _FOLD.items():
    _UNFOLD[chr(_to)] = _UNFOLD.get(chr(_to), "") + chr(_from)


def written_forms(letters: str) -> str:
    """``letters`` and every letter that ``fold`` turns into one of them: ``fold(c) in letters``
    is ``c in written_forms(letters)`` for letters that fold leaves alone."""
    return letters + "".join(_UNFOLD.get(c, "") for c in letters)


def trie_as_written(node: dict[str, Any], end: str) -> dict[str, Any]:
    """A copy of a trie of folded words (one letter a level, ``end`` for what ends there) to
    walk on a text as it is written: a letter that ``fold`` changes leads where its folded
    letter leads, so the walk finds what a walk on the folded text would, without folding it."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == end:
            out[key] = value
        elif fold(key) == key:  # a letter that fold changes is never met in a folded text
            out[key] = trie_as_written(value, end)
    for key in [k for k in out if k != end]:
        for letter in _UNFOLD.get(key, ""):
            out[letter] = out[key]
    return out


def _nfkc_class(below: int = 0x30000) -> re.Pattern[str]:
    """A character class of every code point (below ``below``) that NFKC changes, built once at load."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x20, below):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        if unicodedata.normalize("NFKC", ch) != ch:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    parts = []
    for lo, hi in ranges:
        parts.append(re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}")
    # Half-width voicing marks and combining marks join the run before them.
    return re.compile("[" + "".join(parts) + "][" + "".join(parts) + "\u3099\u309a]*")


@dataclass(frozen=True)
class EmojiMark:
    """An emoji or kaomoji that carries meaning, removed from the text and kept as a word."""

    start: int  # position in the normalised text where it stood
    word: str  # the word the rules see (from content)
    origin: tuple[int, int]  # span in the original text


@dataclass
class Normalized:
    text: str
    origin: list[int]
    emoji: list[EmojiMark] = field(default_factory=list)
    half_width_kana: bool = False  # the writer typed half-width katakana (ｼﾆﾀｲ): read it as kana
    # for characters read from several of the original (romaji: ぬ from nu), where those end
    ends: dict[int, int] = field(default_factory=dict)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span in the original text covered by normalised characters [start, end)."""
        if end <= start:
            pos = self.origin[start]
            return pos, pos
        last = self.origin[end - 1]
        return self.origin[start], self.ends.get(last, last + 1)


Replacer = Callable[[re.Match[str]], str]


def respell(norm: Normalized, spans: list[tuple[int, int, str]]) -> Normalized:
    """``norm`` with the text of each (start, end) span replaced by a word, its origin map and
    emoji places carried along (the word points at what it replaced in the original)."""
    text, origin = norm.text, norm.origin
    out: list[str] = []
    org: list[int] = []
    shift: list[tuple[int, int]] = []  # (old position, change in length from there on)
    last = 0
    delta = 0
    ends = dict(norm.ends)
    for start, end, word in sorted(spans):
        out.append(text[last:start])
        org.extend(origin[last:start])
        out.append(word)
        # every character of the word stands for all it replaced (練炭 for れんたん)
        org.extend([origin[start]] * len(word))
        ends[origin[start]] = max(ends.get(origin[start], 0), origin[end - 1] + 1)
        delta += len(word) - (end - start)
        shift.append((end, delta))
        last = end
    out.append(text[last:])
    org.extend(origin[last:])

    def moved(pos: int) -> int:
        d = 0
        for at, change in shift:
            if pos >= at:
                d = change
        return pos + d

    emoji = [EmojiMark(moved(m.start), m.word, m.origin) for m in norm.emoji]
    return Normalized("".join(out), org, emoji, norm.half_width_kana, ends)


def _rewrite(text: str, origin: list[int], pattern: re.Pattern[str], repl: Replacer) -> tuple[str, list[int]]:
    """Apply ``repl`` to every match, carrying the origin map along.

    Replacements of the same length map one to one; others map every new character to
    the start of what it replaced (the span still covers the original word).
    """
    out: list[str] = []
    org: list[int] = []
    last = 0
    changed = False
    for m in pattern.finditer(text):
        s, e = m.span()
        new = repl(m)
        if new == m.group():
            continue
        changed = True
        out.append(text[last:s])
        org.extend(origin[last:s])
        out.append(new)
        if len(new) == e - s:
            org.extend(origin[s:e])
        else:
            span = max(e - s, 1)
            org.extend(origin[s + min(i * span // max(len(new), 1), span - 1)] for i in range(len(new)))
        last = e
    if not changed:
        return text, origin
    out.append(text[last:])
    org.extend(origin[last:])
    return "".join(out), org


# A replacement that says where each of its characters comes from: (start, end) offsets into the match.
MappedReplacer = Callable[[re.Match[str]], tuple[str, list[tuple[int, int]]]]


def _rewrite_mapped(
    text: str, origin: list[int], pattern: re.Pattern[str], repl: MappedReplacer, ends: dict[int, int]
) -> tuple[str, list[int]]:
    """``_rewrite`` for replacements that know their own map (romaji read as kana: しぬ points at
    shi and nu, not at letters spread evenly over the word). ``ends`` gets, for the original start
    of each new character, the original end of what it stands for."""
    out: list[str] = []
    org: list[int] = []
    last = 0
    for m in pattern.finditer(text):
        s, e = m.span()
        new, spans = repl(m)
        if new == m.group():
            continue
        out.append(text[last:s])
        org.extend(origin[last:s])
        out.append(new)
        width = e - s
        for a, b in spans:
            start = origin[s + min(max(a, 0), width - 1)]
            org.append(start)
            ends[start] = max(ends.get(start, 0), origin[s + min(max(b, a + 1), width) - 1] + 1)
        last = e
    if last == 0 and not out:
        return text, origin
    out.append(text[last:])
    org.extend(origin[last:])
    return "".join(out), org


def _gate(patterns: list[re.Pattern[str]]) -> re.Pattern[str]:
    """One pattern that matches wherever any of ``patterns`` would (groups renumbered away)."""
    parts = []
    for p in patterns:
        src = p.pattern
        # Back-references cannot survive being combined: widen them to any character.
        src = re.sub(r"\\[1-9]", ".", src)
        parts.append(f"(?:{src})")
    return re.compile("|".join(parts) or "(?!)")


# re's own parser of expressions: what a pattern needs is read from its parsed form.
_RE_PARSER: Any = importlib.import_module("re._parser")
_MAX_NEEDED = 16  # larger classes of letters ([ぁ-ゖ]) are not worth looking for


def _needed_letters(pattern: re.Pattern[str], most: int = _MAX_NEEDED) -> tuple[tuple[str, ...], ...]:
    """Sets of letters of which a text must hold one each for ``pattern`` to match anywhere in
    it, the likely rarest first: one for each literal or class of literals that every match reads (in
    groups, repeats of at least one, and positive lookarounds; a branch gives the letters that
    start any of its alternatives). Letters read in a row (ったる) are also needed as one string, and
    a branch of such strings (こう|コウ) as a set of them. Anything else tells nothing; so does a
    pattern with flags. Sets of more than ``most`` letters are left out."""
    if pattern.flags & (re.IGNORECASE | re.VERBOSE):
        return ()
    try:
        parsed = _RE_PARSER.parse(pattern.pattern, pattern.flags)
    except Exception:  # noqa: BLE001 -- a parser of another Python: no shortcut, never wrong
        return ()
    sets: list[frozenset[str]] = []
    _collect_needed(list(parsed), sets)
    small = {letters for letters in sets if letters and len(letters) <= most}
    # Hiragana are in most messages: sets without them first, strings before letters, then the smallest.
    order = sorted(
        small, key=lambda x: (any(c in _HIRA_SET for c in x), min(map(len, x)) < 2, len(x), sorted(x))
    )
    return tuple(tuple(sorted(letters)) for letters in order)


def _collect_needed(items: list[Any], out: list[frozenset[str]]) -> None:
    # Letters read one after another (たひ, ったる) must be in the text together: each such run of
    # two or more is needed as a whole too (a look for it rules out far more than its letters do).
    # Added after the letters, so that the first set of a branch's alternative stays a letter's.
    runs: list[str] = []
    run = ""
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            run += chr(av)
            continue
        if len(run) >= 2:
            runs.append(run)
        run = ""
    if len(run) >= 2:
        runs.append(run)
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            out.append(frozenset(chr(av)))
        elif name == "IN":
            letters = _class_letters(av)
            if letters is not None:
                out.append(letters)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            least, _most, sub = av
            if least >= 1:
                _collect_needed(list(sub), out)
        elif name == "SUBPATTERN":
            _group, add_flags, del_flags, sub = av
            if not add_flags and not del_flags:
                _collect_needed(list(sub), out)
        elif name == "ASSERT":  # a positive lookahead or lookbehind reads letters of the text too
            _direction, sub = av
            _collect_needed(list(sub), out)
        elif name == "BRANCH":
            _, alternatives = av
            starts: set[str] = set()
            words: set[str] | None = set()  # alternatives that are words, letters only (こう|コウ)
            for alternative in alternatives:
                inner: list[frozenset[str]] = []
                _collect_needed(list(alternative), inner)
                if not inner:
                    break
                starts |= inner[0]
                seq = list(alternative)
                if words is not None and seq and all(str(o) == "LITERAL" for o, _ in seq):
                    words.add("".join(chr(a) for _, a in seq))
                else:
                    words = None
            else:
                out.append(frozenset(starts))
                if words:
                    out.append(frozenset(words))
    out.extend(frozenset({r}) for r in runs)


def _class_letters(items: list[Any]) -> frozenset[str] | None:
    """The letters of a class ([たな], [ぁ-ゖ]), or None for a negated class or a category (\\s)."""
    letters: set[str] = set()
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            letters.add(chr(av))
        elif name == "RANGE":
            low, high = av
            if high - low > _MAX_NEEDED:
                return None
            letters.update(chr(c) for c in range(low, high + 1))
        else:
            return None
    return frozenset(letters)


def _holds_letters(text: str, needed: tuple[tuple[str, ...], ...]) -> bool:
    """``text`` holds a letter of each set of ``needed``."""
    for letters in needed:
        for letter in letters:
            if letter in text:
                break
        else:
            return False
    return True


def _constant(word: str) -> Callable[[str], str]:
    return lambda _s: word


def _expander(template: str) -> Replacer:
    return lambda m: m.expand(template)


def _extract_marks(
    t: str,
    origin: list[int],
    pattern: re.Pattern[str],
    word_of: Callable[[str], str],
    marks: list[tuple[int, int, str]],
) -> tuple[str, list[int]]:
    """Take meaningful emoji out of the text (a space stays), remembering word and place."""

    def repl(m: re.Match[str]) -> str:
        marks.append((origin[m.start()], origin[m.end() - 1] + 1, word_of(m.group())))
        return " "

    return _rewrite(t, origin, pattern, repl)


_BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")


def _bmp_class(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """A one-letter ``pattern``'s letters below U+10000, as one class (enumerated at load): on a text
    without letters beyond U+FFFF it finds what ``pattern`` finds, faster when ``pattern`` has some."""
    parts: list[str] = []
    start = -1
    for cp in range(0x10001):
        inside = cp < 0x10000 and pattern.fullmatch(chr(cp)) is not None
        if inside and start < 0:
            start = cp
        elif not inside and start >= 0:
            last = cp - 1
            parts.append(
                re.escape(chr(start)) if start == last else f"{re.escape(chr(start))}-{re.escape(chr(last))}"
            )
            start = -1
    return re.compile("[" + "".join(parts) + "]" if parts else "(?!)")


def _doubled(t: str) -> bool:
    """A letter twice in a row (not a line break): what ``(.)\\1`` finds, compiled."""
    for i in range(len(t) - 1):
        if ord(t[i]) == ord(t[i + 1]) and t[i] != "\n":
            return True
    return False


def _class_body(pattern: str) -> str | None:
    """The inside of a pattern that is one character class (``[...]`` or ``[...]+``), else None."""
    m = re.fullmatch(r"\[([^\]\[^][^\]\[]*)\]\+?", pattern)
    return m.group(1) if m else None


def _typed_in_katakana(text: str) -> bool:
    """No kanji, and most of the Japanese letters katakana (as tokens.py reads such messages)."""
    kata = hira = 0
    for c in text:
        if "\u30a1" <= c <= "\u30fa":
            kata += 1
        elif "\u3041" <= c <= "\u3096":
            hira += 1
        elif "\u4e00" <= c <= "\u9fff":
            return False
    return kata >= 6 and kata >= 2 * hira


def sanitize(text: str) -> str:
    """Make any string safe to encode and to show: lone surrogates become U+FFFD.

    The length does not change, so offsets into the sanitised text are offsets into the
    text as received.
    """
    return _SURROGATES.sub("\ufffd", text)


@dataclass(frozen=True)
class NormalizerConfig:
    substitutions: list[tuple[re.Pattern[str], str]]
    mask_chars: str
    emoji: dict[str, str]
    kaomoji: list[tuple[re.Pattern[str], str]]
    drop_emoji: re.Pattern[str]
    kaomoji_chars: str = "()（）;TＴ"  # every kaomoji pattern needs one of these
    substitution_chars: str = ""  # every substitution needs one of these (empty: no quick look)
    substitution_gate: str = ""  # or this pattern (for substitutions no single character marks)


class Normalizer:
    def __init__(
        self,
        config: NormalizerConfig,
        word_across: Callable[[str, str], bool] | None = None,
        loans: dict[str, str] | None = None,
        cuts_words: Callable[[str, str], bool] | None = None,
        n_words: frozenset[str] = frozenset(),
    ) -> None:
        self.config = config
        # The lexicon's loanwords by their hiragana (ろーぷ, ろおぷ: ロープ): a romaji word that
        # spells one is written in katakana (roopu), as the dictionary reads it.
        self.loans: dict[str, str] = loans or {}
        # Tells whether the dictionary reads a word across the join of two strings.
        self.word_across = word_across
        # ... and whether that word cuts one of the two in pieces (romaji words joined: ima manin
        # read いまま|ん, not いま|まんいん).
        self.cuts_words = cuts_words
        # The readings of the lexicon's nouns that end in ん (しゃしん: 写真): romaji run together
        # writes ん before お or を as n (shashinokutte), which reads as の (see _n_before_o).
        self._n_before_o = _n_before_o_pattern(n_words)
        self._nfkc = _nfkc_class()
        # The same for text without letters beyond U+FFFF (nearly all): a class of such letters
        # alone is looked up in a table, one with letters beyond is tried range by range.
        self._nfkc_bmp = _nfkc_class(below=0x10000)
        ja = f"[{JA_CHARS}]"
        self._mask = re.compile(f"(?<={ja})[{re.escape(config.mask_chars)}]+(?={ja})")
        # Three or more of the same kana is elongation (しにたいいいい); two can be a word (いい).
        self._repeat = re.compile(f"([{HIRAGANA}{KATAKANA}])\\1{{2,}}")
        # ー after hiragana is elongation (しにたーい, むりー) before a vowel or at a word's end;
        # before a consonant it is a loanword written in hiragana (ほーむ, らーめん) and stays.
        self._long_after_hira = re.compile(
            f"(?<=[{HIRAGANA}])[ー〜~]+(?=[あいうえおぁぃぅぇぉ]|[^{HIRAGANA}]|$)"
        )
        self._long_run = re.compile("ー{2,}")
        # ... but not one small vowel that makes a syllable of a loanword typed in hiragana
        # (ふぇんす, ふぉろわー, てぃっしゅ, うぃっぐ, ちぇーん): those are letters, not a drawl
        self._small_vowels = re.compile(
            f"(?<=[{HIRAGANA}])"
            "(?!(?:(?<=ふ)[ぁぃぇぉ]|(?<=[てで])ぃ|(?<=う)[ぃぇぉ]|(?<=[ちしじ])ぇ|(?<=ゔ)[ぁぃぇぉ])"
            "(?![ぁぃぅぇぉ]))"
            "[ぁぃぅぇぉ]+"
        )
        self._sokuon_run = re.compile("っ{2,}|ッ{2,}")
        self._sokuon_end = re.compile("[っッ]+(?=[\\s。、!?.,…]|$)")
        self._space = re.compile(f"(?<=[{JA_CHARS}])[ \t\u3000]+(?=[{JA_CHARS}])")
        self._piece_before = re.compile(f"[{JA_CHARS}]+$")
        self._piece_after = re.compile(f"^[{JA_CHARS}]+")
        self._spaces = re.compile("[ \t\u3000]+")
        emoji_keys = sorted(config.emoji, key=len, reverse=True)
        self._emoji = re.compile("|".join(re.escape(k) for k in emoji_keys)) if emoji_keys else None
        pre = [_CONTROLS, _ZERO_WIDTH, config.drop_emoji, *(p for p, _ in config.kaomoji)]
        if self._emoji is not None:
            pre.append(self._emoji)
        self._gate_pre = _gate(pre)
        # Each substitution with the letters a match of it needs (one of each set): most are
        # ruled out by a look for a letter or two, without running their expression.
        self._substitutions = [(p, repl, _needed_letters(p)) for p, repl in config.substitutions]
        # Cheap first looks (one character class each) before the exact gates above.
        kaomoji = re.escape(config.kaomoji_chars)
        emoji_chars = "".join(re.escape(k[0]) for k in config.emoji)
        pre_classes = [_class_body(x.pattern) for x in (_CONTROLS, _ZERO_WIDTH, config.drop_emoji)]
        self._quick_pre_bmp: re.Pattern[str] | None = None
        if all(b is not None for b in pre_classes):
            # One character class: a single pass over the text, no alternation at each position.
            self._quick_pre = re.compile(f"[{''.join(b or '' for b in pre_classes)}{kaomoji}{emoji_chars}]")
            self._quick_pre_bmp = _bmp_class(self._quick_pre)  # as _nfkc_bmp
        else:
            self._quick_pre = re.compile(
                f"{_CONTROLS.pattern}|{_ZERO_WIDTH.pattern}|{config.drop_emoji.pattern}|[{kaomoji}{emoji_chars}]"
            )
        self._quick_subs = (
            re.compile(
                f"[{re.escape(config.substitution_chars)}]"
                + (f"|{config.substitution_gate}" if config.substitution_gate else "")
            )
            if config.substitution_chars
            else None
        )
        # The elongation and masking passes, in order, each with the letters a match of it needs
        # (the masks are a long list, all worth looking for) and whether a match holds a letter
        # twice in a row (しにたいいい, ーー, っっ, 。。).
        post: list[tuple[re.Pattern[str], Replacer, bool]] = [
            (self._mask, lambda m: "", False),
            (_VOWEL_TAIL, _drop_vowel_tail, True),
            (self._repeat, lambda m: m.group(1), True),
            (self._long_after_hira, lambda m: "", False),
            (self._long_run, lambda m: "ー", True),
            (self._small_vowels, lambda m: "", False),
            (self._sokuon_run, lambda m: m.group()[0], True),
            (self._sokuon_end, lambda m: "", False),
            (_REPEATED_MARKS, lambda m: m.group("p"), True),
        ]
        self._post_passes = [(p, repl, _needed_letters(p, most=64), twice) for p, repl, twice in post]

    def normalize(self, text: str) -> Normalized:
        origin = list(range(len(text) + 1))
        t = text
        marks: list[tuple[int, int, str]] = []  # (original start, original end, word)
        ends: dict[int, int] = {}  # where a character read from several (romaji) ends in the original
        # Vertical posts (one character a line) and letter-spaced text (し に た い) first:
        # every later pass, and the dictionary, need the words whole.
        if ("\n" in t or " " in t) and _spread_out(t):
            t, origin = _join_spread(t, origin)
        # Most messages need few passes: one search over a combined pattern decides whether
        # a whole group of passes can be skipped.
        bmp = _BEYOND_BMP.search(t) is None
        quick_pre = self._quick_pre_bmp if bmp and self._quick_pre_bmp is not None else self._quick_pre
        if quick_pre.search(t) and self._gate_pre.search(t):
            t, origin = _rewrite(t, origin, _CONTROLS, lambda m: "")
            t, origin = _rewrite(t, origin, _ZERO_WIDTH, lambda m: "")
            # Kaomoji and emoji first: NFKC would break some of them apart.
            for pattern, word in self.config.kaomoji:
                t, origin = _extract_marks(t, origin, pattern, _constant(word), marks)
            if self._emoji is not None:
                t, origin = _extract_marks(t, origin, self._emoji, self.config.emoji.__getitem__, marks)
            t, origin = _rewrite(t, origin, self.config.drop_emoji, lambda m: " ")
        if not unicodedata.is_normalized("NFKC", t):
            nfkc = self._nfkc_bmp if _BEYOND_BMP.search(t) is None else self._nfkc
            t, origin = _rewrite(t, origin, nfkc, lambda m: unicodedata.normalize("NFKC", m.group()))
        if _MACRON.search(t):
            # Long vowels of romaji written with a macron or a circumflex (okujō, arigatō, sayônara):
            # spelt out (okujou), as the romaji reader knows them
            t, origin = _rewrite(t, origin, _MACRON, lambda m: _MACRON_SPELT[m.group()])
        if _LATIN_WORD.search(t):
            # Romaji (shinitai, sinitai): read as kana. Hepburn and keyboard spellings both.
            romaji = _romaji_text(t)
            t, origin = _rewrite_mapped(
                t,
                origin,
                _LATIN_SENTENCE if romaji else _LATIN_WORD,
                _romaji_reader(t, romaji, self.loans, self.cuts_words, self._n_before_o),
                ends,
            )
            if romaji:
                t, origin = _rewrite(t, origin, _LATIN_STOPS, lambda m: "。" if m.group() == "." else "、")
        if '"' in t and _JA_LETTERS.search(t):
            # Quotes typed on a Latin keyboard ("しにたい"): the dictionary takes " for a symbol
            # inside the words and cuts the kana after it badly (し|に|たい); read as 「」, one
            # letter for one, paired in order (a last one left alone stays).
            t = _japanese_quotes(t)
        if _typed_in_katakana(t):
            # A message typed all in katakana (4ニタイ, ベランダニダサレテ) is read as typed in
            # hiragana, one letter for one: the substitutions are written for hiragana, and
            # the lexicon's loanwords are spelt back in katakana by the tokenizer.
            t = katakana_to_hiragana(t)
        if self._quick_subs is None or self._quick_subs.search(t):
            for pattern, repl, needed in self._substitutions:
                if _holds_letters(t, needed):  # else the pattern cannot match: nothing to rewrite
                    t, origin = _rewrite(t, origin, pattern, _expander(repl))
        if _REPEATED_WORD.search(t):
            t, origin = _rewrite(t, origin, _REPEATED_WORD, lambda m: m.group() + "。")
        # Each elongation or masking pass only where the text holds the letters it needs (as the
        # substitutions), and a letter twice in a row if it needs one (looked for again only when a
        # pass changed the text): a pass that cannot match rewrites nothing, so skipping it changes nothing.
        doubled_in: str | None = None
        doubled = False
        for pattern, rewrite, needed, twice in self._post_passes:
            if twice:
                if t is not doubled_in:
                    doubled_in = t
                    doubled = _doubled(t)
                if not doubled:
                    continue
            if _holds_letters(t, needed):
                t, origin = _rewrite(t, origin, pattern, rewrite)
        if " " in t or "\t" in t or "\u3000" in t:
            t, origin = self._join_spaced_words(t, origin)
            t, origin = _rewrite(t, origin, self._spaces, lambda m: " ")
        emoji = self._place_marks(origin, marks)
        return Normalized(t, origin, emoji, half_width_kana=bool(_HALF_KANA.search(text)), ends=ends)

    def _join_spaced_words(self, t: str, origin: list[int]) -> tuple[str, list[int]]:
        """Remove spaces that split a word (死に たい, し に た い), keep those that split sentences.

        LINE writers use spaces as sentence breaks (家出中　今日泊まるとこない), so a space is
        only dropped when a side of it is too short to stand alone: one character, or a
        two-kana tail such as the たい of 死に たい.
        """

        def repl(m: re.Match[str]) -> str:
            before = self._piece_before.search(t, max(0, m.start() - 16), m.start())
            after = self._piece_after.match(t[m.end() : m.end() + 8])
            b = before.group() if before else ""
            a = after.group() if after else ""
            # one kana alone is a spelled-out word (し に た い)
            if (len(b) == 1 and b in _KANA_SET) or (len(a) == 1 and a in _KANA_SET):
                return ""
            # a two-kana tail (死に たい), unless it is a word of its own (いま, もう)
            if len(a) == 2 and all(c in _HIRA_SET for c in a) and a not in _STANDALONE_HIRA:
                return ""
            # a piece cannot start with ん, っ, a small kana or ー (薬ぜ んぶ, 腕切 ってる)
            if a[0] in _NO_WORD_START:
                return ""
            # a kanji that stands alone keeps its space (今 橋の上, 家出中 今日)
            if b[-1] in _STANDALONE_KANJI:
                return m.group()
            # one kanji before kana is half a word (死 にたい)
            if len(b) == 1 and b not in _KANA_SET:
                return ""
            # otherwise a word may be cut in two (全 部, 飛 び降りる, 薬ぜん ぶ) or two words
            # may meet (3回目 先生): the dictionary decides, on the few letters around the space
            # two katakana words side by side stay apart (MeCab would run them together)
            katakana_both = _kata_tail(b) >= 2 and _kata_head(a) >= 2
            # between two hiragana the dictionary guesses too freely (12さい いえでした)
            hiragana_both = b[-1] in _HIRA_SET and a[0] in _HIRA_SET
            if (
                not katakana_both
                and not hiragana_both
                and self.word_across is not None
                and self.word_across(b[-3:], a[:3])
            ):
                return ""
            return m.group()

        if self._word_spaced(t):
            # every space joins, but for one between two katakana words (ｸｽﾘ ｾﾞﾝﾌﾞ ﾉﾝﾀﾞ)
            return _rewrite(t, origin, self._space, self._join_unless_katakana(t))
        return _rewrite(t, origin, self._space, repl)

    def _join_unless_katakana(self, t: str) -> Replacer:
        def repl(m: re.Match[str]) -> str:
            apart = _kata_tail(t[: m.start()]) >= 2 and _kata_head(t[m.end() :]) >= 2
            return m.group() if apart else ""

        return repl

    def _word_spaced(self, t: str) -> bool:
        """Writing with a space after nearly every word (マンション の 8かい の ひじょうかいだん):
        the spaces are not sentence breaks, and the words read better joined."""
        pieces = [p for p in self._spaces.split(t) if p]
        if len(pieces) < 4:
            return False
        short = sum(1 for p in pieces if len(p) <= 3)
        return short * 10 >= len(pieces) * 6

    @staticmethod
    def _place_marks(origin: list[int], marks: list[tuple[int, int, str]]) -> list[EmojiMark]:
        if not marks:
            return []
        placed = []
        for o_start, o_end, word in sorted(marks):
            pos = bisect.bisect_left(origin, o_start, 0, len(origin) - 1)
            placed.append(EmojiMark(pos, word, (o_start, o_end)))
        return placed


_HIRA_SET = frozenset(chr(c) for c in range(ord("ぁ"), ord("ゖ") + 1))

# ---------------------------------------------------------------- spread-out writing

_SEPARATORS = (" ", "\n")
_SINGLE = {" ": re.compile("(?<! ) (?! )"), "\n": re.compile("(?<!\n)\n(?!\n)")}
_DOUBLED = {" ": re.compile(" {2,}"), "\n": re.compile("\n{2,}")}


def _constant_repl(word: str) -> Replacer:
    return lambda m: word


# One kana in romaji (shi, ni, kyo, tsu, n): one character of a message spread out in romaji.
_ROMAJI_SYLLABLE = re.compile("(?:[bcdfghjkmnprstwz]?[hy]?|ts)[aiueo]|n|-", re.IGNORECASE)


def _spread_by(t: str, sep: str, least: int = 1) -> bool:
    """Most pieces of ``t`` between ``sep`` are one character long (at least ``least`` pieces),
    or nearly all one kana in romaji (shi\nni\nta\ni, i ma ka ra)."""
    if t.count(sep) < 3:
        return False
    pieces = [p.strip() for p in t.split(sep) if p]
    if len(pieces) < least:
        return False
    single = sum(1 for p in pieces if len(p) <= 1)
    if single * 10 >= len(pieces) * 7:
        return True
    syllables = sum(1 for p in pieces if len(p) <= 1 or _ROMAJI_SYLLABLE.fullmatch(p))
    return single < len(pieces) and syllables * 20 >= len(pieces) * 17


def _spread_out(t: str) -> bool:
    """Text written one character a line, or with a space between every character: most of its
    pieces (between single separators) are one character long."""
    return any(_spread_by(t, sep, least=4) for sep in _SEPARATORS)


def _join_spread(t: str, origin: list[int]) -> tuple[str, list[int]]:
    """Join the characters: a single separator goes, a doubled one was the writer's own
    (し\nに\n\n\nい: the empty line is a line break of the original)."""
    for sep in _SEPARATORS:
        if not _spread_by(t, sep):
            continue
        t, origin = _rewrite(t, origin, _SINGLE[sep], lambda m: "")
        t, origin = _rewrite(t, origin, _DOUBLED[sep], _constant_repl(sep))
    return t, origin


# ---------------------------------------------------------------- romaji

# A run of Latin letters (after NFKC: full-width letters are ASCII here), with the apostrophe
# of kon'ya and the hyphen of long vowels.
_LATIN_WORD = re.compile("[A-Za-z][A-Za-z'\\-]{2,}")
# Romaji long vowels with a macron or a circumflex, only after a Latin letter (okujō; not a lone ō)
_MACRON_SPELT = {
    "ā": "aa",
    "ī": "ii",
    "ū": "uu",
    "ē": "ei",
    "ō": "ou",
    "â": "aa",
    "î": "ii",
    "û": "uu",
    "ê": "ei",
    "ô": "ou",
}
_MACRON = re.compile("(?<=[A-Za-z])[āīūēōâîûêô]")
_LATIN_LETTERS = re.compile("[A-Za-z]")
_JA_LETTERS = re.compile(f"[{JA_CHARS}]")
# Latin words that are words of their own in Japanese writing, never romaji for kana.
_KEEP_LATIN = frozenset(
    {"line", "sns", "dm", "dv", "od", "av", "jk", "jc", "ng", "ok", "lol", "help", "sos", "gps", "www", "ww"}
)
_ROMAJI_REST = re.compile("[a-z]")


# Keyboard spellings (si, tu, hu, zi, tyo): there nn is always ん (konnya is こんや).
_KEYBOARD = re.compile("(?<![sc])si|ti|tu|hu|zi|[stz]y[aou]")
# Hepburn writes ん before や, ゆ, よ as n (konya is こんや, not こにゃ).
_NN = re.compile("nn(?=y|[^aiueoy]|$)")
_NN_VOWEL = re.compile("nn(?=[aiueo])")
_N_BEFORE_Y = re.compile("(?<=[aeiou])n(?=y[aou])")
# Particles written alone: o is を, wa は, e へ.
_PARTICLES = {"o": "を", "wo": "を", "wa": "は", "ha": "は", "e": "へ", "he": "へ"}


def _as_kana(word: str, keyboard: bool = False) -> str | None:
    """The kana a romaji word spells, or None when it is not romaji (letters left over)."""
    low = word.lower().replace("-", "ー")
    if low in _KEEP_LATIN:
        return None
    if low in _PARTICLES:
        return _PARTICLES[low]
    return _spell(low, keyboard)


def _spell(low: str, keyboard: bool) -> str | None:
    """jaconv's reading of romaji, None when letters are left over."""
    low = low.lower()
    # nn before a vowel is ん and a kana of the な row (sannen, onna), as in Hepburn
    low = _NN_VOWEL.sub("n'n", low)
    if keyboard:
        low = _NN.sub("n'", low)
    low = _N_BEFORE_Y.sub("n'", low)
    kana = str(jaconv.alphabet2kana(low)).replace("'", "")
    if _ROMAJI_REST.search(kana) or kana.endswith("っ") or "っっ" in kana:
        return None
    if "ず" in kana:
        # Hepburn writes づ as zu: the words people write with づ (kizuita: 気づいた, tsuzuku:
        # 続く, chikazuku: 近づく) spelt so, one letter for one
        kana = _ZU_AS_DU.sub(lambda m: m.group()[:-1] + "づ", kana)
    return kana


# ず that is づ in romaji: 気づく (きずい, きずか; not きずつく, 傷つく), 続く, 近づく, 片づける
_ZU_AS_DU = re.compile(
    "(?:^|(?<=[^ぁ-ゖ])|(?<=[をはがにでとものへ]))きず(?=[いかきくけこ](?!つ))|つず|ちかず|かたず"
)


def _japanese_quotes(t: str) -> str:
    """Straight double quotes as 「 and 」, in pairs, in order."""
    chars = list(t)
    where = [i for i, c in enumerate(chars) if c == '"']
    for k in range(0, len(where) - 1, 2):
        chars[where[k]] = "「"
        chars[where[k + 1]] = "」"
    return "".join(chars)


def _romaji_text(t: str) -> bool:
    """Written mostly in Latin letters, and most of its words spell kana (not English)."""
    if len(_LATIN_LETTERS.findall(t)) < 2 * len(_JA_LETTERS.findall(t)):
        return False
    words = [w for w in _LATIN_WORDS.findall(t) if w.lower() not in _KEEP_LATIN]
    keyboard = _KEYBOARD.search(t.lower()) is not None
    spelled = sum(1 for w in words if _as_kana(w, keyboard) is not None)
    return bool(words) and spelled * 10 >= len(words) * 6


_LATIN_WORDS = re.compile("[A-Za-z][A-Za-z'\\-]*")
# Full stops and commas after kana read from romaji
_LATIN_STOPS = re.compile("(?<=[ぁ-ゖー])[.,]")


# Words of Latin letters with single spaces between them (a romaji sentence).
_LATIN_SENTENCE = re.compile("[A-Za-z][A-Za-z'\\-]*(?: [A-Za-z][A-Za-z'\\-]*)*")


def _romaji_reader(
    t: str,
    mostly_latin: bool,
    loans: dict[str, str],
    cuts_words: Callable[[str, str], bool] | None = None,
    n_before_o: re.Pattern[str] | None = None,
) -> MappedReplacer:
    """Romaji words as kana. In text written mostly in Latin letters every word that spells
    kana is read; among Japanese, only longer ones (a short Latin word is more often English
    or a name)."""
    keyboard = _KEYBOARD.search(t.lower()) is not None

    def repl(m: re.Match[str]) -> tuple[str, list[tuple[int, int]]]:
        text: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = 0
        previous_read = False
        previous = ""
        for k, word in enumerate(m.group().split(" ")):
            read, where = _read_latin(word, mostly_latin, keyboard, loans, n_before_o)
            was_read = read != word
            # Romaji sentences put spaces between words (kubi o tsurimasu), Japanese does not:
            # words read as kana are joined again, unless the dictionary would then read a word
            # across the join that cuts one of the writer's words (ima manin: いま|まんいん, not
            # い|まま|に|ん); the space is the writer's word boundary, and stays.
            if k > 0 and not (
                mostly_latin
                and previous_read
                and was_read
                and (cuts_words is None or not cuts_words(previous, read))
            ):
                text.append(" ")
                spans.append((pos - 1, pos))
            text.append(read)
            spans.extend((pos + a, pos + b) for a, b in where)
            pos += len(word) + 1
            previous_read = was_read
            previous = read
        return "".join(text), spans

    return repl


def _read_latin(
    run: str,
    mostly_latin: bool,
    keyboard: bool,
    loans: dict[str, str],
    n_before_o: re.Pattern[str] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """A Latin word read as kana where it spells kana, with each character's span in ``run``."""
    out: list[str] = []
    where: list[tuple[int, int]] = []
    pos = 0
    # Capitals inside romaji are an acronym of their own (kurumaniGPSwotsuketa)
    for word in _ACRONYM.split(run):
        kana = None
        if word and (mostly_latin or len(word) >= 5) and not _ACRONYM.fullmatch(word):
            kana = _as_kana(word, keyboard)
        if kana is None:
            out.append(word)
            where.extend((i, i + 1) for i in range(pos, pos + len(word)))
        else:
            spans = _syllable_spans(word, kana, keyboard)
            if n_before_o is not None and not keyboard and "の" in kana:
                kana, spans = _n_before_o(kana, spans, n_before_o)
            loan = loans.get(kana)
            if loan is not None and len(loan) == len(kana):
                kana = loan  # roopu: ロープ, one letter for one
            elif len(kana) >= 5:
                kana = _loans_inside(kana, loans)  # ekinohoomuniiru: えきのホームにいる
            if not keyboard and len(kana) >= 3:
                kana = _LONG_END.sub("ー", kana)  # one letter for one: the spans hold
            out.append(kana)
            where.extend((pos + a, pos + b) for a, b in spans)
        pos += len(word)
    return "".join(out), where


_SMALL_KANA = "っゃゅょぁぃぅぇぉゎ"
# Hepburn writes a stretched ending (死にてぇ, やべー, 死にたかー) as its vowel again (shinitee,
# yabee, shinitakaa): a vowel a, e or o after a kana of its own row at the end of the word, or
# e before っ (shiniteette), is the long mark (not i or u: kawaii, kuu are words; not o before
# っ: motootto is もと|おっと; nor a vowel after the same vowel: ee, ええ, is "good").
_LONG_END = re.compile(
    "(?:(?<=[かがさざただなはばぱまやらわゃ])あ|(?<=[こごそぞとどのほぼぽもよろょ])お)$"
    "|(?<=[けげせぜてでねへべぺめれ])え(?=っ|$)"
)
_LOANS_INSIDE: dict[int, tuple[dict[str, str], re.Pattern[str] | None]] = {}


def _n_before_o(
    kana: str, spans: list[tuple[int, int]], pattern: re.Pattern[str]
) -> tuple[str, list[tuple[int, int]]]:
    """の read as ん and お where ``pattern`` finds it (しゃしのくって: しゃしんおくって); the
    letters of no split between the two (n for ん, o for お)."""
    out: list[str] = []
    where: list[tuple[int, int]] = []
    last = 0
    for m in pattern.finditer(kana):
        at = m.end() - 1  # the の
        out.append(kana[last:at])
        where.extend(spans[last:at])
        a, b = spans[at]
        out.append("んお")
        where.extend([(a, min(a + 1, b)), (min(a + 1, b - 1), b)])
        last = at + 1
    out.append(kana[last:])
    where.extend(spans[last:])
    return "".join(out), where


def _n_before_o_pattern(n_words: frozenset[str]) -> re.Pattern[str] | None:
    """Where romaji run together spells one of these nouns but for its ん, followed by の
    (shashinokutte: しゃしのくって), the writer meant ん and お or を (写真送って, 写真を): in Hepburn
    の after ん is nno (shashinnokoto). Only nouns of four kana or more (しゃしん, れんたん,
    かいだん): the first three of a shorter one are too often a word of their own before の
    (きけの is no word, but ふりの is: 寝たふりのまま)."""
    stems = sorted({w[:-1] for w in n_words if len(w) >= 4 and w.endswith("ん")}, key=len, reverse=True)
    if not stems:
        return None
    return re.compile("(" + "|".join(map(re.escape, stems)) + ")の")


def _loans_inside(kana: str, loans: dict[str, str]) -> str:
    """The lexicon's loanwords spelt with a long vowel as romaji writes it (ほおむ, ろおぷ,
    すかあと), found inside a longer word of romaji run together (ekinohoomuniiru), written in
    katakana, one letter for one (the dictionary reads ほお|む as 頬)."""
    known = _LOANS_INSIDE.get(id(loans))
    if known is None or known[0] is not loans:
        spelt = sorted(
            (k for k, v in loans.items() if len(k) == len(v) >= 3 and "ー" in v and "ー" not in k),
            key=len,
            reverse=True,
        )
        # never from right after a small kana or っ, nor up to a small kana: those belong to the
        # letters around them (mottookuranaito: もっと|おくらない, not もっ|トーク|らない)
        known = (
            loans,
            re.compile(f"(?<![{_SMALL_KANA}])(?:{'|'.join(map(re.escape, spelt))})(?![{_SMALL_KANA}])")
            if spelt
            else None,
        )
        _LOANS_INSIDE[id(loans)] = known
    pattern = known[1]
    if pattern is None:
        return kana
    return pattern.sub(lambda m: loans[m.group()], kana)


_SYLLABLE = re.compile("n'|[^aiueo']*[aiueo]|n(?![aiueoy])|[^aiueo']+$", re.IGNORECASE)


def _syllable_spans(word: str, kana: str, keyboard: bool) -> list[tuple[int, int]]:
    """Which letters of ``word`` each character of its kana reads: each syllable read alone;
    where that does not give the same kana, the letters spread evenly."""
    spans: list[tuple[int, int]] = []
    pieces: list[str] = []
    for m in _SYLLABLE.finditer(word):
        piece = _spell(m.group(), keyboard) if m.group() != "n'" else "ん"
        if piece is None:
            break
        pieces.append(piece)
        spans.extend([m.span()] * len(piece))
    if "".join(pieces) == kana:
        return spans
    n = max(len(kana), 1)
    return [
        (i * len(word) // n, max((i + 1) * len(word) // n, i * len(word) // n + 1)) for i in range(len(kana))
    ]


_ACRONYM = re.compile("([A-Z]{2,})")


_NO_WORD_START = frozenset("んっゃゅょぁぃぅぇぉゎンッャュョァィゥェォヮー")
_STANDALONE_KANJI = frozenset("今朝昼夜夕春夏秋冬私僕俺母父兄姉弟妹夫妻彼誰何毎中高小")


def _kata_tail(s: str) -> int:
    n = 0
    for c in reversed(s):
        if c not in _KATA_SET:
            break
        n += 1
    return n


def _kata_head(s: str) -> int:
    n = 0
    for c in s:
        if c not in _KATA_SET:
            break
        n += 1
    return n


_KATA_SET = frozenset(chr(c) for c in range(ord("ァ"), ord("ヺ") + 1)) | {"ー"}
_KANA_SET = _HIRA_SET | frozenset(chr(c) for c in range(ord("ァ"), ord("ヺ") + 1))
# Two-kana words that do stand alone after a space: keep the space before them.
_STANDALONE_HIRA = frozenset(
    {"いま", "もう", "まじ", "あと", "また", "でも", "ねえ", "ほら", "はい", "いえ", "うん"}
)
