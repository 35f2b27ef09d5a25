"""Property tests of the triage engine (hypothesis).

What must hold whatever the input:
- triage never crashes, and its result is well formed (risk, categories, reasons whose
  spans point at the words they quote in the text as received);
- a crisis sentence stays crisis however it is written (kana script, half-width kana,
  full-width Latin, elongation, a space inside a word, zero-width characters) and wherever
  it stands (buried at the end of a long everyday message);
- negating ideation (死にたくない) never raises the risk;
- the risk of a conversation never falls below that of its recent messages or of the
  message itself.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from tests.helpers import repeatable
from tests.transforms import HALF_WIDTH, HALF_WIDTH_MARKS, to_hiragana, to_katakana
from triage import MAX_CHARS, Category, Risk, TriageResult, triage, triage_conversation

FAST = repeatable(200)
MEDIUM = repeatable(400)

# --------------------------------------------------------------------------- helpers

_SURROGATE = re.compile("[\ud800-\udfff]")


def _as_shown(text: str) -> str:
    """The text as the engine may show it back: lone surrogates become U+FFFD (same length)."""
    return _SURROGATE.sub("\ufffd", text)


def _check_well_formed(text: str, result: TriageResult, alone: bool = True) -> None:
    assert isinstance(result, TriageResult)
    assert isinstance(result.risk, Risk)
    assert result.risk.rank in (0, 1, 2, 3)
    assert all(isinstance(c, Category) for c in result.categories)
    assert len(set(result.categories)) == len(result.categories), result.categories
    assert result.truncated == (len(text) > MAX_CHARS)
    read = min(len(text), MAX_CHARS)
    for reason in result.reasons:
        assert isinstance(reason.rule, str) and reason.rule
        start, end = reason.span
        assert isinstance(start, int) and isinstance(end, int)
        assert 0 <= start <= end <= read, (reason, len(text))
        # The span points at the words quoted, in the text as it was received.
        assert reason.matched == _as_shown(text[start:end]), (reason, text[start:end])
    if result.empty and alone:
        assert result.risk is Risk.LOW
        assert result.categories == ()
        assert result.reasons == ()


# Fragments that make rules fire, so that the well-formedness checks see real reasons.
_JA_FRAGMENTS = [
    "死にたい",
    "しにたい",
    "ｼﾆﾀｲ",
    "シニタイ",
    "消えたい",
    "今から",
    "いまから",
    "飛び降りる",
    "今夜",
    "遺書",
    "リスカ",
    "ＯＤ",
    "OD",
    "薬",
    "全部",
    "飲んだ",
    "夫に",
    "殴られた",
    "殺される",
    "包丁",
    "上司に",
    "セクハラ",
    "パワハラ",
    "怒鳴られる",
    "いじめ",
    "無視される",
    "元彼に",
    "待ち伏せ",
    "家出した",
    "泊まるところがない",
    "学校に行けない",
    "親に",
    "叩かれる",
    "痴漢",
    "盗撮された",
    "死にたくない",
    "昔は",
    "笑",
    "「死ね」と言われた",
    "死ぬほど忙しい",
    "。",
    "、",
    "　",
    " ",
    "\n",
    "ー",
    "〜",
    "ぁ",
    "！",
    "？",
    "…",
    "😭",
    "(´;ω;`)",
    "\u200b",
    "\ufeff",
    "\x00",
    "\x1b",
    "\ud800",
    "\udfff",
    "\U0001f52a",
    "\u3099",
    "\uff9e",
    "ｶﾞ",
]

_any_char = st.characters(exclude_categories=())  # includes surrogates, controls, unassigned
_any_text = st.text(alphabet=_any_char, max_size=200)
_ja_text = st.lists(
    st.one_of(st.sampled_from(_JA_FRAGMENTS), st.text(alphabet=_any_char, max_size=4)), max_size=60
).map("".join)
_long_text = st.builds(
    lambda parts, n: "".join(parts) * n,
    st.lists(st.sampled_from(_JA_FRAGMENTS), min_size=1, max_size=20),
    st.integers(min_value=1, max_value=400),
).map(lambda s: s[:5000])


# --------------------------------------------------------------------------- 1. no crash


@FAST
@given(_any_text)
def test_arbitrary_unicode_never_crashes(text: str) -> None:
    _check_well_formed(text, triage(text))


@MEDIUM
@given(_ja_text)
def test_japanese_like_text_never_crashes_and_spans_match(text: str) -> None:
    _check_well_formed(text, triage(text))


@repeatable(40)
@given(_long_text)
def test_long_text_never_crashes(text: str) -> None:
    _check_well_formed(text, triage(text))


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "　",
        "\n\t\n",
        "\u200b\u200b",
        "\x00",
        "\ud800",
        "😭",
        "ー",
        "ﾞ",
        "\u3099",
        "。。。",
        "「",
        "」",
    ],
)
def test_degenerate_inputs(text: str) -> None:
    result = triage(text)
    _check_well_formed(text, result)
    if not text.strip():
        assert result.empty
        assert result.risk is Risk.LOW


def test_over_max_chars_is_truncated_and_reads_the_start() -> None:
    text = "今から飛び降りる。" + "今日は晴れ。" * (MAX_CHARS // 6 + 10)
    assert len(text) > MAX_CHARS
    result = triage(text)
    _check_well_formed(text, result)
    assert result.truncated
    assert result.risk is Risk.CRISIS


# --------------------------------------------------------------------------- 2. crisis variants


@dataclass(frozen=True)
class Word:
    text: str
    pred: bool = False  # a predicate at the end of a clause: where people stretch a word


def W(text: str) -> Word:
    return Word(text)


def P(text: str) -> Word:
    return Word(text, pred=True)


# Each sentence is written as words, so that a transformation can act on one word.
# Every one of these is crisis as written (test_crisis_sentences_are_crisis).
CRISIS_SENTENCES: list[list[Word]] = [
    [P("しにたい"), W("　"), W("いまから"), P("飛び降りる")],
    [W("今"), W("から"), P("死ぬ")],
    [W("薬"), W("ぜんぶ"), P("飲んだ")],
    [W("遺書"), W("を"), P("書いた"), W("。"), W("今夜"), P("実行する")],
    [W("もう"), W("駅"), W("の"), W("ホーム"), P("にいる"), W("。"), P("死にたい")],
    [W("今夜"), W("首"), W("を"), P("吊る")],
    [P("さようなら"), W("。"), W("今"), W("から"), W("ビル"), W("から"), P("飛び降ります")],
    [W("もう"), W("ロープ"), W("を"), P("用意した"), W("。"), W("今夜"), P("死ぬ")],
    [W("屋上"), P("にいる"), W("。"), W("今"), W("から"), P("飛び降りる")],
    [W("睡眠薬"), W("を"), W("全部"), P("飲んだ")],
    [W("OD"), P("した"), W("。"), W("薬"), W("を"), W("全部"), P("飲んだ")],
    [W("今夜"), W("12"), W("時"), W("に"), P("飛び降りる")],
    [W("友達"), W("が"), W("今"), W("から"), W("死ぬ"), W("って"), P("言ってる")],
    [W("夫"), W("に"), W("今"), W("包丁"), W("を"), P("向けられてる"), W("。"), P("殺される")],
    [
        W("カッター"),
        W("で"),
        W("腕"),
        P("切ってる"),
        W("　"),
        W("今"),
        W("　"),
        W("血"),
        W("が"),
        P("止まらない"),
    ],
]


def _join(words: list[Word]) -> str:
    return "".join(w.text for w in words)


HIRA = re.compile("[ぁ-ゖ]")
KATA = re.compile("[ァ-ヶ]")
_KANA_WORD = re.compile("[ぁ-ゖァ-ヶー]+")
_PUNCT = frozenset("。、　 ")


def to_half_width_katakana(s: str) -> str:
    out = []
    for c in s:
        if KATA.fullmatch(c) or c == "ー":
            base = unicodedata.normalize("NFD", c)  # ガ -> カ + U+3099
            if all(b in HALF_WIDTH or b in HALF_WIDTH_MARKS for b in base):
                out.append("".join(HALF_WIDTH.get(b) or HALF_WIDTH_MARKS[b] for b in base))
                continue
        out.append(c)
    return "".join(out)


def to_full_width_latin(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)


_VOWEL_ROWS = {
    "あ": "あかさたなはまやらわがざだばぱぁゃゎ",
    "い": "いきしちにひみりぎじぢびぴぃ",
    "う": "うくすつぬふむゆるぐずづぶぷぅゅっ",
    "え": "えけせてねへめれげぜでべぺぇ",
    "お": "おこそとのほもよろをごぞどぼぽぉょ",
}
_VOWEL = {k: v for v, row in _VOWEL_ROWS.items() for k in row}


def vowel_of(kana: str) -> str | None:
    hira = to_hiragana(kana)
    return _VOWEL.get(hira)


ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]

EVERYDAY = [
    "今日は朝から雨でした。",
    "昨日は友達とカフェに行ってパンケーキを食べました。",
    "仕事が終わってから駅前のスーパーで買い物をした。",
    "最近ドラマを見るのにはまってて、毎週楽しみにしてる。",
    "来週は母の誕生日なので、プレゼントを何にしようか考え中です。",
    "猫が最近よく寝てて可愛い。",
    "電車が遅れてて会社に遅刻しそうだった",
    "お昼はコンビニのおにぎりにした！",
    "週末は部屋の掃除をして、洗濯物もたくさん干した。",
    "バイト先の人たちはみんな優しいです。",
    "テスト勉強しないといけないけど全然やる気が出ない😂",
    "\n",
    "あと、",
    "天気予報だと明日は晴れるらしい。",
]


@st.composite
def _sentence(draw: st.DrawFn) -> list[Word]:
    return list(draw(st.sampled_from(CRISIS_SENTENCES)))


@st.composite
def kana_script_variant(draw: st.DrawFn) -> str:
    """Kana words written in the other script: しにたい -> シニタイ, ロープ -> ろーぷ."""
    words = draw(_sentence())
    kana = [i for i, w in enumerate(words) if _KANA_WORD.fullmatch(w.text)]
    chosen = draw(st.sets(st.sampled_from(kana), min_size=1)) if kana else set()
    out = []
    for i, w in enumerate(words):
        if i in chosen:
            t = to_katakana(w.text) if HIRA.search(w.text) else to_hiragana(w.text)
            out.append(t)
        else:
            out.append(w.text)
    return "".join(out)


@st.composite
def half_width_variant(draw: st.DrawFn) -> str:
    """Some kana words in katakana, then every katakana half-width: ｼﾆﾀｲ　ｲﾏｶﾗ飛び降りる."""
    words = draw(_sentence())
    kana = [i for i, w in enumerate(words) if _KANA_WORD.fullmatch(w.text)]
    chosen = draw(st.sets(st.sampled_from(kana))) if kana else set()
    text = "".join(to_katakana(w.text) if i in chosen else w.text for i, w in enumerate(words))
    return to_half_width_katakana(text)


@st.composite
def full_width_variant(draw: st.DrawFn) -> str:
    """ASCII letters and digits in full width: ＯＤした, 今夜１２時に."""
    return to_full_width_latin(_join(draw(_sentence())))


@st.composite
def elongation_variant(draw: st.DrawFn) -> str:
    """A predicate stretched: しにたいいい, 死ぬうう, 飛び降りるーー, しにたーい."""
    words = draw(_sentence())
    preds = [
        i
        for i, w in enumerate(words)
        if w.pred and (HIRA.fullmatch(w.text[-1]) or KATA.fullmatch(w.text[-1]))
    ]
    i = draw(st.sampled_from(preds))
    word = words[i].text
    last = word[-1]
    n = draw(st.integers(min_value=2, max_value=5))
    how = draw(st.sampled_from(["repeat", "vowel", "small_vowel", "bar", "bar_inside", "wave"]))
    vowel = vowel_of(last) or last
    if how == "repeat":
        new = word + last * n
    elif how == "vowel":
        new = word + vowel * n
    elif how == "small_vowel":
        small = (
            {"あ": "ぁ", "い": "ぃ", "う": "ぅ", "え": "ぇ", "お": "ぉ"}[vowel]
            if vowel in "あいうえお"
            else vowel
        )
        new = word + small * n
    elif how == "bar":
        new = word + "ー" * (n - 1)
    elif how == "bar_inside" and last == "い" and len(word) >= 2 and _KANA_WORD.fullmatch(word[-2]):
        new = word[:-1] + "ー" * (n - 1) + last  # しにたーい, 止まらなーい
    elif how == "wave":
        new = word + "〜" * (n - 1)
    else:
        new = word + "ー" * (n - 1)
    return "".join(new if j == i else w.text for j, w in enumerate(words))


def _is_hiragana(c: str) -> bool:
    return "\u3041" <= c <= "\u309f"


@st.composite
def space_variant(draw: st.DrawFn) -> str:
    """One space inside one word: 死に たい, 飛び 降りる, 包 丁.

    Not between two hiragana: there a space is as likely to separate two words as to cut one
    (12さい いえでした, 家に いる), and no reader can tell them apart, so neither can triage.
    """
    words = draw(_sentence())
    cuts = [
        (i, at)
        for i, w in enumerate(words)
        if len(w.text) >= 2 and not set(w.text) & _PUNCT
        for at in range(1, len(w.text))
        if not (_is_hiragana(w.text[at - 1]) and _is_hiragana(w.text[at]))
    ]
    assume(cuts)
    i, at = draw(st.sampled_from(cuts))
    word = words[i].text
    space = draw(st.sampled_from([" ", "　"]))
    new = word[:at] + space + word[at:]
    return "".join(new if j == i else w.text for j, w in enumerate(words))


@st.composite
def zero_width_variant(draw: st.DrawFn) -> str:
    """Zero-width characters anywhere, inside words too."""
    text = _join(draw(_sentence()))
    inserts = draw(
        st.lists(
            st.tuples(st.integers(min_value=0, max_value=len(text)), st.sampled_from(ZERO_WIDTH)),
            min_size=1,
            max_size=6,
        )
    )
    for pos, ch in sorted(inserts, reverse=True):
        text = text[:pos] + ch + text[pos:]
    return text


@st.composite
def buried_variant(draw: st.DrawFn) -> str:
    """The crisis sentence at the end of a long message about something else."""
    before = draw(st.lists(st.sampled_from(EVERYDAY), min_size=1, max_size=40))
    sep = draw(st.sampled_from(["", "\n", "。", "　"]))
    return "".join(before) + sep + _join(draw(_sentence()))


@pytest.mark.parametrize("words", CRISIS_SENTENCES, ids=_join)
def test_crisis_sentences_are_crisis(words: list[Word]) -> None:
    text = _join(words)
    assert triage(text).risk is Risk.CRISIS


def test_transformation_helpers() -> None:
    assert to_katakana("しにたい") == "シニタイ"
    assert to_hiragana("ロープ") == "ろーぷ"
    assert to_half_width_katakana("シニタイ") == "ｼﾆﾀｲ"
    assert to_half_width_katakana("ガッコウ") == "ｶﾞｯｺｳ"
    assert to_half_width_katakana("ポーズ") == "ﾎﾟｰｽﾞ"
    assert to_half_width_katakana("死にたい") == "死にたい"
    assert to_full_width_latin("OD12") == "ＯＤ１２"
    assert vowel_of("ぬ") == "う" and vowel_of("タ") == "あ"


def _assert_crisis(text: str) -> None:
    result = triage(text)
    assert result.risk is Risk.CRISIS, (text, result.risk, [r.rule for r in result.reasons])


@MEDIUM
@given(kana_script_variant())
@example("もう駅のほーむにいる。死にたい")  # ホーム in hiragana
def test_crisis_survives_kana_script(text: str) -> None:
    _assert_crisis(text)


@MEDIUM
@given(half_width_variant())
@example("もう駅のﾎｰﾑにいる。死にたい")  # half-width ﾎｰﾑ
def test_crisis_survives_half_width_katakana(text: str) -> None:
    _assert_crisis(text)


@FAST
@given(full_width_variant())
def test_crisis_survives_full_width_latin(text: str) -> None:
    _assert_crisis(text)


@MEDIUM
@given(elongation_variant())
@example("もうロープを用意した。今夜死ぬううう")
@example("もう駅のホームにいるうう。死にたい")
def test_crisis_survives_elongation(text: str) -> None:
    _assert_crisis(text)


@MEDIUM
@given(space_variant())
@example("もう駅のホームにいる。死 にたい")
@example("今夜12時に飛び 降りる")
def test_crisis_survives_a_space_inside_a_word(text: str) -> None:
    _assert_crisis(text)


@MEDIUM
@given(zero_width_variant())
def test_crisis_survives_zero_width_characters(text: str) -> None:
    _assert_crisis(text)


@FAST
@given(buried_variant())
def test_crisis_survives_burial(text: str) -> None:
    _assert_crisis(text)


# --------------------------------------------------------------------------- 3. negation

IDEATION_PAIRS = [
    ("死にたい", "死にたくない"),
    ("しにたい", "しにたくない"),
    ("消えたい", "消えたくない"),
    ("自殺したい", "自殺したくない"),
    ("死にたいと思う", "死にたいとは思わない"),
    ("毎日死にたいと思ってる", "毎日死にたいとは思ってない"),
    ("今すぐ死にたい", "今すぐ死にたくはない"),
    ("もう死にたいです", "もう死にたくないです"),
    ("リスカしたい", "リスカしたくない"),
    ("いなくなりたい", "いなくなりたくない"),
]

_neg_prefix = st.sampled_from(["", "正直、", "最近", "今日も", "もう", "本当は", "仕事がつらくて"])
_neg_suffix = st.sampled_from(
    ["", "。", "です", "…", "！", "😢", "けど、どうしたらいい？", "。話を聞いてほしい"]
)


@MEDIUM
@given(st.sampled_from(IDEATION_PAIRS), _neg_prefix, _neg_suffix, st.booleans())
def test_negation_never_raises_risk(pair: tuple[str, str], prefix: str, suffix: str, kata: bool) -> None:
    plain, negated = pair
    if kata:
        plain, negated = (_katakana_kana_words(plain), _katakana_kana_words(negated))
    a = triage(prefix + plain + suffix)
    b = triage(prefix + negated + suffix)
    assert b.risk.rank <= a.risk.rank, (prefix + negated + suffix, b.risk, prefix + plain + suffix, a.risk)


def _katakana_kana_words(s: str) -> str:
    """Katakana for an all-hiragana message (しにたい -> シニタイ); others unchanged."""
    return to_katakana(s) if re.fullmatch("[ぁ-ゖー]+", s) else s


@pytest.mark.parametrize("plain,negated", IDEATION_PAIRS)
def test_negated_ideation_is_not_crisis(plain: str, negated: str) -> None:
    assert triage(negated).risk is not Risk.CRISIS


# --------------------------------------------------------------------------- 4. conversation floor

# Labelled by what they describe; the property needs only the engine's own verdicts, but
# the pool spans every level so that histories have something to carry.
POOL = {
    "crisis": [
        "今から飛び降りる",
        "薬ぜんぶ飲んだ",
        "夫に今包丁を向けられてる。殺される",
        "遺書を書いた。今夜実行する",
    ],
    "high": [
        "死にたいと毎日思う",
        "夫に毎日殴られてる。今日も蹴られた",
        "親に毎日叩かれる",
        "先週、知らない男に無理やりされた",
    ],
    "medium": [
        "上司に毎日怒鳴られてつらい",
        "クラスで無視されてる",
        "バイト先の店長にセクハラされる",
        "学校に行けない",
    ],
    "low": [
        "こんにちは",
        "相談は無料ですか？",
        "ありがとうございました",
        "今日は雨ですね",
    ],
}
_pool = [t for texts in POOL.values() for t in texts]
AMBIGUOUS = ["もう無理", "しにたい", "つらい", "助けて", "疲れた", "はい", ""]


@pytest.mark.parametrize("level", ["crisis", "high", "medium", "low"])
def test_pool_is_labelled_as_engine_sees_it(level: str) -> None:
    for text in POOL[level]:
        assert triage(text).risk.value == level, text


@MEDIUM
@given(
    st.lists(st.sampled_from(_pool), max_size=15),
    st.one_of(st.sampled_from(_pool + AMBIGUOUS), _ja_text),
)
def test_conversation_never_falls_below_recent_messages_or_itself(history: list[str], text: str) -> None:
    result = triage_conversation(text, history)
    floor = max([triage(h).risk.rank for h in history[-10:]], default=0)
    assert result.risk.rank >= floor, (history[-10:], text, result.risk)
    assert result.risk.rank >= triage(text).risk.rank
    # It is still a well-formed result for this text.
    _check_well_formed(text, result, alone=False)


def test_conversation_with_no_history_is_the_message_alone() -> None:
    for text in _pool + AMBIGUOUS:
        assert triage_conversation(text, []) == triage(text)


def test_conversation_floor_reaches_ten_messages_back() -> None:
    history = ["今から飛び降りる"] + ["こんにちは"] * 9
    result = triage_conversation("ありがとうございました", history)
    assert result.risk is Risk.CRISIS
    assert Category.SUICIDE in result.categories
