"""Spelling transformations of Japanese messages, for metamorphic tests of the triage.

Each function takes a message and returns the same message written otherwise: the words, their
order and their meaning stay; only the way they are typed changes (kana instead of kanji, romaji,
half-width forms, spaces or line breaks between characters, stretched endings, digits for kana,
masks for death words). A triage that reads people must give the transformed message the same risk
as the original: see tests/test_metamorphic.py and `python -m tests.metamorphic_report`.

Readings come from fugashi with unidic-lite (the dictionary the triage itself uses), as in
../shared/triage/metamorphic.py. Every function is pure and deterministic, and never raises on any
``str`` (lone surrogates and NUL, which MeCab cannot read, are passed through untouched).

TRANSFORMS names them all; the figures of the report and the ids of the tests use these names.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = [
    "TRANSFORMS",
    "Token",
    "digits_for_kana",
    "elongated",
    "half_width",
    "HALF_WIDTH",
    "HALF_WIDTH_MARKS",
    "has_kanji",
    "hiragana",
    "hiragana_all",
    "katakana",
    "katakana_half_width",
    "masked",
    "masked_symbols",
    "one_per_line",
    "pieces",
    "readings",
    "romaji_hepburn",
    "romaji_hepburn_unspaced",
    "romaji_keyboard",
    "spaced",
    "to_hiragana",
    "to_katakana",
]

# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    """One MeCab word: its surface as written, its reading (katakana, or None) and its part of speech."""

    surface: str
    kana: str | None
    pos1: str
    pos2: str


# MeCab reads UTF-8 C strings: a NUL ends the text and a lone surrogate cannot be encoded.
_UNREADABLE = re.compile("[\x00\ud800-\udfff]+")
_KANJI = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f々〆ヶ]")
_KATAKANA_READING = re.compile("[ァ-ヺー]+")


@cache
def _tagger() -> Any:
    import fugashi
    import unidic_lite

    return fugashi.Tagger(f'-d "{unidic_lite.DICDIR}"')


def _field(word: Any, name: str) -> str | None:
    value = getattr(word.feature, name, None)
    return value if isinstance(value, str) and value not in ("", "*") else None


def _tag(segment: str) -> Iterator[str | Token]:
    """The words of a segment MeCab can read, with whatever lies between them as plain strings."""
    pos = 0
    for word in _tagger()(segment):
        surface = word.surface
        at = segment.find(surface, pos) if surface else -1
        if at < 0:  # MeCab saw something other than the text: leave the rest as it is
            break
        if at > pos:
            yield segment[pos:at]
        kana = _field(word, "kana")
        yield Token(
            surface,
            kana if kana and _KATAKANA_READING.fullmatch(kana) else None,
            _field(word, "pos1") or "",
            _field(word, "pos2") or "",
        )
        pos = at + len(surface)
    if pos < len(segment):
        yield segment[pos:]


def pieces(text: str) -> list[str | Token]:
    """The text cut into MeCab words (Token) and the strings between them (whitespace, unreadable).

    Joining every Token's surface and every string gives the text back exactly."""
    out: list[str | Token] = []
    pos = 0
    for m in _UNREADABLE.finditer(text):
        out.extend(_tag(text[pos : m.start()]))
        out.append(m.group())
        pos = m.end()
    out.extend(_tag(text[pos:]))
    return out


def has_kanji(s: str) -> bool:
    """Whether s holds a kanji (or 々 〆 ヶ, written with them)."""
    return _KANJI.search(s) is not None


# --------------------------------------------------------------------------- kana scripts


def to_hiragana(s: str) -> str:
    """Katakana letters to hiragana (ー and others unchanged): シニタイ -> しにたい."""
    return "".join(chr(ord(c) - 0x60) if "ァ" <= c <= "ヶ" else c for c in s)


def to_katakana(s: str) -> str:
    """Hiragana letters to katakana: しにたい -> シニタイ."""
    return "".join(chr(ord(c) + 0x60) if "ぁ" <= c <= "ゖ" else c for c in s)


