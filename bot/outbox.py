"""The outbox worker: sends what the engine wrote, in order per conversation, most urgent first, with
retries, and fairly: one row that cannot go out never holds back another.

**Order.** A row goes out only when no earlier row of its conversation is still unsent (pending, being
sent, or parked). Among the rows that may go, a crisis reply goes first, then high, then the rest, each by
the time it is due (``Priority``).

**Fairness.** Each channel has its own loop and its own sends in flight, so a channel that fails or hangs
(a platform down, a relay that times out) does not stall the others. A reply that cannot be delivered
because the person is not there (a web chat whose page is closed) is *parked*: never due, it goes when
they come back (the web chat's resume sends it, and the engine un-parks the rows of a person whose page
connects). A person who blocked the account or closed the page through the quick exit gets nothing more:
those rows are cancelled.

**Claiming.** Rows are first looked at without a lock, then claimed one conversation at a time by one
statement, ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``: on PostgreSQL a row
another worker is claiming is skipped, not waited for; on SQLite the statement is atomic (one writer).
The claim is a lease (status ``sending`` with ``lease_until``): a lease left behind by a crashed process
expires and the row is sent again. Message text is decrypted only for the send and never logged.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, bindparam, exists, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from bot.crypto import Crypto
from bot.db import Database
from bot.events import Event, EventBus
from bot.metrics import Metrics
from bot.models import (
    UNSENT,
    Contact,
    Conversation,
    Message,
    Outbox,
    OutboxStatus,
    Presence,
    Sender,
    utcnow,
)
from bot.types import QUICK_EXIT_REASON, Delivery, Outbound, Outcome


class Outlet(Protocol):
    """What the worker needs of a channel to send (channels/base.py's ``Channel`` is one): the engine's
    layer names no channel."""

    @property
    def batch(self) -> int: ...

    @property
    def parks_deferred(self) -> bool: ...

    def reachable(self, contact_id: str) -> bool: ...

    async def deliver(self, outs: list[Outbound]) -> Delivery: ...


log = logging.getLogger("tsunagi.outbox")

LEASE = timedelta(seconds=30)
MAX_ATTEMPTS = 12
DEFER = timedelta(minutes=10)  # a deferred reply on a channel that cannot say when the person is back
MAX_WAIT_ASKED = 3600.0  # seconds: the longest wait a platform's retry_after is taken for


async def wait_any(*events: asyncio.Event, seconds: float) -> None:
    """Until one of the events is set, or ``seconds`` have passed."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def fan_out(source: asyncio.Event, targets: list[asyncio.Event], stopping: asyncio.Event) -> None:
    """Each time ``source`` is set, set every target (one wake-up for each of several tasks)."""
    while not stopping.is_set():
        await wait_any(source, stopping, seconds=5.0)
        if source.is_set():
            source.clear()
            for t in targets:
                t.set()


def backoff(attempt: int) -> timedelta:
    """2, 4, 8 ... seconds, at most five minutes, with jitter so retries do not march in step."""
    base = min(300.0, 2.0**attempt)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


# The statements on every reply's path are Core statements on the tables, and the rows come back as plain
# records: an ORM-enabled statement goes through the ORM's machinery at each execution, and building a mapped
# object validates every field (about 0.2 ms a row), each more than the statement's round trip.
_TABLE: Any = Outbox.__table__  # type: ignore[attr-defined]
_COLUMNS = list(_TABLE.columns)
_MESSAGE: Any = Message.__table__  # type: ignore[attr-defined]
_CONTACT: Any = Contact.__table__  # type: ignore[attr-defined]
_CONVERSATION: Any = Conversation.__table__  # type: ignore[attr-defined]


@dataclass(slots=True)
class Row:
    """An outbox row as the worker reads it (the columns of ``bot.models.Outbox``)."""

    id: int
    message_id: int
    conversation_id: str
    channel: str
    status: str
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    last_error: str
    progress: int
    priority: int
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, values: Any) -> Row:
        return cls(**values._mapping)


def _finished(done: Callable[[str], None], conversation_id: str, _task: asyncio.Task[int]) -> None:
    done(conversation_id)


def _row(values: Any) -> Row:
    """A RETURNING row of a claim, as it was before the claim counted its attempt."""
    row = Row.of(values)
    row.attempts -= 1
    return row


# Tries to record that a group went out when the connection is lost under it (0.1 s, 0.2 s ... apart).
RECORD_TRIES = 6


