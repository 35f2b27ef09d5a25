"""Writing the audit log: one row per action, added to the session of the action's own transaction
(so an action and its row are committed together). Never any text a person or a counsellor wrote."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import AuditLog

SYSTEM = "system"  # the actor of what the bot does on its own (not a counsellor's action)


def record(
    s: AsyncSession, *, action: str, actor: str = SYSTEM, conversation_id: str = "", detail: str = ""
) -> None:
    """One row, in the session's open transaction (the detail is cut at 200 characters)."""
    s.add(AuditLog(actor=actor, action=action, conversation_id=conversation_id, detail=detail[:200]))


async def record_view(
    s: AsyncSession, *, actor: str, conversation_id: str, now: datetime, every: timedelta
) -> None:
    """One "view" per reader and conversation in ``every``: the page re-reads on every live event, and
    the log should say who read what, not count refreshes."""
    recent = await s.scalar(
        select(col(AuditLog.id)).where(
            col(AuditLog.actor) == actor,
            col(AuditLog.action) == "view",
            col(AuditLog.conversation_id) == conversation_id,
            col(AuditLog.at) > now - every,
        )
    )
    if recent is None:
        record(s, actor=actor, action="view", conversation_id=conversation_id)
