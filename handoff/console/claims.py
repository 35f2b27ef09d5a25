"""Taking a conversation: in the queue first (atomic, within the limit), then in the database."""

from __future__ import annotations

from handoff.console.host import ConsoleHost
from handoff.queue import Claim


async def take(
    host: ConsoleHost,
    conversation_id: str,
    counsellor_id: int,
    limit: int,
    *,
    actor: str,
    action: str = "claim",
    detail: str = "",
) -> Claim:
    """Claim in the queue (atomic, within the limit), then in the database; undone if the database
    says it is no longer waiting (TAKEN). The database's claim is ``actor``'s ``action``, audited
    there."""
    try:
        result = await host.queue.claim(conversation_id, counsellor_id, limit)
        if result is Claim.CLAIMED and not await host.engine.assign(
            conversation_id, counsellor_id, actor=actor, action=action, detail=detail
        ):
            await host.queue.release(conversation_id, counsellor_id)
            return Claim.TAKEN
    except Exception:
        # The queue and the database may disagree now (the queue's claim made and the database's
        # not, or the queue's answer lost): the watchdog makes the queue again from the database.
        host.engine.queue_dirty = True
        raise
    return result
