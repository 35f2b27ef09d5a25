"""Tokenisation with fugashi and unidic-lite.

A token carries what the rules match on: the lemma (so 死にたくなる and しにたい both give
死ぬ), the dictionary spelling, the surface and its hiragana reading. Offsets are into the
normalised text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import fugashi
import unidic_lite

from triage.normalize import (
    HIRAGANA,
    KANJI,
    KATAKANA,
    Normalized,
    katakana_to_hiragana,
    respell,
    trie_as_written,
    written_forms,
)
from triage.ruleset import COMMON_KANA, READING, WRITTEN, SeqPattern


class Token:
    """One word as the rules see it. A plain class, not a dataclass: mypyc compiles its
    constructor, and one is built for every word of every message."""

    def __init__(
        self,
        surface: str,
        lemma: str,
        orth: str,
        pos1: str,
        pos2: str,
        cform: str,
        start: int,
        end: int,
        space_before: bool,
        keys: tuple[str, ...],
        unknown: bool = False,
        katakana: bool = False,
        synthetic: bool = False,
        origin: tuple[int, int] | None = None,
        patterns: tuple[SeqPattern, ...] = (),
    ) -> None:
        self.surface = surface
        self.lemma = lemma
        self.orth = orth  # dictionary spelling
        self.pos1 = pos1
        self.pos2 = pos2
        self.cform = cform  # conjugated form (連用形-一般)
        self.start = start  # offsets in the normalised text
        self.end = end
        self.space_before = space_before
        self.keys = keys  # what the lexicon matches: lemma, spelling, surface, hiragana
        self.unknown = unknown  # not in the dictionary
        self.katakana = katakana  # written in katakana only
        self.synthetic = synthetic  # an emoji or kaomoji turned into a word
        self.origin = origin  # for synthetic tokens: the emoji's span in the original
        # the lexicon's sequence patterns indexed under this word's keys (looked up once per word)
        self.patterns = patterns

    def __repr__(self) -> str:
        return f"Token({self.surface!r}, {self.lemma!r}, {self.start}-{self.end})"


def _clean_lemma(lemma: str | None, surface: str) -> str:
    if not lemma or lemma == "*":
        return surface
    # UniDic marks loanwords with their source: ホーム-home.
    dash = lemma.find("-")
    return lemma[:dash] if dash > 0 else lemma


# Godan verbs by the row of their last kana: the five kana of the row and the sound-changed form
# (死ぬ: しな しに しぬ しね しの, しん before だ and で).
_ROWS = {
    "カ": ("かきくけこ", "い"),
    "ガ": ("がぎぐげご", "い"),
    "サ": ("さしすせそ", ""),
    "タ": ("たちつてと", "っ"),
    "ナ": ("なにぬねの", "ん"),
    "バ": ("ばびぶべぼ", "ん"),
    "マ": ("まみむめも", "ん"),
    "ラ": ("らりるれろ", "っ"),
    "ワ": ("わいうえお", "っ"),
}
# What may follow a verb's form: the form of wanting, negation, politeness, te and ta, will.
_AFTER_STEM = "たてでだまなずせれよそさうがにのとば"
# What may follow the command form of a verb of five rows (返せ): a quote (返せって), a
# punctuation mark, or the end of the message ("\0").
_AFTER_COMMAND = _AFTER_STEM + "っ。、！？!?」』\n\0"
_AFTER_ONBIN = "たてでだ"
# What follows a verb's form and never a noun: the passive, the causative, the old negation
# (よわさ|れ: 酔わされ; よわさ|が stays 弱さが).
_PASSIVE_CAUSATIVE = "れせずレセズ"


def _forms(word: str, f: Any) -> list[tuple[str, str, str]]:
    """(kana form, the same form written as in the lexicon, kana that may follow it) for a verb
    or adjective of the lexicon: only forms of three kana or more, or of two before a fitting
    ending (しん before だ), so that short kana are never read as the word alone."""
    # Two kana are a form of their own only as the ん of 死んだ, 飲んで (たっ, たこ are everywhere).
    return [
        (k, w, a)
        for k, w, a in _all_forms(word, f, any_end=True)
        if len(k) >= 3 or (len(k) == 2 and k.endswith("ん"))
    ]


def _all_forms(word: str, f: Any, any_end: bool = False) -> list[tuple[str, str, str]]:
    """``_forms`` of any length (きっ of 切る: after a noun, うできっ is long enough).
    ``any_end``: the dictionary form of a verb of five rows (燃やす) may stand before anything
    (the end of the message, a particle, a quote), not only before an ending."""
    reading = katakana_to_hiragana(f.kanaBase or f.lForm or "")
    ctype = f.cType or ""
    if len(reading) < 2 or not word.endswith(reading[-1]):
        return []
    stem_kana, stem_word = reading[:-1], word[:-1]
    out: list[tuple[str, str, str]] = []
    if ctype.startswith("五段"):
        row = _ROWS.get(ctype.split("-")[1][0]) if "-" in ctype else None
        if row is None:
            return []
        kanas, onbin = row
        for k in kanas:
            after = _AFTER_STEM
            if any_end and k == kanas[2]:
                after = ""  # the dictionary form (燃やす) may stand before anything
            elif any_end and k == kanas[3]:
                after = _AFTER_COMMAND  # かえせって, かえせ。
            out.append((stem_kana + k, stem_word + k, after))
        if onbin:
            out.append((stem_kana + onbin, stem_word + onbin, _AFTER_ONBIN))
    elif ctype.startswith(("上一段", "下一段")):
        out.append((stem_kana, stem_word, _AFTER_STEM))
        for k in "るれろ":
            out.append((stem_kana + k, stem_word + k, ""))
    elif ctype == "形容詞":
        for ending, after in (("い", ""), ("く", ""), ("かっ", "た"), ("さ", ""), ("そう", "")):
            out.append((stem_kana + ending, stem_word + ending, after))
    return out


# The vowel each kana ends in (ま: あ), for long marks written as vowels.
_VOWEL_ROWS = (
    ("あ", "あかさたなはまやらわがざだばぱぁゃ"),
    ("い", "いきしちにひみりぎじぢびぴぃ"),
    ("う", "うくすつぬふむゆるぐずづぶぷぅゅゔ"),
    ("え", "えけせてねへめれげぜでべぺぇ"),
    ("お", "おこそとのほもよろごぞどぼぽぉょ"),
)
_VOWEL_OF = {c: v for v, row in _VOWEL_ROWS for c in row}


def _long_vowels(kana: str) -> str:
    """Long marks written as the vowel they lengthen: かったー -> かったあ, ほーむ -> ほおむ."""
    out = list(kana)
    for i in range(1, len(out)):
        if out[i] == "ー":
            out[i] = _VOWEL_OF.get(out[i - 1], "ー")
    return "".join(out)


def _kana_typed(text: str) -> bool:
    """Typed without kanji conversion: kanji are few among the Japanese letters."""
    # Counted letter by letter (compiled, no list of matches): kanji as _KANJI_CHAR has them,
    # Japanese letters as _JA_LETTER.
    kanji = 0
    letters = 0
    for i in range(len(text)):
        code = ord(text[i])
        if 0x4E00 <= code <= 0x9FFF or code == 0x3005 or code == 0x3006 or code == 0x30F6:  # 一-鿿々〆ヶ
            kanji += 1
            letters += 1
        elif 0x3041 <= code <= 0x3096 or 0x30A1 <= code <= 0x30FA or code == 0x30FC:  # ぁ-ゖ ァ-ヺ ー
            letters += 1
    if kanji * 8 > len(text):
        return False
    return letters >= 4 and kanji * 8 <= letters


def _ending_follows(tokens: list[Token], k: int) -> bool:
    """Whether the word at ``k`` is an ending a verb takes (た, たら, ない, て), right after the
    word before it: the verb the dictionary read there goes on as a verb."""
    if k >= len(tokens) or tokens[k].start != tokens[k - 1].end:
        return False
    nxt = tokens[k]
    return nxt.pos1 == "助動詞" or (nxt.pos1 == "助詞" and nxt.pos2 == "接続助詞")


_WORD_PARTS = frozenset({"名詞", "代名詞", "動詞", "形容詞", "副詞", "接尾辞"})


def _reads_across_particle(first: Token, second: Token) -> bool:
    """Whether a word of the lexicon over ``first`` and the start of ``second`` (ending inside it)
    would cut through a particle the dictionary read whole: a word and the particle of two kana
    or more after it (くる|まで: 来るまで, not 車|で; なか|まで: 中まで, not 仲間|で; さん|から:
    さんから, not 参加|ら), or a particle of two kana or more and the word after it (から|だし:
    から出し, not 体|し; なんか|いれ: 何か入れ, not 何回|れ). A cut through a word of the
    dictionary's own (れん|た|んかっ, う|できっ) is still read as the lexicon's word."""
    if first.unknown or second.unknown:
        return False
    if second.pos1 == "助詞" and len(second.surface) >= 2:
        return first.pos1 in _WORD_PARTS and len(first.surface) >= 2
    return first.pos1 == "助詞" and len(first.surface) >= 2


# Romaji run together writes the particles を, は, へ as they sound: o, wa, e (kubioshimerareta:
# くび|お|しめら|れ|た). The lemma the particle has, by the kana read.
# Particles that end a sentence after a verb (とぶわ, もやすぞ, しぬよ).
_SENTENCE_PARTICLES = frozenset({"わ", "よ", "ね", "ぞ", "ぜ", "な", "か", "の", "さ", "や"})
_SPOKEN_PARTICLES = {"お": "を", "わ": "は", "え": "へ"}
_NOUN_PARTS_OF_SPEECH = frozenset({"名詞", "代名詞"})


def _romaji_particles(tokens: list[Token]) -> None:
    """In a message read from romaji, a lone お, わ or え that the dictionary left between a noun
    and a verb, adjective or noun is the particle written as it sounds (くび|お|しめら: 首を絞め;
    あと|わ|すわる: あとは座る): it gets the particle's lemma, so that the lexicon's phrases read
    through it as through を, は, へ. Not at a sentence's start (お|かあさん), not before a
    particle or an ending (おばあちゃん|わ|よ)."""
    for i in range(1, len(tokens) - 1):
        tok = tokens[i]
        particle = _SPOKEN_PARTICLES.get(tok.surface)
        if particle is None:
            continue
        before, after = tokens[i - 1], tokens[i + 1]
        if before.end != tok.start or before.pos1 not in _NOUN_PARTS_OF_SPEECH or before.unknown:
            continue
        if after.pos1 not in ("動詞", "形容詞", "名詞", "接頭辞"):
            continue
        tok.lemma = particle
        tok.pos1 = "助詞"
        if particle not in tok.keys:
            tok.keys = tok.keys + (particle,)


def _keys(*values: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if v and v not in out:
            out.append(v)
    return tuple(out)


_KATA_RUN = re.compile(f"[{KATAKANA}ー]+")
_NOUN_PARTS = frozenset({"名詞", "接頭辞", "接尾辞"})
_PHRASE_PARTS = frozenset({"動詞", "助動詞", "形容詞", "助詞"})
_END = "\0"
_KANA_WORD = re.compile(f"[{HIRAGANA}{KATAKANA}ー]+")
_HIRAGANA_WORD = re.compile(f"[{HIRAGANA}ー]+")
# Letters only loanwords have: a long mark, small vowels, small tsu before a consonant sound, ヴ.
_LOAN_MARKS = re.compile("[ーァィゥェォッヴ]")
_KANJI_CHAR = re.compile(f"[{KANJI}]")
_JA_LETTER = re.compile(f"[{HIRAGANA}{KATAKANA}ー{KANJI}]")
_CACHE_MAX = 200_000
_ICHIDAN = "1"  # the stem of a verb of one row (いき of 生きる)
_ONBIN = "5"  # the form of a verb of five rows before だ and で (しん of 死ぬ)
_CONTINUATIVE = "R"  # the continuative form of a verb of five rows (なき of 泣く, あい of 会う)
# What follows only a verb's continuative form: ながら, ます, たい, and に before a verb of going
# or coming (会いに行く). Another word read there (なき: 無き; あい: 合い) is no grammar.
_AFTER_CONTINUATIVE = frozenset({"ながら", "ます", "たい"})
_GOING = frozenset({"行く", "来る"})
# The dictionary form of a verb of five rows whose 連用形 before て or た is a sound change (行く:
# 行って, not 行きて): its plain 連用形 there is no grammar (サ行 is: 話して).
_ONBIN_LEMMA_END = frozenset("くぐつぬぶむう")
# What makes a 連用形 of five rows no grammar after it, by lemma: て and た (not たい: 行きたい),
# and their contractions and dialect forms (いき|てる, いき|とっても: 生きとっても, いき|ちゃう).
_TE_TA = frozenset({"て", "た", "てる", "ちゃう", "じゃう", "ちまう", "とる", "とく"})
_TE_DIALECT = ("とっ", "ちゃ", "ちま")
# lemma, dictionary spelling, part of speech (two levels), conjugated form, match keys, unknown,
# katakana only, the sequence patterns indexed under the keys, the reading keys of a word written in
# kana and their patterns (used when the message is typed in kana)
_Morph = tuple[
    str,
    str,
    str,
    str,
    str,
    tuple[str, ...],
    bool,
    bool,
    tuple[SeqPattern, ...],
    tuple[str, ...],
    tuple[SeqPattern, ...],
]


class Tokenizer:
    """One MeCab instance with the unidic-lite dictionary, named explicitly (offline)."""

    def __init__(self) -> None:
        self._tagger = fugashi.Tagger(f"-d {unidic_lite.DICDIR}")
        self._cache: dict[str, _Morph] = {}
        self._unknown: dict[tuple[str, str], _Morph] = {}
        self._across: dict[tuple[str, str], bool] = {}  # word_across, by the letters each side
        self._cuts: dict[tuple[str, str, bool], bool] = {}  # cuts_words, by the two words
        # Katakana slang of the lexicon (リスカ): a run holding one is slang, not kana for kanji.
        self.known_katakana: frozenset[str] = frozenset()
        # The lexicon's sequence patterns by key word; set by the engine before first use.
        self.index: dict[str, list[SeqPattern]] = {}
        self._spellings: dict[str, Any] = {}
        # The same trie and first two letters as they may be written (katakana too), so that
        # the text is looked up as it is, not folded first (fold is one letter for one).
        self._spellings_as_written: dict[str, Any] = {}
        self._spelling_prefix_forms: set[str] = set()
        # The lexicon's loanwords by their first letter, longest first: kept in katakana when a
        # message typed all in katakana is read as hiragana (ベランダニダサレテ).
        self._loans_by_first: dict[str, tuple[str, ...]] = {}
        # The same by their hiragana, long marks also as vowels (ろおぷ: ロープ), for romaji.
        self.loan_kana: dict[str, str] = {}
        # The lexicon's verbs by a short form (いき: 生きる; しん: 死ぬ), marked by the kind of
        # form (_ICHIDAN, _ONBIN): see _conjugation_keys.
        self._stems: dict[str, tuple[str, ...]] = {}
        # Forms of the lexicon's verbs that the dictionary reads alone as that very verb (もやす:
        # 燃やす): respelt only where the dictionary took their first kana for a particle after
        # the word before (いえ|も|やす: 家燃やす), never out of a longer word (い|なくなり).
        self._particle_cut_forms: set[str] = set()
        # Kana that spell a word of the lexicon and the form of another's before an ending (よわさ:
        # 弱さ, 酔わさ before れ): that form, with what may follow it (see _learn).
        self._before_ending: dict[str, tuple[str, str, bool, tuple[int, int]]] = {}
        # The first two letters of the lexicon's loanwords that may be found inside a word.
        self._loan_inside_prefixes: set[str] = set()
        # The readings of the lexicon's nouns that end in ん (しゃしん: 写真), for romaji.
        self.n_final_nouns: frozenset[str] = frozenset()

    def learn_words(
        self, words: frozenset[str], loans: frozenset[str] = frozenset(), pairs: frozenset[str] = frozenset()
    ) -> None:
        """Readings of the lexicon's words written with kanji, for text typed in kana that the
        dictionary cuts in the wrong places: nouns (れんたん: 練炭, cut れん|た|んかっ) and the
        forms of verbs (しん before だ: 死ん, cut し|ん|だ; のん before で: 飲ん). And the
        lexicon's loanwords typed in hiragana (べらんだ: ベランダ, cut べ|らんだ)."""
        trie: dict[str, Any] = {}
        stems: dict[str, set[str]] = {}
        by_first: dict[str, list[str]] = {}
        for word in sorted(loans):
            if self._learn_loan(trie, word):
                by_first.setdefault(word[0], []).append(word)
        self._loans_by_first = {c: tuple(sorted(ws, key=len, reverse=True)) for c, ws in by_first.items()}
        n_final: set[str] = set()
        for word in sorted(words):
            nodes = list(self._tagger(word))
            if not nodes:
                continue
            # a noun, or an adnominal and a noun (この前: the dictionary cuts このまえ as この|ま|え)
            adnominal = len(nodes) > 1 and nodes[0].feature.pos1 == "連体詞"
            if all(n.feature.pos1 in _NOUN_PARTS for n in nodes[1 if adnominal else 0 :]):
                kana = katakana_to_hiragana("".join(n.feature.kana or n.surface for n in nodes))
                if len(kana) >= (4 if adnominal else 3):  # not この間 read このま (このまま)
                    self._learn(trie, kana, word, "")
                if kana.endswith("ん"):
                    n_final.add(kana)
            elif len(nodes) == 1 and nodes[0].feature.pos1 in ("動詞", "形容詞"):
                godan = (nodes[0].feature.cType or "").startswith("五段")
                short = katakana_to_hiragana(nodes[0].feature.kanaBase or "")
                if godan and len(short) == 2 and short[-1] == word[-1] and word == nodes[0].surface:
                    # a verb of two kana (飛ぶ: とぶ) whose first kana the dictionary took for a
                    # particle (から|と|ぶわ, まどから|と|ぶ」): read as the verb, only there
                    self._learn_short(trie, short, word)
                for kana, spelling, after in _forms(word, nodes[0].feature):
                    # a verb of five rows in its dictionary form (燃やす) may stand before anything
                    self._learn(trie, kana, spelling, after, lemma=word, any_after=godan and spelling == word)
                self._learn_stems(word, nodes[0].feature, stems)
        for pair in sorted(pairs):
            # a noun and a verb (腕切る): the noun's reading before each form of the verb
            # (うできっ before て: 腕切っ), where kana typed cut them as う|できる
            nodes = list(self._tagger(pair))
            if len(nodes) < 2 or nodes[-1].feature.pos1 != "動詞":
                continue
            if not all(n.feature.pos1 == "名詞" for n in nodes[:-1]):
                continue  # nouns of their own (書 of 遺書 alone is a suffix)
            noun = "".join(n.surface for n in nodes[:-1])
            noun_kana = katakana_to_hiragana("".join(n.feature.kana or n.surface for n in nodes[:-1]))
            if sum(1 for c in noun_kana if c not in "ゃゅょぁぃぅぇぉ") < 2:
                continue  # a noun of one syllable (書: しょ) is in too many kana
            verb = nodes[-1].surface
            if _clean_lemma(nodes[-1].feature.lemma, verb) != verb:
                continue  # 吊れる read as 吊る: spelt so, it would say more than the kana
            for kana, spelling, after in _all_forms(verb, nodes[-1].feature):
                if len(noun_kana + kana) < 4:
                    continue
                # spelt so, the dictionary must read the two words again (鍵開け is one noun)
                if not all(
                    "".join(n.surface for n in list(self._tagger(noun + spelling + tail))[: len(nodes) - 1])
                    == noun
                    for tail in {"", after[:1]}
                ):
                    continue
                self._learn(trie, noun_kana + kana, noun + spelling, after, (len(noun_kana), len(noun)))
        self.n_final_nouns = frozenset(n_final)
        self._spellings = trie
        self._spellings_as_written = trie_as_written(trie, _END)
        self._stems = {k: tuple(sorted(v)) for k, v in stems.items()}

    @staticmethod
    def _learn_stems(word: str, f: Any, stems: dict[str, set[str]]) -> None:
        """The short forms of a verb of the lexicon that a word typed in kana may be read for when
        the dictionary's own reading of it is no grammar (see ``_conjugation_keys``): the stem of a
        verb of one row (いき of 生きる) and the form of a verb of five rows before だ and で (しん of
        死ぬ, のん of 飲む)."""
        reading = katakana_to_hiragana(f.kanaBase or f.lForm or "")
        ctype = f.cType or ""
        if len(reading) < 2 or not word.endswith(reading[-1]):
            return
        if ctype.startswith(("上一段", "下一段")) and len(reading) >= 3:
            stems.setdefault(_ICHIDAN + reading[:-1], set()).add(word)
        elif ctype in ("五段-ナ行", "五段-バ行", "五段-マ行") and len(reading) >= 2:
            stems.setdefault(_ONBIN + reading[:-1] + "ん", set()).add(word)
        if ctype.startswith("五段") and "-" in ctype:
            row = _ROWS.get(ctype.split("-")[1][0])
            if row is not None:
                stems.setdefault(_CONTINUATIVE + reading[:-1] + row[0][1], set()).add(word)

    def _learn_loan(self, trie: dict[str, Any], word: str) -> bool:
        """A katakana word of the lexicon, as typed in hiragana: learnt when the dictionary knows
        it for a loanword (or it has a long mark or a small kana, as only loanwords do), and
        does not read its hiragana as one word of its own (ほてる: 火照る; くらす: 暮らす; the
        reading keys find those where they stand whole)."""
        kana = katakana_to_hiragana(word)
        if len(kana) < 3 or kana in COMMON_KANA:
            return False
        nodes = list(self._tagger(word))
        loan = (len(nodes) == 1 and nodes[0].feature.goshu == "外") or _LOAN_MARKS.search(word) is not None
        if not loan:
            return False  # いじめ, がたがた, くすり: native words written in katakana for effect
        alone = list(self._tagger(kana))
        if len(alone) == 1 and alone[0].feature.lemma and alone[0].feature.lemma != "*":
            if alone[0].feature.pos1 not in ("動詞", "形容詞"):  # くらす is 暮らす as often
                for spelt in {kana, _long_vowels(kana)}:
                    self.loan_kana.setdefault(spelt, word)
            return True  # kept in katakana text, not respelt from hiragana
        for spelt in {kana, _long_vowels(kana)}:
            self.loan_kana.setdefault(spelt, word)
        # the long mark also as the vowel it lengthens, as romaji writes it (kattaa: かったあ)
        for spelt in {kana, _long_vowels(kana)}:
            node = trie
            for ch in spelt:
                node = node.setdefault(ch, {})
            node.setdefault(_END, (word, "", True, (0, 0)))
        # only spelt from hiragana: the first two letters in hiragana start a look-up
        self._spelling_prefix_forms.add(kana[:2])
        if len(kana) >= 4 and _LOAN_MARKS.search(word):
            self._loan_inside_prefixes.add(kana[:2])  # see _loan_from_inside
        return True

    def _learn(
        self,
        trie: dict[str, Any],
        kana: str,
        spelling: str,
        after: str,
        split: tuple[int, int] = (0, 0),
        lemma: str = "",
        any_after: bool = False,
    ) -> None:
        """``split``: for two words (腕切る), the length of the first in kana and in the spelling
        ((0, 0) for one word), so that each is spelt over its own letters. ``lemma``: for a form of
        a verb or adjective of the lexicon, its dictionary form (燃やす for もやさ)."""
        if kana in COMMON_KANA or not all("\u3041" <= c <= "\u3096" or c == "ー" for c in kana):
            return
        if not kana.endswith("ん") and self._reads_whole(kana, spelling if not (after or any_after) else ""):
            # the dictionary reads these kana as words of their own (したい, なくなり); but when
            # that word is the lexicon's verb itself (もやす: 燃やす), it is kept for one cut
            if not lemma or self._reads_whole(kana, lemma):
                return
            self._particle_cut_forms.add(kana)
        node = trie
        for ch in kana:
            node = node.setdefault(ch, {})
        # what may follow, as it may be written (katakana too: the text is not folded)
        entry = (spelling, written_forms(after), False, split)
        known = node.get(_END)
        if known is None:
            node[_END] = entry
        elif known[0] != spelling and bool(known[1]) != bool(entry[1]) and not known[2]:
            # the same kana are a word of their own and a verb's form before an ending (よわさ:
            # 弱さ, and 酔わさ before れ): the form where its ending follows, else the word
            constrained, free = (entry, known) if entry[1] else (known, entry)
            node[_END] = free
            self._before_ending.setdefault(kana, constrained)
        # the first two letters, as they may be written: most words start no spelling
        self._spelling_prefix_forms.update(
            a + b for a in written_forms(kana[0]) for b in written_forms(kana[1])
        )

    def _learn_short(self, trie: dict[str, Any], kana: str, word: str) -> None:
        if kana in COMMON_KANA or not all("\u3041" <= c <= "\u3096" for c in kana):
            return
        nodes = list(self._tagger(kana))
        if len(nodes) != 1 or _clean_lemma(nodes[0].feature.lemma, kana) != word:
            return  # alone, these kana are some other word
        node = trie
        for ch in kana:
            node = node.setdefault(ch, {})
        node.setdefault(_END, (word, "", False, (0, 0)))
        self._particle_cut_forms.add(kana)
        self._spelling_prefix_forms.update(
            a + b for a in written_forms(kana[0]) for b in written_forms(kana[1])
        )

    def _reads_whole(self, kana: str, noun: str) -> bool:
        """Whether the dictionary, reading these kana alone, finds words it knows: one word (なくなり:
        無くなる) other than the lexicon's noun itself (いしき alone is 意識: respelling it where the
        dictionary cut it in a sentence only helps), or two that make an everyday phrase (したい:
        する+たい, not 死体). Then they are not respelt: the same kana mean that far more often."""
        nodes = list(self._tagger(kana))
        if any(not n.feature.lemma or n.feature.lemma == "*" for n in nodes):
            return False
        if len(nodes) == 1:
            return not noun or _clean_lemma(nodes[0].feature.lemma, kana) != noun
        if len(nodes) == 2 and _clean_lemma(nodes[1].feature.lemma, "") == "せる":
            if (nodes[0].feature.cType or "").startswith(("上一段", "下一段")):
                return False  # かえ|せ: a verb of one row takes させる, not せる; no phrase (返せ)
        return len(nodes) == 2 and all(n.feature.pos1 in _PHRASE_PARTS for n in nodes)

    def spell_out(
        self, norm: Normalized, tokens: list[Token], kana_typed: bool | None = None
    ) -> tuple[Normalized, list[Token]] | None:
        """Where kana the dictionary cut badly spells a word of the lexicon (きしねんりょ cut as
        岸/ねん/り/ょ), write the word in kanji and read the message again. A word the
        dictionary found whole is left as it is (its reading is a key already)."""
        if not self._spellings:
            return None
        trie = self._spellings_as_written
        text = norm.text
        # The ends of the words, only once a word may start a spelling.
        looked = False
        ends: set[int] = set()
        spans: list[tuple[int, int, str]] = []
        taken = 0
        forms = self._spelling_prefix_forms
        loan_starts = self._loan_inside_prefixes
        for i, tok in enumerate(tokens):
            pos = tok.start
            if (
                kana_typed is not False
                and pos >= taken
                and len(tok.surface) >= 2
                and any(text[k : k + 2] in loan_starts for k in range(pos + 1, tok.end))
            ):
                if not looked:
                    looked = True
                    ends = {t.end for t in tokens}
                    if kana_typed is None:
                        kana_typed = _kana_typed(text)
                inside = self._loan_from_inside(text, tok, ends) if kana_typed else None
                if inside is not None:
                    spans.append(inside)
                    taken = inside[1]
                    continue
            if text[pos : pos + 2] not in forms:
                continue  # no word of the lexicon starts so (most words: one look-up)
            if pos < taken or tok.synthetic or not _KANA_WORD.fullmatch(tok.surface):
                continue
            if not looked:
                looked = True
                ends = {t.end for t in tokens}
                if kana_typed is None:
                    kana_typed = _kana_typed(text)
            node: dict[str, Any] = trie
            j = pos
            found: tuple[int, str, bool, tuple[int, int]] | None = None
            while j < len(text):
                child: dict[str, Any] | None = node.get(text[j])
                if child is None:
                    break
                node = child
                j += 1
                if _END in node:
                    spelling, after, loan, split = node[_END]
                    if self._before_ending and j < len(text):
                        other = self._before_ending.get(katakana_to_hiragana(text[pos:j]))
                        if other is not None and text[j] in _PASSIVE_CAUSATIVE and text[j] in other[1]:
                            spelling, after, loan, split = other
                    # a verb's form only before what may follow it (しん before だ or で)
                    if not after or (text[j] in after if j < len(text) else "\0" in after):
                        found = (j, str(spelling), bool(loan), split)
            if found is None:
                continue
            end, word, loan, split = found
            if loan:
                # A loanword in hiragana, in a message typed in kana, from the start of a word
                # to the end of one (しらないふり is not ナイフ): spelt in katakana.
                if kana_typed and end in ends and _HIRAGANA_WORD.fullmatch(text[pos:end]):
                    spans.append((pos, end, word))
                    taken = end
                continue
            if end == tok.end or not _KANA_WORD.fullmatch(text[pos:end]):
                continue  # one whole word as the dictionary read it, or not all kana
            if text[pos:end] in self._particle_cut_forms and not (
                len(tok.surface) == 1
                and tok.pos1 == "助詞"
                and i > 0
                and tokens[i - 1].end == pos
                and (end in ends or self._ending_particle_after(tokens, i, end))
            ):
                continue  # a verb read whole alone: only its first kana taken for a particle
            if end not in ends and i + 1 < len(tokens) and tokens[i + 1].start >= end:
                continue  # a prefix of a longer word the dictionary knows
            covered = [t for t in tokens[i:] if t.start < end]
            if end not in ends and covered[-1].lemma == "為る":
                continue  # ending inside a form of する (どうし|よう is どう+しよう, not 同士)
            if (
                end in ends
                and not split[0]
                and _KANJI_CHAR.match(word[-1])
                and covered[-1].pos1 == "動詞"
                and _ending_follows(tokens, i + len(covered))
            ):
                continue  # a noun over a verb that goes on: どう|し|たら is not 同士たら
            if end not in ends and len(covered) == 2 and _reads_across_particle(covered[0], covered[1]):
                continue  # くる|まで is not 車|で, から|だし not 体|し
            if (
                end not in ends
                and tok.pos1 == "助詞"
                and len(tok.surface) == 1
                and covered[-1].pos2 == "普通名詞"
                and not covered[-1].unknown
                and covered[-1].end - end >= 2
            ):
                # a particle and the start of a common noun read whole: おや|が|びょういん, not
                # 画鋲 (a proper noun read in kana is often a cut gone wrong: お|かねはら|え)
                continue
            if (
                tok.surface in ("て", "で")
                and tok.pos2 == "接続助詞"
                and i > 0
                and tokens[i - 1].end == pos
                and tokens[i - 1].pos1 in ("動詞", "助動詞", "形容詞")
            ):
                continue  # the て or で of a verb's form: なっ|て|くび is なって首, not 手首
            # A plausible reading of the same kana is kept (い|ない is not 以内): only a cut that
            # runs through a word, three pieces or more, or a piece unknown to the dictionary
            # shows that the dictionary did not find the word.
            # In a message typed all in kana two pieces are enough.
            pieces = 2 if kana_typed else 3
            if end in ends and len(covered) < pieces and not any(t.unknown for t in covered):
                continue
            if split[0]:  # two words, each over its own kana: the reasons point at each
                spans.append((pos, pos + split[0], word[: split[1]]))
                spans.append((pos + split[0], end, word[split[1] :]))
            else:
                spans.append((pos, end, word))
            taken = end
        if not spans:
            return None
        respelled = respell(norm, spans)
        # Typed in kana or not is a fact of the text as written: the kanji just spelt in must not
        # make a message typed in kana look converted (its other words then lose their kana readings).
        return respelled, self._tokens_of(respelled, kana_typed)

    def _loan_from_inside(self, text: str, tok: Token, ends: set[int]) -> tuple[int, int, str] | None:
        """A loanword of the lexicon of four letters or more with a long mark or a small kana
        (すかーと, えれべーたー), typed in hiragana, that starts inside a word the dictionary read
        (です|かー|と: ですかーと, で+スカート) and ends where a word ends: its letters cannot be
        anything but the loanword."""
        trie = self._spellings_as_written
        for k in range(tok.start + 1, tok.end):
            if text[k : k + 2] not in self._loan_inside_prefixes:
                continue
            node: dict[str, Any] = trie
            j = k
            found: tuple[int, int, str] | None = None
            while j < len(text):
                child: dict[str, Any] | None = node.get(text[j])
                if child is None:
                    break
                node = child
                j += 1
                if _END in node:
                    spelling, _, loan, _ = node[_END]
                    if loan and j - k >= 4 and j in ends and _HIRAGANA_WORD.fullmatch(text[k:j]):
                        found = (k, j, str(spelling))
            if found is not None:
                return found
        return None

    @staticmethod
    def _ending_particle_after(tokens: list[Token], i: int, end: int) -> bool:
        """Whether the word the dictionary read across ``end`` goes on only with a particle that
        ends a sentence (と|ぶわ: とぶ and わ), not with more of a word (いえ|も|やすい: 家も安い)."""
        for tok in tokens[i:]:
            if tok.start < end < tok.end:
                return tok.surface[end - tok.start :] in _SENTENCE_PARTICLES
        return False

    def _spell_out_all(
        self, norm: Normalized, tokens: list[Token], kana_typed: bool
    ) -> tuple[Normalized, list[Token]] | None:
        """``spell_out`` until nothing changes (a respelt word lets the dictionary cut the rest
        better: 飲んでしぬ, then 飲んで死ぬ), at most three rounds; ``kana_typed``: of the text as
        written, not as respelt."""
        result = None
        for _ in range(3):
            again = self.spell_out(norm, tokens, kana_typed)
            if again is None:
                break
            result = again
            norm, tokens = again
        return result

    def word_across(self, left: str, right: str) -> bool:
        """Whether the dictionary reads one word across the join of ``left`` and ``right``
        (a few letters each side of a space: the same pairs come back, so answers are kept)."""
        key = (left, right)
        known = self._across.get(key)
        if known is not None:
            return known
        across = False
        pos = 0
        for node in self._tagger(left + right):
            end = pos + len(node.white_space) + len(node.surface)
            if pos + len(node.white_space) < len(left) < end:
                across = True
                break
            pos = end
        if len(self._across) >= _CACHE_MAX:
            self._across.clear()
        self._across[key] = across
        return across

    def cuts_words(self, left: str, right: str) -> bool:
        """Whether the dictionary, reading ``left`` and ``right`` joined, reads a word across the
        join that starts inside ``left`` or ends inside ``right`` (いま + まんいん: い|まま|ん|いん),
        not one made of the two whole (とび + おりる: 飛び降りる). Answers are kept."""
        key = (left, right, True)
        known = self._cuts.get(key)
        if known is not None:
            return known
        cuts = False
        pos = 0
        text = left + right
        for node in self._tagger(text):
            start = pos + len(node.white_space)
            end = start + len(node.surface)
            if start < len(left) < end:
                cuts = start > 0 or end < len(text)
                break
            pos = end
        if cuts:
            # ... and read alone, the right word does not start with a kana the dictionary takes
            # for a letter (kidesuka: き|です|か, き a symbol; ころす|きですか stays joined)
            first = next(iter(self._tagger(right)), None)
            if first is not None and len(first.surface) == 1 and first.feature.pos1 == "記号":
                cuts = False
        if len(self._cuts) >= _CACHE_MAX:
            self._cuts.clear()
        self._cuts[key] = cuts
        return cuts

    def reading(self, word: str) -> str:
        """The hiragana reading of a word, used to add kana spellings of lexicon entries."""
        return katakana_to_hiragana("".join(n.feature.kana or n.surface for n in self._tagger(word)))

    def tokenize(self, norm: Normalized) -> tuple[Normalized, list[Token]]:
        """The words of a normalised text, and the text they were read from (the same, or with
        badly cut kana written as the lexicon's words: see ``spell_out``)."""
        kana_typed = _kana_typed(norm.text)
        tokens = self._tokens_of(norm, kana_typed)
        if norm.ends:
            particles = self._object_particles(norm, tokens, kana_typed)
            if particles is not None:
                norm, tokens = particles
        respelled = self._spell_out_all(norm, tokens, kana_typed)
        return respelled if respelled is not None else (norm, tokens)

    def _object_particles(
        self, norm: Normalized, tokens: list[Token], kana_typed: bool
    ) -> tuple[Normalized, list[Token]] | None:
        """Romaji run together writes the object particle を as o, joined to the verb after it
        (onakaokerareta: おなかおけられた, 腹を蹴られた; hanashioshitara: 話をしたら). Where the
        dictionary read that お as the start of another verb (置け, 押し) right after a noun, and
        the kana after it start a verb of the lexicon the word it read does not belong to, the
        お is written を and the message read again."""
        text = norm.text
        spans: list[tuple[int, int, str]] = []
        for i in range(1, len(tokens)):
            tok = tokens[i]
            if tok.surface == "お" and tok.pos1 == "接頭辞" and i + 2 < len(tokens):
                # お taken for the honorific prefix before a verb that goes on with an ending
                # (かぎ|お|かけ|て, こども|お|つれ|て): an honorific お goes on with に, ください or
                # する (おかけになる, おまちください), so this one is を
                verb, ending = tokens[i + 1], tokens[i + 2]
                if (
                    tokens[i - 1].end == tok.start
                    and tokens[i - 1].pos1 not in ("助詞", "助動詞", "補助記号", "接頭辞")
                    and verb.pos1 == "動詞"
                    and verb.start == tok.end
                    and (ending.pos1 == "助動詞" or ending.pos2 == "接続助詞")
                ):
                    spans.append((tok.start, tok.end, "を"))
                continue
            if not tok.surface.startswith("お") or len(tok.surface) < 2 or tok.pos1 != "動詞":
                continue
            before = tokens[i - 1]
            if before.end != tok.start or before.pos1 not in _NOUN_PARTS_OF_SPEECH or before.unknown:
                continue
            if tok.lemma in self.index:
                continue  # the verb read is one the lexicon knows (起こす, 押し付ける): kept
            rest = text[tok.start + 1 : tok.start + 12]
            first = next(iter(self._tagger(rest)), None)
            if first is None or first.feature.pos1 != "動詞":
                continue
            lemma = _clean_lemma(first.feature.lemma, first.surface)
            if lemma not in self.index or len(first.surface) < 2 and lemma != "為る":
                continue
            spans.append((tok.start, tok.start + 1, "を"))
        if not spans:
            return None
        respelled = respell(norm, spans)
        return respelled, self._tokens_of(respelled, kana_typed)

    def _tokens_of(self, norm: Normalized, kana_typed: bool | None = None) -> list[Token]:
        """``kana_typed``: whether ``norm.text`` is typed in kana, when the caller knows (reading
        its katakana as hiragana changes neither its kanji nor its letters)."""
        if kana_typed is None:
            kana_typed = _kana_typed(norm.text)
        tokens = self._tokenize(norm.text, kana_typed)
        if self._typed_in_katakana(norm.text):
            # A whole message typed in katakana (ツマガホウチョウヲ...): the dictionary reads
            # katakana as loanwords. Read it as hiragana, but for the loanwords it does know.
            tokens = self._tokenize(self._hiraganize_native_runs(norm, tokens), kana_typed)
        elif self._needs_kana_reading(norm, tokens):
            # Katakana written for kanji or hiragana words (ｼﾆﾀｲ -> シニタイ -> 四/二/タイ):
            # read the broken runs as hiragana; the length is the same, so offsets hold.
            tokens = self._tokenize(self._hiraganize_broken_runs(norm, tokens), kana_typed)
        if norm.ends:
            _romaji_particles(tokens)
        if norm.emoji:
            tokens = self._insert_marks(tokens, norm)
        return tokens

    def _tokenize(self, text: str, kana_typed: bool) -> list[Token]:
        out: list[Token] = []
        pos = 0
        cache = self._cache
        for node in self._tagger(text):
            surface: str = node.surface
            # MeCab skips white space and keeps it on the next node; never trust it blindly.
            white: str = node.white_space
            start = pos + len(white)
            if text.find(surface, start, start + len(surface)) != start:  # startswith, compiled
                start = text.find(surface, pos)
                if start < 0:
                    start = pos
            # Reading a node's features builds a named tuple; the raw feature string is cheap,
            # and the same word with the same features always reads the same.
            # The raw features hold the written form, so they name a known word on their own;
            # unknown words all share one feature string and are told apart by their surface.
            raw: str = node.feature_raw
            morph = cache.get(raw)
            if morph is None:
                morph = self._unknown.get((raw, surface))
                if morph is None:
                    morph = self._morph(surface, node.feature)
                    if len(cache) + len(self._unknown) > _CACHE_MAX:
                        cache.clear()
                        self._unknown.clear()
                    if morph[6]:
                        self._unknown[(raw, surface)] = morph
                    else:
                        cache[raw] = morph
            lemma, orth, pos1, pos2, cform, keys, unknown, kata, patterns, readings, by_reading = morph
            if kana_typed and readings:
                keys = keys + readings
                patterns = patterns + by_reading
            out.append(
                Token(
                    surface,
                    lemma,
                    orth,
                    pos1,
                    pos2,
                    cform,
                    start,
                    start + len(surface),
                    start > pos or (start > 0 and text[start - 1] == " "),
                    keys,
                    unknown,
                    kata,
                    False,
                    None,
                    patterns,
                )
            )
            pos = start + len(surface)
        if kana_typed and self._stems:
            self._conjugation_keys(out)
        return out

    def _conjugation_keys(self, tokens: list[Token]) -> None:
        """Verbs typed in kana that the dictionary read as another verb in a form that is no
        grammar where it stands, read as the lexicon's verb whose form it is: いき before て read as
        行く (whose form there is 行っ) is 生きる (いきてる, いきとっても); しん before だ read as 芯 or
        知れる is 死ぬ (しんだら, しんでしまいたい). Only a whole word of the dictionary's, and only
        where its own reading cannot be right: 行きたい stays 行く."""
        stems = self._stems
        for i in range(len(tokens) - 1):
            tok = tokens[i]
            nxt = tokens[i + 1]
            if not nxt.surface or nxt.start != tok.end:
                continue
            head = nxt.surface[0]
            key = ""
            if tok.pos1 == "動詞" and tok.cform == "連用形-一般" and tok.lemma[-1:] in _ONBIN_LEMMA_END:
                if nxt.lemma in _TE_TA or (nxt.pos1 != "動詞" and nxt.surface.startswith(_TE_DIALECT)):
                    key = _ICHIDAN + katakana_to_hiragana(tok.surface)
            elif (
                len(tok.surface) == 2
                and tok.surface[1] in "んン"
                and head in "だで"
                and not (tok.pos1 == "動詞" and tok.cform == "連用形-撥音便")
            ):
                key = _ONBIN + katakana_to_hiragana(tok.surface)
            elif (
                len(tok.surface) >= 2
                and not (tok.pos1 == "動詞" and tok.cform.startswith("連用形"))
                and (
                    nxt.lemma in _AFTER_CONTINUATIVE
                    or (nxt.surface == "に" and i + 2 < len(tokens) and tokens[i + 2].lemma in _GOING)
                )
            ):
                # なき|ながら read as 無い, あい|に|いく as 合い: only a verb's continuative form
                # stands there (泣きながら, 会いに行く)
                key = _CONTINUATIVE + katakana_to_hiragana(tok.surface)
            elif (
                tok.pos1 == "動詞"
                and tok.cform.startswith("未然形")
                and len(tok.surface) >= 3
                and tok.surface[-1] in "らラ"
                and nxt.lemma == "れる"
            ):
                # しめら|れ read as 湿る and れる is as often しめ|られ, 閉める or 絞める and られる
                # (かぎしめられた, くびをしめられた): kana cannot tell the two rows apart
                key = _ICHIDAN + katakana_to_hiragana(tok.surface[:-1])
            if not key:
                continue
            words = stems.get(key)
            if key[0] == _CONTINUATIVE:  # or the stem of a verb of one row (いき|ながら: 生きる)
                words = (words or ()) + stems.get(_ICHIDAN + key[1:], ())
            if not words:
                continue
            new = tuple(w for w in words if w not in tok.keys)
            if new:
                tok.keys = tok.keys + new
                more = self.patterns_for(new)
                tok.patterns = tok.patterns + tuple(p for p in more if p not in tok.patterns)
            if key[0] == _ONBIN and "た" not in nxt.keys and nxt.lemma == "だ":
                nxt.keys = nxt.keys + ("た",)  # しん|だ read as 芯 and the copula: 死ん|だ
            if key[0] == _ICHIDAN and nxt.lemma == "れる" and "られる" not in nxt.keys:
                nxt.keys = nxt.keys + ("られる",)  # しめら|れ: しめ|られ
                more = self.patterns_for(("られる",))
                nxt.patterns = nxt.patterns + tuple(p for p in more if p not in nxt.patterns)

    def _morph(self, surface: str, f: Any) -> _Morph:
        lemma = _clean_lemma(f.lemma, surface)
        orth = f.orthBase if f.orthBase and f.orthBase != "*" else surface
        keys = _keys(lemma, orth, surface, katakana_to_hiragana(surface))
        readings: tuple[str, ...] = ()
        if _KANA_WORD.fullmatch(surface):
            # In a message typed in kana a word can be any word of its reading: つま is 妻 as well
            # as the dictionary's 褄, たっ is 立つ as well as 経つ. Its readings (as written, and
            # of its dictionary form) are keys there, matched against the readings of the
            # lexicon's words (ruleset.py: READING).
            base = f.lForm if f.lForm and f.lForm != "*" else surface
            kana = katakana_to_hiragana(surface)
            readings = _keys(READING + kana, READING + katakana_to_hiragana(base), WRITTEN + kana)
        return (
            lemma,
            orth,
            f.pos1 or "",
            f.pos2 or "",
            f.cForm or "",
            keys,
            not f.lemma or f.lemma == "*",
            _KATA_RUN.fullmatch(surface) is not None,
            self.patterns_for(keys),
            readings,
            self.patterns_for(readings),
        )

    def patterns_for(self, keys: tuple[str, ...]) -> tuple[SeqPattern, ...]:
        """The patterns indexed by any of ``keys``, each once, in order. Equal patterns are one
        object (ruleset.py), so identity tells them apart: comparing fields made this quadratic."""
        out: list[SeqPattern] = []
        seen: set[int] = set()
        for key in keys:
            for pat in self.index.get(key, ()):
                if id(pat) not in seen:
                    seen.add(id(pat))
                    out.append(pat)
        return tuple(out)

    def _needs_kana_reading(self, norm: Normalized, tokens: list[Token]) -> bool:
        # Quick look first: a broken run has an unknown or one-letter katakana word in it.
        short = 2 if norm.half_width_kana else 1
        if not any(t.katakana and (t.unknown or len(t.surface) <= short or t.pos2 == "数詞") for t in tokens):
            return False
        return any(
            self._broken_run(tokens, i, j, norm.half_width_kana) for i, j in self._katakana_runs(tokens)
        )

    def _katakana_runs(self, tokens: list[Token]) -> Iterator[tuple[int, int]]:
        """Runs of adjacent katakana tokens, as [i, j) index pairs."""
        i = 0
        while i < len(tokens):
            if not tokens[i].katakana:
                i += 1
                continue
            j = i + 1
            while j < len(tokens) and tokens[j].katakana and not tokens[j].space_before:
                j += 1
            yield i, j
            i = j

    def _broken_run(self, tokens: list[Token], i: int, j: int, half_width: bool) -> bool:
        """Katakana that the dictionary could not read as katakana words (シ/ニ/タイ, unknown)."""
        run = tokens[i:j]
        text = "".join(t.surface for t in run)
        if text in self.known_katakana:  # リ|スカ is リスカ, slang, not kana for kanji
            return False
        if any(t.unknown for t in run):
            return True
        # Writers of half-width katakana spell whole sentences in it (ｱﾂﾒﾀ -> アツ/メタ):
        # there, two short pieces are enough to read the run as kana.
        short = 2 if half_width else 1
        return j - i >= 2 and any(len(t.surface) <= short or t.pos2 == "数詞" for t in run)

    @staticmethod
    def _typed_in_katakana(text: str) -> bool:
        """No kanji, and most of the Japanese letters katakana."""
        if _KANJI_CHAR.search(text):
            return False
        kata = sum(1 for c in text if "\u30a1" <= c <= "\u30fa")
        hira = sum(1 for c in text if "\u3041" <= c <= "\u3096")
        return kata >= 6 and kata >= 2 * hira

    def _hiraganize_native_runs(self, norm: Normalized, tokens: list[Token]) -> str:
        """Every katakana run as hiragana, but for one loanword the dictionary knows whole
        (ベランダ, ロープ) or a katakana word of the lexicon (リスカ)."""
        text = norm.text
        chars = list(text)
        loans = self._loans_by_first
        for i, j in self._katakana_runs(tokens):
            run = tokens[i:j]
            if "".join(t.surface for t in run) in self.known_katakana:
                continue
            kept = 0  # the end of a loanword of the lexicon kept in katakana
            for tok in run:
                word = tok.surface
                if word in self.known_katakana or (
                    len(word) >= 3 and not tok.unknown and self._is_loanword(word)
                ):
                    continue  # スカート, エスカレーター: loanwords the dictionary found whole
                # A loanword of the lexicon from the start of this word, wherever the dictionary
                # cut it (ベランダ|ニダ|サレテ); from inside the word for one of four letters or
                # more (イマカラマンション read as one unknown word; not シラ|ナイフリ).
                for k in range(tok.start, tok.end):
                    if k >= kept:
                        for loan in loans.get(text[k], ()):
                            if text.startswith(loan, k) and (k == tok.start or len(loan) >= 4):
                                kept = k + len(loan)
                                break
                    if k >= kept:
                        chars[k] = katakana_to_hiragana(chars[k])
        return "".join(chars)

    def _is_loanword(self, word: str) -> bool:
        nodes = list(self._tagger(word))
        return len(nodes) == 1 and nodes[0].feature.goshu == "外"

    def _hiraganize_broken_runs(self, norm: Normalized, tokens: list[Token]) -> str:
        chars = list(norm.text)
        for i, j in self._katakana_runs(tokens):
            if self._broken_run(tokens, i, j, norm.half_width_kana):
                for k in range(tokens[i].start, tokens[j - 1].end):
                    chars[k] = katakana_to_hiragana(chars[k])
        return "".join(chars)

    def _insert_marks(self, tokens: list[Token], norm: Normalized) -> list[Token]:
        out: list[Token] = []
        marks = iter(norm.emoji)
        mark = next(marks, None)
        for tok in tokens:
            while mark is not None and mark.start <= tok.start:
                out.append(self._mark_token(mark.word, mark.start, mark.origin))
                mark = next(marks, None)
            out.append(tok)
        while mark is not None:
            out.append(self._mark_token(mark.word, mark.start, mark.origin))
            mark = next(marks, None)
        return out

    def _mark_token(self, word: str, pos: int, origin: tuple[int, int]) -> Token:
        return Token(
            surface="",
            lemma=word,
            orth=word,
            pos1="記号",
            pos2="絵文字",
            cform="",
            start=pos,
            end=pos,
            space_before=False,  # an emoji ends the sentence it stands in, it does not start one
            keys=(word,),
            synthetic=True,
            origin=origin,
            patterns=self.patterns_for((word,)),
        )