class OutboxWorker:
    def __init__(
        self,
        *,
        db: Database,
        crypto: Crypto,
        channels: Mapping[str, Outlet],
        wakeup: asyncio.Event,
        events: EventBus | None = None,
        concurrency: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.events = events
        self.metrics = metrics or Metrics()
        self.crypto = crypto
        self.channels = channels
        self.wakeup = wakeup  # set: every channel's loop looks
        self.concurrency = max(1, concurrency)  # sends in flight at once, on each channel
        self._wakeups = {name: asyncio.Event() for name in channels}

    def wake(self, channel: str) -> None:
        """A row is due on ``channel``: its loop looks at once (the others are not disturbed)."""
        found = self._wakeups.get(channel)
        if found is None:
            self.wakeup.set()
        else:
            found.set()

    # -- the running worker: a loop per channel -------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Send until ``stopping`` is set; sends in progress are finished first (never cut mid-send)."""
        names = list(self.channels)
        wakeups = self._wakeups
        fan = asyncio.create_task(fan_out(self.wakeup, list(wakeups.values()), stopping))
        try:
            await asyncio.gather(*(self._channel_loop(n, wakeups[n], stopping) for n in names))
        finally:
            fan.cancel()
            await asyncio.gather(fan, return_exceptions=True)

    async def _channel_loop(self, name: str, wakeup: asyncio.Event, stopping: asyncio.Event) -> None:
        inflight: dict[str, asyncio.Task[int]] = {}  # by conversation: one send of each at a time

        def done(conversation_id: str) -> None:
            inflight.pop(conversation_id, None)
            wakeup.set()  # a slot is free, and the conversation's next row may be due now

        while not stopping.is_set():
            free = self.concurrency - len(inflight)
            if free <= 0:
                await wait_any(wakeup, stopping, seconds=1.0)
                wakeup.clear()
                continue
            wakeup.clear()  # before looking: a row written while we look wakes us again
            try:
                groups = await self._next(name, utcnow(), limit=free, skip_conversations=set(inflight))
            except Exception:
                log.exception("outbox pass on %s failed; trying again shortly", name)
                groups = []
            for group in groups:
                cid = group[0].conversation_id
                task = asyncio.create_task(self._send_group(group, utcnow()))
                task.add_done_callback(functools.partial(_finished, done, cid))
                inflight[cid] = task
            if not groups:
                await wait_any(wakeup, stopping, seconds=1.0)
        if inflight:
            await asyncio.gather(*inflight.values(), return_exceptions=True)

    # -- a pass that drains (tests, and a web chat that came back) -----------------------------------

    async def send_due(self, *, conversation_id: str | None = None, now: datetime | None = None) -> int:
        """Send every row that is due, channels in turn, until none is (or, for one conversation,
        every row not yet delivered, parked ones included: the person is back); how many were delivered.
        Each row is tried once in a pass."""
        tried: set[int] = set()
        sent = 0
        while True:
            progressed = False
            for name in list(self.channels):
                # One at a time: the next row of a crisis conversation is again the most urgent.
                groups = await self._next(
                    name, now or utcnow(), limit=1, skip=tried, conversation_id=conversation_id
                )
                for group in groups:
                    tried.update(r.id or 0 for r in group)
                    sent += await self._send_group(group, now or utcnow())
                    progressed = True
            if not progressed:
                return sent

    # -- choosing and claiming -------------------------------------------------------------------------

    @staticmethod
    def _claimable(cand: Any, now: Any, *, any_time: bool) -> ColumnElement[bool]:
        """A row that may be claimed now: waiting (and due, unless ``any_time``: parked ones too), or
        left behind by a worker whose lease ran out; and the first unsent of its conversation."""
        earlier: Any = _TABLE.alias("earlier")
        c = cand.c
        waiting = (
            c.status.in_([OutboxStatus.PENDING, OutboxStatus.PARKED])
            if any_time
            else and_(c.status == OutboxStatus.PENDING, c.next_attempt_at <= now)
        )
        blocked = exists().where(
            earlier.c.conversation_id == c.conversation_id,
            earlier.c.id < c.id,
            earlier.c.status.in_(UNSENT),
        )
        lapsed = and_(c.status == OutboxStatus.SENDING, c.lease_until < now)
        return and_(or_(waiting, lapsed), ~blocked)

    async def _next(
        self,
        name: str,
        now: datetime,
        *,
        limit: int,
        skip: set[int] | None = None,
        skip_conversations: set[str] | None = None,
        conversation_id: str | None = None,
    ) -> list[list[Row]]:
        """The next rows to send on one channel, looked at without a lock: the first unsent row of each
        conversation that may go now, most urgent first, then by due time; on a channel that sends several
        at once, each with the rows of its conversation that go with it (see ``_joining``)."""
        channel = self.channels.get(name)
        any_time = conversation_id is not None
        q = _next_statement(any_time, bool(skip), bool(skip_conversations), limit)
        params: dict[str, Any] = {"channel": name, "now": now, "conversation_id": conversation_id}
        params.update(skip=list(skip or ()), skip_conversations=list(skip_conversations or ()))
        async with self.db.autocommit() as conn:  # looked at without a lock (the claim checks again)
            heads = [Row.of(r) for r in await conn.execute(q, params)]
            if channel is None or channel.batch <= 1:
                return [[h] for h in heads]
            groups = []
            for head in heads:
                later = [
                    Row.of(r)
                    for r in await conn.execute(
                        _later_statement(channel.batch - 1),
                        {"conversation_id": head.conversation_id, "after": head.id},
                    )
                ]
                groups.append([head, *self._joining(head, later, now, due_only=not any_time)])
        return groups

    @staticmethod
    def _joining(first: Row, later: list[Row], now: datetime, *, due_only: bool) -> list[Row]:
        """The next waiting rows of ``first``'s conversation that go out with it, on a channel that sends
        several at once. Only rows tried as often as ``first``: a group that failed is retried as the same
        group (LINE's retry key names its rows), and a newer message waits for the next send."""
        out: list[Row] = []
        for row in later:
            if row.attempts != first.attempts or row.status != OutboxStatus.PENDING:
                break
            if due_only and row.next_attempt_at > now:
                break
            out.append(row)
        return out

    async def _claim(
        self, group: list[Row], now: datetime, *, any_time: bool
    ) -> list[tuple[Row, Outbound | None]]:
        """Lease the group: its first row if it may still be claimed (another worker may have taken it
        since it was looked at: then nothing), and with it the rest of the group that is still waiting.
        The rows as they were before the claim, each with what is sent (read in the same transaction;
        None: its message or contact is gone)."""
        head, rest = group[0], group[1:]
        lease_until = now + LEASE
        async with self.db.transaction() as conn:
            first = (
                await conn.execute(
                    _claim_statement(any_time), {"head": head.id, "now": now, "lease_until": lease_until}
                )
            ).first()
            if first is None:
                return []
            claimed = [_row(first)]
            if rest:
                # Only this worker can take them now: their conversation's first row is ours.
                more = (
                    await conn.execute(
                        _claim_rest_statement(),
                        {
                            "ids": [r.id for r in rest],
                            "attempts": claimed[0].attempts,
                            "lease_until": lease_until,
                        },
                    )
                ).all()
                claimed += sorted((_row(r) for r in more), key=lambda r: r.id or 0)
            found = await self._outbounds(conn, claimed)
        return [(row, found.get(row.message_id)) for row in claimed]

    # -- sending ------------------------------------------------------------------------------------------

    async def _send_group(self, group: list[Row], now: datetime) -> int:
        """Claim and send rows of one conversation (one, or a group in one send); how many were
        delivered. A group chosen though not due (parked, or waiting for a retry: a pass for a person who
        came back) is claimed as such."""
        head = group[0]
        any_time = head.status == OutboxStatus.PARKED or head.next_attempt_at > now
        claimed = await self._claim(group, now, any_time=any_time)
        channel = self.channels.get(group[0].channel)
        pairs: list[tuple[Row, Outbound]] = []
        for row, out in claimed:
            if out is None or channel is None:
                reason = "no such channel" if channel is None else "message or contact gone"
                await self._record(row, Delivery.failed(reason), now)
                continue
            if out.gone:
                # The web chat's page was closed with the quick exit: it forgot its token, and nothing
                # can reach the person there again.
                await self._record(row, Delivery.failed(QUICK_EXIT_REASON), now)
                continue
            pairs.append((row, out))
        if channel is None or not pairs:
            return 0
        outs = [out for _, out in pairs]
        delivery = await channel.deliver(outs)
        # A retry's wait (a 429's Retry-After, the backoff) counts from the answer, not from the start of
        # a send that may have waited long for it.
        answered = max(now, utcnow())
        if delivery.outcome is Outcome.DELIVERED:
            for row, out in pairs:
                self.metrics.replied(row.channel, out.sender.value, row.created_at, answered)
        contact_id = outs[0].contact_id
        # Deferred while the person came back (the web chat reconnected during the send): try again
        # at once; else the rows are parked until they come back.
        retry_now = delivery.outcome is Outcome.DEFERRED and channel.reachable(contact_id)
        if delivery.outcome is Outcome.DELIVERED:
            await self._delivered([row for row, _ in pairs])  # one statement for the group
        else:
            for row, _ in pairs:
                await self._record(
                    row,
                    delivery,
                    answered,
                    park=not retry_now and channel.parks_deferred,
                    later=not retry_now and not channel.parks_deferred,
                )
        if delivery.outcome is Outcome.DEFERRED:
            if retry_now or channel.reachable(contact_id):
                # (They may have come back while the rows were being parked: their resume may have
                # looked before the rows were parked.)
                await self.unpark(group[0].conversation_id, now)
                self.wakeup.set()
            elif self.events is not None:
                # With several instances, the person may be connected to another one: it sends on this.
                self.events.publish(Event("deferred", group[0].conversation_id, contact_id))
        return len(pairs) if delivery.outcome is Outcome.DELIVERED else 0

    async def unpark(self, conversation_id: str, now: datetime | None = None) -> None:
        """The parked rows of a conversation are due again."""
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(Outbox)
                .where(
                    col(Outbox.conversation_id) == conversation_id,
                    col(Outbox.status) == OutboxStatus.PARKED,
                )
                .values(status=OutboxStatus.PENDING, next_attempt_at=now or utcnow())
            )

    async def _outbounds(self, conn: AsyncConnection, rows: list[Row]) -> dict[int, Outbound]:
        """What each row sends (by message id), read in one statement."""
        if not rows:
            return {}
        found = await conn.execute(_OUTBOUNDS, {"ids": [r.message_id for r in rows]})
        by_message = {f.message_id: f for f in found}
        return {
            row.message_id: self._outbound(row, by_message[row.message_id])
            for row in rows
            if row.message_id in by_message
        }

    def _outbound(self, row: Row, found: Any) -> Outbound:
        return Outbound(
            outbox_id=row.id,
            message_id=found.message_id,
            conversation_id=row.conversation_id,
            contact_id=found.contact_id,
            channel=row.channel,
            address=self.crypto.decrypt(found.address_enc),
            text=self.crypto.decrypt(found.text_enc),
            quick_replies=tuple(json.loads(found.quick_replies)) if found.quick_replies else (),
            sender=Sender(found.sender),
            attempt=row.attempts + 1,
            progress=row.progress,
            contact_state=self.crypto.decrypt(found.state_enc) if found.state_enc else "",
            gone=found.presence == Presence.QUICK_EXIT,
        )

    async def _delivered(self, rows: list[Row]) -> None:
        """Rows that went out together, recorded in one statement. The platform has taken them: a
        connection lost under the record (PostgreSQL restarted, a backend terminated) is tried again on
        a new one, or the rows would go out a second time once their lease ran out."""
        values = {"ids": [row.id for row in rows], "delivered_at": utcnow()}
        for attempt in range(RECORD_TRIES):
            try:
                async with self.db.autocommit() as conn:
                    await conn.execute(_DELIVERED, values)
                return
            except DBAPIError as e:
                if not e.connection_invalidated or attempt == RECORD_TRIES - 1:
                    raise
                await asyncio.sleep(0.1 * 2**attempt)

    async def _record(
        self, row: Row, delivery: Delivery, now: datetime, *, park: bool = True, later: bool = False
    ) -> None:
        values: dict[str, object] = {"lease_until": None}
        if delivery.outcome is Outcome.DELIVERED:
            values.update(status=OutboxStatus.DELIVERED, delivered_at=utcnow(), last_error="")
        elif delivery.outcome is Outcome.DEFERRED:
            # Not a failure: the attempt is given back, and the row waits for the person to return
            # (parked: never due meanwhile), or goes again at once when they are already back.
            # A channel that cannot tell when the person is back (e-mail with no relay yet) tries again
            # after DEFER instead of parking.
            values.update(
                status=OutboxStatus.PARKED if park else OutboxStatus.PENDING,
                attempts=row.attempts,
                next_attempt_at=now + DEFER if later else now,
                last_error=delivery.reason[:500],
            )
        elif delivery.outcome is Outcome.RETRY and row.attempts + 1 < MAX_ATTEMPTS:
            values.update(
                progress=max(row.progress, delivery.progress),
                status=OutboxStatus.PENDING,
                # Never sooner than the platform asked (a 429's retry_after), never later than an hour.
                next_attempt_at=now
                + max(backoff(row.attempts + 1), timedelta(seconds=min(delivery.after, MAX_WAIT_ASKED))),
                last_error=delivery.reason[:500],
            )
        else:
            values.update(status=OutboxStatus.FAILED, last_error=delivery.reason[:500])
        async with self.db.session() as s, s.begin():
            await s.execute(update(_TABLE).where(_TABLE.c.id == row.id).values(**values))
        if values["status"] == OutboxStatus.FAILED and delivery.reason != QUICK_EXIT_REASON:
            # (Not a reply to someone who left through the quick exit: nothing failed, they chose it.)
            self.metrics.deliveries_failed.labels(channel=row.channel).inc()
        elif delivery.outcome is Outcome.RETRY:
            self.metrics.delivery_retries.labels(channel=row.channel).inc()
        if delivery.outcome is not Outcome.DELIVERED:
            log.info(
                "outbox %s on %s: %s (%s)", row.id, row.channel, delivery.outcome.value, delivery.reason[:200]
            )


