"""The console API (``/api/console``), through Starlette's TestClient: SQLite, PostgreSQL, PostgreSQL+Redis.

People reach the queue through the real web chat socket (hello, consent, then "相談したい" or a crisis);
counsellors are accounts made with ``create_counsellor`` inside the app's own event loop (or with the
``tsunagi counsellor add`` command). Each counsellor's session is carried by hand (the cookie's token in
a ``Cookie`` header, the CSRF token in ``X-CSRF-Token``), so one TestClient serves several counsellors.
Every wait is bounded (``recv``, ``wait_for`` and ``eventually``, tests/helpers.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

import handoff.console.routes.live as console_live
from bot.models import (
    AuditLog,
    ConsoleSession,
    Contact,
    Conversation,
    Counsellor,
    Handoff,
    HandoffStatus,
    LoginFailure,
    Message,
    Note,
    Role,
    StatCount,
    utcnow,
)
from bot.storage.credentials import MAX_FAILURES, token_id
from bot.web import create_app
from handoff.console import ensure_first_admin
from handoff.console.auth import COOKIE, CSRF_HEADER
from handoff.console.content import console_labels
from tests.engine_helpers import reply_keys
from tests.helpers import (
    API,
    CRISIS,
    PASSWORD,
    Frame,
    Session,
    account,
    add_account,
    db,
    drain,
    eventually,
    from_address,
    hello,
    in_app,
    is_ack,
    is_bot,
    is_status,
    login,
    make_settings,
    postgres_database,
    recv,
    service,
    start_fresh,
    try_login,
    wait_for,
)
from tests.redis_helpers import TEST_REDIS_URL, delete_prefix, random_prefix, require_redis

WAIT = 5.0  # seconds a frame gets to arrive before the test fails
MARKUP = "<img src=x onerror=alert(1)>"
TWO_CATEGORIES = "夫に毎日殴られていて、もう死にたい。今夜飛び降りる"  # crisis, suicide and dv
NO_SUCH_ID = "0" * 32

# What the route walk must at least find (it walks whatever is there, so a new route is covered too).
KNOWN_ROUTES = {
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/me"),
    ("POST", "/password"),
    ("POST", "/duty"),
    ("GET", "/queue"),
    ("POST", "/conversations/{conversation_id}/claim"),
    ("GET", "/conversations/{conversation_id}"),
    ("POST", "/conversations/{conversation_id}/messages"),
    ("POST", "/conversations/{conversation_id}/notes"),
    ("POST", "/conversations/{conversation_id}/transfer"),
    ("POST", "/conversations/{conversation_id}/close"),
    ("GET", "/canned"),
    ("GET", "/referrals"),
    ("GET", "/overview"),
    ("GET", "/stats"),
    ("GET", "/stats.csv"),
    ("GET", "/stats-totals.csv"),
    ("POST", "/me/display-name"),
    ("POST", "/accounts/{username}/display-name"),
    ("GET", "/audit"),
    ("GET", "/colleagues"),
    ("GET", "/accounts"),
    ("POST", "/accounts"),
    ("POST", "/accounts/{username}"),
    ("POST", "/accounts/{username}/password"),
}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Valid bodies, so that a route that forgot a check would act rather than fail validation.
BODIES: dict[str, Any] = {
    "/login": {"username": "nobody", "password": "whatever-password"},
    "/password": {"old": PASSWORD, "new": "a-brand-new-password"},
    "/duty": {"on_duty": True},
    "/conversations/{conversation_id}/messages": {"text": "こんにちは"},
    "/conversations/{conversation_id}/notes": {"text": "メモ"},
    "/conversations/{conversation_id}/advice": {"text": "助言"},
    "/conversations/{conversation_id}/transfer": {"to": None},
    "/conversations/{conversation_id}/close": {"outcome": "listened", "referrals": []},
    "/accounts": {"username": "newbie", "role": "counsellor", "limit": None},
    "/accounts/{username}": {"active": False},
    "/me/display-name": {"display_name": "佐藤"},
    "/accounts/{username}/display-name": {"display_name": "佐藤"},
}


# -- the app, the database, time -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "postgresql+redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """Settings for the storage and the queue: SQLite or PostgreSQL, in-process or Redis (a prefix of
    its own, deleted afterwards)."""
    if request.param == "sqlite":
        yield {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'tsunagi.db'}"}
        return
    async with postgres_database() as url:
        if request.param == "postgresql":
            yield {"database_url": url}
            return
        await require_redis()
        prefix = random_prefix()
        try:
            yield {"database_url": url, "redis_url": TEST_REDIS_URL, "redis_prefix": prefix}
        finally:
            await delete_prefix(prefix)


@pytest.fixture
def client(tmp_path: Path, backend: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, **backend))) as c:
        yield c


def conversation(client: TestClient, conversation_id: str) -> Conversation:
    async def work(s: AsyncSession) -> Conversation:
        conv = await s.get(Conversation, conversation_id)
        assert conv is not None
        return conv

    return db(client, work)


def queued_ids(client: TestClient) -> set[str]:
    svc = service(client)

    async def work() -> set[str]:
        return {e.conversation_id for e in await svc.queue.entries()}

    return in_app(client, work)


def text_of(client: TestClient, key: str, **fields: object) -> str:
    return service(client).content.text(key, **fields).text


# -- counsellors ---------------------------------------------------------------------------------------


# -- people in the web chat ----------------------------------------------------------------------------


@dataclass
class Person:
    ws: WebSocketTestSession
    token: str
    conversation_id: str


def tell(ws: WebSocketTestSession, text: str, msg_id: str) -> list[Frame]:
    """Send a message; wait for its ack and a bot reply, then for a short silence."""
    ws.send_json({"type": "message", "text": text, "id": msg_id})
    frames: list[Frame] = []
    while not (any(is_ack(msg_id)(f) for f in frames) and any(is_bot(f) for f in frames)):
        _, seen = wait_for(ws, lambda f: is_ack(msg_id)(f) or is_bot(f), what=f"ack/reply for {msg_id}")
        frames += seen
    return frames + drain(ws, 0.2)


def conversation_of(client: TestClient, token: str) -> str:
    svc = service(client)
    lookup = svc.crypto.lookup("webchat", token)

    async def work(s: AsyncSession) -> str:
        contact = await s.scalar(
            select(Contact).where(col(Contact.channel) == "webchat", col(Contact.lookup) == lookup)
        )
        assert contact is not None
        cid = await s.scalar(
            select(col(Conversation.id))
            .where(col(Conversation.contact_id) == contact.id)
            .order_by(col(Conversation.created_at).desc())
            .limit(1)
        )
        assert cid is not None
        return cid

    return db(client, work)


@contextmanager
def person(client: TestClient, *lines: str) -> Iterator[Person]:
    """Someone on the web chat who agreed and then asked for a counsellor (or wrote a crisis): they wait
    in the queue while the socket stays open."""
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        tell(ws, "同意", "consent")
        for i, line in enumerate(lines or ("相談したい",)):
            tell(ws, line, f"m{i}")
        cid = conversation_of(client, token)
        assert conversation(client, cid).state == "waiting"
        eventually(lambda: cid in queued_ids(client), "the conversation in the queue")
        yield Person(ws, token, cid)


def queued(client: TestClient, *lines: str) -> str:
    """A waiting conversation whose person has left the page."""
    with person(client, *lines) as p:
        return p.conversation_id


def connected(client: TestClient, p: Person) -> None:
    """Wait until the person was told that a counsellor is there."""
    notice = text_of(client, "with_counsellor")
    wait_for(p.ws, lambda f: is_bot(f) and f["text"] == notice, what="the with-counsellor notice")


@contextmanager
def live_socket(client: TestClient, headers: dict[str, str]) -> Iterator[WebSocketTestSession]:
    """The console's live socket (WebSocketDisconnect when it is refused). Leaving, the console closes it
    and waits until the server let go of it (its subscription to the events ends): a closed tab must
    not stay subscribed, and the TestClient would otherwise cancel a handler that is still running."""
    subscribers = service(client).events._subscribers
    before = len(subscribers)
    with client.websocket_connect(f"{API}/live", headers=dict(headers)) as ws:
        eventually(lambda: len(subscribers) > before, "the live socket's subscription")
        try:
            yield ws
        finally:
            ws.close(1000)
            eventually(lambda: len(subscribers) == before, "the live handler to end after the console left")


def assert_refused(client: TestClient, headers: dict[str, str]) -> None:
    """The live socket is closed with 1008 (policy violation) before it is accepted."""
    with pytest.raises(WebSocketDisconnect) as closed:
        with live_socket(client, headers) as ws:
            try:
                recv(ws, 1.0)
            except TimeoutError:
                pytest.fail(f"the socket was accepted and left open (headers {sorted(headers)})")
    assert closed.value.code == 1008, headers


def counsellor_lines(frames: list[Frame]) -> list[str]:
    return [f["text"] for f in frames if f.get("type") == "message" and f.get("from") == "counsellor"]


def audit_rows(client: TestClient) -> list[AuditLog]:
    async def work(s: AsyncSession) -> list[AuditLog]:
        return list((await s.scalars(select(AuditLog).order_by(col(AuditLog.id)))).all())

    return db(client, work)


# -- 1. every route is guarded -------------------------------------------------------------------------


def all_routes(client: TestClient) -> list[tuple[type, str, set[str]]]:
    """(kind, full path, methods) of every route the app serves, through included routers too."""
    out = []
    for ctx in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        out.append((type(ctx.original_route), ctx.path or "", set(ctx.methods or ())))
    return out


def console_routes(client: TestClient) -> list[tuple[str, str]]:
    out = []
    for kind, path, methods in all_routes(client):
        if issubclass(kind, APIRoute) and path.startswith(API + "/"):
            out += [(method, path[len(API) :]) for method in sorted(methods)]
    return out


def fill(path: str, conversation_id: str) -> str:
    return API + re.sub(r"\{[^}]+\}", conversation_id, path)


def test_every_console_route_needs_a_session_and_unsafe_methods_the_csrf_token(client: TestClient) -> None:
    routes = console_routes(client)
    assert KNOWN_ROUTES <= set(routes), f"the walk missed routes: {KNOWN_ROUTES - set(routes)}"
    sup = account(client, "sup", Role.SUPERVISOR)
    with person(client) as p:
        cid = p.conversation_id

        for method, path in routes:
            if (method, path) == ("POST", "/login"):
                continue
            url = fill(path, cid)
            body = BODIES.get(path)
            anonymous = client.request(method, url, json=body)
            assert anonymous.status_code == 401, (method, path, anonymous.status_code, anonymous.text)
            forged = client.request(method, url, json=body, headers={"Cookie": f"{COOKIE}=made-up-token"})
            assert forged.status_code == 401, (method, path, forged.status_code)
            # A session's CSRF token is no session: only the cookie is.
            header_only = client.request(method, url, json=body, headers={CSRF_HEADER: sup.csrf})
            assert header_only.status_code == 401, (method, path, header_only.status_code)

        unsafe = [(m, path) for m, path in routes if m in UNSAFE and path != "/login"]
        assert len(unsafe) >= 8, unsafe
        for method, path in unsafe:
            url = fill(path, cid)
            body = BODIES.get(path)
            for csrf in (None, "wrong-token", sup.csrf[:-1], ""):
                r = sup.request(method, url, json=body, csrf=csrf)
                assert r.status_code == 403, (method, path, csrf, r.status_code, r.text)
                assert CSRF_HEADER in r.json()["detail"], (method, path, r.text)

        # None of it happened: still logged in with the same password, the conversation still waits,
        # no note, nobody on duty, the person heard nothing from a counsellor.
        assert sup.get("me").status_code == 200
        assert conversation(client, cid).state == "waiting"
        assert cid in queued_ids(client)
        assert db(client, lambda s: s.scalar(select(func.count()).select_from(Note))) == 0
        assert sup.get("me").json()["on_duty"] is False
        assert counsellor_lines(drain(p.ws, 0.3)) == []
    assert try_login(client, "sup", PASSWORD).status_code == 200
    # And with the right token the same session can act (the 403s were the CSRF check, nothing else).
    assert sup.post("duty", {"on_duty": True}).status_code == 200


def test_live_updates_refuse_anonymous_sessions_and_foreign_origins(client: TestClient) -> None:
    live = f"{API}/live"
    assert any(issubclass(kind, APIWebSocketRoute) and path == live for kind, path, _ in all_routes(client))
    me = account(client, "amy")
    cookie = {"cookie": f"{COOKIE}={me.token}"}
    refused: list[dict[str, str]] = [
        {},
        {"cookie": f"{COOKIE}=made-up-token"},
        {**cookie, "origin": "https://evil.example"},
        {**cookie, "origin": "http://testserver.evil.example"},
        {**cookie, "origin": "null"},
    ]
    for headers in refused:
        assert_refused(client, headers)

    # The console's own page (same origin, or no Origin at all) is let in and hears ids and states only.
    with person(client) as p:
        same_origin = {**cookie, "origin": "http://testserver"}
        with live_socket(client, same_origin) as ws:
            assert me.claim(p.conversation_id).status_code == 200
            event, _ = wait_for(
                ws,
                lambda f: (
                    f.get("conversation_id") == p.conversation_id and f.get("state") == "with_counsellor"
                ),
                what="the claim on the live socket",
            )
            assert set(event) == {"kind", "conversation_id", "state", "risk"}
    with live_socket(client, cookie) as ws:
        for frame in drain(ws, 0.3):  # open (a close would raise), with events of ids and states only
            assert set(frame) == {"kind", "conversation_id", "state", "risk"}, frame
    # After logout the cookie opens nothing.
    assert me.post("logout").status_code == 204
    assert_refused(client, cookie)


def test_a_live_socket_ends_with_its_session(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_live, "LIVE_RECHECK_SECONDS", 0.1)
    boss = account(client, "boss", Role.ADMIN)
    amy, ben = account(client, "amy"), account(client, "ben")
    endings: list[tuple[Session, Callable[[], Response]]] = [
        (amy, lambda: boss.post("accounts/amy", {"active": False})),  # disabled by an administrator
        (ben, lambda: ben.post("logout")),  # logged out in another tab
    ]
    for who, end in endings:
        with live_socket(client, {"cookie": f"{COOKIE}={who.token}"}) as ws:
            drain(ws, 0.3)  # open: a close would raise
            assert end().status_code in (200, 204)
            with pytest.raises(WebSocketDisconnect) as closed:
                for _ in range(50):
                    recv(ws, WAIT)
            assert closed.value.code == 1008


# -- 2. logging in -------------------------------------------------------------------------------------


def test_login_gives_a_csrf_token_and_an_httponly_samesite_strict_cookie(client: TestClient) -> None:
    add_account(client, "amy")
    response = try_login(client, "amy", PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["csrf_token"], str) and len(body["csrf_token"]) >= 32
    assert body["username"] == "amy" and body["role"] == "counsellor"
    assert body["must_change_password"] is False
    cookies = response.headers.get_list("set-cookie")
    assert len(cookies) == 1, cookies
    parts = [x.strip() for x in cookies[0].split(";")]
    name, _, token = parts[0].partition("=")
    assert name == COOKIE and len(token) >= 32
    flags = {x.split("=")[0].lower(): (x.split("=", 1)[1] if "=" in x else "") for x in parts[1:]}
    assert "httponly" in flags, cookies[0]
    assert flags.get("samesite", "").lower() == "strict", cookies[0]
    assert flags.get("path") == "/", cookies[0]
    assert token not in json.dumps(body), "the session token must only be in the HttpOnly cookie"
    assert body["csrf_token"] != token

    me = Session(client, "amy", token, body["csrf_token"])
    got = me.get("me")
    assert got.status_code == 200 and got.json()["username"] == "amy"
    assert got.json()["csrf_token"] == body["csrf_token"]
    # Two logins are two sessions with two tokens.
    other = login(client, "amy")
    assert other.token != token and other.csrf != body["csrf_token"]


def test_a_wrong_password_and_an_unknown_user_get_the_same_401(client: TestClient) -> None:
    add_account(client, "amy")
    wrong = try_login(client, "amy", "not-the-password")
    unknown = try_login(client, "nobody-here", "not-the-password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert COOKIE not in wrong.headers.get("set-cookie", "")
    assert COOKIE not in unknown.headers.get("set-cookie", "")
    assert try_login(client, "AMY", PASSWORD).status_code == 401  # usernames are exact


def test_failed_logins_are_limited_per_username_and_per_address(client: TestClient) -> None:
    add_account(client, "amy")
    add_account(client, "bob")
    add_account(client, "cat")
    with from_address(client, "198.51.100.7") as elsewhere, from_address(client, "203.0.113.9") as third:
        login_limits(client, elsewhere, third)


def login_limits(client: TestClient, elsewhere: TestClient, third: TestClient) -> None:
    # A success before the limit clears the count.
    for _ in range(MAX_FAILURES - 1):
        assert try_login(client, "amy", "wrong-password").status_code == 401
    assert try_login(client, "amy", PASSWORD).status_code == 200
    for _ in range(MAX_FAILURES - 1):
        assert try_login(client, "amy", "wrong-password").status_code == 401
    assert try_login(client, "amy", PASSWORD).status_code == 200

    # Five failures for amy from one address ...
    for _ in range(MAX_FAILURES):
        assert try_login(elsewhere, "amy", "wrong-password").status_code == 401
    # ... and the right password is refused, from any address, without a session.
    for c in (elsewhere, client, third):
        locked = try_login(c, "amy", PASSWORD)
        assert locked.status_code == 429, locked.text
        assert COOKIE not in locked.headers.get("set-cookie", "")
    # Another username from an address that has not failed is not affected.
    assert try_login(client, "bob", PASSWORD).status_code == 200
    # Five failures from one address (any usernames) lock that address for everyone.
    for name in ("x1", "x2", "x3", "x4", "x5"):
        assert try_login(third, name, "wrong-password").status_code == 401
    assert try_login(third, "cat", PASSWORD).status_code == 429
    assert try_login(client, "cat", PASSWORD).status_code == 200

    # The window passes: amy can log in again.
    async def age(s: AsyncSession) -> None:
        await s.execute(update(LoginFailure).values(at=utcnow() - timedelta(hours=1)))

    db(client, age)
    assert try_login(elsewhere, "amy", PASSWORD).status_code == 200


def test_logout_ends_the_session(client: TestClient) -> None:
    amy = account(client, "amy")
    other = login(client, "amy")
    out = amy.post("logout")
    assert out.status_code == 204
    assert any(
        h.startswith(f"{COOKIE}=") and ("max-age=0" in h.lower() or "expires=" in h.lower())
        for h in out.headers.get_list("set-cookie")
    ), out.headers
    assert amy.get("me").status_code == 401
    assert amy.get("queue").status_code == 401
    assert amy.post("duty", {"on_duty": True}).status_code == 401
    assert other.get("me").status_code == 200  # only that session


def test_an_expired_session_is_refused(client: TestClient) -> None:
    amy = account(client, "amy")
    assert amy.get("me").status_code == 200

    async def expire(s: AsyncSession) -> None:
        past = utcnow() - timedelta(minutes=1)
        await s.execute(
            update(ConsoleSession)
            .where(col(ConsoleSession.id) == token_id(amy.token, secret(client)))
            .values(expires_at=past, last_seen_at=past - timedelta(hours=1))
        )

    db(client, expire)
    assert amy.get("me").status_code == 401
    assert amy.get("queue").status_code == 401
    assert amy.post("duty", {"on_duty": True}).status_code == 401


def test_passwords_are_argon2id_and_the_session_table_holds_no_token(client: TestClient) -> None:
    amy = account(client, "amy")

    async def rows(s: AsyncSession) -> tuple[str, list[ConsoleSession]]:
        c = await s.scalar(select(Counsellor).where(col(Counsellor.username) == "amy"))
        assert c is not None
        return c.password_hash, list((await s.scalars(select(ConsoleSession))).all())

    password_hash, sessions = db(client, rows)
    assert password_hash.startswith("$argon2id$"), password_hash[:20]
    assert PASSWORD not in password_hash
    assert len(sessions) == 1
    stored = json.dumps([s.model_dump(mode="json") for s in sessions])
    assert amy.token not in stored
    assert sessions[0].id == token_id(amy.token, secret(client))  # signed with TSUNAGI_SECRET_KEY
    assert sessions[0].id != hashlib.sha256(amy.token.encode()).hexdigest()


def secret(client: TestClient) -> bytes:
    return service(client).settings.resolved_secret_key.encode()


def test_a_new_secret_key_ends_every_session(tmp_path: Path) -> None:
    """TSUNAGI_SECRET_KEY signs the sessions: after it is changed (rotated, or a leak), no cookie made under
    the old one is accepted, and logging in again works."""
    settings = make_settings(tmp_path, secret_key="the first secret key " * 2)
    with TestClient(create_app(settings)) as client:
        amy = account(client, "amy")
        assert amy.get("me").status_code == 200
    rotated = make_settings(tmp_path, secret_key="the second secret key " * 2)
    assert rotated.resolved_database_url == settings.resolved_database_url
    with TestClient(create_app(rotated)) as client:
        client.cookies.set(COOKIE, amy.token)
        assert client.get("/api/console/me").status_code == 401
        assert login(client, "amy").get("me").status_code == 200


# -- 3. the first start --------------------------------------------------------------------------------


def test_the_first_admin_must_change_the_one_time_password(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        printed = capsys.readouterr().out
        found = re.search(r"one-time password\s+(\S+)", printed)
        assert found, printed
        one_time = found.group(1)

        async def admins(s: AsyncSession) -> list[Counsellor]:
            return list((await s.scalars(select(Counsellor))).all())

        (admin,) = db(client, admins)
        assert admin.username == "admin" and admin.role == Role.ADMIN and admin.must_change_password
        assert admin.password_hash.startswith("$argon2id$")
        # A second call (the next start) creates nothing.
        assert in_app(client, lambda: ensure_first_admin(service(client))) is None
        assert len(db(client, admins)) == 1

        first = try_login(client, "admin", one_time)
        assert first.status_code == 200 and first.json()["must_change_password"] is True
        me = Session(client, "admin", first.cookies[COOKIE], first.json()["csrf_token"])
        cid = queued(client)

        allowed = {"/me", "/password", "/logout"}
        for method, path in console_routes(client):
            if path in allowed or path == "/login":
                continue
            r = me.request(method, fill(path, cid), json=BODIES.get(path))
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert "password" in r.json()["detail"], (method, path, r.text)
        assert conversation(client, cid).state == "waiting"
        got = me.get("me")
        assert got.status_code == 200 and got.json()["must_change_password"] is True

        short = me.post("password", {"old": one_time, "new": "short"})
        assert short.status_code == 422, short.text
        wrong = me.post("password", {"old": "not-the-password", "new": "a-good-long-password"})
        assert wrong.status_code == 403, wrong.text
        assert me.get("queue").status_code == 403  # still the one-time password
        done = me.post("password", {"old": one_time, "new": "a-good-long-password"})
        assert done.status_code == 204, done.text

        assert me.get("queue").status_code == 200
        assert me.get("me").json()["must_change_password"] is False
        assert try_login(client, "admin", one_time).status_code == 401
        again = try_login(client, "admin", "a-good-long-password")
        assert again.status_code == 200 and again.json()["must_change_password"] is False
        assert in_app(client, lambda: ensure_first_admin(service(client))) is None


def test_a_one_time_password_session_gets_no_live_updates(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The live socket is a console route too: until the one-time password is changed, it must refuse."""
    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        found = re.search(r"one-time password\s+(\S+)", capsys.readouterr().out)
        assert found
        first = try_login(client, "admin", found.group(1))
        assert first.status_code == 200 and first.json()["must_change_password"] is True
        cookie = {"cookie": f"{COOKIE}={first.cookies[COOKIE]}"}
        assert_refused(client, cookie)


