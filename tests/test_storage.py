"""Storage on SQLite and PostgreSQL: migrations, encryption at rest, idempotent ingest, UTC times, the
append-only audit log, the outbox (retries, order, leases, concurrent workers), retention and the
de-identified statistics. Every test here runs on both databases (the ``database_url`` fixture)."""

from __future__ import annotations

import asyncio
import re
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError, StatementError
from sqlmodel import SQLModel, col

from bot.crypto import Crypto, DecryptError
from bot.db import Database, alembic_config
from bot.images import file_item
from bot.models import (
    AuditLog,
    Contact,
    Conversation,
    Direction,
    Handoff,
    Media,
    Message,
    Outbox,
    OutboxStatus,
    StatCount,
    utcnow,
)
from bot.outbox import OutboxWorker
from bot.service import Service
from bot.types import Delivery, Inbound, Kind
from channels.loopback import LoopbackChannel
from tests.engine_helpers import Chat, loopback, reply_keys, running
from tests.helpers import rows_of
from tests.pictures import screenshot

JST = ZoneInfo("Asia/Tokyo")
SENTENCE = "駅前のパン屋で店長に毎晩どなられて眠れません"  # triage quotes どなら in its reasons
USER = "line-user-U4f9c2e81"


# -- helpers ---------------------------------------------------------------------------------------


async def rows(svc: Service, model: Any, *where: Any) -> list[Any]:
    async with svc.db.session() as s:
        return list((await s.scalars(select(model).where(*where))).all())


async def count(svc: Service, model: Any, *where: Any) -> int:
    async with svc.db.session() as s:
        return (await s.scalar(select(func.count()).select_from(model).where(*where))) or 0


async def raw_cells(svc: Service, table: str) -> list[str]:
    """Every value of every row of a table, as text, read with plain SQL (no decryption)."""
    async with svc.db.engine.connect() as conn:
        result = await conn.execute(text(f"SELECT * FROM {table}"))
        return [str(v) for row in result.all() for v in row]


async def set_outbox(svc: Service, row_id: int | None, **values: Any) -> None:
    async with svc.db.session() as s, s.begin():
        await s.execute(update(Outbox).where(col(Outbox.id) == row_id).values(**values))


def keys_to(svc: Service, user: str) -> list[str]:
    return reply_keys([m.text for m in loopback(svc).to(user)])


# -- 1. migrations ---------------------------------------------------------------------------------


async def test_migrations_match_the_models_and_can_run_twice(database_url: str) -> None:
    db = Database(database_url)
    try:
        await db.migrate()
        await db.migrate()  # already at head: nothing to do, nothing breaks

        def diff(sync_conn: Any) -> list[Any]:
            ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, SQLModel.metadata))

        async with db.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        assert [v for (v,) in versions] == [head]
    finally:
        await db.dispose()


