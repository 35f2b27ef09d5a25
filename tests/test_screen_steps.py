"""Intent, the suicide screen's fourth step: having decided is crisis, without a time or a method."""

from __future__ import annotations

import pytest

from triage import triage

CASES = [
    ("死ぬと決めた", "crisis"),
    ("死ぬって決めた", "crisis"),
    ("もう死ぬと決めました。", "crisis"),
    ("死ぬか決められない", "low"),  # undecided, no wish said: the conversation asks
    ("死ぬほど迷って決めた", "low"),  # the idiom
    ("死ぬと決めたのは昔の話", "low"),  # long past
]


@pytest.mark.parametrize("text,risk", CASES)
def test_having_decided_to_die_is_crisis(text: str, risk: str) -> None:
    result = triage(text)
    assert result.risk.value == risk, [(r.rule, r.matched) for r in result.reasons]
