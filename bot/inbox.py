"""The inbox: platform events are stored the moment a webhook arrives (so the webhook can answer at
once, and a redelivery is stored once), then handed to their channel by this worker.

**Crisis first.** Each event is triaged at intake (its text alone: the triage is pure and takes well under
a millisecond) and stored with its priority (crisis, high, the rest); the worker takes the most urgent
first. **One person's events in order.** Each row names whose event it is (``sender``, a keyed hash), and a
row is taken only when no earlier row of the same person is still waiting or being processed. So that a
crisis does not wait behind its own person's earlier events, an urgent event raises the priority of that
person's earlier waiting events to its own.

**Claiming.** Several tasks (and several processes: ``tsunagi worker``) take rows at once. A row is claimed
by one statement, ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``: on PostgreSQL
the rows another worker is claiming are skipped, not waited for; on SQLite (one writer at a time, and no
row locks) the same statement is atomic. The claim is a lease: a row left by a crashed process becomes due
again when its lease runs out (the engine's idempotent ingest keeps that from answering twice)."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Row, bindparam, exists, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from bot.crypto import Crypto
from bot.db import Database, riders
from bot.metrics import Metrics
from bot.models import Inbox, InboxStatus, Priority, utcnow
from bot.outbox import backoff, fan_out, wait_any
from triage import get_engine


class EventHandler(Protocol):
    """What the worker needs of a channel to handle its stored events (channels/base.py's ``Channel`` is
    one): the engine's layer names no channel."""

    async def process(self, payload: str) -> None: ...

    def describe(self, payload: str) -> str: ...

    def peek(self, payload: str) -> tuple[str, str] | None: ...


log = logging.getLogger("tsunagi.inbox")

LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 5
UNFINISHED = (InboxStatus.PENDING, InboxStatus.PROCESSING)


