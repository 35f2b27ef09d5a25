"""Console accounts: the same functions for the console API and the ``tsunagi counsellor`` command, each
writing its audit row in the caller's transaction (bot/storage/audit.py).

``actor`` is who acts: a username, or "cli" for the command line."""

from __future__ import annotations

import re
import unicodedata
from enum import Enum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import DISPLAY_NAME_MAX, Counsellor, Role
from bot.storage import audit_write, handoffs
from bot.storage.credentials import (
    USERNAME,
    end_sessions,
    hash_password,
    one_time_password,
    password_problem,
    reset_password,
)


class AccountError(Exception):
    """What an account function refuses: ``code`` is taken, missing, self or invalid."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Keep(Enum):
    KEEP = 0


KEEP = _Keep.KEEP  # a field not to change


def clean_display_name(name: str) -> str:
    """The display name as stored: NFC, spaces at the ends trimmed; AccountError when it is empty, too
    long or holds control characters (it is shown to people as text, never as HTML, whatever it holds)."""
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise AccountError("invalid", "a display name is needed")
    if len(name) > DISPLAY_NAME_MAX:
        raise AccountError("invalid", f"a display name has at most {DISPLAY_NAME_MAX} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise AccountError("invalid", "a display name cannot hold control characters")
    return name


async def named(s: AsyncSession, *, username: str) -> Counsellor:
    c = await s.scalar(select(Counsellor).where(col(Counsellor.username) == username))
    if c is None or c.id is None:
        raise AccountError("missing", f"no account '{username}'")
    return c


async def listing(s: AsyncSession, *, active_only: bool = False) -> list[Counsellor]:
    query = select(Counsellor).order_by(col(Counsellor.username))
    if active_only:
        query = query.where(col(Counsellor.active).is_(True))
    return list((await s.scalars(query)).all())


async def add(
    s: AsyncSession,
    *,
    username: str,
    role: Role,
    actor: str,
    limit: int | None = None,
    display_name: str = "",
    password: str | None = None,
) -> tuple[Counsellor, str | None]:
    """A new account. Without ``password`` it gets a one-time password, returned to be shown once and to
    be changed at the first login."""
    if not re.match(USERNAME, username):
        raise AccountError("invalid", "a username is 1 to 64 letters, digits, '.', '_' or '-'")
    if password is not None and (problem := password_problem(password)):
        raise AccountError("invalid", problem)
    name = clean_display_name(display_name) if display_name else ""
    if await s.scalar(select(col(Counsellor.id)).where(col(Counsellor.username) == username)):
        raise AccountError("taken", f"an account '{username}' already exists")
    one_time = one_time_password() if password is None else None
    counsellor = Counsellor(
        username=username,
        display_name=name,
        password_hash=hash_password(password if password is not None else one_time or ""),
        role=role,
        max_conversations=limit,
        must_change_password=one_time is not None,
    )
    s.add(counsellor)
    await s.flush()
    audit_write.record(s, actor=actor, action="account.add", detail=f"{username} role={role.value}")
    return counsellor, one_time


async def change(
    s: AsyncSession,
    *,
    username: str,
    actor: str,
    role: Role | _Keep = KEEP,
    limit: int | None | _Keep = KEEP,
    active: bool | _Keep = KEEP,
) -> tuple[Counsellor, list[str]]:
    """Role, own conversation limit (None: the service's default) or whether it is active. An account never
    demotes or disables itself. Disabled: its sessions end and it goes off duty; the ids of the
    conversations it held are returned, for the caller to put back in the queue."""
    c = await named(s, username=username)
    if username == actor and ((role is not KEEP and role != Role.ADMIN) or active is False):
        raise AccountError("self", "that is you: another administrator must do it")
    changes: list[str] = []
    if role is not KEEP and role != c.role:
        c.role = role
        changes.append(f"role={role.value}")
    if limit is not KEEP and limit != c.max_conversations:
        c.max_conversations = limit
        changes.append(f"limit={limit or 'default'}")
    held: list[str] = []
    if active is not KEEP and active != c.active:
        c.active = active
        changes.append("active" if active else "disabled")
        if not active:  # out everywhere, and what it held goes back to the queue
            assert c.id is not None
            c.on_duty = False
            await end_sessions(s, c.id)
            held = list(await handoffs.held_by(s, counsellor_id=c.id))
    if changes:
        audit_write.record(s, actor=actor, action="account.update", detail=f"{username} {' '.join(changes)}")
    return c, held


async def set_display_name(s: AsyncSession, *, username: str, display_name: str, actor: str) -> Counsellor:
    """The name people read for this account (its own choice, or a supervisor's)."""
    c = await named(s, username=username)
    name = clean_display_name(display_name)
    if name != c.display_name:
        c.display_name = name
        audit_write.record(s, actor=actor, action="account.display_name", detail=username)
    return c


async def new_password(s: AsyncSession, *, username: str, actor: str) -> str:
    """A new one-time password, returned to be shown once; the account's sessions end."""
    password = await reset_password(s, await named(s, username=username))
    audit_write.record(s, actor=actor, action="account.password_reset", detail=username)
    return password
