"""Metamorphic tests of the triage: the same message spelt otherwise keeps its risk.

The transformations are those of tests/transforms.py (kana scripts, half width, romaji, spaces, one
character per line, elongation, digits for kana, masks). What must hold:

- on the labelled sets (the shared dev.jsonl and every tests/data/holdout*.jsonl), for each
  transformation, at least its floor (FLOORS; the target is MIN_KEPT, 98%) of the messages labelled
  high or crisis keep a triaged risk not below that of the original (slow: every message triaged
  once per transformation, then cached);
- no message triaged low as written becomes crisis once transformed (slow);
- crisis sentences generated from a small grammar (time + method + intent) stay crisis under every
  transformation (hypothesis);
- the transformations themselves: the examples of their docstrings, a few invariants, and no crash
  on any text.

`python -m tests.metamorphic_report` prints the same measurement as a table.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.helpers import repeatable
from tests.metamorphic_report import (
    FLOORS,
    LOW_TO_CRISIS_KNOWN,
    MIN_KEPT,
    SETS,
    Measurement,
    dev_path,
    load_cases,
)
from tests.transforms import (
    TRANSFORMS,
    digits_for_kana,
    elongated,
    half_width,
    has_kanji,
    hiragana,
    hiragana_all,
    katakana,
    katakana_half_width,
    masked,
    masked_symbols,
    one_per_line,
    pieces,
    romaji_hepburn,
    romaji_hepburn_unspaced,
    romaji_keyboard,
    spaced,
    to_hiragana,
)
from triage import Risk, triage

SHOWN = 15  # lost messages printed by a failure


def _settings(n: int) -> settings:
    # The same examples on every run and no example database (as in test_triage_properties.py).
    return repeatable(n, HealthCheck.filter_too_much)


# --------------------------------------------------------------------------- the labelled sets


@pytest.fixture(scope="module")
def measurement() -> Measurement:
    """Every labelled message, triaged once as written and once per transformation (on demand)."""
    if not dev_path().exists():
        pytest.fail(f"the shared development set is missing: {dev_path()} (set TSUNAGI_SHARED)")
    return Measurement(load_cases(require_dev=True))


_PER_SET = [pytest.param(name, s, id=f"{name}-{s}") for name in TRANSFORMS for s in SETS]


@pytest.mark.slow
@pytest.mark.parametrize("name,set_name", _PER_SET)
def test_risk_is_kept_under_transformation(measurement: Measurement, name: str, set_name: str) -> None:
    r = measurement.result(name, set_name)
    assert r.total > 0, f"no message labelled high or crisis in {set_name}"
    floor = min(FLOORS.get(name, MIN_KEPT), MIN_KEPT)
    if r.share < floor:
        shown = "\n".join(c.show() for c in r.lost[:SHOWN])
        pytest.fail(
            f"{name} on {set_name}: risk kept for {r.share:.1%} ({r.kept}/{r.total}) of the high and "
            f"crisis messages, under its floor {floor:.0%} (target {MIN_KEPT:.0%}); {len(r.lost)} lost, "
            f"the first {SHOWN}:\n{shown}",
            pytrace=False,
        )


@pytest.mark.slow
@pytest.mark.parametrize("name,set_name", _PER_SET)
def test_low_never_becomes_crisis(measurement: Measurement, name: str, set_name: str) -> None:
    r = measurement.result(name, set_name)
    if len(r.low_to_crisis) > LOW_TO_CRISIS_KNOWN.get(name, 0):
        shown = "\n".join(c.show() for c in r.low_to_crisis[:SHOWN])
        pytest.fail(
            f"{name} on {set_name}: {len(r.low_to_crisis)} messages triaged low become crisis:\n{shown}",
            pytrace=False,
        )


# --------------------------------------------------------------------------- generated crisis sentences

# Every composition is crisis by TAXONOMY.md: intent with a method and a time (a plan), and a note or
# a goodbye where the prefix says so. The time comes before or after the method.
TIMES = ["今夜", "今から", "いまから", "今すぐ", "明日の朝", "夜中の3時に", "このあと"]
METHODS = [  # (method, place or means) + intent
    ("屋上から", "飛び降りる"),
    ("マンションの10階から", "飛び降りる"),
    ("橋から", "飛び降りる"),
    ("駅のホームから", "飛び込む"),
    ("電車に", "飛び込む"),
    ("ロープで", "首を吊る"),
    ("クローゼットで", "首を吊る"),
    ("薬を全部", "飲む"),
    ("睡眠薬をまとめて", "飲んで死ぬ"),
    ("練炭で", "死ぬ"),
    ("カッターで", "手首を切って死ぬ"),
    ("海に", "入って死ぬ"),
]
PREFIXES = ["", "もう限界。", "遺書は書いた。", "みんなさようなら。"]
SUFFIXES = ["", "。", "つもり", "ことにした", "と決めた"]


@st.composite
def crisis_sentence(draw: st.DrawFn) -> str:
    time = draw(st.sampled_from(TIMES))
    method, intent = draw(st.sampled_from(METHODS))
    middle = time + method if draw(st.booleans()) else method + time
    return draw(st.sampled_from(PREFIXES)) + middle + intent + draw(st.sampled_from(SUFFIXES))


def _why(text: str) -> str:
    result = triage(text)
    return f"{result.risk.value} {[(r.rule, r.matched) for r in result.reasons]}"


@_settings(300)
@given(crisis_sentence())
def test_grammar_sentences_are_crisis_as_written(text: str) -> None:
    assert triage(text).risk is Risk.CRISIS, (text, _why(text))


# Spellings the engine reads whatever the sentence: every generated crisis stays crisis. The kana
# scripts and romaji are not there yet (the dictionary cuts some kana across words: いますぐれんたん
# read as いま/すぐれん/た/ん; romaji run together leaves を as お): for them every core sentence is
# measured, against a floor (GRAMMAR_FLOORS).
ROBUST = ["half_width", "spaced", "one_per_line", "elongated", "masked", "masked_symbols"]
GRAMMAR_FLOORS = {  # measured 0.976 (0.970 for romaji with spaces, 0.804 run together) when set
    "hiragana": 0.96,
    "hiragana_all": 0.96,
    "katakana": 0.96,
    "katakana_half_width": 0.96,
    "romaji_hepburn": 0.95,
    "romaji_hepburn_unspaced": 0.79,
    "romaji_keyboard": 0.95,
    "digits_for_kana": 0.96,
}
CORE_SENTENCES = [
    first + second + intent
    for time in TIMES
    for method, intent in METHODS
    for first, second in ((time, method), (method, time))
]


@pytest.mark.parametrize("name", ROBUST)
@_settings(60)
@given(text=crisis_sentence())
def test_grammar_crisis_survives_transformation(name: str, text: str) -> None:
    """One test per transformation, so that a failure names it (hypothesis stops at the first)."""
    assume(triage(text).risk is Risk.CRISIS)  # the sentence itself: the test above
    variant = TRANSFORMS[name](text)
    assert triage(variant).risk is Risk.CRISIS, (name, text, variant, _why(variant))


def test_every_transformation_is_held_to_a_bar() -> None:
    assert set(ROBUST) | set(GRAMMAR_FLOORS) == set(TRANSFORMS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GRAMMAR_FLOORS))
def test_grammar_crisis_share_under_transformation(name: str) -> None:
    crisis = [t for t in CORE_SENTENCES if triage(t).risk is Risk.CRISIS]
    assert len(crisis) == len(CORE_SENTENCES)
    lost = [(t, TRANSFORMS[name](t)) for t in crisis if triage(TRANSFORMS[name](t)).risk is not Risk.CRISIS]
    share = 1 - len(lost) / len(crisis)
    assert share >= GRAMMAR_FLOORS[name], (
        f"{name}: {share:.1%} of {len(crisis)} core crisis sentences stay crisis; lost: "
        + "; ".join(f"{t} -> {v} ({_why(v)})" for t, v in lost[:10])
    )


# --------------------------------------------------------------------------- the transformations


@pytest.mark.parametrize(
    "f,text,expected",
    [
        (hiragana, "今夜屋上から飛び降りる", "こんやおくじょうからとびおりる"),
        (hiragana, "もうロープを用意した。😭 OD", "もうロープをよういした。😭 OD"),
        (hiragana_all, "もうロープを用意した", "もうろーぷをよういした"),
        (katakana, "今夜死ぬ", "コンヤシヌ"),
        (half_width, "リスカした。ＯＤも　ガッコウ", "ﾘｽｶした｡ODも ｶﾞｯｺｳ"),
        (katakana_half_width, "死にたい", "ｼﾆﾀｲ"),
        (romaji_hepburn, "今夜屋上から飛び降りる", "konya okujou kara tobioriru"),
        (romaji_hepburn, "死にたい。ちょっと待って", "shinitai. chotto matte"),
        (romaji_hepburn, "学校は嫌", "gakkou wa iya"),
        (romaji_hepburn_unspaced, "今夜屋上から飛び降りる", "konyaokujoukaratobioriru"),
        (romaji_keyboard, "死にたい", "sinitai"),
        (romaji_keyboard, "今夜、ちょっと待って", "konnya, tyotto matte"),
        (romaji_keyboard, "しゃべる、じゃあ、ふつう、原因、あっ", "syaberu, zyaa, hutuu, genninn, axtu"),
        (romaji_keyboard, "学校は嫌", "gakkou ha iya"),
        (spaced, "死にたい", "死 に た い"),
        (one_per_line, "死にたい", "死\nに\nた\nい"),
        (elongated, "死にたい。つらい", "死にたいぃぃ。つらーい"),
        (elongated, "今から飛び降りる", "今から飛び降りるぅぅ"),
        (digits_for_kana, "死にたい", "42たい"),
        (digits_for_kana, "死ね。ODした", "4ね。0Dした"),
        (masked, "死にたい。自殺する。殺される", "タヒにたい。じさつする。ころされる"),
        (masked_symbols, "死にたい。殺される", "氏にたい。〇される"),
    ],
)
def test_transformation_examples(f: object, text: str, expected: str) -> None:
    assert callable(f)
    assert f(text) == expected


def test_every_transformation_says_what_it_imitates() -> None:
    required = {
        "hiragana",
        "katakana",
        "romaji_hepburn",
        "romaji_keyboard",
        "half_width",
        "spaced",
        "one_per_line",
        "elongated",
        "digits_for_kana",
        "masked",
    }
    assert required <= set(TRANSFORMS)
    for name, f in TRANSFORMS.items():
        assert f.__doc__ and len(f.__doc__) > 40, name


_any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=80)  # surrogates, NUL too
_ja_text = st.text(
    alphabet=st.sampled_from("死殺にたい今夜屋上から飛び降りるっんーゃゅょァヴｶﾞＯＤOD。、 　\n😭々ヶ12"),
    max_size=40,
)


@_settings(150)
@given(st.one_of(st.text(), _any_text, _ja_text), st.sampled_from(sorted(TRANSFORMS)))
def test_transformations_never_crash_and_are_deterministic(text: str, name: str) -> None:
    f = TRANSFORMS[name]
    out = f(text)
    assert isinstance(out, str)
    assert f(text) == out


@_settings(150)
@given(st.one_of(st.text(), _ja_text, _any_text))
def test_transformation_invariants(text: str) -> None:
    # The words and what lies between them give the text back.
    assert "".join(p if isinstance(p, str) else p.surface for p in pieces(text)) == text
    # Kana scripts agree with each other.
    assert to_hiragana(katakana(text)) == hiragana_all(text)
    # Text with no kanji is already as typed without conversion.
    if not has_kanji(text):
        assert hiragana(text) == text
    # Half width changes forms only (NFKC reads both alike).
    assert unicodedata.normalize("NFKC", half_width(text)) == unicodedata.normalize("NFKC", text)
    # Layouts keep every character in order.
    assert spaced(text)[::2] == text
    assert one_per_line(text)[::2] == text
    # Masks leave no death word behind.
    assert "死" not in masked(text)
    assert not {"死", "殺"} & set(masked_symbols(text))
