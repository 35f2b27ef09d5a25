"""The ceiling: a bare FastAPI app (``POST /webhooks/line`` reads the body and answers ``{}``; ``/healthz``)
served by ``tsunagi serve``'s own code path, so that uvicorn runs with exactly the same settings: the command
line's ``create_app`` is swapped for this app's, nothing else.

``python -m tests.load.bare serve --host H --port P`` (the arguments of ``tsunagi serve``).
"""

from __future__ import annotations

import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import bot.web
from bot.cli import main


def create_bare_app(settings: Any = None) -> FastAPI:
    app = FastAPI()

    @app.post("/webhooks/line")
    async def webhook(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


if __name__ == "__main__":
    bot.web.create_app = create_bare_app  # type: ignore[assignment]  # read by cmd_serve at call time
    sys.exit(main(sys.argv[1:]))
