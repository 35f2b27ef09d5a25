"""Reading the audit log: who did what, and when, with the reader's filters. Rows are written by
``audit_write`` in the transaction of the action they record, and never changed (database triggers
refuse UPDATE and DELETE). No message text ever goes into a row."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import AuditLog, Counsellor

MAX_ENTRIES = 1000


@dataclass(frozen=True)
class Entry:
    at: datetime
    actor: str  # the username, or "system", "user", "cli"
    actor_name: str  # the account's display name ("" when it has none, or the actor is no account)
    action: str
    conversation_id: str
    detail: str


async def entries(
    s: AsyncSession,
    *,
    person: str = "",
    action: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 200,
) -> list[Entry]:
    """The newest first. ``person``: a username or a display name; ``action``: one action, or a family
    ending in "." (``account.``); ``since`` inclusive, ``until`` exclusive."""
    query = (
        select(AuditLog, col(Counsellor.display_name))
        .outerjoin(Counsellor, col(Counsellor.username) == col(AuditLog.actor))
        .order_by(col(AuditLog.id).desc())
        .limit(max(1, min(limit, MAX_ENTRIES)))
    )
    if person:
        named = select(col(Counsellor.username)).where(col(Counsellor.display_name) == person)
        query = query.where(or_(col(AuditLog.actor) == person, col(AuditLog.actor).in_(named)))
    if action:
        if action.endswith("."):
            query = query.where(col(AuditLog.action).startswith(action, autoescape=True))
        else:
            query = query.where(col(AuditLog.action) == action)
    if since is not None:
        query = query.where(col(AuditLog.at) >= since)
    if until is not None:
        query = query.where(col(AuditLog.at) < until)
    rows = (await s.execute(query)).all()
    return [Entry(a.at, a.actor, name or "", a.action, a.conversation_id, a.detail) for a, name in rows]
