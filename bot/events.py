"""In-process publish/subscribe for live updates (web chat status now, the console later).

Events carry ids and states only, never text or platform ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    kind: str  # conversation, queue, alert, message
    conversation_id: str = ""
    contact_id: str = ""
    state: str = ""
    risk: str = ""


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def publish(self, event: Event) -> None:
        for q in self._subscribers:
            if q.qsize() < 1000:  # a stuck subscriber must not grow without bound
                q.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event]]:
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)
