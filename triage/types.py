"""The triage result types that other packages use (never a dict)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRISIS = "crisis"

    @property
    def rank(self) -> int:
        return RISK_ORDER[self.value]


RISK_ORDER = {"low": 0, "medium": 1, "high": 2, "crisis": 3}


class Category(StrEnum):
    SUICIDE = "suicide"
    DV = "dv"
    SEXUAL_VIOLENCE = "sexual_violence"
    CHILD_ABUSE = "child_abuse"
    SEXUAL_HARASSMENT = "sexual_harassment"
    POWER_HARASSMENT = "power_harassment"
    MATERNITY_HARASSMENT = "maternity_harassment"
    ACADEMIC_HARASSMENT = "academic_harassment"
    JOB_HUNTING = "job_hunting"
    BULLYING = "bullying"
    STALKING = "stalking"
    EXPLOITATION = "exploitation"
    RUNAWAY = "runaway"
    SCHOOL_REFUSAL = "school_refusal"


CATEGORY_ORDER = {c: i for i, c in enumerate(Category)}


@dataclass(frozen=True)
class Reason:
    """Why: the rule that fired, the words it saw, and where they are in the text as received."""

    rule: str
    matched: str
    span: tuple[int, int]


@dataclass(frozen=True)
class TriageResult:
    risk: Risk
    categories: tuple[Category, ...]
    reasons: tuple[Reason, ...]
    truncated: bool = False  # the text was longer than MAX_CHARS and only its start was read
    empty: bool = False  # nothing to read (empty or whitespace)
    context: tuple[Reason, ...] = field(default=())  # reasons that came from earlier messages
    # What the message shows beside any category (``distress``: exhaustion, hopelessness, being at the
    # limit, wanting everything to stop, crying, fear; content/triage/distress.yaml). Not a risk: the
    # conversation asks the person directly when it sees one and the risk is below high.
    signals: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "risk": self.risk.value,
            "categories": [c.value for c in self.categories],
            "reasons": [{"rule": r.rule, "matched": r.matched, "span": list(r.span)} for r in self.reasons],
        }
        if self.context:
            out["context"] = [{"rule": r.rule, "matched": r.matched} for r in self.context]
        if self.signals:
            out["signals"] = list(self.signals)
        if self.truncated:
            out["truncated"] = True
        if self.empty:
            out["empty"] = True
        return out
