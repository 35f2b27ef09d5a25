"""The outbox under pressure: a crisis reply goes first; a reply that cannot be delivered (a web chat whose
page is closed) never holds back another; each channel is picked by its own due time; and several
workers (two processes' pools) send each row once, in each conversation's order."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlmodel import col

from bot.db import Database
from bot.models import Contact, Conversation, Direction, Message, Outbox, OutboxStatus, Presence, Sender
from bot.outbox import OutboxWorker
from bot.types import Delivery, Outbound
from channels.webchat import WebChatChannel, _Client
from tests.engine_helpers import loopback, reply_keys, running
from tests.helpers import CRISIS, rows_of


async def test_a_crisis_reply_goes_out_first(tmp_path: Path, database_url: str) -> None:
    async with running(tmp_path, database_url) as svc:
        channel = loopback(svc)
        for i in range(4):
            await channel.say(f"p{i}", "こんにちは")
        crisis = await channel.say("crisis", CRISIS)
        rows = await rows_of(svc, Outbox)
        assert {r.priority for r in rows if r.conversation_id == crisis.conversation_id} == {0}
        assert {r.priority for r in rows if r.conversation_id != crisis.conversation_id} == {2}

        assert await svc.outbox.send_due() == len(rows)
        first = channel.sent[0]
        assert first.address == "crisis", "the crisis reply before the earlier ordinary ones"
        crisis_replies = [m for m in channel.sent if m.address == "crisis"]
        assert channel.sent[: len(crisis_replies)] == crisis_replies, "all of it, in its order"
        assert [m.address for m in channel.sent[len(crisis_replies) :]] == ["p0", "p1", "p2", "p3"]


async def _closed_web_chats(svc: Any, n: int) -> list[str]:
    """``n`` web chat people who left before their reply came: a pending reply each, no socket."""
    ids = []
    async with svc.db.session() as s, s.begin():
        for i in range(n):
            contact = Contact(
                channel="webchat",
                lookup=f"gone-{i}",
                address_enc=svc.crypto.encrypt(f"token-{i}"),
                presence=Presence.LEFT,
            )
            conv = Conversation(contact_id=contact.id, channel="webchat")
            s.add_all([contact, conv])
            await s.flush()
            msg = Message(
                conversation_id=conv.id,
                channel="webchat",
                direction=Direction.OUT,
                sender=Sender.BOT,
                text_enc=svc.crypto.encrypt("お返事です"),
            )
            s.add(msg)
            await s.flush()
            assert msg.id is not None
            s.add(Outbox(message_id=msg.id, conversation_id=conv.id, channel="webchat"))
            ids.append(conv.id)
    return ids


class _Socket:
    """A web chat page that has come back: what it is sent."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    async def send_json(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)


async def test_six_hundred_closed_web_chats_never_hold_back_a_reply_on_another_channel(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, database_url, outbox_workers=4) as svc:
        webchat = svc.channels["webchat"]
        assert isinstance(webchat, WebChatChannel)
        tried: Counter[int] = Counter()
        send = webchat.send
        all_tried = asyncio.Event()

        async def counting(out: Outbound) -> Delivery:
            tried[out.outbox_id] += 1
            if len(tried) >= 600:
                all_tried.set()
            return await send(out)

        webchat.send = counting  # type: ignore[method-assign]
        closed = await _closed_web_chats(svc, 600)
        channel = loopback(svc)
        await channel.say("line-like", "こんにちは")  # written after all of them

        stopping = asyncio.Event()
        worker = asyncio.create_task(svc.outbox.run(stopping))
        try:
            async with asyncio.timeout(30):
                await channel.delivered.wait()
            assert reply_keys([m.text for m in channel.to("line-like")]) == ["welcome"]
            async with asyncio.timeout(120):
                await all_tried.wait()
            await asyncio.sleep(1.5)  # more passes: a parked reply is never due, never tried again
        finally:
            stopping.set()
            await worker

        parked = await rows_of(svc, Outbox, col(Outbox.channel) == "webchat")
        assert len(parked) == 600
        assert {(r.status, r.attempts) for r in parked} == {(OutboxStatus.PARKED, 0)}
        assert set(tried.values()) == {1}, "each tried once, then left until the person is back"
        assert await svc.outbox.send_due() == 0

        # One of them comes back: their reply goes at once, exactly once; the others stay parked.
        back = closed[123]
        async with svc.db.session() as s:
            conv = await s.get(Conversation, back)
            assert conv is not None and conv.contact_id is not None
            contact_id = conv.contact_id
        socket = _Socket()
        webchat.clients.setdefault(contact_id, set()).add(_Client(socket, contact_id, back))  # type: ignore[arg-type]
        await svc.engine.set_presence(contact_id, Presence.CONNECTED)
        await svc.host.send_due(back)
        assert [f["text"] for f in socket.frames if f["type"] == "message"] == ["お返事です"]
        assert await svc.outbox.send_due() == 0
        statuses = Counter(r.status for r in await rows_of(svc, Outbox, col(Outbox.channel) == "webchat"))
        assert statuses == {OutboxStatus.PARKED: 599, OutboxStatus.DELIVERED: 1}


