"""What several test modules use, defined once: free ports and real ``tsunagi serve`` processes, bounded
waits, the app inside a TestClient, the web chat's frames, and logged-in console counsellors.

Test modules import from here (and from conftest.py's fixtures), never from one another.
"""

from __future__ import annotations

import http.cookiejar
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from hypothesis import HealthCheck, settings
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.testclient import WebSocketTestSession
from websockets.sync.client import ClientConnection

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


@contextmanager
def server(
    env: dict[str, str],
    port: int,
    *,
    command: Sequence[str] | None = None,
    cwd: Path = ROOT,
    start_timeout: float = 30,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``tsunagi serve`` on ``127.0.0.1:port``, up once /healthz answers 200 (within
    ``start_timeout`` seconds); stopped afterwards, with the end of its log printed. ``command`` runs
    instead of ``.venv/bin/tsunagi`` (its arguments follow)."""
    if command is None:
        command = [str(TSUNAGI)] if TSUNAGI.exists() else [sys.executable, "-m", "bot.cli"]
    cmd = [*command, "serve", "--host", "127.0.0.1", "--port", str(port)]
    log_path = Path(env["TSUNAGI_VAR_DIR"]).parent / f"server-{time.monotonic_ns()}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)
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
                raise AssertionError(f"server did not start (exit {proc.returncode}): {err[-2000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        log.close()
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


def in_app(client: TestClient, work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine in the app's own event loop (where its database engine lives)."""
    assert client.portal is not None, "use the TestClient as a context manager"
    return client.portal.call(work)


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
CRISIS = "もう死にたい。今から飛び降りる"


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


def add_counsellor(env: dict[str, str], username: str, password: str) -> None:
    """A console account made with the CLI, in the database ``env`` names."""
    done = subprocess.run(
        [str(TSUNAGI), "counsellor", "add", username, "--role", "counsellor"],
        input=password + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


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