# -- 4. claiming ---------------------------------------------------------------------------------------


def test_a_claim_connects_the_person_and_a_second_claim_is_refused(client: TestClient) -> None:
    amy = account(client, "amy")
    bob = account(client, "bob")
    sup = account(client, "sup", Role.SUPERVISOR)
    with person(client) as p:
        cid = p.conversation_id
        listed = amy.get("queue").json()
        assert [x["conversation_id"] for x in listed] == [cid]
        assert listed[0]["channel"] == "webchat" and listed[0]["preview"] == "相談したい"

        claimed = amy.claim(cid)
        assert claimed.status_code == 200, claimed.text
        assert claimed.json()["state"] == "with_counsellor"
        notice, seen = wait_for(
            p.ws,
            lambda f: is_bot(f) and f["text"] == text_of(client, "with_counsellor"),
            what="the with-counsellor notice",
        )
        seen += drain(p.ws, 0.3)
        assert any(is_status(f) and f["state"] == "connected" for f in seen), seen

        assert conversation(client, cid).state == "with_counsellor"
        view = amy.read(cid).json()
        assert view["state"] == "with_counsellor" and view["counsellor"] == "amy"
        assert view["read_only"] is False
        assert amy.held() == [cid]
        assert amy.get("queue").json() == []

        for other in (bob, sup, amy):
            again = other.claim(cid)
            assert again.status_code == 409, (other.username, again.text)
        assert bob.held() == [] and sup.held() == []
        assert amy.read(cid).json()["counsellor"] == "amy"
        # The person is not told twice.
        assert not [f for f in drain(p.ws, 0.3) if is_bot(f)]


