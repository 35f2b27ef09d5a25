"""Everything one ``tsunagi serve`` process runs, built from the settings and started in one place."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

from bot.config import Settings
from bot.content import Content, get_content
from bot.crypto import Crypto
from bot.db import Database
from bot.engine import ConversationEngine
from bot.events import Event, EventBus, RedisEventBus
from bot.guard import Failures
from bot.hours import Hours
from bot.inbox import InboxWorker
from bot.metrics import Metrics
from bot.models import Contact, Conversation, HandoffStatus, Message, Presence, State, utcnow
from bot.outbox import OutboxWorker, wait_any
from bot.reply_tokens import Kept, RedisReplyTokens, ReplyTokens
from bot.retention import Retention
from bot.storage import contacts, conversations, handoffs, monitoring
from bot.types import Handled, Inbound
from channels.base import Channel
from channels.host import ChannelHost
from channels.registry import CHANNELS
from handoff.queue import HandoffQueue, InProcessQueue, QueueEntry
from handoff.redis_queue import RedisQueue
from triage import Risk

log = logging.getLogger("tsunagi")

STOP_GRACE = 10.0  # seconds the workers get to finish what they are doing at shutdown
QUEUE_CHECK_SECONDS = 2.0  # how often the watchdog asks the queue whether it lost its data


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        content: Content | None = None,
        queue_check_seconds: float = QUEUE_CHECK_SECONDS,
    ) -> None:
        self.settings = settings
        self.failures = Failures()  # failed logins and bad webhook signatures: /metrics, limits
        self.process_metrics = Metrics()  # latencies and failed deliveries of this process: /metrics
        self.db = Database(settings.resolved_database_url, pool=settings.database_pool)
        self.crypto = Crypto(settings.data_keys)
        self.content = content or get_content()
        self.hours = Hours.parse(settings.hours, settings.timezone)
        self.events: EventBus
        self.queue: HandoffQueue
        self.reply_tokens: ReplyTokens
        if settings.redis_url:  # shared by every process (each with its own client and connections)
            prefix = settings.redis_prefix
            self.events = RedisEventBus.from_url(settings.redis_url, prefix=prefix)
            self.reply_tokens = RedisReplyTokens.from_url(settings.redis_url, prefix=prefix)
            self.queue = RedisQueue.from_url(
                settings.redis_url, prefix=prefix, aging_minutes=settings.aging_minutes
            )
        else:
            self.events = EventBus()
            self.queue = InProcessQueue(settings.aging_minutes)
            self.reply_tokens = ReplyTokens()
        self.queue_check_seconds = queue_check_seconds
        self.engine = ConversationEngine(
            db=self.db,
            crypto=self.crypto,
            content=self.content,
            queue=self.queue,
            events=self.events,
            hours=self.hours,
            minutes_per_place=settings.minutes_per_place,
            max_chars=settings.max_message_chars,
            counsellor_limit=settings.counsellor_limit,
            metrics=self.process_metrics,
        )
        self.host: ChannelHost = ServiceHost(self)  # what the channels may ask, and no more
        self.channels: dict[str, Channel] = {
            name: cls(self.host) for name, cls in CHANNELS.items() if cls.enabled(settings)
        }
        self.process_metrics.channels(self.channels)
        self.engine.joined_channels = {name for name, ch in self.channels.items() if ch.joins_replies}
        self.outbox = OutboxWorker(
            db=self.db,
            crypto=self.crypto,
            channels=self.channels,
            wakeup=self.engine.outbox_wakeup,
            events=self.events,
            concurrency=settings.outbox_workers,
            metrics=self.process_metrics,
        )
        self.engine.wake_outbox = self.outbox.wake  # a new reply wakes its own channel's loop alone
        self.inbox = InboxWorker(
            db=self.db,
            crypto=self.crypto,
            channels=self.channels,
            wakeup=asyncio.Event(),
            concurrency=settings.inbox_workers,
            metrics=self.process_metrics,
        )
        idle = timedelta(hours=settings.idle_hours)
        self.retention = Retention(
            db=self.db,
            days=settings.retention_days,
            before=lambda: self.engine.close_idle(idle),
            tz=self.hours.tz,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self, *, workers: bool = True, serve: bool = True) -> None:
        """Start the service: its channels (their listeners only when ``serve``: ``tsunagi worker`` takes
        no traffic) and, when ``workers``, the background workers."""
        await self.db.migrate()
        await self.events.start()
        # In-process, the queue starts empty: make it from the database. A shared Redis queue that is
        # intact is left as it is (another instance may be changing it right now).
        if isinstance(self.queue, InProcessQueue) or not await self.queue.intact():
            await self.rebuild_queue()
        for channel in self.channels.values():
            if not serve and channel.name == "email":
                continue  # its start is the mail listener, i.e. intake: a worker takes none (it still sends)
            await channel.start()
        if workers:
            self._tasks.append(asyncio.create_task(self.outbox.run(self._stopping), name="outbox"))
            self._tasks.append(asyncio.create_task(self.inbox.run(self._stopping), name="inbox"))
            self._tasks.append(asyncio.create_task(self.retention.run(self._stopping), name="retention"))
            self._tasks.append(asyncio.create_task(self.watch_queue(self._stopping), name="queue-watchdog"))
        log.info("tsunagi started: channels %s", ", ".join(self.channels))

    async def stop(self) -> None:
        """Stop at safe points: workers finish the pass they are in (a task cancelled in the middle of a
        database call leaves its connection to be torn down while the pool is being disposed)."""
        self._stopping.set()
        if self._tasks:  # the workers first: a send in progress still needs its channel
            _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._tasks.clear()
        for channel in self.channels.values():
            await channel.stop()
        await self.events.stop()
        await self.queue.close()
        await self.reply_tokens.close()
        await self.db.dispose()

    async def rebuild_queue(self) -> None:
        """The database is the source of truth: the queue and the holdings are made again from the
        waiting and claimed handoffs."""
        async with self.db.session() as s:
            rows = await handoffs.open_with_channel(s)
        waiting = [
            QueueEntry(h.conversation_id, Risk(h.risk), h.queued_at, ch)
            for h, ch in rows
            if h.status == HandoffStatus.WAITING
        ]
        held: dict[int, set[str]] = {}
        for h, _ in rows:
            if h.status == HandoffStatus.CLAIMED and h.counsellor_id is not None:
                held.setdefault(h.counsellor_id, set()).add(h.conversation_id)
        await self.queue.rebuild(waiting, held)
        log.info(
            "queue rebuilt from the database: %d waiting, %d held", len(waiting), sum(map(len, held.values()))
        )

    async def watch_queue(self, stopping: asyncio.Event) -> None:
        """Until ``stopping`` is set: when the queue has lost its data (Redis restarted empty, or its
        keys were deleted), make it again from the database."""
        failing = False  # log a failure when it starts and when it ends, not every few seconds
        while not stopping.is_set():
            try:
                if self.engine.queue_dirty:
                    log.warning("a queue update failed earlier; rebuilding the queue from the database")
                    self.engine.queue_dirty = False
                    await self.rebuild_queue()
                elif not await self.queue.intact():
                    log.warning("the handoff queue lost its data; rebuilding it from the database")
                    await self.rebuild_queue()
                if failing:
                    log.info("queue check works again")
                failing = False
            except Exception as e:
                if not failing:
                    log.error(
                        "queue check failed (is Redis reachable?): %s; trying every %gs",
                        e,
                        self.queue_check_seconds,
                    )
                failing = True
            await wait_any(stopping, seconds=self.queue_check_seconds)

    async def health(self) -> dict[str, bool]:
        try:
            queue_ok = await self.queue.intact()
        except Exception:
            queue_ok = False
        return {"database": await self.db.ping(), "queue": queue_ok}

    async def metrics(self) -> str:
        """Prometheus text. Gauges of the shared state, read now from the database and the queue (the same
        on every instance): the queue by risk, who holds how many conversations, the inbox and the outbox by
        channel and status with their oldest unfinished row. Then this process's own counters and histograms
        (``bot/metrics.py``, ``bot/guard.py``). Counts, channels, states and account ids only: no text, no
        name, no platform id."""
        now = utcnow()
        async with self.db.session() as s:
            db = await monitoring.snapshot(s, now)
        waiting: dict[tuple[str, ...], float] = {(r.value,): 0 for r in Risk}
        longest: dict[tuple[str, ...], float] = {(r.value,): 0.0 for r in Risk}
        for entry in await self.queue.entries():
            key = (entry.risk.value,)
            waiting[key] += 1
            longest[key] = max(longest[key], (now - _aware(entry.queued_at)).total_seconds())
        shared: list[Family] = [
            ("tsunagi_conversations", "Conversations by state", ("state",), db.conversations),
            ("tsunagi_queue_waiting", "Conversations waiting for a counsellor, by risk", ("risk",), waiting),
            (
                "tsunagi_queue_longest_wait_seconds",
                "How long the longest waiting conversation of each risk has waited (0: none waiting)",
                ("risk",),
                longest,
            ),
            (
                "tsunagi_counsellor_conversations",
                "Conversations each counsellor holds now, by account id (every account on duty, and any "
                "other still holding one)",
                ("counsellor",),
                db.held,
            ),
            (
                "tsunagi_outbox_messages",
                "Messages to people by channel and status",
                ("channel", "status"),
                db.outbox,
            ),
            (
                "tsunagi_outbox_oldest_waiting_seconds",
                "Age of the oldest message not yet delivered, by channel",
                ("channel",),
                db.outbox_oldest,
            ),
            (
                "tsunagi_inbox_events",
                "Platform events kept until handled, by channel and status (failed: not handled)",
                ("channel", "status"),
                db.inbox,
            ),
            (
                "tsunagi_inbox_oldest_waiting_seconds",
                "Age of the oldest platform event not yet handled, by channel",
                ("channel",),
                db.inbox_oldest,
            ),
        ]
        return render_metrics(shared) + self.failures.render() + self.process_metrics.render()


class ServiceHost:
    """The channels' host (channels/host.py) over one service: each call reaches the part of the service
    that does it when it is made (so a test's patch of the engine or the inbox is seen)."""

    def __init__(self, service: Service) -> None:
        self._svc = service

    @property
    def settings(self) -> Settings:
        return self._svc.settings

    async def receive(self, inbound: Inbound) -> Handled:
        return await self._svc.engine.handle(inbound)

    async def withdraw(
        self, channel: str, user_id: str, external_id: str, matches: Callable[[str], bool]
    ) -> bool:
        found = await self._svc.engine.withdraw(channel, user_id, external_id)
        await self._svc.inbox.scrub(channel, matches)
        return found

    async def store_events(self, channel: str, events: list[tuple[str, str]]) -> int:
        return await self._svc.inbox.store(channel, events)

    async def set_presence(self, contact_id: str, presence: Presence) -> None:
        await self._svc.engine.set_presence(contact_id, presence)

    def text(self, key: str) -> str:
        return self._svc.content.text(key).text

    def lookup(self, channel: str, user_id: str) -> str:
        return self._svc.crypto.lookup(channel, user_id)

    def signature_failed(self, channel: str, address: str) -> bool:
        return self._svc.failures.signature_failed(channel, address)

    def subscribe(self) -> AbstractAsyncContextManager[asyncio.Queue[Event]]:
        return self._svc.events.subscribe()

    async def position(self, conversation_id: str) -> int | None:
        return await self._svc.queue.position(conversation_id, utcnow())

    async def send_due(self, conversation_id: str) -> None:
        await self._svc.outbox.send_due(conversation_id=conversation_id)

    async def keep_reply_token(self, channel: str, key: str, kept: Kept, seconds: float) -> None:
        await self._svc.reply_tokens.keep(self._svc.crypto.lookup(channel, key), kept, seconds)

    async def take_reply_token(self, channel: str, key: str) -> Kept | None:
        return await self._svc.reply_tokens.take(self._svc.crypto.lookup(channel, key))

    async def peek_reply_token(self, channel: str, key: str) -> Kept | None:
        return await self._svc.reply_tokens.peek(self._svc.crypto.lookup(channel, key))

    async def contact(self, channel: str, user_id: str) -> Contact | None:
        lookup = self._svc.crypto.lookup(channel, user_id)
        async with self._svc.db.session() as s:
            return await contacts.by_lookup(s, channel=channel, lookup=lookup)

    async def history(
        self, contact_id: str
    ) -> tuple[Conversation | None, list[tuple[Message, str | None, str]]]:
        crypto = self._svc.crypto
        async with self._svc.db.session() as s:
            conv = await conversations.latest(s, contact_id=contact_id)
            if conv is None:
                return None, []
            rows = await conversations.with_delivery(s, conversation_id=conv.id)
        return conv, [(m, status, crypto.decrypt(m.text_enc)) for m, status in rows]

    async def address_in_thread(
        self, channel: str, *, outbox_ids: list[int], conversation_ids: list[str]
    ) -> str | None:
        async with self._svc.db.session() as s:
            answered = await conversations.of_outbox(s, outbox_ids=outbox_ids)
            for conversation_id in [*answered, *conversation_ids]:
                enc = await contacts.address_of_conversation(
                    s, channel=channel, conversation_id=conversation_id
                )
                if enc:
                    return self._svc.crypto.decrypt(enc)
        return None

    async def with_counsellor(self, channel: str, user_id: str) -> bool:
        lookup = self._svc.crypto.lookup(channel, user_id)
        async with self._svc.db.session() as s:
            _, conv = await contacts.with_latest(s, channel=channel, lookup=lookup)
        return conv is not None and conv.state == State.WITH_COUNSELLOR

    async def last_choices(self, channel: str, user_id: str) -> list[str]:
        lookup = self._svc.crypto.lookup(channel, user_id)
        async with self._svc.db.session() as s:
            raw = await contacts.last_quick_replies(s, channel=channel, lookup=lookup)
        labels = json.loads(raw) if raw else []
        return [str(x) for x in labels] if isinstance(labels, list) else []

    async def bounced(self, channel: str, outbox_id: int) -> None:
        async with self._svc.db.session() as s, s.begin():
            await conversations.fail_sent(s, channel=channel, outbox_id=outbox_id, why="bounced")
        self._svc.process_metrics.deliveries_failed.labels(channel=channel).inc()


def _aware(at: datetime) -> datetime:
    """SQLite hands back naive datetimes from an aggregate: they are UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


# A gauge family: its name, its help, its label names, and a value for each tuple of label values.
Family = tuple[str, str, tuple[str, ...], dict[tuple[str, ...], float]]


def render_metrics(families: list[Family]) -> str:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _Snapshot(Collector):
        def collect(self) -> list[GaugeMetricFamily]:
            out = []
            for name, doc, labels, values in families:
                g = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
                for key, value in sorted(values.items()):
                    g.add_metric(list(key), value)
                out.append(g)
            return out

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry).decode()