# Readings unidic-lite gives a word alone that nobody types in context: (surface, the word before,
# the word after) -> reading; None matches anything. お母さん is お|母|さん, read おははさん alone.
_READING_FIXES: list[tuple[str, str | None, str | None, str]] = [
    ("母", "お", "さん", "かあ"),
    ("父", "お", "さん", "とう"),
    ("母", None, "さん", "かあ"),
    ("父", None, "さん", "とう"),
    ("母", None, "ちゃん", "かあ"),
    ("父", None, "ちゃん", "とう"),
    ("読", "既", None, "どく"),  # 既読 is 既|読, read きよみ alone
    ("梁", None, None, "はり"),
    ("今", None, None, "いま"),  # unidic reads the prefix in 今トイレ as こん
    ("今日", None, None, "きょう"),  # not こんにち
    ("明日", None, None, "あした"),  # あす is written, あした is said and typed
    ("私", None, None, "わたし"),  # not わたくし
    ("日本", None, None, "にほん"),
    ("海", "今夜", None, "うみ"),  # 今夜海に入る: 海 taken for the suffix of 日本海 (かい)
    ("海", "今日", None, "うみ"),
    ("生", None, "ぎ", "い"),  # 生ぎでん (生きてる in northern speech), not せい
]
_DIGITS = re.compile("[0-9０-９]+")


def _fixed(token: Token, before: str | Token | None, after: str | Token | None) -> str | None:
    prev = before.surface if isinstance(before, Token) else None
    nxt = after.surface if isinstance(after, Token) else None
    for surface, want_prev, want_next, reading in _READING_FIXES:
        if token.surface == surface and want_prev in (None, prev) and want_next in (None, nxt):
            return reading
    if token.surface == "日" and token.kana == "カ" and prev and _DIGITS.fullmatch(prev):
        return "にち"  # 3日, 10日: か alone is no word; people type 3にち
    if token.surface == "家" and token.pos1 == "接尾辞" and not (prev and has_kanji(prev)):
        return "いえ"  # 高2 家に: a word of its own, not the や of 八百屋 or the か of 専門家
    if token.surface == "何" and nxt in ("を", "が", "も"):
        return "なに"
    return None


def readings(text: str) -> list[tuple[str | Token, str]]:
    """Every piece of the text with the way it is typed without conversion: the hiragana reading of
    a word written with kanji (fixed where unidic-lite's reading alone is not the one in context),
    anything else as written."""
    ps = pieces(text)
    out: list[tuple[str | Token, str]] = []
    for i, p in enumerate(ps):
        if isinstance(p, str) or not has_kanji(p.surface):
            out.append((p, p if isinstance(p, str) else p.surface))
            continue
        fixed = _fixed(p, ps[i - 1] if i else None, ps[i + 1] if i + 1 < len(ps) else None)
        if fixed is None:
            fixed = to_hiragana(p.kana) if p.kana else p.surface
        out.append((p, fixed))
    return out


def hiragana(text: str) -> str:
    """Every word written with kanji typed as its hiragana reading: 今夜屋上から飛び降りる ->
    こんやおくじょうからとびおりる.

    Imitates a phone user who does not convert (young writers, someone in a hurry or in distress).
    Katakana words (ロープ, OD), Latin, digits, punctuation and emoji stay as written, as in the
    reference script ../shared/triage/metamorphic.py (hiragana_all also lowers katakana). Readings
    are unidic-lite's, with a few fixed in context (お母さん, 今トイレ, 3日, 私)."""
    return "".join(typed for _, typed in readings(text))


def hiragana_all(text: str) -> str:
    """Nothing converted at all: kanji words by their reading and katakana words too, all in
    hiragana: もうロープを用意した -> もうろーぷをよういした. A message typed with the kana
    keyboard and no conversion whatsoever."""
    return to_hiragana(hiragana(text))


def katakana(text: str) -> str:
    """The whole message in katakana: 今夜死ぬ -> コンヤシヌ. Imitates writers who use katakana
    for emphasis or to keep a message from being read at a glance (and the reference's katakana)."""
    return to_katakana(hiragana(text))


# --------------------------------------------------------------------------- half width


def _half_width_table() -> dict[str, str]:
    """Full-width katakana and 。「」、・ー to their half-width forms (built from the half-width block)."""
    table: dict[str, str] = {}
    for cp in range(0xFF61, 0xFFA0):
        half = chr(cp)
        full = unicodedata.normalize("NFKC", half)
        if len(full) == 1 and full not in table:
            table[full] = half
    return table