@pytest.mark.parametrize("backend", ["postgresql", "postgresql+redis"], indirect=True)
def test_a_claim_the_database_failed_leaves_the_conversation_in_the_queue(client: TestClient) -> None:
    """The database goes away between the queue's claim and the database's (PostgreSQL terminates the
    connection the claim uses): the claim fails, and the conversation is back in the queue, held by
    nobody, for the next claim."""
    cid = queued(client)
    sato = account(client, "sato")
    svc = service(client)
    assign = svc.engine.assign

    async def cut_off(*args: Any, **kwargs: Any) -> bool:
        async with svc.db.session() as s:
            await s.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return await assign(*args, **kwargs)

    svc.engine.assign = cut_off  # type: ignore[method-assign]
    try:
        with pytest.raises(DBAPIError):  # (a 500 for the browser: the TestClient raises it instead)
            sato.claim(cid)
    finally:
        svc.engine.assign = assign  # type: ignore[method-assign]
    assert conversation(client, cid).state == "waiting"
    eventually(
        lambda: cid in queued_ids(client) and sato.held() == [], "the queue made again from the database"
    )
    assert sato.claim(cid).status_code == 200


def test_a_counsellor_at_the_limit_cannot_claim_more_and_unknown_ids_are_404(client: TestClient) -> None:
    amy = account(client, "amy")
    ids = [queued(client) for _ in range(3)]
    assert amy.get("me").json()["limit"] == 2
    assert amy.claim(ids[0]).status_code == 200
    assert amy.claim(ids[1]).status_code == 200
    full = amy.claim(ids[2])
    assert full.status_code == 409, full.text
    assert sorted(amy.held()) == sorted(ids[:2])
    # The third still waits, for someone else.
    assert conversation(client, ids[2]).state == "waiting"
    assert [x["conversation_id"] for x in amy.get("queue").json()] == [ids[2]]
    bob = account(client, "bob")
    assert bob.claim(ids[2]).status_code == 200

    assert amy.claim(NO_SUCH_ID).status_code == 404
    assert amy.read(NO_SUCH_ID).status_code == 404
    assert amy.reply(NO_SUCH_ID, "hello").status_code == 404


# -- 5. who may see and do what ------------------------------------------------------------------------


