"""Normalisation keeps a map back to the original text: reasons point at what was typed."""

from __future__ import annotations

import pytest

from triage import get_engine, triage
from triage.normalize import katakana_to_hiragana, sanitize


def norm(text: str) -> str:
    return get_engine().normalizer.normalize(text).text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ｼﾆﾀｲ", "シニタイ"),  # half-width katakana (NFKC), voicing marks joined
        # a message typed all in katakana is read as hiragana (the tokenizer spells the
        # lexicon's loanwords back in katakana)
        ("ﾘｽｶ ﾔﾒﾗﾚﾅｲ", "りすか やめられない"),
        ("ＯＤした", "ODした"),  # full-width Latin
        ("しにたいいいい", "しにたい"),  # elongation
        ("しにたーーーい", "しにたい"),
        ("たすけてぇぇ", "たすけて"),
        ("し○ね", "しね"),  # masking symbols between letters
        ("死\u200bに\u200bたい", "死にたい"),  # zero-width spaces
        ("死に たい", "死にたい"),  # a space inside a word
        ("し に た い", "しにたい"),
        ("家出中　今日泊まるとこない", "家出中 今日泊まるとこない"),  # a space between sentences stays
        ("タヒにたい", "死にたい"),
        ("氏にたい", "死にたい"),
        ("田中氏に相談した", "田中氏に相談した"),  # 氏 after a name is not 死
        ("毎日氏ねって言われる", "毎日死ねって言われる"),  # 氏ね quoted after a kanji is 死ね
        ("田中氏ねえ", "田中氏ねえ"),
        ("会ったら〇すって言われた", "会ったら殺すって言われた"),  # a mask for 殺 in a threat
        ("父に〇されるかも", "父に殺されるかも"),
        ("〇〇すって言われた", "〇〇すって言われた"),  # two masks may be any word
        ("〇してほしいこと", "〇してほしいこと"),  # a bullet
        ("まじむりｗｗｗ", "まじむり笑"),
        ("。。。", "。"),
    ],
)
def test_normalised_text(raw: str, expected: str) -> None:
    assert norm(raw) == expected


def read(text: str) -> str:
    """The text as the tokenizer reads it: normalised, then kana the dictionary cut badly spelt as
    the lexicon's words."""
    engine = get_engine()
    return engine.tokenizer.tokenize(engine.normalizer.normalize(text))[0].text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # an adnominal and a noun cut into single kana (この|ま|え); この間 (このま) is not looked
        # for, so このまま stays
        ("このまえそれでけんかになった", "この前それでけんかになった"),
        ("このままじゃだめ", "このままじゃだめ"),
        # romaji run together: n before o is ん and お where a noun of the lexicon ends; no loanword
        # from right after っ (もっと|おくらない, not もっ|トーク)
        ("shashinokutte", "写真送って"),
        ("mottookuranaito", "もっとおくらないと"),
        # a particle and a common noun read whole are not respelt (not お|や画鋲|いん)
        ("おやがびょういんにいった", "おやがびょういんにいった"),
        # a verb's form before the passive, the word before a particle
        ("ともだちがよわされた", "ともだちが酔わされた"),
        ("かれのよわさがすき", "かれの弱さがすき"),
        # not from the て of a verb's form (なっ|て|くび)
        ("けんかになってくびしめられた", "けんかになって首締められた"),
    ],
)
def test_read_text(raw: str, expected: str) -> None:
    assert read(raw) == expected


def test_offsets_point_into_the_original() -> None:
    text = "ﾏｼﾞで　しにたいいいい　💊ぜんぶ飲んだ"
    result = triage(text)
    assert result.reasons
    for reason in result.reasons:
        start, end = reason.span
        assert 0 <= start <= end <= len(text)
        assert text[start:end] == reason.matched


def test_emoji_become_words_with_their_own_span() -> None:
    text = "🔪もって台所にいる　いまから切る"
    result = triage(text)
    assert result.risk.value == "crisis"
    assert any(r.matched == "🔪" for r in result.reasons)


def test_katakana_reading() -> None:
    assert katakana_to_hiragana("シニタイ") == "しにたい"
    assert katakana_to_hiragana("リスカ、OD") == "りすか、OD"


def test_sanitize_keeps_length() -> None:
    text = "ok\ud800ok"
    assert sanitize(text) == "ok\ufffdok"
    assert len(sanitize(text)) == len(text)


@pytest.mark.parametrize("text", ["", " ", "\n\t　", "\x00\x01", "\ud800", "🙂", "(´；ω；`)"])
def test_degenerate_input_is_low_and_says_why(text: str) -> None:
    result = triage(text)
    assert result.risk.value in ("low", "medium")
    if not text.strip() or text.strip("\x00\x01") == "":
        assert result.empty or result.risk.value == "low"
