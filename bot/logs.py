"""The service's logs: one event a line, as JSON (production) or as plain text (development), with the
request id of the HTTP request or WebSocket it happened in.

``TSUNAGI_LOG_FORMAT=json`` (the default) writes each event as one JSON object on one line of standard
error: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (the message), ``request_id`` when the
event happened while a request was being handled, and ``exception`` (the traceback) when there was one.
``text`` writes the same as ``time level logger: event [request_id]`` for a person reading a terminal
(``make run`` sets it).

Every request gets an id: the ``X-Request-ID`` header it came with when that is a plausible id (a proxy's
or load balancer's: letters, digits, ``._:-``, at most 128 characters), else a new one; the response carries
it back in ``X-Request-ID``. ``RequestLog`` writes one access line a request (logger ``tsunagi.access``):
method, the route's template (``/api/console/conversations/{conversation_id}``, never the path as sent,
nor its query string: either could carry an id or a token), status and duration. Uvicorn's own access log
stays off.

What is logged anywhere is ids the service made, states, channels, risk levels and counts: never a
message's text, a person's or counsellor's name, nor a platform id (tests/test_privacy.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FORMATS = ("json", "text")
HEADER = "X-Request-ID"
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Libraries whose lines below these levels carry what must not be logged: aiosqlite's debug lines print
# each statement's parameters (names, hashes); httpx logs every request's URL at info, and Telegram's Bot
# API has the bot token in its URLs (httpx2, its fork, the same).
QUIET = {
    "aiosqlite": logging.INFO,
    "httpx": logging.WARNING,
    "httpx2": logging.WARNING,
    "httpcore": logging.WARNING,
}

request_id: ContextVar[str | None] = ContextVar("tsunagi_request_id", default=None)

access = logging.getLogger("tsunagi.access")


class RequestId(logging.Filter):
    """Puts the current request id (or None) on every record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def _time(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class JsonFormatter(logging.Formatter):
    """One JSON object a line (a multi-line message or traceback stays on its line, escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} [{rid}]" if rid is not None else line


def handler(fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``fmt`` lines to ``stream`` (standard error), with the request id."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    h.addFilter(RequestId())
    return h


def configure(fmt: str = "json", level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """The process's logging: every logger (uvicorn's included, which must then be started with
    ``log_config=None``) through one handler on the root logger."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(fmt, stream))
    root.setLevel(level)
    quiet_libraries()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True


def quiet_libraries() -> None:
    """The libraries in ``QUIET`` log nothing below their level, whatever the root's level."""
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)


def new_id(given: str | None) -> str:
    """The id a request goes by: the one it came with when that is plausible, else a new one."""
    if given is not None and VALID_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def _route(scope: Scope) -> str:
    """The template of the route that took the request (``-`` when none did: never the path as sent)."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) and path else "-"


PROBES = frozenset({"/healthz", "/metrics"})


class RequestLog:
    """ASGI middleware: a request id for every HTTP request and WebSocket (in ``request_id`` while it is
    handled, and back in the ``X-Request-ID`` response header), and one access line when it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = new_id(given)
        token = request_id.set(rid)
        started = time.perf_counter()
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                status.append(message["status"])
                MutableHeaders(scope=message).append(HEADER, rid)
            elif kind == "websocket.accept":
                status.append(101)
                message.setdefault("headers", [])
                MutableHeaders(scope=message).append(HEADER, rid)
            elif kind == "websocket.close" and not status:
                status.append(403)  # closed before it was accepted
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if not status:
                status.append(500)
            raise
        finally:
            # A probe's success (a health check every few seconds, a scrape every 15) is routine: at DEBUG,
            # so that the access log at INFO shows what people and platforms asked; a failing probe stays.
            quiet = scope.get("path") in PROBES and bool(status) and status[0] < 400
            access.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %s %.1fms",
                scope.get("method", "WS") if scope["type"] == "http" else "WS",
                _route(scope),
                status[0] if status else "-",
                (time.perf_counter() - started) * 1000,
            )
            request_id.reset(token)
