"""For supervisors: the overview, the statistics and their CSV exports, the crisis alerts, the audit log."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import select, update
from sqlmodel import col

from bot.models import Alert, Conversation, Counsellor, Handoff, HandoffStatus, utcnow
from bot.storage import audit as audit_db
from bot.storage import audit_write
from bot.storage import statistics as stats_db
from handoff.console import views
from handoff.console.content import console_labels
from handoff.console.deps import PREFIX, Console, ConsoleDep, MeDep, SupervisorDep
from handoff.console.schemas import AuditOut, MyAlertOut, OverviewOut, SeenOut, StatsOut

MAX_DAYS = 3660  # the longest period of statistics

router = APIRouter(prefix=PREFIX)


class CsvResponse(PlainTextResponse):
    media_type = "text/csv"  # what the OpenAPI says /stats.csv answers


@router.get("/overview", response_model=OverviewOut)
async def overview(me: SupervisorDep, cx: ConsoleDep) -> dict[str, Any]:
    now = utcnow()
    entries = await cx.host.queue.ordered(now)
    async with cx.host.db.session() as s:
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
        "longest_wait_seconds": max((int((now - e.queued_at).total_seconds()) for e in entries), default=0),
        "active": [
            {
                "conversation_id": c.id,
                "counsellor": name,
                "counsellor_name": shown or name,
                "risk": c.risk,
                "categories": views.cats(c),
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
                "limit": cx.limit_of(c),
            }
            for c in counsellors
        ],
        "alerts": [
            {"conversation_id": a.conversation_id, "kind": a.kind, "at": a.created_at.isoformat()}
            for a in alerts
        ],
    }


def period(cx: Console, days: int, start: date | None, end: date | None) -> tuple[date, date]:
    """The days asked for, in the service's time zone: ``start`` to ``end`` (both included), or the
    last ``days`` up to today."""
    today = utcnow().astimezone(cx.host.hours.tz).date()
    last = min(end or today, today)
    first = start or last - timedelta(days=max(1, min(days, MAX_DAYS)) - 1)
    if first > last:
        raise HTTPException(422, "the period starts after it ends")
    if (last - first).days >= MAX_DAYS:
        raise HTTPException(422, f"a period is at most {MAX_DAYS} days")
    return first, last


async def report(cx: Console, days: int, start: date | None, end: date | None) -> stats_db.Report:
    first, last = period(cx, days, start, end)
    async with cx.host.db.session() as s:
        return await stats_db.report(s, start=first, end=last, tz=cx.host.hours.tz)


@router.get("/stats", response_model=StatsOut)
async def stats(
    me: SupervisorDep, cx: ConsoleDep, days: int = 30, start: date | None = None, end: date | None = None
) -> dict[str, Any]:
    """Every conversation that started in the period, closed or not (bot/storage/statistics.py)."""
    rep = await report(cx, days, start, end)
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


@router.get("/stats.csv", response_class=CsvResponse)
async def stats_csv(
    me: SupervisorDep, cx: ConsoleDep, days: int = 365, start: date | None = None, end: date | None = None
) -> Response:
    """Conversations by the day they started, channel, risk and age band, in Japanese, with the totals
    on a last row of their own."""
    rep = await report(cx, days, start, end)
    lab = console_labels()
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
    async with cx.host.db.session() as s, s.begin():
        audit_write.record(
            s, actor=me.username, action="stats.export", detail=f"daily {rep.start}..{rep.end}"
        )
    return csv_response(rows, "daily", rep)


@router.get("/stats-totals.csv", response_class=CsvResponse)
async def stats_totals_csv(
    me: SupervisorDep, cx: ConsoleDep, days: int = 365, start: date | None = None, end: date | None = None
) -> Response:
    """The period's totals, one figure a row: by channel, risk, category, age band, outcome and
    referral, each under its section's name (the definitions are in the README)."""
    rep = await report(cx, days, start, end)
    lab = console_labels()
    rows: list[list[Any]] = [list(lab.totals_headers)]
    rows += [[lab.section("total"), lab.figure(k), v] for k, v in rep_figures(rep)]
    sections: list[tuple[str, Counter[str], Any]] = [
        ("channel", rep.by_channel, lab.channel),
        ("risk", rep.by_risk, lab.risk),
        ("category", rep.by_category, lab.category),
        ("age_band", rep.by_age_band, lab.age_band),
        ("outcome", rep.by_outcome, lab.outcome),
        ("referral", rep.by_referral, lambda ref_id: cx.referral_names.get(ref_id, ref_id)),
    ]
    for name, counts, label in sections:
        for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            rows.append([lab.section(name), label(k), v])
    async with cx.host.db.session() as s, s.begin():
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


@router.get("/alerts", response_model=list[MyAlertOut])
async def my_alerts(me: MeDep, cx: ConsoleDep) -> list[dict[str, Any]]:
    """The crisis alerts addressed to me and not yet answered (the supervisors on duty; the counsellors
    on duty when no supervisor is), with whether the conversation still waits."""
    async with cx.host.db.session() as s:
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


@router.post("/alerts/seen", response_model=SeenOut)
async def alerts_seen(me: MeDep, cx: ConsoleDep) -> SeenOut:
    """The supervisor has seen their crisis alerts."""
    async with cx.host.db.session() as s, s.begin():
        result = await s.execute(
            update(Alert)
            .where(col(Alert.counsellor_id) == me.id, col(Alert.seen_at).is_(None))
            .values(seen_at=utcnow())
        )
    return SeenOut(seen=int(result.rowcount))  # type: ignore[attr-defined]


@router.get("/audit", response_model=list[AuditOut])
async def audit(
    me: SupervisorDep,
    cx: ConsoleDep,
    limit: int = 200,
    person: str = "",
    action: str = "",
    start: date | None = None,
    end: date | None = None,
) -> list[dict[str, Any]]:
    """The newest first; ``person`` a username or a display name, ``action`` one action, ``start`` and
    ``end`` days in the service's time zone (both included)."""
    tz = cx.host.hours.tz
    since = datetime.combine(start, time(0), tz) if start else None
    until = datetime.combine(end + timedelta(days=1), time(0), tz) if end else None
    async with cx.host.db.session() as s:
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
