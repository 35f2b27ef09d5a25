"""The web application: health, metrics and every channel's routes, around one ``Service``."""

from __future__ import annotations

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

    app.include_router(console_router(svc))
    for channel in svc.channels.values():
        router = channel.router()
        if router is not None:
            app.include_router(router)
    return app
