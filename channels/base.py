"""What every channel is: one folder under ``channels/``, one class, one line in ``registry.py``.

An adapter turns its platform's payloads into ``Inbound`` and hands them to ``receive`` (through its
host, ``channels/host.py``: HTTP never reaches the engine), and implements ``send`` for one
``Outbound``. The base
class keeps the invariants in one place: choices degraded to numbered text where a channel has no
buttons, a platform error recorded as a retry and never raised into the worker.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar, final

from fastapi import APIRouter

from bot.config import Settings
from bot.types import Delivery, Handled, Inbound, Outbound
from channels.host import ChannelHost

log = logging.getLogger("tsunagi.channels")


class Channel(ABC):
    name: ClassVar[str]
    buttons: ClassVar[bool] = True  # can show quick replies as buttons
    # Each message is a whole letter (e-mail): what the bot says to one message goes out as one.
    joins_replies: ClassVar[bool] = False
    # How many waiting messages of one conversation may go out in one send (``send_many``): LINE takes
    # five in one reply, and a reply costs nothing where a push is counted against the account's quota.
    batch: ClassVar[int] = 1
    # A reply it defers waits, parked, until the person is back (the web chat, which knows when they
    # reconnect); other channels retry a deferred reply after a while (e-mail with no relay yet).
    parks_deferred: ClassVar[bool] = False

    def __init__(self, host: ChannelHost) -> None:
        self.host = host  # what a channel may ask (channels/host.py), never the whole service

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return True

    def router(self) -> APIRouter | None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def reachable(self, contact_id: str) -> bool:
        """Can this contact be sent to right now? Only channels that defer (the web chat) say no."""
        return True

    async def process(self, payload: str) -> None:
        """Handle one stored platform event (channels whose webhooks store events first)."""
        raise NotImplementedError(f"{self.name} does not store events")

    def peek(self, payload: str) -> tuple[str, str] | None:
        """Whose a stored platform event is and its text, read at intake (the inbox triages the text to
        take a crisis first, and keeps each person's events in order): (platform user id, text, "" when
        none), or None when it is no person's (then it keeps its place among the channel's other such
        events). Cheap and pure: it runs as the webhook stores the event."""
        return None

    def describe(self, payload: str) -> str:
        """What kind of event a stored payload is, for a log line (its type only: never text or ids)."""
        return self.name

    @final
    async def withdraw(self, user_id: str, external_id: str, matches: Callable[[str], bool]) -> bool:
        """The person took a message back: erased from storage (the engine) and from the stored platform
        events that carried it (``matches`` picks them)."""
        return await self.host.withdraw(self.name, user_id, external_id, matches)

    @final
    async def store_events(self, events: list[tuple[str, str]]) -> int:
        """Store platform events (event id, payload) for ``process``; returns how many were new."""
        return await self.host.store_events(self.name, events)

    @final
    async def receive(self, inbound: Inbound) -> Handled:
        return await self.host.receive(inbound)

    @final
    async def deliver(self, outs: list[Outbound]) -> Delivery:
        """Messages of one conversation, in order, in one send: one, or up to ``batch`` on a channel
        that sends several at once (``send_many``). One outcome for all of them."""
        outs = [self._as_sent(out) for out in outs]
        try:
            return await (self.send(outs[0]) if len(outs) == 1 else self.send_many(outs))
        except Exception as e:  # a platform failure is a retry, never a crash of the worker
            log.warning("send on %s failed: %s", self.name, e.__class__.__name__)
            return Delivery.retry(e.__class__.__name__)

    def _as_sent(self, out: Outbound) -> Outbound:
        """Without buttons, quick replies become numbered lines under the text."""
        if out.quick_replies and not self.buttons:
            numbered = "\n".join(f"{i}. {q}" for i, q in enumerate(out.quick_replies, 1))
            return replace(out, text=f"{out.text}\n{numbered}", quick_replies=())
        return out

    async def send_many(self, outs: list[Outbound]) -> Delivery:
        """Only for channels with ``batch`` above one."""
        raise NotImplementedError(f"{self.name} sends one message at a time")

    @abstractmethod
    async def send(self, out: Outbound) -> Delivery: ...
