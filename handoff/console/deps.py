"""The console's FastAPI dependencies: the console itself (its host and what is read once at start), the
session behind a request, the role checks and the CSRF check.

``api.build_router`` binds one ``Console`` to every request of its routers (``bind``); a route asks for it
with ``ConsoleDep``, and for the person logged in with ``MeDep``, ``SupervisorDep`` or ``AdminDep``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.requests import HTTPConnection

from bot.config import Settings
from bot.models import Counsellor, Role, utcnow
from bot.storage.credentials import Me, current
from handoff.console.auth import COOKIE, CSRF_HEADER, csrf_ok
from handoff.console.content import load_console_content
from handoff.console.host import ConsoleHost
from triage import Risk

PREFIX = "/api/console"  # on each section's router, so that a route's template is its whole path (logs)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# What a session that must change its one-time password may still do.
BEFORE_PASSWORD = (f"{PREFIX}/me", f"{PREFIX}/password", f"{PREFIX}/logout")


@dataclass
class Console:
    """The service's parts the console uses (``host``), and what it reads once at start."""

    host: ConsoleHost
    content: dict[str, Any] = field(init=False)
    outcome_codes: set[str] = field(init=False)
    rule_risk: dict[str, Risk] = field(init=False)  # each triage rule's risk, by its id
    referral_names: dict[str, str] = field(init=False)
    secret: bytes = field(init=False)  # TSUNAGI_SECRET_KEY: signs the session cookies' tokens

    def __post_init__(self) -> None:
        self.secret = self.settings.resolved_secret_key.encode()
        self.content = load_console_content()
        self.outcome_codes = {o["code"] for o in self.content["outcomes"]}
        self.rule_risk = {r.id: r.risk for r in self.host.engine.triage.rules.rules}
        self.referral_names = {ref.id: ref.name for ref in self.host.content.referrals}

    @property
    def settings(self) -> Settings:
        return self.host.settings

    def limit_of(self, counsellor: Counsellor) -> int:
        """How many conversations this counsellor may hold at once."""
        return counsellor.max_conversations or self.settings.counsellor_limit


def bind(console: Console) -> Callable[[HTTPConnection], None]:
    """The router dependency that hands ``console`` to every request (and socket) of the router."""

    def bound(conn: HTTPConnection) -> None:
        conn.state.console = console

    return bound


def the_console(conn: HTTPConnection) -> Console:
    console: Console = conn.state.console
    return console


ConsoleDep = Annotated[Console, Depends(the_console)]


async def authenticated(request: Request, cx: ConsoleDep) -> Me:
    """The session behind the cookie; on unsafe methods, its CSRF token too."""
    async with cx.host.db.session() as s, s.begin():
        me = await current(
            s, request.cookies.get(COOKIE), hours=cx.settings.session_hours, now=utcnow(), secret=cx.secret
        )
    if me is None:
        raise HTTPException(401, "log in first")
    if request.method not in SAFE_METHODS and not csrf_ok(me, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER}")
    if me.must_change_password and request.url.path not in BEFORE_PASSWORD:
        raise HTTPException(403, "change the one-time password first")
    return me


MeDep = Annotated[Me, Depends(authenticated)]


async def supervisor(me: MeDep) -> Me:
    if not me.supervises:
        raise HTTPException(403, "for supervisors only")
    return me


async def admin(me: MeDep) -> Me:
    if me.role != Role.ADMIN:
        raise HTTPException(403, "for administrators only")
    return me


SupervisorDep = Annotated[Me, Depends(supervisor)]
AdminDep = Annotated[Me, Depends(admin)]
