"""Publish/subscribe for live updates (web chat status now, the console later).

``EventBus`` is in-process (one ``tsunagi serve`` only). ``RedisEventBus`` carries every event through
one Redis pub/sub channel, so that subscribers in every process see every event, their own process's
included, each exactly once.

Events carry ids and states only, never text or platform ids. Delivery is best-effort: a subscriber
that needs the truth (a position, a conversation's state) reads it from the queue or the database, and
an event only tells it when to look."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from bot.redis_client import connect

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger("tsunagi.events")

SUBSCRIBER_BACKLOG = 1000  # a stuck subscriber must not grow without bound
OUTGOING_BACKLOG = 10_000  # events waiting to be sent to Redis (while it is unreachable)
RECONNECT_SECONDS = 1.0
STOP_GRACE = 2.0  # seconds the sender gets at stop to send what was published before


@dataclass(frozen=True)
class Event:
    kind: str  # conversation, queue, alert, message
    conversation_id: str = ""
    contact_id: str = ""
    state: str = ""
    risk: str = ""


_FIELDS = tuple(f.name for f in fields(Event))


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()

    async def start(self) -> None:
        """Nothing to start in-process (``RedisEventBus`` starts its listener)."""

    async def stop(self) -> None:
        """Nothing to stop in-process."""

    def publish(self, event: Event) -> None:
        self._deliver(event)

    def _deliver(self, event: Event) -> None:
        for q in self._subscribers:
            if q.qsize() < SUBSCRIBER_BACKLOG:
                q.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[Event]]:
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)


class RedisEventBus(EventBus):
    """Events as JSON on the channel ``{prefix}:events``.

    ``publish`` stays synchronous (the engine publishes after a commit, without waiting): the event is
    queued here and a sender task publishes it, in order. A listener task receives every event on the
    channel and hands it to the local subscribers; ``publish`` never delivers locally itself, so an
    event reaches each subscriber once."""

    def __init__(self, client: Redis, *, prefix: str = "tsunagi") -> None:
        """``client`` is this bus's own (``stop`` closes it)."""
        super().__init__()
        self._redis = client
        self.channel = f"{prefix}:events"
        self._outgoing: asyncio.Queue[Event] = asyncio.Queue()
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "tsunagi") -> RedisEventBus:
        return cls(connect(url), prefix=prefix)

    async def start(self) -> None:
        """Subscribe (and wait until Redis confirms it, so that no event published after ``start`` is
        missed), then run the listener and the sender."""
        if self._tasks:
            return
        self._pubsub = await self._subscribe()
        self._tasks = [
            asyncio.create_task(self._listen(), name="events-listener"),
            asyncio.create_task(self._send(), name="events-sender"),
        ]

    async def stop(self) -> None:
        if self._tasks:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._outgoing.join(), STOP_GRACE)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        if self._pubsub is not None:
            await _close_quietly(self._pubsub)
            self._pubsub = None
        await self._redis.aclose()

    def publish(self, event: Event) -> None:
        if self._outgoing.qsize() < OUTGOING_BACKLOG:
            self._outgoing.put_nowait(event)
        else:
            log.warning("live update dropped: %d events not yet sent to Redis", OUTGOING_BACKLOG)

    async def _subscribe(self) -> PubSub:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:
                message = await pubsub.get_message(timeout=5.0)
                if message is None:
                    raise TimeoutError(f"Redis did not confirm the subscription to {self.channel}")
                if message["type"] == "subscribe":
                    return pubsub
        except BaseException:
            await _close_quietly(pubsub)
            raise

    async def _listen(self) -> None:
        while True:
            try:
                if self._pubsub is None:
                    self._pubsub = await self._subscribe()
                    log.info("live updates: subscribed to Redis again")
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Events published while the connection is down are lost (see the module's docstring).
                log.warning("live updates: Redis subscription lost (%s); reconnecting", e)
                if self._pubsub is not None:
                    await _close_quietly(self._pubsub)
                    self._pubsub = None
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            if message is None or message["type"] != "message":
                continue
            event = _decode(message["data"])
            if event is None:
                log.warning("live updates: an unreadable message on %s was ignored", self.channel)
            else:
                self._deliver(event)

    async def _send(self) -> None:
        while True:
            event = await self._outgoing.get()
            try:
                while True:
                    try:
                        await self._redis.publish(self.channel, json.dumps(asdict(event)))
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        log.warning("live updates: publishing to Redis failed (%s); trying again", e)
                        await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                self._outgoing.task_done()


def _decode(data: object) -> Event | None:
    try:
        raw = json.loads(data) if isinstance(data, str | bytes) else None
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        return None
    values = {k: raw.get(k, "") for k in _FIELDS}
    if not all(isinstance(v, str) for v in values.values()):
        return None
    return Event(**values)


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    except Exception:
        log.debug("closing a Redis subscription failed", exc_info=True)
