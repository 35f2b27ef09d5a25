"""The tests' fixtures: the shared development set, a database per storage test on SQLite and PostgreSQL,
and the browser tests' browser, pages, servers and people. Helpers are in tests/helpers.py and
tests/browser_support.py; nothing imports this module (tests/test_layout.py checks)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

    from tests.browser_support import Person, Server, Watched


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    from tests.helpers import SHARED

    if not (SHARED / "triage" / "dev.jsonl").exists():
        pytest.fail(f"the shared folder is missing: {SHARED} (CI lays it beside the clone)")
    return SHARED


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for a test that drives processes synchronously."""
    from tests.helpers import postgres_database_sync

    with postgres_database_sync() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each storage test runs on both databases, each with a database of its own."""
    from tests.helpers import postgres_database

    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tsunagi.db'}"
    else:
        async with postgres_database() as url:
            yield url


# -- the browser tests' fixtures, defined once (their helpers: tests/browser_support.py) -----------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium through Playwright (never ``playwright install``)."""
    from tests.helpers import chromium

    with chromium() as b:
        yield b


@pytest.fixture
def watched() -> Iterator[Watched]:
    from tests.browser_support import Watched

    w = Watched()
    yield w
    assert w.errors == [], f"problems in the page: {w.errors}"
    assert w.answers == [], f"dialogs that never came: {w.answers}"


@pytest.fixture
def contexts() -> Iterator[list[BrowserContext]]:
    """Browser contexts a test makes (tests/browser_support.py's ``new_context``), closed after it (before
    ``watched`` looks at what its pages did, where a test has both)."""
    made: list[BrowserContext] = []
    yield made
    for ctx in made:
        ctx.close()


@pytest.fixture
def new_page(browser: Browser, watched: Watched, contexts: list[BrowserContext]) -> Callable[..., Page]:
    """Pages, each in a browser context of its own (its own cookie: its own login), 1280x800, watched."""
    from tests.browser_support import OBSERVE, new_context

    def make(*, clipboard: bool = False) -> Page:
        ctx = new_context(browser, contexts, init_script=OBSERVE, viewport={"width": 1280, "height": 800})
        if clipboard:
            ctx.grant_permissions(["clipboard-read", "clipboard-write"])
        return watched.attach(ctx.new_page())

    return make


# -- the console in a browser: a server per test from a template database (accounts made once) ----------


@pytest.fixture(scope="module")
def console_accounts() -> dict[str, tuple[str, str]]:
    """The accounts (name: role, password) the console's servers start with; a module may override it."""
    from tests.browser_support import CONSOLE_ACCOUNTS

    return CONSOLE_ACCOUNTS


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, console_accounts: dict[str, tuple[str, str]]) -> Path:
    """A database with the accounts, made once with the CLI; each test's server starts from a copy."""
    from tests.helpers import add_accounts

    home = tmp_path_factory.mktemp("console-template")
    add_accounts(home, console_accounts)
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
def phone(browser: Browser, watched: Watched, contexts: list[BrowserContext]) -> Callable[[], Page]:
    """The web chat as a person has it: a phone-sized page (390x844), each in a context of its own.
    The quick exit's neutral page is answered here, so that nothing leaves the machine."""
    import re

    from tests.browser_support import new_context

    def make() -> Page:
        ctx = new_context(
            browser, contexts, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
        )
        ctx.route(
            re.compile(r"^https?://(?!127\.0\.0\.1)"),
            lambda route: route.fulfill(body="<title>neutral</title>", content_type="text/html"),
        )
        return watched.attach(ctx.new_page())

    return make
