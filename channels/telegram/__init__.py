"""Telegram: ``POST /webhooks/telegram`` (the Bot API's webhook), as docs/contract.md says.

The webhook checks ``X-Telegram-Bot-Api-Secret-Token`` (the ``secret_token`` given to setWebhook), stores
the update in the inbox keyed on its ``update_id`` (Telegram redelivers until it gets a 2xx) and answers at
once; the inbox worker hands each stored update to ``process``, which turns it into an ``Inbound``.
Replies go out through python-telegram-bot's ``Bot`` (wrapped, never subclassed), pointed at
``TSUNAGI_TELEGRAM_API_BASE`` so that tests use a local fake Bot API.

Only private chats are read: a message in a group (or the bot being added to one) is ignored, so the bot
never reads or stores what other people write. The person's platform id is the private chat's id.

Update shapes: https://core.telegram.org/bots/api#update (``message``, ``callback_query``,
``my_chat_member``); webhook: https://core.telegram.org/bots/api#setwebhook.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from telegram import (
    Bot,
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    Update,
    User,
)
from telegram.constants import ChatMemberStatus, ChatType, MessageLimit
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest

from bot.guard import SIGNATURE_WINDOW
from bot.images import file_item, is_picture_name, refused_kind
from bot.types import ALBUM, Delivery, Inbound, Item, Kind, Outbound
from channels.base import Channel
from channels.host import ChannelHost

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger("tsunagi.telegram")
# python-telegram-bot 22 gives time periods (RetryAfter.retry_after) as timedelta with this set, as its next
# major version will; without it every flood-control error also warns that the int form is deprecated.
os.environ.setdefault("PTB_TIMEDELTA", "true")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY = 1024 * 1024  # bytes; an update is a few kilobytes at most
MAX_TEXT = MessageLimit.MAX_TEXT_LENGTH  # 4096, counted by Telegram in UTF-16 code units
MAX_CALLBACK_DATA = 64  # bytes (https://core.telegram.org/bots/api#inlinekeyboardbutton)
INDEX_PREFIX = "#"  # callback_data "#<n>": the n-th button of the message, for labels over 64 bytes
# What setWebhook asks for: everything ``process`` reads, nothing more.
ALLOWED_UPDATES = ("message", "callback_query", "my_chat_member")
MAX_FETCH = 20 * 1024 * 1024  # bytes: the Bot API's own getFile limit
ALBUM_SECONDS = 600.0

# The webhook in the app's OpenAPI (the app serves none; tests/test_api_schema.py reads it): an Update
# (https://core.telegram.org/bots/api#update) and every answer.
_ERROR = {"application/json": {"schema": {"type": "object", "required": ["error"]}}}
_LIMIT = {"application/json": {"schema": {"type": "object", "required": ["detail"]}}}  # bot/guard.py's
OPENAPI: dict[str, Any] = {
    "parameters": [{"name": SECRET_HEADER, "in": "header", "required": True, "schema": {"type": "string"}}],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["update_id"],
                    "properties": {"update_id": {"type": "integer"}, "message": {"type": "object"}},
                }
            }
        },
    },
    "responses": {
        "200": {"description": "stored", "content": {"application/json": {"schema": {"type": "object"}}}},
        "400": {"description": "not JSON, or not an update", "content": _ERROR},
        "403": {"description": "missing or wrong secret token", "content": _ERROR},
        "408": {"description": "the body did not arrive in time", "content": _LIMIT},
        "413": {"description": "body over the limit", "content": _LIMIT},
        "429": {"description": "too many wrong secret tokens from this address", "content": _ERROR},
    },
}


def make_bot(settings: Settings) -> Bot:
    """A Bot for the configured token, talking to ``TSUNAGI_TELEGRAM_API_BASE``. PTB appends the token
    to ``base_url`` (``<base>/bot<token>/<method>``), as the Bot API expects. A call that gets no answer
    within ``api_timeout`` seconds fails (``TimedOut``) and is tried again later."""
    base = settings.telegram_api_base.rstrip("/")
    wait = settings.api_timeout
    return Bot(
        settings.telegram_bot_token,
        base_url=f"{base}/bot",
        base_file_url=f"{base}/file/bot",
        request=HTTPXRequest(read_timeout=wait, write_timeout=wait, connect_timeout=wait),
    )


class TelegramChannel(Channel):
    name: ClassVar[str] = "telegram"
    buttons: ClassVar[bool] = True

    def __init__(self, host: ChannelHost) -> None:
        super().__init__(host)
        self.settings = host.settings
        self._bot: Bot | None = None
        self._albums: dict[str, float] = {}  # media_group_id -> when first seen: one reply per album

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.telegram_bot_token and settings.telegram_secret_token)

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def bot(self) -> Bot:
        if self._bot is None:
            raise RuntimeError("the Telegram channel is not started")
        return self._bot

    async def start(self) -> None:
        # httpx logs every request URL at INFO, and a Bot API URL carries the bot token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._bot = make_bot(self.settings)
        try:
            await self._bot.initialize()  # getMe: checks the token
        except TelegramError as e:
            # Never str(e): InvalidToken's message contains the token. Sends still work once the Bot API
            # is reachable (the outbox retries), so the service starts anyway.
            log.warning("Telegram getMe failed at start (%s); sending will be retried", type(e).__name__)

    async def stop(self) -> None:
        if self._bot is not None:
            try:
                await self._bot.shutdown()
            except Exception as e:
                log.warning("Telegram bot shutdown failed: %s", type(e).__name__)
            self._bot = None

    # -- webhook ---------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter()
        expected = self.settings.telegram_secret_token.encode()

        @r.post("/webhooks/telegram", openapi_extra=OPENAPI)
        async def telegram_webhook(request: Request) -> Response:
            given = request.headers.get(SECRET_HEADER, "").encode()
            if not hmac.compare_digest(given, expected):
                address = request.client.host if request.client else "?"
                if self.host.signature_failed(self.name, address):
                    return JSONResponse(
                        {"error": "too many bad secret tokens: wait a few minutes"},
                        status_code=429,
                        headers={"Retry-After": str(int(SIGNATURE_WINDOW))},
                    )
                return JSONResponse({"error": "forbidden"}, status_code=403)
            body = await request.body()
            if len(body) > MAX_BODY:
                return JSONResponse({"error": "too large"}, status_code=413)
            try:
                raw = body.decode("utf-8")  # Telegram sends UTF-8 (json.loads alone would take UTF-16 too)
                update = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                return JSONResponse({"error": "not valid JSON"}, status_code=400)
            update_id = update.get("update_id") if isinstance(update, dict) else None
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                return JSONResponse({"error": "an update needs an integer update_id"}, status_code=400)
            try:  # read as ``process`` will read it: what cannot be read would fail on every attempt
                readable = _readable(Update.de_json(update, None))
            except Exception:  # any shape PTB does not expect (KeyError, TypeError, ValueError...)
                readable = False
            if not readable:
                return JSONResponse({"error": "not a Telegram update"}, status_code=400)
            # Names are never stored (pseudonymous contacts): only ids and what was written.
            await self.store_events(
                [(str(update_id), json.dumps(_without_names(update), ensure_ascii=False))]
            )
            return JSONResponse({})

        return r

    # -- inbound ---------------------------------------------------------------------------------------

    def peek(self, payload: str) -> tuple[str, str] | None:
        update = json.loads(payload)
        if not isinstance(update, dict):
            return None
        for key in ("message", "edited_message", "callback_query", "my_chat_member"):
            part = update.get(key)
            if not isinstance(part, dict):
                continue
            inner = part.get("message") if key == "callback_query" else part
            chat = inner.get("chat") if isinstance(inner, dict) else None
            who = chat.get("id") if isinstance(chat, dict) else None
            if who is None and isinstance(part.get("from"), dict):
                who = part["from"].get("id")
            if who is None:
                return None
            text = part.get("data") if key == "callback_query" else part.get("text") or part.get("caption")
            return str(who), text if isinstance(text, str) else ""
        return None

    async def process(self, payload: str) -> None:
        update = Update.de_json(json.loads(payload), None)
        if update.callback_query is not None:
            await self._callback(update.callback_query)
        elif update.message is not None:
            await self._message(update.message)
        elif update.my_chat_member is not None:
            member = update.my_chat_member
            if member.chat.type != ChatType.PRIVATE:
                return
            if member.new_chat_member.status == ChatMemberStatus.BANNED:  # "kicked": they blocked the bot
                await self.receive(
                    Inbound(
                        channel=self.name,
                        user_id=str(member.chat.id),
                        kind=Kind.UNFOLLOW,
                        external_id=f"u{update.update_id}",
                    )
                )
        # Anything else (edited messages, channel posts...) is not asked for and not read.

    async def _message(self, msg: Message) -> None:
        if msg.chat.type != ChatType.PRIVATE:
            return  # groups are never read
        user = str(msg.chat.id)
        ident = f"{msg.chat.id}:{msg.message_id}"
        text = msg.text
        if text is not None:
            command = text.split(maxsplit=1)[0] if text.strip() else ""
            if command == "/start" or command.startswith("/start@"):
                # The first message of every Telegram chat (the Start button), possibly with a deep link.
                await self.receive(
                    Inbound(channel=self.name, user_id=user, kind=Kind.FOLLOW, external_id=ident)
                )
                return
            await self.receive(Inbound(channel=self.name, user_id=user, text=text, external_id=ident))
            return
        if msg.effective_attachment is not None or msg.location is not None or msg.venue is not None:
            # Pictures, stickers, files, voice, video and places bypass text triage: they are stored and
            # shown to the counsellor (pictures re-encoded; other files refused by kind, the person told).
            item = await self._item(msg)
            quiet = False
            if msg.media_group_id:  # an album: several messages, one reply
                quiet = not self._first_of_album(msg.media_group_id)
            await self.receive(
                Inbound(
                    channel=self.name,
                    user_id=user,
                    kind=Kind.MEDIA,
                    external_id=ident,
                    items=(item,),
                    quiet=quiet,
                    flags=(ALBUM,) if msg.media_group_id else (),
                )
            )
            if msg.caption:
                # A caption is text the person wrote: triage it like any message.
                await self.receive(
                    Inbound(
                        channel=self.name,
                        user_id=user,
                        text=msg.caption,
                        external_id=f"{ident}:caption",
                    )
                )
        # Service messages (a pinned message, a new chat photo...) say nothing to answer.

    async def _item(self, msg: Message) -> Item:
        """What the counsellor is shown of a message that is not text (https://core.telegram.org/bots/api#message)."""
        if msg.photo:
            # The largest size Telegram made of it that is not too large to fetch.
            sizes = [p for p in msg.photo if (p.file_size or 0) <= MAX_FETCH] or list(msg.photo[:1])
            best = max(sizes, key=lambda p: p.width * p.height)
            data = await self._download(best.file_id)
            kept = await asyncio.to_thread(file_item, "", "image/jpeg", data) if data else None
            if kept is not None and kept.picture is not None:
                return Item("image", size=len(data or b""), picture=kept.picture)
            return Item("image", refused="broken_image")
        if msg.document is not None:
            doc = msg.document
            name, mime, size = doc.file_name or "", doc.mime_type or "", doc.file_size or 0
            if (mime.startswith("image/") or is_picture_name(name)) and size <= MAX_FETCH:
                data = await self._download(doc.file_id)
                if data:
                    return await asyncio.to_thread(file_item, name, mime, data)
            return Item("file", name=name, size=size, refused=refused_kind(name, mime))
        if msg.sticker is not None:
            return Item("sticker", keywords=(msg.sticker.emoji,) if msg.sticker.emoji else ())
        if msg.venue is not None:
            return Item("location", title=msg.venue.title, address=msg.venue.address)
        if msg.location is not None:
            return Item("location")
        if msg.voice is not None or msg.audio is not None:
            return Item("audio")
        if msg.video is not None or msg.video_note is not None or msg.animation is not None:
            return Item("video")
        return Item(type(msg.effective_attachment).__name__.lower()[:32] or "unknown")

    async def _download(self, file_id: str) -> bytes | None:
        """A file's bytes through getFile; None when Telegram refuses it (too large, unknown, expired).
        Network errors are raised: the update is tried again."""
        try:
            file = await self.bot.get_file(file_id)
            data = await file.download_as_bytearray()
        except (BadRequest, Forbidden, InvalidToken) as e:
            # 400 for an unknown or too large file; PTB reads a 404 on the download as InvalidToken.
            log.info("Telegram file not available: %s", type(e).__name__)
            return None
        return bytes(data) if len(data) <= MAX_FETCH else None

    def _first_of_album(self, group_id: str) -> bool:
        now = time.monotonic()
        for old in [k for k, t in self._albums.items() if now - t > ALBUM_SECONDS]:
            del self._albums[old]
        first = group_id not in self._albums
        self._albums[group_id] = now
        return first

    async def _callback(self, query: CallbackQuery) -> None:
        message = query.message
        if message is not None and message.chat.type != ChatType.PRIVATE:
            return
        # Stop the button's spinner first; a stale query (processed late) cannot be answered, which
        # does not matter.
        try:
            await self.bot.answer_callback_query(query.id)
        except TelegramError as e:
            log.info("answerCallbackQuery failed: %s", type(e).__name__)
        label = _label(query)
        if not label:
            return
        chat_id = message.chat.id if message is not None else query.from_user.id
        await self.receive(
            Inbound(
                channel=self.name,
                user_id=str(chat_id),
                text=label,
                kind=Kind.CHOICE,
                external_id=f"cb:{query.id}",
            )
        )

    # -- outbound --------------------------------------------------------------------------------------

    async def send(self, out: Outbound) -> Delivery:
        try:
            chat_id = int(out.address)
        except ValueError:
            return Delivery.failed("not a Telegram chat id")
        chunks = split_text(out.text)
        markup = keyboard(out.quick_replies)
        sent = min(out.progress, len(chunks))  # parts a failed attempt already delivered: not again
        delivery = await self._send_parts(chat_id, chunks, sent, markup)
        return replace(delivery, progress=delivery.progress or sent)

    async def _send_parts(
        self, chat_id: int, chunks: list[str], start: int, markup: InlineKeyboardMarkup | None
    ) -> Delivery:
        """Send ``chunks[start:]`` in order; a failure says how many parts arrived in all (progress)."""
        sent = start
        try:
            for i in range(start, len(chunks)):
                last = i == len(chunks) - 1
                await self.bot.send_message(
                    chat_id=chat_id, text=chunks[i], reply_markup=markup if last else None
                )
                sent = i + 1
        except RetryAfter as e:  # flood control: Telegram says how long to wait
            seconds = _seconds(e)
            return Delivery.retry(f"RetryAfter (429, {seconds:.0f} s)", after=seconds, progress=sent)
        except Forbidden as e:  # the person blocked the bot, or deleted their account
            return Delivery.failed(self._reason(e))
        except ChatMigrated as e:
            return Delivery.failed(self._reason(e))
        except BadRequest as e:  # before NetworkError: BadRequest is one of its subclasses
            return Delivery.failed(self._reason(e))
        except InvalidToken:  # a configuration error: it may be fixed, so try again later
            return Delivery.retry("InvalidToken", progress=sent)
        except NetworkError as e:  # TimedOut, connection errors and 5xx answers
            return Delivery.retry(self._reason(e), progress=sent)
        except TelegramError as e:
            return Delivery.retry(self._reason(e), progress=sent)
        return Delivery.delivered()

    def _reason(self, e: TelegramError) -> str:
        """The platform's error for the outbox row: Telegram's description, never the token."""
        text = f"{type(e).__name__}: {e.message}"
        token = self.settings.telegram_bot_token
        return text.replace(token, "***") if token else text


def _fits(data: str) -> bool:
    return 0 < len(data.encode("utf-8")) <= MAX_CALLBACK_DATA


def keyboard(quick_replies: tuple[str, ...]) -> InlineKeyboardMarkup | None:
    """One button per row. The label itself is the callback data when it fits in 64 bytes (so a press is
    understood even without the message); otherwise "#<n>", read back from the pressed message's own
    keyboard (the callback query carries that message)."""
    if not quick_replies:
        return None
    rows = []
    for i, label in enumerate(quick_replies):
        data = label if _fits(label) and not label.startswith(INDEX_PREFIX) else f"{INDEX_PREFIX}{i}"
        rows.append([InlineKeyboardButton(label, callback_data=data)])
    return InlineKeyboardMarkup(rows)


def _label(query: CallbackQuery) -> str:
    data = query.data or ""
    if not data.startswith(INDEX_PREFIX):
        return data
    message = query.message
    markup = message.reply_markup if isinstance(message, Message) else None
    if markup is not None:
        for row in markup.inline_keyboard:
            for button in row:
                if button.callback_data == data:
                    return button.text
    return ""  # the message is too old to be sent with the query: the press cannot be read


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Pieces of at most ``limit`` UTF-16 code units (Telegram's count), cut at a line break where there
    is one in the second half of a piece, else at a character boundary; never an empty piece."""
    if _utf16(text) <= limit:
        return [text or " "]
    pieces: list[str] = []
    rest = text
    while _utf16(rest) > limit:
        # The longest prefix that fits (a surrogate pair counts two).
        n, units = 0, 0
        for ch in rest:
            w = 2 if ord(ch) > 0xFFFF else 1
            if units + w > limit:
                break
            units += w
            n += 1
        cut = rest.rfind("\n", 0, n)
        if cut < n // 2:
            cut = n
        else:
            cut += 1  # the line break stays with the first piece
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


_NAME_KEYS = ("last_name", "username")


def _readable(update: Update) -> bool:
    """Whether what ``process`` reads is there with its type: PTB builds objects from whatever JSON it is
    given (a ``text`` that is a number, a callback query from nobody), and those would fail on every
    attempt in the inbox."""

    def message_ok(m: Message | None) -> bool:
        return m is None or (
            isinstance(m.chat, Chat)
            and isinstance(m.chat.id, int)
            and isinstance(m.message_id, int)
            and all(v is None or isinstance(v, str) for v in (m.text, m.caption, m.media_group_id))
        )

    query = update.callback_query
    if query is not None:
        return (
            isinstance(query.from_user, User)
            and isinstance(query.from_user.id, int)
            and (query.data is None or isinstance(query.data, str))
            and (query.message is None or isinstance(query.message.chat, Chat))  # inaccessible: chat only
            and message_ok(query.message if isinstance(query.message, Message) else None)
        )
    member = update.my_chat_member
    if member is not None and not (isinstance(member.chat, Chat) and member.new_chat_member is not None):
        return False
    return message_ok(update.message)


def _without_names(value: Any) -> Any:
    """The update with every person's and chat's name taken out (first_name, which the Bot API's
    User requires, becomes "-")."""
    if isinstance(value, dict):
        out = {k: _without_names(v) for k, v in value.items() if k not in _NAME_KEYS}
        if "first_name" in out:
            out["first_name"] = "-"
        if "title" in out and out.get("type") in ("group", "supergroup", "channel"):
            out["title"] = "-"
        return out
    if isinstance(value, list):
        return [_without_names(v) for v in value]
    return value


def _seconds(e: RetryAfter) -> float:
    """RetryAfter's wait in seconds (a timedelta with PTB_TIMEDELTA, an int without)."""
    wait = e.retry_after
    return wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
