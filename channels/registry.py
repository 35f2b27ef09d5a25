"""The channels, listed once. Adding a channel: a folder under channels/, a line here, its tests."""

from __future__ import annotations

from channels.base import Channel
from channels.email import EmailChannel
from channels.line import LineChannel
from channels.loopback import LoopbackChannel
from channels.telegram import TelegramChannel
from channels.webchat import WebChatChannel

CHANNELS: dict[str, type[Channel]] = {
    WebChatChannel.name: WebChatChannel,
    LineChannel.name: LineChannel,
    LoopbackChannel.name: LoopbackChannel,
    TelegramChannel.name: TelegramChannel,
    EmailChannel.name: EmailChannel,
}
