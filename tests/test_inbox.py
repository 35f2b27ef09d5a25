"""The inbox: platform events stored on arrival, once each, then processed in order, with retries."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import text

from bot.db import Database
from bot.inbox import MAX_ATTEMPTS, InboxWorker
from bot.models import Inbox, InboxStatus, utcnow
from bot.types import Inbound
from channels.base import Channel
from tests.engine_helpers import running
from tests.helpers import CRISIS, postgres_database, rows_of


class Recording(Channel):
    """A channel that stores events first, like LINE and Telegram, and records what it processed."""

    name: ClassVar[str] = "recording"

    def __init__(self, service: Any) -> None:
        super().__init__(service)
        self.processed: list[dict[str, Any]] = []
        self.fail = 0

    def describe(self, payload: str) -> str:
        return str(json.loads(payload).get("type", "message"))

    def peek(self, payload: str) -> tuple[str, str] | None:
        event = json.loads(payload)
        return (event["user"], event["text"]) if "user" in event else None

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


def recording(svc: Any) -> Recording:
    """A recording channel, put in the running service's channels."""
    channel = Recording(svc.host)
    svc.channels[channel.name] = channel
    return channel


async def fail_five_times(svc: Any) -> datetime:
    """The one stored event tried five times, each as soon as its lease ends; the time after the last."""
    now = utcnow()
    for _ in range(5):
        await svc.inbox.process_due(now=now)
        (row,) = await rows_of(svc, Inbox)
        now = (row.lease_until or now) + timedelta(seconds=1)
    return now


async def test_events_are_stored_once_processed_in_order_and_retried(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, database_url) as svc:
        channel = recording(svc)
        said = [("u1", "こんにちは"), ("u1", "同意"), ("u2", "やあ")]
        events = [(f"e{i}", json.dumps({"user": u, "text": t})) for i, (u, t) in enumerate(said)]
        assert await channel.store_events(events) == 3
        assert await channel.store_events(events[:1]) == 0, "a redelivery is stored once"

        # Stored encrypted: the text is not in the table.
        async with svc.db.engine.connect() as conn:
            dump = str((await conn.execute(text("SELECT * FROM inbox"))).all())
        assert "こんにちは" not in dump

        channel.fail = 1
        # The first failed; the same person's second waits for it (their order is kept), another
        # person's went through.
        assert await svc.inbox.process_due() == 1
        first, second, other = await rows_of(svc, Inbox)
        assert (first.status, first.attempts, first.last_error) == (
            InboxStatus.PROCESSING,
            1,
            "ConnectionError",
        )
        assert first.lease_until is not None and first.lease_until > utcnow()
        assert (second.status, second.attempts) == (InboxStatus.PENDING, 0)
        assert other.status == InboxStatus.DONE
        assert await svc.inbox.process_due() == 0, "not again before the backoff is over"
        assert await svc.inbox.process_due(now=first.lease_until + timedelta(seconds=1)) == 2
        assert [e["text"] for e in channel.processed] == ["やあ", "こんにちは", "同意"]
        assert all(r.status == InboxStatus.DONE for r in await rows_of(svc, Inbox))

        # Handled events go after a day; what the person wrote stays only in the (encrypted) messages.
        await svc.retention.sweep(now=utcnow() + timedelta(days=2))
        assert await rows_of(svc, Inbox) == []


