"""The web application. For now: health and the triage engine; channels and the console
arrive with later issues."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from triage import get_engine


def create_app() -> FastAPI:
    app = FastAPI(title="tsunagi", docs_url=None, redoc_url=None)

    @app.on_event("startup")
    def _load_engine() -> None:  # load the lexicon once, before the first message
        get_engine()

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        engine = get_engine()
        return JSONResponse({"status": "ok", "triage": {"rules": len(engine.rules.rules)}})

    return app
