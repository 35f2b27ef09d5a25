"""Everything one ``tsunagi serve`` process runs, built from the settings and started in one place."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import func, select
from sqlmodel import col

from bot.config import Settings
from bot.content import Content, get_content
from bot.crypto import Crypto
from bot.db import Database
from bot.engine import ConversationEngine
from bot.events import EventBus
from bot.hours import Hours
from bot.models import Handoff, HandoffStatus
from bot.outbox import OutboxWorker
from bot.retention import Retention
from channels.base import Channel
from channels.registry import CHANNELS
from handoff.queue import HandoffQueue, InProcessQueue, QueueEntry
from triage import Risk

log = logging.getLogger("tsunagi")

STOP_GRACE = 10.0  # seconds the workers get to finish what they are doing at shutdown


class Service:
    def __init__(self, settings: Settings, *, content: Content | None = None) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url)
        self.crypto = Crypto(settings.data_keys)
        self.content = content or get_content()
        self.hours = Hours.parse(settings.hours, settings.timezone)
        self.events = EventBus()
        self.queue: HandoffQueue = InProcessQueue(settings.aging_minutes)
        self.engine = ConversationEngine(
            db=self.db,
            crypto=self.crypto,
            content=self.content,
            queue=self.queue,
            events=self.events,
            hours=self.hours,
            minutes_per_place=settings.minutes_per_place,
            max_chars=settings.max_message_chars,
        )
        self.channels: dict[str, Channel] = {
            name: cls(self) for name, cls in CHANNELS.items() if cls.enabled(settings)
        }
        self.outbox = OutboxWorker(
            db=self.db,
            crypto=self.crypto,
            channels=self.channels,
            wakeup=self.engine.outbox_wakeup,
            fault=settings.fault,
        )
        idle = timedelta(hours=settings.idle_hours)
        self.retention = Retention(
            db=self.db, days=settings.retention_days, before=lambda: self.engine.close_idle(idle)
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def start(self, *, workers: bool = True) -> None:
        await self.db.migrate()
        await self.rebuild_queue()
        for channel in self.channels.values():
            await channel.start()
        if workers:
            self._tasks.append(asyncio.create_task(self.outbox.run(self._stopping), name="outbox"))
            self._tasks.append(asyncio.create_task(self.retention.run(self._stopping), name="retention"))
        log.info("tsunagi started: channels %s", ", ".join(self.channels))

    async def stop(self) -> None:
        """Stop at safe points: workers finish the pass they are in (a task cancelled in the middle of a
        database call leaves its connection to be torn down while the pool is being disposed)."""
        self._stopping.set()
        for channel in self.channels.values():
            await channel.stop()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self._tasks.clear()
        await self.queue.close()
        await self.db.dispose()

    async def rebuild_queue(self) -> None:
        """The database is the source of truth: the queue is made again from the waiting handoffs."""
        from bot.models import Conversation

        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(Handoff, col(Conversation.channel))
                    .join(Conversation, col(Conversation.id) == col(Handoff.conversation_id))
                    .where(col(Handoff.status) == HandoffStatus.WAITING)
                )
            ).all()
        await self.queue.rebuild(
            [QueueEntry(h.conversation_id, Risk(h.risk), h.queued_at, ch) for h, ch in rows]
        )

    async def health(self) -> dict[str, bool]:
        return {"database": await self.db.ping(), "queue": True}

    async def metrics(self) -> str:
        """Prometheus text: counts by state and status only (no ids, no text)."""
        from bot.models import Conversation, Outbox

        async with self.db.session() as s:
            states = (
                await s.execute(
                    select(col(Conversation.state), func.count()).group_by(col(Conversation.state))
                )
            ).all()
            outbox = (
                await s.execute(select(col(Outbox.status), func.count()).group_by(col(Outbox.status)))
            ).all()
        waiting = len(await self.queue.entries())
        return render_metrics(
            [
                ("tsunagi_conversations", "Conversations by state", "state", dict(states)),
                ("tsunagi_outbox_messages", "Outbox rows by status", "status", dict(outbox)),
                ("tsunagi_queue_waiting", "Conversations waiting for a counsellor", "", {"": waiting}),
            ]
        )


def render_metrics(families: list[tuple[str, str, str, dict[str, int]]]) -> str:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class _Snapshot(Collector):
        def collect(self) -> list[GaugeMetricFamily]:
            out = []
            for name, doc, label, values in families:
                g = GaugeMetricFamily(name, doc, labels=[label] if label else None)
                for key, value in sorted(values.items()):
                    g.add_metric([key] if label else [], value)
                out.append(g)
            return out

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry).decode()
