"""The counsellors' console: the page at ``/console`` and its JSON API under ``/api/console``."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select

from bot.models import AuditLog, Counsellor, Role
from handoff.console.api import build_router
from handoff.console.auth import create_counsellor
from triage.paths import CONTENT_DIR

if TYPE_CHECKING:
    from bot.service import Service

STATIC = Path(__file__).resolve().parent / "static"
PAGE = CONTENT_DIR.parent / "console" / "page.html"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "media-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}

__all__ = ["console_router", "ensure_first_admin"]


def console_router(svc: Service) -> APIRouter:
    router = build_router(svc)

    @router.get("/console", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers=SECURITY_HEADERS)

    @router.get("/console/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if not STATIC.is_dir() or name not in {p.name for p in STATIC.iterdir()}:
            return Response(status_code=404)
        media = {"js": "text/javascript", "css": "text/css", "png": "image/png"}.get(name.rsplit(".", 1)[-1])
        return Response((STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "no-cache"})

    return router


async def ensure_first_admin(svc: Service) -> str | None:
    """On the very first start (no accounts at all): an ``admin`` account with a one-time password,
    returned so that it can be printed once; it must be changed at the first login."""
    async with svc.db.session() as s, s.begin():
        if await s.scalar(select(func.count()).select_from(Counsellor)):
            return None
        password = secrets.token_urlsafe(12)
        admin = await create_counsellor(s, "admin", password, Role.ADMIN)
        admin.must_change_password = True
        s.add(AuditLog(actor="system", action="admin.created"))
    return password
