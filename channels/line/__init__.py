"""LINE: the Messaging API webhook (``POST /webhooks/line``) and sending through reply or push.

The webhook checks ``X-Line-Signature`` over the raw body, stores each event of the batch in the inbox
(keyed on ``webhookEventId``, so a redelivery is stored once) and answers 200 at once; the inbox worker
then calls ``process`` with one event. Replies use the event's reply token while it is fresh (it is free
and single use); otherwise they are pushed with an ``X-Line-Retry-Key`` derived from the outbox row, so
a retried push never reaches the person twice. A reply that got no answer (a timeout, a 5xx) is retried
with the same token while it is fresh: LINE calling that token used means the first reply went out.
A 429's ``Retry-After`` is passed to the outbox, which waits at least that long.

Only one-to-one chats are served: nothing said in a group or room is stored. When the bot is added to one
(``join``), it says once that it answers one-to-one and how to add it as a friend, then leaves. Events in
``mode: standby`` (another module has the chat) are neither stored nor answered. Profiles (display name,
picture) are never fetched: counsellors need not see them (docs/reference.md).

What a person sends besides text is shown to the counsellor: a sticker's keywords (and a message sticker's
text, which is triaged), a place's name and address, a file's name and size, and pictures, fetched with the
content API and re-encoded (bot/images.py); an album (``imageSet``) is answered once. A message type this
code does not know is stored and shown as such, never dropped. ``unsend`` erases the message (and its
stored event); ``messageEdited`` is stored beside the first version and triaged.

Docs: https://developers.line.biz/en/reference/messaging-api/#webhooks (payloads),
https://developers.line.biz/en/reference/messaging-api/#unsend-event,
https://developers.line.biz/en/reference/messaging-api/#edit-event,
https://developers.line.biz/en/reference/messaging-api/#join-event,
https://developers.line.biz/en/reference/messaging-api/#leave-group,
https://developers.line.biz/en/reference/messaging-api/#get-content (pictures),
https://developers.line.biz/en/reference/messaging-api/#send-reply-message,
https://developers.line.biz/en/reference/messaging-api/#send-push-message (retry key),
https://developers.line.biz/en/reference/messaging-api/#display-a-loading-indicator.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

# The SDK ships no type information (no py.typed): its names are Any to mypy, and this module keeps
# them inside (only the project's own types leave it).
from linebot.v3 import SignatureValidator  # type: ignore[import-untyped]
from linebot.v3.messaging import (  # type: ignore[import-untyped]
    ApiException,
    AsyncApiClient,
    AsyncMessagingApi,
    AsyncMessagingApiBlob,
    Configuration,
    MessageAction,
    PushMessageRequest,
    QuickReply,
    QuickReplyItem,
    ReplyMessageRequest,
    ShowLoadingAnimationRequest,
    TextMessage,
)

from bot.guard import SIGNATURE_WINDOW
from bot.images import file_item, is_picture_name, refused_kind
from bot.reply_tokens import Kept
from bot.types import ALBUM, EDITED, Delivery, Inbound, Item, Kind, Outbound, Outcome
from channels.base import Channel
from channels.host import ChannelHost

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger("tsunagi.line")

# Limits of the Messaging API (https://developers.line.biz/en/reference/messaging-api/#text-message,
# #items-object, #send-reply-message).
MAX_TEXT = 5000  # characters in one text message
MAX_MESSAGES = 5  # messages in one reply or push request
MAX_QUICK_REPLIES = 13
MAX_LABEL = 20  # characters in a quick reply item's label
# A reply token must be used within about a minute of the event; leave a margin for the request.
REPLY_TOKEN_SECONDS = 50.0
LOADING_SECONDS = 20  # the indicator disappears when a message arrives, or after this (5..60, by 5)
# The indicator is shown only when the reply has not gone out this long after the event is taken up: a
# reply that comes at once needs none (and each indicator is an API call).
LOADING_AFTER = 1.0
MAX_BODY = 1024 * 1024  # bytes of one webhook request we are willing to read
MEDIA = {"sticker", "image", "video", "audio", "file", "location"}
# Events of a one-to-one chat that are stored and handled; in a group or room, only the bot's joining.
HANDLED = {"message", "follow", "unfollow", "postback", "unsend", "messageEdited"}
GROUP_HANDLED = {"join"}
ALBUM_SECONDS = 600.0  # an album's pictures arrive within seconds; its id is remembered this long
MAX_FETCH = 20 * 1024 * 1024  # bytes of a picture fetched from the content API
RETRY_NAMESPACE = uuid.UUID("5b0e6c1e-7a43-4e4b-9a1e-2f1d2f6c9a10")  # uuid5 namespace of our retry keys


# The webhook in the app's OpenAPI (the app serves none; tests/test_api_schema.py reads it): what LINE sends
# (https://developers.line.biz/en/reference/messaging-api/#request-body) and every answer.
_ERROR = {"application/json": {"schema": {"type": "object", "required": ["detail"]}}}
OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": "X-Line-Signature", "in": "header", "required": True, "schema": {"type": "string"}}
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["destination", "events"],
                    "properties": {
                        "destination": {"type": "string"},
                        "events": {"type": "array", "items": {"type": "object"}},
                    },
                }
            }
        },
    },
    "responses": {
        "200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}},
        "400": {"description": "bad signature, not UTF-8, or not a webhook body", "content": _ERROR},
        "408": {"description": "the body did not arrive in time", "content": _ERROR},
        "413": {"description": "body over the limit", "content": _ERROR},
        "429": {"description": "too many bad signatures from this address", "content": _ERROR},
    },
}


def _fresh(kept: Kept) -> bool:
    return _left(kept) > 0


def _left(kept: Kept) -> float:
    """Seconds the token is still good for (with the margin of ``REPLY_TOKEN_SECONDS``)."""
    return kept.issued + REPLY_TOKEN_SECONDS - time.time()


def retry_key(outbox_ids: list[int], part: int) -> str:
    """The X-Line-Retry-Key for one push request of the outbox rows sent together: the same on every
    attempt (the outbox retries a group as the same group)."""
    return str(uuid.uuid5(RETRY_NAMESPACE, f"{','.join(map(str, outbox_ids))}:{part}"))


class LineChannel(Channel):
    name: ClassVar[str] = "line"
    # Messages of one conversation waiting together go in one request: the reply token takes five
    # message objects, and a reply is free where each push counts against the account's quota.
    batch: ClassVar[int] = MAX_MESSAGES

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.line_channel_secret and settings.line_channel_access_token)

    def __init__(self, host: ChannelHost) -> None:
        super().__init__(host)
        settings = host.settings
        self._validator = SignatureValidator(settings.line_channel_secret)
        self._config = Configuration(
            host=settings.line_api_base.rstrip("/"), access_token=settings.line_channel_access_token
        )
        self._client: Any = None  # AsyncApiClient: its aiohttp session is made inside the event loop
        self._timeout = settings.api_timeout  # seconds for one API call (the SDK's default is five minutes)
        # Reply tokens are kept by the host (bot/reply_tokens.py: in Redis when the service has it, so
        # that whichever process sends the answer replies): under "user:" + LINE user id, the person's
        # latest unused token; under "group:" + a send's first retry key, the token of a send to be tried
        # again, which a retry uses while it is fresh, so that a reply LINE took but whose answer was
        # lost is not sent a second time by push.
        # Albums (imageSet ids) already answered, with when: one reply for several pictures.
        self._albums: dict[str, float] = {}
        # API calls under way: ``stop`` (which the service calls before its workers finish) lets them
        # end before the HTTP session is closed under them.
        self._calls = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._timers: set[asyncio.Task[None]] = set()  # loading indicators not shown yet

    # -- lifecycle -------------------------------------------------------------------------------------

    def _api(self) -> Any:
        if self._client is None:
            self._client = AsyncApiClient(self._config)
        return AsyncMessagingApi(self._client)

    @asynccontextmanager
    async def _calling(self) -> AsyncIterator[Any]:
        self._calls += 1
        self._idle.clear()
        try:
            yield self._api()
        finally:
            self._calls -= 1
            if not self._calls:
                self._idle.set()

    async def start(self) -> None:
        self._api()

    async def stop(self) -> None:
        for timer in list(self._timers):
            timer.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), self._timeout)
        except TimeoutError:
            log.warning("LINE calls still under way at stop; closing anyway")
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    # -- webhook ----------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter()

        @r.post("/webhooks/line", openapi_extra=OPENAPI)
        async def webhook(request: Request) -> Response:
            signature = request.headers.get("x-line-signature", "")
            raw = await request.body()
            if len(raw) > MAX_BODY:
                return _error(413, "request too large")
            try:
                body = raw.decode("utf-8")
            except UnicodeDecodeError:
                return _error(400, "body is not UTF-8")
            # The signature is over the raw body, before any parsing.
            if not signature or not self._validator.validate(body, signature):
                log.warning("LINE webhook with a missing or bad signature refused")
                address = request.client.host if request.client else "?"
                if self.host.signature_failed(self.name, address):
                    return _error(429, "too many bad signatures: wait a few minutes", retry=True)
                return _error(400, "invalid signature")
            events = _events(body)
            if events is None:
                return _error(400, "malformed webhook body")
            await self.store_events(events)
            return JSONResponse({})

        return r

    # -- inbound ------------------------------------------------------------------------------------------

    def describe(self, payload: str) -> str:
        event = json.loads(payload)
        message = event.get("message") if isinstance(event, dict) else None
        kind = _str(event.get("type")) if isinstance(event, dict) else ""
        if isinstance(message, dict) and _str(message.get("type")):
            kind += "/" + _str(message.get("type"))
        return kind[:64] or "unknown"

    def peek(self, payload: str) -> tuple[str, str] | None:
        event = json.loads(payload)
        source = event.get("source") if isinstance(event, dict) else None
        if not isinstance(source, dict) or source.get("type") != "user" or not _str(source.get("userId")):
            return None  # a group or room (joined only to leave it)
        text = ""
        message = event.get("message")
        postback = event.get("postback")
        if isinstance(message, dict):
            text = _str(message.get("text"))  # a text, a message sticker's words, an edited text
        elif isinstance(postback, dict):
            text = _str(postback.get("data"))
        return _str(source.get("userId")), text

    async def process(self, payload: str) -> None:
        event = json.loads(payload)
        if not isinstance(event, dict) or event.get("mode") == "standby":
            return  # emptied (a withdrawn message's event), or a chat another module has
        source = event.get("source")
        if isinstance(source, dict) and source.get("type") in ("group", "room"):
            if event.get("type") == "join":
                await self._join(event, source)
            return  # nothing said in a group or room is read
        if event.get("type") == "unsend":
            await self._unsend(event)
            return
        inbound = self._inbound(event)
        if inbound is None:
            return
        inbound = await self._with_content(event, inbound)
        user = inbound.user_id
        token = _str(event.get("replyToken"))
        kept = Kept(token, _timestamp(event))
        timer = None
        if token and _fresh(kept):
            # Kept before the engine runs: the outbox may send the first reply while we are still here.
            await self.host.keep_reply_token(self.name, _user_key(user), kept, _left(kept))
            if inbound.kind in (Kind.TEXT, Kind.CHOICE):
                timer = asyncio.create_task(self._loading_later(user, kept))
                self._timers.add(timer)
                timer.add_done_callback(self._timers.discard)
        try:
            handled = await self.receive(inbound)
        except BaseException:
            if timer is not None:
                timer.cancel()
            raise
        if timer is not None and not handled.replies:
            timer.cancel()  # nothing will be said (a counsellor has the conversation): nothing to wait for

    async def _unsend(self, event: dict[str, Any]) -> None:
        """The person unsent a message: erased from our storage and from the stored events that carried
        it (the message itself and its edits)."""
        source = event.get("source")
        user = _str(source.get("userId")) if isinstance(source, dict) else ""
        unsend = event.get("unsend")
        message_id = _str(unsend.get("messageId")) if isinstance(unsend, dict) else ""
        if not user or not message_id:
            return

        def carries(payload: str) -> bool:
            stored = json.loads(payload)
            message = stored.get("message") if isinstance(stored, dict) else None
            return (
                isinstance(message, dict)
                and message.get("id") == message_id
                and stored.get("type") in ("message", "messageEdited")
            )

        await self.withdraw(user, _ident(message_id), carries)

    async def _join(self, event: dict[str, Any], source: dict[str, Any]) -> None:
        """Added to a group or room: say once, kindly, that the service is one-to-one and how to reach it,
        then leave. Nothing of the group is stored."""
        group = _str(source.get("groupId")) or _str(source.get("roomId"))
        if not group:
            return
        text = self.host.text("line_group_only")
        messages = [
            TextMessage(text=c) for c in [text[i : i + MAX_TEXT] for i in range(0, len(text), MAX_TEXT)]
        ]
        token = _str(event.get("replyToken"))
        said = False
        async with self._calling() as api:
            if token and time.time() - _timestamp(event) < REPLY_TOKEN_SECONDS:
                try:
                    await api.reply_message(
                        ReplyMessageRequest(replyToken=token, messages=messages[:MAX_MESSAGES]),
                        _request_timeout=self._timeout,
                    )
                    said = True
                except ApiException as e:
                    log.info("LINE group notice by reply failed (%s); pushing instead", e.status)
            if not said:
                key = str(uuid.uuid5(RETRY_NAMESPACE, "join:" + _str(event.get("webhookEventId"))))
                try:
                    await api.push_message(
                        PushMessageRequest(to=group, messages=messages[:MAX_MESSAGES]),
                        x_line_retry_key=key,
                        _request_timeout=self._timeout,
                    )
                except ApiException as e:
                    if e.status != 409:  # 409: this key went out before
                        log.warning("LINE group notice could not be sent: %s", _reason(e))
            for attempt in range(3):
                try:
                    if source.get("type") == "group":
                        await api.leave_group(group, _request_timeout=self._timeout)
                    else:
                        await api.leave_room(group, _request_timeout=self._timeout)
                    break
                except ApiException as e:
                    if e.status and 400 <= int(e.status) < 500:
                        break  # gone already, or never there: nothing to leave
                    if attempt == 2:
                        log.error("LINE: could not leave a %s: %s", source.get("type"), _reason(e))
                    else:
                        await asyncio.sleep(1.0 + attempt)
        log.info("LINE: added to a %s; said it is one-to-one only, and left", source.get("type"))

    async def _with_content(self, event: dict[str, Any], inbound: Inbound) -> Inbound:
        """Pictures (and files named as pictures) fetched from the content API and re-encoded; an album's
        later pictures are stored without a reply of their own."""
        message = event.get("message")
        if not isinstance(message, dict) or not inbound.items:
            return inbound
        item = inbound.items[0]
        kind = _str(message.get("type"))
        if kind == "image":
            provider = message.get("contentProvider")
            if isinstance(provider, dict) and provider.get("type") == "line":
                data = await self._content(_str(message.get("id")))
                picture = await asyncio.to_thread(file_item, "", "image/*", data) if data else None
                if picture is not None and picture.picture is not None:
                    item = Item("image", size=len(data or b""), picture=picture.picture)
                else:
                    item = Item("image", refused="broken_image")
            else:
                item = Item("image", refused="broken_image")  # an external URL is never fetched
            image_set = message.get("imageSet")
            if isinstance(image_set, dict) and _str(image_set.get("id")):
                quiet = not self._first_of_album(_str(image_set.get("id")), image_set.get("index"))
                return replace(inbound, items=(item,), flags=(*inbound.flags, ALBUM), quiet=quiet)
            return replace(inbound, items=(item,))
        if kind == "file" and is_picture_name(item.name):  # a picture sent as a file
            data = await self._content(_str(message.get("id")))
            if data:
                kept = await asyncio.to_thread(file_item, item.name, "", data)
                return replace(inbound, items=(kept,))
        return inbound

    async def _content(self, message_id: str) -> bytes | None:
        """The bytes of a message's content; None when LINE no longer has them (they expire). Other errors
        are raised, so that the event is tried again."""
        if not message_id:
            return None
        async with self._calling():
            assert self._client is not None
            try:
                data = await AsyncMessagingApiBlob(self._client).get_message_content(
                    message_id, _request_timeout=self._timeout
                )
            except ApiException as e:
                if e.status in (400, 404, 410):
                    log.info("LINE content is no longer there (%s)", e.status)
                    return None
                raise
        raw = bytes(data or b"")
        return raw if len(raw) <= MAX_FETCH else None

    def _first_of_album(self, set_id: str, index: object) -> bool:
        now = time.monotonic()
        for old in [k for k, t in self._albums.items() if now - t > ALBUM_SECONDS]:
            del self._albums[old]
        if isinstance(index, int) and not isinstance(index, bool):
            self._albums.setdefault(set_id, now)
            return index == 1
        first = set_id not in self._albums  # no index (older Android apps): the first to arrive
        self._albums[set_id] = now
        return first

    def _inbound(self, event: dict[str, Any]) -> Inbound | None:
        """One stored webhook event as the project's own ``Inbound``; None for what is not handled.

        Parsed from the documented JSON rather than the SDK's models: those turn a text message event
        without ``quoteToken`` (older payloads, redeliveries) silently into ``UnknownEvent``."""
        source = event.get("source")
        if not isinstance(source, dict) or source.get("type") != "user":
            return None  # groups and rooms: the service is one-to-one
        user = _str(source.get("userId"))
        if not user:
            return None
        kind_name = event.get("type")
        at = datetime.fromtimestamp(_timestamp(event), UTC)
        base: dict[str, Any] = {"channel": self.name, "user_id": user, "at": at}
        event_id = _ident(_str(event.get("webhookEventId")))
        if kind_name == "follow":
            return Inbound(kind=Kind.FOLLOW, external_id=f"event:{event_id}" if event_id else None, **base)
        if kind_name == "unfollow":
            return Inbound(kind=Kind.UNFOLLOW, external_id=f"event:{event_id}" if event_id else None, **base)
        if kind_name == "postback":
            postback = event.get("postback")
            data = _str(postback.get("data")) if isinstance(postback, dict) else ""
            if not data:
                return None
            return Inbound(
                kind=Kind.CHOICE, text=data, external_id=f"event:{event_id}" if event_id else None, **base
            )
        if kind_name not in ("message", "messageEdited"):
            return None
        message = event.get("message")
        if not isinstance(message, dict):
            return None
        message_id = _ident(_str(message.get("id"))) or None
        if kind_name == "messageEdited":
            # A new version of a message: stored beside the first (its id, then the event's), triaged.
            text = _str(message.get("text"))
            if not message_id or not text.strip():
                return None
            return Inbound(
                kind=Kind.TEXT,
                text=text,
                external_id=f"{message_id}:edit:{event_id}",
                flags=(EDITED,),
                **base,
            )
        if message.get("type") == "text":
            text = _str(message.get("text"))
            if not text.strip():
                return None
            return Inbound(kind=Kind.TEXT, text=text, external_id=message_id, **base)
        item = _item(message)
        if message.get("type") == "sticker" and _str(message.get("text")).strip():
            # A message sticker carries words the person typed: they are read like any text.
            return Inbound(
                kind=Kind.TEXT, text=_str(message.get("text")), external_id=message_id, items=(item,), **base
            )
        return Inbound(kind=Kind.MEDIA, external_id=message_id, items=(item,), **base)

    async def _unanswered(self, user: str, token: Kept) -> bool:
        """Whether this token is still the person's latest, unused: nothing has answered the event."""
        latest = await self.host.peek_reply_token(self.name, _user_key(user))
        return latest is not None and latest.token == token.token

    async def _loading_later(self, user: str, token: Kept) -> None:
        """The typing indicator, if the reply to this event has not gone out after ``LOADING_AFTER``
        (its reply token is still unused), and never while a counsellor holds the conversation (the bot
        is silent then: a counsellor's answer takes its own time)."""
        await asyncio.sleep(LOADING_AFTER)
        if not await self._unanswered(user, token):
            return  # answered already
        try:
            if await self.host.with_counsellor(self.name, user):
                return
        except Exception as e:
            log.info("LINE loading indicator skipped: %s", e.__class__.__name__)
            return
        if await self._unanswered(user, token):
            await self._loading(user)

    async def _loading(self, user: str) -> None:
        """The typing indicator while the engine works; only a courtesy, so a failure is ignored."""
        try:
            async with self._calling() as api:
                await api.show_loading_animation(
                    ShowLoadingAnimationRequest(chatId=user, loadingSeconds=LOADING_SECONDS),
                    _request_timeout=self._timeout,
                )
        except Exception as e:
            log.info("LINE loading indicator failed: %s", _reason(e))

    # -- outbound -------------------------------------------------------------------------------------------

    async def send(self, out: Outbound) -> Delivery:
        return await self.send_many([out])

    async def send_many(self, outs: list[Outbound]) -> Delivery:
        async with self._calling() as api:
            return await self._send(api, outs)

    async def _send(self, api: Any, outs: list[Outbound]) -> Delivery:
        out = outs[0]
        batches = _batches([m for o in outs for m in _messages(o.text, o.quick_replies)])
        first = 0
        group = retry_key([o.outbox_id for o in outs], 0)
        # The token an earlier attempt of this same group left in doubt, else the person's latest; single
        # use, so taken before the call.
        token = await self.host.take_reply_token(self.name, _group_key(group))
        token = token or await self.host.take_reply_token(self.name, _user_key(out.address))
        if token is not None and _fresh(token):
            try:
                await api.reply_message(
                    ReplyMessageRequest(replyToken=token.token, messages=batches[0]),
                    _request_timeout=self._timeout,
                )
                first = 1
            except ApiException as e:
                if not (e.status == 400 and "reply token" in _body_message(e).lower()):
                    delivery = _delivery(e)
                    if delivery.outcome is Outcome.RETRY:  # tried again with this token while it is fresh
                        again = replace(token, maybe_used=token.maybe_used or e.status != 429)
                        await self.host.keep_reply_token(self.name, _group_key(group), again, _left(again))
                    return delivery
                if token.maybe_used:
                    # The fresh token is used: by the earlier reply of this group, whose answer was lost.
                    log.info("LINE reply token used by an earlier attempt; that reply went out")
                    first = 1
                else:
                    log.info("LINE reply token expired or used; pushing instead")
            except Exception:
                again = replace(token, maybe_used=True)  # no answer: LINE may have taken it
                await self.host.keep_reply_token(self.name, _group_key(group), again, _left(again))
                raise
        for part in range(first, len(batches)):
            try:
                await api.push_message(
                    PushMessageRequest(to=out.address, messages=batches[part]),
                    x_line_retry_key=retry_key([o.outbox_id for o in outs], part),
                    _request_timeout=self._timeout,
                )
            except ApiException as e:
                if e.status == 409:
                    continue  # this retry key was accepted before: the message went out already
                return _delivery(e)
        return Delivery.delivered()


