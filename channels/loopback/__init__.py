"""An in-process channel for tests and demonstrations: what the bot sends is kept in memory.

``await channel.say(user, text)`` hands a message to the engine as any adapter would, and
``channel.sent`` lists the deliveries in order. ``fail_next`` makes the next sends fail, to exercise
the outbox's retries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from bot.config import Settings
from bot.types import Delivery, Handled, Inbound, Kind, Outbound
from channels.base import Channel
from channels.host import ChannelHost


@dataclass(frozen=True)
class Sent:
    address: str
    text: str
    quick_replies: tuple[str, ...]
    sender: str
    conversation_id: str


class LoopbackChannel(Channel):
    name: ClassVar[str] = "loopback"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.loopback_channel

    def __init__(self, host: ChannelHost) -> None:
        super().__init__(host)
        self.sent: list[Sent] = []
        self.fail_next: list[Delivery] = []
        self.groups: list[list[int]] = []
        self.delivered = asyncio.Event()

    async def say(
        self, user: str, text: str, *, kind: Kind = Kind.TEXT, external_id: str | None = None
    ) -> Handled:
        return await self.receive(
            Inbound(channel=self.name, user_id=user, text=text, kind=kind, external_id=external_id)
        )

    async def send(self, out: Outbound) -> Delivery:
        if self.fail_next:
            return self.fail_next.pop(0)
        self.sent.append(
            Sent(out.address, out.text, out.quick_replies, out.sender.value, out.conversation_id)
        )
        self.delivered.set()
        return Delivery.delivered()

    async def send_many(self, outs: list[Outbound]) -> Delivery:
        """For tests that give the class a ``batch`` above one: one outcome for the group, and the
        outbox ids of each group that went out, in ``groups``."""
        if self.fail_next:
            return self.fail_next.pop(0)
        self.groups.append([o.outbox_id for o in outs])
        for out in outs:
            await self.send(out)
        return Delivery.delivered()

    def to(self, user: str) -> list[Sent]:
        return [m for m in self.sent if m.address == user]