HALF_WIDTH = _half_width_table()
HALF_WIDTH_MARKS = {"\u3099": "\uff9e", "\u309a": "\uff9f"}  # combining dakuten, handakuten


def half_width(text: str) -> str:
    """Katakana, Latin, digits and the usual punctuation in half width, as jaconv.z2h does:
    リスカした。ＯＤも -> ﾘｽｶした｡ODも; full-width space -> space; hiragana and kanji unchanged.

    Imitates old feature phones, some PC keyboards' half-width mode and copy-pasted text."""
    out = []
    for c in text:
        if "\uff01" <= c <= "\uff5e":  # full-width ASCII
            out.append(chr(ord(c) - 0xFEE0))
        elif c == "\u3000":
            out.append(" ")
        elif c in HALF_WIDTH:
            out.append(HALF_WIDTH[c])
        elif "ァ" <= c <= "ヺ":
            base = unicodedata.normalize("NFD", c)  # ガ -> カ + U+3099
            if all(b in HALF_WIDTH or b in HALF_WIDTH_MARKS for b in base):
                out.append("".join(HALF_WIDTH.get(b) or HALF_WIDTH_MARKS[b] for b in base))
            else:
                out.append(c)  # ヵ, ヶ, ヮ, ヰ, ヱ have no half-width form
        else:
            out.append(c)
    return "".join(out)


def katakana_half_width(text: str) -> str:
    """The whole message in half-width katakana: 死にたい -> ｼﾆﾀｲ (feature-phone style)."""
    return half_width(katakana(text))


# --------------------------------------------------------------------------- romaji

# hiragana: (modified Hepburn as people type it, keyboard/IME input spelling)
_BASE: dict[str, tuple[str, str]] = {}
for _row in """あa いi うu えe おo かka きki くku けke こko がga ぎgi ぐgu げge ごgo
さsa すsu せse そso ざza ずzu ぜze ぞzo たta てte とto だda でde どdo
なna にni ぬnu ねne のno はha ひhi へhe ほho ばba びbi ぶbu べbe ぼbo ぱpa ぴpi ぷpu ぺpe ぽpo
まma みmi むmu めme もmo やya ゆyu よyo らra りri るru れre ろro わwa ゐi ゑe ゔvu""".split():
    _BASE[_row[0]] = (_row[1:], _row[1:])
_BASE.update(
    {
        "し": ("shi", "si"),
        "ち": ("chi", "ti"),
        "つ": ("tsu", "tu"),
        "ふ": ("fu", "hu"),
        "じ": ("ji", "zi"),
        "ぢ": ("ji", "di"),
        "づ": ("zu", "du"),
        "を": ("o", "wo"),
        "ぁ": ("a", "xa"),
        "ぃ": ("i", "xi"),
        "ぅ": ("u", "xu"),
        "ぇ": ("e", "xe"),
        "ぉ": ("o", "xo"),
        "ゃ": ("ya", "xya"),
        "ゅ": ("yu", "xyu"),
        "ょ": ("yo", "xyo"),
        "ゎ": ("wa", "xwa"),
        "ゕ": ("ka", "xka"),
        "ゖ": ("ke", "xke"),
    }
)
# Two kana read as one syllable, other than consonant + ゃゅょ (which is done by rule below).
_PAIRS: dict[str, tuple[str, str]] = {
    "ふぁ": ("fa", "fa"),
    "ふぃ": ("fi", "fi"),
    "ふぇ": ("fe", "fe"),
    "ふぉ": ("fo", "fo"),
    "ふゅ": ("fyu", "fyu"),
    "てぃ": ("ti", "thi"),
    "でぃ": ("di", "dhi"),
    "てゅ": ("tyu", "thu"),
    "でゅ": ("dyu", "dhu"),
    "とぅ": ("tu", "twu"),
    "どぅ": ("du", "dwu"),
    "うぃ": ("wi", "wi"),
    "うぇ": ("we", "we"),
    "うぉ": ("wo", "who"),
    "ゔぁ": ("va", "va"),
    "ゔぃ": ("vi", "vi"),
    "ゔぇ": ("ve", "ve"),
    "ゔぉ": ("vo", "vo"),
    "しぇ": ("she", "sye"),
    "ちぇ": ("che", "tye"),
    "じぇ": ("je", "zye"),
    "つぁ": ("tsa", "tsa"),
    "いぇ": ("ye", "ye"),
}
_YOON = {"ゃ": "a", "ゅ": "u", "ょ": "o"}
_VOWELS = "aeiou"
# Punctuation a Latin keyboard gives instead.
_LATIN_PUNCT = {
    "。": ". ",
    "、": ", ",
    "，": ", ",
    "．": ". ",
    "！": "!",
    "？": "?",
    "「": '"',
    "」": '"',
    "『": '"',
    "』": '"',
    "【": "[",
    "】": "]",
    "・": " ",
    "〜": "~",
    "～": "~",
    "\u3000": " ",
    "（": "(",
    "）": ")",
}


