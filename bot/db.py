"""The database: one async engine per process, sessions, and migrations applied at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


class Database:
    def __init__(self, url: str, *, pool: int | None = None) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if pool is not None and not self.is_sqlite:
            kwargs.update(pool_size=pool, max_overflow=pool)
        if self.is_sqlite:
            # One writer at a time: wait for the lock instead of failing at once.
            kwargs["connect_args"] = {"timeout": 30}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(self.engine.sync_engine, "handle_error", _unusable_connection)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic runs on its own engine, in a thread)."""
        await asyncio.to_thread(command.upgrade, alembic_config(self.url), "head")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def _unusable_connection(context: ExceptionContext) -> None:
    """A PostgreSQL connection cut in the middle of an operation (the server terminated it, or its task
    was cancelled in a query) can be left by asyncpg half-open: every later use fails with "cannot switch
    to state ...; another operation is in progress", and SQLAlchemy, which counts only a closed connection
    as lost, would hand it out again and again (its pre-ping included). Counted as a disconnect, it is
    thrown away and the pool connects anew."""
    error = context.original_exception
    if type(error).__name__ == "InternalClientError" and "another operation" in str(error):
        context.is_disconnect = True


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
