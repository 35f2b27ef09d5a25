"""The service on real Redis (a random key prefix per test): the queue comes back whole after Redis
lost its data, health says when Redis is down, and live updates reach every process once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bot.events import Event, EventBus, RedisEventBus
from bot.models import utcnow
from bot.redis_client import connect
from bot.service import Service
from handoff.queue import Claim, QueueEntry
from handoff.redis_queue import RedisQueue
from tests.engine_helpers import Chat
from tests.helpers import free_port, make_settings
from tests.redis_helpers import TEST_REDIS_URL, delete_prefix, prefix_keys, random_prefix, require_redis
from triage import Risk

MakeService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    await require_redis()
    p = random_prefix()
    try:
        yield p
    finally:
        await delete_prefix(p)


@pytest.fixture
async def make_service(tmp_path: Path, database_url: str, prefix: str) -> AsyncIterator[MakeService]:
    started: list[Service] = []

    async def make(*, workers: bool = False, queue_check_seconds: float = 2.0) -> Service:
        settings = make_settings(tmp_path, database_url, redis_url=TEST_REDIS_URL, redis_prefix=prefix)
        svc = Service(settings, queue_check_seconds=queue_check_seconds)
        await svc.start(workers=workers)
        started.append(svc)
        return svc

    try:
        yield make
    finally:
        for svc in started:
            await svc.stop()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


async def three_waiting(svc: Service) -> list[str]:
    """Three conversations through the loopback channel to the queue."""
    ids = []
    for user in ["u-1", "u-2", "u-3"]:
        chat = Chat(svc, user)
        for text in ["こんにちは", "同意", "相談したい"]:
            await chat.say(text)
        assert await chat.state() == "waiting"
        ids.append(chat.conversation_id)

    async def all_queued() -> bool:
        return len(await svc.queue.entries()) == 3  # the queue is told after each commit, in a task

    await eventually(all_queued)
    return ids


def by_id(entries: list[QueueEntry]) -> dict[str, QueueEntry]:
    return {e.conversation_id: e for e in entries}


async def test_the_service_runs_on_redis(make_service: MakeService, prefix: str) -> None:
    svc = await make_service()
    assert isinstance(svc.queue, RedisQueue) and isinstance(svc.events, RedisEventBus)
    assert await svc.queue.intact()
    assert await svc.health() == {"database": True, "queue": True}
    assert f"{prefix}:queue:epoch" in await prefix_keys(prefix)


async def test_deleted_keys_are_rebuilt_from_the_database_in_the_same_order(
    make_service: MakeService, prefix: str
) -> None:
    svc = await make_service()
    ids = await three_waiting(svc)
    now = utcnow()
    order = [e.conversation_id for e in await svc.queue.ordered(now)]
    entries = by_id(await svc.queue.entries())
    assert sorted(order) == sorted(ids)

    assert await delete_prefix(prefix) > 0  # Redis lost its data
    assert not await svc.queue.intact()
    assert await svc.health() == {"database": True, "queue": False}
    assert await svc.queue.entries() == []

    await svc.rebuild_queue()
    assert await svc.queue.intact()
    assert await svc.health() == {"database": True, "queue": True}
    assert [e.conversation_id for e in await svc.queue.ordered(now)] == order
    assert by_id(await svc.queue.entries()) == entries


async def test_nothing_is_claimed_while_the_queue_is_not_made_again(
    make_service: MakeService, prefix: str
) -> None:
    """Redis lost its data: a counsellor already at their limit must not claim a conversation queued
    before the queue is made again (Redis does not know what they hold until then)."""
    svc = await make_service()
    first, second, third = await three_waiting(svc)
    assert await svc.queue.claim(first, 7, 1) is Claim.CLAIMED
    await delete_prefix(prefix)  # Redis lost its data
    entry = QueueEntry(second, Risk.LOW, utcnow(), "loopback")
    await svc.queue.put(entry)  # a conversation queued before the rebuild
    assert await svc.queue.claim(second, 7, 1) is Claim.TAKEN
    await svc.queue.rebuild([entry, QueueEntry(third, Risk.LOW, utcnow(), "loopback")], {7: {first}})
    assert await svc.queue.claim(second, 7, 1) is Claim.FULL
    assert await svc.queue.claim(second, 8, 1) is Claim.CLAIMED


async def test_the_watchdog_rebuilds_the_queue(make_service: MakeService, prefix: str) -> None:
    svc = await make_service(workers=True, queue_check_seconds=0.1)
    await three_waiting(svc)
    now = utcnow()
    order = [e.conversation_id for e in await svc.queue.ordered(now)]
    entries = by_id(await svc.queue.entries())

    for _ in range(2):  # and again: it keeps watching
        await delete_prefix(prefix)

        async def whole_again() -> bool:
            return await svc.queue.intact() and len(await svc.queue.entries()) == 3

        await eventually(whole_again)
        assert [e.conversation_id for e in await svc.queue.ordered(now)] == order
        assert by_id(await svc.queue.entries()) == entries


async def test_health_says_queue_down_while_redis_is_unreachable(
    make_service: MakeService, tmp_path: Path, prefix: str
) -> None:
    up = await make_service()
    closed = free_port()  # a port that nothing listens on
    (tmp_path / "down").mkdir()
    down = Service(
        make_settings(tmp_path / "down", redis_url=f"redis://127.0.0.1:{closed}/0", redis_prefix=prefix),
        queue_check_seconds=0.05,
    )
    try:
        assert await down.health() == {"database": True, "queue": False}
        # The watchdog keeps trying without falling over.
        stopping = asyncio.Event()
        watchdog = asyncio.create_task(down.watch_queue(stopping))
        await asyncio.sleep(0.3)
        assert not watchdog.done()
        stopping.set()
        await asyncio.wait_for(watchdog, 2.0)
    finally:
        await down.stop()
    assert await up.health() == {"database": True, "queue": True}


# -- live updates -------------------------------------------------------------------------------------


async def drain(q: asyncio.Queue[Event], seconds: float = 0.3) -> list[Event]:
    """What arrives within a moment (after what was expected, nothing more must come)."""
    out = []
    try:
        while True:
            out.append(await asyncio.wait_for(q.get(), seconds))
    except TimeoutError:
        return out


async def test_an_event_reaches_every_process_once(prefix: str) -> None:
    a = RedisEventBus.from_url(TEST_REDIS_URL, prefix=prefix)
    b = RedisEventBus.from_url(TEST_REDIS_URL, prefix=prefix)
    other = RedisEventBus.from_url(TEST_REDIS_URL, prefix=random_prefix())
    for bus in (a, b, other):
        await bus.start()
    try:
        async with a.subscribe() as a1, a.subscribe() as a2, b.subscribe() as b1, other.subscribe() as o1:
            first = Event("conversation", "conv-1", "contact-1", "waiting", "high")
            second = Event("queue")
            a.publish(first)
            b.publish(second)
            for q in (a1, a2, b1):
                got = [await asyncio.wait_for(q.get(), 5.0), await asyncio.wait_for(q.get(), 5.0)]
                got += await drain(q)
                assert sorted(got, key=lambda e: e.kind) == [first, second]
            assert await drain(o1) == []  # another prefix: another service
    finally:
        for bus in (a, b, other):
            await bus.stop()


async def test_an_event_on_the_wire_carries_ids_and_states_only(prefix: str) -> None:
    bus = RedisEventBus.from_url(TEST_REDIS_URL, prefix=prefix)
    raw = connect(TEST_REDIS_URL)
    pubsub = raw.pubsub()
    await pubsub.subscribe(bus.channel)
    await bus.start()
    try:
        bus.publish(Event("alert", "conv-1", "contact-1", "waiting", "crisis"))
        message = None
        while message is None or message["type"] != "message":
            message = await pubsub.get_message(timeout=5.0)
            assert message is not None
        assert json.loads(message["data"]) == {
            "kind": "alert",
            "conversation_id": "conv-1",
            "contact_id": "contact-1",
            "state": "waiting",
            "risk": "crisis",
        }
        assert {f.name for f in fields(Event)} == {"kind", "conversation_id", "contact_id", "state", "risk"}
        # What is not an event is ignored, and the listener goes on.
        async with bus.subscribe() as q:
            await raw.publish(bus.channel, "not json")
            await raw.publish(bus.channel, json.dumps({"kind": 1}))
            bus.publish(Event("queue"))
            assert await asyncio.wait_for(q.get(), 5.0) == Event("queue")
            assert await drain(q) == []
    finally:
        await bus.stop()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await raw.aclose()


async def test_the_listener_subscribes_again_when_its_connection_is_lost(prefix: str) -> None:
    name = f"{prefix}-listener"
    listening = RedisEventBus(
        Redis.from_url(TEST_REDIS_URL, decode_responses=True, client_name=name), prefix=prefix
    )
    publishing = RedisEventBus.from_url(TEST_REDIS_URL, prefix=prefix)
    admin = connect(TEST_REDIS_URL)
    await listening.start()
    await publishing.start()
    try:
        async with listening.subscribe() as q:
            publishing.publish(Event("queue", state="before"))
            assert (await asyncio.wait_for(q.get(), 5.0)).state == "before"
            clients = await admin.client_list()
            assert await admin.client_kill_filter(_id=next(c["id"] for c in clients if c["name"] == name))
            # Events published while it is away are lost; it is back within a few seconds.
            for _ in range(100):
                publishing.publish(Event("queue", state="after"))
                try:
                    if (await asyncio.wait_for(q.get(), 0.1)).state == "after":
                        break
                except TimeoutError:
                    pass
            else:
                pytest.fail("the listener did not come back")
    finally:
        await listening.stop()
        await publishing.stop()
        await admin.aclose()


async def test_the_in_process_bus_is_unchanged() -> None:
    bus = EventBus()
    await bus.start()
    async with bus.subscribe() as q:
        bus.publish(Event("queue"))
        assert q.get_nowait() == Event("queue")
        assert q.empty()
    await bus.stop()