def _syllables(kana: str, keyboard: bool) -> list[str]:
    """Hiragana to romaji syllables; anything else passes through one character at a time."""
    k = 1 if keyboard else 0
    out: list[str] = []
    i = 0
    while i < len(kana):
        c = kana[i]
        two = kana[i : i + 2]
        if two in _PAIRS:
            out.append(_PAIRS[two][k])
            i += 2
        elif c in _BASE and len(two) == 2 and two[1] in _YOON and _BASE[c][k].endswith("i") and c != "い":
            stem = _BASE[c][k][:-1]
            if not keyboard and stem in ("sh", "ch", "j"):
                out.append(stem + _YOON[two[1]])  # sha, cho, ju
            else:
                out.append(stem + "y" + _YOON[two[1]])  # kya, sya, tyo, zyu
            i += 2
        elif c in _BASE:
            out.append(_BASE[c][k])
            i += 1
        else:
            out.append(c)
            i += 1
    return out


def _romanize(kana: str, keyboard: bool) -> str:
    """One word's hiragana in romaji, っ, ん and ー resolved against their neighbours."""
    syl = _syllables(kana, keyboard)
    out: list[str] = []
    for j, s in enumerate(syl):
        nxt = syl[j + 1] if j + 1 < len(syl) else ""
        if s == "っ":
            if nxt and nxt[0].isascii() and nxt[0].isalpha() and nxt[0] not in _VOWELS:
                out.append("t" if nxt.startswith("ch") else nxt[0])  # matcha; itta, tti
            else:
                out.append("xtu" if keyboard else "")  # あっ at the end: typed as a small tsu
        elif s == "ん":
            if keyboard and (not nxt or nxt[0] in _VOWELS + "y" or not nxt[0].isascii()):
                out.append("nn")  # こんや: konnya; ごめん: gomenn
            else:
                out.append("n")
        elif s in ("ー", "ｰ"):
            if keyboard:
                out.append("-")
            else:
                prev = "".join(out)
                out.append(prev[-1] if prev and prev[-1] in _VOWELS else "")  # つらーい -> tsuraai
        else:
            out.append(_LATIN_PUNCT.get(s, s))
    return "".join(out)


_PARTICLES_HEPBURN = {"は": "わ", "へ": "え", "を": "お"}  # read wa, e, o


def _attaches(token: Token, previous: Token | None) -> bool:
    """Whether a word is written joined to the one before it in romaji (shinitai, nonda, 12ji)."""
    if previous is None:
        return True
    if token.pos1 == "補助記号":
        return token.pos2 != "括弧開"  # shinitai. / "shine" but: iwareta "shine"
    if previous.pos1 == "補助記号" and previous.pos2 in ("括弧開", "一般"):
        return True  # "shine", #kamimachi, (´；ω；｀)
    if token.pos1 in ("助動詞", "接尾辞"):
        return True
    if previous.pos1 == "接頭辞" and previous.surface != "今":
        return True  # お|かあさん, 中|2; not 今|トイレ
    if token.pos1 == "助詞" and token.pos2 in ("接続助詞", "終助詞"):
        return True
    if token.pos2 == "非自立可能" and previous.pos1 in ("動詞", "助動詞", "形容詞"):
        return True  # 行き|たく|ない, 切っ|て|いる
    return previous.pos2 == "数詞" and token.pos1 == "名詞"


def _latin_punctuation(s: str) -> str:
    return "".join(_LATIN_PUNCT.get(c, c) for c in s)


