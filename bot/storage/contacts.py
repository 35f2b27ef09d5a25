"""Contacts: a person on one channel, found by the keyed hash of their platform id (``Crypto.lookup``);
their address and what a channel keeps of them are encrypted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlmodel import col

from bot.models import Contact, Conversation, Direction, Message


async def by_lookup(s: AsyncSession, *, channel: str, lookup: str) -> Contact | None:
    """The contact of this channel whose platform id hashes to ``lookup``."""
    return await s.scalar(
        select(Contact).where(col(Contact.channel) == channel, col(Contact.lookup) == lookup)
    )


async def address_of_conversation(s: AsyncSession, *, channel: str, conversation_id: str) -> str | None:
    """The encrypted address of the person of a conversation on this channel (None if none)."""
    return await s.scalar(
        select(col(Contact.address_enc))
        .join(Conversation, col(Conversation.contact_id) == col(Contact.id))
        .where(col(Conversation.id) == conversation_id, col(Contact.channel) == channel)
    )


async def last_quick_replies(s: AsyncSession, *, channel: str, lookup: str) -> str | None:
    """The choices (JSON) of the last message sent to this contact, in any of their conversations."""
    return await s.scalar(
        select(col(Message.quick_replies))
        .join(Conversation, col(Conversation.id) == col(Message.conversation_id))
        .join(Contact, col(Contact.id) == col(Conversation.contact_id))
        .where(col(Contact.channel) == channel, col(Contact.lookup) == lookup)
        .where(col(Message.direction) == Direction.OUT)
        .order_by(col(Message.id).desc())
        .limit(1)
    )


def _with_latest() -> Any:
    other: Any = aliased(Conversation, name="other")
    latest = (
        select(other.id)
        .where(other.contact_id == col(Contact.id))
        .order_by(other.created_at.desc())
        .limit(1)
        .correlate(Contact)
        .scalar_subquery()
    )
    return (
        select(Contact, Conversation)
        .outerjoin(Conversation, col(Conversation.id) == latest)
        .where(col(Contact.channel) == bindparam("channel"), col(Contact.lookup) == bindparam("lookup"))
    )


# Built once: making an ORM statement with an alias costs more than running it (every message reads it).
_WITH_LATEST = _with_latest()


async def with_latest(
    s: AsyncSession, *, channel: str, lookup: str
) -> tuple[Contact | None, Conversation | None]:
    """The contact of this channel whose platform id hashes to ``lookup``, with their most recent
    conversation (open or closed; None if none), in one statement."""
    found = (await s.execute(_WITH_LATEST, {"channel": channel, "lookup": lookup})).first()
    if found is None:
        return None, None
    return found[0], found[1]
