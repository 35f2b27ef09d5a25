"""The channels, listed once. Adding a channel: a folder under channels/, a line here, its tests."""

from __future__ import annotations

from channels.base import Channel
from channels.loopback import LoopbackChannel
from channels.webchat import WebChatChannel

CHANNELS: dict[str, type[Channel]] = {
    WebChatChannel.name: WebChatChannel,
    LoopbackChannel.name: LoopbackChannel,
}
