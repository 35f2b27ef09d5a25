"""The counsellors' console: the page at ``/console`` and its JSON API under ``/api/console``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from bot.models import AuditLog, Counsellor, Role
from bot.pages import StaticFiles, page_headers
from bot.storage.credentials import create_counsellor, one_time_password
from handoff.console.api import build_router
from handoff.console.host import ConsoleHost
from triage.paths import CONTENT_DIR

STATIC = Path(__file__).resolve().parent / "static"
PAGE = CONTENT_DIR.parent / "console" / "page.html"
SECURITY_HEADERS = page_headers(img="'self' data:", media="'self' data:")

__all__ = ["console_router", "ensure_first_admin"]


def console_router(svc: ConsoleHost) -> APIRouter:
    router = build_router(svc)
    files = StaticFiles(STATIC)
    page_html = PAGE.read_text(encoding="utf-8")

    @router.get("/console", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html, headers=SECURITY_HEADERS)

    @router.get("/console/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        return files.response(name)

    return router


async def ensure_first_admin(svc: ConsoleHost) -> str | None:
    """On the very first start (no accounts at all): an ``admin`` account with a one-time password,
    returned so that it can be printed once; it must be changed at the first login."""
    async with svc.db.session() as s, s.begin():
        if await s.scalar(select(func.count()).select_from(Counsellor)):
            return None
        password = one_time_password()
        admin = await create_counsellor(s, "admin", password, Role.ADMIN)
        admin.must_change_password = True
        s.add(AuditLog(actor="system", action="admin.created"))
    return password
