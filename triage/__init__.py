"""Japanese triage: risk level, categories and reasons for a message or a conversation.

    from triage import triage, triage_conversation
    result = triage("しにたい　いまベランダ")
    result.risk, result.categories, result.reasons

The engine is pure (no I/O once loaded) and loaded once per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from triage.engine import MAX_CHARS, Engine
from triage.types import Category, Reason, Risk, TriageResult

__all__ = [
    "MAX_CHARS",
    "Category",
    "Engine",
    "Reason",
    "Risk",
    "TriageResult",
    "get_engine",
    "triage",
    "triage_conversation",
]


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine, loaded from content/triage on first use."""
    return Engine()


def triage(text: str) -> TriageResult:
    return get_engine().triage(text)


def triage_conversation(text: str, history: Sequence[str] = ()) -> TriageResult:
    return get_engine().triage_conversation(text, history)
