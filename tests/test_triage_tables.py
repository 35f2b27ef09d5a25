"""Triage read as tables of Japanese messages and expected results.

- trap_cases.jsonl: every trap of TAXONOMY.md, one case a row; each must be exact.
- rule_cases.jsonl: cases for rules the other tables do not reach.
- conversations.jsonl: messages with their earlier messages (history).
- dev.jsonl (shared) and three held-out sets written by other hands: scored like the
  outside check, with the bars of the issue (dev) and regression floors (held-out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DATA, load_jsonl
from triage import Risk, get_engine, triage, triage_conversation

TRAPS = load_jsonl(DATA / "trap_cases.jsonl")
RULE_CASES = load_jsonl(DATA / "rule_cases.jsonl")
CONVERSATIONS = load_jsonl(DATA / "conversations.jsonl")
RANK = {r.value: r.rank for r in Risk}


@pytest.mark.parametrize("case", TRAPS, ids=[c["id"] for c in TRAPS])
def test_trap_case(case: dict[str, Any]) -> None:
    result = triage(case["text"])
    got = (result.risk.value, sorted(c.value for c in result.categories))
    assert got == (case["risk"], sorted(case["categories"])), f"{case['note']}\n{case['text']}"


@pytest.mark.parametrize("case", RULE_CASES, ids=[c["id"] for c in RULE_CASES])
def test_rule_case(case: dict[str, Any]) -> None:
    """Cases written for rules that the other tables do not reach."""
    result = triage(case["text"])
    got = (result.risk.value, sorted(c.value for c in result.categories))
    assert got == (case["risk"], sorted(case["categories"])), case["note"]


@pytest.mark.parametrize("case", CONVERSATIONS, ids=[c["id"] for c in CONVERSATIONS])
def test_conversation_case(case: dict[str, Any]) -> None:
    result = triage_conversation(case["text"], case["history"])
    got = (result.risk.value, sorted(c.value for c in result.categories))
    assert got == (case["risk"], sorted(case["categories"])), case["note"]


def test_every_trap_family_is_covered() -> None:
    """The trap table holds several cases of every trap named in TAXONOMY.md."""
    notes = " ".join(c["note"] for c in TRAPS)
    for trap in (
        "negation",
        "quoted",
        "idiom",
        "orthography",
        "slang",
        "burial",
        "third_party",
        "info_request",
    ):
        assert notes.count(trap) >= 3, trap


def score(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The figures of ../shared/triage/score.py, computed the same way."""
    engine = get_engine()
    tp = fn = fp = under = 0
    ctp = cfp = cfn = 0
    for row in rows:
        result = engine.triage(row["text"])
        gold, pred = row["risk"], result.risk.value
        if gold == "crisis" and pred == "crisis":
            tp += 1
        elif gold == "crisis":
            fn += 1
        elif pred == "crisis":
            fp += 1
        if RANK[pred] < RANK[gold]:
            under += 1
        gc, pc = set(row["categories"]), {c.value for c in result.categories}
        ctp += len(gc & pc)
        cfp += len(pc - gc)
        cfn += len(gc - pc)
    p = ctp / (ctp + cfp) if ctp + cfp else 0.0
    r = ctp / (ctp + cfn) if ctp + cfn else 0.0
    return {
        "crisis_recall": tp / (tp + fn),
        "crisis_precision": tp / (tp + fp) if tp + fp else 0.0,
        "under_triage_rate": under / len(rows),
        "category_micro_f1": 2 * p * r / (p + r) if p + r else 0.0,
    }


def test_development_set_meets_the_bar(shared_dir: Path) -> None:
    figures = score(load_jsonl(shared_dir / "triage" / "dev.jsonl"))
    assert figures["crisis_recall"] == 1.0, figures
    assert figures["crisis_precision"] >= 0.9, figures
    assert figures["under_triage_rate"] <= 0.03, figures
    assert figures["category_micro_f1"] >= 0.9, figures


