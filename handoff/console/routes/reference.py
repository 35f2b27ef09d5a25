"""What counsellors insert: the canned replies and outcomes, and the referrals, searched."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from bot.content import key
from bot.models import utcnow
from handoff.console.deps import PREFIX, ConsoleDep, MeDep
from handoff.console.schemas import CannedOut, ReferralOut

router = APIRouter(prefix=PREFIX)


@router.get("/canned", response_model=CannedOut)
async def canned(me: MeDep, cx: ConsoleDep) -> dict[str, Any]:
    return {"canned": cx.content["canned"], "outcomes": cx.content["outcomes"]}


@router.get("/referrals", response_model=list[ReferralOut])
async def referrals(me: MeDep, cx: ConsoleDep, q: str = "") -> list[dict[str, Any]]:
    now = utcnow()
    content = cx.host.content
    # Every word must be found in its name, number, purpose, hours, categories or tags (content/
    # referrals.yaml), kana and width folded: 24時間, デートDV, 彼氏, 交際相手, 高校生 find theirs.
    needles = [key(w) for w in q.replace("　", " ").split() if w.strip()]
    out = []
    for ref in content.referrals:
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
                "line": content.lines([ref], now),
            }
        )
    return out
