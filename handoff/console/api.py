"""The counsellors' console API, under ``/api/console`` (see docs/contract.md), put together from its
sections (``handoff/console/routes/``).

Every route but login and the live socket sits on a router whose dependency checks the session, and the
CSRF token on unsafe methods (``deps.authenticated``), so a new route cannot forget either. Every route
that touches a conversation goes through ``access.access``. Each route declares what it answers
(``schemas``). Whatever a person wrote is returned as JSON text; the page shows it with textContent,
never as HTML.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from handoff.console.deps import Console, authenticated, bind
from handoff.console.host import ConsoleHost
from handoff.console.routes import accounts, conversations, live, queue, reference, session, supervision
from handoff.console.schemas import REFUSALS


def build_router(svc: ConsoleHost) -> APIRouter:
    console = Depends(bind(Console(svc)))
    public = APIRouter(dependencies=[console], responses=REFUSALS)
    public.include_router(session.public)
    public.include_router(live.router)
    private = APIRouter(dependencies=[console, Depends(authenticated)], responses=REFUSALS)
    for section in (session, accounts, queue, conversations, reference, supervision):
        private.include_router(section.router)
    router = APIRouter()
    router.include_router(public)
    router.include_router(private)
    return router
