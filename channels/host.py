"""What a channel may ask of the service that runs it: its host.

A channel gets this narrow host, never the whole service: it hands in what arrived (a message, a
platform event to store, a withdrawn message, whether the person is there), asks what it needs to
answer (the settings, a text, its live events, a place in the queue, an outbox pass for a conversation),
and looks up what it keeps of its own contacts through a few data functions. Everything else (the
engine's transactions, the queue, the console) stays out of its reach. The composition root
(``bot/service.py``) implements it over ``bot/storage``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from bot.config import Settings
from bot.events import Event
from bot.models import Contact, Conversation, Message, Presence
from bot.reply_tokens import Kept
from bot.types import Handled, Inbound


class ChannelHost(Protocol):
    @property
    def settings(self) -> Settings: ...

    # -- handing in -----------------------------------------------------------------------------------

    async def receive(self, inbound: Inbound) -> Handled:
        """One message or event of a person, to the engine (stored, triaged, answered through the outbox)."""
        ...

    async def withdraw(
        self, channel: str, user_id: str, external_id: str, matches: Callable[[str], bool]
    ) -> bool:
        """The person took a message back: erased from storage and from the stored platform events that
        ``matches``. False when no such message of theirs is stored."""
        ...

    async def store_events(self, channel: str, events: list[tuple[str, str]]) -> int:
        """Store platform events (event id, payload) to be processed in order; how many were new."""
        ...

    async def set_presence(self, contact_id: str, presence: Presence) -> None: ...

    # -- what a channel needs to answer ---------------------------------------------------------------

    def text(self, key: str) -> str:
        """A text of content/messages.yaml, as it is (no placeholders)."""
        ...

    def signature_failed(self, channel: str, address: str) -> bool:
        """Count a webhook whose signature or secret token was wrong, from this address; True when the
        address has failed too often and should be told to wait (429)."""
        ...

    def lookup(self, channel: str, user_id: str) -> str:
        """The keyed hash a contact is found by (never the platform id itself)."""
        ...

    def subscribe(self) -> AbstractAsyncContextManager[asyncio.Queue[Event]]:
        """Live events (ids and states only) while the context is open."""
        ...

    async def position(self, conversation_id: str) -> int | None:
        """The conversation's place in the queue now (None: not waiting)."""
        ...

    async def send_due(self, conversation_id: str) -> None:
        """Send now what waits in the outbox for this conversation (a reconnected web chat)."""
        ...

    # -- reply tokens: kept where every process of the service finds them (bot/reply_tokens.py) --------

    async def keep_reply_token(self, channel: str, key: str, kept: Kept, seconds: float) -> None:
        """Keep a platform's reply token under this channel's ``key`` for ``seconds``."""
        ...

    async def take_reply_token(self, channel: str, key: str) -> Kept | None:
        """The token under ``key``, removed (single use: no other sender can take it after this)."""
        ...

    async def peek_reply_token(self, channel: str, key: str) -> Kept | None:
        """The token under ``key``, left in place."""
        ...

    # -- data functions: a channel's own contacts -----------------------------------------------------

    async def contact(self, channel: str, user_id: str) -> Contact | None:
        """The stored contact of this channel with this platform id, if any."""
        ...

    async def history(
        self, contact_id: str
    ) -> tuple[Conversation | None, list[tuple[Message, str | None, str]]]:
        """The person's latest conversation and its messages in order, each with the status of its outbox
        row (None for what the person wrote) and its text, decrypted."""
        ...

    async def address_in_thread(
        self, channel: str, *, outbox_ids: list[int], conversation_ids: list[str]
    ) -> str | None:
        """The address of the person whose conversation these outbox rows (first) or conversations belong
        to, on this channel, decrypted; None if none."""
        ...

    async def with_counsellor(self, channel: str, user_id: str) -> bool:
        """Whether this person's latest conversation is held by a counsellor now."""
        ...

    async def last_choices(self, channel: str, user_id: str) -> list[str]:
        """The choices of the last message sent to this person."""
        ...

    async def bounced(self, channel: str, outbox_id: int) -> None:
        """A message that went out did not arrive (a bounced mail): recorded failed."""
        ...
