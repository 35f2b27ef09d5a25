"""Triage speed benchmark: ratios against fugashi measured in the same run.

    python -m triage.bench [--messages N] [--rounds R] [--json]

On the same messages it measures
- fugashi alone: tokenising with unidic-lite and reading every token's lemma (the floor
  that no rule engine built on fugashi can beat);
- triage: the whole engine (normalisation, tokenising, matching, rules);
and reports both rates, their ratio (triage / fugashi; 1.0 would be free rules), and the
p50 / p99 latency of triaging one 400-character message. The two are timed chunk by chunk
in alternation and each chunk keeps its best time over the rounds, so that the machine's
slow moments fall on both alike. Timings are wall-clock, so the ratio, not the absolute
rate, is the figure to compare across machines.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import fugashi
import unidic_lite

from triage import get_engine

_DATA = [
    Path(__file__).resolve().parent.parent / "tests" / "data" / name
    for name in ("trap_cases.jsonl", "holdout.jsonl", "holdout2.jsonl", "conversations.jsonl")
]
_SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "triage" / "dev.jsonl"


def corpus() -> list[str]:
    """Every labelled text the project has (and the shared development set when present)."""
    texts: list[str] = []
    for path in [_SHARED, *_DATA]:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                if isinstance(obj.get("text"), str):
                    texts.append(obj["text"])
    if not texts:
        raise SystemExit("no messages found under tests/data")
    return texts


def messages(n: int) -> list[str]:
    base = corpus()
    return [base[i % len(base)] for i in range(n)]


def message_of_length(length: int) -> str:
    """A realistic long message: labelled texts joined until ``length`` characters."""
    out = ""
    for t in corpus():
        out += t.replace("\n", "")
        if len(out) >= length:
            break
    return out[:length]


def _time_fugashi(tagger: fugashi.Tagger, texts: list[str]) -> float:
    n = 0
    start = time.perf_counter()
    for t in texts:
        for node in tagger(t):
            if node.feature.lemma is not None:
                n += 1
    return time.perf_counter() - start


def _time_triage(texts: list[str]) -> float:
    engine = get_engine()
    start = time.perf_counter()
    for t in texts:
        engine.triage(t)
    return time.perf_counter() - start


def rates(texts: list[str], rounds: int, chunks: int = 10) -> tuple[float, float]:
    """Messages per second for fugashi alone and for triage, measured chunk by chunk in
    alternation (so that the machine's slow moments fall on both alike), keeping each
    chunk's best time over the rounds."""
    tagger = fugashi.Tagger(f"-d {unidic_lite.DICDIR}")
    size = max(1, len(texts) // chunks)
    parts = [texts[i : i + size] for i in range(0, len(texts), size)]
    best_f = [float("inf")] * len(parts)
    best_t = [float("inf")] * len(parts)
    for _ in range(rounds):
        for k, part in enumerate(parts):
            best_f[k] = min(best_f[k], _time_fugashi(tagger, part))
            best_t[k] = min(best_t[k], _time_triage(part))
    return len(texts) / sum(best_f), len(texts) / sum(best_t)


def latency(text: str, runs: int) -> tuple[float, float]:
    engine = get_engine()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.triage(text)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return statistics.median(samples), p99


def run(n: int, rounds: int, runs: int) -> dict[str, float | int]:
    texts = messages(n)
    get_engine()  # load outside the timings
    long_text = message_of_length(400)
    gc.collect()
    fug, tri = rates(texts, rounds)
    p50, p99 = latency(long_text, runs)
    return {
        "messages": len(texts),
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "fugashi_msgs_per_s": round(fug),
        "triage_msgs_per_s": round(tri),
        "ratio_triage_to_fugashi": round(tri / fug, 3),
        "latency_400_chars_p50_ms": round(p50, 3),
        "latency_400_chars_p99_ms": round(p99, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2000, help="repetitions for the 400-character latency")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.messages, args.rounds, args.runs)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
