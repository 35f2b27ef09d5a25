"""Live updates: a WebSocket of events (ids, states and risk only) for the page to refresh what it shows."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, WebSocket

from bot.events import Event
from bot.models import utcnow
from bot.storage.credentials import current, still_valid
from handoff.console.auth import COOKIE
from handoff.console.deps import PREFIX, ConsoleDep

LIVE_RECHECK_SECONDS = 30.0  # how often a live socket checks that its session still stands

# No session dependency: the socket checks its cookie itself, and its origin.
router = APIRouter(prefix=PREFIX)


@router.websocket("/live")
async def live(ws: WebSocket, cx: ConsoleDep) -> None:
    """Events (ids, states and risk only) for the console to refresh what it shows."""
    origin = ws.headers.get("origin")
    host = ws.headers.get("host")
    if origin is not None and origin.split("://", 1)[-1] != host:
        await ws.close(code=1008)  # a page of another site must not listen
        return
    async with cx.host.db.session() as s, s.begin():
        me = await current(
            s, ws.cookies.get(COOKIE), hours=cx.settings.session_hours, now=utcnow(), secret=cx.secret
        )
    if me is None or me.must_change_password:
        await ws.close(code=1008)
        return
    await ws.accept()

    async def pump(events: asyncio.Queue[Event]) -> None:
        while True:
            event = await events.get()
            await ws.send_json(
                {
                    "kind": event.kind,
                    "conversation_id": event.conversation_id,
                    "state": event.state,
                    "risk": event.risk,
                }
            )

    async def until_closed() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass  # the console sends nothing; anything it does send is ignored

    async def until_session_ends() -> None:
        """A logout elsewhere, an expired session or a disabled account ends the socket too."""
        while True:
            await asyncio.sleep(LIVE_RECHECK_SECONDS)
            async with cx.host.db.session() as s:
                if not await still_valid(s, me.session_id, utcnow()):
                    break
        await ws.close(code=1008)

    async with cx.host.events.subscribe() as events:
        tasks = [
            asyncio.create_task(pump(events)),
            asyncio.create_task(until_closed()),
            asyncio.create_task(until_session_ends()),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
