"""The counsellors' console API, under ``/api/console`` (see docs/contract.md).

Every route but login sits on a router whose dependency checks the session, and the CSRF token on
unsafe methods, so a new route cannot forget either. Every route that touches a conversation goes
through ``access``. Views of transcripts, replies, notes, transfers and closes go to the audit log.
Whatever a person wrote is returned as JSON text; the page shows it with textContent, never as HTML.
"""

import asyncio
import csv
import io
import json
from collections import Counter
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.content import key
from bot.events import Event
from bot.models import (
    DISPLAY_NAME_MAX,
    Alert,
    ConsoleSession,
    Contact,
    Conversation,
    Counsellor,
    Direction,
    Handoff,
    HandoffStatus,
    Media,
    Message,
    Note,
    Outbox,
    Role,
    State,
    utcnow,
)
from bot.storage import accounts as accounts_db
from bot.storage import audit as audit_db
from bot.storage import audit_write, conversations, handoffs
from bot.storage import statistics as stats_db
from bot.storage.credentials import (
    USERNAME,
    Me,
    current,
    hash_password,
    login,
    password_problem,
    rate_limited,
    still_valid,
    verify_password,
)
from handoff.console.auth import COOKIE, CSRF_HEADER, csrf_ok
from handoff.console.content import ConsoleLabels, console_labels, load_console_content
from handoff.console.host import ConsoleHost
from handoff.queue import Claim
from triage import Risk

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PREVIEW_CHARS = 60
VIEW_AUDIT_EVERY = timedelta(minutes=10)
LIVE_RECHECK_SECONDS = 30.0  # how often a live socket checks that its session still stands
MAX_TEXT = 5000
MAX_DAYS = 3660  # the longest period of statistics


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class PasswordIn(BaseModel):
    old: str = Field(max_length=1024)
    new: str = Field(max_length=1024)


class TextIn(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class TransferIn(BaseModel):
    to: str | None = Field(default=None, max_length=64)  # a username, or null for the queue


class CloseIn(BaseModel):
    outcome: str = Field(min_length=1, max_length=32)
    referrals: list[str] = Field(default_factory=list, max_length=30)


class DutyIn(BaseModel):
    on_duty: bool


class DisplayNameIn(BaseModel):
    display_name: str = Field(min_length=1, max_length=DISPLAY_NAME_MAX)


MAX_LIMIT = 20  # conversations one counsellor may be given at once, at most


class AccountIn(BaseModel):
    username: str = Field(pattern=USERNAME)
    role: Role = Role.COUNSELLOR
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)  # None: TSUNAGI_COUNSELLOR_LIMIT
    display_name: str = Field(default="", max_length=DISPLAY_NAME_MAX)


class AccountChange(BaseModel):
    role: Role | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)  # given as null: back to the default
    active: bool | None = None


# A 422 is FastAPI's list of validation errors, or the console's own reason as a sentence (the page tells
# the reasons apart by it); JSON on every route, the CSV export's too.
REFUSALS: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "refused as it is",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["detail"],
                    "properties": {"detail": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
                }
            }
        },
    }
}


class CsvResponse(PlainTextResponse):
    media_type = "text/csv"  # what the OpenAPI says /stats.csv answers


