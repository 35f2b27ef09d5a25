"""Shared test helpers: the labelled tables under tests/data and the shared development set."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

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
