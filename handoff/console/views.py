"""How the console shows a conversation in a list: its preview (the most serious line, where it matched),
whether the person is there, its categories, and what the conversation itself found."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import Contact, Conversation, Direction, Message
from bot.storage import conversations
from handoff.console.deps import Console
from triage import Risk

PREVIEW_CHARS = 60


def own_risk(cx: Console, reasons: list[dict[str, Any]]) -> Risk:
    """A message's own risk: the highest of the rules it matched itself (the stored risk is the
    conversation's, which never falls below earlier messages')."""
    risks = [cx.rule_risk[r["rule"]] for r in reasons if r.get("rule") in cx.rule_risk]
    return max(risks, key=lambda x: x.rank, default=Risk.LOW)


async def presences(s: AsyncSession, convs: list[Conversation]) -> dict[str, dict[str, Any] | None]:
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


async def previews(
    cx: Console, s: AsyncSession, ids: list[str]
) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """The most serious line each person wrote (the latest of the most serious), with its most serious
    reason: the line a counsellor deciding whom to take must see, not the latest ありがとう. The reason
    carries its span in the preview (which shows the part of a long line where it matched), so that the
    page quotes the whole words it found there, as the transcript's highlights do."""
    if not ids:
        return {}
    crypto, rule_risk = cx.host.crypto, cx.rule_risk
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
        reasons = json.loads(crypto.decrypt(triage_enc)).get("reasons", []) if triage_enc else []
        rank = own_risk(cx, reasons).rank
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
        text = crypto.decrypt(enc)
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


def dialogue_reasons(conv: Conversation) -> list[dict[str, Any]]:
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


def cats(conv: Conversation) -> list[str]:
    return conversations.categories(conv)