def _user_key(user: str) -> str:
    return "user:" + user


def _group_key(group: str) -> str:
    return "group:" + group


def _messages(text: str, quick_replies: tuple[str, ...]) -> list[Any]:
    """Text messages of at most MAX_TEXT characters; the quick replies go on the last one."""
    chunks = [text[i : i + MAX_TEXT] for i in range(0, len(text), MAX_TEXT)] or [" "]
    messages = [TextMessage(text=c) for c in chunks]
    if quick_replies:
        items = [
            # A label longer than LINE allows is cut; the text sent on a tap stays the full choice.
            QuickReplyItem(action=MessageAction(label=q[:MAX_LABEL], text=q))
            for q in quick_replies[:MAX_QUICK_REPLIES]
        ]
        messages[-1] = TextMessage(text=chunks[-1], quickReply=QuickReply(items=items))
    return messages


def _batches(messages: list[Any]) -> list[list[Any]]:
    return [messages[i : i + MAX_MESSAGES] for i in range(0, len(messages), MAX_MESSAGES)]


def _delivery(e: ApiException) -> Delivery:
    status = int(e.status or 0)
    reason = f"LINE {status}: {_body_message(e)}"[:300]
    if status == 429 or status >= 500 or status == 0:
        return Delivery.retry(reason, after=_retry_after(e))
    return Delivery.failed(reason)


