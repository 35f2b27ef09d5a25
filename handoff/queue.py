"""The handoff queue: who waits for a counsellor, most urgent first.

The order (one rule for every implementation):
1. crisis always first, longest waiting first among crises;
2. then by *effective* level, where high, medium and low move up one level for every
   ``aging_minutes`` spent waiting (capped at high: waiting never makes a crisis), so nobody waits
   for ever behind later, more urgent arrivals;
3. within one effective level, longest waiting first.

Claiming is atomic in the queue itself: with many counsellors claiming at once, each conversation
goes to exactly one, and nobody holds more than their limit of conversations at a time.

The database is the source of truth (the ``handoff`` table); a queue can always be rebuilt from it,
and ``intact`` says when it must be (a Redis that restarted without its data).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from triage import Risk


@dataclass(frozen=True)
class QueueEntry:
    conversation_id: str
    risk: Risk
    queued_at: datetime
    channel: str


class Claim(StrEnum):
    CLAIMED = "claimed"
    TAKEN = "taken"  # not waiting (someone else has it, or it left the queue)
    FULL = "full"  # the counsellor already holds their limit of conversations


def effective_level(entry: QueueEntry, now: datetime, aging_minutes: int) -> int:
    if entry.risk is Risk.CRISIS:
        return Risk.CRISIS.rank
    waited = max(0.0, (now - entry.queued_at).total_seconds() / 60)
    return min(Risk.HIGH.rank, entry.risk.rank + int(waited // aging_minutes))


def order_key(entry: QueueEntry, now: datetime, aging_minutes: int) -> tuple[int, datetime, str]:
    return (-effective_level(entry, now, aging_minutes), entry.queued_at, entry.conversation_id)


class HandoffQueue(ABC):
    def __init__(self, aging_minutes: int = 20) -> None:
        self.aging_minutes = aging_minutes

    @abstractmethod
    async def put(self, entry: QueueEntry) -> None:
        """Add, or update the risk of, a waiting conversation (its place in time is kept)."""

    @abstractmethod
    async def remove(self, conversation_id: str) -> None: ...

    @abstractmethod
    async def entries(self) -> list[QueueEntry]: ...

    @abstractmethod
    async def claim(self, conversation_id: str, counsellor_id: int, limit: int) -> Claim:
        """Atomically: take a waiting conversation out of the queue for this counsellor, unless it is
        not waiting any more or they already hold ``limit`` conversations."""

    @abstractmethod
    async def release(self, conversation_id: str, counsellor_id: int) -> None:
        """The counsellor no longer holds this conversation (closed, transferred, back to the queue)."""

    @abstractmethod
    async def held(self, counsellor_id: int) -> set[str]:
        """The conversations this counsellor holds now."""

    @abstractmethod
    async def rebuild(self, entries: list[QueueEntry], held: dict[int, set[str]]) -> None:
        """Replace the whole queue and every holding (from the database: at start, or after the store
        lost its data)."""

    async def intact(self) -> bool:
        """False when the store lost what it held (Redis restarted empty, or was flushed)."""
        return True

    async def ordered(self, now: datetime) -> list[QueueEntry]:
        return sorted(await self.entries(), key=lambda e: order_key(e, now, self.aging_minutes))

    async def rank(self, entry: QueueEntry, now: datetime) -> int:
        """The 1-based place this entry has, or would have if it were put now."""
        others = [e for e in await self.entries() if e.conversation_id != entry.conversation_id]
        key = order_key(entry, now, self.aging_minutes)
        return 1 + sum(1 for e in others if order_key(e, now, self.aging_minutes) < key)

    async def position(self, conversation_id: str, now: datetime) -> int | None:
        for i, e in enumerate(await self.ordered(now), 1):
            if e.conversation_id == conversation_id:
                return i
        return None

    async def close(self) -> None:
        return None


class InProcessQueue(HandoffQueue):
    """The embedded default: one process only. Each method runs without awaiting, so it is atomic
    with respect to every other coroutine."""

    def __init__(self, aging_minutes: int = 20) -> None:
        super().__init__(aging_minutes)
        self._entries: dict[str, QueueEntry] = {}
        self._held: dict[int, set[str]] = {}

    async def put(self, entry: QueueEntry) -> None:
        old = self._entries.get(entry.conversation_id)
        if old is not None:
            entry = QueueEntry(entry.conversation_id, entry.risk, old.queued_at, entry.channel)
        self._entries[entry.conversation_id] = entry

    async def remove(self, conversation_id: str) -> None:
        self._entries.pop(conversation_id, None)

    async def entries(self) -> list[QueueEntry]:
        return list(self._entries.values())

    async def claim(self, conversation_id: str, counsellor_id: int, limit: int) -> Claim:
        if conversation_id not in self._entries:
            return Claim.TAKEN
        held = self._held.setdefault(counsellor_id, set())
        if len(held) >= limit:
            return Claim.FULL
        del self._entries[conversation_id]
        held.add(conversation_id)
        return Claim.CLAIMED

    async def release(self, conversation_id: str, counsellor_id: int) -> None:
        self._held.get(counsellor_id, set()).discard(conversation_id)

    async def held(self, counsellor_id: int) -> set[str]:
        return set(self._held.get(counsellor_id, ()))

    async def rebuild(self, entries: list[QueueEntry], held: dict[int, set[str]]) -> None:
        self._entries = {e.conversation_id: e for e in entries}
        self._held = {k: set(v) for k, v in held.items()}
