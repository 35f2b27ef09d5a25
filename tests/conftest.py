"""Shared test helpers: the labelled tables under tests/data and the shared development set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "triage" / "dev.jsonl").exists():
        pytest.fail(f"the shared folder is missing: {SHARED} (CI lays it beside the clone)")
    return SHARED