def test_only_the_holder_acts_supervisors_read_and_anyone_reads_a_waiting_one(client: TestClient) -> None:
    amy = account(client, "amy")
    bob = account(client, "bob")
    sup = account(client, "sup", Role.SUPERVISOR)
    waiting = queued(client)
    with person(client) as p:
        cid = p.conversation_id
        assert amy.claim(cid).status_code == 200
        connected(client, p)

        assert bob.read(cid).status_code == 403
        attempts = {
            "messages": {"text": "bob was here"},
            "close": {"outcome": "listened", "referrals": []},
            "notes": {"text": "bob's note"},
            "transfer": {"to": "bob"},
        }
        for action, body in attempts.items():
            r = bob.post(f"conversations/{cid}/{action}", body)
            assert r.status_code == 403, (action, r.status_code, r.text)
        transfer_to_queue = bob.post(f"conversations/{cid}/transfer", {"to": None})
        assert transfer_to_queue.status_code == 403

        view = sup.read(cid)
        assert view.status_code == 200, view.text
        assert view.json()["read_only"] is True and view.json()["counsellor"] == "amy"
        for action, body in attempts.items():
            r = sup.post(f"conversations/{cid}/{action}", body)
            assert r.status_code == 403, ("supervisor", action, r.status_code, r.text)

        # Nothing of it happened.
        assert counsellor_lines(drain(p.ws, 0.5)) == []
        assert conversation(client, cid).state == "with_counsellor"
        assert amy.read(cid).json()["counsellor"] == "amy"
        assert amy.read(cid).json()["notes"] == []
        assert bob.held() == [] and amy.held() == [cid]

    for who in (amy, bob, sup):
        r = who.read(waiting)
        assert r.status_code == 200, (who.username, r.text)
        assert r.json()["state"] == "waiting" and r.json()["read_only"] is True
        # Reading is not holding: a waiting conversation cannot be written to.
        assert who.reply(waiting, "hello").status_code == 403


# -- 6. replies, notes, the transcript -----------------------------------------------------------------


def test_a_reply_reaches_the_person_with_exactly_the_text(client: TestClient) -> None:
    amy = account(client, "amy")
    text = "相談員のamyです。<b>ここ</b>にいますよ & 大丈夫。\n二行目"
    with person(client) as p:
        assert amy.claim(p.conversation_id).status_code == 200
        connected(client, p)
        r = amy.reply(p.conversation_id, text)
        assert r.status_code == 202, r.text
        frame, _ = wait_for(p.ws, lambda f: f.get("from") == "counsellor", what="the counsellor's message")
        assert frame["type"] == "message" and frame["text"] == text
        assert counsellor_lines(drain(p.ws, 0.3)) == []  # once
        # The person answers; the bot stays silent, the counsellor reads it.
        p.ws.send_json({"type": "message", "text": "ありがとうございます", "id": "r1"})
        wait_for(p.ws, is_ack("r1"), what="the ack")
        assert not [f for f in drain(p.ws, 0.5) if is_bot(f)]
    messages = amy.read(p.conversation_id).json()["messages"]
    assert {"from": "counsellor", "text": text} in [{"from": m["from"], "text": m["text"]} for m in messages]
    assert messages[-1]["from"] == "user" and messages[-1]["text"] == "ありがとうございます"
    assert amy.reply(p.conversation_id, "").status_code == 422


def test_a_note_is_stored_encrypted_and_never_reaches_the_person(client: TestClient) -> None:
    amy = account(client, "amy")
    note = "メモ：学校名は伏せたいとのこと（秘密）"
    with person(client) as p:
        cid = p.conversation_id
        assert amy.claim(cid).status_code == 200
        saved = amy.post(f"conversations/{cid}/notes", {"text": note})
        assert saved.status_code == 201, saved.text
        frames = drain(p.ws, 1.0)
        assert all(note not in json.dumps(f, ensure_ascii=False) for f in frames), frames

    async def stored(s: AsyncSession) -> tuple[list[Note], list[Message]]:
        notes = list((await s.scalars(select(Note))).all())
        messages = list((await s.scalars(select(Message).where(col(Message.conversation_id) == cid))).all())
        return notes, messages

    notes, messages = db(client, stored)
    assert len(notes) == 1 and notes[0].conversation_id == cid
    assert note not in notes[0].text_enc and "学校" not in notes[0].text_enc
    assert service(client).crypto.decrypt(notes[0].text_enc) == note
    crypto = service(client).crypto
    assert all(note not in crypto.decrypt(m.text_enc) for m in messages), "the note became a message"
    view = amy.read(cid).json()
    assert view["notes"] == [{"by": "amy", "text": note, "at": view["notes"][0]["at"], "kind": "note"}]
    assert all(note not in m["text"] for m in view["messages"])


def test_the_transcript_returns_what_the_person_wrote_verbatim_with_highlights(client: TestClient) -> None:
    amy = account(client, "amy")
    cid = queued(client, MARKUP, CRISIS)
    r = amy.read(cid)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    users = [m for m in body["messages"] if m["from"] == "user"]
    assert [m["text"] for m in users] == ["同意", MARKUP, CRISIS]
    assert json.dumps(MARKUP) in r.text or MARKUP in r.text  # a JSON string, not HTML-escaped
    assert "&lt;img" not in r.text
    assert all(isinstance(m["at"], str) for m in body["messages"])
    assert body["triage"]["risk"] == "crisis" and "suicide" in body["triage"]["categories"]
    assert body["state"] == "waiting" and body["channel"] == "webchat"

    crisis = users[2]
    assert crisis["risk"] == "crisis"
    assert crisis["highlights"], crisis
    for h in crisis["highlights"]:
        start, end = h["span"]
        assert 0 <= start < end <= len(CRISIS), h
        assert isinstance(h["rule"], str) and h["rule"]
    index = body["messages"].index(crisis)
    reasons = [x for x in body["triage"]["reasons"] if x["message"] == index]
    assert reasons and {x["rule"] for x in reasons} == {h["rule"] for h in crisis["highlights"]}
    for x, h in zip(reasons, crisis["highlights"], strict=True):
        start, end = h["span"]
        assert CRISIS[start:end] == x["matched"], (x, h)
    assert not users[1].get("highlights"), users[1]  # the markup matched nothing
    # The bot's lines are there too, as the person saw them.
    assert any(m["from"] == "bot" for m in body["messages"])


# -- 7. transfers --------------------------------------------------------------------------------------


