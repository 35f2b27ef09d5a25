"""Real Redis for tests (docs/contract.md): ``TSUNAGI_TEST_REDIS_URL``, a random key prefix per
test, and the prefix's keys deleted afterwards (never FLUSHALL: the server may be shared)."""

from __future__ import annotations

import os
import uuid

from redis.exceptions import RedisError

from bot.redis_client import connect
from tests.helpers import unavailable

TEST_REDIS_URL = os.environ.get("TSUNAGI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def random_prefix() -> str:
    return f"tsunagi-test-{uuid.uuid4().hex[:12]}"


async def require_redis(url: str = TEST_REDIS_URL) -> None:
    """Fails under CI, skips elsewhere, when Redis does not answer."""
    client = connect(url)
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        unavailable(f"Redis at {url}", e)
    finally:
        await client.aclose()


async def prefix_keys(prefix: str, url: str = TEST_REDIS_URL) -> list[str]:
    client = connect(url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        await client.aclose()


async def delete_prefix(prefix: str, url: str = TEST_REDIS_URL) -> int:
    """Delete every key under the prefix: the test's own "Redis lost its data"."""
    keys = await prefix_keys(prefix, url)
    if not keys:
        return 0
    client = connect(url)
    try:
        return int(await client.delete(*keys))
    finally:
        await client.aclose()