async def test_an_event_that_keeps_failing_is_given_up_and_kept_for_a_look(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        channel = recording(svc)
        await channel.store_events([("e1", json.dumps({"user": "u1", "text": "x"}))])
        channel.fail = 99
        now = await fail_five_times(svc)
        (row,) = await rows_of(svc, Inbox)
        assert (row.status, row.attempts) == (InboxStatus.FAILED, 5)
        assert await svc.inbox.process_due(now=now + timedelta(days=1)) == 0


class CutOff(Recording):
    """Its first ``fail`` events lose their database connection under them: PostgreSQL terminates the
    very connection the handling uses, as an operator's pg_terminate_backend or a restart would."""

    svc: Any = None  # the service whose database it uses

    async def process(self, payload: str) -> None:
        if self.fail:
            self.fail -= 1
            async with self.svc.db.session() as s:
                await s.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        await super().process(payload)


async def test_an_event_is_never_given_up_because_the_database_connection_was_lost(tmp_path: Path) -> None:
    async with postgres_database() as url, running(tmp_path, url) as svc:
        channel = CutOff(svc.host)
        channel.svc = svc
        svc.channels["recording"] = channel
        await channel.store_events([("e1", json.dumps({"user": "u1", "text": "同意"}))])
        channel.fail = MAX_ATTEMPTS + 2
        now = utcnow()
        for _ in range(MAX_ATTEMPTS + 2):
            assert await svc.inbox.process_due(now=now) == 0
            (row,) = await rows_of(svc, Inbox)
            assert (row.status, row.attempts, row.last_error) == (InboxStatus.PROCESSING, 0, "DBAPIError")
            now = (row.lease_until or now) + timedelta(seconds=1)
        assert await svc.inbox.process_due(now=now) == 1, "handled once the database stays"
        assert [e["text"] for e in channel.processed] == ["同意"]


async def test_an_event_that_fails_for_good_is_logged_once_with_its_traceback_and_type(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(tmp_path) as svc:
        channel = recording(svc)
        event = {"type": "postback", "user": "U-secret-id", "text": "ひみつの相談"}
        await channel.store_events([("e1", json.dumps(event, ensure_ascii=False))])
        channel.fail = 99
        await fail_five_times(svc)
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
        channel = recording(svc)
        await channel.store_events(
            [(f"e{i}", json.dumps({"user": "u1", "text": t, "id": str(i)})) for i, t in enumerate(["a", "b"])]
        )
        assert await svc.inbox.scrub("recording", lambda p: json.loads(p).get("id") == "1") == 1
        payloads = [svc.crypto.decrypt(r.payload_enc) for r in await rows_of(svc, Inbox)]
        assert json.loads(payloads[0])["text"] == "a" and payloads[1] == "{}"


# -- crisis first, each person's events in order -----------------------------------------------------------


async def test_a_crisis_is_processed_first_and_high_before_the_rest(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, database_url) as svc:
        channel = recording(svc)
        said = [(f"p{i}", "こんにちは") for i in range(5)]
        said += [
            ("high", "彼氏に殴られて怖い"),
            ("crisis", "今から駅のホームから飛び込みます"),
            ("p9", "おはよう"),
        ]
        await channel.store_events(
            [(f"e{i}", json.dumps({"user": u, "text": t})) for i, (u, t) in enumerate(said)]
        )
        priorities = {svc.crypto.lookup("recording", u): u for u, _ in said}
        by_sender = {priorities[r.sender]: r.priority for r in await rows_of(svc, Inbox)}
        assert (by_sender["crisis"], by_sender["high"], by_sender["p0"]) == (0, 1, 2)

        assert await svc.inbox.process_due() == len(said)
        order = [e["user"] for e in channel.processed]
        assert order == ["crisis", "high", "p0", "p1", "p2", "p3", "p4", "p9"]


async def test_a_crisis_takes_its_own_earlier_events_with_it_in_their_order(
    tmp_path: Path, database_url: str
) -> None:
    """A later crisis of the same person must not jump their own earlier events (the engine reads them as
    one conversation, in order): those go first, and go ahead of everyone else's with it."""
    async with running(tmp_path, database_url) as svc:
        channel = recording(svc)
        said = [("a", "こんにちは"), ("b", "こんにちは"), ("a", "同意"), ("c", "こんにちは")]
        said += [("a", "もう死にたい、今夜飛び降りる"), ("b", "同意")]
        await channel.store_events(
            [(f"e{i}", json.dumps({"user": u, "text": t})) for i, (u, t) in enumerate(said)]
        )

        assert await svc.inbox.process_due() == len(said)
        order = [(e["user"], e["text"]) for e in channel.processed]
        assert order[:3] == [("a", "こんにちは"), ("a", "同意"), ("a", "もう死にたい、今夜飛び降りる")]
        assert order[3:] == [("b", "こんにちは"), ("c", "こんにちは"), ("b", "同意")]


class Slow(Recording):
    """Takes a while per event, at random, and records when each person's event was handled."""

    name: ClassVar[str] = "slow"

    async def process(self, payload: str) -> None:
        event = json.loads(payload)
        await asyncio.sleep(random.uniform(0, 0.02))
        self.processed.append(event)
        if len(self.processed) >= self.expected:
            self.all_done.set()

    expected = 0
    all_done = asyncio.Event()


async def test_concurrent_workers_in_two_processes_keep_each_persons_order_and_lose_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """Several tasks in this process and a second process's worker (its own pool) share the inbox: every
    event is processed once, and each person's in the order they arrived."""
    async with running(tmp_path, database_url) as svc:
        channel = Slow(svc.host)
        svc.channels["slow"] = channel
        people, each = 12, 6
        events = [
            (f"e{p}-{n}", json.dumps({"user": f"u{p}", "text": "こんにちは" if n else "相談", "n": n}))
            for n in range(each)
            for p in range(people)
        ]
        channel.expected, channel.all_done = len(events), asyncio.Event()
        await channel.store_events(events)
        other_db = Database(database_url)
        other = InboxWorker(
            db=other_db, crypto=svc.crypto, channels=svc.channels, wakeup=asyncio.Event(), concurrency=4
        )
        svc.inbox.concurrency = 4
        stopping = asyncio.Event()
        workers = [asyncio.create_task(svc.inbox.run(stopping)), asyncio.create_task(other.run(stopping))]
        try:
            async with asyncio.timeout(60):
                await channel.all_done.wait()
            await asyncio.sleep(0.3)  # nothing more comes
        finally:
            stopping.set()
            await asyncio.gather(*workers)
            await other_db.dispose()

        assert len(channel.processed) == len(events), "each event once"
        for p in range(people):
            mine = [e["n"] for e in channel.processed if e["user"] == f"u{p}"]
            assert mine == list(range(each)), f"u{p} in order"
        assert {r.status for r in await rows_of(svc, Inbox)} == {InboxStatus.DONE}


async def test_webhooks_arriving_together_are_stored_in_one_insert_each_told_its_own_count(
    tmp_path: Path, database_url: str
) -> None:
    """Group commit: the webhooks that arrive while the writer is busy go together in its next insert,
    and each still learns how many of its own events were new (a redelivery in the same batch counts for
    the first only)."""
    async with running(tmp_path, database_url) as svc:
        channel = recording(svc)
        inserts: list[int] = []

        def count(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT INTO INBOX"):
                inserts.append(1)

        sync_engine = svc.db.engine.sync_engine
        sqlalchemy_event.listen(sync_engine, "before_cursor_execute", count)
        webhooks = [
            [(f"w{n}e{k}", json.dumps({"user": f"u{n}", "text": f"{k}回目"})) for k in range(n % 3 + 1)]
            for n in range(40)
        ]
        webhooks.append(webhooks[5])  # a redelivery of webhook 5, at the same moment
        counts = await asyncio.gather(*(channel.store_events(w) for w in webhooks))
        sqlalchemy_event.remove(sync_engine, "before_cursor_execute", count)

        assert counts[:40] == [n % 3 + 1 for n in range(40)]
        assert counts[40] == 0, "the redelivery stored nothing new"
        rows = await rows_of(svc, Inbox)
        assert sorted(r.external_id for r in rows) == sorted(e for w in webhooks[:40] for e, _ in w)
        assert len(inserts) < 10, f"{len(inserts)} inserts for 41 webhooks: not batched"
        # Each person's events in the order their webhook had them.
        by_user: dict[str, list[int]] = {}
        for r in sorted(rows, key=lambda r: r.id or 0):
            by_user.setdefault(r.sender, []).append(int(r.external_id.split("e")[-1]))
        assert all(ks == sorted(ks) for ks in by_user.values())
        assert await svc.inbox.process_due() == sum(counts)


async def test_a_failed_batch_fails_its_webhooks_and_the_next_ones_are_stored(tmp_path: Path) -> None:
    """The insert of a batch fails (the database went away): every webhook in it gets the error (it
    answers 500, and the platform sends it again); those after it are stored as usual."""
    async with running(tmp_path) as svc:
        channel = recording(svc)
        real = svc.inbox._insert
        failures = [ConnectionError("database gone")]

        async def flaky(conn: Any, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
            if failures:
                raise failures.pop()
            return await real(conn, rows)

        svc.inbox._insert = flaky  # type: ignore[method-assign]
        first = await asyncio.gather(
            *(channel.store_events([(f"a{n}", json.dumps({"user": "u", "text": "x"}))]) for n in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, ConnectionError) for r in first), first
        assert await rows_of(svc, Inbox) == []
        again = await asyncio.gather(
            *(channel.store_events([(f"a{n}", json.dumps({"user": "u", "text": "x"}))]) for n in range(5))
        )
        assert again == [1] * 5
        assert len(await rows_of(svc, Inbox)) == 5


async def test_a_webhook_given_up_on_still_has_its_events_stored(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        channel = recording(svc)
        task = asyncio.create_task(channel.store_events([("gone", json.dumps({"user": "u", "text": "x"}))]))
        await asyncio.sleep(0)  # queued, the writer started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if await rows_of(svc, Inbox):
                break
            await asyncio.sleep(0.02)
        assert [r.external_id for r in await rows_of(svc, Inbox)] == ["gone"]


async def test_an_urgent_event_arriving_with_ordinary_ones_keeps_its_persons_order(
    tmp_path: Path, database_url: str
) -> None:
    """A person's ordinary message and then their crisis, in two webhooks at the same moment (one batch):
    stored in that order, the first raised to the crisis's priority, and both taken before another
    person's ordinary message that came first."""
    async with running(tmp_path, database_url) as svc:
        channel = recording(svc)
        await channel.store_events([("other", json.dumps({"user": "u2", "text": "こんにちは"}))])
        await asyncio.gather(
            channel.store_events([("first", json.dumps({"user": "u1", "text": "ねえ聞いて"}))]),
            channel.store_events([("crisis", json.dumps({"user": "u1", "text": CRISIS}))]),
        )
        rows = sorted(await rows_of(svc, Inbox), key=lambda r: r.id or 0)
        assert [r.external_id for r in rows] == ["other", "first", "crisis"]
        assert rows[1].priority == rows[2].priority < rows[0].priority
        while await svc.inbox.process_one():
            pass
        assert [e["text"] for e in channel.processed] == ["ねえ聞いて", CRISIS, "こんにちは"]
