"""What the console needs of the service that runs it: its host.

The console sits beside the channels (docs/architecture.md), below the composition root, so it names
no ``Service``: it asks for the parts it uses, and the service (``bot/service.py``) has them.
"""

from __future__ import annotations

from typing import Protocol

from bot.config import Settings
from bot.content import Content
from bot.crypto import Crypto
from bot.db import Database
from bot.engine import ConversationEngine
from bot.events import EventBus
from bot.guard import Failures
from bot.hours import Hours
from handoff.queue import HandoffQueue


class ConsoleHost(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def crypto(self) -> Crypto: ...

    @property
    def content(self) -> Content: ...

    @property
    def hours(self) -> Hours: ...

    @property
    def queue(self) -> HandoffQueue: ...

    @property
    def events(self) -> EventBus: ...

    @property
    def engine(self) -> ConversationEngine: ...

    @property
    def failures(self) -> Failures: ...
