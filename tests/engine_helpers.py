"""A started service in this process, a conversation through its loopback channel, and a way to name what
the bot said."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.content import get_content
from bot.models import Conversation
from bot.service import Service
from channels.loopback import LoopbackChannel, Sent
from tests.helpers import make_settings


def reply_keys(texts: list[str]) -> list[str]:
    """The content/messages.yaml entry each text came from: its template, placeholders as wildcards,
    must match the whole text; the most specific template wins."""
    patterns = _patterns()
    out = []
    for text in texts:
        found = sorted((-fixed, key) for key, (rx, fixed) in patterns.items() if rx.fullmatch(text))
        assert found, f"no message template matches {text[:80]!r}"
        assert len(found) == 1 or found[0][0] != found[1][0], f"ambiguous: {text[:60]!r} {found[:2]}"
        out.append(found[0][1])
    return out


def _patterns() -> dict[str, tuple[re.Pattern[str], int]]:
    out = {}
    for key, t in get_content().messages.items():
        # A placeholder alone on its line may leave nothing (the line is dropped): that line is optional.
        template = re.sub(r"\n\{[a-z_]+\}(?=\n)", "\x00", t.text)
        pieces = re.split(r"\{[a-z_]+\}", template)
        # (What fills a placeholder never holds a blank line: a joined mail's parts stay apart.)
        any_ = "(?:[^\n]|(?<!\n)\n(?!\n))*?"
        rx = any_.join(re.escape(p) for p in pieces).replace("\x00", f"(?:\n(?!\n){any_})?")
        fixed = sum(len(p.replace("\x00", "")) for p in pieces)
        out[key] = (re.compile(rx, re.S), fixed)
    return out


class Chat:
    def __init__(self, svc: Service, user: str = "user-1") -> None:
        self.svc = svc
        self.user = user
        self.channel = loopback(svc)
        self.conversation_id = ""

    async def say(self, text: str, **kw: Any) -> list[Sent]:
        before = len(self.channel.to(self.user))
        handled = await self.channel.say(self.user, text, **kw)
        if handled.conversation_id:
            self.conversation_id = handled.conversation_id
        await self.svc.outbox.send_due()
        return self.channel.to(self.user)[before:]

    async def keys(self, text: str, **kw: Any) -> list[str]:
        return reply_keys([m.text for m in await self.say(text, **kw)])

    async def conversation(self) -> Conversation:
        async with self.svc.db.session() as s:
            conv = await s.get(Conversation, self.conversation_id)
        assert conv is not None
        return conv

    async def state(self) -> str:
        return (await self.conversation()).state


def loopback(svc: Service) -> LoopbackChannel:
    channel = svc.channels["loopback"]
    assert isinstance(channel, LoopbackChannel)
    return channel


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Service]:
    """A service started with ``settings``, without background workers: tests send the outbox
    themselves."""
    svc = Service(settings)
    await svc.start(workers=False)
    try:
        yield svc
    finally:
        await svc.stop()


@asynccontextmanager
async def running(tmp_path: Path, database_url: str | None = None, **settings: Any) -> AsyncIterator[Service]:
    """A started service (``started``) on ``make_settings``."""
    async with started(make_settings(tmp_path, database_url, **settings)) as svc:
        yield svc
