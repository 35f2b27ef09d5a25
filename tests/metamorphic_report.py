"""Same words, other spelling: how much of the triage's risk survives each transformation.

    .venv/bin/python -m tests.metamorphic_report            # the table (make metamorphic)
    .venv/bin/python -m tests.metamorphic_report --lost hiragana --limit 15

For every transformation of tests/transforms.py, applied to every message of the shared development
set (``$TSUNAGI_SHARED/triage/dev.jsonl``, by default the ``shared`` folder beside the clone) and of
every labelled held-out set (tests/data/holdout*.jsonl), prints per set:

- kept: among the messages labelled high or crisis, the share whose triaged risk after the
  transformation is not below the triaged risk of the original (the bar of tests/test_metamorphic.py
  is MIN_KEPT);
- changed: how many of those the transformation changes at all (masks only touch 死 and 殺);
- low->crisis: among the messages labelled low and triaged low as written, how many become crisis once
  transformed.

Always exits 0: it measures, tests/test_metamorphic.py judges. The measurement code here is the one
the tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.transforms import TRANSFORMS

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
MIN_KEPT = 0.98  # the target of the triage issue: not reached yet for the kana scripts and romaji
# What the tests hold the engine to until then: the lower of the two sets' shares as last measured
# (README, "Any spelling"), less about half a point (a floor against regressions, raised as the
# engine improves; last raised with issue 11's second round of reading fixes).
FLOORS = {
    "hiragana": 0.955,
    "hiragana_all": 0.944,
    "katakana": 0.943,
    "half_width": 0.98,
    "katakana_half_width": 0.943,
    "romaji_hepburn": 0.930,
    "romaji_hepburn_unspaced": 0.910,
    "romaji_keyboard": 0.932,
    "spaced": 0.98,
    "one_per_line": 0.97,
    "elongated": 0.97,
    "digits_for_kana": 0.953,
    "masked": 0.98,
    "masked_symbols": 0.985,
}
# Low messages allowed to become crisis under a transformation, known and not yet fixed: none. (Three
# questions about a will for an estate, b17-191, b27-119 and b29-110, read as a farewell once typed in kana
# until ゆいごん alone stopped being one: a will written or left, ゆいごんかいた or 遺言書いた, still is.)
LOW_TO_CRISIS_KNOWN: dict[str, int] = {}
ORDER = {"low": 0, "medium": 1, "high": 2, "crisis": 3}
SERIOUS = ("high", "crisis")
SETS = ("dev", "holdout")


def shared_dir() -> Path:
    """The shared folder: $TSUNAGI_SHARED, else ../shared beside the clone (as CI lays it out)."""
    return Path(os.environ.get("TSUNAGI_SHARED") or ROOT.parent / "shared")


@dataclass(frozen=True)
class Case:
    set: str  # "dev" or "holdout"
    id: str
    label: str  # the labelled risk
    text: str


def _read(path: Path, set_name: str) -> list[Case]:
    cases = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "risk" not in row or "text" not in row:
            continue
        cases.append(Case(set_name, f"{path.stem}:{row.get('id', n)}", row["risk"], row["text"]))
    return cases


def dev_path() -> Path:
    return shared_dir() / "triage" / "dev.jsonl"


def holdout_paths() -> list[Path]:
    return sorted(DATA.glob("holdout*.jsonl"))


def load_cases(require_dev: bool = False) -> list[Case]:
    """Every labelled message of the development set and of the held-out sets."""
    cases: list[Case] = []
    if dev_path().exists():
        cases += _read(dev_path(), "dev")
    elif require_dev:
        raise FileNotFoundError(f"the shared development set is missing: {dev_path()} (set TSUNAGI_SHARED)")
    for path in holdout_paths():
        cases += _read(path, "holdout")
    return cases


@dataclass(frozen=True)
class Change:
    case: Case
    transformed: str
    before: str  # triaged risk of the original
    after: str  # triaged risk of the transformed text

    def show(self) -> str:
        return (
            f"  [{self.case.id}] {self.before} -> {self.after}\n"
            f"    original:    {self.case.text!r}\n"
            f"    transformed: {self.transformed!r}"
        )


@dataclass
class SetResult:
    total: int = 0  # messages labelled high or crisis
    kept: int = 0
    changed: int = 0
    lost: list[Change] = field(default_factory=list)
    low_to_crisis: list[Change] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.kept / self.total if self.total else 1.0


def default_risk() -> Callable[[str], str]:
    from triage import triage

    return lambda text: triage(text).risk.value


class Measurement:
    """Triages every original once, and every transformed text once per transformation."""

    def __init__(self, cases: list[Case], risk: Callable[[str], str] | None = None) -> None:
        self.cases = cases
        self._risk = risk or default_risk()
        self._original: list[str] | None = None
        self._transformed: dict[str, list[tuple[str, str]]] = {}

    @property
    def original(self) -> list[str]:
        if self._original is None:
            self._original = [self._risk(c.text) for c in self.cases]
        return self._original

    def transformed(self, name: str) -> list[tuple[str, str]]:
        """(transformed text, its risk) for every case, computed once."""
        if name not in self._transformed:
            f = TRANSFORMS[name]
            out = []
            for case, before in zip(self.cases, self.original, strict=True):
                text = f(case.text)
                out.append((text, before if text == case.text else self._risk(text)))
            self._transformed[name] = out
        return self._transformed[name]

    def result(self, name: str, set_name: str) -> SetResult:
        res = SetResult()
        for case, before, (text, after) in zip(
            self.cases, self.original, self.transformed(name), strict=True
        ):
            if case.set != set_name:
                continue
            change = Change(case, text, before, after)
            if case.label in SERIOUS:
                res.total += 1
                res.changed += text != case.text
                if ORDER[after] >= ORDER[before]:
                    res.kept += 1
                else:
                    res.lost.append(change)
            # A false alarm made by the spelling: labelled low (the "low message"), triaged low as
            # written, crisis once respelt. (A message labelled serious that the engine misses as written
            # and finds once respelt is a miss of the written form, counted by the held-out figures.)
            if case.label == "low" and before == "low" and after == "crisis":
                res.low_to_crisis.append(change)
        return res


def table(m: Measurement, names: Iterable[str], sets: Iterable[str]) -> str:
    sets = list(sets)
    head = f"{'transformation':<24}"
    for s in sets:
        head += f" | {s + ' kept':>20} {'changed':>8} {'low->crisis':>11}"
    lines = [head, "-" * len(head)]
    for name in names:
        line = f"{name:<24}"
        for s in sets:
            r = m.result(name, s)
            kept = f"{r.share:6.1%} ({r.kept}/{r.total})"
            line += f" | {kept:>20} {r.changed:>8} {len(r.low_to_crisis):>11}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.metamorphic_report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--lost", metavar="NAME", action="append", choices=sorted(TRANSFORMS), default=[])
    parser.add_argument("--limit", type=int, default=15, help="messages shown per --lost (default 15)")
    parser.add_argument("--set", choices=SETS, action="append", help="only this set (repeatable)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    cases = load_cases()
    sets = [s for s in (args.set or SETS) if any(c.set == s for c in cases)]
    if not dev_path().exists():
        print(f"note: {dev_path()} is missing (set TSUNAGI_SHARED); the dev column is left out\n")
    m = Measurement(cases)
    counts = ", ".join(
        f"{s}: {sum(c.set == s for c in cases)} messages, "
        f"{sum(c.set == s and c.label in SERIOUS for c in cases)} labelled high/crisis"
        for s in sets
    )
    print(f"Risk kept under each spelling ({counts}); bar of the tests: {MIN_KEPT:.0%}\n")
    print(table(m, TRANSFORMS, sets))
    for name in args.lost:
        for s in sets:
            r = m.result(name, s)
            print(f"\n{name} / {s}: {len(r.lost)} lost of {r.total}; first {min(args.limit, len(r.lost))}:")
            for change in r.lost[: args.limit]:
                print(change.show())
            if r.low_to_crisis:
                print(f"{name} / {s}: low -> crisis ({len(r.low_to_crisis)}):")
                for change in r.low_to_crisis[: args.limit]:
                    print(change.show())
    print(f"\n({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # a measurement, not a gate: say what went wrong and exit 0
        print(f"metamorphic report failed: {e.__class__.__name__}: {e}", file=sys.stderr)
    sys.exit(0)
