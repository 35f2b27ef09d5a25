"""What several test modules use, defined once: the labelled tables, settings and fresh databases, the
faked platforms' settings, free ports and real ``tsunagi serve`` processes with their accounts, bounded
waits, the app inside a TestClient, the web chat's frames, and logged-in console counsellors.

Test modules import from here (and use conftest.py's fixtures), never from one another nor from conftest.py
(tests/test_layout.py checks).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.cookiejar
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from hypothesis import HealthCheck, settings
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from starlette.testclient import WebSocketTestSession
from websockets.sync.client import ClientConnection

from bot import logs
from bot.config import Settings
from bot.models import Role
from bot.service import Service
from bot.storage.credentials import create_counsellor
from handoff.console.auth import COOKIE, CSRF_HEADER

if TYPE_CHECKING:
    from playwright.sync_api import Browser

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
TSUNAGI = ROOT / ".venv" / "bin" / "tsunagi"
WAIT = 15.0  # seconds any condition gets to become true before the test fails
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared"  # the shared development set, laid beside the clone (CI does so)
CRISIS = "もう死にたい。今から飛び降りる"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- services: real PostgreSQL and Redis (see docs/contract.md) ---------------------------------

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_DATABASE_URL = os.environ.get(
    "TSUNAGI_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def unavailable(what: str, error: BaseException) -> None:
    """A missing server fails under CI (never a silent skip) and skips on a developer's machine."""
    message = f"{what} is not reachable ({error.__class__.__name__}: {error})"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message + "; set CI=true to make this a failure")


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(TEST_DATABASE_URL)
    name = f"tsunagi_t_{uuid.uuid4().hex[:12]}"
    dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as e:
        unavailable(f"PostgreSQL at {base.host}:{base.port}", e)
        raise
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextmanager
def postgres_database_sync() -> Iterator[str]:
    """``postgres_database`` for a test that drives server processes synchronously."""
    loop = asyncio.new_event_loop()
    made = postgres_database()
    try:
        yield loop.run_until_complete(made.__aenter__())
    finally:
        loop.run_until_complete(made.__aexit__(None, None, None))
        loop.close()


