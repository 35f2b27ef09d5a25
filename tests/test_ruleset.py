"""The triage content is data for counselling staff: mistakes are caught at load time, with the
file and the entry named, and every rule is exercised by some table case."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import DATA, SHARED, load_jsonl
from triage import get_engine
from triage.engine import Engine
from triage.paths import CONTENT_DIR
from triage.ruleset import ContentError, load_ruleset


@pytest.fixture()
def content(tmp_path: Path) -> Path:
    target = tmp_path / "triage"
    shutil.copytree(CONTENT_DIR, target)
    return target


def test_shipped_content_loads() -> None:
    rules = load_ruleset()
    assert len(rules.rules) > 50
    assert "ideation" in rules.concepts


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        ("rules.yaml", "risk: crisis", "risk: urgent", "risk must be one of"),
        ("rules.yaml", "category: dv", "category: domestic", "unknown category"),
        ("rules.yaml", "when: [ideation]", "when: [ideations]", "unknown concept"),
        ("rules.yaml", "by: [partner]", "by: [landlord]", "unknown actor"),
        (
            "lexicon.yaml",
            "inactive_when: [negated, past, fiction, hypothetical, joking, said_to_me",
            "inactive_when: [sleepy",
            "unknown flags",
        ),
        ("lexicon.yaml", "concepts:", "concepts: [", "lexicon.yaml"),
    ],
)
def test_bad_content_is_refused_with_its_place(
    content: Path, file: str, old: str, new: str, message: str
) -> None:
    path = content / file
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ContentError, match=message):
        Engine(content)


def test_duplicate_rule_ids_are_refused(content: Path) -> None:
    path = content / "rules.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("id: suicide.intent\n", "id: suicide.ideation\n", 1), encoding="utf-8")
    with pytest.raises(ContentError, match="duplicate id"):
        Engine(content)


def test_every_rule_fires_somewhere() -> None:
    """A rule that no case exercises is either dead or untested: both need a look."""
    engine = get_engine()
    texts: list[tuple[str, list[str]]] = []
    for path in sorted(DATA.glob("*.jsonl")):  # every table and held-out set
        for row in load_jsonl(path):
            texts.append((row["text"], row.get("history", [])))
    dev = SHARED / "triage" / "dev.jsonl"
    if dev.exists():
        texts += [(row["text"], []) for row in load_jsonl(dev)]
    fired: set[str] = set()
    for text, history in texts:
        result = engine.triage_conversation(text, history)
        fired.update(r.rule for r in result.reasons)
    never = sorted(r.id for r in engine.rules.rules if r.id not in fired)
    assert never == [], f"rules no case exercises: {never}"
