"""This process's counters and histograms for ``/metrics``: triage and reply latency, failed deliveries.

Each process counts what it does itself, from its start (a ``tsunagi serve`` with its workers, or a
``tsunagi worker``): with several instances Prometheus scrapes each one and ``sum()`` adds them up. The
gauges that describe shared state (the queue, the inbox and outbox rows, who holds what) are read from the
database and Redis when ``/metrics`` is scraped (``bot/service.py``) and are the same on every instance.

Labels are channels, senders, stages and outcomes only: never a text, a name or a platform id.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# No ``*_created`` series beside every counter and histogram (the time each series was first seen in this
# process): they double the text and nothing here alerts on them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Triage of one message: well under a millisecond usually (README "Measured figures"); a long text or a
# long history takes a few milliseconds.
TRIAGE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# A reply written -> handed to the platform: under a second normally; minutes when a platform or relay is
# retried; up to hours for a web chat reply that waited for its page to come back.
REPLY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0)


class Metrics:
    """The counters and histograms of one process, in a registry of their own (tests run many services in
    one process: none shares the global registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.triage_seconds = Histogram(
            "tsunagi_triage_seconds",
            "Time to triage one message: at intake (a webhook event's text alone, for its priority) or in "
            "the conversation (with its history)",
            ["stage"],
            buckets=TRIAGE_BUCKETS,
            registry=self.registry,
        )
        self.reply_seconds = Histogram(
            "tsunagi_reply_seconds",
            "From a reply's row written (in the transaction that stored the message it answers, or the "
            "counsellor's message) to the reply handed to the platform, by channel and sender",
            ["channel", "sender"],
            buckets=REPLY_BUCKETS,
            registry=self.registry,
        )
        self.deliveries_failed = Counter(
            "tsunagi_deliveries_failed",
            "Replies given up on (status failed): refused by the platform, or still failing after every "
            "retry, by channel",
            ["channel"],
            registry=self.registry,
        )
        self.delivery_retries = Counter(
            "tsunagi_delivery_retries",
            "Sends that failed and will be tried again (a platform or relay answering 5xx or 429, or not "
            "answering), by channel",
            ["channel"],
            registry=self.registry,
        )

    def channels(self, names: Iterable[str]) -> None:
        """Every channel's counters shown from the start, at 0 (a rate needs the series before the first
        failure)."""
        for name in names:
            self.deliveries_failed.labels(channel=name)
            self.delivery_retries.labels(channel=name)

    def triaged(self, stage: str, seconds: float) -> None:
        self.triage_seconds.labels(stage=stage).observe(seconds)

    def replied(self, channel: str, sender: str, written: datetime, now: datetime) -> None:
        if written.tzinfo is None:  # SQLite hands back naive UTC in some paths
            written = written.replace(tzinfo=UTC)
        self.reply_seconds.labels(channel=channel, sender=sender).observe(
            max(0.0, (now - written).total_seconds())
        )

    def render(self) -> str:
        return generate_latest(self.registry).decode()