# Held-out sets written by other hands from TAXONOMY.md alone. Each was scored blind once
# (the README gives those first figures) and then used to find missing language, so they
# are no longer blind. The floors sit a little under today's figures: they catch
# regressions, they are not goals.
HELD_OUT_FLOORS = {
    "holdout.jsonl": {"crisis_recall": 0.9, "under_triage_rate": 0.13, "category_micro_f1": 0.88},
    "holdout2.jsonl": {"crisis_recall": 0.9, "under_triage_rate": 0.15, "category_micro_f1": 0.85},
    "holdout3.jsonl": {"crisis_recall": 0.9, "under_triage_rate": 0.18, "category_micro_f1": 0.83},
    "holdout4.jsonl": {"crisis_recall": 0.9, "under_triage_rate": 0.15, "category_micro_f1": 0.85},
    "holdout5.jsonl": {"crisis_recall": 0.9, "under_triage_rate": 0.1, "category_micro_f1": 0.87},
    "holdout6.jsonl": {"crisis_recall": 0.9, "under_triage_rate": 0.1, "category_micro_f1": 0.82},
    "holdout7.jsonl": {"crisis_recall": 0.9, "under_triage_rate": 0.1, "category_micro_f1": 0.87},
    "holdout8.jsonl": {"crisis_recall": 0.78, "under_triage_rate": 0.2, "category_micro_f1": 0.78},
    "holdout9.jsonl": {"crisis_recall": 0.95, "under_triage_rate": 0.03, "category_micro_f1": 0.92},
    "holdout10.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.88},
    "holdout11.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.93},
    "holdout12.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.93},
    "holdout13.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.94},
    "holdout14.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.09, "category_micro_f1": 0.9},
    "holdout15.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.08, "category_micro_f1": 0.9},
    # scored once, blind (0.796 / 0.653 crisis recall), left unfitted as an estimate for several rounds,
    # then worked on (with holdout20/21) once a new sealed pair took their place
    "holdout16.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.06, "category_micro_f1": 0.91},
    "holdout17.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.06, "category_micro_f1": 0.91},
    # scored once, blind (0.84 / 0.86 crisis recall), then worked on
    "holdout18.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.94},
    "holdout19.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.95},
    # scored once, blind (0.86 / 0.82 crisis recall, after the work on holdout18 and 19), then worked on
    "holdout22.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.93},
    "holdout23.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.02, "category_micro_f1": 0.95},
    # written blind with holdout18 and 19, kept sealed through all the work, scored once at the end (the
    # README's estimate: 0.860 / 0.940), left unfitted for several rounds, then worked on with holdout16/17
    "holdout20.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.05, "category_micro_f1": 0.93},
    "holdout21.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.04, "category_micro_f1": 0.92},
    # scored once, blind (0.886 / 0.773 crisis recall, after the estimate pair), then worked on
    "holdout24.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.02, "category_micro_f1": 0.94},
    "holdout25.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.02, "category_micro_f1": 0.92},
    # written blind with holdout24 and 25, sealed through that work, scored once at its end (the README's
    # estimate: 0.659 / 0.636 crisis recall), then worked on
    "holdout26.jsonl": {"crisis_recall": 0.95, "under_triage_rate": 0.04, "category_micro_f1": 0.89},
    "holdout27.jsonl": {"crisis_recall": 0.95, "under_triage_rate": 0.04, "category_micro_f1": 0.88},
    # written blind after holdout26/27's work, sealed through the next round (holdout16/17/20/21 and the kana
    # reading), scored once at its end (the README's estimate: 0.773 / 0.864 crisis recall), then worked on
    "holdout28.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.08, "category_micro_f1": 0.88},
    "holdout29.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.05, "category_micro_f1": 0.89},
    # written blind after holdout28/29's work, sealed through the next round (the situation probes and
    # the kana and romaji readings), scored once at its end (the README's estimate: 0.932 / 0.886), then
    # worked on with general rules for the situations they missed
    "holdout30.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.01, "category_micro_f1": 0.94},
    "holdout31.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.01, "category_micro_f1": 0.95},
    # written blind after holdout30/31's work, sealed through the next round (holdout30/31's misses, the
    # other holdouts' and the kana and romaji readings), scored once at its end (the README's estimate:
    # 0.886 / 0.909 crisis recall), then worked on with general rules for the situations they missed
    "holdout32.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.94},
    "holdout33.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.04, "category_micro_f1": 0.92},
    # Not blind: probes a developer wrote from COVERAGE.md in five rounds of 30 to 161 messages, each scored
    # before its own fixes (all 301 then: 0.775 crisis recall, 0.159 under-triage), then worked on
    "probes.jsonl": {"crisis_recall": 0.97, "under_triage_rate": 0.03, "category_micro_f1": 0.95},
}


@pytest.mark.parametrize("name", sorted(HELD_OUT_FLOORS))
def test_held_out_sets_do_not_regress(name: str) -> None:
    figures = score(load_jsonl(DATA / name))
    floors = HELD_OUT_FLOORS[name]
    assert figures["crisis_recall"] >= floors["crisis_recall"], figures
    assert figures["under_triage_rate"] <= floors["under_triage_rate"], figures
    assert figures["category_micro_f1"] >= floors["category_micro_f1"], figures
