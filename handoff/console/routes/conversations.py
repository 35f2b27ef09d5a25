"""One conversation: take it, read it (with its version), its pictures, reply, notes, advice, pass it on
and close it. Every route goes through ``access``; views, replies, notes, transfers and closes are
audited. Whatever a person wrote is returned as JSON text; the page shows it with textContent."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from sqlalchemy import func, select
from sqlmodel import col

from bot.events import Event
from bot.models import (
    AuditLog,
    Conversation,
    Counsellor,
    Direction,
    Media,
    Message,
    Note,
    Outbox,
    State,
    utcnow,
)
from bot.storage import audit_write, conversations
from bot.storage.credentials import Me
from handoff.console import views
from handoff.console.access import access, may_note
from handoff.console.claims import take
from handoff.console.deps import PREFIX, Console, ConsoleDep, MeDep, SupervisorDep
from handoff.console.schemas import (
    CloseIn,
    ConversationOut,
    StateOut,
    StatusOut,
    TextIn,
    TransferIn,
    TransferOut,
)
from handoff.queue import Claim

VIEW_AUDIT_EVERY = timedelta(minutes=10)
READS = ("view", "picture.view")  # audited, but nothing happened to the conversation

router = APIRouter(prefix=PREFIX)


@router.post("/conversations/{conversation_id}/claim", response_model=StateOut)
async def claim(conversation_id: str, me: MeDep, cx: ConsoleDep) -> StateOut:
    async with cx.host.db.session() as s:
        conv = await s.get(Conversation, conversation_id)
        c = await s.get(Counsellor, me.id)
    if conv is None or conv.erased:
        raise HTTPException(404, "no such conversation")
    assert c is not None
    limit = cx.limit_of(c)
    result = await take(cx.host, conversation_id, me.id, limit, actor=me.username)
    if result is Claim.FULL:
        raise HTTPException(409, f"you already have {limit} conversations")
    if result is Claim.TAKEN:
        raise HTTPException(409, "someone else has this conversation")
    return StateOut(conversation_id=conversation_id, state=State.WITH_COUNSELLOR)


@router.get(
    "/conversations/{conversation_id}", response_model=ConversationOut, response_model_exclude_unset=True
)
async def get_conversation(conversation_id: str, me: MeDep, cx: ConsoleDep) -> dict[str, Any]:
    svc = cx.host
    async with svc.db.session() as s, s.begin():
        conv, holder = await access(s, me, conversation_id, write=False)
        messages = (
            await s.scalars(
                select(Message)
                .where(col(Message.conversation_id) == conversation_id)
                .order_by(col(Message.id))
            )
        ).all()
        deliveries = {
            o.message_id: o
            for o in (
                await s.scalars(select(Outbox).where(col(Outbox.conversation_id) == conversation_id))
            ).all()
        }
        pictures: dict[int, list[dict[str, Any]]] = {}
        for media in (
            await s.scalars(
                select(Media).where(col(Media.conversation_id) == conversation_id).order_by(col(Media.id))
            )
        ).all():
            pictures.setdefault(media.message_id, []).append(
                {"id": media.id, "type": media.content_type, "width": media.width, "height": media.height}
            )
        notes = (
            await s.execute(
                select(Note, col(Counsellor.username), col(Counsellor.display_name))
                .join(Counsellor, col(Counsellor.id) == col(Note.counsellor_id))
                .where(col(Note.conversation_id) == conversation_id)
                .order_by(col(Note.id))
            )
        ).all()
        actions = await s.scalar(
            select(func.count())
            .select_from(AuditLog)
            .where(col(AuditLog.conversation_id) == conversation_id, col(AuditLog.action).not_in(READS))
        )
        holding = await s.get(Counsellor, holder) if holder else None
        holder_name = holding.username if holding else None
        can_note = await may_note(s, me, conv, holder)
        presence = (await views.presences(s, [conv]))[conv.id]
        # A person back soon after a conversation at high or crisis: the earlier one, linked.
        earlier = await s.get(Conversation, conv.previous_id) if conv.previous_id else None
        previous = (
            {
                "conversation_id": earlier.id,
                "risk": earlier.risk,
                "categories": views.cats(earlier),
                "created_at": earlier.created_at.isoformat(),
                "outcome": earlier.outcome,
            }
            if earlier is not None and not earlier.erased
            else None
        )
        await audit_write.record_view(
            s, actor=me.username, conversation_id=conversation_id, now=utcnow(), every=VIEW_AUDIT_EVERY
        )
    out_messages, reasons = transcript(cx, messages, deliveries, pictures)
    # Everything that ever happened to it, counted: each row only ever comes, and a delivery only goes
    # forward (another attempt, then delivered or failed), so a later read never has a lower version.
    version = (
        len(messages)
        + len(notes)
        + (actions or 0)
        + sum(o.attempts + (o.status != "pending") for o in deliveries.values())
    )
    return {
        "conversation_id": conv.id,
        "version": version,
        "state": conv.state,
        "channel": conv.channel,
        "counsellor": holder_name,
        "counsellor_name": (holding.display_name or holding.username) if holding else None,
        "messages": out_messages,
        "triage": {
            "risk": conv.risk,
            "categories": views.cats(conv),
            "reasons": views.dialogue_reasons(conv) + reasons,
        },
        "intake": {
            "age_band": conv.age_band,
            "prefecture": conv.prefecture,
            "safe_now": conv.safe_now,
            "danger_asked": conv.danger_asked,
            "danger_answer": conv.danger_answer,
        },
        "previous": previous,
        "presence": presence,
        "notes": [
            {
                "by": shown or name,
                "text": svc.crypto.decrypt(n.text_enc),
                "at": n.created_at.isoformat(),
                "kind": n.kind,
            }
            for n, name, shown in notes
        ],
        "can_note": can_note,
        "read_only": holder != me.id,
    }


def transcript(
    cx: Console,
    messages: Any,
    deliveries: dict[int, Outbox],
    pictures: dict[int, list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The messages as the page shows them, and the triage's reasons, each placed in its message."""
    crypto = cx.host.crypto
    out_messages: list[dict[str, Any]] = []
    reasons: list[dict[str, Any]] = []
    for m in messages:
        # A choice they pressed is shown too: the answer to the direct question belongs under it.
        if m.direction == Direction.IN and m.kind not in ("text", "media", "choice"):
            continue
        item: dict[str, Any] = {
            "from": "user" if m.direction == Direction.IN else m.sender,
            "text": crypto.decrypt(m.text_enc)
            if m.kind in ("text", "choice") or m.direction == Direction.OUT
            else "",
            "kind": m.kind,
            "at": m.created_at.isoformat(),
        }
        if m.full_enc:  # a mail: the whole of it (quoted thread, signature) besides the new text
            item["full_text"] = crypto.decrypt(m.full_enc)
        if m.attachments:  # counted, never kept
            item["attachments"] = m.attachments
        if m.flags:  # whole_mail, edited, withdrawn, album: said to the counsellor in words
            item["flags"] = conversations.split(m.flags)
        if m.meta_enc:  # what came besides text: a sticker's keywords, a place, a file's name and size
            item["items"] = json.loads(crypto.decrypt(m.meta_enc))
        if m.id in pictures:  # shown behind a click, from the picture route (with the same check)
            item["pictures"] = pictures[m.id]
        if m.id in deliveries:  # what became of a message to the person: pending, delivered, failed
            o = deliveries[m.id]
            item["delivery"] = {"status": o.status, "attempts": o.attempts, "error": o.last_error}
        if m.triage_enc:
            t = json.loads(crypto.decrypt(m.triage_enc))
            item["risk"] = views.own_risk(cx, t.get("reasons", [])).value  # its own, not the conversation's
            item["highlights"] = [{"rule": x["rule"], "span": x["span"]} for x in t.get("reasons", [])]
            reasons += [
                {"rule": x["rule"], "matched": x["matched"], "message": len(out_messages), "span": x["span"]}
                for x in t.get("reasons", [])
            ]
        out_messages.append(item)
    return out_messages, reasons