def make_settings(tmp_path: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings for an app in ``tmp_path``: its own SQLite database (or ``database_url``) and keys, open
    every hour, the loopback channel on, no SMTP listener, Redis only when a test asks."""
    from cryptography.fernet import Fernet

    values: dict[str, Any] = {
        "var_dir": tmp_path / "var",
        "database_url": database_url or f"sqlite+aiosqlite:///{tmp_path / 'tsunagi.db'}",
        "data_key": Fernet.generate_key().decode(),
        "secret_key": "test-secret",
        "hours": "mon-sun 00:00-24:00",
        "smtp_listen": "",
        "loopback_channel": True,
        "redis_url": "",  # in-process unless a test asks for Redis (never from the environment)
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# -- the platforms, faked: LINE and Telegram switched on with their APIs nowhere -------------------------

NOWHERE = "http://127.0.0.1:9"  # a closed port on loopback: platform calls fail at once, never the internet
LINE_SECRET = "line-channel-secret-for-tests"
TELEGRAM_SECRET = "telegram-secret-token"
PLATFORMS: dict[str, str] = {
    "line_channel_secret": LINE_SECRET,
    "line_channel_access_token": "line-token",
    "line_api_base": NOWHERE,
    "telegram_bot_token": "123456:telegram-token",
    "telegram_secret_token": TELEGRAM_SECRET,
    "telegram_api_base": NOWHERE,
}


def as_env(settings: dict[str, str]) -> dict[str, str]:
    """Settings as the environment of a ``tsunagi`` process gives them (``TSUNAGI_`` and upper case)."""
    return {f"TSUNAGI_{name.upper()}": value for name, value in settings.items()}


def line_signature(body: bytes, secret: str = LINE_SECRET) -> str:
    """The ``X-Line-Signature`` LINE puts on a webhook's body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# -- the browser -----------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium through Playwright (never `playwright install`); missing, the test fails."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; make test does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# -- ports and processes -----------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``tsunagi`` run in ``home``: its own database and keys, no SMTP listener,
    nothing of the caller's TSUNAGI_ settings; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUNAGI_")}
    env.update(
        TSUNAGI_VAR_DIR=str(home / "var"),
        TSUNAGI_DATABASE_URL=f"sqlite+aiosqlite:///{home / 't.db'}",
        TSUNAGI_SMTP_LISTEN="",
    )
    env.update(extra)
    return env


def add_accounts(
    home: Path,
    accounts: dict[str, tuple[str, str]],
    display_names: dict[str, str] | None = None,
    *,
    env: dict[str, str] | None = None,
) -> None:
    """Accounts (name: role, password) made with the CLI in ``home`` (with ``env``, by default
    ``env_for(home)``), as an operator would, with the display names given (name: display name)."""
    for username, (role, password) in accounts.items():
        shown = (display_names or {}).get(username)
        done = subprocess.run(
            [str(TSUNAGI), "counsellor", "add", username, "--role", role]
            + (["--display-name", shown] if shown else []),
            input=password + "\n",
            capture_output=True,
            text=True,
            cwd=home,
            env=env_for(home) if env is None else env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


@contextmanager
def server(
    env: dict[str, str],
    port: int,
    *,
    command: Sequence[str] | None = None,
    cwd: Path = ROOT,
    start_timeout: float = 30,
    log_path: Path | None = None,
    stdout_path: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``tsunagi serve`` on ``127.0.0.1:port``, up once /healthz answers 200 (within
    ``start_timeout`` seconds); stopped afterwards, with the end of its log (its stdout and stderr, in
    ``log_path`` if given; its stdout apart in ``stdout_path`` if given) printed. ``command`` runs
    instead of ``.venv/bin/tsunagi`` (its arguments follow)."""
    if command is None:
        command = [str(TSUNAGI)] if TSUNAGI.exists() else [sys.executable, "-m", "bot.cli"]
    cmd = [*command, "serve", "--host", "127.0.0.1", "--port", str(port)]
    if log_path is None:
        log_path = Path(env["TSUNAGI_VAR_DIR"]).parent / f"server-{time.monotonic_ns()}.log"
    log = log_path.open("wb")
    out = stdout_path.open("wb") if stdout_path is not None else None
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=out or log, stderr=log if out else subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = log_path.read_text(errors="replace")
                raise AssertionError(f"server did not start (exit {proc.returncode}): {err[-3000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        if out is not None:
            out.close()
        print(f"--- server log ({log_path.name}) ---\n" + log_path.read_text(errors="replace")[-4000:])


def frames(ws: ClientConnection, until: Any, limit: int = 20) -> list[dict[str, Any]]:
    """Read frames from a real WebSocket until one satisfies ``until`` (inclusive)."""
    out = []
    for _ in range(limit):
        frame = json.loads(ws.recv(timeout=10))
        out.append(frame)
        if until(frame):
            return out
    raise AssertionError(f"no matching frame in {out}")


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Until ``check()`` is true; the test fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def repeatable(examples: int, *suppress: HealthCheck) -> settings:
    """Hypothesis settings for the same examples on every run (derandomized, no example database), so that
    a failure seen once is seen again; no deadline (the first call builds the triage engine)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, *suppress],
    )


# -- the app in a TestClient -------------------------------------------------------------------------------


def service(client: TestClient) -> Service:
    svc = client.app.state.service  # type: ignore[attr-defined]
    assert isinstance(svc, Service)
    return svc


@contextmanager
def from_address(client: TestClient, host: str) -> Iterator[TestClient]:
    """Requests from another client address, into the same running app (its portal, no second start)."""
    other = TestClient(client.app, client=(host, 40000))
    other.portal = client.portal
    try:
        yield other
    finally:
        other.close()


def in_app(client: TestClient, work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in the app's own event loop (where its database engine lives)."""
    assert client.portal is not None, "use the TestClient as a context manager"
    return client.portal.call(work)


async def rows_of(svc: Service, model: Any, *where: Any) -> list[Any]:
    """Every row of the table ``model`` (that meets ``where``), in the order of their ids."""
    async with svc.db.session() as s:
        return list((await s.scalars(select(model).where(*where).order_by(col(model.id)))).all())


def table_rows(client: TestClient, model: Any, *where: Any) -> list[Any]:
    """``rows_of`` the app's service, in the app's event loop."""
    return in_app(client, lambda: rows_of(service(client), model, *where))


def db(client: TestClient, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one committed transaction of the app's database."""
    svc = service(client)

    async def go() -> T:
        async with svc.db.session() as s, s.begin():
            return await work(s)

    return in_app(client, go)


# -- the web chat's frames, through the TestClient ---------------------------------------------------------
#
# Frames interleave: an ``ack`` may come before or after the bot's reply, and ``status`` frames come from a
# background watcher. So frames are read with a bounded wait (``recv``) until the one wanted (``wait_for``).

Frame = dict[str, Any]
RECV_TIMEOUT = 5.0  # seconds to wait for one frame before the test fails (never hangs)
QUIET = 0.5  # seconds of silence taken to mean "nothing more is coming"


def recv(ws: WebSocketTestSession, timeout: float = RECV_TIMEOUT) -> Frame:
    """One JSON frame, or TimeoutError after ``timeout`` seconds; WebSocketDisconnect when the server
    closed. (``receive_json`` itself would block forever, so this reads the session's stream with a
    deadline.)"""

    async def get() -> Any:
        with anyio.fail_after(timeout):
            return await ws._send_rx.receive()

    try:
        message = ws.portal.call(get)
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        pytest.fail("the connection ended without a close frame: the server's handler failed")
    ws._raise_on_close(message)
    frame = json.loads(message["text"])
    assert isinstance(frame, dict), frame
    return frame


def wait_for(
    ws: WebSocketTestSession, pred: Callable[[Frame], bool], *, limit: int = 25, what: str = "a frame"
) -> tuple[Frame, list[Frame]]:
    """Read frames until one matches ``pred`` (at most ``limit`` frames): that frame and all read."""
    seen: list[Frame] = []
    for _ in range(limit):
        try:
            frame = recv(ws)
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}; frames so far: {seen}")
        seen.append(frame)
        if pred(frame):
            return frame, seen
    pytest.fail(f"no {what} in {limit} frames: {seen}")


def drain(ws: WebSocketTestSession, seconds: float = QUIET) -> list[Frame]:
    """Every frame that arrives until the socket has been silent for ``seconds``."""
    out: list[Frame] = []
    for _ in range(100):
        try:
            out.append(recv(ws, seconds))
        except TimeoutError:
            return out
    pytest.fail(f"the server never went quiet: {out[-5:]}")


def is_bot(frame: Frame) -> bool:
    return frame.get("type") == "message" and frame.get("from") == "bot"


def is_ack(msg_id: str) -> Callable[[Frame], bool]:
    return lambda f: f.get("type") == "ack" and f.get("id") == msg_id


def is_status(f: Frame) -> bool:
    return f.get("type") == "status"


def hello(ws: WebSocketTestSession, resume: Any = None) -> tuple[str, list[Frame]]:
    """Send hello; return the session token and the frames up to the first status frame (on resume,
    the replayed history comes before it)."""
    ws.send_json({"type": "hello", "resume": resume})
    first = recv(ws)
    assert first.get("type") == "session", f"the first frame after hello must be the session: {first}"
    token = first.get("token")
    assert isinstance(token, str) and len(token) >= 20, first
    _, seen = wait_for(ws, is_status, what="the first status frame")
    return token, seen


def start_fresh(ws: WebSocketTestSession, resume: Any = None) -> tuple[str, list[Frame]]:
    """Hello for a new session: the token and every frame up to and including the welcome."""
    token, seen = hello(ws, resume)
    if not any(is_bot(f) for f in seen):
        _, more = wait_for(ws, is_bot, what="the welcome")
        seen += more
    return token, seen


# -- a console over real HTTP (a ``tsunagi serve`` process) ------------------------------------------------


class Console:
    """A counsellor's browser, in HTTP: a cookie jar and the CSRF token."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        status, body = self.call("POST", "/api/console/login", {"username": username, "password": password})
        assert status == 200, body
        self.csrf = body["csrf_token"]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if getattr(self, "csrf", None):
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


# -- console counsellors -----------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"
API = "/api/console"


def add_account(
    client: TestClient, username: str, role: Role = Role.COUNSELLOR, password: str = PASSWORD
) -> int:
    async def work(s: AsyncSession) -> int:
        c = await create_counsellor(s, username, password, role)
        assert c.id is not None
        return c.id

    return db(client, work)


@dataclass
class Session:
    """One logged-in counsellor: requests carry their cookie and, on unsafe methods, their CSRF token."""

    client: TestClient
    username: str
    token: str
    csrf: str

    def request(
        self, method: str, path: str, *, json: Any = None, csrf: str | None = "own", **kw: Any
    ) -> Response:
        headers = {"Cookie": f"{COOKIE}={self.token}"}
        if csrf is not None:
            headers[CSRF_HEADER] = self.csrf if csrf == "own" else csrf
        return self.client.request(
            method, path if path.startswith("/") else f"{API}/{path}", json=json, headers=headers, **kw
        )

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, json=json, **kw)

    def claim(self, cid: str) -> Response:
        return self.post(f"conversations/{cid}/claim")

    def reply(self, cid: str, text: str) -> Response:
        return self.post(f"conversations/{cid}/messages", {"text": text})

    def read(self, cid: str) -> Response:
        return self.get(f"conversations/{cid}")

    def held(self) -> list[str]:
        me = self.get("me")
        assert me.status_code == 200, me.text
        held = me.json()["held"]
        assert isinstance(held, list)
        return held


def try_login(client: TestClient, username: str, password: str) -> Response:
    response = client.post(f"{API}/login", json={"username": username, "password": password})
    client.cookies.clear()  # every request names its counsellor itself
    return response


def login(client: TestClient, username: str, password: str = PASSWORD) -> Session:
    response = try_login(client, username, password)
    assert response.status_code == 200, response.text
    token = response.cookies.get(COOKIE)
    assert token, response.headers
    return Session(client, username, token, response.json()["csrf_token"])


def account(client: TestClient, username: str, role: Role = Role.COUNSELLOR) -> Session:
    add_account(client, username, role)
    return login(client, username)


# -- a LINE webhook, in short (tests/test_line.py builds every kind of event in full) -----------------------


def line_text_body(user: str, text: str) -> bytes:
    """A LINE webhook body with one text message from ``user``, without a reply token (answered by push)."""
    event = {
        "type": "message",
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": user},
        "webhookEventId": uuid.uuid4().hex.upper()[:26],
        "deliveryContext": {"isRedelivery": False},
        "message": {"type": "text", "id": str(uuid.uuid4().int)[:18], "text": text},
    }
    return json.dumps({"destination": "U" + "0" * 32, "events": [event]}, ensure_ascii=False).encode()


def post_line(client: TestClient, raw: bytes, secret: str) -> Response:
    """POST a LINE webhook body signed with the channel secret."""
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).digest()
    headers = {"Content-Type": "application/json", "X-Line-Signature": base64.b64encode(digest).decode()}
    return client.post("/webhooks/line", content=raw, headers=headers)


# -- the service's log lines -----------------------------------------------------------------------------


@contextmanager
def service_logs(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """What every logger writes, as the service writes it (JSON lines, bot/logs.py; libraries quietened as
    it quietens them), from ``level`` up, while the block runs."""
    out = io.StringIO()
    handler = logs.handler("json", out)
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in logs.QUIET}
    root.addHandler(handler)
    root.setLevel(level)
    logs.quiet_libraries()
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, was in saved[1].items():
            logging.getLogger(name).setLevel(was)
