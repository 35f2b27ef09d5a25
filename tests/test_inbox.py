"""The inbox: platform events stored on arrival, once each, then processed in order, with retries."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import select, text
from sqlmodel import col

from bot.models import Inbox, InboxStatus, utcnow
from bot.types import Inbound
from channels.base import Channel
from tests.engine_helpers import running


class Recording(Channel):
    """A channel that stores events first, like LINE and Telegram, and records what it processed."""

    name: ClassVar[str] = "recording"

    def __init__(self, service: Any) -> None:
        super().__init__(service)
        self.processed: list[dict[str, Any]] = []
        self.fail = 0

    async def process(self, payload: str) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the platform was down")
        event = json.loads(payload)
        self.processed.append(event)
        await self.receive(Inbound(channel="loopback", user_id=event["user"], text=event["text"]))

    async def send(self, out: Any) -> Any:
        raise AssertionError("not used")


async def rows(svc: Any) -> list[Inbox]:
    async with svc.db.session() as s:
        return list((await s.scalars(select(Inbox).order_by(col(Inbox.id)))).all())


async def test_events_are_stored_once_processed_in_order_and_retried(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, database_url) as svc:
        channel = Recording(svc)
        svc.channels["recording"] = channel
        events = [
            (f"e{i}", json.dumps({"user": "u1", "text": t})) for i, t in enumerate(["こんにちは", "同意"])
        ]
        assert await channel.store_events(events) == 2
        assert await channel.store_events(events[:1]) == 0, "a redelivery is stored once"

        # Stored encrypted: the text is not in the table.
        async with svc.db.engine.connect() as conn:
            dump = str((await conn.execute(text("SELECT * FROM inbox"))).all())
        assert "こんにちは" not in dump

        channel.fail = 1
        assert await svc.inbox.process_due() == 1  # the first failed, the second went through
        first, second = await rows(svc)
        assert (first.status, first.attempts, first.last_error) == (
            InboxStatus.PROCESSING,
            1,
            "ConnectionError",
        )
        assert first.lease_until is not None and first.lease_until > utcnow()
        assert second.status == InboxStatus.DONE
        assert await svc.inbox.process_due() == 0, "not again before the backoff is over"
        assert await svc.inbox.process_due(now=first.lease_until + timedelta(seconds=1)) == 1
        assert [e["text"] for e in channel.processed] == ["同意", "こんにちは"]
        assert all(r.status == InboxStatus.DONE for r in await rows(svc))

        # Handled events go after a day; what the person wrote stays only in the (encrypted) messages.
        await svc.retention.sweep(now=utcnow() + timedelta(days=2))
        assert await rows(svc) == []


async def test_an_event_that_keeps_failing_is_given_up_and_kept_for_a_look(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        channel = Recording(svc)
        svc.channels["recording"] = channel
        await channel.store_events([("e1", json.dumps({"user": "u1", "text": "x"}))])
        channel.fail = 99
        now = utcnow()
        for _ in range(5):
            await svc.inbox.process_due(now=now)
            (row,) = await rows(svc)
            now = (row.lease_until or now) + timedelta(seconds=1)
        (row,) = await rows(svc)
        assert (row.status, row.attempts) == (InboxStatus.FAILED, 5)
        assert await svc.inbox.process_due(now=now + timedelta(days=1)) == 0