@router.get(
    "/conversations/{conversation_id}/pictures/{picture_id}",
    response_class=Response,
    responses={200: {"description": "the picture", "content": {"image/jpeg": {}, "image/png": {}}}},
)
async def get_picture(
    conversation_id: str, picture_id: Annotated[int, Path(ge=1, le=2**63 - 1)], me: MeDep, cx: ConsoleDep
) -> Response:
    """A picture a person sent, for whoever may read the conversation (the one access check); the
    counsellor asked for it with a click after a warning. Never cached; every view is audited."""
    async with cx.host.db.session() as s, s.begin():
        await access(s, me, conversation_id, write=False)
        media = await s.get(Media, picture_id)
        if media is None or media.conversation_id != conversation_id:
            raise HTTPException(404, "no such picture")
        audit_write.record(
            s,
            actor=me.username,
            action="picture.view",
            conversation_id=conversation_id,
            detail=f"picture={picture_id}",
        )
    data = cx.host.crypto.decrypt_bytes(media.data_enc)
    headers = {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": "inline",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    # Only what bot/images.py wrote is served, under the type it wrote.
    media_type = media.content_type if media.content_type in ("image/jpeg", "image/png") else "image/jpeg"
    return Response(content=data, media_type=media_type, headers=headers)


@router.post("/conversations/{conversation_id}/messages", status_code=202, response_model=StatusOut)
async def post_message(conversation_id: str, body: TextIn, me: MeDep, cx: ConsoleDep) -> StatusOut:
    async with cx.host.db.session() as s:
        await access(s, me, conversation_id, write=True)
    if not await cx.host.engine.counsellor_reply(conversation_id, me.id, body.text, actor=me.username):
        raise HTTPException(409, "the conversation is not with you any more")
    return StatusOut(status="queued")


@router.post("/conversations/{conversation_id}/notes", status_code=201, response_model=StatusOut)
async def post_note(conversation_id: str, body: TextIn, me: MeDep, cx: ConsoleDep) -> StatusOut:
    async with cx.host.db.session() as s, s.begin():
        conv, holder = await access(s, me, conversation_id, write=False)
        if not await may_note(s, me, conv, holder):
            raise HTTPException(403, "only the counsellor who has (or had) it can add notes")
        s.add(
            Note(
                conversation_id=conversation_id,
                counsellor_id=me.id,
                text_enc=cx.host.crypto.encrypt(body.text),
            )
        )
        audit_write.record(s, actor=me.username, action="note", conversation_id=conversation_id)
    cx.host.events.publish(Event("note", conversation_id))  # supervisors watching re-read it
    return StatusOut(status="saved")


@router.post("/conversations/{conversation_id}/advice", status_code=201, response_model=StatusOut)
async def post_advice(conversation_id: str, body: TextIn, me: SupervisorDep, cx: ConsoleDep) -> StatusOut:
    """A supervisor's advice to the counsellor (SV助言): beside the notes, never sent to the person."""
    async with cx.host.db.session() as s, s.begin():
        await access(s, me, conversation_id, write=False)
        s.add(
            Note(
                conversation_id=conversation_id,
                counsellor_id=me.id,
                text_enc=cx.host.crypto.encrypt(body.text),
                kind="advice",
            )
        )
        audit_write.record(s, actor=me.username, action="advice", conversation_id=conversation_id)
    cx.host.events.publish(Event("note", conversation_id))  # the counsellor's console re-reads it
    return StatusOut(status="saved")


@router.post("/conversations/{conversation_id}/transfer", response_model=TransferOut)
async def transfer(conversation_id: str, body: TransferIn, me: MeDep, cx: ConsoleDep) -> TransferOut:
    svc = cx.host
    async with svc.db.session() as s:
        await access(s, me, conversation_id, write=True)
        target = None
        if body.to:
            target = await s.scalar(select(Counsellor).where(col(Counsellor.username) == body.to))
            if target is None or not target.active or target.id is None:
                raise HTTPException(404, "no such counsellor")
            if target.id == me.id:
                raise HTTPException(422, "that is you")
            if target.must_change_password:
                raise HTTPException(409, f"{target.username} has not chosen a password yet")
            limit = cx.limit_of(target)
            if len(await svc.queue.held(target.id)) >= limit:
                raise HTTPException(409, f"{target.username} already has {limit} conversations")
    # One audit row for the transfer, written where it is decided: with the requeue when it goes
    # to the queue, with the colleague's claim when a colleague gets it.
    requeued = await svc.engine.requeue(
        conversation_id,
        me.id,
        actor=me.username,
        action="transfer",
        detail=f"to=queue result={State.WAITING}",
        audit=target is None,
    )
    if requeued is None:
        raise HTTPException(409, "the conversation is not with you any more")
    state = State.WAITING
    if target is not None and target.id is not None:
        got = await take(
            svc,
            conversation_id,
            target.id,
            cx.limit_of(target),
            actor=me.username,
            action="transfer",
            detail=f"to={body.to} result={State.WITH_COUNSELLOR}",
        )
        if got is Claim.CLAIMED:
            state = State.WITH_COUNSELLOR
        else:  # the colleague could not take it after all: it waits in the queue, and the log says so
            await audit_alone(cx, me, "transfer", conversation_id, f"to={body.to} result={state}")
    return TransferOut(
        conversation_id=conversation_id, state=state, counsellor=body.to if state != State.WAITING else None
    )


@router.post("/conversations/{conversation_id}/close", response_model=StateOut)
async def close(conversation_id: str, body: CloseIn, me: MeDep, cx: ConsoleDep) -> StateOut:
    if body.outcome not in cx.outcome_codes:
        raise HTTPException(422, f"unknown outcome; use one of {sorted(cx.outcome_codes)}")
    known = {ref.id for ref in cx.host.content.referrals}
    unknown = [x for x in body.referrals if x not in known]
    if unknown:
        raise HTTPException(422, f"unknown referrals {unknown}")
    async with cx.host.db.session() as s:
        await access(s, me, conversation_id, write=True)
    if not await cx.host.engine.close_by_counsellor(
        conversation_id, me.id, outcome=body.outcome, referrals=body.referrals, actor=me.username
    ):
        raise HTTPException(409, "the conversation is not with you any more")
    await cx.host.queue.release(conversation_id, me.id)
    return StateOut(conversation_id=conversation_id, state=State.CLOSED)


async def audit_alone(cx: Console, me: Me, action: str, conversation_id: str, detail: str = "") -> None:
    """An action with no transaction of its own, audited in one."""
    async with cx.host.db.session() as s, s.begin():
        audit_write.record(
            s, actor=me.username, action=action, conversation_id=conversation_id, detail=detail
        )
