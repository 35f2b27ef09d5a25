"""The benchmark runs and reports its figures (speed is judged by `make bench`, not by tests)."""

from __future__ import annotations

from triage import bench


def test_benchmark_reports_ratios_on_a_small_run() -> None:
    result = bench.run(n=60, rounds=1, runs=20)
    assert result["messages"] == 60
    assert result["fugashi_msgs_per_s"] > 0
    assert result["triage_msgs_per_s"] > 0
    ratio = result["triage_msgs_per_s"] / result["fugashi_msgs_per_s"]
    assert abs(result["ratio_triage_to_fugashi"] - ratio) < 0.01
    assert 0 < result["latency_400_chars_p50_ms"] <= result["latency_400_chars_p99_ms"]


def test_long_message_has_the_requested_length() -> None:
    assert len(bench.message_of_length(400)) == 400
