"""The outbox worker: sends what the engine wrote, in order per conversation, with retries.

A row is leased (status ``sending`` with ``lease_until``) before it is sent, by a conditional UPDATE,
so two workers never send the same row; a lease left behind by a crashed process expires and the
row is sent again. Message text is decrypted only for the send and never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlmodel import col

from bot.crypto import Crypto
from bot.db import Database
from bot.events import Event, EventBus
from bot.models import Contact, Conversation, Message, Outbox, OutboxStatus, Presence, Sender, utcnow
from bot.types import QUICK_EXIT_REASON, Delivery, Outbound, Outcome


class Outlet(Protocol):
    """What the worker needs of a channel to send (channels/base.py's ``Channel`` is one): the engine's
    layer names no channel."""

    @property
    def batch(self) -> int: ...

    def reachable(self, contact_id: str) -> bool: ...

    async def deliver(self, outs: list[Outbound]) -> Delivery: ...


log = logging.getLogger("tsunagi.outbox")

LEASE = timedelta(seconds=30)
MAX_ATTEMPTS = 12
MAX_WAIT_ASKED = 3600.0  # seconds: the longest wait a platform's retry_after is taken for
DEFER = timedelta(minutes=10)  # a person not reachable now: look again later (or when they come back)


async def wait_any(*events: asyncio.Event, seconds: float) -> None:
    """Until one of the events is set, or ``seconds`` have passed."""
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def backoff(attempt: int) -> timedelta:
    """2, 4, 8 ... seconds, at most five minutes, with jitter so retries do not march in step."""
    base = min(300.0, 2.0**attempt)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


class OutboxWorker:
    def __init__(
        self,
        *,
        db: Database,
        crypto: Crypto,
        channels: Mapping[str, Outlet],
        wakeup: asyncio.Event,
        events: EventBus | None = None,
    ) -> None:
        self.db = db
        self.events = events
        self.crypto = crypto
        self.channels = channels
        self.wakeup = wakeup

    async def run(self, stopping: asyncio.Event) -> None:
        """Send until ``stopping`` is set; a pass in progress is finished first (never cut mid-send)."""
        while not stopping.is_set():
            try:
                await self.send_due()
            except Exception:
                log.exception("outbox pass failed; trying again shortly")
            await wait_any(self.wakeup, stopping, seconds=1.0)
            self.wakeup.clear()

    async def send_due(self, *, conversation_id: str | None = None, now: datetime | None = None) -> int:
        """Send every row that is due (or, for one conversation, every row not yet delivered)."""
        now = now or utcnow()
        async with self.db.session() as s:
            q = select(Outbox).where(col(Outbox.status).in_([OutboxStatus.PENDING, OutboxStatus.SENDING]))
            if conversation_id is not None:
                q = q.where(col(Outbox.conversation_id) == conversation_id)
            rows = (await s.scalars(q.order_by(col(Outbox.id)).limit(500))).all()
        blocked: set[str] = set()
        taken: set[int] = set()
        sent = 0
        for i, row in enumerate(rows):
            if row.id in taken:
                continue  # went out with an earlier row of its conversation
            if row.conversation_id in blocked:
                continue  # an earlier message of this conversation is not out yet: keep the order
            if row.status == OutboxStatus.SENDING and row.lease_until is not None and row.lease_until >= now:
                blocked.add(row.conversation_id)  # being sent right now (here or by another worker)
                continue
            if conversation_id is None and row.next_attempt_at > now:
                blocked.add(row.conversation_id)
                continue
            group = [row, *self._joining(row, rows[i + 1 :], now, due_only=conversation_id is None)]
            taken.update(r.id or 0 for r in group)
            delivered = await self._send_group(group, now)
            sent += delivered
            if delivered < len(group):
                blocked.add(row.conversation_id)
        return sent

    def _joining(
        self, first: Outbox, later: Sequence[Outbox], now: datetime, *, due_only: bool
    ) -> list[Outbox]:
        """The next waiting rows of ``first``'s conversation that go out with it, on a channel that sends
        several at once. Only rows tried as often as ``first``: a group that failed is retried as the same
        group (LINE's retry key names its rows), and a newer message waits for the next send."""
        channel = self.channels.get(first.channel)
        if channel is None or channel.batch <= 1:
            return []
        out: list[Outbox] = []
        for row in later:
            if len(out) + 1 >= channel.batch:
                break
            if row.conversation_id != first.conversation_id:
                continue
            if row.attempts != first.attempts or row.status != OutboxStatus.PENDING:
                break
            if due_only and row.next_attempt_at > now:
                break
            out.append(row)
        return out

    async def _send_group(self, group: list[Outbox], now: datetime) -> int:
        """Send rows of one conversation (one, or a group in one send); how many were delivered."""
        claimed: list[Outbox] = []
        for row in group:
            if not await self._claim(row, now):
                break  # someone else has it: the rest waits its turn
            claimed.append(row)
        channel = self.channels.get(group[0].channel)
        pairs: list[tuple[Outbox, Outbound]] = []
        for row in claimed:
            out = await self._outbound(row)
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
        # Deferred while the person came back (the web chat reconnected during the send): try again
        # at once rather than after the deferral.
        retry_now = delivery.outcome is Outcome.DEFERRED and channel.reachable(outs[0].contact_id)
        for row, _ in pairs:
            await self._record(row, delivery, now, defer_until=now if retry_now else None)
        if retry_now:
            self.wakeup.set()
        elif delivery.outcome is Outcome.DEFERRED and self.events is not None:
            # With several instances, the person may be connected to another one: it sends on this.
            self.events.publish(Event("deferred", group[0].conversation_id, outs[0].contact_id))
        return len(pairs) if delivery.outcome is Outcome.DELIVERED else 0

    async def _claim(self, row: Outbox, now: datetime) -> bool:
        async with self.db.session() as s, s.begin():
            claimed = await s.execute(
                update(Outbox)
                .where(col(Outbox.id) == row.id)
                .where(
                    or_(
                        col(Outbox.status) == OutboxStatus.PENDING,
                        (col(Outbox.status) == OutboxStatus.SENDING) & (col(Outbox.lease_until) < now),
                    )
                )
                .values(
                    status=OutboxStatus.SENDING, lease_until=now + LEASE, attempts=col(Outbox.attempts) + 1
                )
            )
            return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]

    async def _outbound(self, row: Outbox) -> Outbound | None:
        async with self.db.session() as s:
            found = (
                await s.execute(
                    select(Message, Contact)
                    .join(Conversation, col(Conversation.id) == col(Message.conversation_id))
                    .join(Contact, col(Contact.id) == col(Conversation.contact_id))
                    .where(col(Message.id) == row.message_id)
                )
            ).first()
        if found is None:
            return None
        msg, contact = found
        assert row.id is not None and msg.id is not None
        return Outbound(
            outbox_id=row.id,
            message_id=msg.id,
            conversation_id=row.conversation_id,
            contact_id=contact.id,
            channel=row.channel,
            address=self.crypto.decrypt(contact.address_enc),
            text=self.crypto.decrypt(msg.text_enc),
            quick_replies=tuple(json.loads(msg.quick_replies)) if msg.quick_replies else (),
            sender=Sender(msg.sender),
            attempt=row.attempts + 1,
            progress=row.progress,
            contact_state=self.crypto.decrypt(contact.state_enc) if contact.state_enc else "",
            gone=contact.presence == Presence.QUICK_EXIT,
        )

    async def _record(
        self, row: Outbox, delivery: Delivery, now: datetime, *, defer_until: datetime | None = None
    ) -> None:
        values: dict[str, object] = {"lease_until": None}
        if delivery.outcome is Outcome.DELIVERED:
            values.update(status=OutboxStatus.DELIVERED, delivered_at=utcnow(), last_error="")
        elif delivery.outcome is Outcome.DEFERRED:
            # Not a failure: the attempt is given back, and the row waits for the person to return.
            values.update(
                status=OutboxStatus.PENDING,
                attempts=row.attempts,
                next_attempt_at=defer_until or now + DEFER,
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
            await s.execute(update(Outbox).where(col(Outbox.id) == row.id).values(**values))
        if delivery.outcome is not Outcome.DELIVERED:
            log.info(
                "outbox %s on %s: %s (%s)", row.id, row.channel, delivery.outcome.value, delivery.reason[:200]
            )
