"""What a stranger can throw at the service, bounded in one place (docs/contract.md, "Limits"):

- ``BodyLimit`` (ASGI middleware): a request body larger than its path's limit is refused with 413 before
  it is read whole (at once from ``Content-Length``, or as soon as a chunked body passes the limit), and a
  body that does not arrive within ``read_timeout`` seconds is answered 408;
- ``header_deadline``: uvicorn's HTTP protocol with a deadline on a request's headers (uvicorn has none:
  a client that sends its headers a byte at a time would keep its connection for ever);
- ``Failures``: counters of failed logins and bad webhook signatures for /metrics, and the per-address
  limit on bad signatures (a valid signature is never refused: LINE and Telegram may well come through
  the same proxy address as an attacker).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

KIB = 1024
# Bytes of one request body, by path prefix (the first that matches); the last entry is the default.
WEBHOOK_MAX_BODY = 1024 * KIB  # a LINE batch or a Telegram update is a few kilobytes; LINE allows big batches
CONSOLE_MAX_BODY = 64 * KIB  # the console's largest body is a reply of 5000 characters
DEFAULT_MAX_BODY = 64 * KIB
BODY_LIMITS: tuple[tuple[str, int], ...] = (
    ("/webhooks/", WEBHOOK_MAX_BODY),
    ("/api/console/", CONSOLE_MAX_BODY),
    ("/", DEFAULT_MAX_BODY),
)

# Bad webhook signatures from one address within the window, after which that address's bad requests get
# 429 instead of 400 (with Retry-After), and Telegram's are refused before anything else is done.
SIGNATURE_FAILURES = 20
SIGNATURE_WINDOW = 300.0  # seconds


def body_limit(path: str) -> int:
    for prefix, limit in BODY_LIMITS:
        if path.startswith(prefix):
            return limit
    return DEFAULT_MAX_BODY


class _Refused(Exception):
    """Raised from ``receive`` when the body is too large or too slow."""


def _json(status: int, detail: str) -> tuple[Message, Message]:
    body = json.dumps({"detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyLimit:
    """ASGI middleware: bodies over their path's limit are refused with 413 before they are read whole;
    a body still arriving ``read_timeout`` seconds after the request began is answered 408."""

    def __init__(self, app: ASGIApp, *, read_timeout: float) -> None:
        self.app = app
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"])
        too_large = f"request body too large: at most {limit} bytes here"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await self._answer(send, 413 if declared > limit else 400, too_large)
                    return
        deadline = time.monotonic() + self.read_timeout
        received = 0
        body_done = False
        started = False
        refused: tuple[int, str] | None = None

        async def limited_receive() -> Message:
            nonlocal received, body_done, refused
            if body_done:
                return await receive()  # after the body: only the disconnect, whenever it comes
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                refused = (408, "the request body did not arrive in time")
                raise _Refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = (413, too_large)
                    raise _Refused
                body_done = not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            # A route that caught the refusal (FastAPI turns a failed body read into a 400) answers ours.
            nonlocal started
            if started:
                if refused is None:
                    await send(message)
                return
            started = True
            if refused is not None:
                await self._answer(send, *refused)
            else:
                await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except _Refused:
            if not started:
                assert refused is not None
                await self._answer(send, *refused)

    @staticmethod
    async def _answer(send: Send, status: int, detail: str) -> None:
        start, body = _json(status, detail)
        await send(start)
        await send(body)


def header_deadline(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools) with a deadline: a request's headers must be complete within
    ``seconds`` of its first byte, or of the connection, else the connection is closed. (uvicorn times out
    only an idle keep-alive connection, never one that trickles its headers in.)"""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadline(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # a new request begins on this connection: its headers are timed
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def handle_websocket_upgrade(self) -> None:
            self._disarm()  # the connection is the WebSocket protocol's now
            super().handle_websocket_upgrade()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


class Failures:
    """Failed logins and bad webhook signatures of this process: counted for /metrics, and bad signatures
    limited per address."""

    def __init__(self) -> None:
        self.logins: Counter[str] = Counter()  # outcome: "failed" (wrong password) or "refused" (over limit)
        self.signatures: Counter[tuple[str, str]] = Counter()  # (channel, "failed" or "refused")
        self._bad: dict[str, deque[float]] = {}

    def login_failed(self, *, refused: bool = False) -> None:
        self.logins["refused" if refused else "failed"] += 1

    def signature_limited(self, address: str) -> bool:
        """Whether this address sent too many bad signatures lately."""
        now = time.monotonic()
        times = self._bad.get(address)
        if times is None:
            return False
        while times and now - times[0] > SIGNATURE_WINDOW:
            times.popleft()
        if not times:
            del self._bad[address]
        return len(times) >= SIGNATURE_FAILURES

    def signature_failed(self, channel: str, address: str) -> bool:
        """Count a bad signature; True when the address is over the limit (answer 429, not 400)."""
        limited = self.signature_limited(address)
        self.signatures[(channel, "refused" if limited else "failed")] += 1
        if not limited:
            if len(self._bad) > 10_000:  # many addresses: forget the oldest rather than grow for ever
                self._bad.pop(next(iter(self._bad)))
            self._bad.setdefault(address, deque()).append(time.monotonic())
        return limited

    def families(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily

        logins = CounterMetricFamily(
            "tsunagi_login_failures",
            "Console logins that failed (wrong username or password) or were refused (too many failures)",
            labels=["outcome"],
        )
        for outcome in ("failed", "refused"):
            logins.add_metric([outcome], self.logins[outcome])
        signatures = CounterMetricFamily(
            "tsunagi_webhook_signature_failures",
            "Webhook requests with a missing or bad signature or secret token, by channel; refused: the "
            "address had too many",
            labels=["channel", "outcome"],
        )
        for (channel, outcome), n in sorted(self.signatures.items()):
            signatures.add_metric([channel, outcome], n)
        return [logins, signatures]

    def render(self) -> str:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.registry import Collector

        families = self.families()

        class _Snapshot(Collector):
            def collect(self) -> list[Any]:
                return families

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot())
        return generate_latest(registry).decode()
