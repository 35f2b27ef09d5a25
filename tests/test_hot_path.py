"""The hot path's cost in statements: one ordinary LINE text message, from the signed webhook to the reply at
the fake LINE API, on SQLite and PostgreSQL. Counted, not timed: every SQL statement the service sends, and
on PostgreSQL every transaction (each BEGIN and COMMIT or ROLLBACK is a round trip of its own). A change
that adds statements to the path of every message fails here (README, "Load")."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from sqlalchemy import func, select
from sqlmodel import col

from bot.models import Inbox, InboxStatus, Outbox, OutboxStatus
from bot.service import Service
from tests.fake_line import FakeLine
from tests.hot_path_support import Counting, measure, one_message

# What one ordinary text message costs, end to end: the webhook's intake, the inbox worker (claim, the
# engine, done) and the outbox worker (look, claim, send, record). A new person's first message makes their
# contact and conversation; a later one reads them. (The outbox pass also looks once more and finds nothing.)
# Before the hot path was made cheap (README, "Load"): 2 + 14 + 8 for a first message, 2 + 11 + 8 for a later
# one, in 11 transactions (and on PostgreSQL a ping of three round trips before each).
#   intake: one insert of the event;
#   inbox: claim it; the contact and their latest conversation (one read); a later message: the history for
#     the triage; the writes (a first message: audit, contact, conversation; a later one: contact, the
#     conversation), the message with its reply (one insert on PostgreSQL, one each on SQLite), the outbox
#     row, and the event done, in the engine's one transaction;
#   outbox: look on each channel (LINE, the web chat), the rows that go with it, claim it and read what it
#     sends (one transaction), record it delivered; then the pass looks once more on each channel.
FIRST = {"intake": 1, "inbox": 8, "outbox": 8}
LATER = {"intake": 1, "inbox": 8, "outbox": 8}
SQLITE_EXTRA = 1  # SQLite's driver inserts the message and its reply one by one
# Transactions (BEGIN ... COMMIT or ROLLBACK) on PostgreSQL: the engine's one, and the outbox's claim with
# its read. Every other statement stands alone (autocommit: no BEGIN and COMMIT round trips).
TRANSACTIONS = {"inbox": 1, "outbox": 1}


async def test_one_ordinary_line_message_costs_a_fixed_small_number_of_statements(
    tmp_path: Path, database_url: str
) -> None:
    async def work(svc: Service, web: httpx.AsyncClient, fake: FakeLine, counting: Counting) -> None:
        # A person who already wrote once (their contact and conversation exist), then someone new.
        await one_message(svc, web, fake, Counting(svc), "U" + uuid.uuid4().hex, "こんにちは")
        warm = Counting(svc)
        await one_message(svc, web, fake, warm, "U" + uuid.uuid4().hex, "学校のことで相談があります")
        later_user = "U" + uuid.uuid4().hex
        await one_message(svc, web, fake, Counting(svc), later_user, "こんにちは")
        await one_message(svc, web, fake, counting, later_user, "学校のことで相談があります")
        extra = {"inbox": SQLITE_EXTRA} if svc.db.is_sqlite else {}
        for expected, seen in ((FIRST, warm), (LATER, counting)):
            wanted = {k: v + extra.get(k, 0) for k, v in expected.items()}
            assert dict(seen.statements) == wanted, seen.explain()
            if not svc.db.is_sqlite:
                assert dict(seen.transactions) == TRANSACTIONS, seen.explain()
        # Nothing lost, nothing doubled: every event handled once, every reply delivered once.
        async with svc.db.session() as s:
            done = await s.scalar(
                select(func.count()).select_from(Inbox).where(col(Inbox.status) == InboxStatus.DONE)
            )
            delivered = await s.scalar(
                select(func.count()).select_from(Outbox).where(col(Outbox.status) == OutboxStatus.DELIVERED)
            )
        assert done == 4
        assert delivered is not None and delivered >= 4

    await measure(tmp_path, database_url, work)
