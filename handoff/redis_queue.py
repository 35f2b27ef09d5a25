"""The handoff queue in Redis, shared by every ``tsunagi serve`` process (TSUNAGI_REDIS_URL).

Keys, all under one prefix (``TSUNAGI_REDIS_PREFIX``; tests use a random one):

- ``{prefix}:queue:waiting``: hash, conversation id -> JSON ``{"risk", "queued_at", "channel"}``
  (``queued_at`` ISO 8601 in UTC);
- ``{prefix}:queue:held:{counsellor_id}``: set of the conversation ids that counsellor holds;
- ``{prefix}:queue:holders``: set of the counsellor ids that have a ``held`` set, so that ``rebuild``
  can find every one of them inside its transaction (no SCAN);
- ``{prefix}:queue:epoch``: written by ``rebuild`` only. Redis that restarted without its data, or
  keys that were deleted, lose it, and ``intact`` then tells the service to rebuild from the database;
  until then ``claim`` claims nothing (TAKEN), since what each counsellor holds is not known.

What must be atomic across processes runs inside Redis: ``put`` and ``claim`` are Lua scripts,
``rebuild`` one MULTI/EXEC transaction. The order is computed here with ``order_key``, the rule every
queue shares, over the entries read in one HGETALL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import WatchError

from bot.redis_client import connect
from handoff.queue import Claim, HandoffQueue, QueueEntry
from triage import Risk

log = logging.getLogger("tsunagi.queue")

T = TypeVar("T")

# Keep the queued_at already stored: an entry keeps its place in time when its risk changes.
_PUT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local value = ARGV[2]
if old then
  local entry = cjson.decode(value)
  entry['queued_at'] = cjson.decode(old)['queued_at']
  value = cjson.encode(entry)
end
redis.call('HSET', KEYS[1], ARGV[1], value)
return 1
"""

# KEYS: waiting, held set of this counsellor, holders, epoch. ARGV: conversation id, limit, counsellor id.
# Without the epoch the holdings are not known (Redis lost its data, and the queue is not made again yet):
# nothing is claimed then, or a counsellor could go past the limit.
_CLAIM = """
if redis.call('EXISTS', KEYS[4]) == 0 then
  return 'taken'
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 'taken'
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  return 'full'
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
return 'claimed'
"""


async def _reply(value: Awaitable[T] | T) -> T:
    """redis-py types its commands for both of its clients (value or awaitable); this one awaits."""
    return await cast(Awaitable[T], value)


class RedisQueue(HandoffQueue):
    def __init__(self, client: Redis, *, prefix: str = "tsunagi", aging_minutes: int = 20) -> None:
        """``client`` must give text (``decode_responses=True``), as ``connect`` makes it."""
        if not client.get_connection_kwargs().get("decode_responses"):  # type: ignore[no-untyped-call]
            raise ValueError("the queue's Redis client must be made with decode_responses=True")
        super().__init__(aging_minutes)
        self._redis = client
        self.prefix = prefix
        self._waiting = f"{prefix}:queue:waiting"
        self._holders = f"{prefix}:queue:holders"
        self._epoch = f"{prefix}:queue:epoch"
        self._put = client.register_script(_PUT)
        self._claim = client.register_script(_CLAIM)
        # Changes from this process reach Redis in the order they were asked for, as in the in-process
        # queue (the engine puts and removes from tasks; two pooled connections could swap them).
        self._lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "tsunagi", aging_minutes: int = 20) -> RedisQueue:
        return cls(connect(url), prefix=prefix, aging_minutes=aging_minutes)

    def _held_key(self, counsellor_id: int | str) -> str:
        return f"{self.prefix}:queue:held:{counsellor_id}"

    async def put(self, entry: QueueEntry) -> None:
        async with self._lock:
            await self._put(keys=[self._waiting], args=[entry.conversation_id, _encode(entry)])

    async def remove(self, conversation_id: str) -> None:
        async with self._lock:
            await _reply(self._redis.hdel(self._waiting, conversation_id))

    async def entries(self) -> list[QueueEntry]:
        raw = await _reply(self._redis.hgetall(self._waiting))
        out = []
        for conversation_id, value in cast(dict[str, str], raw).items():
            try:
                out.append(_decode(conversation_id, value))
            except (ValueError, KeyError, TypeError):
                log.warning("queue entry %s is not readable; left out", conversation_id)
        return out

    async def claim(self, conversation_id: str, counsellor_id: int, limit: int) -> Claim:
        async with self._lock:
            result = await self._claim(
                keys=[self._waiting, self._held_key(counsellor_id), self._holders, self._epoch],
                args=[conversation_id, limit, counsellor_id],
            )
        return Claim(result)

    async def release(self, conversation_id: str, counsellor_id: int) -> None:
        async with self._lock:
            await _reply(self._redis.srem(self._held_key(counsellor_id), conversation_id))

    async def held(self, counsellor_id: int) -> set[str]:
        return set(cast(set[str], await _reply(self._redis.smembers(self._held_key(counsellor_id)))))

    async def rebuild(self, entries: list[QueueEntry], held: dict[int, set[str]]) -> None:
        async with self._lock, self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # A claim by a counsellor not yet among the holders changes this set, and the
                    # transaction is then tried again, so no held set is left behind.
                    await pipe.watch(self._holders)
                    holders = cast(set[str], await _reply(pipe.smembers(self._holders)))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(self._waiting, self._holders, *(self._held_key(h) for h in holders))
                    if entries:
                        pipe.hset(self._waiting, mapping={e.conversation_id: _encode(e) for e in entries})
                    for counsellor_id, conversations in held.items():
                        if conversations:
                            pipe.sadd(self._held_key(counsellor_id), *conversations)
                            pipe.sadd(self._holders, str(counsellor_id))
                    pipe.set(self._epoch, datetime.now(UTC).isoformat())
                    await pipe.execute()
                    return
                except WatchError:
                    continue

    async def intact(self) -> bool:
        return bool(await _reply(self._redis.exists(self._epoch)))

    async def close(self) -> None:
        await self._redis.aclose()


def _encode(entry: QueueEntry) -> str:
    if entry.queued_at.tzinfo is None:
        raise ValueError("naive queued_at given to the queue")
    return json.dumps(
        {
            "risk": entry.risk.value,
            "queued_at": entry.queued_at.astimezone(UTC).isoformat(),
            "channel": entry.channel,
        }
    )


def _decode(conversation_id: str, value: str) -> QueueEntry:
    data: dict[str, Any] = json.loads(value)
    queued_at = datetime.fromisoformat(data["queued_at"])
    if queued_at.tzinfo is None:
        raise ValueError("naive queued_at")
    return QueueEntry(conversation_id, Risk(data["risk"]), queued_at.astimezone(UTC), str(data["channel"]))
