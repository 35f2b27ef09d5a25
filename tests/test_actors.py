"""Who did it: words in quotes are the act of the person named as saying them."""

from __future__ import annotations

import pytest

from triage import triage

CASES = [
    # the speaker named after the quote (and a quote particle), before に/から and a verb of saying
    ("「死ねばいいのに」って彼氏に言われた", "dv"),
    ("「お前は役立たずだ」と上司から毎日言われる", "power_harassment"),
    # named before the quote, as before
    ("彼氏に「死ねばいいのに」って言われた", "dv"),
]


@pytest.mark.parametrize("text,category", CASES)
def test_quoted_words_belong_to_the_speaker_named(text: str, category: str) -> None:
    result = triage(text)
    assert category in {c.value for c in result.categories}, [(r.rule, r.matched) for r in result.reasons]


def test_someone_named_later_in_another_clause_is_not_the_speaker() -> None:
    # the friend is who they told, not who said it
    result = triage("クラスのやつらに「キモい」って言われて、友達に相談した")
    assert "bullying" in {c.value for c in result.categories}
