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


def _check_compiled() -> None:
    """A compiled module older than its source would run stale code: refuse, and say why.

    (A mypyc module's own ``__file__`` is not reliable, so the .so files are looked up
    beside this package.)"""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    libraries = list(here.glob("*.so"))
    if not libraries:
        return
    # mypyc puts every module's code in one shared library and leaves each module's own small .so
    # untouched when it has not changed: the build's time is that of the newest library.
    built = max(so.stat().st_mtime for so in libraries)
    for compiled in libraries:
        source = here / (compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built:
            raise RuntimeError(
                f"{compiled.name} is older than {source.name}: run `make compile` (or `make pure`)"
            )


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process-wide engine, loaded from content/triage on first use."""
    _check_compiled()
    return Engine()


def triage(text: str) -> TriageResult:
    return get_engine().triage(text)


def triage_conversation(text: str, history: Sequence[str] = ()) -> TriageResult:
    return get_engine().triage_conversation(text, history)
