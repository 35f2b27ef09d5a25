"""The inbox: platform events stored on arrival, once each, then processed in order, with retries."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
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

    def describe(self, payload: str) -> str:
        return str(json.loads(payload).get("type", "message"))

    async def process(self, payload: str) -> None:
        if self.fail:
            self.fail -= 1
            event = json.loads(payload)
            # An error whose message quotes the event, as real ones can: it must never reach the log.
            raise ConnectionError(f"the platform was down for {event['user']}: {event['text']}")
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
        channel = Recording(svc.host)
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
        channel = Recording(svc.host)
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


async def test_an_event_that_fails_for_good_is_logged_once_with_its_traceback_and_type(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(tmp_path) as svc:
        channel = Recording(svc.host)
        svc.channels["recording"] = channel
        event = {"type": "postback", "user": "U-secret-id", "text": "ひみつの相談"}
        await channel.store_events([("e1", json.dumps(event, ensure_ascii=False))])
        channel.fail = 99
        now = utcnow()
        for _ in range(5):
            await svc.inbox.process_due(now=now)
            (row,) = await rows(svc)
            now = (row.lease_until or now) + timedelta(seconds=1)
    final = [r for r in caplog.records if r.name == "tsunagi.inbox" and "for good" in r.getMessage()]
    assert len(final) == 1, "once, when it is given up"
    message = final[0].getMessage()
    assert "(postback)" in message and "ConnectionError" in message
    assert "Traceback (most recent call last)" in message and "in process" in message
    logged = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(
        str(r.exc_text or "") for r in caplog.records
    )
    assert "U-secret-id" not in logged and "ひみつ" not in logged


async def test_scrub_empties_the_events_that_carried_a_withdrawn_message(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        channel = Recording(svc.host)
        svc.channels["recording"] = channel
        await channel.store_events(
            [(f"e{i}", json.dumps({"user": "u1", "text": t, "id": str(i)})) for i, t in enumerate(["a", "b"])]
        )
        assert await svc.inbox.scrub("recording", lambda p: json.loads(p).get("id") == "1") == 1
        payloads = [svc.crypto.decrypt(r.payload_enc) for r in await rows(svc)]
        assert json.loads(payloads[0])["text"] == "a" and payloads[1] == "{}"
