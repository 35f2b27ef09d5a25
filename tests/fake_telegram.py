"""A local fake of the Telegram Bot API (https://core.telegram.org/bots/api), for python-telegram-bot's
``Bot(base_url=...)``: a real HTTP server on loopback (uvicorn in a thread), speaking the real protocol.

It checks what the real one checks for the methods tsunagi uses: the token in the path
(``/bot<token>/<method>``; a wrong one is 401), form-encoded or JSON bodies (PTB sends
``application/x-www-form-urlencoded`` with JSON-encoded non-string values), ``getMe``, ``getFile`` (a
``file_id`` a test put with ``put_file``, else 400 as for an unknown or expired one) and the file
download (``/file/bot<token>/<file_path>``), ``sendMessage`` (``chat_id``; ``text`` of 1 to 4096 UTF-16
units; a valid ``reply_markup`` with ``callback_data`` of 1 to 64 bytes), ``answerCallbackQuery`` and
``setWebhook`` (an https ``url``; a ``secret_token`` of 1 to 256 characters from ``A-Z a-z 0-9 _ -``).
Every call is recorded; it answers in the Bot API's envelope (``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code", "description"}``)
with Message objects PTB can parse. ``fail_next`` makes the next calls answer 429 (with ``retry_after``)
or 500; ``blocked`` chats answer 403 as for a person who blocked the bot. ``outage(mode, seconds)`` makes
every sendMessage fail for a while, then recover: ``500``, ``429`` with ``retry_after``, or ``hang`` (no
answer before the window ends: the client times out; recorded with status 0). Nothing is accepted then.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.helpers import free_port

BOT_ID = 7000000001
BOT_USER = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": "tsunagi",
    "username": "tsunagi_test_bot",
    "can_join_groups": False,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
SECRET_CHARS = re.compile(r"[A-Za-z0-9_-]{1,256}")
BUTTON_KINDS = {
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
}


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


@dataclass(frozen=True)
class Call:
    method: str
    params: dict[str, Any]
    status: int
    at: float = field(default_factory=time.monotonic)  # when it was answered (monotonic clock)


@dataclass
class FakeTelegram:
    token: str
    calls: list[Call] = field(default_factory=list)
    # (status, retry_after) for the next calls of sendMessage: 429 with retry_after, 500, or 200 (answered
    # as usual, so that a later call of the list fails).
    fail_next: list[tuple[int, int]] = field(default_factory=list)
    blocked: set[int] = field(default_factory=set)
    webhook: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # file_id -> the file's bytes
    downloaded: list[str] = field(default_factory=list)  # file paths fetched
    base_url: str = ""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _outage: tuple[str, float, int] = ("", 0.0, 0)  # mode, until (monotonic), retry_after seconds

    def outage(self, mode: str, seconds: float, retry_after: int = 0) -> None:
        """For ``seconds`` from now, fail every sendMessage without accepting it: ``"500"``, ``"429"``
        (``retry_after`` in its parameters, as the Bot API says it), or ``"hang"``."""
        assert mode in ("500", "429", "hang"), mode
        with self._lock:
            self._outage = (mode, time.monotonic() + seconds, retry_after)

    def message_calls(self, chat_id: int) -> list[Call]:
        """The sendMessage calls for one chat, answered or not, in the order they came."""
        return [c for c in self.of("sendMessage") if str(c.params.get("chat_id")) == str(chat_id)]

    def put_file(self, file_id: str, data: bytes) -> None:
        with self._lock:
            self.files[file_id] = data

    # -- what tests read -------------------------------------------------------------------------------

    def of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def sent(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """The sendMessage calls that succeeded (to one chat), in order: their parameters."""
        return [
            c.params
            for c in self.of("sendMessage")
            if c.status == 200 and (chat_id is None or c.params.get("chat_id") == chat_id)
        ]

    def texts(self, chat_id: int) -> list[str]:
        return [str(p["text"]) for p in self.sent(chat_id)]

    def wait_sent(self, chat_id: int, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait (bounded) until ``count`` messages reached the chat; then all of them."""
        deadline = time.monotonic() + timeout
        while len(self.sent(chat_id)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s: {len(self.sent(chat_id))} of {count} messages reached "
                    f"chat {chat_id}: {self.texts(chat_id)}; calls: {[c.method for c in self.calls]}"
                )
            time.sleep(0.05)
        return self.sent(chat_id)

    # -- the API ---------------------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

        @app.api_route("/bot{token}/{method}", methods=["GET", "POST"])
        async def api(token: str, method: str, request: Request) -> JSONResponse:
            if token != self.token:
                return _error(401, "Unauthorized")
            try:
                params = await _params(request)
            except ApiError as e:
                return _error(e.code, e.description)
            status = 200
            down = await self._down(method, params)
            if down is not None:
                return down
            try:
                result = self._call(method, params)
            except ApiError as e:
                status = e.code
                response = _error(e.code, e.description, e.parameters)
            else:
                response = JSONResponse({"ok": True, "result": result})
            with self._lock:
                self.calls.append(Call(method, params, status))
            return response

        @app.get("/file/bot{token}/{file_path:path}")
        async def download(token: str, file_path: str) -> Response:
            if token != self.token:
                return _error(401, "Unauthorized")
            file_id = file_path.rpartition("/")[2].partition(".")[0]
            with self._lock:
                data = self.files.get(file_id)
                self.downloaded.append(file_path)
            if data is None:
                return _error(404, "Not Found")
            return Response(content=data, media_type="application/octet-stream")

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def other(path: str) -> JSONResponse:
            return _error(404, "Not Found")

        return app

    async def _down(self, method: str, params: dict[str, Any]) -> JSONResponse | None:
        """The answer of a sendMessage during an outage (recorded), or None."""
        with self._lock:
            mode, until, retry_after = self._outage
        left = until - time.monotonic()
        if method != "sendMessage" or left <= 0:
            return None
        if mode == "hang":
            with self._lock:
                self.calls.append(Call(method, params, 0))
            await asyncio.sleep(left + 1.0)  # the client gave up long ago
            return _error(500, "Internal Server Error")
        with self._lock:
            self.calls.append(Call(method, params, int(mode)))
        if mode == "429":
            return _error(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})
        return _error(500, "Internal Server Error")

    def _call(self, method: str, p: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method == "sendMessage":
            return self._send_message(p)
        if method == "answerCallbackQuery":
            if not isinstance(p.get("callback_query_id"), str) or not p["callback_query_id"]:
                raise ApiError(
                    400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
                )
            return True
        if method == "setWebhook":
            return self._set_webhook(p)
        if method == "getFile":
            file_id = p.get("file_id")
            with self._lock:
                data = self.files.get(file_id) if isinstance(file_id, str) else None
            if data is None:
                raise ApiError(400, "Bad Request: invalid file_id")
            return {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "file_size": len(data),
                "file_path": f"photos/{file_id}.jpg",
            }
        if method == "getWebhookInfo":
            return {
                "url": self.webhook.get("url", ""),
                "has_custom_certificate": False,
                "pending_update_count": 0,
            }
        raise ApiError(404, "Not Found")

    def _send_message(self, p: dict[str, Any]) -> dict[str, Any]:
        chat_id = p.get("chat_id")
        if chat_id is None or chat_id == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            chat_id = int(chat_id)
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        text = p.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        markup = p.get("reply_markup")
        if markup is not None:
            _check_markup(markup)
        with self._lock:
            code, retry_after = self.fail_next.pop(0) if self.fail_next else (200, 0)
            if code != 200:
                if code == 429:
                    raise ApiError(
                        429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
                    )
                raise ApiError(code, "Internal Server Error")
            if chat_id in self.blocked:
                raise ApiError(403, "Forbidden: bot was blocked by the user")
            message_id = next(self._ids)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": BOT_USER,
            "chat": {"id": chat_id, "type": "private", "first_name": "User"},
            "date": int(time.time()),
            "text": text,
        }
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        p["chat_id"] = chat_id
        return message

    def _set_webhook(self, p: dict[str, Any]) -> bool:
        url = p.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = p.get("secret_token")
        if secret is not None and not (isinstance(secret, str) and SECRET_CHARS.fullmatch(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        allowed = p.get("allowed_updates")
        if allowed is not None and not (
            isinstance(allowed, list) and all(isinstance(a, str) for a in allowed)
        ):
            raise ApiError(400, "Bad Request: can't parse allowed updates")
        self.webhook = dict(p)
        return True


def _check_markup(markup: Any) -> None:
    if not isinstance(markup, dict):
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    if "inline_keyboard" in markup:
        rows = markup["inline_keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ApiError(
                400,
                'Bad Request: field "inline_keyboard" must be an Array of Arrays',
            )
        for row in rows:
            for b in row:
                if not isinstance(b, dict) or not isinstance(b.get("text"), str) or not b["text"]:
                    raise ApiError(400, 'Bad Request: can\'t find field "text"')
                kinds = BUTTON_KINDS & b.keys()
                if len(kinds) != 1:
                    raise ApiError(
                        400, "Bad Request: inline keyboard button must have exactly one optional field"
                    )
                data = b.get("callback_data")
                if "callback_data" in b and not (
                    isinstance(data, str) and 1 <= len(data.encode("utf-8")) <= 64
                ):
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    elif "keyboard" in markup:
        rows = markup["keyboard"]
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise ApiError(400, 'Bad Request: field "keyboard" must be an Array of Arrays')
    elif not ({"remove_keyboard", "force_reply"} & markup.keys()):
        raise ApiError(400, "Bad Request: can't parse reply keyboard markup JSON object")


async def _params(request: Request) -> dict[str, Any]:
    """The parameters as the Bot API reads them: a query string, a form with JSON-encoded values, or a
    JSON object (https://core.telegram.org/bots/api#making-requests)."""
    body = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    params: dict[str, Any] = dict(request.query_params)
    if not body:
        return params
    if ctype == "application/json":
        try:
            value = json.loads(body)
        except ValueError as e:
            raise ApiError(400, "Bad Request: can't parse JSON") from e
        if not isinstance(value, dict):
            raise ApiError(400, "Bad Request: parameters must be a JSON object")
        params.update(value)
        return params
    if ctype == "application/x-www-form-urlencoded":
        for k, v in parse_qsl(body.decode("utf-8"), keep_blank_values=True):
            params[k] = _decode(k, v)
        return params
    raise ApiError(400, f"Bad Request: unsupported content type {ctype!r} in this fake")


# Parameters whose form value is JSON (objects, arrays); the others are read as the strings they are.
JSON_PARAMS = {"reply_markup", "allowed_updates", "entities", "link_preview_options", "reply_parameters"}


def _decode(key: str, value: str) -> Any:
    if key in JSON_PARAMS:
        try:
            return json.loads(value)
        except ValueError as e:
            raise ApiError(400, f"Bad Request: can't parse {key} JSON object") from e
    return value


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=code)


@contextmanager
def running_fake(token: str) -> Iterator[FakeTelegram]:
    """The fake on a free loopback port; ``fake.base_url`` is what TSUNAGI_TELEGRAM_API_BASE should be."""
    fake = FakeTelegram(token=token)
    port = free_port()
    config = uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-telegram", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the fake Bot API did not start")
        time.sleep(0.02)
    fake.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