def _retry_after(e: ApiException) -> float:
    """The seconds a 429 or 503 asks us to wait (``Retry-After`` in seconds), else 0."""
    headers = e.headers or {}
    value = str(headers.get("Retry-After") or headers.get("retry-after") or "").strip()
    return float(value) if value.isdigit() else 0.0


def _body_message(e: ApiException) -> str:
    """The API's error message (never message text: LINE does not echo it back)."""
    body = e.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return str(e.reason or "")
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body[:200]
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, str) else str(e.reason or "")


def _reason(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"LINE {e.status}: {_body_message(e)}"
    return e.__class__.__name__


def _events(body: str) -> list[tuple[str, str]] | None:
    """The batch as (event id, one event's JSON), or None when the body is not a webhook body.

    Events that will never be handled (groups and rooms, types we do not serve) are not stored."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        return None
    out = []
    for event in data["events"]:
        if not isinstance(event, dict):
            return None
        source = event.get("source")
        if not isinstance(source, dict) or event.get("mode") == "standby":
            continue  # standby: another module has the chat, and we neither store nor answer
        if source.get("type") == "user":
            if event.get("type") not in HANDLED:
                continue
        elif source.get("type") not in ("group", "room") or event.get("type") not in GROUP_HANDLED:
            continue  # nothing said in a group or room is stored
        payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        event_id = _ident(_str(event.get("webhookEventId")))
        out.append((event_id or "sha256:" + hashlib.sha256(payload.encode()).hexdigest(), payload))
    return out


def _item(message: dict[str, Any]) -> Item:
    """What the counsellor is shown of a message that is not text. The shapes:
    https://developers.line.biz/en/reference/messaging-api/#message-event (image, video, audio, file,
    location, sticker); any other type is named as LINE names it."""
    kind = _str(message.get("type"))[:32] or "unknown"
    if kind == "sticker":
        keywords = message.get("keywords")
        words = tuple(_str(k)[:40] for k in keywords[:15]) if isinstance(keywords, list) else ()
        return Item("sticker", keywords=tuple(w for w in words if w))
    if kind == "location":
        return Item(
            "location", title=_str(message.get("title"))[:200], address=_str(message.get("address"))[:300]
        )
    if kind == "file":
        name = _str(message.get("fileName"))[:200]
        size = message.get("fileSize")
        size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0
        return Item("file", name=name, size=size, refused=refused_kind(name, ""))
    return Item(kind)  # image (fetched by _with_content), video, audio, or a type LINE added later


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


MAX_ID = 64  # LINE's ids are 18 digits (messages) or 26 characters (events); stored ids have 128 at most


def _ident(value: str) -> str:
    """An id from the payload as it is stored: as it is when it looks like one, else its hash (an id no
    LINE payload carries must neither overflow the column nor break the database with a NUL)."""
    if len(value) <= MAX_ID and value.isprintable():
        return value
    return "h:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _timestamp(event: dict[str, Any]) -> float:
    """The event's time (epoch seconds); now when it has none, or none a date can hold."""
    ms = event.get("timestamp")
    if isinstance(ms, int | float) and not isinstance(ms, bool) and 0 < ms < 10**14:
        return ms / 1000.0
    return time.time()


def _error(status: int, message: str, *, retry: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(int(SIGNATURE_WINDOW))} if retry else None
    return JSONResponse({"detail": message}, status_code=status, headers=headers)