_WIDE_OR_HALF = re.compile("[\uff01-\uff9f]+")  # full-width ASCII, half-width katakana


def _nfkc(m: re.Match[str]) -> str:
    return unicodedata.normalize("NFKC", m.group())


def _romaji(text: str, keyboard: bool, spaced_words: bool) -> str:
    """Words joined into romaji words (待っ|て -> matte), each spelt as a whole so that っ and ん
    see the kana that follows them."""
    out: list[str] = []
    group: list[str] = []
    previous: Token | None = None

    def flush() -> None:
        if group:
            out.append(_latin_punctuation(_romanize("".join(group), keyboard)))
            group.clear()

    for p, typed in readings(text):
        if isinstance(p, str):
            flush()
            out.append(_latin_punctuation(p))
            previous = None
            continue
        kana = to_hiragana(_WIDE_OR_HALF.sub(_nfkc, typed))  # ﾘｽｶ, ＯＤ: risuka, OD
        if not keyboard and p.pos1 == "助詞" and p.surface in _PARTICLES_HEPBURN:
            kana = _PARTICLES_HEPBURN[p.surface]
        if not _attaches(p, previous):
            flush()
            if spaced_words and out and not out[-1].endswith((" ", "\n")):
                out.append(" ")
        group.append(kana)
        previous = p
    flush()
    joined = "".join(out)
    return re.sub(" {2,}", " ", joined).strip(" ") if spaced_words else joined


def romaji_hepburn(text: str) -> str:
    """Romaji in Hepburn as people type it in chats, words apart: 今夜屋上から飛び降りる ->
    konya okujou kara tobioriru; しにたい -> shinitai; 学校は -> gakkou wa.

    Imitates writers abroad, on a device without a Japanese keyboard, or hiding a message from
    people around them. No macrons or apostrophes (ou for おう, konya for こんや); the particles は
    へ を are wa e o; Japanese punctuation becomes Latin (。-> ". "). Latin words (OD) stay."""
    return _romaji(text, keyboard=False, spaced_words=True)


def romaji_hepburn_unspaced(text: str) -> str:
    """Hepburn romaji with no space between words (konyaokujoukaratobioriru), as the reference
    script ../shared/triage/metamorphic.py writes it: a message typed in one breath."""
    return _romaji(text, keyboard=False, spaced_words=False)


def romaji_keyboard(text: str) -> str:
    """Romaji as typed into a phone or PC kana input, words apart: si ti tu hu zi, tya sya zya;
    nn for ん before a vowel or y and at the end (konnya, genninn; but minna); a doubled consonant
    for っ (kitte) or xtu where nothing follows; - for ー; ha he wo for the particles:
    死にたい -> sinitai, 今から飛び降りる -> ima kara tobioriru, カッター -> katta-.

    Imitates a message sent before converting (the keystrokes themselves) and writers who learnt
    romaji from the keyboard rather than from Hepburn."""
    return _romaji(text, keyboard=True, spaced_words=True)


# --------------------------------------------------------------------------- layout


def spaced(text: str) -> str:
    """A space between every character: 死 に た い. Imitates emphatic or filter-dodging posts."""
    return " ".join(text)


def one_per_line(text: str) -> str:
    """One character per line (a vertical post, 縦書き/縦読み): 死\\nに\\nた\\nい."""
    return "\n".join(text)


# --------------------------------------------------------------------------- elongation

_VOWEL_ROWS = {
    "あ": "あかさたなはまやらわがざだばぱぁゃゎ",
    "い": "いきしちにひみりぎじぢびぴぃ",
    "う": "うくすつぬふむゆるぐずづぶぷぅゅゔ",
    "え": "えけせてねへめれげぜでべぺぇ",
    "お": "おこそとのほもよろをごぞどぼぽぉょ",
}
_VOWEL_OF = {k: v for v, row in _VOWEL_ROWS.items() for k in row}
_SMALL = {"あ": "ぁ", "い": "ぃ", "う": "ぅ", "え": "ぇ", "お": "ぉ"}


