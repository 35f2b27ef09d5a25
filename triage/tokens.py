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

from triage.normalize import KATAKANA, Normalized, katakana_to_hiragana
from triage.ruleset import SeqPattern


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


def _keys(*values: str) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if v and v not in out:
            out.append(v)
    return tuple(out)


_KATA_RUN = re.compile(f"[{KATAKANA}ー]+")
_CACHE_MAX = 200_000
# lemma, dictionary spelling, part of speech (two levels), conjugated form, match keys, unknown,
# katakana only, the sequence patterns indexed under the keys
_Morph = tuple[str, str, str, str, str, tuple[str, ...], bool, bool, tuple[SeqPattern, ...]]


class Tokenizer:
    """One MeCab instance with the unidic-lite dictionary, named explicitly (offline)."""

    def __init__(self) -> None:
        self._tagger = fugashi.Tagger(f"-d {unidic_lite.DICDIR}")
        self._cache: dict[str, _Morph] = {}
        self._unknown: dict[tuple[str, str], _Morph] = {}
        # Katakana slang of the lexicon (リスカ): a run holding one is slang, not kana for kanji.
        self.known_katakana: frozenset[str] = frozenset()
        # The lexicon's sequence patterns by key word; set by the engine before first use.
        self.index: dict[str, list[SeqPattern]] = {}

    def word_across(self, left: str, right: str) -> bool:
        """Whether the dictionary reads one word across the join of ``left`` and ``right``."""
        pos = 0
        for node in self._tagger(left + right):
            end = pos + len(node.white_space) + len(node.surface)
            if pos + len(node.white_space) < len(left) < end:
                return True
            pos = end
        return False

    def reading(self, word: str) -> str:
        """The hiragana reading of a word, used to add kana spellings of lexicon entries."""
        return katakana_to_hiragana("".join(n.feature.kana or n.surface for n in self._tagger(word)))

    def tokenize(self, norm: Normalized) -> list[Token]:
        tokens = self._tokenize(norm.text)
        if self._needs_kana_reading(norm, tokens):
            # Katakana written for kanji or hiragana words (ｼﾆﾀｲ -> シニタイ -> 四/二/タイ):
            # read the broken runs as hiragana; the length is the same, so offsets hold.
            tokens = self._tokenize(self._hiraganize_broken_runs(norm, tokens))
        if norm.emoji:
            tokens = self._insert_marks(tokens, norm)
        return tokens

    def _tokenize(self, text: str) -> list[Token]:
        out: list[Token] = []
        pos = 0
        cache = self._cache
        for node in self._tagger(text):
            surface = node.surface
            # MeCab skips white space and keeps it on the next node; never trust it blindly.
            start = pos + len(node.white_space)
            if not text.startswith(surface, start):
                start = text.find(surface, pos)
                if start < 0:
                    start = pos
            # Reading a node's features builds a named tuple; the raw feature string is cheap,
            # and the same word with the same features always reads the same.
            # The raw features hold the written form, so they name a known word on their own;
            # unknown words all share one feature string and are told apart by their surface.
            raw = node.feature_raw
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
            lemma, orth, pos1, pos2, cform, keys, unknown, kata, patterns = morph
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
        return out

    def _morph(self, surface: str, f: Any) -> _Morph:
        lemma = _clean_lemma(f.lemma, surface)
        orth = f.orthBase if f.orthBase and f.orthBase != "*" else surface
        keys = _keys(lemma, orth, surface, katakana_to_hiragana(surface))
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
        )

    def patterns_for(self, keys: tuple[str, ...]) -> tuple[SeqPattern, ...]:
        out: list[SeqPattern] = []
        for key in keys:
            for pat in self.index.get(key, ()):
                if pat not in out:
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