def build_router(svc: ConsoleHost) -> APIRouter:
    settings = svc.settings
    console = load_console_content()
    outcome_codes = {o["code"] for o in console["outcomes"]}

    async def authenticated(request: Request) -> Me:
        now = utcnow()
        async with svc.db.session() as s, s.begin():
            me = await current(s, request.cookies.get(COOKIE), hours=settings.session_hours, now=now)
        if me is None:
            raise HTTPException(401, "log in first")
        if request.method not in SAFE_METHODS and not csrf_ok(me, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER}")
        if me.must_change_password and request.url.path not in (
            "/api/console/me",
            "/api/console/password",
            "/api/console/logout",
        ):
            raise HTTPException(403, "change the one-time password first")
        return me

    async def supervisor(me: Annotated[Me, Depends(authenticated)]) -> Me:
        if not me.supervises:
            raise HTTPException(403, "for supervisors only")
        return me

    def limit_of(counsellor: Counsellor) -> int:
        return counsellor.max_conversations or settings.counsellor_limit

    async def take(
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
            result = await svc.queue.claim(conversation_id, counsellor_id, limit)
            if result is Claim.CLAIMED and not await svc.engine.assign(
                conversation_id, counsellor_id, actor=actor, action=action, detail=detail
            ):
                await svc.queue.release(conversation_id, counsellor_id)
                return Claim.TAKEN
        except Exception:
            # The queue and the database may disagree now (the queue's claim made and the database's
            # not, or the queue's answer lost): the watchdog makes the queue again from the database.
            svc.engine.queue_dirty = True
            raise
        return result

    async def admin(me: Annotated[Me, Depends(authenticated)]) -> Me:
        if me.role != Role.ADMIN:
            raise HTTPException(403, "for administrators only")
        return me

    MeDep = Annotated[Me, Depends(authenticated)]
    SupervisorDep = Annotated[Me, Depends(supervisor)]
    AdminDep = Annotated[Me, Depends(admin)]

    public = APIRouter(prefix="/api/console", responses=REFUSALS)
    r = APIRouter(prefix="/api/console", dependencies=[Depends(authenticated)], responses=REFUSALS)

    def client_key(request: Request) -> str:
        host = request.client.host if request.client else "?"
        return svc.crypto.lookup("console-address", host)

    # -- session ---------------------------------------------------------------------------------------

    @public.post("/login")
    async def do_login(body: LoginIn, request: Request) -> JSONResponse:
        now = utcnow()
        keys = [svc.crypto.lookup("console-user", body.username.lower())]
        if settings.login_limit_per_address:  # off for an office whose counsellors share one address
            keys.append(client_key(request))
        async with svc.db.session() as s, s.begin():
            if await rate_limited(s, keys, now):
                svc.failures.login_failed(refused=True)
                raise HTTPException(429, "too many failed logins: wait a few minutes")
            done = await login(
                s, body.username, body.password, keys=keys, hours=settings.session_hours, now=now
            )
            if done is not None:
                token, session, counsellor = done
                audit_write.record(s, actor=counsellor.username, action="login")
        if done is None:
            svc.failures.login_failed()
            raise HTTPException(401, "wrong username or password")
        response = JSONResponse(
            {
                "csrf_token": session.csrf_token,
                "username": counsellor.username,
                "display_name": counsellor.display_name,
                "role": counsellor.role,
                "must_change_password": counsellor.must_change_password,
            }
        )
        response.set_cookie(
            COOKIE,
            token,
            max_age=settings.session_hours * 3600,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    @r.post("/logout")
    async def do_logout(me: MeDep) -> Response:
        async with svc.db.session() as s, s.begin():
            session = await s.get(ConsoleSession, me.session_id)
            if session is not None:
                await s.delete(session)
            audit_write.record(s, actor=me.username, action="logout")
        response = Response(status_code=204)
        response.delete_cookie(COOKIE, path="/")
        return response

    @r.get("/me")
    async def get_me(me: MeDep) -> dict[str, Any]:
        async with svc.db.session() as s:
            c = await s.get(Counsellor, me.id)
        assert c is not None
        return {
            "username": me.username,
            "display_name": c.display_name,
            "role": me.role,
            "csrf_token": me.csrf_token,
            "must_change_password": me.must_change_password,
            "on_duty": c.on_duty,
            "limit": limit_of(c),
            "held": sorted(await svc.queue.held(me.id)),
        }

    @r.post("/password")
    async def change_password(body: PasswordIn, me: MeDep) -> Response:
        problem = password_problem(body.new)
        if problem:
            raise HTTPException(422, problem)
        async with svc.db.session() as s, s.begin():
            c = await s.get(Counsellor, me.id)
            assert c is not None
            if not verify_password(c.password_hash, body.old):
                raise HTTPException(403, "the current password is wrong")
            c.password_hash = hash_password(body.new)
            c.must_change_password = False
            audit_write.record(s, actor=me.username, action="password.change")
        return Response(status_code=204)

    @r.post("/duty")
    async def set_duty(body: DutyIn, me: MeDep) -> dict[str, bool]:
        async with svc.db.session() as s, s.begin():
            c = await s.get(Counsellor, me.id)
            assert c is not None
            c.on_duty = body.on_duty
            audit_write.record(s, actor=me.username, action="duty.on" if body.on_duty else "duty.off")
        return {"on_duty": body.on_duty}

    @r.post("/me/display-name")
    async def my_display_name(body: DisplayNameIn, me: MeDep) -> dict[str, str]:
        """The name people read for me (greetings, canned replies), chosen by myself."""
        async with svc.db.session() as s, s.begin():
            try:
                c = await accounts_db.set_display_name(
                    s, username=me.username, display_name=body.display_name, actor=me.username
                )
            except accounts_db.AccountError as e:
                raise account_refusal(e) from e
        return {"username": c.username, "display_name": c.display_name}

    # -- colleagues and accounts -------------------------------------------------------------------------

    def account_refusal(e: "accounts_db.AccountError") -> HTTPException:
        status = {"taken": 409, "missing": 404, "self": 422, "invalid": 422}.get(e.code, 422)
        return HTTPException(status, str(e))

    async def held_counts() -> Counter[int]:
        async with svc.db.session() as s:
            return await handoffs.held_counts(s)

    def account_of(c: Counsellor, held: Counter[int]) -> dict[str, Any]:
        return {
            "username": c.username,
            "display_name": c.display_name,
            "role": c.role,
            "active": c.active,
            "on_duty": c.on_duty,
            "held": held[c.id or 0],
            "limit": limit_of(c),
            "custom_limit": c.max_conversations,
            "must_change_password": c.must_change_password,
            "created_at": c.created_at.isoformat(),
        }

    @r.get("/colleagues")
    async def colleagues(me: MeDep) -> list[dict[str, Any]]:
        """Whom a conversation can be passed to: the other active accounts that have chosen their password,
        those on duty first."""
        async with svc.db.session() as s:
            rows = (await s.scalars(select(Counsellor).where(col(Counsellor.active)))).all()
        held = await held_counts()
        out = [
            {
                "username": c.username,
                "display_name": c.display_name,
                "role": c.role,
                "on_duty": c.on_duty,
                "held": held[c.id or 0],
                "limit": limit_of(c),
            }
            for c in rows
            if c.id != me.id and not c.must_change_password
        ]
        return sorted(out, key=lambda x: (not x["on_duty"], x["username"]))

    @r.get("/accounts")
    async def accounts(me: AdminDep) -> list[dict[str, Any]]:
        async with svc.db.session() as s:
            rows = await accounts_db.listing(s)
        held = await held_counts()
        return [account_of(c, held) for c in rows]

    @r.post("/accounts", status_code=201)
    async def add_account(body: AccountIn, me: AdminDep) -> dict[str, str]:
        async with svc.db.session() as s, s.begin():
            try:
                c, password = await accounts_db.add(
                    s,
                    username=body.username,
                    role=body.role,
                    limit=body.limit,
                    display_name=body.display_name,
                    actor=me.username,
                )
            except accounts_db.AccountError as e:
                raise account_refusal(e) from e
        assert password is not None
        return {"username": c.username, "display_name": c.display_name, "password": password}

    @r.post("/accounts/{username}")
    async def change_account(username: str, body: AccountChange, me: AdminDep) -> dict[str, Any]:
        given = body.model_fields_set
        async with svc.db.session() as s, s.begin():
            try:
                c, held_ids = await accounts_db.change(
                    s,
                    username=username,
                    actor=me.username,
                    role=body.role if "role" in given and body.role is not None else accounts_db.KEEP,
                    limit=body.limit if "limit" in given else accounts_db.KEEP,
                    active=body.active if "active" in given and body.active is not None else accounts_db.KEEP,
                )
            except accounts_db.AccountError as e:
                raise account_refusal(e) from e
            counsellor_id = c.id
            assert counsellor_id is not None
        # A disabled account's conversations go back to the queue, keeping their place.
        requeued = 0
        for conversation_id in held_ids:
            if await svc.engine.requeue(conversation_id, counsellor_id) is not None:
                requeued += 1
        async with svc.db.session() as s:
            c = await accounts_db.named(s, username=username)
        return account_of(c, await held_counts()) | {"requeued": requeued}

    @r.post("/accounts/{username}/display-name")
    async def account_display_name(username: str, body: DisplayNameIn, me: SupervisorDep) -> dict[str, str]:
        """A supervisor (or an administrator) sets the name people read for a colleague."""
        async with svc.db.session() as s, s.begin():
            try:
                c = await accounts_db.set_display_name(
                    s, username=username, display_name=body.display_name, actor=me.username
                )
            except accounts_db.AccountError as e:
                raise account_refusal(e) from e
        return {"username": c.username, "display_name": c.display_name}

    @r.post("/accounts/{username}/password")
    async def new_password(username: str, me: AdminDep) -> dict[str, str]:
        """A new one-time password (they choose their own at the next login); their sessions end."""
        async with svc.db.session() as s, s.begin():
            try:
                password = await accounts_db.new_password(s, username=username, actor=me.username)
            except accounts_db.AccountError as e:
                raise account_refusal(e) from e
        return {"username": username, "password": password}

    # -- the queue -----------------------------------------------------------------------------------

    @r.get("/queue")
    async def get_queue(me: MeDep) -> list[dict[str, Any]]:
        now = utcnow()
        entries = await svc.queue.ordered(now)
        ids = [e.conversation_id for e in entries]
        async with svc.db.session() as s:
            convs = {
                c.id: c for c in (await s.scalars(select(Conversation).where(col(Conversation.id).in_(ids))))
            }
            previews = await _previews(s, ids)
            presences = await _presences(s, list(convs.values()))
        out = []
        for e in entries:
            conv = convs.get(e.conversation_id)
            if conv is None:
                continue
            out.append(
                {
                    "conversation_id": e.conversation_id,
                    "risk": conv.risk,
                    "categories": _cats(conv),
                    "channel": conv.channel,
                    "waiting_seconds": int((now - e.queued_at).total_seconds()),
                    "preview": previews.get(e.conversation_id, ("", None))[0],
                    "preview_reason": previews.get(e.conversation_id, ("", None))[1],
                    "reasons": _dialogue_reasons(conv),
                    "presence": presences.get(conv.id),
                }
            )
        return out

    async def _presences(s: AsyncSession, convs: list[Conversation]) -> dict[str, dict[str, Any] | None]:
        """Whether each person is there (bot.models.Presence), with since when; None when unknown."""
        contact_ids = {c.contact_id for c in convs if c.contact_id}
        contacts = {
            c.id: c for c in (await s.scalars(select(Contact).where(col(Contact.id).in_(contact_ids)))).all()
        }
        out: dict[str, dict[str, Any] | None] = {}
        for conv in convs:
            contact = contacts.get(conv.contact_id or "")
            out[conv.id] = (
                {
                    "state": contact.presence,
                    "at": contact.presence_at.isoformat() if contact.presence_at else None,
                }
                if contact is not None and contact.presence
                else None
            )
        return out

    rule_risk: dict[str, Risk] = {r.id: r.risk for r in svc.engine.triage.rules.rules}

    def own_risk(reasons: list[dict[str, Any]]) -> Risk:
        """A message's own risk: the highest of the rules it matched itself (the stored risk is the
        conversation's, which never falls below earlier messages')."""
        risks = [rule_risk[r["rule"]] for r in reasons if r.get("rule") in rule_risk]
        return max(risks, key=lambda x: x.rank, default=Risk.LOW)

    async def _previews(s: AsyncSession, ids: list[str]) -> dict[str, tuple[str, dict[str, Any] | None]]:
        """The most serious line each person wrote (the latest of the most serious), with its most serious
        reason: the line a counsellor deciding whom to take must see, not the latest ありがとう. The reason
        carries its span in the preview (which shows the part of a long line where it matched), so that the
        page quotes the whole words it found there, as the transcript's highlights do."""
        if not ids:
            return {}
        rows = (
            await s.execute(
                select(col(Message.conversation_id), col(Message.text_enc), col(Message.triage_enc))
                .where(col(Message.conversation_id).in_(ids), col(Message.direction) == Direction.IN)
                .where(col(Message.kind) == "text", col(Message.withdrawn_at).is_(None))
                .order_by(col(Message.id))
            )
        ).all()
        best: dict[str, tuple[int, str, dict[str, Any] | None]] = {}
        for cid, enc, triage_enc in rows:
            reasons = json.loads(svc.crypto.decrypt(triage_enc)).get("reasons", []) if triage_enc else []
            rank = own_risk(reasons).rank
            if cid not in best or rank >= best[cid][0]:
                own = [r for r in reasons if r.get("rule") in rule_risk and r.get("span")]
                # Its most serious rule, and of those the longest words (a lone kana says little).
                top = max(own, key=lambda r: (rule_risk[r["rule"]].rank, len(r["matched"])), default=None)
                if top is not None:  # with the words other rules found overlapping it (もう死に + 死にたい)
                    a, b = int(top["span"][0]), int(top["span"][1])
                    for r in sorted(own, key=lambda r: int(r["span"][0])):
                        if int(r["span"][0]) < b and int(r["span"][1]) > a:
                            a, b = min(a, int(r["span"][0])), max(b, int(r["span"][1]))
                    top = {"rule": top["rule"], "span": [a, b]}
                best[cid] = (rank, enc, top)
        out: dict[str, tuple[str, dict[str, Any] | None]] = {}
        for cid, (_, enc, top) in best.items():
            text = svc.crypto.decrypt(enc)
            start = 0
            if top is not None and int(top["span"][1]) > PREVIEW_CHARS:  # show where it matched
                start = max(0, min(int(top["span"][0]) - PREVIEW_CHARS // 3, len(text) - PREVIEW_CHARS))
            preview = ("…" if start else "") + text[start : start + PREVIEW_CHARS]
            shift = start - (1 if start else 0)  # the span in the preview, after its "…"
            reason = None
            if top is not None:
                a, b = int(top["span"][0]) - shift, int(top["span"][1]) - shift
                b = min(b, len(preview))
                reason = {"rule": top["rule"], "matched": preview[a:b], "span": [a, b]}
            out[cid] = (preview, reason)
        return out

    # -- one conversation -----------------------------------------------------------------------------

    async def access(
        s: AsyncSession, me: Me, conversation_id: str, *, write: bool
    ) -> tuple[Conversation, int | None]:
        """The one access check: who may read or act on a conversation.
        Read: its counsellor, anyone while it waits (to decide to take it), supervisors always.
        Write: its counsellor only."""
        conv = await s.get(Conversation, conversation_id)
        if conv is None or conv.erased:
            raise HTTPException(404, "no such conversation")
        holder = await handoffs.holder(s, conversation_id=conversation_id)
        if write:
            if holder != me.id:
                raise HTTPException(403, "only the counsellor who has this conversation can do that")
        elif not (holder == me.id or conv.state == State.WAITING or me.supervises):
            # The counsellor who handled it before (closed, or passed on) may still read it.
            handled = await handoffs.handled_by(
                s, conversation_id=conversation_id, counsellor_id=me.id, closed_only=True
            )
            if (not handled or holder is not None) and not await linked_to_mine(s, me, conv.id):
                raise HTTPException(403, "this conversation is with another counsellor")
        return conv, holder

    async def linked_to_mine(s: AsyncSession, me: Me, conversation_id: str) -> bool:
        """Is this the earlier conversation of a person who came back, in a conversation this counsellor
        may read (theirs, or waiting)? Then they may read it too."""
        later = (
            await s.scalars(select(Conversation).where(col(Conversation.previous_id) == conversation_id))
        ).all()
        for conv in later:
            if conv.state == State.WAITING:
                return True
            if await handoffs.holder(s, conversation_id=conv.id) == me.id:
                return True
        return False

    @r.post("/conversations/{conversation_id}/claim")
    async def claim(conversation_id: str, me: MeDep) -> dict[str, Any]:
        async with svc.db.session() as s:
            conv = await s.get(Conversation, conversation_id)
            c = await s.get(Counsellor, me.id)
        if conv is None or conv.erased:
            raise HTTPException(404, "no such conversation")
        assert c is not None
        limit = limit_of(c)
        result = await take(conversation_id, me.id, limit, actor=me.username)
        if result is Claim.FULL:
            raise HTTPException(409, f"you already have {limit} conversations")
        if result is Claim.TAKEN:
            raise HTTPException(409, "someone else has this conversation")
        return {"conversation_id": conversation_id, "state": State.WITH_COUNSELLOR}

    @r.get("/conversations/{conversation_id}")
    async def get_conversation(conversation_id: str, me: MeDep) -> dict[str, Any]:
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
            holding = await s.get(Counsellor, holder) if holder else None
            holder_name = holding.username if holding else None
            can_note = await may_note(s, me, conv, holder)
            presence = (await _presences(s, [conv]))[conv.id]
            # A person back soon after a conversation at high or crisis: the earlier one, linked.
            earlier = await s.get(Conversation, conv.previous_id) if conv.previous_id else None
            previous = (
                {
                    "conversation_id": earlier.id,
                    "risk": earlier.risk,
                    "categories": _cats(earlier),
                    "created_at": earlier.created_at.isoformat(),
                    "outcome": earlier.outcome,
                }
                if earlier is not None and not earlier.erased
                else None
            )
            await audit_write.record_view(
                s, actor=me.username, conversation_id=conversation_id, now=utcnow(), every=VIEW_AUDIT_EVERY
            )
        out_messages: list[dict[str, Any]] = []
        reasons: list[dict[str, Any]] = []
        for m in messages:
            # A choice they pressed is shown too: the answer to the direct question belongs under it.
            if m.direction == Direction.IN and m.kind not in ("text", "media", "choice"):
                continue
            item: dict[str, Any] = {
                "from": "user" if m.direction == Direction.IN else m.sender,
                "text": svc.crypto.decrypt(m.text_enc)
                if m.kind in ("text", "choice") or m.direction == Direction.OUT
                else "",
                "kind": m.kind,
                "at": m.created_at.isoformat(),
            }
            if m.full_enc:  # a mail: the whole of it (quoted thread, signature) besides the new text
                item["full_text"] = svc.crypto.decrypt(m.full_enc)
            if m.attachments:  # counted, never kept
                item["attachments"] = m.attachments
            if m.flags:  # whole_mail, edited, withdrawn, album: said to the counsellor in words
                item["flags"] = conversations.split(m.flags)
            if m.meta_enc:  # what came besides text: a sticker's keywords, a place, a file's name and size
                item["items"] = json.loads(svc.crypto.decrypt(m.meta_enc))
            if m.id in pictures:  # shown behind a click, from the picture route (with the same check)
                item["pictures"] = pictures[m.id]
            if m.id in deliveries:  # what became of a message to the person: pending, delivered, failed
                o = deliveries[m.id]
                item["delivery"] = {"status": o.status, "attempts": o.attempts, "error": o.last_error}
            if m.triage_enc:
                t = json.loads(svc.crypto.decrypt(m.triage_enc))
                item["risk"] = own_risk(t.get("reasons", [])).value  # its own, not the conversation's
                item["highlights"] = [{"rule": x["rule"], "span": x["span"]} for x in t.get("reasons", [])]
                reasons += [
                    {
                        "rule": x["rule"],
                        "matched": x["matched"],
                        "message": len(out_messages),
                        "span": x["span"],
                    }
                    for x in t.get("reasons", [])
                ]
            out_messages.append(item)
        return {
            "conversation_id": conv.id,
            "state": conv.state,
            "channel": conv.channel,
            "counsellor": holder_name,
            "counsellor_name": (holding.display_name or holding.username) if holding else None,
            "messages": out_messages,
            "triage": {
                "risk": conv.risk,
                "categories": _cats(conv),
                "reasons": _dialogue_reasons(conv) + reasons,
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

    @r.get("/conversations/{conversation_id}/pictures/{picture_id}")
    async def get_picture(
        conversation_id: str, picture_id: Annotated[int, Path(ge=1, le=2**63 - 1)], me: MeDep
    ) -> Response:
        """A picture a person sent, for whoever may read the conversation (the one access check); the
        counsellor asked for it with a click after a warning. Never cached; every view is audited."""
        async with svc.db.session() as s, s.begin():
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
        data = svc.crypto.decrypt_bytes(media.data_enc)
        headers = {
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": "inline",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        }
        # Only what bot/images.py wrote is served, under the type it wrote.
        media_type = media.content_type if media.content_type in ("image/jpeg", "image/png") else "image/jpeg"
        return Response(content=data, media_type=media_type, headers=headers)

    @r.post("/conversations/{conversation_id}/messages", status_code=202)
    async def post_message(conversation_id: str, body: TextIn, me: MeDep) -> dict[str, str]:
        async with svc.db.session() as s:
            await access(s, me, conversation_id, write=True)
        if not await svc.engine.counsellor_reply(conversation_id, me.id, body.text, actor=me.username):
            raise HTTPException(409, "the conversation is not with you any more")
        return {"status": "queued"}

    async def may_note(s: AsyncSession, me: Me, conv: Conversation, holder: int | None) -> bool:
        """Notes are the counsellor's who has the conversation, or had it once it is closed (what they
        learned after the last word belongs in the record too)."""
        if holder == me.id:
            return True
        if conv.state != State.CLOSED:
            return False
        return await handoffs.handled_by(s, conversation_id=conv.id, counsellor_id=me.id)

    @r.post("/conversations/{conversation_id}/notes", status_code=201)
    async def post_note(conversation_id: str, body: TextIn, me: MeDep) -> dict[str, str]:
        async with svc.db.session() as s, s.begin():
            conv, holder = await access(s, me, conversation_id, write=False)
            if not await may_note(s, me, conv, holder):
                raise HTTPException(403, "only the counsellor who has (or had) it can add notes")
            s.add(
                Note(
                    conversation_id=conversation_id,
                    counsellor_id=me.id,
                    text_enc=svc.crypto.encrypt(body.text),
                )
            )
            audit_write.record(s, actor=me.username, action="note", conversation_id=conversation_id)
        svc.events.publish(Event("note", conversation_id))  # supervisors watching re-read it
        return {"status": "saved"}

    @r.post("/conversations/{conversation_id}/advice", status_code=201)
    async def post_advice(conversation_id: str, body: TextIn, me: SupervisorDep) -> dict[str, str]:
        """A supervisor's advice to the counsellor (SV助言): beside the notes, never sent to the person."""
        async with svc.db.session() as s, s.begin():
            await access(s, me, conversation_id, write=False)
            s.add(
                Note(
                    conversation_id=conversation_id,
                    counsellor_id=me.id,
                    text_enc=svc.crypto.encrypt(body.text),
                    kind="advice",
                )
            )
            audit_write.record(s, actor=me.username, action="advice", conversation_id=conversation_id)
        svc.events.publish(Event("note", conversation_id))  # the counsellor's console re-reads it
        return {"status": "saved"}

    @r.post("/conversations/{conversation_id}/transfer")
    async def transfer(conversation_id: str, body: TransferIn, me: MeDep) -> dict[str, Any]:
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
                limit = limit_of(target)
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
                conversation_id,
                target.id,
                limit_of(target),
                actor=me.username,
                action="transfer",
                detail=f"to={body.to} result={State.WITH_COUNSELLOR}",
            )
            if got is Claim.CLAIMED:
                state = State.WITH_COUNSELLOR
            else:  # the colleague could not take it after all: it waits in the queue, and the log says so
                await _audit(me, "transfer", conversation_id, f"to={body.to} result={state}")
        return {
            "conversation_id": conversation_id,
            "state": state,
            "counsellor": body.to if state != State.WAITING else None,
        }

    @r.post("/conversations/{conversation_id}/close")
    async def close(conversation_id: str, body: CloseIn, me: MeDep) -> dict[str, str]:
        if body.outcome not in outcome_codes:
            raise HTTPException(422, f"unknown outcome; use one of {sorted(outcome_codes)}")
        known = {ref.id for ref in svc.content.referrals}
        unknown = [x for x in body.referrals if x not in known]
        if unknown:
            raise HTTPException(422, f"unknown referrals {unknown}")
        async with svc.db.session() as s:
            await access(s, me, conversation_id, write=True)
        if not await svc.engine.close_by_counsellor(
            conversation_id, me.id, outcome=body.outcome, referrals=body.referrals, actor=me.username
        ):
            raise HTTPException(409, "the conversation is not with you any more")
        await svc.queue.release(conversation_id, me.id)
        return {"conversation_id": conversation_id, "state": State.CLOSED}

    # -- what counsellors insert ----------------------------------------------------------------------

    @r.get("/canned")
    async def canned(me: MeDep) -> dict[str, Any]:
        return {"canned": console["canned"], "outcomes": console["outcomes"]}

    @r.get("/referrals")
    async def referrals(me: MeDep, q: str = "") -> list[dict[str, Any]]:
        now = utcnow()
        # Every word must be found in its name, number, purpose, hours, categories or tags (content/
        # referrals.yaml), kana and width folded: 24時間, デートDV, 彼氏, 交際相手, 高校生 find theirs.
        needles = [key(w) for w in q.replace("　", " ").split() if w.strip()]
        out = []
        for ref in svc.content.referrals:
            fields = [ref.name, ref.number, ref.purpose, ref.hours_label, *ref.categories, *ref.tags]
            hay = " ".join(key(f) for f in fields)
            if not all(n in hay for n in needles):
                continue
            out.append(
                {
                    "id": ref.id,
                    "name": ref.name,
                    "number": ref.number,
                    "hours": ref.hours_label,
                    "open_now": ref.open_now(now),
                    "for": ref.purpose,
                    "checked": ref.checked.isoformat(),
                    "line": svc.content.lines([ref], now),
                }
            )
        return out

    # -- supervisors -----------------------------------------------------------------------------------

    @r.get("/overview")
    async def overview(me: SupervisorDep) -> dict[str, Any]:
        now = utcnow()
        entries = await svc.queue.ordered(now)
        async with svc.db.session() as s:
            rows = (
                await s.execute(
                    select(Handoff, Conversation, col(Counsellor.username), col(Counsellor.display_name))
                    .join(Conversation, col(Conversation.id) == col(Handoff.conversation_id))
                    .join(Counsellor, col(Counsellor.id) == col(Handoff.counsellor_id))
                    .where(col(Handoff.status) == HandoffStatus.CLAIMED)
                )
            ).all()
            counsellors = (await s.scalars(select(Counsellor).where(col(Counsellor.active).is_(True)))).all()
            alerts = (
                await s.scalars(
                    select(Alert).where(col(Alert.counsellor_id) == me.id, col(Alert.seen_at).is_(None))
                )
            ).all()
        load = Counter(name for _, _, name, _ in rows)
        return {
            "waiting": len(entries),
            "longest_wait_seconds": max(
                (int((now - e.queued_at).total_seconds()) for e in entries), default=0
            ),
            "active": [
                {
                    "conversation_id": c.id,
                    "counsellor": name,
                    "counsellor_name": shown or name,
                    "risk": c.risk,
                    "categories": _cats(c),
                    "channel": c.channel,
                    "since": h.claimed_at.isoformat() if h.claimed_at else None,
                }
                for h, c, name, shown in rows
            ],
            "counsellors": [
                {
                    "username": c.username,
                    "display_name": c.display_name,
                    "role": c.role,
                    "on_duty": c.on_duty,
                    "load": load.get(c.username, 0),
                    "limit": limit_of(c),
                }
                for c in counsellors
            ],
            "alerts": [
                {"conversation_id": a.conversation_id, "kind": a.kind, "at": a.created_at.isoformat()}
                for a in alerts
            ],
        }

    def period(days: int, start: date | None, end: date | None) -> tuple[date, date]:
        """The days asked for, in the service's time zone: ``start`` to ``end`` (both included), or the
        last ``days`` up to today."""
        today = utcnow().astimezone(svc.hours.tz).date()
        last = min(end or today, today)
        first = start or last - timedelta(days=max(1, min(days, MAX_DAYS)) - 1)
        if first > last:
            raise HTTPException(422, "the period starts after it ends")
        if (last - first).days >= MAX_DAYS:
            raise HTTPException(422, f"a period is at most {MAX_DAYS} days")
        return first, last

    async def report(days: int, start: date | None, end: date | None) -> stats_db.Report:
        first, last = period(days, start, end)
        async with svc.db.session() as s:
            return await stats_db.report(s, start=first, end=last, tz=svc.hours.tz)

    @r.get("/stats")
    async def stats(
        me: SupervisorDep, days: int = 30, start: date | None = None, end: date | None = None
    ) -> dict[str, Any]:
        """Every conversation that started in the period, closed or not (bot/storage/statistics.py)."""
        rep = await report(days, start, end)
        return {
            "days": (rep.end - rep.start).days + 1,
            "start": rep.start.isoformat(),
            "end": rep.end.isoformat(),
            "conversations": rep.conversations,
            "by_day": dict(sorted(rep.by_day.items())),
            "by_category": dict(sorted(rep.by_category.items())),
            "by_risk": dict(sorted(rep.by_risk.items())),
            "by_channel": dict(sorted(rep.by_channel.items())),
            "by_age_band": dict(sorted(rep.by_age_band.items())),
            "by_outcome": dict(sorted(rep.by_outcome.items())),
            "by_referral": dict(sorted(rep.by_referral.items())),
            "emergencies": rep.emergencies,
            "handed_off": rep.handed_off,
            "still_open": rep.still_open,
        }

    def csv_response(rows: list[list[Any]], name: str, rep: stats_db.Report) -> Response:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows(rows)
        filename = f"tsunagi-{name}-{rep.start:%Y%m%d}-{rep.end:%Y%m%d}.csv"
        return Response(
            "\ufeff" + buf.getvalue(),  # a BOM, so that Excel reads the UTF-8
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Cache-Control": "no-store",
            },
        )

    @r.get("/stats.csv", response_class=CsvResponse)
    async def stats_csv(
        me: SupervisorDep, days: int = 365, start: date | None = None, end: date | None = None
    ) -> Response:
        """Conversations by the day they started, channel, risk and age band, in Japanese, with the totals
        on a last row of their own."""
        rep = await report(days, start, end)
        lab = labels()
        rows: list[list[Any]] = [list(lab.daily_headers)]
        for x in rep.daily:
            rows.append(
                [
                    x.day.isoformat(),
                    lab.channel(x.channel),
                    lab.risk(x.risk),
                    lab.age_band(x.age_band),
                    x.conversations,
                    x.handed_off,
                    x.emergencies,
                ]
            )
        rows.append([lab.total_row, "", "", "", rep.conversations, rep.handed_off, rep.emergencies])
        async with svc.db.session() as s, s.begin():
            audit_write.record(
                s, actor=me.username, action="stats.export", detail=f"daily {rep.start}..{rep.end}"
            )
        return csv_response(rows, "daily", rep)

    @r.get("/stats-totals.csv", response_class=CsvResponse)
    async def stats_totals_csv(
        me: SupervisorDep, days: int = 365, start: date | None = None, end: date | None = None
    ) -> Response:
        """The period's totals, one figure a row: by channel, risk, category, age band, outcome and
        referral, each under its section's name (the definitions are in the README)."""
        rep = await report(days, start, end)
        lab = labels()
        rows: list[list[Any]] = [list(lab.totals_headers)]
        rows += [[lab.section("total"), lab.figure(k), v] for k, v in rep_figures(rep)]
        sections: list[tuple[str, Counter[str], Any]] = [
            ("channel", rep.by_channel, lab.channel),
            ("risk", rep.by_risk, lab.risk),
            ("category", rep.by_category, lab.category),
            ("age_band", rep.by_age_band, lab.age_band),
            ("outcome", rep.by_outcome, lab.outcome),
            ("referral", rep.by_referral, referral_name),
        ]
        for name, counts, label in sections:
            for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
                rows.append([lab.section(name), label(k), v])
        async with svc.db.session() as s, s.begin():
            audit_write.record(
                s, actor=me.username, action="stats.export", detail=f"totals {rep.start}..{rep.end}"
            )
        return csv_response(rows, "totals", rep)

    def rep_figures(rep: stats_db.Report) -> list[tuple[str, int]]:
        return [
            ("conversations", rep.conversations),
            ("handed_off", rep.handed_off),
            ("emergencies", rep.emergencies),
            ("still_open", rep.still_open),
        ]

    def labels() -> ConsoleLabels:
        return console_labels()

    referral_names = {ref.id: ref.name for ref in svc.content.referrals}

    def referral_name(ref_id: str) -> str:
        return referral_names.get(ref_id, ref_id)

    @r.get("/alerts")
    async def my_alerts(me: MeDep) -> list[dict[str, Any]]:
        """The crisis alerts addressed to me and not yet answered (the supervisors on duty; the counsellors
        on duty when no supervisor is), with whether the conversation still waits."""
        async with svc.db.session() as s:
            rows = (
                await s.execute(
                    select(Alert, col(Conversation.state))
                    .join(Conversation, col(Conversation.id) == col(Alert.conversation_id))
                    .where(col(Alert.counsellor_id) == me.id, col(Alert.seen_at).is_(None))
                    .order_by(col(Alert.id))
                )
            ).all()
        return [
            {
                "conversation_id": a.conversation_id,
                "kind": a.kind,
                "at": a.created_at.isoformat(),
                "state": state,
            }
            for a, state in rows
        ]

    @r.post("/alerts/seen")
    async def alerts_seen(me: MeDep) -> dict[str, int]:
        """The supervisor has seen their crisis alerts."""
        async with svc.db.session() as s, s.begin():
            result = await s.execute(
                update(Alert)
                .where(col(Alert.counsellor_id) == me.id, col(Alert.seen_at).is_(None))
                .values(seen_at=utcnow())
            )
        return {"seen": int(result.rowcount)}  # type: ignore[attr-defined]

    @r.get("/audit")
    async def audit(
        me: SupervisorDep,
        limit: int = 200,
        person: str = "",
        action: str = "",
        start: date | None = None,
        end: date | None = None,
    ) -> list[dict[str, Any]]:
        """The newest first; ``person`` a username or a display name, ``action`` one action, ``start`` and
        ``end`` days in the service's time zone (both included)."""
        tz = svc.hours.tz
        since = datetime.combine(start, time(0), tz) if start else None
        until = datetime.combine(end + timedelta(days=1), time(0), tz) if end else None
        async with svc.db.session() as s:
            rows = await audit_db.entries(
                s, person=person.strip(), action=action.strip(), since=since, until=until, limit=limit
            )
        return [
            {
                "at": a.at.isoformat(),
                "actor": a.actor,
                "actor_name": a.actor_name,
                "action": a.action,
                "conversation_id": a.conversation_id,
                "detail": a.detail,
            }
            for a in rows
        ]

    # -- live updates -----------------------------------------------------------------------------------

    @public.websocket("/live")
    async def live(ws: WebSocket) -> None:
        """Events (ids, states and risk only) for the console to refresh what it shows."""
        origin = ws.headers.get("origin")
        host = ws.headers.get("host")
        if origin is not None and origin.split("://", 1)[-1] != host:
            await ws.close(code=1008)  # a page of another site must not listen
            return
        async with svc.db.session() as s, s.begin():
            me = await current(s, ws.cookies.get(COOKIE), hours=settings.session_hours, now=utcnow())
        if me is None or me.must_change_password:
            await ws.close(code=1008)
            return
        await ws.accept()

        async def pump(events: "asyncio.Queue[Event]") -> None:
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
                async with svc.db.session() as s:
                    if not await still_valid(s, me.session_id, utcnow()):
                        break
            await ws.close(code=1008)

        async with svc.events.subscribe() as events:
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

    async def _audit(me: Me, action: str, conversation_id: str, detail: str = "") -> None:
        """An action with no transaction of its own (an export), audited in one."""
        async with svc.db.session() as s, s.begin():
            audit_write.record(
                s, actor=me.username, action=action, conversation_id=conversation_id, detail=detail
            )

    router = APIRouter()
    router.include_router(public)
    router.include_router(r)
    return router


def _dialogue_reasons(conv: Conversation) -> list[dict[str, Any]]:
    """What the conversation itself found (bot/dialogue.py), beside the triage's reasons: the direct
    question about danger and its answer, and a return soon after a conversation at high or crisis."""
    out: list[dict[str, Any]] = []
    if conv.danger_asked:
        out.append(
            {"rule": "dialogue.danger_question", "answer": conv.danger_answer or "pending", "matched": ""}
        )
    if conv.previous_id:
        out.append({"rule": "dialogue.returning", "previous": conv.previous_id, "matched": ""})
    return out


def _cats(conv: Conversation) -> list[str]:
    return conversations.categories(conv)