# The statements of every send, built once with their values as parameters: making a statement with
# aliases and an EXISTS costs more than running it.
_NOW = bindparam("now", type_=_TABLE.c.next_attempt_at.type)


@functools.cache
def _next_statement(any_time: bool, skipping: bool, skipping_conversations: bool, limit: int) -> Any:
    cand: Any = _TABLE.alias("cand")
    q = select(*cand.c).where(
        cand.c.channel == bindparam("channel"), OutboxWorker._claimable(cand, _NOW, any_time=any_time)
    )
    if any_time:  # (one conversation's pass)
        q = q.where(cand.c.conversation_id == bindparam("conversation_id"))
    if skipping:
        q = q.where(cand.c.id.not_in(bindparam("skip", expanding=True)))
    if skipping_conversations:
        q = q.where(cand.c.conversation_id.not_in(bindparam("skip_conversations", expanding=True)))
    return q.order_by(cand.c.priority, cand.c.next_attempt_at, cand.c.id).limit(limit)


@functools.cache
def _later_statement(limit: int) -> Any:
    return (
        select(*_COLUMNS)
        .where(
            _TABLE.c.conversation_id == bindparam("conversation_id"),
            _TABLE.c.id > bindparam("after"),
            _TABLE.c.status.in_(UNSENT),
        )
        .order_by(_TABLE.c.id)
        .limit(limit)
    )


