"""The database: one async engine per process, sessions, and migrations applied at start."""

from __future__ import annotations

import asyncio
import fcntl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 0x7473756E61676901  # the advisory lock's key: "tsunagi" and 1, any fixed number of ours
# A connection idle in the pool this long is checked before use (one round trip): a database restarted
# meanwhile costs no request. One in steady use is not (SQLAlchemy's pre-ping would cost three round trips
# on every checkout with asyncpg: BEGIN, a ping, ROLLBACK); if the server went away under it, the error
# invalidates the pool and the worker's retry gets a fresh connection.
IDLE_CHECK = 10.0


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


class Database:
    def __init__(self, url: str, *, pool: int | None = None) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # A failed statement's error (and so its logged traceback) leaves out the values it was given:
        # names, tokens and hashes never reach a log through a database error.
        kwargs: dict[str, Any] = {"hide_parameters": True}
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
        dialect = self.engine.sync_engine.dialect
        event.listen(self.engine.sync_engine.pool, "checkin", _checked_in)
        event.listen(
            self.engine.sync_engine.pool,
            "checkout",
            lambda conn, record, _proxy: _check_if_idle(dialect, conn, record),
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # For one statement alone, or reads that need no snapshot: no BEGIN and COMMIT (two round trips on
        # PostgreSQL) around them. Same pool; the isolation level is set and reset on the client.
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.single_sessions = async_sessionmaker(self._autocommit, expire_on_commit=False)

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic runs on its own engine, in a thread). Instances
        starting at once take turns: the first migrates, the others then find the schema at head."""
        async with self._migration_lock():
            await asyncio.to_thread(command.upgrade, alembic_config(self.url), "head")

    @asynccontextmanager
    async def _migration_lock(self) -> AsyncIterator[None]:
        """PostgreSQL: a session advisory lock, on a connection of its own (released if the process dies).
        SQLite: an exclusive lock on a file beside the database (an in-memory database needs none)."""
        if not self.is_sqlite:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
                try:
                    yield
                finally:
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            return
        path = self.engine.url.database
        if not path or path == ":memory:":
            yield
            return
        lock = await asyncio.to_thread(Path(f"{path}.migrate-lock").open, "a+b")
        with lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as session:
            yield session

    @asynccontextmanager
    async def single(self) -> AsyncIterator[AsyncSession]:
        """A session whose every statement commits on its own (autocommit): for one statement that is
        atomic by itself (a claim ``UPDATE ... RETURNING``, an insert), or reads that need no transaction."""
        async with self.single_sessions() as session:
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection whose every Core statement commits on its own, without an ORM session: for
        the workers' statements on every message's path (a session's own bookkeeping, per statement, cost
        more than a short statement's round trip)."""
        async with self._autocommit.connect() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection in one transaction (committed at the end, rolled back on an error), without
        an ORM session: for Core statements that must go together."""
        async with self.engine.begin() as conn:
            yield conn

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def _checked_in(_conn: Any, record: Any) -> None:
    if record is not None:
        record.info["idle_since"] = time.monotonic()


def _check_if_idle(dialect: Any, conn: Any, record: Any) -> None:
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < IDLE_CHECK:
        return
    try:
        dialect.do_ping(conn)
    except Exception as e:
        raise exc.DisconnectionError() from e  # the pool drops it and connects again


# Statements that belong to the transaction of the work a task is doing: the inbox's "done" for the event
# it is processing rides in the engine's transaction (one commit per message; bot/inbox.py, bot/engine.py).
_riders: ContextVar[list[Any] | None] = ContextVar("tsunagi_riders", default=None)


@contextmanager
def riders(*statements: tuple[Any, dict[str, Any]]) -> Iterator[list[Any]]:
    """``statements`` (each with its parameters) wait here until the next transaction of this task takes
    them (``take_riders``); the list is what is left (empty: they were committed with that transaction)."""
    pending = list(statements)
    token = _riders.set(pending)
    try:
        yield pending
    finally:
        _riders.reset(token)


def take_riders() -> list[Any]:
    """The statements waiting for this task's transaction, taken (give them back if it fails)."""
    pending = _riders.get()
    if not pending:
        return []
    taken = list(pending)
    pending.clear()
    return taken


def give_back(taken: list[Any]) -> None:
    pending = _riders.get()
    if pending is not None:
        pending.extend(taken)


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
