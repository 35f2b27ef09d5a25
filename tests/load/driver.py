"""The load itself: signed LINE webhooks sent open-loop (each at its planned time, whether or not the earlier
ones were answered), and web chat sessions that each send a message every few seconds.

Bodies and signatures are made before a phase starts; during it the driver only sleeps until the next
planned time and starts one request task. Its own lag (start of a request minus its planned time) is
measured and reported, so that a driver that falls behind shows instead of flattering the server. Every
latency is taken from the planned time, so a late driver makes the figures worse, never better.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ORDINARY = (
    "最近ちょっと眠れなくて、誰かに話を聞いてほしいです",
    "学校のことで相談があります",
    "仕事がつらくて毎日疲れています",
    "家族とうまくいっていなくて悩んでいます",
    "友だちとけんかしてしまって、どうしたらいいかわかりません",
)
CRISIS = "もう無理です。今から駅で電車に飛び込みます"


@dataclass(frozen=True)
class Planned:
    """One webhook ready to send: its body and signature, its person and reply token, its planned time
    (seconds after the phase's start)."""

    body: bytes
    signature: str
    user: str
    token: str
    offset: float


@dataclass
class Shot:
    planned: Planned
    at: float = 0.0  # planned send time, time.monotonic()
    lag: float = 0.0  # when the request started, minus ``at``
    acked: float | None = None  # when a 2xx answer arrived
    status: int = 0


def signature(body: bytes, secret: str) -> str:
    """LINE's X-Line-Signature: base64 of an HMAC-SHA256 of the raw body under the channel secret."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def plan(
    count: int,
    rate: float,
    secret: str,
    destination: str,
    *,
    texts: tuple[str, ...] = ORDINARY,
    start: float = 0.0,
) -> list[Planned]:
    """``count`` text message events, one webhook each, from as many new people, ``1/rate`` apart from
    ``start`` seconds after the phase's start."""
    now_ms = time.time() * 1000
    out = []
    for i in range(count):
        offset = start + i / rate
        user, token = "U" + uuid.uuid4().hex, uuid.uuid4().hex
        event = {
            "type": "message",
            "mode": "active",
            "timestamp": int(now_ms + offset * 1000),
            "source": {"type": "user", "userId": user},
            "webhookEventId": "01L" + uuid.uuid4().hex[:23].upper(),
            "deliveryContext": {"isRedelivery": False},
            "replyToken": token,
            "message": {
                "type": "text",
                "id": str(uuid.uuid4().int)[:18],
                "quoteToken": uuid.uuid4().hex,
                "text": texts[i % len(texts)],
            },
        }
        body = json.dumps({"destination": destination, "events": [event]}, ensure_ascii=False).encode()
        out.append(Planned(body, signature(body, secret), user, token, offset))
    return out


async def open_loop(
    session: aiohttp.ClientSession, url: str | list[str], planned: list[Planned]
) -> list[Shot]:
    """Send every planned webhook at its time (to each of several ``url`` in turn, as a load balancer
    would); wait for all the answers."""
    urls = [url] if isinstance(url, str) else url
    start = time.monotonic() + 0.1
    tasks = []
    for i, p in enumerate(planned):
        shot = Shot(p, at=start + p.offset)
        delay = shot.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_post(session, urls[i % len(urls)], shot)))
    return list(await asyncio.gather(*tasks))


async def _post(session: aiohttp.ClientSession, url: str, shot: Shot) -> Shot:
    shot.lag = time.monotonic() - shot.at
    headers = {"Content-Type": "application/json", "X-Line-Signature": shot.planned.signature}
    try:
        async with session.post(url, data=shot.planned.body, headers=headers) as r:
            await r.read()
            shot.status = r.status
            if 200 <= r.status < 300:
                shot.acked = time.monotonic()
    except (aiohttp.ClientError, TimeoutError):
        shot.status = -1
    return shot


# -- the web chat ----------------------------------------------------------------------------------------

FIRST = "同意"
BURST = 0.05  # seconds: bot frames closer than this together are one answer
CHAT = (
    "話を聞いてほしいです",
    "最近すこし疲れています",
    "ありがとうございます",
    "うまく言えないけど、不安です",
)


@dataclass
class ChatSession:
    """One person in the web chat: for each message sent, when, when it was acknowledged and when the
    bot's next message came."""

    sent: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    lag: list[float] = field(default_factory=list)
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0  # messages sent in all, once the last one is
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    error: str = ""

    def check(self) -> None:
        if self.expected and len(self.acked) >= self.expected and len(self.answered) >= self.expected:
            self.settled.set()


async def chat_session(
    session: aiohttp.ClientSession, url: str, start: float, until: float, every: float
) -> ChatSession:
    """Connect at ``start``, say hello, wait for the welcome, consent a second later, then send a message
    every ``every`` seconds until ``until`` (times in time.monotonic()); then wait a little for the last
    answers and leave."""
    me = ChatSession()
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    try:
        async with session.ws_connect(url, heartbeat=None, max_msg_size=1 << 20) as ws:
            await ws.send_json({"type": "hello", "resume": None})
            reader = asyncio.create_task(_read(ws, me))
            await asyncio.wait_for(me.welcomed.wait(), 60)
            n, at = 0, time.monotonic() + 1
            while at < until:
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                me.lag.append(time.monotonic() - at)
                mid = f"m{n}"
                me.sent[mid] = at
                await ws.send_json({"type": "message", "id": mid, "text": FIRST if n == 0 else CHAT[n % 4]})
                n, at = n + 1, at + every
            me.expected = n
            me.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(me.settled.wait(), 30)
            reader.cancel()
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
        me.error = f"{e.__class__.__name__}: {e}"
    return me


async def _read(ws: aiohttp.ClientWebSocketResponse, me: ChatSession) -> None:
    last = 0.0
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        frame: dict[str, Any] = json.loads(msg.data)
        now = time.monotonic()
        if frame.get("type") == "ack" and frame.get("id") in me.sent:
            me.acked.setdefault(frame["id"], now)
        elif frame.get("type") == "message" and frame.get("from") == "bot" and not frame.get("history"):
            # The bot's answer to the oldest message it had not answered yet. The welcome, before any
            # message, is not counted; frames that come within BURST of the one before are one answer.
            me.welcomed.set()
            burst, last = now - last < BURST, now
            waiting = [m for m in me.sent if m not in me.answered]
            if waiting and not burst:
                me.answered[waiting[0]] = now
        me.check()