def _stretch(word: str, style: int) -> str:
    """The word with its last kana stretched: style 0 small vowels (しにたいぃぃ, 死ぬぅぅ),
    style 1 a long mark (つらーい, しにたーい before a final い; 飛び降りるーー otherwise)."""
    last = word[-1]
    kata = "ァ" <= last <= "ヺ"
    vowel = _VOWEL_OF.get(to_hiragana(last))
    if vowel is None:
        return word + last if last in "んン" else word  # ごめんん; っ and others left
    if style == 1 and vowel == "い" and len(word) >= 2 and _VOWEL_OF.get(to_hiragana(word[-2])):
        return word[:-1] + "ー" + last
    if style == 1:
        return word + "ーー"
    small = _SMALL[vowel] * 2
    return word + (to_katakana(small) if kata else small)


def _ends_clause(following: str | Token | None) -> bool:
    if following is None:
        return True
    if isinstance(following, str):
        return True  # whitespace or unreadable characters after the word
    return following.pos1 in ("補助記号", "空白")


def elongated(text: str) -> str:
    """The last kana of every word that ends a clause (before punctuation, a space, a line break
    or the end) stretched, alternating small vowels and a long mark: 死にたい。つらい ->
    死にたいぃぃ。つらーい; 今から飛び降りる -> 今から飛び降りるぅぅ.

    Imitates chat writing that drags its endings out (crying, sulking, pleading)."""
    ps = pieces(text)
    out: list[str] = []
    n = 0
    for i, p in enumerate(ps):
        if isinstance(p, str):
            out.append(p)
            continue
        following = ps[i + 1] if i + 1 < len(ps) else None
        if p.pos1 not in ("補助記号", "空白") and _ends_clause(following) and p.surface:
            out.append(_stretch(p.surface, n % 2))
            n += 1
        else:
            out.append(p.surface)
    return "".join(out)


# --------------------------------------------------------------------------- digits and masks

_DIGIT_FOR_KANA = re.compile("[しに](?![ゃゅょぇ])")  # not しゃ, にゅ: those are other syllables
_PREDICATES = ("動詞", "形容詞")


def _digits(token: str | Token, typed: str) -> str:
    if not isinstance(token, Token):
        return typed
    if (token.pos1 in _PREDICATES and token.pos2 != "非自立可能") or "死" in token.surface:
        return _DIGIT_FOR_KANA.sub(lambda m: "4" if m.group() == "し" else "2", typed)
    return typed


def digits_for_kana(text: str) -> str:
    """Typed without conversion (as hiragana does), then digits for the kana they are read as in
    verbs, adjectives and words with 死: 4 (shi) for し, 2 (ni) for に, and 0 for a Latin O:
    死にたい -> 42たい, 死ね -> 4ね, 死んだ -> 4んだ, 消して -> け4て, ODした -> 0Dした. Nouns,
    particles and auxiliaries (新聞, 夫に, した) stay.

    Imitates goroawase slang (4ね, 42たい, 0D) used to slip past word filters and to sound light.
    お -> 0 is left out: nobody writes 0っと for 夫 or 0くすり."""
    out = "".join(_digits(p, typed) for p, typed in readings(text))
    return re.sub("O(?=[A-Z])", "0", out)


_KORO = re.compile("殺(?=[さしすせそ])")


def masked(text: str) -> str:
    """Death words masked as on moderated platforms: 死 -> タヒ (タヒにたい, タヒね), 自殺 ->
    じさつ, 殺す / 殺される -> ころす / ころされる. Other text unchanged."""
    return _KORO.sub("ころ", text.replace("自殺", "じさつ")).replace("死", "タヒ")


def masked_symbols(text: str) -> str:
    """Death words masked by look-alikes and symbols: 死 -> 氏 (氏にたい), 殺 -> 〇 (〇される, 自〇)."""
    return text.replace("死", "氏").replace("殺", "〇")


TRANSFORMS: dict[str, Callable[[str], str]] = {
    "hiragana": hiragana,
    "hiragana_all": hiragana_all,
    "katakana": katakana,
    "half_width": half_width,
    "katakana_half_width": katakana_half_width,
    "romaji_hepburn": romaji_hepburn,
    "romaji_hepburn_unspaced": romaji_hepburn_unspaced,
    "romaji_keyboard": romaji_keyboard,
    "spaced": spaced,
    "one_per_line": one_per_line,
    "elongated": elongated,
    "digits_for_kana": digits_for_kana,
    "masked": masked,
    "masked_symbols": masked_symbols,
}