def _lease() -> dict[str, Any]:
    return {
        "status": OutboxStatus.SENDING,
        "lease_until": bindparam("lease_until"),
        "attempts": _TABLE.c.attempts + 1,
    }


@functools.cache
def _claim_statement(any_time: bool) -> Any:
    cand: Any = _TABLE.alias("cand")
    chosen = (
        select(cand.c.id)
        .where(cand.c.id == bindparam("head"), OutboxWorker._claimable(cand, _NOW, any_time=any_time))
        .with_for_update(skip_locked=True, of=cand)  # (SQLite: nothing; its writes are serial)
    )
    return (
        update(_TABLE)
        .where(_TABLE.c.id.in_(chosen.scalar_subquery()))
        .values(**_lease())
        .returning(*_COLUMNS)
    )


@functools.cache
def _claim_rest_statement() -> Any:
    return (
        update(_TABLE)
        .where(
            _TABLE.c.id.in_(bindparam("ids", expanding=True)),
            _TABLE.c.status == OutboxStatus.PENDING,
            _TABLE.c.attempts == bindparam("attempts"),
        )
        .values(**_lease())
        .returning(*_COLUMNS)
    )


_DELIVERED = (
    update(_TABLE)
    .where(_TABLE.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status=OutboxStatus.DELIVERED, delivered_at=bindparam("delivered_at"), last_error="", lease_until=None
    )
)

# What each claimed row sends: its message, and its person (through the conversation).
_OUTBOUNDS = (
    select(
        _MESSAGE.c.id.label("message_id"),
        _MESSAGE.c.text_enc,
        _MESSAGE.c.quick_replies,
        _MESSAGE.c.sender,
        _CONTACT.c.id.label("contact_id"),
        _CONTACT.c.address_enc,
        _CONTACT.c.state_enc,
        _CONTACT.c.presence,
    )
    .select_from(_MESSAGE)
    .join(_CONVERSATION, _CONVERSATION.c.id == _MESSAGE.c.conversation_id)
    .join(_CONTACT, _CONTACT.c.id == _CONVERSATION.c.contact_id)
    .where(_MESSAGE.c.id.in_(bindparam("ids", expanding=True)))
)
