"""Conversations and their messages as stored: the latest of a person, a transcript with what became of
each reply, and the list fields kept as comma-separated text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import Conversation, Message, Outbox, OutboxStatus

LIST_CHARS = 400  # the width of a stored list column (categories, referrals)


def split(value: str) -> list[str]:
    """A stored comma-separated list (categories, referrals, flags) as its items."""
    return [x for x in value.split(",") if x]


def joined(values: Iterable[str], *, limit: int = LIST_CHARS) -> str:
    return ",".join(values)[:limit]


def categories(conv: Conversation) -> list[str]:
    return split(conv.categories)


async def latest(s: AsyncSession, *, contact_id: str) -> Conversation | None:
    """The person's most recent conversation (open or closed)."""
    return await s.scalar(
        select(Conversation)
        .where(col(Conversation.contact_id) == contact_id)
        .order_by(col(Conversation.created_at).desc())
        .limit(1)
    )


async def with_delivery(s: AsyncSession, *, conversation_id: str) -> list[tuple[Message, str | None]]:
    """A conversation's messages in order, each with the status of its outbox row (None: none, i.e. what
    the person wrote)."""
    rows = (
        await s.execute(
            select(Message, col(Outbox.status))
            .join(Outbox, col(Outbox.message_id) == col(Message.id), isouter=True)
            .where(col(Message.conversation_id) == conversation_id)
            .order_by(col(Message.id))
        )
    ).all()
    return [(m, status) for m, status in rows]


async def of_outbox(s: AsyncSession, *, outbox_ids: Sequence[int]) -> Sequence[str]:
    """The conversations that these outbox rows went out in."""
    if not outbox_ids:
        return []
    return (await s.scalars(select(col(Outbox.conversation_id)).where(col(Outbox.id).in_(outbox_ids)))).all()


async def fail_sent(s: AsyncSession, *, channel: str, outbox_id: int, why: str) -> None:
    """A message that went out did not arrive after all (a bounced mail): recorded failed, with why."""
    await s.execute(
        update(Outbox)
        .where(col(Outbox.id) == outbox_id, col(Outbox.channel) == channel)
        .values(status=OutboxStatus.FAILED, last_error=why)
    )