def test_transfer_to_a_colleague_and_back_to_the_queue_keeping_its_place(client: TestClient) -> None:
    amy = account(client, "amy")
    bob = account(client, "bob")
    first = queued(client)

    async def queued_at(s: AsyncSession) -> Any:
        return await s.scalar(
            select(col(Handoff.queued_at)).where(
                col(Handoff.conversation_id) == first, col(Handoff.status) != HandoffStatus.CLOSED
            )
        )

    original = db(client, queued_at)
    assert amy.claim(first).status_code == 200
    later = queued(client)  # queued while the first was with amy

    moved = amy.post(f"conversations/{first}/transfer", {"to": "bob"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["state"] == "with_counsellor" and moved.json()["counsellor"] == "bob"
    view = bob.read(first).json()
    assert view["counsellor"] == "bob" and view["read_only"] is False
    assert amy.held() == [] and bob.held() == [first]
    assert amy.reply(first, "still mine?").status_code == 403
    assert bob.reply(first, "bobです").status_code == 202

    back = bob.post(f"conversations/{first}/transfer", {"to": None})
    assert back.status_code == 200, back.text
    assert back.json()["state"] == "waiting" and back.json()["counsellor"] is None
    assert conversation(client, first).state == "waiting"
    assert bob.held() == []
    assert db(client, queued_at) == original
    eventually(lambda: first in queued_ids(client), "the first back in the queue")
    listed = amy.get("queue").json()
    assert [x["conversation_id"] for x in listed] == [first, later], "it lost its place in the queue"
    assert listed[0]["waiting_seconds"] >= listed[1]["waiting_seconds"]
    assert bob.reply(first, "gone").status_code == 403
    # Anyone can take it again.
    assert amy.claim(first).status_code == 200


def test_transfer_to_someone_at_the_limit_is_refused_and_nothing_moves(client: TestClient) -> None:
    amy = account(client, "amy")
    bob = account(client, "bob")
    ids = [queued(client) for _ in range(3)]
    assert amy.claim(ids[0]).status_code == 200
    assert bob.claim(ids[1]).status_code == 200
    assert bob.claim(ids[2]).status_code == 200

    full = amy.post(f"conversations/{ids[0]}/transfer", {"to": "bob"})
    assert full.status_code == 409, full.text
    assert amy.read(ids[0]).json()["counsellor"] == "amy"
    assert conversation(client, ids[0]).state == "with_counsellor"
    assert amy.held() == [ids[0]] and sorted(bob.held()) == sorted(ids[1:])
    assert amy.reply(ids[0], "まだここにいます").status_code == 202
    assert amy.post(f"conversations/{ids[0]}/transfer", {"to": "nobody"}).status_code == 404
    assert amy.post(f"conversations/{ids[0]}/transfer", {"to": "amy"}).status_code == 422
    assert amy.read(ids[0]).json()["counsellor"] == "amy"


# -- 8. closing ----------------------------------------------------------------------------------------


def test_closing_tells_the_person_frees_the_counsellor_and_counts_the_conversation(
    client: TestClient,
) -> None:
    amy = account(client, "amy")
    other = queued(client)
    third = queued(client)
    referral = service(client).content.referrals[0].id
    with person(client) as p:
        cid = p.conversation_id
        assert amy.claim(cid).status_code == 200
        assert amy.claim(other).status_code == 200
        assert amy.claim(third).status_code == 409  # full
        connected(client, p)

        unknown = amy.post(f"conversations/{cid}/close", {"outcome": "made_up"})
        assert unknown.status_code == 422, unknown.text
        bad_referral = amy.post(f"conversations/{cid}/close", {"outcome": "referred", "referrals": ["nope"]})
        assert bad_referral.status_code == 422, bad_referral.text
        assert conversation(client, cid).state == "with_counsellor"
        assert not [f for f in drain(p.ws, 0.3) if f.get("type") == "message"]

        closed = amy.post(f"conversations/{cid}/close", {"outcome": "referred", "referrals": [referral]})
        assert closed.status_code == 200, closed.text
        assert closed.json()["state"] == "closed"
        _, seen = wait_for(
            p.ws, lambda f: is_bot(f) and f["text"] == text_of(client, "closing"), what="the closing words"
        )
        seen += drain(p.ws, 0.3)
        assert any(is_status(f) and f["state"] == "closed" for f in seen), seen

    conv = conversation(client, cid)
    assert conv.state == "closed" and conv.outcome == "referred" and conv.closed_at is not None
    assert referral in conv.referrals.split(",")
    assert sorted(amy.held()) == [other]
    assert amy.claim(third).status_code == 200, "closing did not free the counsellor's place"
    assert amy.post(f"conversations/{cid}/close", {"outcome": "listened"}).status_code in (403, 409)

    async def counts(s: AsyncSession) -> list[StatCount]:
        return list((await s.scalars(select(StatCount))).all())

    rows = db(client, counts)
    day = conv.created_at.astimezone(service(client).hours.tz).date()
    conversations = [x for x in rows if x.metric == "conversations"]
    assert conversations and all(x.day == day and x.channel == "webchat" for x in conversations), rows
    assert sum(x.count for x in conversations) == 1
    assert sum(x.count for x in rows if x.metric == "handed_off") == 1


def test_when_the_person_ends_the_conversation_the_counsellor_is_freed_too(client: TestClient) -> None:
    amy = account(client, "amy")
    other = queued(client)
    third = queued(client)
    with person(client) as p:
        cid = p.conversation_id
        assert amy.claim(cid).status_code == 200
        assert amy.claim(other).status_code == 200
        connected(client, p)
        tell(p.ws, "終了", "end")
    assert conversation(client, cid).state == "closed"
    assert amy.held() == [other], "a conversation the person ended still counts against the counsellor"
    assert amy.claim(third).status_code == 200


# -- 9. the audit log ----------------------------------------------------------------------------------


def test_every_action_is_audited_with_its_actor_and_no_text(client: TestClient) -> None:
    amy = account(client, "amy")
    bob = account(client, "bob")
    sup = account(client, "sup", Role.SUPERVISOR)
    reply, note = "返信の本文ひみつ", "メモの本文ひみつ"
    cid = queued(client, "家のことで話を聞いてほしい", "相談したい")
    assert amy.read(cid).status_code == 200
    assert amy.claim(cid).status_code == 200
    assert amy.reply(cid, reply).status_code == 202
    assert amy.post(f"conversations/{cid}/notes", {"text": note}).status_code == 201
    assert amy.post(f"conversations/{cid}/transfer", {"to": "bob"}).status_code == 200
    assert bob.post(f"conversations/{cid}/close", {"outcome": "listened"}).status_code == 200

    assert amy.get("audit").status_code == 403
    assert bob.get("audit").status_code == 403
    r = sup.get("audit")
    assert r.status_code == 200, r.text
    entries = r.json()
    done = {(e["actor"], e["action"], e["conversation_id"]) for e in entries}
    for actor, action in [
        ("amy", "view"),
        ("amy", "claim"),
        ("amy", "reply"),
        ("amy", "note"),
        ("amy", "transfer"),
        ("bob", "close"),
    ]:
        assert (actor, action, cid) in done, (actor, action, sorted(done))
    logins = {e["actor"] for e in entries if e["action"] == "login"}
    assert {"amy", "bob", "sup"} <= logins
    ats = [e["at"] for e in entries]
    assert ats == sorted(ats, reverse=True), "the newest first"

    everything = json.dumps(entries, ensure_ascii=False) + json.dumps(
        [a.model_dump(mode="json") for a in audit_rows(client)], ensure_ascii=False
    )
    for secret in (reply, note, "家のこと", "話を聞いてほしい", "ひみつ", PASSWORD):
        assert secret not in everything, secret
    assert sup.get("audit", params={"limit": 2}).json() == entries[:2]


# -- 10. statistics ------------------------------------------------------------------------------------


def test_statistics_count_conversations_by_day_category_risk_and_channel(client: TestClient) -> None:
    amy = account(client, "amy")
    sup = account(client, "sup", Role.SUPERVISOR)
    cid = queued(client, TWO_CATEGORIES)
    assert amy.claim(cid).status_code == 200
    assert amy.post(f"conversations/{cid}/close", {"outcome": "listened"}).status_code == 200
    conv = conversation(client, cid)
    categories = conv.categories.split(",")
    assert sorted(categories) == ["dv", "suicide"] and conv.risk == "crisis"
    day = conv.created_at.astimezone(service(client).hours.tz).date().isoformat()

    assert amy.get("stats").status_code == 403
    assert amy.get("stats.csv").status_code == 403
    r = sup.get("stats")
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["by_category"] == {"dv": 1, "suicide": 1}
    # One conversation is one conversation, however many categories it has.
    totals = {k: stats[k] for k in ("by_day", "by_risk", "by_channel", "emergencies", "handed_off")}
    assert totals == {
        "by_day": {day: 1},
        "by_risk": {"crisis": 1},
        "by_channel": {"webchat": 1},
        "emergencies": 1,
        "handed_off": 1,
    }


def csv_rows(r: Response) -> list[list[str]]:
    """A CSV file as Excel in Japan opens it: UTF-8 with a BOM, CRLF line ends."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith(b"\xef\xbb\xbf"), r.content[:10]
    assert b"\r\n" in r.content and b"\n" not in r.content.replace(b"\r\n", b"")
    return list(csv.reader(io.StringIO(r.content.decode("utf-8")[1:])))


def test_statistics_count_every_conversation_by_its_start_with_outcomes_and_referrals(
    client: TestClient,
) -> None:
    """Closed or not, a conversation counts on the day it started; outcomes and referrals are given, and
    stay once retention has purged the conversations."""
    amy = account(client, "amy")
    sup = account(client, "sup", Role.SUPERVISOR)
    closed, waiting = queued(client, CRISIS), queued(client)
    assert amy.claim(closed).status_code == 200
    done = amy.post(f"conversations/{closed}/close", {"outcome": "referred", "referrals": ["inochi_navi"]})
    assert done.status_code == 200, done.text
    stats = sup.get("stats").json()
    assert stats["conversations"] == 2 and stats["still_open"] == 1
    assert stats["by_outcome"] == {"": 1, "referred": 1}
    assert stats["by_referral"]["inochi_navi"] == 1
    assert stats["by_risk"] == {"crisis": 1, "low": 1}
    assert stats["handed_off"] == 2, "both came to the queue (one waits there still)"
    assert conversation(client, waiting).state == "waiting"

    # A year later retention purges the closed one: its outcome and referrals are still counted.
    svc = service(client)
    later = utcnow() + timedelta(days=svc.settings.retention_days + 1)
    assert in_app(client, lambda: svc.retention.sweep(later)) == 1
    again = sup.get("stats").json()
    for key in ("conversations", "by_outcome", "by_referral", "by_risk", "handed_off", "still_open"):
        assert again[key] == stats[key], key


def test_the_statistics_csv_files_are_in_japanese_with_totals_and_no_ids(client: TestClient) -> None:
    amy = account(client, "amy")
    sup = account(client, "sup", Role.SUPERVISOR)
    ids = [queued(client, CRISIS), queued(client)]
    assert amy.claim(ids[0]).status_code == 200
    assert (
        amy.post(
            f"conversations/{ids[0]}/close", {"outcome": "referred", "referrals": ["childline"]}
        ).status_code
        == 200
    )
    labels = console_labels()
    assert amy.get("stats-totals.csv").status_code == 403

    daily = csv_rows(sup.get("stats.csv"))
    assert (
        tuple(daily[0])
        == labels.daily_headers
        == ("開始日", "チャネル", "リスク", "年代", "相談件数", "相談員対応件数", "緊急対応件数")
    )
    today = utcnow().astimezone(service(client).hours.tz).date().isoformat()
    body, total = daily[1:-1], daily[-1]
    assert {tuple(row[:4]) for row in body} == {
        (today, "Webチャット", "危機", "未回答"),
        (today, "Webチャット", "低", "未回答"),
    }
    assert total == ["合計", "", "", "", "2", "2", "1"], "the totals on a row of their own"
    assert sum(int(row[4]) for row in body) == 2

    totals = csv_rows(sup.get("stats-totals.csv"))
    assert totals[0] == ["区分", "項目", "件数"]
    found = {(a, b): int(c) for a, b, c in totals[1:]}
    assert found[("合計", "相談件数")] == 2
    assert found[("合計", "対応中（未終了）の相談件数")] == 1
    assert found[("チャネル別", "Webチャット")] == 2
    assert found[("リスク別", "危機")] == 1 and found[("リスク別", "低")] == 1
    assert found[("相談内容別（複数該当あり）", "自殺・自傷")] == 1
    assert found[("年代別", "未回答")] == 2
    assert found[("対応結果別", "他機関を紹介")] == 1 and found[("対応結果別", "対応中（未終了）")] == 1
    assert found[("紹介先別（複数該当あり）", "チャイルドライン")] == 1
    english = re.compile(r"^[a-z_]+$")
    assert not [cell for row in daily[1:] + totals[1:] for cell in row[:2] if english.match(cell)]
    exports = [d for a, action, d in audit_actions(client) if a == "sup" and action == "stats.export"]
    assert len(exports) == 2

    async def contact_ids(s: AsyncSession) -> list[str]:
        return list((await s.scalars(select(col(Contact.id)))).all())

    text = json.dumps([daily, totals], ensure_ascii=False)
    for secret in [*ids, *db(client, contact_ids), CRISIS]:
        assert secret not in text, secret
    one_day = csv_rows(sup.get("stats.csv", params={"start": "2020-01-01", "end": "2020-01-01"}))
    assert one_day[1:] == [["合計", "", "", "", "0", "0", "0"]]
    assert sup.get("stats.csv", params={"start": "2020-01-02", "end": "2020-01-01"}).status_code == 422


# -- 11. the command line ------------------------------------------------------------------------------


def cli(database_url: str, tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``tsunagi counsellor <args>`` as a subprocess, on the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUNAGI_")}
    env.update({"TSUNAGI_DATABASE_URL": database_url, "TSUNAGI_VAR_DIR": str(tmp_path / "var")})
    command = Path(sys.executable).parent / "tsunagi"
    assert command.exists(), command
    return subprocess.run(
        [str(command), "counsellor", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no .env of the developer's
        env=env,
        timeout=120,
        check=False,
    )


def test_the_counsellor_add_command(tmp_path: Path, database_url: str) -> None:
    added = cli(database_url, tmp_path, "add", "alice", "--role", "supervisor", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert PASSWORD not in added.stdout + added.stderr
    short = cli(database_url, tmp_path, "add", "shorty", stdin="tooshort\n")
    assert short.returncode == 2, short.stderr
    assert "12" in short.stderr
    duplicate = cli(
        database_url, tmp_path, "add", "alice", "--role", "counsellor", stdin="another-long-password\n"
    )
    assert duplicate.returncode == 1, duplicate.stderr
    assert "already exists" in duplicate.stderr

    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        ok = try_login(client, "alice", PASSWORD)
        assert ok.status_code == 200, ok.text
        assert ok.json()["role"] == "supervisor"
        assert try_login(client, "alice", "another-long-password").status_code == 401
        assert try_login(client, "shorty", "tooshort").status_code == 401

        async def names(s: AsyncSession) -> list[tuple[str, str]]:
            return [(c.username, c.role) for c in (await s.scalars(select(Counsellor))).all()]

        # An account existed, so no first-start admin was made; the duplicate changed nothing.
        assert db(client, names) == [("alice", "supervisor")]
        me = Session(client, "alice", ok.cookies[COOKIE], ok.json()["csrf_token"])
        assert me.get("audit").status_code == 200


def test_the_counsellor_list_and_reset_password_commands(tmp_path: Path, database_url: str) -> None:
    assert (
        cli(database_url, tmp_path, "add", "alice", "--role", "admin", stdin=PASSWORD + "\n").returncode == 0
    )
    assert cli(database_url, tmp_path, "add", "bob", stdin=PASSWORD + "\n").returncode == 0
    bad = cli(database_url, tmp_path, "add", MARKUP, stdin=PASSWORD + "\n")
    assert bad.returncode == 2 and "username" in bad.stderr
    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        alice = login(client, "alice")
        assert alice.post("accounts/bob", {"active": False}).status_code == 200
        listed = cli(database_url, tmp_path, "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines() == ["alice\tadmin\tactive\t-", "bob\tcounsellor\tdisabled\t-"]

        # The last administrator forgot their password: the command gives a one-time one.
        reset = cli(database_url, tmp_path, "reset-password", "alice")
        assert reset.returncode == 0, reset.stderr
        one_time = reset.stdout.strip().rsplit(" ", 1)[-1]
        assert alice.get("me").status_code == 401, "their sessions ended"
        assert try_login(client, "alice", PASSWORD).status_code == 401
        again = login(client, "alice", one_time)
        assert again.get("me").json()["must_change_password"] is True
        assert "one-time password" in cli(database_url, tmp_path, "list").stdout
        missing = cli(database_url, tmp_path, "reset-password", "nobody")
        assert missing.returncode == 1 and "nobody" in missing.stderr


def test_the_counsellor_commands_set_the_display_name_through_the_same_account_functions(
    tmp_path: Path, database_url: str
) -> None:
    added = cli(database_url, tmp_path, "add", "sato", "--display-name", "佐藤", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert cli(database_url, tmp_path, "add", "kimura", stdin=PASSWORD + "\n").returncode == 0
    named = cli(database_url, tmp_path, "display-name", "kimura", "  木村  ")
    assert named.returncode == 0, named.stderr
    listed = cli(database_url, tmp_path, "list").stdout.splitlines()
    assert listed == ["kimura\tcounsellor\tactive\t木村", "sato\tcounsellor\tactive\t佐藤"]
    bad = cli(database_url, tmp_path, "display-name", "kimura", "a" * 33)
    assert bad.returncode == 2 and "32" in bad.stderr
    missing = cli(database_url, tmp_path, "display-name", "nobody", "誰か")
    assert missing.returncode == 1 and "nobody" in missing.stderr
    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        assert login(client, "sato").get("me").json()["display_name"] == "佐藤"
        # The command line's changes are in the audit log too, as "cli".
        assert ("cli", "account.add", "sato role=counsellor") in audit_actions(client)
        assert ("cli", "account.display_name", "kimura") in audit_actions(client)


def test_the_transcript_says_what_became_of_each_message_to_the_person(client: TestClient) -> None:
    amy = account(client, "amy")
    with person(client) as p:
        assert amy.claim(p.conversation_id).status_code == 200
        connected(client, p)
        assert amy.reply(p.conversation_id, "相談員のamyです").status_code == 202
        wait_for(p.ws, lambda f: f.get("from") == "counsellor", what="the counsellor's message")

        def delivered() -> bool:
            messages = amy.read(p.conversation_id).json()["messages"]
            mine = [m for m in messages if m["from"] == "counsellor"]
            return bool(mine) and mine[-1].get("delivery", {}).get("status") == "delivered"

        eventually(delivered, "the reply recorded as delivered")
    messages = amy.read(p.conversation_id).json()["messages"]
    assert all("delivery" in m for m in messages if m["from"] != "user")
    assert all("delivery" not in m for m in messages if m["from"] == "user")


def test_a_supervisor_clears_the_crisis_alerts_they_have_seen(client: TestClient) -> None:
    sup = account(client, "sue", Role.SUPERVISOR)
    assert sup.post("duty", {"on_duty": True}).status_code == 200
    with person(client, "もう死にたい。今から飛び降りる") as p:
        alerts = sup.get("overview").json()["alerts"]
        assert [a["conversation_id"] for a in alerts] == [p.conversation_id]
    assert sup.post("alerts/seen").json() == {"seen": 1}
    assert sup.get("overview").json()["alerts"] == []
    assert sup.post("alerts/seen").json() == {"seen": 0}


# -- accounts --------------------------------------------------------------------------------------------


def audit_actions(client: TestClient) -> list[tuple[str, str, str]]:
    async def work(s: AsyncSession) -> list[tuple[str, str, str]]:
        rows = (await s.scalars(select(AuditLog).order_by(col(AuditLog.id)))).all()
        return [(a.actor, a.action, a.detail) for a in rows]

    return db(client, work)


def test_an_admin_adds_an_account_whose_one_time_password_must_be_changed(client: TestClient) -> None:
    boss = account(client, "boss", Role.ADMIN)
    added = boss.post("accounts", {"username": "kana.sato", "role": "counsellor", "limit": 3})
    assert added.status_code == 201, added.text
    one_time = added.json()["password"]
    assert added.json()["username"] == "kana.sato" and len(one_time) >= 12
    assert not set(one_time) & set("0O1lI5S2Z8B"), "no look-alike characters to misread"
    first = login(client, "kana.sato", one_time)
    assert first.get("me").json()["must_change_password"] is True
    assert first.get("queue").status_code == 403, "nothing but a new password first"
    assert first.post("password", {"old": one_time, "new": "kana-chooses-this-one"}).status_code == 204
    assert first.get("queue").status_code == 200
    (listed,) = [a for a in boss.get("accounts").json() if a["username"] == "kana.sato"]
    assert listed | {"created_at": ""} == {
        "username": "kana.sato",
        "display_name": "",
        "role": "counsellor",
        "active": True,
        "on_duty": False,
        "held": 0,
        "limit": 3,
        "custom_limit": 3,
        "must_change_password": False,
        "created_at": "",
    }
    assert ("boss", "account.add", "kana.sato role=counsellor") in audit_actions(client)
    assert one_time not in json.dumps(audit_actions(client)), "a password is never logged"

    taken = boss.post("accounts", {"username": "kana.sato", "role": "admin"})
    assert taken.status_code == 409, taken.text
    for bad in (
        {"username": MARKUP},
        {"username": ""},
        {"username": "."},
        {"username": ".."},
        {"username": "-rf"},
        {"username": "a" * 65},
        {"username": "ok", "role": "owner"},
        {"username": "ok", "limit": 0},
        {"username": "ok", "limit": 21},
    ):
        r = boss.post("accounts", bad)
        assert r.status_code == 422, (bad, r.text)
    assert {a["username"] for a in boss.get("accounts").json()} == {"admin", "boss", "kana.sato"}


def test_only_admins_manage_accounts(client: TestClient) -> None:
    account(client, "boss", Role.ADMIN)
    for role in (Role.COUNSELLOR, Role.SUPERVISOR):
        who = account(client, f"not-admin-{role}", role)
        assert who.get("accounts").status_code == 403
        assert who.post("accounts", {"username": "sneaky", "role": "admin"}).status_code == 403
        assert who.post("accounts/boss", {"active": False}).status_code == 403
        assert who.post(f"accounts/{who.username}", {"role": "admin"}).status_code == 403
        assert who.post("accounts/boss/password").status_code == 403
    boss = login(client, "boss")
    by_name = {a["username"]: a for a in boss.get("accounts").json()}
    assert "sneaky" not in by_name and by_name["boss"]["active"] and by_name["boss"]["role"] == "admin"
    assert by_name["not-admin-counsellor"]["role"] == "counsellor"


def test_disabling_an_account_ends_its_sessions_and_returns_its_conversations(client: TestClient) -> None:
    boss = account(client, "boss", Role.ADMIN)
    amy = account(client, "amy")
    assert amy.post("duty", {"on_duty": True}).status_code == 200
    with person(client) as p:
        cid = p.conversation_id
        assert amy.claim(cid).status_code == 200
        assert cid not in queued_ids(client)
        r = boss.post("accounts/amy", {"active": False})
        assert r.status_code == 200, r.text
        assert r.json()["active"] is False and r.json()["on_duty"] is False
        assert r.json()["requeued"] == 1 and r.json()["held"] == 0
        assert conversation(client, cid).state == "waiting", "back in the queue, not lost"
        eventually(lambda: cid in queued_ids(client), "the conversation back in the queue")
        assert amy.get("me").status_code == 401, "the session ended"
        assert try_login(client, "amy", PASSWORD).status_code == 401, "and no new one"
        # Someone else takes it from where it was.
        ben = account(client, "ben")
        assert ben.claim(cid).status_code == 200
    again = boss.post("accounts/amy", {"active": True})
    assert again.status_code == 200 and again.json()["requeued"] == 0
    assert try_login(client, "amy", PASSWORD).status_code == 200
    actions = [(a, d) for _, a, d in audit_actions(client) if a.startswith("account.")]
    assert actions == [("account.update", "amy disabled"), ("account.update", "amy active")]


def test_roles_and_limits_change_but_an_admin_cannot_lock_themselves_out(client: TestClient) -> None:
    boss = account(client, "boss", Role.ADMIN)
    account(client, "amy")
    r = boss.post("accounts/amy", {"role": "supervisor", "limit": 4})
    assert r.status_code == 200, r.text
    assert (r.json()["role"], r.json()["limit"], r.json()["custom_limit"]) == ("supervisor", 4, 4)
    amy = login(client, "amy")
    assert amy.get("me").json()["limit"] == 4
    assert amy.get("overview").status_code == 200, "a supervisor now"
    back = boss.post("accounts/amy", {"limit": None})
    default = service(client).settings.counsellor_limit
    assert (back.json()["limit"], back.json()["custom_limit"], back.json()["role"]) == (
        default,
        None,
        "supervisor",
    )
    assert boss.post("accounts/amy", {"limit": 99}).status_code == 422
    assert boss.post("accounts/nobody", {"active": False}).status_code == 404
    assert boss.post("accounts/nobody/password").status_code == 404
    for change in ({"active": False}, {"role": "counsellor"}):
        mine = boss.post("accounts/boss", change)
        assert mine.status_code == 422 and "you" in mine.json()["detail"], mine.text
    assert boss.post("accounts/boss", {"limit": 5}).status_code == 200, "their own limit is theirs to set"
    assert boss.get("me").status_code == 200


def test_a_password_reset_gives_a_one_time_password_and_ends_the_sessions(client: TestClient) -> None:
    boss = account(client, "boss", Role.ADMIN)
    amy = account(client, "amy")
    r = boss.post("accounts/amy/password")
    assert r.status_code == 200, r.text
    one_time = r.json()["password"]
    assert amy.get("me").status_code == 401
    assert try_login(client, "amy", PASSWORD).status_code == 401, "the old password is gone"
    again = login(client, "amy", one_time)
    assert again.get("me").json()["must_change_password"] is True
    assert again.get("queue").status_code == 403
    assert ("boss", "account.password_reset", "amy") in audit_actions(client)


def test_colleagues_are_the_other_active_accounts_on_duty_first(client: TestClient) -> None:
    # The first-start "admin" has not chosen a password yet: nobody can pass a conversation to it.
    boss = account(client, "boss", Role.ADMIN)
    amy, ben = account(client, "amy"), account(client, "ben")
    account(client, "cho")
    assert ben.post("duty", {"on_duty": True}).status_code == 200
    with person(client) as p:
        assert ben.claim(p.conversation_id).status_code == 200
        assert boss.post("accounts/cho", {"active": False}).status_code == 200
        got = amy.get("colleagues")
        assert got.status_code == 200, got.text
        limit = service(client).settings.counsellor_limit
        assert got.json() == [
            {
                "username": "ben",
                "display_name": "",
                "role": "counsellor",
                "on_duty": True,
                "held": 1,
                "limit": limit,
            },
            {
                "username": "boss",
                "display_name": "",
                "role": "admin",
                "on_duty": False,
                "held": 0,
                "limit": limit,
            },
        ]
        refused = ben.post(f"conversations/{p.conversation_id}/transfer", {"to": "admin"})
        assert refused.status_code == 409 and "not chosen" in refused.json()["detail"], refused.text
        assert ben.held() == [p.conversation_id]


# -- what the conversation itself found (bot/dialogue.py) --------------------------------------------------


def test_the_direct_question_and_its_answer_are_in_the_queue_and_the_conversation(client: TestClient) -> None:
    kana = account(client, "kana")
    with person(client, "もう何もかも疲れた。どうでもいい", "はい") as p:
        cid = p.conversation_id
        (item,) = kana.get("queue").json()
        assert item["conversation_id"] == cid and item["risk"] == "crisis"
        assert item["reasons"] == [{"rule": "dialogue.danger_question", "answer": "yes", "matched": ""}]
        view = kana.read(cid).json()
        assert view["triage"]["reasons"][0] == item["reasons"][0]
        assert (view["intake"]["danger_asked"], view["intake"]["danger_answer"]) == ("medium", "yes")
        lines = [(m["from"], m["text"]) for m in view["messages"]]
        # (Asked after the offer, which received what they told: the question does not say it again.)
        question = lines.index(("bot", text_of(client, "ask_danger", ack="")))
        assert lines[question + 1] == ("user", "はい"), "the answer right under the question"
        assert view["previous"] is None


def test_someone_back_soon_after_a_crisis_is_queued_with_the_earlier_conversation_a_click_away(
    client: TestClient,
) -> None:
    amy, bob, carol = account(client, "amy"), account(client, "bob"), account(client, "carol")
    with person(client, CRISIS) as p:
        first, token = p.conversation_id, p.token
        assert amy.claim(first).status_code == 200
        closed = amy.post(f"conversations/{first}/close", {"outcome": "listened", "referrals": []})
        assert closed.status_code == 200, closed.text
        # The closing words reach the page before it goes (else they come with the next visit's history).
        closing = text_of(client, "closing")
        wait_for(p.ws, lambda f: is_bot(f) and f["text"] == closing, what="the closing words")
    with client.websocket_connect("/chat/ws") as ws:
        hello(ws, resume=token)
        frames = tell(ws, "こんにちは", "back")
    # The age band was asked once, in the first conversation: not again (bot/storage/contacts.py).
    bot = ["welcome", "waiting", "waiting_safety"]
    assert reply_keys([f["text"] for f in frames if is_bot(f)]) == bot
    second = conversation_of(client, token)
    assert second != first
    assert conversation(client, second).state == "waiting"
    (item,) = bob.get("queue").json()
    assert item["risk"] == "crisis"
    assert {"rule": "dialogue.returning", "previous": first, "matched": ""} in item["reasons"]
    view = bob.read(second).json()
    assert view["previous"]["conversation_id"] == first and view["previous"]["risk"] == "crisis"
    # While it waits, anyone deciding to take it may read the earlier one; then only who has it.
    assert bob.read(first).status_code == 200 and carol.read(first).status_code == 200
    assert bob.claim(second).status_code == 200
    assert bob.read(first).status_code == 200
    assert carol.read(first).status_code == 403


@pytest.mark.parametrize(
    ("q", "found", "not_found"),
    [
        ("デートDV", {"dv_plus"}, {"dv_navi"}),
        ("彼氏", {"dv_plus"}, set()),
        ("交際相手", {"dv_plus"}, set()),
        ("高校生", {"kodomo_sos", "childline"}, {"dv_navi"}),
        ("24時間", {"yorisoi", "kodomo_sos", "dv_plus"}, {"inochi_navi", "childline"}),
        ("ＤＶ　24時間", {"dv_plus"}, {"dv_navi"}),  # every word, widths and spaces folded
        ("いじめ", {"kodomo_sos"}, set()),
    ],
)
def test_the_referral_search_finds_names_categories_tags_and_hours(
    client: TestClient, q: str, found: set[str], not_found: set[str]
) -> None:
    kana = account(client, "kana")
    got = {r["id"] for r in kana.get("referrals", params={"q": q}).json()}
    assert found <= got, got
    assert not (not_found & got), got


# -- display names, the audit log in Japanese, the age band asked once, the queue card's quote ----------


def test_a_display_name_is_set_by_the_account_or_a_supervisor_and_shown_instead_of_the_username(
    client: TestClient,
) -> None:
    amy = account(client, "amy")
    bob = account(client, "bob")
    sup = account(client, "sup", Role.SUPERVISOR)
    assert amy.get("me").json()["display_name"] == ""
    mine = amy.post("me/display-name", {"display_name": "  佐藤  "})
    assert mine.status_code == 200, mine.text
    assert mine.json() == {"username": "amy", "display_name": "佐藤"}
    assert amy.get("me").json()["display_name"] == "佐藤"
    # A colleague may not name another; a supervisor may.
    assert bob.post("accounts/amy/display-name", {"display_name": "勝手な名前"}).status_code == 403
    named = sup.post("accounts/bob/display-name", {"display_name": MARKUP})
    assert named.status_code == 200, named.text
    assert named.json()["display_name"] == MARKUP, "kept as text (the page shows it with textContent)"
    assert sup.post("accounts/nobody/display-name", {"display_name": "誰か"}).status_code == 404
    for bad in ("", "   ", "a" * 33, "改行\nあり", "タブ\tあり"):
        r = amy.post("me/display-name", {"display_name": bad})
        assert r.status_code == 422, (bad, r.text)
    colleagues = {c["username"]: c["display_name"] for c in bob.get("colleagues").json()}
    assert colleagues["amy"] == "佐藤"
    overview = {c["username"]: c["display_name"] for c in sup.get("overview").json()["counsellors"]}
    assert overview == {"admin": "", "amy": "佐藤", "bob": MARKUP, "sup": ""}

    with person(client) as p:
        assert amy.claim(p.conversation_id).status_code == 200
        assert amy.post(f"conversations/{p.conversation_id}/notes", {"text": "メモ"}).status_code == 201
        view = sup.read(p.conversation_id).json()
        assert view["counsellor"] == "amy" and view["counsellor_name"] == "佐藤"
        assert [n["by"] for n in view["notes"]] == ["佐藤"]
        (active,) = sup.get("overview").json()["active"]
        assert active["counsellor_name"] == "佐藤"
    actions = audit_actions(client)
    assert ("amy", "account.display_name", "amy") in actions and (
        "sup",
        "account.display_name",
        "bob",
    ) in actions


def test_the_canned_greeting_takes_the_display_name_and_canned_texts_share_no_sentence(
    client: TestClient,
) -> None:
    from handoff.console.content import sentences

    amy = account(client, "amy")
    canned = amy.get("canned").json()["canned"]
    greeting = next(c["text"] for c in canned if "{name}" in c["text"])
    assert "相談員の{name}です" in greeting
    seen: list[str] = []
    for c in canned:
        for sentence in sentences(c["text"]):
            assert sentence not in seen, sentence
            seen.append(sentence)
    # Nor do they repeat what the bot says right before a counsellor's first words or after the last.
    around = sentences(text_of(client, "with_counsellor")) + sentences(text_of(client, "closing"))
    assert not set(seen) & set(around), set(seen) & set(around)


def test_the_audit_log_gives_display_names_and_filters_by_person_action_and_date(client: TestClient) -> None:
    amy = account(client, "amy")
    sup = account(client, "sup", Role.SUPERVISOR)
    assert amy.post("me/display-name", {"display_name": "佐藤"}).status_code == 200
    cid = queued(client)
    assert amy.claim(cid).status_code == 200
    assert amy.reply(cid, "こんにちは").status_code == 202

    everything = sup.get("audit").json()
    assert {e["actor_name"] for e in everything if e["actor"] == "amy"} == {"佐藤"}
    by_name = sup.get("audit", params={"person": "佐藤"}).json()
    assert by_name and {e["actor"] for e in by_name} == {"amy"}
    assert sup.get("audit", params={"person": "amy"}).json() == by_name
    claims = sup.get("audit", params={"action": "claim"}).json()
    assert [(e["actor"], e["conversation_id"]) for e in claims] == [("amy", cid)]
    accounts_family = sup.get("audit", params={"action": "account."}).json()
    assert {e["action"] for e in accounts_family} == {"account.display_name"}
    today = utcnow().astimezone(service(client).hours.tz).date()
    assert (
        sup.get("audit", params={"start": today.isoformat(), "end": today.isoformat()}).json() == everything
    )
    yesterday = (today - timedelta(days=1)).isoformat()
    assert sup.get("audit", params={"end": yesterday}).json() == []
    assert sup.get("audit", params={"start": (today + timedelta(days=1)).isoformat()}).json() == []
    assert sup.get("audit", params={"start": "not-a-day"}).status_code == 422
    assert sup.get("audit", params={"person": MARKUP}).json() == []


def test_the_age_band_is_asked_once_and_remembered_when_the_person_comes_back(client: TestClient) -> None:
    story = "学校で友だちに無視されていて、つらい"
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        tell(ws, "同意", "consent")
        first = reply_keys([f["text"] for f in tell(ws, story, "story") if is_bot(f)])
        assert "intake_age" in first, first
        tell(ws, "16〜18歳", "age")
        earlier = conversation_of(client, token)
        tell(ws, "終了", "end")
    assert conversation(client, earlier).age_band == "16-18"
    with client.websocket_connect("/chat/ws") as ws:
        hello(ws, resume=token)
        tell(ws, "こんにちは", "back")
        tell(ws, "同意", "consent-again")
        again = reply_keys([f["text"] for f in tell(ws, story, "story-again") if is_bot(f)])
    later = conversation_of(client, token)
    assert later != earlier
    assert "intake_age" not in again and "intake_prefecture" in again, again
    assert conversation(client, later).age_band == "16-18", "the children's lines still fit"


def test_the_queue_card_quotes_the_most_serious_words_where_they_are_in_a_long_line(
    client: TestClient,
) -> None:
    kana = account(client, "kana")
    line = "今日は学校でいろいろあって、" * 6 + "もう死にたい"
    with person(client, line, "相談したい"):
        (item,) = kana.get("queue").json()
    preview, reason = item["preview"], item["preview_reason"]
    assert preview.startswith("…") and preview.endswith("もう死にたい"), preview
    a, b = reason["span"]
    assert preview[a:b] == reason["matched"] == "もう死にたい", (preview, reason)


def test_the_conversation_version_grows_with_every_message_and_action(client: TestClient) -> None:
    """The page drops a read older than the one it shows by this version (console-conversation.js)."""
    amy = account(client, "amy")
    bea = account(client, "bea")
    seen: list[int] = []

    def version(who: Session, cid: str) -> int:
        r = who.read(cid)
        assert r.status_code == 200, r.text
        seen.append(r.json()["version"])
        return seen[-1]

    with person(client) as p:
        cid = p.conversation_id
        version(amy, cid)
        assert version(amy, cid) == seen[0]  # reading is no change
        assert amy.claim(cid).status_code == 200
        connected(client, p)
        assert version(amy, cid) > seen[-2]
        assert amy.reply(cid, "こんにちは").status_code == 202
        wait_for(p.ws, lambda f: f.get("from") == "counsellor", what="the counsellor's message")
        assert version(amy, cid) > seen[-2]
        p.ws.send_json({"type": "message", "text": "はい", "id": "v1"})
        wait_for(p.ws, is_ack("v1"), what="the ack")
        eventually(lambda: version(amy, cid) > seen[-2], "the person's message in the version")
        assert amy.post(f"conversations/{cid}/notes", {"text": "メモ"}).status_code == 201
        assert version(amy, cid) > seen[-2]
        assert amy.post(f"conversations/{cid}/transfer", {"to": "bea"}).status_code == 200
        assert version(bea, cid) > seen[-2]
        r = bea.post(f"conversations/{cid}/close", {"outcome": "listened", "referrals": []})
        assert r.status_code == 200, r.text
        assert version(bea, cid) > seen[-2]
    assert seen == sorted(seen)


def test_every_console_json_route_declares_what_it_answers_in_the_openapi(client: TestClient) -> None:
    """Each route under /api/console that answers JSON names a model (or a list of one) for its success."""
    spec = client.app.openapi()  # type: ignore[attr-defined]
    checked = []
    for path, operations in spec["paths"].items():
        if not path.startswith(API + "/"):
            continue
        for method, op in operations.items():
            ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
            assert ok, (method, path)
            for code, answer in ok.items():
                content = answer.get("content", {})
                if code == "204" or set(content) & {"text/csv", "image/jpeg", "image/png"}:
                    continue  # no body, a CSV export
                if path.endswith("/pictures/{picture_id}"):
                    continue  # a picture, its type chosen per picture
                schema = content["application/json"]["schema"]
                model = schema.get("items", schema)
                assert "$ref" in model, (method, path, schema)
                checked.append((method, path))
    assert len(checked) >= 25, checked
