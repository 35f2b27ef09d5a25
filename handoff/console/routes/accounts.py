"""Colleagues and accounts: whom a conversation can be passed to, and the administrators' accounts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from sqlmodel import col

from bot.models import Counsellor, Role
from bot.storage import accounts as accounts_db
from bot.storage import handoffs
from handoff.console.deps import PREFIX, AdminDep, Console, ConsoleDep, MeDep, SupervisorDep
from handoff.console.schemas import (
    AccountChange,
    AccountChangedOut,
    AccountIn,
    AccountOut,
    ColleagueOut,
    DisplayNameIn,
    NameOut,
    NewAccountOut,
    PasswordOut,
)

router = APIRouter(prefix=PREFIX)


def account_refusal(e: accounts_db.AccountError) -> HTTPException:
    status = {"taken": 409, "missing": 404, "self": 422, "invalid": 422}.get(e.code, 422)
    return HTTPException(status, str(e))


async def held_counts(cx: Console) -> Counter[int]:
    async with cx.host.db.session() as s:
        return await handoffs.held_counts(s)


def account_of(cx: Console, c: Counsellor, held: Counter[int]) -> dict[str, Any]:
    return {
        "username": c.username,
        "display_name": c.display_name,
        "role": c.role,
        "active": c.active,
        "on_duty": c.on_duty,
        "held": held[c.id or 0],
        "limit": cx.limit_of(c),
        "custom_limit": c.max_conversations,
        "must_change_password": c.must_change_password,
        "created_at": c.created_at.isoformat(),
    }


@router.get("/colleagues", response_model=list[ColleagueOut])
async def colleagues(me: MeDep, cx: ConsoleDep) -> list[ColleagueOut]:
    """Whom a conversation can be passed to: the other active accounts that have chosen their password,
    those on duty first."""
    async with cx.host.db.session() as s:
        rows = (await s.scalars(select(Counsellor).where(col(Counsellor.active)))).all()
    held = await held_counts(cx)
    out = [
        ColleagueOut(
            username=c.username,
            display_name=c.display_name,
            role=Role(c.role),
            on_duty=c.on_duty,
            held=held[c.id or 0],
            limit=cx.limit_of(c),
        )
        for c in rows
        if c.id != me.id and not c.must_change_password
    ]
    return sorted(out, key=lambda x: (not x.on_duty, x.username))


@router.get("/accounts", response_model=list[AccountOut])
async def accounts(me: AdminDep, cx: ConsoleDep) -> list[AccountOut]:
    async with cx.host.db.session() as s:
        rows = await accounts_db.listing(s)
    held = await held_counts(cx)
    return [AccountOut.model_validate(account_of(cx, c, held)) for c in rows]


@router.post("/accounts", status_code=201, response_model=NewAccountOut)
async def add_account(body: AccountIn, me: AdminDep, cx: ConsoleDep) -> NewAccountOut:
    async with cx.host.db.session() as s, s.begin():
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
    return NewAccountOut(username=c.username, display_name=c.display_name, password=password)


@router.post("/accounts/{username}", response_model=AccountChangedOut)
async def change_account(
    username: str, body: AccountChange, me: AdminDep, cx: ConsoleDep
) -> AccountChangedOut:
    given = body.model_fields_set
    async with cx.host.db.session() as s, s.begin():
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
        if await cx.host.engine.requeue(conversation_id, counsellor_id) is not None:
            requeued += 1
    async with cx.host.db.session() as s:
        c = await accounts_db.named(s, username=username)
    return AccountChangedOut.model_validate(account_of(cx, c, await held_counts(cx)) | {"requeued": requeued})


@router.post("/accounts/{username}/display-name", response_model=NameOut)
async def account_display_name(
    username: str, body: DisplayNameIn, me: SupervisorDep, cx: ConsoleDep
) -> NameOut:
    """A supervisor (or an administrator) sets the name people read for a colleague."""
    async with cx.host.db.session() as s, s.begin():
        try:
            c = await accounts_db.set_display_name(
                s, username=username, display_name=body.display_name, actor=me.username
            )
        except accounts_db.AccountError as e:
            raise account_refusal(e) from e
    return NameOut(username=c.username, display_name=c.display_name)


@router.post("/accounts/{username}/password", response_model=PasswordOut)
async def new_password(username: str, me: AdminDep, cx: ConsoleDep) -> PasswordOut:
    """A new one-time password (they choose their own at the next login); their sessions end."""
    async with cx.host.db.session() as s, s.begin():
        try:
            password = await accounts_db.new_password(s, username=username, actor=me.username)
        except accounts_db.AccountError as e:
            raise account_refusal(e) from e
    return PasswordOut(username=username, password=password)
