"""The handoff rows: who waits for a counsellor and who holds which conversation (the queue is made
from these; see handoff/queue.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import Conversation, Handoff, HandoffStatus


async def holder(s: AsyncSession, *, conversation_id: str) -> int | None:
    """The counsellor who holds this conversation now (its claimed handoff), or None."""
    return await s.scalar(
        select(col(Handoff.counsellor_id)).where(
            col(Handoff.conversation_id) == conversation_id, col(Handoff.status) == HandoffStatus.CLAIMED
        )
    )


async def claimed(s: AsyncSession, *, conversation_id: str) -> Handoff | None:
    return await s.scalar(
        select(Handoff).where(
            col(Handoff.conversation_id) == conversation_id, col(Handoff.status) == HandoffStatus.CLAIMED
        )
    )


async def waiting(s: AsyncSession, *, conversation_id: str) -> Handoff | None:
    return await s.scalar(
        select(Handoff).where(
            col(Handoff.conversation_id) == conversation_id, col(Handoff.status) == HandoffStatus.WAITING
        )
    )


async def held_counts(s: AsyncSession) -> Counter[int]:
    """How many conversations each counsellor holds now (from the database: the queue may be rebuilding)."""
    ids = (
        await s.scalars(
            select(col(Handoff.counsellor_id)).where(col(Handoff.status) == HandoffStatus.CLAIMED)
        )
    ).all()
    return Counter(i for i in ids if i is not None)


async def held_by(s: AsyncSession, *, counsellor_id: int) -> Sequence[str]:
    """The conversations this counsellor holds now."""
    return (
        await s.scalars(
            select(col(Handoff.conversation_id)).where(
                col(Handoff.counsellor_id) == counsellor_id, col(Handoff.status) == HandoffStatus.CLAIMED
            )
        )
    ).all()


async def handled_by(
    s: AsyncSession, *, conversation_id: str, counsellor_id: int, closed_only: bool = False
) -> bool:
    """Has this counsellor had this conversation (any handoff of theirs, or only one that ended)?"""
    q = select(col(Handoff.id)).where(
        col(Handoff.conversation_id) == conversation_id, col(Handoff.counsellor_id) == counsellor_id
    )
    if closed_only:
        q = q.where(col(Handoff.status) == HandoffStatus.CLOSED)
    return await s.scalar(q) is not None


async def open_with_channel(s: AsyncSession) -> list[tuple[Handoff, str]]:
    """Every waiting and claimed handoff with its conversation's channel (what the queue is made from)."""
    rows = (
        await s.execute(
            select(Handoff, col(Conversation.channel))
            .join(Conversation, col(Conversation.id) == col(Handoff.conversation_id))
            .where(col(Handoff.status).in_([HandoffStatus.WAITING, HandoffStatus.CLAIMED]))
        )
    ).all()
    return [(h, ch) for h, ch in rows]
