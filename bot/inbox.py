"""The inbox: platform events are stored the moment a webhook arrives (so the webhook can answer at
once, and a redelivery is stored once), then handed to their channel by this worker, in order.

A row is leased before it is processed (a conditional UPDATE), so several instances never process
the same event; a lease left by a crashed process expires and the event is processed again (the
engine's idempotent ingest keeps that from answering twice)."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlmodel import col

from bot.crypto import Crypto
from bot.db import Database
from bot.models import Inbox, InboxStatus, utcnow
from bot.outbox import backoff, wait_any


class EventHandler(Protocol):
    """What the worker needs of a channel to handle its stored events (channels/base.py's ``Channel`` is
    one): the engine's layer names no channel."""

    async def process(self, payload: str) -> None: ...

    def describe(self, payload: str) -> str: ...


log = logging.getLogger("tsunagi.inbox")

LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 5


class InboxWorker:
    def __init__(
        self, *, db: Database, crypto: Crypto, channels: Mapping[str, EventHandler], wakeup: asyncio.Event
    ) -> None:
        self.db = db
        self.crypto = crypto
        self.channels = channels
        self.wakeup = wakeup

    async def store(self, channel: str, events: list[tuple[str, str]]) -> int:
        """Store (external id, payload) pairs in one transaction; returns how many were new."""
        new = 0
        async with self.db.session() as s, s.begin():
            for external_id, payload in events:
                seen = await s.scalar(
                    select(col(Inbox.id)).where(
                        col(Inbox.channel) == channel, col(Inbox.external_id) == external_id
                    )
                )
                if seen is not None:
                    continue
                s.add(
                    Inbox(channel=channel, external_id=external_id, payload_enc=self.crypto.encrypt(payload))
                )
                new += 1
            # A concurrent delivery of the same event fails the commit with IntegrityError: the webhook
            # then answers 500, and the platform delivers again (and finds it stored).
        if new:
            self.wakeup.set()
        return new

    async def scrub(self, channel: str, matches: Callable[[str], bool], *, days: int = 2) -> int:
        """Empty the stored events of ``channel`` whose payload ``matches`` (a message the person withdrew:
        its text must not outlive it in the inbox); how many were emptied. Events are kept a day after
        they are handled, so only recent rows are read."""
        since = utcnow() - timedelta(days=days)
        emptied = 0
        async with self.db.session() as s, s.begin():
            rows = (
                await s.scalars(
                    select(Inbox).where(col(Inbox.channel) == channel, col(Inbox.received_at) >= since)
                )
            ).all()
            for row in rows:
                if matches(self.crypto.decrypt(row.payload_enc)):
                    row.payload_enc = self.crypto.encrypt("{}")
                    emptied += 1
        return emptied

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.process_due()
            except Exception:
                log.exception("inbox pass failed; trying again shortly")
            await wait_any(self.wakeup, stopping, seconds=1.0)
            self.wakeup.clear()

    async def process_due(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        due = or_(
            col(Inbox.status) == InboxStatus.PENDING,
            (col(Inbox.status) == InboxStatus.PROCESSING) & (col(Inbox.lease_until) < now),
        )
        async with self.db.session() as s:
            ids = (await s.scalars(select(col(Inbox.id)).where(due).order_by(col(Inbox.id)).limit(200))).all()
        done = 0
        for row_id in ids:
            async with self.db.session() as s, s.begin():
                claimed = await s.execute(
                    update(Inbox)
                    .where(col(Inbox.id) == row_id, due)
                    .values(
                        status=InboxStatus.PROCESSING,
                        lease_until=now + LEASE,
                        attempts=col(Inbox.attempts) + 1,
                    )
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                row = await s.get(Inbox, row_id)
            assert row is not None
            channel = self.channels.get(row.channel)
            payload = ""
            try:
                if channel is None:
                    raise LookupError(f"no channel {row.channel!r}")
                payload = self.crypto.decrypt(row.payload_enc)
                await channel.process(payload)
            except Exception as e:
                final = row.attempts >= MAX_ATTEMPTS
                if final:
                    # Once, with where it failed: the traceback's frames and the exception's class, never
                    # its message (which may quote what the person wrote), and the event's type only.
                    kind = _describe(channel, payload)
                    frames = "".join(traceback.format_tb(e.__traceback__))
                    log.error(
                        "inbox %s on %s (%s) failed for good: %s\nTraceback (most recent call last):\n%s",
                        row_id,
                        row.channel,
                        kind,
                        e.__class__.__name__,
                        frames.rstrip(),
                    )
                else:
                    log.warning("inbox %s on %s failed (%s)", row_id, row.channel, e.__class__.__name__)
                # Not final: it stays leased until the backoff is over, then it is due again.
                values = {
                    "status": InboxStatus.FAILED if final else InboxStatus.PROCESSING,
                    "lease_until": None if final else now + backoff(row.attempts),
                    "last_error": e.__class__.__name__,
                }
                async with self.db.session() as s, s.begin():
                    await s.execute(update(Inbox).where(col(Inbox.id) == row_id).values(**values))
                continue
            async with self.db.session() as s, s.begin():
                await s.execute(
                    update(Inbox)
                    .where(col(Inbox.id) == row_id)
                    .values(status=InboxStatus.DONE, processed_at=utcnow(), lease_until=None, last_error="")
                )
            done += 1
        return done


def _describe(channel: EventHandler | None, payload: str) -> str:
    if channel is None or not payload:
        return "unknown"
    try:
        return channel.describe(payload)
    except Exception:
        return "unreadable"