async def test_instances_starting_together_migrate_one_after_the_other(database_url: str) -> None:
    """Several instances started at once on a new release (compose up, a restart of every instance) each
    run the migrations at start: one migrates, the others wait for its lock and find the schema at head
    (without the lock they create the same tables at once and all but one fail to start)."""
    script = "import asyncio, sys; from bot.db import Database; asyncio.run(Database(sys.argv[1]).migrate())"
    # Processes, as instances are: Alembic's context is one per process.
    starts = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, database_url, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    for p in starts:
        _, err = await asyncio.wait_for(p.communicate(), timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        assert [v for (v,) in versions] == [head]
    finally:
        await db.dispose()


# -- 2. encryption at rest -------------------------------------------------------------------------


async def test_text_and_user_id_are_encrypted_at_rest(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        chat = Chat(svc, USER)
        await chat.say("こんにちは")
        await chat.say(SENTENCE)

        for table in [t.name for t in SQLModel.metadata.sorted_tables]:
            for cell in await raw_cells(svc, table):
                for secret in (SENTENCE, "どなら", "眠れません", USER):
                    assert secret not in cell, f"{secret!r} in plain text in {table}"

        (contact,) = await rows(svc, Contact)
        assert re.fullmatch(r"[0-9a-f]{64}", contact.lookup)
        assert contact.lookup == svc.crypto.lookup("loopback", USER)
        assert svc.crypto.decrypt(contact.address_enc) == USER

        inbound = await rows(svc, Message, col(Message.direction) == Direction.IN)
        assert [svc.crypto.decrypt(m.text_enc) for m in inbound] == ["こんにちは", SENTENCE]
        told = inbound[1]
        assert "どなら" in svc.crypto.decrypt(told.triage_enc)

        stranger = Crypto([Fernet.generate_key()])
        for token in (told.text_enc, told.triage_enc, contact.address_enc):
            with pytest.raises(DecryptError):
                stranger.decrypt(token)
        assert stranger.lookup("loopback", USER) != contact.lookup


# -- 3. idempotent ingest --------------------------------------------------------------------------


async def test_the_same_external_id_is_stored_and_answered_once(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        inbound = Inbound(channel="loopback", user_id=USER, text="こんにちは", external_id="evt-1")
        first = await svc.engine.handle(inbound)
        second = await svc.engine.handle(inbound)
        await svc.outbox.send_due()

        assert not first.duplicate and first.replies == 1
        assert second.duplicate and second.conversation_id == first.conversation_id
        assert second.replies == 0
        assert await count(svc, Message, col(Message.direction) == Direction.IN) == 1
        assert keys_to(svc, USER) == ["welcome"]


async def test_concurrent_deliveries_of_one_event_are_handled_once(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        inbound = Inbound(channel="loopback", user_id=USER, text="こんにちは", external_id="evt-1")
        results = await asyncio.gather(svc.engine.handle(inbound), svc.engine.handle(inbound))
        await svc.outbox.send_due()

        assert sorted(r.duplicate for r in results) == [False, True]
        assert await count(svc, Message, col(Message.direction) == Direction.IN) == 1
        assert await count(svc, Conversation) == 1
        assert keys_to(svc, USER) == ["welcome"]


async def test_two_instances_racing_for_one_event_answer_once(tmp_path: Path, database_url: str) -> None:
    """Two processes (each its own engine and locks) get the same webhook: the database decides."""
    async with running(tmp_path, database_url) as svc:
        other = Service(svc.settings)  # same database and keys, separate engine, pool and locks
        try:
            inbound = Inbound(channel="loopback", user_id=USER, text="こんにちは", external_id="evt-1")
            results = await asyncio.gather(svc.engine.handle(inbound), other.engine.handle(inbound))
            await svc.outbox.send_due()
        finally:
            await other.db.dispose()

        assert sorted(r.duplicate for r in results) == [False, True]
        assert await count(svc, Message, col(Message.direction) == Direction.IN) == 1
        assert await count(svc, Contact) == 1
        assert keys_to(svc, USER) == ["welcome"]


async def test_two_instances_with_two_first_messages_of_a_new_person_keep_both(
    tmp_path: Path, database_url: str
) -> None:
    """Different events are not duplicates: losing the race to create the contact must not lose one."""
    async with running(tmp_path, database_url) as svc:
        other = Service(svc.settings)
        try:
            first = Inbound(channel="loopback", user_id=USER, text="こんにちは", external_id="evt-1")
            second = Inbound(channel="loopback", user_id=USER, text="相談したい", external_id="evt-2")
            results = await asyncio.gather(svc.engine.handle(first), other.engine.handle(second))
        finally:
            await other.db.dispose()

        assert [r.duplicate for r in results] == [False, False]
        assert await count(svc, Message, col(Message.direction) == Direction.IN) == 2


# -- 4. timezone -----------------------------------------------------------------------------------


async def test_times_come_back_aware_in_utc(tmp_path: Path, database_url: str) -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=JST)  # 2026-01-01 18:04:05 UTC
    async with running(tmp_path, database_url) as svc:
        await svc.engine.handle(Inbound(channel="loopback", user_id=USER, text="こんにちは", at=at))
        await svc.outbox.send_due()

        (msg,) = await rows(svc, Message, col(Message.direction) == Direction.IN)
        (conv,) = await rows(svc, Conversation)
        (contact,) = await rows(svc, Contact)
        (row,) = await rows_of(svc, Outbox)
        times = [msg.created_at, conv.created_at, conv.updated_at, contact.created_at]
        times += [row.next_attempt_at, row.delivered_at]
        for t in times:
            assert t is not None and t.tzinfo is not None and t.utcoffset() == timedelta(0), t
        assert msg.created_at == at and msg.created_at.tzinfo is UTC
        assert (msg.created_at.hour, msg.created_at.day) == (18, 1)
        assert any("2026-01-01 18:04:05" in c for c in await raw_cells(svc, "message"))  # stored as UTC

        async with svc.db.session() as s:
            s.add(AuditLog(actor="system", action="test", at=datetime(2026, 1, 1)))  # noqa: DTZ001
            with pytest.raises(StatementError, match="naive datetime"):
                await s.flush()


# -- 5. audit log ----------------------------------------------------------------------------------


async def test_audit_log_is_append_only(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        async with svc.db.session() as s, s.begin():
            s.add(AuditLog(actor="counsellor-a", action="note", detail="kept"))
        for sql in ("UPDATE audit_log SET detail = 'changed'", "DELETE FROM audit_log"):
            async with svc.db.engine.connect() as conn:
                with pytest.raises(DBAPIError, match="append-only"):
                    await conn.execute(text(sql))
                await conn.rollback()
        (entry,) = await rows(svc, AuditLog)
        assert (entry.actor, entry.action, entry.detail) == ("counsellor-a", "note", "kept")


# -- 6. outbox -------------------------------------------------------------------------------------


async def test_a_retried_delivery_waits_then_goes_out_once(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        channel = loopback(svc)
        channel.fail_next = [Delivery.retry("503")]
        await channel.say(USER, "こんにちは")
        now = utcnow()
        assert await svc.outbox.send_due(now=now) == 0

        (row,) = await rows_of(svc, Outbox)
        assert (row.status, row.attempts, row.last_error) == (OutboxStatus.PENDING, 1, "503")
        assert row.next_attempt_at > now and row.lease_until is None
        assert await svc.outbox.send_due(now=now) == 0  # not due yet
        assert channel.sent == []

        later = row.next_attempt_at + timedelta(seconds=1)
        assert await svc.outbox.send_due(now=later) == 1
        assert await svc.outbox.send_due(now=later + timedelta(hours=1)) == 0
        (row,) = await rows_of(svc, Outbox)
        assert (row.status, row.attempts, row.last_error) == (OutboxStatus.DELIVERED, 2, "")
        assert keys_to(svc, USER) == ["welcome"]


async def test_a_failed_delivery_is_recorded_and_not_sent(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        channel = loopback(svc)
        channel.fail_next = [Delivery.failed("user blocked the account")]
        await channel.say(USER, "こんにちは")
        assert await svc.outbox.send_due() == 0
        assert await svc.outbox.send_due(now=utcnow() + timedelta(days=1)) == 0

        (row,) = await rows_of(svc, Outbox)
        assert (row.status, row.last_error) == (OutboxStatus.FAILED, "user blocked the account")
        assert channel.sent == []


async def test_a_conversation_keeps_its_order_when_the_first_reply_is_retried(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, database_url) as svc:
        channel = loopback(svc)
        channel.fail_next = [Delivery.retry("503")]
        await channel.say(USER, "相談したい")  # two replies: welcome, then waiting
        await channel.say("someone-else", "こんにちは")
        now = utcnow()
        assert await svc.outbox.send_due(now=now) == 1  # only the other conversation's reply

        first, second, other = await rows_of(svc, Outbox)
        assert (first.status, first.attempts) == (OutboxStatus.PENDING, 1)
        assert (second.status, second.attempts) == (OutboxStatus.PENDING, 0)  # waits for the first
        assert other.status == OutboxStatus.DELIVERED
        assert keys_to(svc, USER) == []

        assert await svc.outbox.send_due(now=first.next_attempt_at + timedelta(seconds=1)) == 2
        assert keys_to(svc, USER) == ["welcome", "waiting"]


async def test_a_batching_channel_gets_waiting_messages_together_and_retries_the_same_group(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a channel that sends several messages at once (LINE), a conversation's waiting messages go in
    one send; a group that failed is retried as the same group (a push's retry key names its rows),
    and a message written meanwhile waits for the next send."""
    monkeypatch.setattr(LoopbackChannel, "batch", 5)
    async with running(tmp_path, database_url) as svc:
        channel = loopback(svc)
        channel.fail_next = [Delivery.retry("503")]
        await channel.say(USER, "相談したい")  # two replies: welcome, then waiting
        now = utcnow()
        assert await svc.outbox.send_due(now=now) == 0
        first, second = await rows_of(svc, Outbox)
        assert [(r.status, r.attempts) for r in (first, second)] == [(OutboxStatus.PENDING, 1)] * 2

        await channel.say(USER, "まだですか")  # a newer message, and its reply
        later = max(first.next_attempt_at, second.next_attempt_at) + timedelta(seconds=1)
        assert await svc.outbox.send_due(now=later) == 3
        rows_ = await rows_of(svc, Outbox)
        assert len(rows_) == 3 and all(r.status == OutboxStatus.DELIVERED for r in rows_)
        assert channel.groups == [[first.id, second.id]], "the retried pair together, the newer one alone"
        assert keys_to(svc, USER)[:2] == ["welcome", "waiting"]


async def test_a_reply_being_sent_holds_back_the_next_one(tmp_path: Path, database_url: str) -> None:
    """While one worker has the first reply out (a live lease), another must not send the second."""
    async with running(tmp_path, database_url) as svc:
        await loopback(svc).say(USER, "相談したい")
        now = utcnow()
        first, _ = await rows_of(svc, Outbox)
        await set_outbox(
            svc, first.id, status=OutboxStatus.SENDING, attempts=1, lease_until=now + timedelta(seconds=30)
        )

        await svc.outbox.send_due(now=now)
        assert keys_to(svc, USER) == []
        (_, second) = await rows_of(svc, Outbox)
        assert second.status == OutboxStatus.PENDING


async def test_an_expired_lease_is_sent_again_once(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        await loopback(svc).say(USER, "こんにちは")
        now = utcnow()
        (row,) = await rows_of(svc, Outbox)
        # A worker claimed the row and died before it recorded anything.
        await set_outbox(
            svc, row.id, status=OutboxStatus.SENDING, attempts=1, lease_until=now + timedelta(seconds=30)
        )

        assert await svc.outbox.send_due(now=now) == 0  # the lease still holds
        after = now + timedelta(seconds=31)
        assert await svc.outbox.send_due(now=after) == 1
        assert await svc.outbox.send_due(now=after + timedelta(minutes=5)) == 0

        (row,) = await rows_of(svc, Outbox)
        assert (row.status, row.attempts, row.lease_until) == (OutboxStatus.DELIVERED, 2, None)
        assert keys_to(svc, USER) == ["welcome"]


async def test_concurrent_workers_send_each_row_once(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        users = [f"user-{i}" for i in range(4)]
        for user in users:
            await loopback(svc).say(user, "相談したい")  # two replies each
        other_db = Database(database_url)
        other = OutboxWorker(db=other_db, crypto=svc.crypto, channels=svc.channels, wakeup=asyncio.Event())
        try:
            sent = await asyncio.gather(svc.outbox.send_due(), other.send_due())
            sent += await asyncio.gather(svc.outbox.send_due(), other.send_due())  # what order held back
        finally:
            await other_db.dispose()

        assert sum(sent) == 2 * len(users)
        assert all(n == 1 for n in Counter((m.address, m.text) for m in loopback(svc).sent).values())
        for user in users:
            assert keys_to(svc, user) == ["welcome", "waiting"]
        assert {r.status for r in await rows_of(svc, Outbox)} == {OutboxStatus.DELIVERED}
        assert {r.attempts for r in await rows_of(svc, Outbox)} == {1}


# -- 7. retention ----------------------------------------------------------------------------------


async def _picture(svc: Service, user: str) -> None:
    item = file_item("shot.png", "image/png", screenshot(40, 80))
    assert item.picture is not None
    await loopback(svc).receive(Inbound(channel="loopback", user_id=user, kind=Kind.MEDIA, items=(item,)))


async def test_retention_purges_old_closed_conversations_only(tmp_path: Path, database_url: str) -> None:
    now = utcnow()
    long_ago = now - timedelta(days=91)
    async with running(tmp_path, database_url, retention_days=90) as svc:

        async def talk(user: str, at: datetime, *texts: str) -> Chat:
            svc.engine.clock = lambda: at
            chat = Chat(svc, user)
            for t in texts:
                await chat.say(t)
            return chat

        old = await talk("old", long_ago, "相談したい")
        await _picture(svc, "old")  # a picture goes with its conversation
        await talk("old", long_ago, "終了")  # handed off, then closed
        returning = await talk("returning", long_ago, "相談したい", "終了")
        await talk("returning", now, "こんにちは")  # a new conversation: the contact stays
        recent = await talk("recent", now - timedelta(days=1), "相談したい", "終了")
        open_ = await talk("open", long_ago, "こんにちは", "同意")  # old but never closed
        assert await count(svc, Handoff, col(Handoff.conversation_id) == old.conversation_id) == 1

        assert await count(svc, Media, col(Media.conversation_id) == old.conversation_id) == 1
        assert await svc.retention.sweep(now=now) == 2
        assert await count(svc, Media) == 0
        for gone in (old.conversation_id, returning.conversation_id):
            for model in (Message, Outbox, Handoff):
                assert await count(svc, model, col(model.conversation_id) == gone) == 0
            assert await count(svc, Conversation, col(Conversation.id) == gone) == 0
        kept = {c.id for c in await rows(svc, Conversation)}
        assert recent.conversation_id in kept and open_.conversation_id in kept and len(kept) == 3
        lookups = {c.lookup for c in await rows(svc, Contact)}
        assert lookups == {svc.crypto.lookup("loopback", u) for u in ("returning", "recent", "open")}

        day = long_ago.astimezone(JST).date()
        stats = await rows(svc, StatCount, col(StatCount.day) == day)
        by_metric: Counter[str] = Counter()
        for s in stats:
            if s.category == "*":  # the rows that count each conversation once
                by_metric[s.metric] += s.count
        assert by_metric == {"conversations": 2, "handed_off": 2}
        assert await svc.retention.sweep(now=now) == 0


async def test_an_erased_conversation_is_gone_once_its_last_reply_is_out(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, database_url) as svc:
        chat = Chat(svc, USER)
        await chat.say("相談したい")
        await chat.say(SENTENCE)
        await _picture(svc, USER)
        await chat.say("削除")
        loopback(svc).fail_next = [Delivery.retry("503")]
        await chat.say("削除する")

        # At once: nothing the person wrote or sent is left; only the reply that says so, waiting to go.
        assert await count(svc, Media) == 0
        (left,) = await rows(svc, Message)
        assert left.direction == Direction.OUT
        assert reply_keys([svc.crypto.decrypt(left.text_enc)]) == ["erase_done"]
        conv = await chat.conversation()
        assert conv.erased and conv.state == "closed"

        now = utcnow()
        assert await svc.retention.sweep(now=now) == 0  # the contact is needed to send erase_done
        assert await count(svc, Contact) == 1

        (row,) = await rows_of(svc, Outbox, col(Outbox.status) == OutboxStatus.PENDING)
        assert await svc.outbox.send_due(now=row.next_attempt_at + timedelta(seconds=1)) == 1
        assert keys_to(svc, USER)[-1] == "erase_done"

        assert await svc.retention.sweep(now=now) == 1
        for model in (Message, Outbox, Handoff, Conversation, Contact):
            assert await count(svc, model) == 0, model.__name__
        conversations = (col(StatCount.metric) == "conversations") & (col(StatCount.category) == "*")
        assert await count(svc, StatCount, conversations) == 1


# -- 8. statistics ---------------------------------------------------------------------------------


async def test_statistics_count_closed_conversations_by_dimension(tmp_path: Path, database_url: str) -> None:
    at = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)  # 2 March in Japan: the day is counted in Japan
    dialogues = {
        "a": [
            "こんにちは",
            "同意",
            "クラスでいじめられていて学校に行けない",
            "16〜18歳",
            "不登校で学校に行けていません",
            "終了",
        ],
        "b": ["こんにちは", "同意", "不登校で学校に行けていません", "16〜18歳", "終了"],
        "c": ["夫に毎日殴られていて、家に帰るのがこわいです", "同意", "相談したい", "終了"],
        "d": ["もう死にたい。今から飛び降りる", "終了"],
    }
    async with running(tmp_path, database_url) as svc:
        svc.engine.clock = lambda: at
        ids = []
        for user, texts in dialogues.items():
            chat = Chat(svc, user)
            for t in texts:
                await chat.say(t)
            assert await chat.state() == "closed", user
            ids.append(chat.conversation_id)

        stats = await rows(svc, StatCount)
        got = {(s.day, s.channel, s.risk, s.category, s.age_band, s.metric): s.count for s in stats}
        d = date(2026, 3, 2)
        assert got == {
            # Each conversation once, under "*", for every metric ...
            (d, "loopback", "medium", "*", "16-18", "conversations"): 2,
            (d, "loopback", "high", "*", "", "conversations"): 1,
            (d, "loopback", "high", "*", "", "handed_off"): 1,
            (d, "loopback", "crisis", "*", "", "conversations"): 1,
            (d, "loopback", "crisis", "*", "", "handed_off"): 1,
            (d, "loopback", "crisis", "*", "", "emergencies"): 1,
            # ... and once in each of its categories.
            (d, "loopback", "medium", "bullying", "16-18", "conversations"): 1,
            (d, "loopback", "medium", "school_refusal", "16-18", "conversations"): 2,
            (d, "loopback", "high", "dv", "", "conversations"): 1,
            (d, "loopback", "crisis", "suicide", "", "conversations"): 1,
        }
        columns = {c.name for c in StatCount.__table__.columns}  # type: ignore[attr-defined]
        assert columns == {"id", "day", "channel", "risk", "category", "age_band", "metric", "count"}
        cells = await raw_cells(svc, "stat_count")
        assert not any(i in cell for i in ids for cell in cells)
        assert not any(t in cell for texts in dialogues.values() for t in texts for cell in cells)
