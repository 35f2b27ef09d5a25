"""The queue: who waits, most urgent first, with the line a counsellor deciding whom to take must see."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select
from sqlmodel import col

from bot.models import Conversation, utcnow
from handoff.console import views
from handoff.console.deps import PREFIX, ConsoleDep, MeDep
from handoff.console.schemas import QueueEntry

router = APIRouter(prefix=PREFIX)


@router.get("/queue", response_model=list[QueueEntry], response_model_exclude_unset=True)
async def get_queue(me: MeDep, cx: ConsoleDep) -> list[dict[str, Any]]:
    now = utcnow()
    entries = await cx.host.queue.ordered(now)
    ids = [e.conversation_id for e in entries]
    async with cx.host.db.session() as s:
        convs = {
            c.id: c for c in (await s.scalars(select(Conversation).where(col(Conversation.id).in_(ids))))
        }
        previews = await views.previews(cx, s, ids)
        presences = await views.presences(s, list(convs.values()))
    out = []
    for e in entries:
        conv = convs.get(e.conversation_id)
        if conv is None:
            continue
        preview, reason = previews.get(e.conversation_id, ("", None))
        out.append(
            {
                "conversation_id": e.conversation_id,
                "risk": conv.risk,
                "categories": views.cats(conv),
                "channel": conv.channel,
                "waiting_seconds": int((now - e.queued_at).total_seconds()),
                "preview": preview,
                "preview_reason": reason,
                "reasons": views.dialogue_reasons(conv),
                "presence": presences.get(conv.id),
            }
        )
    return out
