"""The one access check (who may read or act on a conversation) and who may write its notes."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import Conversation, State
from bot.storage import handoffs
from bot.storage.credentials import Me


async def access(
    s: AsyncSession, me: Me, conversation_id: str, *, write: bool
) -> tuple[Conversation, int | None]:
    """The one access check: who may read or act on a conversation.
    Read: its counsellor, anyone while it waits (to decide to take it), supervisors always.
    Write: its counsellor only."""
    conv = await s.get(Conversation, conversation_id)
    if conv is None or conv.erased:
        raise HTTPException(404, "no such conversation")
    holder = await handoffs.holder(s, conversation_id=conversation_id)
    if write:
        if holder != me.id:
            raise HTTPException(403, "only the counsellor who has this conversation can do that")
    elif not (holder == me.id or conv.state == State.WAITING or me.supervises):
        # The counsellor who handled it before (closed, or passed on) may still read it.
        handled = await handoffs.handled_by(
            s, conversation_id=conversation_id, counsellor_id=me.id, closed_only=True
        )
        if (not handled or holder is not None) and not await linked_to_mine(s, me, conv.id):
            raise HTTPException(403, "this conversation is with another counsellor")
    return conv, holder


async def linked_to_mine(s: AsyncSession, me: Me, conversation_id: str) -> bool:
    """Is this the earlier conversation of a person who came back, in a conversation this counsellor
    may read (theirs, or waiting)? Then they may read it too."""
    later = (
        await s.scalars(select(Conversation).where(col(Conversation.previous_id) == conversation_id))
    ).all()
    for conv in later:
        if conv.state == State.WAITING:
            return True
        if await handoffs.holder(s, conversation_id=conv.id) == me.id:
            return True
    return False


async def may_note(s: AsyncSession, me: Me, conv: Conversation, holder: int | None) -> bool:
    """Notes are the counsellor's who has the conversation, or had it once it is closed (what they
    learned after the last word belongs in the record too)."""
    if holder == me.id:
        return True
    if conv.state != State.CLOSED:
        return False
    return await handoffs.handled_by(s, conversation_id=conv.id, counsellor_id=me.id)
