"""What the browser tests share (their fixtures are in conftest.py): Debian's Chromium and its options,
``tsunagi serve`` in a subprocess, the person on the other side of the web chat, a page's watchdog, and
axe-core. Test modules import from here and from tests/helpers.py, never from one another.
"""

from __future__ import annotations

import asyncio
import json
import re
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
from playwright.sync_api import (
    Browser,
    BrowserContext,
    CDPSession,
    ConsoleMessage,
    Dialog,
    Error,
    Locator,
    Page,
    Request,
    expect,
)
from websockets.sync.client import ClientConnection

from bot.config import Settings
from tests.helpers import CRISIS, TSUNAGI, env_for, free_port, server

T = TypeVar("T")

WAIT_MS = 8_000  # the longest any single wait in a page may take
WAIT_S = WAIT_MS / 1000

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


def serve(home: Path, *, quick_exit_to_health: bool = False, **extra: str) -> Iterator[Server]:
    """``tsunagi serve`` in ``home`` on a free loopback port, until the generator is closed (a fixture's
    ``yield from``), with ``extra`` in its environment. With ``quick_exit_to_health``, the quick exit leads
    to its own /healthz."""
    if not TSUNAGI.exists():
        pytest.fail(f"{TSUNAGI} is missing: install the project into .venv first (make test does)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exit_url = f"{base}/healthz" if quick_exit_to_health else ""
    env = env_for(home, **({"TSUNAGI_QUICK_EXIT_URL": exit_url} if exit_url else {}), **extra)
    log = home / "server.log"
    with server(env, port, cwd=home, log_path=log):  # cwd: no stray .env from the working directory
        yield Server(base=base, log=log, exit_url=exit_url)


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


def new_context(
    browser: Browser,
    contexts: list[BrowserContext],
    *,
    init_script: str = "",
    timeout_ms: float = WAIT_MS,
    **options: Any,
) -> BrowserContext:
    """A browser context in Japanese (``options`` as Playwright's ``new_context`` takes them), every wait
    in it bounded by ``timeout_ms``, ``init_script`` run before each page's own; kept in ``contexts``,
    which the ``contexts`` fixture closes."""
    ctx = browser.new_context(locale="ja-JP", **options)
    ctx.set_default_timeout(timeout_ms)
    if init_script:
        ctx.add_init_script(init_script)
    contexts.append(ctx)
    return ctx


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
ADMINS = {  # only where a test module's ``console_accounts`` adds them (the accounts' own tests)
    "mori": ("admin", "mori-password-1234"),
    "ren": ("admin", "ren-password-12345"),
}


def password_of(username: str) -> str:
    return (CONSOLE_ACCOUNTS | ADMINS)[username][1]


def fill_login(page: Page, username: str, password: str | None = None) -> None:
    """The console's login form, filled in and sent (the page shows it)."""
    page.get_by_label("ユーザー名", exact=True).fill(username)
    page.get_by_label("パスワード", exact=True).fill(password or password_of(username))
    page.get_by_role("button", name="ログイン").click()


def submit_login(page: Page, server: Server, username: str, password: str) -> None:
    page.goto(f"{server.base}/console")
    expect(page.locator("#view-login")).to_be_visible()
    fill_login(page, username, password)


def log_in(page: Page, server: Server, username: str, password: str | None = None) -> None:
    submit_login(page, server, username, password or password_of(username))
    expect(page.locator("#view-app")).to_be_visible()
    expect(page.locator("#who")).to_contain_text(username)
    expect(page.locator("#live-status")).to_have_text("リアルタイム更新：接続中")


def lines(page: Page, who: str) -> Locator:
    return page.locator(f"#transcript li.from-{who}")


def unnamed_controls(page: Page, scope: str = "") -> list[str]:
    """The visible form controls (inside ``scope``, a CSS selector) that have no accessible name."""
    return list(
        page.evaluate(
            """(scope) => [...document.querySelectorAll(
                    ['input', 'select', 'textarea', 'button'].map((t) => `${scope} ${t}`.trim()).join(', '))]
                .filter((e) => e.offsetParent !== null)
                .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                               && !(e.textContent || '').trim())
                .map((e) => e.id || e.outerHTML.slice(0, 60))""",
            scope,
        )
    )


def compose_with_ime(page: Page, box: Locator, text: str) -> CDPSession:
    """``text`` in ``box`` as a Japanese IME's composition, not yet confirmed: a real composition through
    the DevTools protocol (Input.imeSetComposition), which headless Chromium supports, so that the keydown
    for Enter that follows carries ``isComposing: true``. The DevTools session goes on (Input.insertText
    commits); the caller detaches it."""
    box.focus()
    cdp = page.context.new_cdp_session(page)
    end = len(text)
    cdp.send("Input.imeSetComposition", {"text": text, "selectionStart": end, "selectionEnd": end})
    expect(box).to_have_value(re.compile(text))
    return cdp


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class Api:
    """The console API from Python, for setting a scene: one logged-in session (its cookie and CSRF token
    as a page has them); ``login`` is what logging in answered."""

    def __init__(self, server: Server, username: str, password: str | None = None) -> None:
        self.base = f"{server.base}/api/console"
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        self.csrf = ""
        self.login = self.call(
            "POST", "/login", {"username": username, "password": password or password_of(username)}
        )
        self.csrf = self.login["csrf_token"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.csrf:
            req.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(req, timeout=WAIT_S) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else None

    def status(self, method: str, path: str, body: Any = None) -> int:
        try:
            self.call(method, path, body)
        except ApiError as e:
            return e.status
        return 200

    def waiting(self) -> list[str]:
        return [x["conversation_id"] for x in self.call("GET", "/queue")]


def login_status(server: Server, username: str, password: str) -> int:
    try:
        Api(server, username, password)
    except ApiError as e:
        return e.status
    return 200


def chat_in_crisis(page: Page, server: Server) -> None:
    page.goto(f"{server.base}/chat")
    bot = page.locator("#log li.from-bot")
    expect(bot.first).to_contain_text("相談窓口「つなぎ」")
    page.locator("#choices").get_by_role("button", name="同意して話す").click()
    expect(bot.last).to_contain_text("どんなことでも大丈夫です")
    page.locator("#input").fill(CRISIS)
    page.locator("#input").press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile(r"相談員を待っています"))
