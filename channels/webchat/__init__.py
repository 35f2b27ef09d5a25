"""The web chat: ``GET /chat`` (the page) and ``GET /chat/ws`` (its WebSocket), as docs/contract.md says.

Protocol (JSON text frames):
- client: ``{"type": "hello", "resume": token|null}`` first, then
  ``{"type": "message", "text": "...", "id": "<client id, optional>"}``; beyond the contract, a picture as
  ``{"type": "image", "data": "<base64>", "name": "<file name, optional>", "id": ...}`` (the attach
  button): decoded and re-encoded (bot/images.py) and shown to the counsellor, never sent back;
- server: ``{"type": "session", "token"}`` after hello; ``{"type": "message", "from": "bot"|"counsellor",
  "text", "quick_replies"}``; ``{"type": "status", "state": "bot"|"waiting"|"connected"|"closed",
  "position"}``. Beyond the contract: on resume the history is replayed as ``message`` frames with
  ``"history": true`` (the person's own lines with ``"from": "user"``); ``{"type": "ack", "id"}`` once a
  message is stored, so the page can resend what was not acknowledged (the same id is stored once);
  ``{"type": "error", "error"}`` for a frame that cannot be used (the connection stays open). The page says
  ``{"type": "bye", "reason": "quick_exit"}`` as it leaves through すぐに閉じる, so that the counsellor knows
  nothing will reach the person there again (a closed tab or a lost connection is told apart by the socket).

The resume token is the person's pseudonymous id on this channel: it is hashed for look-up and
encrypted at rest like any platform id; the page keeps it in sessionStorage only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, Response

from bot.images import file_item
from bot.models import (
    Contact,
    Conversation,
    Direction,
    OutboxStatus,
    Presence,
    Sender,
    State,
)
from bot.pages import StaticFiles, page_headers
from bot.types import Delivery, Inbound, Kind, Outbound
from channels.base import Channel
from channels.host import ChannelHost
from triage.paths import CONTENT_DIR

log = logging.getLogger("tsunagi.webchat")
T = TypeVar("T")

STATIC = Path(__file__).resolve().parent / "static"
PAGE = CONTENT_DIR.parent / "webchat" / "page.html"
HELLO_TIMEOUT = 30.0
MAX_FRAME = 64 * 1024  # characters in one text frame; longer messages are refused with an error frame
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # a picture from the attach button (the page checks it first)
MAX_IMAGE_FRAME = MAX_IMAGE_BYTES * 4 // 3 + 4096  # its frame: base64 and a little JSON
TOKEN_MAX = 128
MAX_ID = 64  # a client message id (the page uses UUIDs)
STATUS = {
    State.NEW: "bot",
    State.WELCOME: "bot",
    State.LISTENING: "bot",
    State.OFFERED: "bot",
    State.WAITING: "waiting",
    State.WITH_COUNSELLOR: "connected",
    State.CLOSED: "closed",
}
SECURITY_HEADERS = page_headers()


@dataclass(eq=False)
class _Client:
    ws: WebSocket
    contact_id: str
    conversation_id: str = ""
    state: str = ""
    position: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    quick_exit: bool = False  # the page said it is leaving through すぐに閉じる

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:  # one frame at a time on a socket
            await self.ws.send_json(frame)


class WebChatChannel(Channel):
    parks_deferred: ClassVar[bool] = True
    name: ClassVar[str] = "webchat"

    def __init__(self, host: ChannelHost) -> None:
        super().__init__(host)
        self.clients: dict[str, set[_Client]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Future[Any]] = set()
        self._stopping = False

    # -- sending ---------------------------------------------------------------------------------------

    async def _guard(self, work: Coroutine[Any, Any, T]) -> T:
        """Database work started for a connection runs to its end even if the connection's handler is
        cancelled (the client went away, the server stops): a message being stored is stored, and no
        connection is torn down in the middle of a call. ``stop`` waits for what is in flight."""
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    def reachable(self, contact_id: str) -> bool:
        return bool(self.clients.get(contact_id))

    async def send(self, out: Outbound) -> Delivery:
        clients = list(self.clients.get(out.contact_id, ()))
        if not clients:
            return Delivery.deferred("web chat not connected")
        frame = {
            "type": "message",
            "from": "counsellor" if out.sender is Sender.COUNSELLOR else "bot",
            "text": out.text,
            "quick_replies": list(out.quick_replies),
        }
        sent = 0
        for client in clients:
            try:
                await client.send(frame)
                sent += 1
            except Exception:
                self._drop(client)
        return Delivery.delivered() if sent else Delivery.deferred("web chat connection lost")

    # -- live status -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        self._stopping = True  # connections closed now are the server going, not people leaving
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=10.0)
        if self._watcher:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        for clients in list(self.clients.values()):
            for c in list(clients):
                try:
                    await c.ws.close(code=1001)
                except Exception:
                    pass
        self.clients.clear()

    async def _watch(self) -> None:
        async with self.host.subscribe() as events:
            while True:
                event = await events.get()
                try:
                    if event.kind == "deferred" and event.contact_id in self.clients:
                        await self._guard(self.host.send_due(event.conversation_id))
                    elif event.kind == "conversation":
                        for c in list(self.clients.get(event.contact_id, ())):
                            c.conversation_id, c.state = event.conversation_id, event.state
                            await self._status(c)
                    elif event.kind == "queue":
                        for clients in list(self.clients.values()):
                            for c in list(clients):
                                if c.state == State.WAITING:
                                    await self._status(c, only_if_changed=True)
                except Exception:
                    log.exception("web chat status update failed")

    async def _status(self, c: _Client, *, only_if_changed: bool = False) -> None:
        position = None
        if c.state == State.WAITING and c.conversation_id:
            position = await self.host.position(c.conversation_id)
        if only_if_changed and position == c.position:
            return
        c.position = position
        try:
            await c.send({"type": "status", "state": STATUS.get(State(c.state), "bot"), "position": position})
        except Exception:
            self._drop(c)

    def _drop(self, c: _Client) -> None:
        clients = self.clients.get(c.contact_id)
        if clients is not None:
            clients.discard(c)
            if not clients:
                del self.clients[c.contact_id]

    # -- HTTP ----------------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter()
        page = PAGE.read_text(encoding="utf-8")
        static = StaticFiles(STATIC)

        @r.get("/chat", include_in_schema=False)
        async def chat_page() -> HTMLResponse:
            exit_url = escape(self.host.settings.quick_exit_url, quote=True)
            title = escape(self.host.settings.chat_title, quote=True)
            html = page.replace("{{quick_exit_url}}", exit_url).replace("{{title}}", title)
            return HTMLResponse(html, headers=SECURITY_HEADERS)

        @r.get("/chat/static/{name}", include_in_schema=False)
        async def chat_static(name: str) -> Response:
            return static.response(name)

        @r.websocket("/chat/ws")
        async def chat_ws(ws: WebSocket) -> None:
            await self._serve(ws)

        return r

    async def _serve(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                hello = await ws.receive_text()
        except (TimeoutError, WebSocketDisconnect):
            await _close(ws, 1008)
            return
        frame = _parse(hello)
        if frame is None or frame.get("type") != "hello":
            await ws.send_json({"type": "error", "error": 'the first frame must be {"type": "hello"}'})
            await _close(ws, 1008)
            return
        resume = frame.get("resume")
        contact = None
        if isinstance(resume, str) and 0 < len(resume) <= TOKEN_MAX:
            contact = await self._guard(self._contact(resume))
        session_due = False
        if contact is None or not isinstance(resume, str):
            # A new person: the contact is stored before its token is handed out, so that a token the
            # page keeps always resumes (a database lost under the first hello leaves no token behind).
            token = secrets.token_urlsafe(32)
            handled = await self._guard(
                self.receive(Inbound(channel=self.name, user_id=token, kind=Kind.FOLLOW))
            )
            # Registered before anything else can run, so that the welcome finds the socket; the session
            # frame takes the socket's lock first, so it is still the first frame.
            client = _Client(ws, handled.contact_id, handled.conversation_id, State.WELCOME)
            self.clients.setdefault(client.contact_id, set()).add(client)
            session_due = True
        else:
            token = resume
            await ws.send_json({"type": "session", "token": token})
            conversation_id, conv = await self._guard(self._replay(ws, contact))
            client = _Client(ws, contact.id, conversation_id, conv.state if conv else State.NEW)
            self.clients.setdefault(contact.id, set()).add(client)
        conversation_id = client.conversation_id
        try:
            if session_due:
                await client.send({"type": "session", "token": token})
            await self._presence(client.contact_id, Presence.CONNECTED)
            if conversation_id:
                await self._guard(self.host.send_due(conversation_id))
            await self._status(client)
            await self._loop(client, token)
        except WebSocketDisconnect:
            pass
        finally:
            self._drop(client)
            if client.quick_exit:
                await self._presence(client.contact_id, Presence.QUICK_EXIT)
            elif not self.clients.get(client.contact_id):  # (a reload's new page may be here already)
                await self._presence(client.contact_id, Presence.LEFT)

    async def _presence(self, contact_id: str, presence: Presence) -> None:
        """Tell the console whether the person is there; never fails a connection for it."""
        if self._stopping or not contact_id:
            return
        try:
            await self._guard(self.host.set_presence(contact_id, presence))
        except Exception:
            log.exception("web chat presence update failed")

    async def _loop(self, client: _Client, token: str) -> None:
        prefix = self.host.lookup(self.name, token)[:16]
        while True:
            raw = await client.ws.receive()
            if raw["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(raw.get("code", 1000))
            if raw.get("text") is None:
                await client.send({"type": "error", "error": "frames must be JSON text"})
                continue
            if len(raw["text"]) > MAX_IMAGE_FRAME:
                await client.send({"type": "error", "error": "message too long"})
                continue
            frame = _parse(raw["text"])
            if frame is None:
                await client.send({"type": "error", "error": "not valid JSON"})
                continue
            if frame.get("type") == "image":
                await self._image(client, token, prefix, frame)
                continue
            if frame.get("type") == "bye":
                # The quick exit: the page forgets its token and goes; nothing can reach them here again.
                client.quick_exit = frame.get("reason") == "quick_exit"
                continue
            if len(raw["text"]) > MAX_FRAME:
                await client.send({"type": "error", "error": "message too long"})
                continue
            if frame.get("type") != "message" or not isinstance(frame.get("text"), str):
                await client.send({"type": "error", "error": 'expected {"type": "message", "text": ...}'})
                continue
            client_id = frame.get("id")
            if client_id is not None and not (isinstance(client_id, str) and 0 < len(client_id) <= MAX_ID):
                await client.send(
                    {"type": "error", "error": f"'id' must be a string of 1 to {MAX_ID} characters"}
                )
                continue
            text = frame["text"]
            if not text.strip():
                continue
            handled = await self._guard(
                self.receive(
                    Inbound(
                        channel=self.name,
                        user_id=token,
                        text=text,
                        kind=Kind.TEXT,
                        external_id=f"{prefix}:{client_id}" if client_id else None,
                    )
                )
            )
            if handled.conversation_id:
                client.conversation_id = handled.conversation_id
            if client_id:
                await client.send({"type": "ack", "id": client_id})

    async def _image(self, client: _Client, token: str, prefix: str, frame: dict[str, Any]) -> None:
        """A picture from the attach button: kept re-encoded if it is one, else refused (and said)."""
        client_id = frame.get("id")
        if client_id is not None and not (isinstance(client_id, str) and 0 < len(client_id) <= MAX_ID):
            await client.send(
                {"type": "error", "error": f"'id' must be a string of 1 to {MAX_ID} characters"}
            )
            return
        data_b64, name = frame.get("data"), frame.get("name")
        name = name[:200] if isinstance(name, str) else ""
        try:
            data = base64.b64decode(data_b64, validate=True) if isinstance(data_b64, str) else b""
        except ValueError:
            data = b""
        if not data or len(data) > MAX_IMAGE_BYTES:
            await client.send({"type": "error", "error": "an image frame needs 'data': a picture in base64"})
            return
        item = await asyncio.to_thread(file_item, name, "image/*", data)
        handled = await self._guard(
            self.receive(
                Inbound(
                    channel=self.name,
                    user_id=token,
                    kind=Kind.MEDIA,
                    items=(item,),
                    external_id=f"{prefix}:{client_id}" if client_id else None,
                )
            )
        )
        if handled.conversation_id:
            client.conversation_id = handled.conversation_id
        if client_id:
            await client.send({"type": "ack", "id": client_id})

    async def _contact(self, token: str) -> Contact | None:
        return await self.host.contact(self.name, token)

    async def _replay(self, ws: WebSocket, contact: Contact) -> tuple[str, Conversation | None]:
        """Send the latest conversation's history: what the person wrote and what reached them.
        Replies not yet delivered are left to the outbox, which sends them next (exactly once)."""
        conv, rows = await self.host.history(contact.id)
        if conv is None:
            return "", None
        frames = []
        for msg, status, text in rows:
            extra: dict[str, Any] = {}
            if msg.direction == Direction.IN:
                if msg.kind == Kind.MEDIA:
                    extra["kind"] = "image"  # the page shows that a picture was sent, not the picture
                elif msg.kind != Kind.TEXT:
                    continue
                who = "user"
                if msg.external_id and ":" in msg.external_id:
                    # The page's own id, so that it can tell a message it is still holding was stored.
                    extra["id"] = msg.external_id.split(":", 1)[1]
            elif status == OutboxStatus.DELIVERED:
                who = "counsellor" if msg.sender == Sender.COUNSELLOR else "bot"
            else:
                continue
            frames.append(
                {"type": "message", "from": who, "text": text, "quick_replies": [], "history": True}
            )
            frames[-1].update(extra)
        for f in frames:
            await ws.send_json(f)
        return conv.id, conv


def _parse(raw: str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


async def _close(ws: WebSocket, code: int) -> None:
    try:
        await ws.close(code=code)
    except Exception:
        pass
