"""The web application: health, metrics and every channel's routes, around one ``Service``; and the bare
``/metrics`` listener of ``tsunagi worker --metrics-port``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from bot.config import Settings
from bot.guard import BodyLimit
from bot.logs import RequestLog
from bot.pages import SecurityHeaders
from bot.service import Service
from handoff.console import console_router, ensure_first_admin


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> FastAPI:
    svc = service or Service(settings or Settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await svc.start(workers=svc.settings.workers)
        password = await ensure_first_admin(svc)
        if password is not None:
            # Printed once, to the operator's terminal; never logged.
            print(
                f"\n  First start: a console account 'admin' was created with the one-time password\n"
                f"      {password}\n  Log in at /console and choose a new password.\n",
                flush=True,
            )
        try:
            yield
        finally:
            await svc.stop()

    app = FastAPI(title="tsunagi", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = svc
    # Every response: CSP, nosniff, no referrer, no framing; HSTS and Secure cookies behind TLS.
    app.add_middleware(SecurityHeaders, behind_tls=svc.settings.behind_tls)
    # Bodies over their path's limit refused before they are read whole; slow bodies cut off (bot/guard.py).
    app.add_middleware(BodyLimit, read_timeout=svc.settings.read_timeout)
    # Outermost: a request id for everything below it, and one access line a request (bot/logs.py).
    app.add_middleware(RequestLog)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        state = await svc.health()
        body = {
            "status": "ok" if all(state.values()) else "unavailable",
            "database": "ok" if state["database"] else "down",
            "queue": "ok" if state["queue"] else "down",
            "triage": {"rules": len(svc.engine.triage.rules.rules)},
        }
        return JSONResponse(body, status_code=200 if all(state.values()) else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(await svc.metrics(), media_type="text/plain; version=0.0.4")

    # The channels' routes first: a request is matched against the routes in order, and a webhook under a
    # surge should not be tried against every route of the console's API before its own (their paths never
    # overlap).
    for channel in svc.channels.values():
        router = channel.router()
        if router is not None:
            app.include_router(router)
    app.include_router(console_router(svc))
    return app


log = logging.getLogger("tsunagi")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEAD_LIMIT = 8192  # bytes of a request's line and headers
HEAD_TIMEOUT = 10.0  # seconds to send them


async def serve_metrics(svc: Service, host: str, port: int) -> asyncio.Server:
    """``GET /metrics`` and ``GET /healthz`` of a process without the web application (``tsunagi worker``),
    so that its own counters and histograms (the deliveries and replies it makes) are scraped too. Plain
    HTTP/1.1, one request a connection, on its own port; everything else is 404."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            if method == b"GET" and path == b"/metrics":
                status, kind, body = "200 OK", METRICS_TYPE, (await svc.metrics()).encode()
            elif method == b"GET" and path == b"/healthz":
                state = await svc.health()
                status = "200 OK" if all(state.values()) else "503 Service Unavailable"
                kind = "application/json"
                body = json.dumps({k: "ok" if v else "down" for k, v in state.items()}).encode()
            else:
                status, kind, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client too slow, too long or gone: nothing to answer
        except Exception:
            log.exception("metrics request failed")  # (the database down: the scrape fails, /healthz says so)
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, limit=HEAD_LIMIT)
