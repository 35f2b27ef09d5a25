"""The web application. For now: health, with the triage engine loaded at start; channels,
web chat and the console arrive with later issues."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from triage import get_engine


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    get_engine()  # load the lexicon once, before the first message
    yield


def create_app() -> FastAPI:
    app = FastAPI(title="tsunagi", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        engine = get_engine()
        return JSONResponse({"status": "ok", "triage": {"rules": len(engine.rules.rules)}})

    return app
