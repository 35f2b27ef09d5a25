"""What ``/metrics`` reads from the database when it is scraped: a few grouped counts over indexed
columns, cheap enough for every scrape of every instance. Counts by state, channel and status, and
account ids: never a text, a name or a platform id."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import (
    UNSENT,
    Conversation,
    Counsellor,
    Handoff,
    HandoffStatus,
    Inbox,
    InboxStatus,
    Outbox,
)

Counts = dict[tuple[str, ...], float]


@dataclass
class Snapshot:
    conversations: Counts = field(default_factory=dict)  # (state,)
    outbox: Counts = field(default_factory=dict)  # (channel, status)
    outbox_oldest: Counts = field(default_factory=dict)  # (channel,): seconds, rows not yet out
    inbox: Counts = field(default_factory=dict)  # (channel, status)
    inbox_oldest: Counts = field(default_factory=dict)  # (channel,): seconds, events not yet handled
    held: Counts = field(default_factory=dict)  # (account id,): conversations held now


def _age(now: datetime, at: datetime | None) -> float:
    if at is None:
        return 0.0
    if at.tzinfo is None:  # SQLite hands back naive datetimes from an aggregate: they are UTC
        at = at.replace(tzinfo=UTC)
    return max(0.0, (now - at).total_seconds())


async def snapshot(s: AsyncSession, now: datetime) -> Snapshot:
    out = Snapshot()
    states = await s.execute(select(col(Conversation.state), func.count()).group_by(col(Conversation.state)))
    out.conversations = {(state,): n for state, n in states.all()}
    by = (col(Outbox.channel), col(Outbox.status))
    out.outbox = {(c, st): n for c, st, n in (await s.execute(select(*by, func.count()).group_by(*by))).all()}
    oldest = await s.execute(
        select(col(Outbox.channel), func.min(col(Outbox.created_at)))
        .where(col(Outbox.status).in_(UNSENT))
        .group_by(col(Outbox.channel))
    )
    out.outbox_oldest = {(c,): _age(now, at) for c, at in oldest.all()}
    by = (col(Inbox.channel), col(Inbox.status))
    out.inbox = {(c, st): n for c, st, n in (await s.execute(select(*by, func.count()).group_by(*by))).all()}
    unhandled = await s.execute(
        select(col(Inbox.channel), func.min(col(Inbox.received_at)))
        .where(col(Inbox.status).in_([InboxStatus.PENDING, InboxStatus.PROCESSING]))
        .group_by(col(Inbox.channel))
    )
    out.inbox_oldest = {(c,): _age(now, at) for c, at in unhandled.all()}
    # Every counsellor on duty, holding none or some, and anyone else still holding a conversation.
    on_duty = await s.scalars(
        select(col(Counsellor.id)).where(col(Counsellor.on_duty), col(Counsellor.active))
    )
    out.held = {(str(i),): 0 for i in on_duty.all()}
    claimed = await s.execute(
        select(col(Handoff.counsellor_id), func.count())
        .where(col(Handoff.status) == HandoffStatus.CLAIMED, col(Handoff.counsellor_id).is_not(None))
        .group_by(col(Handoff.counsellor_id))
    )
    out.held.update({(str(i),): n for i, n in claimed.all()})
    return out
