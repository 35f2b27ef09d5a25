"""The triage's shortcuts give what the long way gives.

The engine skips work where it can tell that the work would find nothing: a substitution whose
letters are not in the text, a trie walked on the text as written instead of a folded copy, letters
counted one by one instead of matched. Each test here holds a shortcut to the long way it stands
for, on generated text; the results of the whole triage are held by the other triage tests.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import repeatable
from triage import get_engine
from triage.normalize import _doubled, _holds_letters, _needed_letters, fold, trie_as_written, written_forms
from triage.ruleset import TRIE_END
from triage.tokens import _JA_LETTER, _KANJI_CHAR, _kana_typed

# Letters the shortcuts care about: kana of both scripts, kanji, ASCII, marks, digits, masks.
_LETTERS = (
    "あいうえおかきくけこしすたちつてとなにぬねのまみむもやよらりるれろわをんっぃぇー"
    "アイウエオカキクケコシスタチツテトナニヌネノマミムモヤヨラリルレロワヲンッィェヶ"
    "ﾀﾋｼﾈ死氏市自生消今夜々〆一鿿"
    "abcdwxyzABCDWXYZ0124 \n。、・.…○〇●*＊"
    "ぁぅぉ〜~！？!?"
)
_text = st.text(alphabet=_LETTERS, max_size=40)
SETTINGS = repeatable(300)


def _kana_typed_long_way(text: str) -> bool:
    kanji = len(_KANJI_CHAR.findall(text))
    if kanji * 8 > len(text):
        return False
    letters = len(_JA_LETTER.findall(text))
    return letters >= 4 and kanji * 8 <= letters


@SETTINGS
@given(_text)
def test_kana_typed_counts_as_the_expressions_do(text: str) -> None:
    assert _kana_typed(text) == _kana_typed_long_way(text)


def _walk(trie: dict[str, Any], text: str, start: int) -> list[tuple[int, Any]]:
    """Every (end, what ends there) on the way from ``start``."""
    out = []
    node = trie
    j = start
    while j < len(text):
        child = node.get(text[j])
        if child is None:
            break
        node = child
        j += 1
        if TRIE_END in node:
            out.append((j, node[TRIE_END]))
    return out


@SETTINGS
@given(_text)
def test_the_lexicon_trie_as_written_finds_what_the_folded_text_finds(text: str) -> None:
    engine = get_engine()
    folded = fold(text)
    for start in range(len(text)):
        assert _walk(engine._trie_as_written, text, start) == _walk(engine.rules.trie, folded, start)


_small = st.lists(st.sampled_from(["リ", "ス", "カ", "り", "す", "か", "R", "r", "ー", "x"]), max_size=6)


@SETTINGS
@given(_small.map("".join))
def test_a_small_trie_as_written(text: str) -> None:
    trie: dict[str, Any] = {}
    for word in ("りすか", "りす", "r", "すー", "Rx"):  # Rx: a capital is never met in folded text
        node = trie
        for letter in word:
            node = node.setdefault(letter, {})
        node[TRIE_END] = word
    written = trie_as_written(trie, TRIE_END)
    for start in range(len(text)):
        assert _walk(written, text, start) == _walk(trie, fold(text), start)


def test_written_forms() -> None:
    assert written_forms("たて") == "たてタテ"
    assert written_forms("ー") == "ー"
    assert written_forms("a") == "aA"


@SETTINGS
@given(_text)
def test_a_substitution_skipped_for_its_letters_would_not_have_matched(text: str) -> None:
    for pattern, _repl in get_engine().normalizer.config.substitutions:
        if not _holds_letters(text, _needed_letters(pattern)):
            assert pattern.search(text) is None, pattern.pattern


@SETTINGS
@given(_text)
def test_an_elongation_pass_skipped_for_its_letters_would_not_have_matched(text: str) -> None:
    for pattern, _rewrite, needed, twice in get_engine().normalizer._post_passes:
        if not _holds_letters(text, needed) or (twice and not _doubled(text)):
            assert pattern.search(text) is None, pattern.pattern


def test_needed_letters_of_some_expressions() -> None:
    # letters in a row are needed together too, and first (a string rules out more than a letter)
    assert _needed_letters(re.compile("タヒ")) == (("タヒ",), ("タ",), ("ヒ",))
    assert _needed_letters(re.compile("(?<=てって)い")) == (("てって",), ("い",), ("っ",), ("て",))
    # a branch of words needs one of them
    needed = (("こう", "コウ"), ("1", "2", "3"), ("こ", "コ"))
    assert _needed_letters(re.compile("(?:こう|コウ)[1-3]")) == needed
    assert _needed_letters(re.compile("(?:こう|コ)x")) == (("x",), ("こう", "コ"), ("こ", "コ"))
    assert _needed_letters(re.compile("(?<=[たな])ぃ")) == (("ぃ",), ("た", "な"))
    assert _needed_letters(re.compile("(\\.{3,}|・{3,})")) == ((".", "・"),)
    # a negative lookaround, an optional letter, a category or a flag tell nothing
    assert _needed_letters(re.compile("(?<!x)y?\\s")) == ()
    assert _needed_letters(re.compile("abc", re.IGNORECASE)) == ()
    assert _holds_letters("たぃ", (("ぃ",), ("た", "な")))
    assert not _holds_letters("かぃ", (("ぃ",), ("た", "な")))


@SETTINGS
@given(st.text(max_size=30))
def test_doubled_letters_as_the_expression_finds_them(text: str) -> None:
    assert _doubled(text) == (re.search("(.)\\1", text) is not None)


_bmp_text = st.text(alphabet=st.characters(max_codepoint=0xFFFF), max_size=30) | st.text(
    alphabet="ａＡ１！？　（）ｶﾞﾀ…‥〜～①㍻ﾟ\u3099\u309aあア。T;", max_size=30
)


@SETTINGS
@given(_bmp_text)
def test_the_classes_for_text_within_the_bmp_find_what_the_whole_classes_find(text: str) -> None:
    normalizer = get_engine().normalizer
    assert [m.span() for m in normalizer._nfkc_bmp.finditer(text)] == [
        m.span() for m in normalizer._nfkc.finditer(text)
    ]
    assert normalizer._quick_pre_bmp is not None
    assert [m.span() for m in normalizer._quick_pre_bmp.finditer(text)] == [
        m.span() for m in normalizer._quick_pre.finditer(text)
    ]
