"""Retention: closed conversations are purged after ``TSUNAGI_RETENTION_DAYS``, pictures with them;
erased contacts go as soon as their last reply is out. What outlives them is the de-identified counts
in ``stat_count`` (written when each conversation closed; its outcome and referrals when it is purged)
and the audit log (which holds no text)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.db import Database
from bot.models import (
    UNSENT,
    Alert,
    AuditLog,
    Contact,
    Conversation,
    Handoff,
    Inbox,
    InboxStatus,
    Media,
    Message,
    Note,
    Outbox,
    utcnow,
)
from bot.outbox import wait_any
from bot.storage import statistics

log = logging.getLogger("tsunagi.retention")

INTERVAL = 60.0


class Retention:
    def __init__(
        self,
        *,
        db: Database,
        days: int,
        before: Callable[[], Awaitable[object]] | None = None,
        tz: tzinfo | None = None,
    ) -> None:
        self.db = db
        self.days = days
        self.tz = tz or ZoneInfo("Asia/Tokyo")  # the statistics' days (TSUNAGI_TIMEZONE)
        self.before = before  # closes idle conversations first, so that they age from their closing

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                if self.before is not None:
                    await self.before()
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await wait_any(stopping, seconds=INTERVAL)

    async def sweep(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        cutoff = now - timedelta(days=self.days)
        async with self.db.session() as s, s.begin():
            expired = (
                await s.scalars(
                    select(col(Conversation.id)).where(
                        col(Conversation.closed_at).is_not(None),
                        col(Conversation.closed_at) < cutoff,
                    )
                )
            ).all()
            # Erased: gone once the last reply (erase_done) is out, or after a day if it never can be.
            unsent = exists().where(
                col(Outbox.conversation_id) == col(Conversation.id),
                col(Outbox.status).in_(UNSENT),
            )
            erased = (
                await s.scalars(
                    select(col(Conversation.id)).where(
                        col(Conversation.erased).is_(True),
                        ~unsent | (col(Conversation.updated_at) < now - timedelta(days=1)),
                    )
                )
            ).all()
            ids = sorted(set(expired) | set(erased))
            if ids:
                await statistics.fold_purged(s, conversation_ids=ids, tz=self.tz)
                await _purge(s, ids)
            # Platform events are kept only until handled (a day, for redeliveries to find them).
            await s.execute(
                delete(Inbox).where(
                    col(Inbox.status).in_([InboxStatus.DONE, InboxStatus.FAILED]),
                    col(Inbox.received_at) < now - timedelta(days=1),
                )
            )
            orphans = (
                await s.scalars(
                    select(col(Contact.id)).where(
                        ~exists().where(col(Conversation.contact_id) == col(Contact.id))
                    )
                )
            ).all()
            if orphans:
                await s.execute(delete(Contact).where(col(Contact.id).in_(orphans)))
            if ids or orphans:
                s.add(
                    AuditLog(
                        actor="system",
                        action="retention.purge",
                        detail=f"conversations={len(ids)} contacts={len(orphans)}",
                    )
                )
        if ids:
            log.info("retention: purged %d conversations and %d contacts", len(ids), len(orphans))
        return len(ids)


async def _purge(s: AsyncSession, ids: list[str]) -> None:
    await s.execute(delete(Outbox).where(col(Outbox.conversation_id).in_(ids)))
    await s.execute(delete(Media).where(col(Media.conversation_id).in_(ids)))  # pictures go with their text
    await s.execute(delete(Message).where(col(Message.conversation_id).in_(ids)))
    await s.execute(delete(Handoff).where(col(Handoff.conversation_id).in_(ids)))
    await s.execute(delete(Alert).where(col(Alert.conversation_id).in_(ids)))
    await s.execute(delete(Note).where(col(Note.conversation_id).in_(ids)))
    await s.execute(delete(Conversation).where(col(Conversation.id).in_(ids)))
