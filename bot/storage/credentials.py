"""Console accounts' credentials and sessions (the data side; the console's cookie and CSRF check are in
handoff/console/auth.py).

- Passwords: argon2id (argon2-cffi), re-hashed when the parameters change.
- Sessions: a random token in an HttpOnly, SameSite=Strict cookie; only its SHA-256 is stored, with an
  expiry (``TSUNAGI_SESSION_HOURS``) that slides while the console is used.
- Login rate limiting: at most ``MAX_FAILURES`` failed logins per username and per address within
  ``FAILURE_WINDOW``, counted in the database so that every instance sees them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import ConsoleSession, Counsellor, LoginFailure, Role

MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 12

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


# A hash to verify against when the username is unknown, so that both cases take the same time.
_DUMMY = hash_password(secrets.token_urlsafe(16))


# What an account may be called: shown in the console and part of its URLs (so never "." or "..").
USERNAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# One-time passwords are read off a screen and typed: no 0/O, 1/l/I, 5/S, 2/Z, 8/B look-alikes.
_READABLE = "abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY34679"


def one_time_password() -> str:
    """A password to give once (a new account, a reset, the first admin); it must be changed at login.
    16 characters of a 50-letter alphabet: about 90 bits."""
    return "".join(secrets.choice(_READABLE) for _ in range(16))


def token_id(token: str, key: bytes) -> str:
    """A session's id: the cookie's token signed with TSUNAGI_SECRET_KEY. The database holds only this, so
    its rows cannot be replayed as cookies, and a new secret key ends every session."""
    return hmac.new(key, f"console-session:{token}".encode(), hashlib.sha256).hexdigest()


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"the password must have at least {MIN_PASSWORD} characters"
    return None


@dataclass(frozen=True)
class Me:
    """The counsellor behind a request, and their session."""

    id: int
    username: str
    role: Role
    csrf_token: str
    session_id: str
    must_change_password: bool

    @property
    def supervises(self) -> bool:
        return self.role in (Role.SUPERVISOR, Role.ADMIN)


async def create_counsellor(s: AsyncSession, username: str, password: str, role: Role) -> Counsellor:
    problem = password_problem(password)
    if problem:
        raise ValueError(problem)
    counsellor = Counsellor(username=username, password_hash=hash_password(password), role=role)
    s.add(counsellor)
    await s.flush()
    return counsellor


async def rate_limited(s: AsyncSession, keys: list[str], now: datetime) -> bool:
    count = await s.scalar(
        select(func.count())
        .select_from(LoginFailure)
        .where(col(LoginFailure.key).in_(keys), col(LoginFailure.at) > now - FAILURE_WINDOW)
        .group_by(col(LoginFailure.key))
        .order_by(func.count().desc())
        .limit(1)
    )
    return (count or 0) >= MAX_FAILURES


async def login(
    s: AsyncSession,
    username: str,
    password: str,
    *,
    keys: list[str],
    hours: int,
    now: datetime,
    secret: bytes,
) -> tuple[str, ConsoleSession, Counsellor] | None:
    """A new session for the right username and password (None otherwise, with the failure counted)."""
    counsellor = await s.scalar(select(Counsellor).where(col(Counsellor.username) == username))
    if counsellor is None or not counsellor.active:
        verify_password(_DUMMY, password)
        ok = False
    else:
        ok = verify_password(counsellor.password_hash, password)
    if not ok or counsellor is None:
        for key in keys:
            s.add(LoginFailure(key=key, at=now))
        return None
    if _hasher.check_needs_rehash(counsellor.password_hash):
        counsellor.password_hash = hash_password(password)
    token = secrets.token_urlsafe(32)
    assert counsellor.id is not None
    session = ConsoleSession(
        id=token_id(token, secret),
        counsellor_id=counsellor.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + timedelta(hours=hours),
        last_seen_at=now,
    )
    s.add(session)
    await s.execute(delete(LoginFailure).where(col(LoginFailure.key).in_(keys)))
    return token, session, counsellor


async def current(
    s: AsyncSession, token: str | None, *, hours: int, now: datetime, secret: bytes
) -> Me | None:
    if not token or len(token) > 100:
        return None
    session = await s.get(ConsoleSession, token_id(token, secret))
    if session is None or session.expires_at <= now:
        return None
    counsellor = await s.get(Counsellor, session.counsellor_id)
    if counsellor is None or not counsellor.active or counsellor.id is None:
        return None
    if now - session.last_seen_at > timedelta(minutes=1):  # slide the expiry, not on every request
        session.last_seen_at = now
        session.expires_at = now + timedelta(hours=hours)
    return Me(
        counsellor.id,
        counsellor.username,
        Role(counsellor.role),
        session.csrf_token,
        session.id,
        counsellor.must_change_password,
    )


async def end_sessions(s: AsyncSession, counsellor_id: int) -> None:
    """Log an account out everywhere (its live sockets notice within LIVE_RECHECK_SECONDS)."""
    await s.execute(delete(ConsoleSession).where(col(ConsoleSession.counsellor_id) == counsellor_id))


async def reset_password(s: AsyncSession, counsellor: Counsellor) -> str:
    """A new one-time password, returned to be shown once; the account's sessions end."""
    password = one_time_password()
    counsellor.password_hash = hash_password(password)
    counsellor.must_change_password = True
    assert counsellor.id is not None
    await end_sessions(s, counsellor.id)
    return password


async def still_valid(s: AsyncSession, session_id: str, now: datetime) -> bool:
    """Whether a session still stands (not ended, not expired, its account active), without sliding its
    expiry: for a live socket that outlasts the requests that opened it."""
    session = await s.get(ConsoleSession, session_id)
    if session is None or session.expires_at <= now:
        return False
    counsellor = await s.get(Counsellor, session.counsellor_id)
    return counsellor is not None and counsellor.active
