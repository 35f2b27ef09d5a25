"""What the browser tests share (their fixtures are in conftest.py): Debian's Chromium and its options,
``tsunagi serve`` in a subprocess, the person on the other side of the web chat, a page's watchdog, and
axe-core. Test modules import from here and from tests/helpers.py, never from one another.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import ConsoleMessage, Dialog, Error, Locator, Page, Request, expect
from websockets.sync.client import ClientConnection

from bot.config import Settings
from tests.helpers import TSUNAGI, free_port

T = TypeVar("T")

WAIT_MS = 8_000  # the longest any single wait in a page may take
WAIT_S = WAIT_MS / 1000
CRISIS = "もう死にたい。今から飛び降りる"

# Stand-ins installed before the console's own script: a Notification that records what it is asked
# (and when permission is requested), and a count of the oscillators the alarm sound starts.
OBSERVE = """
(() => {
  window.__notifications = [];
  window.__permissionRequests = 0;
  let permission = "default";
  class RecordingNotification {
    constructor(title, options) { window.__notifications.push({ title, body: options && options.body }); }
    close() {}
    static get permission() { return permission; }
    static requestPermission() {
      window.__permissionRequests += 1;
      permission = "granted";
      return Promise.resolve(permission);
    }
  }
  window.Notification = RecordingNotification;
  window.__oscillators = 0;
  const create = AudioContext.prototype.createOscillator;
  AudioContext.prototype.createOscillator = function () {
    window.__oscillators += 1;
    return create.call(this);
  };
})();
"""


# -- servers ----------------------------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    log: Path
    exit_url: str = ""

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``tsunagi`` run in ``home``: its own database and keys, no SMTP listener,
    nothing of the caller's TSUNAGI_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUNAGI_")}
    env.update(
        TSUNAGI_VAR_DIR=str(home / "var"),
        TSUNAGI_DATABASE_URL=f"sqlite+aiosqlite:///{home / 't.db'}",
        TSUNAGI_SMTP_LISTEN="",
        **extra,
    )
    return env


def serve(home: Path, *, quick_exit_to_health: bool = False) -> Iterator[Server]:
    """``tsunagi serve`` in ``home`` on a free loopback port, until the generator is closed (a fixture's
    ``yield from``). With ``quick_exit_to_health``, the quick exit leads to its own /healthz."""
    if not TSUNAGI.exists():
        pytest.fail(f"{TSUNAGI} is missing: install the project into .venv first (make test does)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exit_url = f"{base}/healthz" if quick_exit_to_health else ""
    env = env_for(home, **({"TSUNAGI_QUICK_EXIT_URL": exit_url} if exit_url else {}))
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(TSUNAGI), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,  # no stray .env from the working directory
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not healthy(f"{base}/healthz"):
            if proc.poll() is not None:
                pytest.fail(f"tsunagi serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"tsunagi serve did not become healthy in 30 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield Server(base=base, log=log, exit_url=exit_url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def add_accounts(
    home: Path, accounts: dict[str, tuple[str, str]], display_names: dict[str, str] | None = None
) -> None:
    """Accounts (name: role, password) made with the CLI, as an operator would, with the display names
    given (name: display name)."""
    for username, (role, password) in accounts.items():
        shown = (display_names or {}).get(username)
        done = subprocess.run(
            [str(TSUNAGI), "counsellor", "add", username, "--role", role]
            + (["--display-name", shown] if shown else []),
            input=password + "\n",
            capture_output=True,
            text=True,
            cwd=home,
            env=env_for(home),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


def settings_for(home: Path) -> Settings:
    """What ``tsunagi serve`` in ``home`` reads (same database, same keys under var/), plus the loopback
    channel through which a scene is played."""
    env = env_for(home)
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        var_dir=Path(env["TSUNAGI_VAR_DIR"]),
        database_url=env["TSUNAGI_DATABASE_URL"],
        smtp_listen="",
        loopback_channel=True,
        redis_url="",
    )


def in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """An asyncio coroutine run to its end on a thread of its own (Playwright's sync API owns this one's
    event loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# -- pages ------------------------------------------------------------------------------------------------


@dataclass
class Watched:
    """What a page did that a test must not allow: script errors, CSP violations, any unsafe request to the
    console API without the CSRF header, and a dialog, unless the test said how to answer it (``answers``:
    True accepts a confirm, False dismisses it)."""

    errors: list[str] = field(default_factory=list)
    answers: list[bool] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        def on_error(error: Error) -> None:
            self.errors.append(f"pageerror: {error}")

        def on_dialog(dialog: Dialog) -> None:
            self.dialogs.append(dialog.message)
            if dialog.type != "confirm" or not self.answers:
                self.errors.append(f"dialog ({dialog.type}): {dialog.message}")
                dialog.dismiss()
            elif self.answers.pop(0):
                dialog.accept()
            else:
                dialog.dismiss()

        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                self.errors.append(f"console: {message.text}")

        def check(request: Request) -> None:
            unsafe = request.method not in ("GET", "HEAD")
            if unsafe and "/api/console/" in request.url and not request.url.endswith("/login"):
                if not request.headers.get("x-csrf-token"):
                    self.errors.append(f"no X-CSRF-Token on {request.method} {request.url}")

        page.on("pageerror", on_error)
        page.on("dialog", on_dialog)
        page.on("console", on_console)
        page.on("request", check)
        return page


def fetch_status(page: Page, path: str) -> int:
    return int(page.evaluate("async (p) => (await fetch(p)).status", path))


def queue_items(page: Page) -> Locator:
    return page.locator("#queue-list > li")


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.x A and AA rules)."""
    from axe_playwright_python.sync_playwright import Axe

    options = {"resultTypes": ["violations"], "runOnly": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}
    results = Axe().run(page, options=options)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


# -- the person on the other side: the web chat's WebSocket ------------------------------------------


class Person:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.n = 0
        self.ws.send(json.dumps({"type": "hello", "resume": None}))
        self.wait(lambda f: f["type"] == "status")

    def wait(self, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame, received before or within the wait, that satisfies ``until``."""
        for old in self.frames:
            if until(old):
                return old
        deadline = time.monotonic() + WAIT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching frame; got {self.frames}")
            try:
                frame: dict[str, Any] = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                continue
            self.frames.append(frame)
            if until(frame):
                return frame

    def say(self, text: str) -> None:
        self.n += 1
        mid = f"m-{self.n}"
        self.ws.send(json.dumps({"type": "message", "text": text, "id": mid}))
        self.wait(lambda f: f["type"] == "ack" and f["id"] == mid)

    def in_crisis(self, text: str = CRISIS) -> None:
        """Consent, then a crisis: the conversation waits for a counsellor."""
        self.say("同意")
        self.wait(lambda f: f["type"] == "message" and "どんなことでも" in f["text"])
        self.say(text)
        self.wait(lambda f: f["type"] == "status" and f["state"] == "waiting")

    def got(self, who: str, text: str) -> dict[str, Any]:
        return self.wait(lambda f: f["type"] == "message" and f["from"] == who and text in f["text"])


