"""The distress signal (content/triage/distress.yaml) as a table: words of someone at the end of their
strength give the signal, the same words denied, past, in fiction, joking or quoted do not. The
signal never changes a risk, a category or a reason: the rules stay as the lexicon makes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import DATA, load_jsonl
from triage import get_engine, triage, triage_conversation
from triage.engine import Engine
from triage.paths import CONTENT_DIR
from triage.ruleset import ContentError

DISTRESS = [
    # exhaustion
    "もう疲れた",
    "疲れ果てた",
    "疲れ切ってしまいました",
    "全部に疲れた",
    "もう何もかも疲れた",
    "気力がない",
    "布団から起き上がれない",
    # hopelessness
    "希望がない",
    "未来が見えない",
    "もうどうでもいい",
    "疲れた。もう何もかもどうでもいい",
    "何をしても無駄",
    "誰もわかってくれない",
    "一人ぼっちです",
    # at the limit
    "もう限界",
    "もう無理",
    "もうむり",
    "耐えられない",
    "これ以上頑張れない",
    "心が壊れそう",
    "追い詰められてる",
    # wanting everything to stop
    "全部終わってほしい",
    "全部やめたい",
    "何もかも終わらせたい",
    "逃げたい",
    "何も考えたくない",
    "もう終わりだ",
    "今夜、全部終わらせる",
    "明日が来なければいいのに",
    # crying
    "毎日泣いてる",
    "涙が止まらない",
    "😭",
    # fear
    "怖い",
    "こわくて震えが止まらない",
    "不安でたまらない",
    "パニックになる",
    # in a longer message
    "最近、仕事のことで毎日泣いてばかりで、もう限界です",
]

NOT_DISTRESS = [
    "疲れてない",  # negated
    "怖くない",
    "泣いてない",
    "限界じゃない",
    "どうでもよくない",
    "昔はよく泣いてた",  # past
    "映画で泣いた",  # fiction
    "ホラー映画が怖い",
    "疲れた笑",  # joking
    "「もう無理」って友達が言ってた",  # someone else's words
    "今日は部活で疲れた",  # ordinary tiredness
    "どうでもいいけど、明日晴れるかな",
    "宿題もう終わった",
    "こんにちは",
    "16〜18歳",
    "はい",
]


@pytest.mark.parametrize("text", DISTRESS)
def test_distress_gives_the_signal(text: str) -> None:
    result = triage(text)
    assert result.signals == ("distress",), text
    assert result.to_json()["signals"] == ["distress"]


@pytest.mark.parametrize("text", NOT_DISTRESS)
def test_no_signal_where_there_is_no_distress(text: str) -> None:
    result = triage(text)
    assert result.signals == (), text
    assert "signals" not in result.to_json()


def test_the_signal_is_the_messages_own_in_a_conversation() -> None:
    """In its conversation the signal is this message's: earlier distress is not carried over."""
    assert triage_conversation("もう限界", ["こんにちは"]).signals == ("distress",)
    assert triage_conversation("こんにちは", ["もう限界"]).signals == ()


@pytest.fixture(scope="module")
def without_distress(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The engine with an empty distress.yaml: what the rules make of messages without the signal."""
    target = tmp_path_factory.mktemp("content") / "triage"
    shutil.copytree(CONTENT_DIR, target)
    (target / "distress.yaml").write_text("concepts: {}\n", encoding="utf-8")
    return Engine(target)


def test_the_signal_changes_no_risk_category_or_reason(without_distress: Engine) -> None:
    engine = get_engine()
    texts = DISTRESS + NOT_DISTRESS
    for path in ("trap_cases.jsonl", "rule_cases.jsonl", "holdout11.jsonl"):
        texts += [row["text"] for row in load_jsonl(DATA / path)]
    changed = []
    signalled = 0
    for text in texts:
        got = engine.triage(text).to_json()
        signalled += bool(got.pop("signals", None))
        if got != without_distress.triage(text).to_json():
            changed.append(text)
    assert changed == [], json.dumps(changed, ensure_ascii=False)
    assert signalled > len(DISTRESS), "the sets hold distress beyond this table too"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("concepts:\n  ideation:\n    terms: [つらい]\n", "taken in lexicon.yaml"),
        ("concepts:\n  distress_x:\n    inactive_when: [sleepy]\n    terms: [つらい]\n", "unknown flags"),
        ("concepts:\n  distress_x:\n    inactive_when: [negated]\n", "needs a 'terms' list"),
        ("concepts: [つらい]\n", "distress.yaml"),
    ],
)
def test_a_bad_distress_file_is_refused_with_its_place(tmp_path: Path, text: str, message: str) -> None:
    target = tmp_path / "triage"
    shutil.copytree(CONTENT_DIR, target)
    (target / "distress.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ContentError, match=message):
        Engine(target)
