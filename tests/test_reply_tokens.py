"""Reply tokens kept where every process of the service finds them (bot/reply_tokens.py).

The store on its own, in-process and on real Redis: single use, the latest replaces, expiry, two takers
racing, Redis unreachable. Then the reason it exists: one instance's inbox worker takes a LINE event and
another instance's outbox worker sends the answer; with Redis that answer is a free reply, not a push."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from bot.redis_client import connect
from bot.reply_tokens import Kept, RedisReplyTokens, ReplyTokens
from bot.service import Service
from bot.web import create_app
from tests.engine_helpers import started
from tests.fake_line import FakeLine
from tests.helpers import free_port, postgres_database
from tests.hot_path_support import ACCESS_TOKEN, line_settings, signature, text_event
from tests.redis_helpers import TEST_REDIS_URL, delete_prefix, prefix_keys, random_prefix, require_redis


@asynccontextmanager
async def redis_store() -> AsyncIterator[tuple[str, RedisReplyTokens]]:
    """A Redis store under a key prefix of its own (deleted afterwards), with the prefix."""
    await require_redis()
    prefix = random_prefix()
    tokens = RedisReplyTokens.from_url(TEST_REDIS_URL, prefix=prefix)
    try:
        yield prefix, tokens
    finally:
        await tokens.close()
        await delete_prefix(prefix)


@pytest.fixture
async def raw_redis() -> AsyncIterator[Redis]:
    """A plain client, to look at (or put) what the store keeps."""
    client = connect(TEST_REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ReplyTokens]:
    if request.param == "memory":
        yield ReplyTokens()
        return
    async with redis_store() as (_, tokens):
        yield tokens


async def test_a_token_is_taken_once(store: ReplyTokens) -> None:
    kept = Kept("token-1", 1_700_000_000.5)
    await store.keep("k", kept, 30)
    assert await store.peek("k") == kept, "peek leaves it"
    assert await store.take("k") == kept
    assert await store.take("k") is None, "single use"
    assert await store.peek("k") is None


async def test_the_latest_token_replaces_and_keys_are_apart(store: ReplyTokens) -> None:
    await store.keep("person-a", Kept("old", 1.0), 30)
    await store.keep("person-a", Kept("new", 2.0, maybe_used=True), 30)
    await store.keep("person-b", Kept("theirs", 3.0), 30)
    assert await store.take("person-a") == Kept("new", 2.0, maybe_used=True)
    assert await store.take("person-b") == Kept("theirs", 3.0)


async def test_a_token_expires_with_its_time(store: ReplyTokens) -> None:
    await store.keep("k", Kept("soon", 1.0), 0.2)
    await store.keep("never", Kept("stale", 1.0), 0)  # no time left: not kept at all
    assert await store.peek("k") is not None
    await asyncio.sleep(0.35)
    assert await store.take("k") is None
    assert await store.take("never") is None


async def test_two_processes_racing_for_one_token_only_one_gets_it() -> None:
    async with redis_store() as (prefix, one):
        two = RedisReplyTokens.from_url(TEST_REDIS_URL, prefix=prefix)
        try:
            for round_ in range(50):
                await one.keep(f"k{round_}", Kept(f"t{round_}", 1.0), 30)
                got = await asyncio.gather(one.take(f"k{round_}"), two.take(f"k{round_}"))
                assert sorted(g is not None for g in got) == [False, True], got
        finally:
            await two.close()


async def test_keys_expire_in_redis_and_hold_no_platform_id(raw_redis: Redis) -> None:
    async with redis_store() as (prefix, tokens):
        await tokens.keep("0123abcd", Kept("tok", 5.0), 40)
        [key] = await prefix_keys(prefix)
        assert key == f"{prefix}:reply-token:0123abcd"
        assert 0 < await raw_redis.pttl(key) <= 40_000


async def test_redis_unreachable_keeps_nothing_and_finds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    tokens = RedisReplyTokens.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        await tokens.keep("k", Kept("tok", 1.0), 30)  # no exception: the answer will be pushed
        assert await tokens.take("k") is None
        assert await tokens.peek("k") is None
    finally:
        await tokens.close()
    assert "will be pushed" in caplog.text
    assert "tok" not in caplog.text.replace("token", "")


async def test_a_stored_value_that_is_not_ours_is_ignored(raw_redis: Redis) -> None:
    async with redis_store() as (prefix, tokens):
        await raw_redis.set(f"{prefix}:reply-token:k", "not json", px=10_000)
        assert await tokens.take("k") is None


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "each-its-own-memory"])
async def test_an_answer_sent_by_another_instance_uses_the_events_reply_token(
    tmp_path: Path, shared: bool
) -> None:
    """Instance A takes the webhook and its inbox worker runs the engine; instance B's outbox worker
    sends the answer. With the tokens in Redis, B replies with the event's token (free); each with its own
    memory (the way it was), B could only push."""
    if shared:
        await require_redis()
    prefix = random_prefix()
    users = [f"U{n:032x}" for n in range(6)]
    with FakeLine(ACCESS_TOKEN) as fake:
        async with postgres_database() as database_url:
            settings = line_settings(
                tmp_path, database_url, fake, redis_url=TEST_REDIS_URL if shared else "", redis_prefix=prefix
            )
            try:
                async with started(settings) as a, started(settings) as b:
                    await _take_on(a, fake, users)
                    sent = await b.outbox.send_due()
                    assert sent == len(users)
            finally:
                if shared:
                    await delete_prefix(prefix)
    ways = [fake.to(u)[0].via for u in users if fake.to(u)]
    assert len(ways) == len(users), "every person answered once"
    assert all(len(fake.to(u)) == 1 for u in users), "nobody answered twice"
    assert ways == (["reply"] * len(users) if shared else ["push"] * len(users))


async def _take_on(svc: Service, fake: FakeLine, users: list[str]) -> None:
    """Each person's message through ``svc``'s webhook and inbox worker (the engine writes the answer to
    the shared outbox; nothing is sent here)."""
    transport = httpx.ASGITransport(app=create_app(service=svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://tsunagi") as web:
        for user in users:
            event = text_event(user, "こんにちは", fake.issue_token(user))
            raw = json.dumps({"destination": "U" + "f" * 32, "events": [event]}).encode()
            headers = {"Content-Type": "application/json", "X-Line-Signature": signature(raw)}
            r = await web.post("/webhooks/line", content=raw, headers=headers)
            assert r.status_code == 200, r.text
            assert await svc.inbox.process_one()