class InboxWorker:
    def __init__(
        self,
        *,
        db: Database,
        crypto: Crypto,
        channels: Mapping[str, EventHandler],
        wakeup: asyncio.Event,
        concurrency: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics or Metrics()
        self.crypto = crypto
        self.channels = channels
        self.wakeup = wakeup
        self.concurrency = max(1, concurrency)
        # Intake's events are written by one writer at a time, in batches (``_insert_queued``): the
        # webhooks that arrive while it writes go together in its next insert, and a flood of them takes
        # one database connection, never the workers'.
        self._queued: list[tuple[list[dict[str, Any]], list[tuple[str, int]], asyncio.Future[int]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._triage = get_engine()

    # -- intake ------------------------------------------------------------------------------------

    def _classify(self, channel: str, external_id: str, payload: str) -> tuple[str, int]:
        """Whose event it is (a keyed hash) and its priority, from the triage of its text alone."""
        handler = self.channels.get(channel)
        seen: tuple[str, str] | None = None
        if handler is not None:
            try:
                seen = handler.peek(payload)
            except Exception:
                seen = None
        if seen is None:
            # Nobody known to order by: in order with everything of the channel that is not a person's.
            return f"{channel}:", Priority.NORMAL
        user, text = seen
        priority = Priority.NORMAL
        if text.strip():
            started = time.perf_counter()
            priority = Priority.of(self._triage.triage(text).risk.value)
            self.metrics.triaged("intake", time.perf_counter() - started)
        return self.crypto.lookup(channel, user), priority

    async def store(self, channel: str, events: list[tuple[str, str]]) -> int:
        """Store (external id, payload) pairs; returns how many were new. They are stored when this
        returns (a webhook answers after it)."""
        # An event stored before (a redelivery) is skipped by the unique (channel, external id), and only
        # the new ones come back.
        rows: list[dict[str, Any]] = []
        urgent: list[tuple[str, int]] = []
        seen: set[str] = set()
        for external_id, payload in events:
            if external_id in seen:
                continue
            seen.add(external_id)
            sender, priority = self._classify(channel, external_id, payload)
            if priority < Priority.NORMAL:
                # Their earlier events go before it (their order is kept), so they are raised with it
                # once stored (``_insert_queued``): those stored before, and those of this batch.
                urgent.append((sender, priority))
            rows.append(
                {
                    "channel": channel,
                    "external_id": external_id,
                    "payload_enc": self.crypto.encrypt(payload),
                    "priority": priority,
                    "sender": sender,
                    "status": InboxStatus.PENDING,
                    "attempts": 0,
                    "lease_until": None,
                    "last_error": "",
                    "received_at": utcnow(),
                    "processed_at": None,
                }
            )
        if not rows:
            return 0
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)  # a webhook given up on leaves no unread error behind
        self._queued.append((rows, urgent, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._insert_queued())
        new = await asyncio.shield(done)  # a webhook given up on still has its events stored
        if new:
            self.wakeup.set()
        return new

    async def _insert(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """One insert of ``rows`` (executemany: one statement on PostgreSQL); the (channel, external id)
        of those that were new."""
        stored = await conn.execute(_store_statement(self.db.is_sqlite), rows)
        return [(r.channel, r.external_id) for r in stored]

    async def _insert_queued(self) -> None:
        """Write what the webhooks queued, one insert for all that queued while the last one was written
        (group commit: under a flood, one statement and one commit for many events), until none is left;
        in arrival order, so each person's events keep theirs. With an urgent event in the batch, the
        raise of its person's earlier events goes in the same transaction. Each webhook learns how many of
        its own events were new, or the error that stopped them."""
        while self._queued:
            batch, self._queued = self._queued, []
            urgent = [u for _, raises, _ in batch for u in raises]
            try:
                async with self.db.transaction() if urgent else self.db.autocommit() as conn:
                    new = await self._insert(conn, [row for rows, _, _ in batch for row in rows])
                    for sender, priority in urgent:
                        await conn.execute(_raise_statement(), {"person": sender, "raised": priority})
            except BaseException as e:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(e if isinstance(e, Exception) else RuntimeError("intake stopped"))
                if not isinstance(e, Exception):
                    for _, _, done in self._queued:
                        done.set_exception(RuntimeError("intake stopped"))
                    self._queued = []
                    raise
                continue
            fresh = collections.Counter(new)
            for rows, _, done in batch:
                count = 0
                for row in rows:
                    key = (row["channel"], row["external_id"])
                    if fresh[key]:  # (the same event in two webhooks at once is new for the first)
                        fresh[key] -= 1
                        count += 1
                if not done.done():
                    done.set_result(count)

    async def scrub(self, channel: str, matches: Callable[[str], bool], *, days: int = 2) -> int:
        """Empty the stored events of ``channel`` whose payload ``matches`` (a message the person withdrew:
        its text must not outlive it in the inbox); how many were emptied. Events are kept a day after
        they are handled, so only recent rows are read."""
        since = utcnow() - timedelta(days=days)
        emptied = 0
        async with self.db.session() as s, s.begin():
            rows = (
                await s.scalars(
                    select(Inbox).where(col(Inbox.channel) == channel, col(Inbox.received_at) >= since)
                )
            ).all()
            for row in rows:
                if matches(self.crypto.decrypt(row.payload_enc)):
                    row.payload_enc = self.crypto.encrypt("{}")
                    emptied += 1
        return emptied

    # -- the worker --------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """``concurrency`` tasks taking events until ``stopping`` is set (each finishes its event)."""
        wakeups = [asyncio.Event() for _ in range(self.concurrency)]
        fan = asyncio.create_task(fan_out(self.wakeup, wakeups, stopping))
        try:
            await asyncio.gather(*(self._loop(w, stopping) for w in wakeups))
        finally:
            fan.cancel()
            await asyncio.gather(fan, return_exceptions=True)

    async def _loop(self, wakeup: asyncio.Event, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            wakeup.clear()  # before looking: a row stored while we look wakes us again
            try:
                if await self.process_one():
                    continue
            except Exception:
                log.exception("inbox pass failed; trying again shortly")
            await wait_any(wakeup, stopping, seconds=1.0)

    async def process_due(self, now: datetime | None = None) -> int:
        """Process every due event, one after another, most urgent first (tests and a worker's catch-up);
        how many went through. Each event is taken once in a pass."""
        done = 0
        tried: set[int] = set()
        while True:
            row = await self.claim(now or utcnow(), skip=tried)
            if row is None:
                return done
            tried.add(row.id or 0)
            done += await self._process(row, now or utcnow())

    async def process_one(self, now: datetime | None = None) -> bool:
        """Claim and process the most urgent due event; False when none is due."""
        now = now or utcnow()
        row = await self.claim(now)
        if row is None:
            return False
        await self._process(row, now)
        return True

    async def claim(self, now: datetime, *, skip: set[int] | None = None) -> Row[Any] | None:
        """The most urgent due event whose person has nothing earlier unfinished, leased to this worker."""
        # (Built once, for the worker's own loop: making it costs more than running it.)
        statement = _claim_statement(bool(skip))
        params: dict[str, Any] = {"now": now, "lease_until": now + LEASE, "channels": list(self.channels)}
        if skip:
            params["skip"] = list(skip)
        async with self.db.autocommit() as conn:  # one statement, atomic by itself
            found = (await conn.execute(statement, params)).first()
        return found  # (a plain row with the table's columns: building a mapped object would cost more)

    async def _process(self, row: Row[Any], now: datetime) -> int:
        row_id = row.id
        channel = self.channels.get(row.channel)
        payload = ""
        # Done: written in the engine's transaction when the event reaches it (one commit per message),
        # else here once the channel is through with it.
        done = (_DONE, {"row_id": row_id, "processed_at": utcnow()})
        try:
            if channel is None:
                raise LookupError(f"no channel {row.channel!r}")
            payload = self.crypto.decrypt(row.payload_enc)
            with riders(done) as left:
                await channel.process(payload)
        except Exception as e:
            # The database lost under the event (a connection terminated, a restart) is not the event's
            # fault: that attempt is given back, so that an event is never given up for it.
            lost = isinstance(e, DBAPIError) and e.connection_invalidated
            final = row.attempts >= MAX_ATTEMPTS and not lost
            if final:
                # Once, with where it failed: the traceback's frames and the exception's class, never
                # its message (which may quote what the person wrote), and the event's type only.
                kind = _describe(channel, payload)
                frames = "".join(traceback.format_tb(e.__traceback__))
                log.error(
                    "inbox %s on %s (%s) failed for good: %s\nTraceback (most recent call last):\n%s",
                    row_id,
                    row.channel,
                    kind,
                    e.__class__.__name__,
                    frames.rstrip(),
                )
            else:
                log.warning("inbox %s on %s failed (%s)", row_id, row.channel, e.__class__.__name__)
            # Not final: it stays leased until the backoff is over, then it is due again (and the
            # person's later events wait for it: their order is kept).
            values: dict[str, Any] = {
                "status": InboxStatus.FAILED if final else InboxStatus.PROCESSING,
                "lease_until": None if final else now + backoff(row.attempts),
                "last_error": e.__class__.__name__,
            }
            if lost:
                values["attempts"] = row.attempts - 1
            async with self.db.session() as s, s.begin():
                await s.execute(update(Inbox).where(col(Inbox.id) == row_id).values(**values))
            return 0
        if left:
            async with self.db.autocommit() as conn:
                await conn.execute(*done)
        return 1


# The statements on every event's path are Core statements on the table, not on the mapped class: an
# ORM-enabled UPDATE goes through the ORM's bulk-DML machinery at each execution (compile state, session
# synchronisation), which cost more than the statement's round trip to PostgreSQL.
_TABLE: Any = Inbox.__table__  # type: ignore[attr-defined]
_COLUMNS = list(_TABLE.columns)


_DONE = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("row_id"))
    .values(status=InboxStatus.DONE, processed_at=bindparam("processed_at"), lease_until=None, last_error="")
)


@functools.cache
def _store_statement(sqlite: bool) -> Any:
    """One insert of events (executemany: one statement, the rows batched), a redelivery skipped by the
    unique (channel, external id); RETURNING the keys of the new ones."""
    table = Inbox.__table__  # type: ignore[attr-defined]
    insert = sqlite_insert if sqlite else pg_insert
    return (
        insert(table)
        .on_conflict_do_nothing(index_elements=["channel", "external_id"])
        .returning(table.c.channel, table.c.external_id)
    )


@functools.cache
def _raise_statement() -> Any:
    """An urgent event's person: their unfinished events below its priority are raised to it (their
    order is kept, so the urgent one would otherwise wait behind them)."""
    priority = bindparam("raised", type_=_TABLE.c.priority.type)
    return (
        update(_TABLE)
        .where(
            _TABLE.c.sender == bindparam("person"),
            _TABLE.c.status.in_(UNFINISHED),
            _TABLE.c.priority > priority,
        )
        .values(priority=priority)
    )


def _retrieved(done: asyncio.Future[int]) -> None:
    if not done.cancelled():
        done.exception()


@functools.cache
def _claim_statement(skipping: bool) -> Any:
    """``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``, with the time, this
    process's channels (and the events already tried in this pass) as parameters."""
    cand: Any = _TABLE.alias("cand")
    earlier: Any = _TABLE.alias("earlier")
    now = bindparam("now", type_=_TABLE.c.lease_until.type)
    due = or_(
        cand.c.status == InboxStatus.PENDING,
        (cand.c.status == InboxStatus.PROCESSING) & (cand.c.lease_until < now),
    )
    blocked = exists().where(
        earlier.c.sender == cand.c.sender,
        earlier.c.id < cand.c.id,
        earlier.c.status.in_(UNFINISHED),
    )
    # Only what this process has a channel for (a worker without one leaves it to those with it).
    head = select(cand.c.id).where(cand.c.channel.in_(bindparam("channels", expanding=True)), due, ~blocked)
    if skipping:
        head = head.where(cand.c.id.not_in(bindparam("skip", expanding=True)))
    head = (
        head.order_by(cand.c.priority, cand.c.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=cand)  # (SQLite: nothing; its writes are serial)
    )
    return (
        update(_TABLE)
        .where(_TABLE.c.id.in_(head.scalar_subquery()))
        .values(
            status=InboxStatus.PROCESSING,
            lease_until=bindparam("lease_until"),
            attempts=_TABLE.c.attempts + 1,
        )
        .returning(*_COLUMNS)
    )


def _describe(channel: EventHandler | None, payload: str) -> str:
    if channel is None or not payload:
        return "unknown"
    try:
        return channel.describe(payload)
    except Exception:
        return "unreadable"
