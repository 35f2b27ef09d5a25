"""A local fake of the LINE Messaging API: the endpoints the LINE channel uses, checked as LINE checks them.

It runs a stdlib HTTP server on 127.0.0.1 in a thread (the SDK's aiohttp client talks to it over real
TCP) and records every request. What it enforces, after the API reference
(https://developers.line.biz/en/reference/messaging-api/):
- ``Authorization: Bearer <channel access token>`` on every call (401 otherwise);
- reply (``/v2/bot/message/reply``) and push (``/v2/bot/message/push``): 1..5 messages, text messages of
  1..5000 characters, quick replies of 1..13 items with labels of 1..20 characters (400 otherwise);
- reply tokens are issued here (tests put them into webhook events), single use and short-lived:
  a used, expired or unknown one answers 400 ``Invalid reply token``;
- ``X-Line-Retry-Key`` on push: a key already accepted answers 409 and nothing is recorded again;
- loading indicator (``/v2/bot/chat/loading/start``): ``chatId`` and ``loadingSeconds`` 5..60 by 5;
- content (``GET /v2/bot/message/{messageId}/content``, on api-data.line.me in production): the bytes a
  test put there with ``put_content``, with their Content-Type; 404 for any other id (content expires);
- leaving (``POST /v2/bot/group/{groupId}/leave``, ``/v2/bot/room/{roomId}/leave``): recorded in ``left``;
  404 for a group or room the bot is not in (one it already left).
It can be told to answer an error status for the next N message calls (``fail``), or to accept the
next N message calls and then answer 500, or nothing at all, as if the response were lost (``lose``).
``outage(mode, seconds)`` makes every message and loading call fail for a while and then recover: ``500``,
``429`` with ``Retry-After``, or ``hang`` (no answer until the window is over: the client times out), and
nothing is accepted meanwhile. Every call is recorded with when it came (``Call.at``, monotonic) and whom
a message call was for (``Call.to``), answered or not (status 0: no answer).
Any other path (the profile endpoint included) answers 404 and is recorded in ``unexpected``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MESSAGE_PATHS = ("/v2/bot/message/reply", "/v2/bot/message/push")
LOADING_PATH = "/v2/bot/chat/loading/start"
CONTENT_PATH = re.compile(r"^/v2/bot/message/([0-9]+)/content$")
LEAVE_PATH = re.compile(r"^/v2/bot/(group|room)/([A-Za-z0-9]+)/leave$")


@dataclass(frozen=True)
class Sent:
    """Messages LINE accepted for one person in one request."""

    via: str  # "reply" or "push"
    to: str
    texts: tuple[str, ...]
    quick_replies: tuple[tuple[str, str], ...]  # (label, text) of the last message's items
    retry_key: str | None


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int  # 0: no answer was given (the fake hung)
    to: str = ""  # whom a message call was for (a reply's token names the person)
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Token:
    user: str
    expires: float
    used: bool = False


@dataclass
class FakeLine:
    access_token: str
    calls: list[Call] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    loading: list[str] = field(default_factory=list)  # chatIds the indicator was shown to
    left: list[tuple[str, str]] = field(default_factory=list)  # ("group" or "room", its id)
    content: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # message id -> (bytes, type)
    fetched: list[str] = field(default_factory=list)  # message ids whose content was asked for
    joined: set[str] = field(default_factory=set)  # groups and rooms the bot is in
    unexpected: list[Call] = field(default_factory=list)
    _tokens: dict[str, _Token] = field(default_factory=dict)
    _retry_keys: set[str] = field(default_factory=set)
    _fail: list[int] = field(default_factory=list)
    _lose: int = 0
    _lose_hanging: bool = False
    _outage: tuple[str, float, int] = ("", 0.0, 0)  # mode, until (monotonic), Retry-After seconds
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # -- control ---------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def issue_token(self, user: str, ttl: float = 60.0, token: str | None = None) -> str:
        """A reply token for an event of ``user`` (a group's or room's id for events there), valid for
        ``ttl`` seconds (LINE: about a minute); ``token`` when a fixture names it."""
        token = token or secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = _Token(user, time.monotonic() + ttl)
        return token

    def fail(self, status: int, times: int = 1) -> None:
        """Answer ``status`` to the next ``times`` reply or push calls, without accepting them."""
        with self._lock:
            self._fail.extend([status] * times)

    def lose(self, times: int = 1, *, hang: bool = False) -> None:
        """Accept the next ``times`` reply or push calls, then answer 500 (a response lost on the way), or
        with ``hang`` nothing until the client gives up."""
        with self._lock:
            self._lose += times
            self._lose_hanging = hang

    def outage(self, mode: str, seconds: float, retry_after: int = 0) -> None:
        """For ``seconds`` from now, fail every message and loading call without accepting it: ``"500"``,
        ``"429"`` (with ``Retry-After: retry_after``), or ``"hang"`` (no answer before the window ends)."""
        assert mode in ("500", "429", "hang"), mode
        with self._lock:
            self._outage = (mode, time.monotonic() + seconds, retry_after)

    def message_calls(self, user: str) -> list[Call]:
        """The reply and push calls for ``user``, answered or not, in the order they came."""
        with self._lock:
            return [c for c in self.calls if c.path in MESSAGE_PATHS and c.to == user]

    def put_content(self, message_id: str, data: bytes, content_type: str = "image/jpeg") -> None:
        with self._lock:
            self.content[message_id] = (data, content_type)

    def join(self, group: str) -> None:
        with self._lock:
            self.joined.add(group)

    def to(self, user: str) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.to == user]

    def paths(self) -> list[str]:
        with self._lock:
            return [c.path for c in self.calls]

    # -- server ----------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeLine:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as aiohttp expects

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, answer, extra = fake._answer(method, self.path, headers, body)
                if status == 0:  # no answer: hold the request past the client's timeout, then drop it
                    time.sleep(float(extra.get("hang", "0")))
                    self.close_connection = True
                    return
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", extra.pop("content-type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-line-request-id", str(uuid.uuid4()))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-line", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # -- the API ---------------------------------------------------------------------------------------------

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            status, answer, extra = self._outage_answer(path) or self._route(method, path, headers, body)
            call = Call(method, path, headers, body, status, self._recipient(path, body))
            self.calls.append(call)
            if status == 404 and not (CONTENT_PATH.match(path) or LEAVE_PATH.match(path)):
                self.unexpected.append(call)
            return status, answer, extra

    def _recipient(self, path: str, body: Any) -> str:
        if path not in MESSAGE_PATHS or not isinstance(body, dict):
            return ""
        if path.endswith("/push"):
            return str(body.get("to", ""))
        token = self._tokens.get(str(body.get("replyToken", "")))
        return token.user if token else ""

    def _outage_answer(self, path: str) -> tuple[int, Any, dict[str, str]] | None:
        """The answer of a call during an outage (None: there is none, or not for this path)."""
        mode, until, retry_after = self._outage
        left = until - time.monotonic()
        if left <= 0 or path not in (*MESSAGE_PATHS, LOADING_PATH):
            return None
        if mode == "hang":
            return 0, b"", {"hang": str(left + 1.0)}
        if mode == "429":
            return (
                429,
                {"message": "The API rate limit has been exceeded."},
                {"Retry-After": str(retry_after)},
            )
        return 500, {"message": "Internal server error"}, {}

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        if headers.get("authorization") != f"Bearer {self.access_token}":
            return 401, {"message": "Authentication failed. Confirm that the access token is valid."}, {}
        content = CONTENT_PATH.match(path)
        if method == "GET" and content:
            self.fetched.append(content.group(1))
            found = self.content.get(content.group(1))
            if found is None:
                return 404, {"message": "Not found"}, {}
            return 200, found[0], {"content-type": found[1]}
        leave = LEAVE_PATH.match(path)
        if method == "POST" and leave:
            if leave.group(2) not in self.joined:
                return 404, {"message": "Not found"}, {}  # a 404 that is expected: not "unexpected"
            self.joined.discard(leave.group(2))
            self.left.append((leave.group(1), leave.group(2)))
            return 200, {}, {}
        if method != "POST" or path not in (*MESSAGE_PATHS, LOADING_PATH):
            return 404, {"message": "Not found"}, {}
        if not headers.get("content-type", "").startswith("application/json") or not isinstance(body, dict):
            return 400, {"message": "The request body has 1 error(s)"}, {}
        if path == LOADING_PATH:
            seconds = body.get("loadingSeconds", 20)
            chat = body.get("chatId")
            if not isinstance(chat, str) or not chat or seconds not in range(5, 61, 5):
                return 400, {"message": "The request body has 1 error(s)"}, {}
            self.loading.append(chat)
            return 202, {}, {}
        problem = _check_messages(body.get("messages"))
        if problem:
            return 400, {"message": "The request body has 1 error(s)", "details": [{"message": problem}]}, {}
        if self._fail:
            status = self._fail.pop(0)
            return status, {"message": "The API rate limit has been exceeded." if status == 429 else ""}, {}
        if path.endswith("/reply"):
            token = self._tokens.get(body.get("replyToken", ""))
            if token is None or token.used or time.monotonic() > token.expires:
                return 400, {"message": "Invalid reply token"}, {}
            token.used = True
            to, key = token.user, None
        else:
            to = body.get("to")
            if not isinstance(to, str) or not to:
                return 400, {"message": "The request body has 1 error(s)"}, {}
            key = headers.get("x-line-retry-key")
            if key is not None:
                try:
                    uuid.UUID(key)
                except ValueError:
                    return 400, {"message": "The retry key must be a UUID"}, {}
                if key in self._retry_keys:
                    return (
                        409,
                        {"message": "The retry key is already accepted"},
                        {"x-line-accepted-request-id": str(uuid.uuid4())},
                    )
                self._retry_keys.add(key)
        messages = body["messages"]
        quick = messages[-1].get("quickReply", {}).get("items", [])
        self.sent.append(
            Sent(
                via="reply" if path.endswith("/reply") else "push",
                to=to,
                texts=tuple(m["text"] for m in messages),
                quick_replies=tuple((i["action"]["label"], i["action"].get("text", "")) for i in quick),
                retry_key=key,
            )
        )
        if self._lose:
            self._lose -= 1
            if self._lose_hanging:
                return 0, b"", {"hang": "30"}
            return 500, {"message": "Internal server error"}, {}
        sent = [{"id": str(uuid.uuid4().int)[:18], "quoteToken": secrets.token_urlsafe(16)} for _ in messages]
        return 200, {"sentMessages": sent}, {}


def _check_messages(messages: Any) -> str:
    """What LINE would refuse in ``messages``, or an empty string."""
    if not isinstance(messages, list) or not 1 <= len(messages) <= 5:
        return "messages: must be 1 to 5 items"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("type") != "text":
            return f"messages[{i}].type: only text is used here"
        text = m.get("text")
        if not isinstance(text, str) or not 1 <= len(text) <= 5000:
            return f"messages[{i}].text: must be 1 to 5000 characters"
        quick = m.get("quickReply")
        if quick is None:
            continue
        items = quick.get("items") if isinstance(quick, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= 13:
            return f"messages[{i}].quickReply.items: must be 1 to 13 items"
        for j, item in enumerate(items):
            action = item.get("action") if isinstance(item, dict) else None
            if not isinstance(item, dict) or item.get("type") != "action" or not isinstance(action, dict):
                return f"messages[{i}].quickReply.items[{j}]: must be an action item"
            label = action.get("label")
            if not isinstance(label, str) or not 1 <= len(label) <= 20:
                return f"messages[{i}].quickReply.items[{j}].action.label: must be 1 to 20 characters"
            if action.get("type") == "message":
                t = action.get("text")
                if not isinstance(t, str) or not 1 <= len(t) <= 300:
                    return f"messages[{i}].quickReply.items[{j}].action.text: must be 1 to 300 characters"
            elif action.get("type") != "postback":
                return f"messages[{i}].quickReply.items[{j}].action.type: unexpected"
    return ""
