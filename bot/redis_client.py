"""The Redis client every shared part of a process makes its own (the handoff queue, the live events).

Here, at the bottom of the layers, so that neither has to borrow it from the other."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str) -> Redis:
    """A client as the queue and the event bus use it: text replies, bounded waits, and no automatic
    retry of a command (a claim replayed after its reply was lost would tell the counsellor who got the
    conversation that someone else has it)."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return client