# -- the console in a browser: its accounts, logging in, the API for setting a scene --------------------

CONSOLE_ACCOUNTS = {
    "kana": ("counsellor", "kana-password-1234"),
    "yui": ("counsellor", "yui-password-12345"),
    "sato": ("supervisor", "sato-password-1234"),
}


def log_in(page: Page, server: Server, username: str, password: str | None = None) -> None:
    page.goto(f"{server.base}/console")
    expect(page.locator("#view-login")).to_be_visible()
    page.get_by_label("ユーザー名", exact=True).fill(username)
    page.get_by_label("パスワード", exact=True).fill(password or CONSOLE_ACCOUNTS[username][1])
    page.get_by_role("button", name="ログイン").click()
    expect(page.locator("#view-app")).to_be_visible()
    expect(page.locator("#who")).to_contain_text(username)
    expect(page.locator("#live-status")).to_have_text("リアルタイム更新：接続中")


def lines(page: Page, who: str) -> Locator:
    return page.locator(f"#transcript li.from-{who}")


class Api:
    """The console API from Python, for setting a scene (cookie and CSRF token as a page has them)."""

    def __init__(self, server: Server, username: str) -> None:
        self.base = f"{server.base}/api/console"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.csrf = ""
        self.csrf = self.call(
            "POST", "/login", {"username": username, "password": CONSOLE_ACCOUNTS[username][1]}
        )["csrf_token"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.csrf:
            req.add_header("X-CSRF-Token", self.csrf)
        with self.opener.open(req, timeout=WAIT_S) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def waiting(self) -> list[str]:
        return [x["conversation_id"] for x in self.call("GET", "/queue")]


def chat_in_crisis(page: Page, server: Server) -> None:
    page.goto(f"{server.base}/chat")
    bot = page.locator("#log li.from-bot")
    expect(bot.first).to_contain_text("相談窓口「つなぎ」")
    page.locator("#choices").get_by_role("button", name="同意して話す").click()
    expect(bot.last).to_contain_text("どんなことでも大丈夫です")
    page.locator("#input").fill(CRISIS)
    page.locator("#input").press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile(r"相談員を待っています"))
