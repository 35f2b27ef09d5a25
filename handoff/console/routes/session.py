"""The session: log in and out, who I am, my password, my duty and the name people read for me."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from bot.models import ConsoleSession, Counsellor, Role, utcnow
from bot.storage import accounts as accounts_db
from bot.storage import audit_write
from bot.storage.credentials import hash_password, login, password_problem, rate_limited, verify_password
from handoff.console.auth import COOKIE
from handoff.console.deps import PREFIX, ConsoleDep, MeDep
from handoff.console.routes.accounts import account_refusal
from handoff.console.schemas import (
    DisplayNameIn,
    DutyIn,
    DutyOut,
    LoginIn,
    LoginOut,
    MeOut,
    NameOut,
    PasswordIn,
)

public = APIRouter(prefix=PREFIX)  # before a session: login
router = APIRouter(prefix=PREFIX)


def client_key(cx: ConsoleDep, request: Request) -> str:
    host = request.client.host if request.client else "?"
    return cx.host.crypto.lookup("console-address", host)


@public.post("/login", response_model=LoginOut)
async def do_login(body: LoginIn, request: Request, response: Response, cx: ConsoleDep) -> LoginOut:
    svc, settings = cx.host, cx.settings
    now = utcnow()
    keys = [svc.crypto.lookup("console-user", body.username.lower())]
    if settings.login_limit_per_address:  # off for an office whose counsellors share one address
        keys.append(client_key(cx, request))
    async with svc.db.session() as s, s.begin():
        if await rate_limited(s, keys, now):
            svc.failures.login_failed(refused=True)
            raise HTTPException(429, "too many failed logins: wait a few minutes")
        done = await login(
            s,
            body.username,
            body.password,
            keys=keys,
            hours=settings.session_hours,
            now=now,
            secret=cx.secret,
        )
        if done is not None:
            token, session, counsellor = done
            audit_write.record(s, actor=counsellor.username, action="login")
    if done is None:
        svc.failures.login_failed()
        raise HTTPException(401, "wrong username or password")
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.session_hours * 3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return LoginOut(
        csrf_token=session.csrf_token,
        username=counsellor.username,
        display_name=counsellor.display_name,
        role=Role(counsellor.role),
        must_change_password=counsellor.must_change_password,
    )


@router.post("/logout", status_code=204, response_class=Response)
async def do_logout(me: MeDep, cx: ConsoleDep) -> Response:
    async with cx.host.db.session() as s, s.begin():
        session = await s.get(ConsoleSession, me.session_id)
        if session is not None:
            await s.delete(session)
        audit_write.record(s, actor=me.username, action="logout")
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/")
    return response


@router.get("/me", response_model=MeOut)
async def get_me(me: MeDep, cx: ConsoleDep) -> MeOut:
    async with cx.host.db.session() as s:
        c = await s.get(Counsellor, me.id)
    assert c is not None
    return MeOut(
        username=me.username,
        display_name=c.display_name,
        role=me.role,
        csrf_token=me.csrf_token,
        must_change_password=me.must_change_password,
        on_duty=c.on_duty,
        limit=cx.limit_of(c),
        held=sorted(await cx.host.queue.held(me.id)),
    )


@router.post("/password", status_code=204, response_class=Response)
async def change_password(body: PasswordIn, me: MeDep, cx: ConsoleDep) -> Response:
    problem = password_problem(body.new)
    if problem:
        raise HTTPException(422, problem)
    async with cx.host.db.session() as s, s.begin():
        c = await s.get(Counsellor, me.id)
        assert c is not None
        if not verify_password(c.password_hash, body.old):
            raise HTTPException(403, "the current password is wrong")
        c.password_hash = hash_password(body.new)
        c.must_change_password = False
        audit_write.record(s, actor=me.username, action="password.change")
    return Response(status_code=204)


@router.post("/duty", response_model=DutyOut)
async def set_duty(body: DutyIn, me: MeDep, cx: ConsoleDep) -> DutyOut:
    async with cx.host.db.session() as s, s.begin():
        c = await s.get(Counsellor, me.id)
        assert c is not None
        c.on_duty = body.on_duty
        audit_write.record(s, actor=me.username, action="duty.on" if body.on_duty else "duty.off")
    return DutyOut(on_duty=body.on_duty)


@router.post("/me/display-name", response_model=NameOut)
async def my_display_name(body: DisplayNameIn, me: MeDep, cx: ConsoleDep) -> NameOut:
    """The name people read for me (greetings, canned replies), chosen by myself."""
    async with cx.host.db.session() as s, s.begin():
        try:
            c = await accounts_db.set_display_name(
                s, username=me.username, display_name=body.display_name, actor=me.username
            )
        except accounts_db.AccountError as e:
            raise account_refusal(e) from e
    return NameOut(username=c.username, display_name=c.display_name)