async def test_a_failing_channel_does_not_stall_the_others(tmp_path: Path, database_url: str) -> None:
    """A channel whose sends hang (a platform that does not answer) holds only its own rows."""
    async with running(tmp_path, database_url, outbox_workers=2) as svc:
        webchat = svc.channels["webchat"]
        hanging = asyncio.Event()

        async def hang(out: Outbound) -> Delivery:
            await hanging.wait()
            return Delivery.retry("timeout")

        webchat.send = hang  # type: ignore[method-assign]
        await _closed_web_chats(svc, 5)
        channel = loopback(svc)
        stopping = asyncio.Event()
        worker = asyncio.create_task(svc.outbox.run(stopping))
        try:
            await asyncio.sleep(0.3)  # the web chat's sends are hanging now
            await channel.say("someone", "こんにちは")
            async with asyncio.timeout(10):
                await channel.delivered.wait()
        finally:
            hanging.set()
            stopping.set()
            await worker


async def test_concurrent_workers_of_two_processes_keep_each_conversations_order(
    tmp_path: Path, database_url: str
) -> None:
    async with running(tmp_path, database_url, outbox_workers=4) as svc:
        channel = loopback(svc)
        users = [f"user-{i}" for i in range(10)]
        for user in users:
            await channel.say(user, "こんにちは")
            await channel.say(user, "同意")
            await channel.say(user, "相談したい")
        expected = len(await rows_of(svc, Outbox))
        other_db = Database(database_url)
        other = OutboxWorker(
            db=other_db, crypto=svc.crypto, channels=svc.channels, wakeup=asyncio.Event(), concurrency=4
        )
        stopping = asyncio.Event()
        workers = [asyncio.create_task(svc.outbox.run(stopping)), asyncio.create_task(other.run(stopping))]
        try:
            async with asyncio.timeout(60):
                while len(channel.sent) < expected:
                    channel.delivered.clear()
                    await channel.delivered.wait()
            await asyncio.sleep(0.5)  # nothing more comes
        finally:
            stopping.set()
            await asyncio.gather(*workers)
            await other_db.dispose()

        assert len(channel.sent) == expected, "each row once"
        rows = await rows_of(svc, Outbox)
        assert {(r.status, r.attempts) for r in rows} == {(OutboxStatus.DELIVERED, 1)}
        async with svc.db.session() as s:
            texts = {
                m.id: svc.crypto.decrypt(m.text_enc)
                for m in (
                    await s.scalars(select(Message).where(col(Message.direction) == Direction.OUT))
                ).all()
            }
        for user in users:
            got = [m.text for m in channel.to(user)]
            written = [
                texts[r.message_id] for r in rows if r.conversation_id == channel.to(user)[0].conversation_id
            ]
            assert got == written, f"{user}: in the order written"


async def test_a_new_reply_wakes_only_its_own_channels_loop(tmp_path: Path, database_url: str) -> None:
    """Every look for work is a statement: a reply on one channel makes that channel's loop look, and the
    other channels' loops stay asleep (they look again at their own pace, once a second when idle)."""
    async with running(tmp_path, database_url) as svc:
        looked: Counter[str] = Counter()
        original = svc.outbox._next

        async def counting(name: str, *args: Any, **kwargs: Any) -> Any:
            looked[name] += 1
            return await original(name, *args, **kwargs)

        svc.outbox._next = counting  # type: ignore[method-assign]
        channel = loopback(svc)
        stopping = asyncio.Event()
        worker = asyncio.create_task(svc.outbox.run(stopping))
        try:
            await asyncio.sleep(0.3)  # each loop's first look, then asleep
            before = Counter(looked)
            started = time.monotonic()
            for i in range(6):
                channel.delivered.clear()
                await channel.say(f"p{i}", "こんにちは")
                async with asyncio.timeout(10):
                    await channel.delivered.wait()
            after, elapsed = Counter(looked), time.monotonic() - started
        finally:
            stopping.set()
            await worker
        assert after["loopback"] - before["loopback"] >= 6, "its own loop looked for each reply"
        # Idle, a loop looks once a second: the web chat's may have looked that often meanwhile, not once for
        # each reply on the other channel (before, every reply woke every channel's loop).
        assert after["webchat"] - before["webchat"] <= math.ceil(elapsed) + 1, (before, after, elapsed)
