"""Reply tokens a platform gave with an event, kept until the answer to that event is sent.

A LINE reply token is free and single use, and good for about a minute. The instance whose inbox worker
took the event is not always the one whose outbox worker sends the answer (several ``tsunagi serve`` or
``tsunagi worker`` processes share one database): a token kept in one process's memory made the other
push, a paid message. ``RedisReplyTokens`` keeps them where every process of the service finds them;
``ReplyTokens`` (in-process) serves a single process without Redis.

Keys are keyed hashes made by the caller (``Crypto.lookup``), never platform ids. A token is taken with
GETDEL, so two senders can never both use it. Everything here is a courtesy that saves a push: when
Redis cannot be reached, ``keep`` forgets and ``take`` finds nothing, and the answer is pushed."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot.redis_client import connect

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("tsunagi.reply_tokens")


@dataclass(frozen=True)
class Kept:
    token: str
    issued: float  # epoch seconds of the event that carried it
    # A send with this token failed in a way that does not say whether the platform took it (no answer,
    # a 5xx): if the platform then calls the still fresh token used, it was that send that used it.
    maybe_used: bool = False


class ReplyTokens:
    """In this process's memory: for a service of one process (no Redis)."""

    def __init__(self) -> None:
        self._kept: dict[str, tuple[Kept, float]] = {}  # key -> (token, monotonic deadline)
        self._pruned = 0.0  # when expired tokens were last dropped (a pass over all, so once a second)

    async def keep(self, key: str, kept: Kept, seconds: float) -> None:
        """Keep ``kept`` under ``key`` for ``seconds`` (replacing what was there)."""
        now = time.monotonic()
        if now - self._pruned >= 1.0:
            self._pruned = now
            for old in [k for k, (_, until) in self._kept.items() if until <= now]:
                del self._kept[old]
        if seconds > 0:
            self._kept[key] = (kept, now + seconds)

    async def take(self, key: str) -> Kept | None:
        """The token under ``key``, removed: nobody else can take it after this."""
        found = self._kept.pop(key, None)
        return found[0] if found is not None and found[1] > time.monotonic() else None

    async def peek(self, key: str) -> Kept | None:
        """The token under ``key``, left in place."""
        found = self._kept.get(key)
        return found[0] if found is not None and found[1] > time.monotonic() else None

    async def close(self) -> None:
        """Nothing to close in-process."""


class RedisReplyTokens(ReplyTokens):
    """In Redis, shared by every process of the service; each key expires with its token."""

    def __init__(self, client: Redis, *, prefix: str = "tsunagi") -> None:
        super().__init__()
        self._redis = client
        self._prefix = f"{prefix}:reply-token:"

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "tsunagi") -> RedisReplyTokens:
        return cls(connect(url), prefix=prefix)

    async def keep(self, key: str, kept: Kept, seconds: float) -> None:
        if seconds <= 0:
            return
        value = json.dumps([kept.token, kept.issued, kept.maybe_used])
        try:
            await self._redis.set(self._prefix + key, value, px=max(1, int(seconds * 1000)))
        except Exception as e:  # Redis down: the answer is pushed instead
            log.warning("reply token not kept (%s): the answer will be pushed", e.__class__.__name__)

    async def take(self, key: str) -> Kept | None:
        return await self._read(self._redis.getdel, key)

    async def peek(self, key: str) -> Kept | None:
        return await self._read(self._redis.get, key)

    async def _read(self, command: Callable[[str], Awaitable[Any]], key: str) -> Kept | None:
        try:
            value = await command(self._prefix + key)
        except Exception as e:  # Redis down: nothing found, so the answer is pushed
            log.warning("reply token not read (%s)", e.__class__.__name__)
            return None
        return _decode(value)

    async def close(self) -> None:
        await self._redis.aclose()


def _decode(value: object) -> Kept | None:
    if not isinstance(value, str):
        return None
    try:
        token, issued, maybe_used = json.loads(value)
        return Kept(str(token), float(issued), bool(maybe_used))
    except (ValueError, TypeError):
        log.warning("a stored reply token is not readable; ignored")
        return None
