"""Shared test helpers: the labelled tables under tests/data and the shared development set; the
databases; the browser tests' fixtures."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

    from tests.browser_support import Person, Server, Watched

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared"


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "triage" / "dev.jsonl").exists():
        pytest.fail(f"the shared folder is missing: {SHARED} (CI lays it beside the clone)")
    return SHARED


# -- services: real PostgreSQL and Redis (see docs/contract.md) ---------------------------------

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_DATABASE_URL = os.environ.get(
    "TSUNAGI_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _unavailable(what: str, error: BaseException) -> None:
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
        _unavailable(f"PostgreSQL at {base.host}:{base.port}", e)
        raise
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for a test that drives processes synchronously (the helper is async)."""
    import asyncio

    loop = asyncio.new_event_loop()
    cm = postgres_database()
    try:
        yield loop.run_until_complete(cm.__aenter__())
    finally:
        loop.run_until_complete(cm.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each storage test runs on both databases, each with a database of its own."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tsunagi.db'}"
    else:
        async with postgres_database() as url:
            yield url


def make_settings(tmp_path: Path, database_url: str | None = None, **overrides: Any) -> Any:
    from cryptography.fernet import Fernet

    from bot.config import Settings

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


# -- the browser tests' fixtures, defined once (their helpers: tests/browser_support.py) -----------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium through Playwright (never ``playwright install``)."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; never `playwright install`)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def watched() -> Iterator[Watched]:
    from tests.browser_support import Watched

    w = Watched()
    yield w
    assert w.errors == [], f"problems in the page: {w.errors}"
    assert w.answers == [], f"dialogs that never came: {w.answers}"


@pytest.fixture
def new_page(browser: Browser, watched: Watched) -> Iterator[Callable[..., Page]]:
    """Pages, each in a browser context of its own (its own cookie: its own login), 1280x800, watched."""
    from tests.browser_support import OBSERVE, WAIT_MS

    contexts: list[BrowserContext] = []

    def make(*, clipboard: bool = False) -> Page:
        ctx = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 800})
        ctx.set_default_timeout(WAIT_MS)
        ctx.add_init_script(OBSERVE)
        if clipboard:
            ctx.grant_permissions(["clipboard-read", "clipboard-write"])
        contexts.append(ctx)
        return watched.attach(ctx.new_page())

    yield make
    for ctx in contexts:
        ctx.close()


# -- the console in a browser: a server per test from a template database (accounts made once) ----------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with the accounts, made once with the CLI; each test's server starts from a copy."""
    home = tmp_path_factory.mktemp("console-template")
    from tests.browser_support import CONSOLE_ACCOUNTS, add_accounts

    add_accounts(home, CONSOLE_ACCOUNTS)
    return home


@pytest.fixture
def server(template: Path, tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "server"
    shutil.copytree(template, home)
    from tests.browser_support import serve

    yield from serve(home)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """No accounts at all: the first start makes 'admin' with a one-time password on stdout."""
    home = tmp_path / "fresh"
    home.mkdir()
    from tests.browser_support import serve

    yield from serve(home)


@pytest.fixture
def people(server: Server) -> Iterator[Callable[[], Person]]:
    from contextlib import ExitStack

    from websockets.sync.client import connect

    from tests.browser_support import WAIT_S, Person

    with ExitStack() as stack:

        def make() -> Person:
            return Person(stack.enter_context(connect(f"{server.ws}/chat/ws", open_timeout=WAIT_S)))

        yield make


@pytest.fixture
def phone(browser: Browser, watched: Watched) -> Iterator[Callable[[], Page]]:
    """The web chat as a person has it: a phone-sized page (390x844), each in a context of its own.
    The quick exit's neutral page is answered here, so that nothing leaves the machine."""
    import re

    from tests.browser_support import WAIT_MS

    contexts: list[BrowserContext] = []

    def make() -> Page:
        ctx = browser.new_context(
            locale="ja-JP", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
        )
        ctx.set_default_timeout(WAIT_MS)
        ctx.route(
            re.compile(r"^https?://(?!127\.0\.0\.1)"),
            lambda route: route.fulfill(body="<title>neutral</title>", content_type="text/html"),
        )
        contexts.append(ctx)
        return watched.attach(ctx.new_page())

    yield make
    for ctx in contexts:
        ctx.close()
