"""De-identified statistics, by the day each conversation started (in the service's time zone).

Where the figures come from:
- ``stat_count``, written when a conversation closes (bot/engine.py): conversations, handed_off and
  emergencies per day, channel, risk, age band (and once per category); it outlives the conversations;
- the conversations not closed yet, counted from the conversation table as they are now, so that every
  conversation that started in the period counts, not only the closed ones;
- outcomes and referrals: from the closed conversations still kept, and, for those that retention purged,
  from the ``outcome`` and ``referral`` rows that ``fold_purged`` wrote in the purge's own transaction.

No figure holds an id, a text or anything else that points to one person.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import Conversation, Handoff, StatCount, State

ALL = "*"  # the category of the rows that count each conversation once
OUTCOME = "outcome"
REFERRAL = "referral"
OPEN = ""  # the outcome of a conversation that has not closed yet


@dataclass(frozen=True)
class Daily:
    """One line of the daily table: a day, a channel, a risk and an age band."""

    day: date
    channel: str
    risk: str
    age_band: str
    conversations: int = 0
    handed_off: int = 0
    emergencies: int = 0


@dataclass
class Report:
    start: date
    end: date  # inclusive
    daily: list[Daily] = field(default_factory=list)
    conversations: int = 0
    handed_off: int = 0
    emergencies: int = 0
    still_open: int = 0
    by_day: Counter[str] = field(default_factory=Counter)
    by_channel: Counter[str] = field(default_factory=Counter)
    by_risk: Counter[str] = field(default_factory=Counter)
    by_age_band: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)  # once in each of its categories
    by_outcome: Counter[str] = field(default_factory=Counter)  # "" : not closed yet
    by_referral: Counter[str] = field(default_factory=Counter)


def _bounds(start: date, end: date, tz: tzinfo) -> tuple[datetime, datetime]:
    """The period in UTC: from the start of ``start`` to the end of ``end``, in ``tz``."""
    first = datetime.combine(start, time(0), tz).astimezone(UTC)
    after = datetime.combine(end + timedelta(days=1), time(0), tz).astimezone(UTC)
    return first, after


def _categories(conv: Conversation) -> list[str]:
    return [c for c in conv.categories.split(",") if c]


def _referrals(conv: Conversation) -> list[str]:
    return sorted({r for r in conv.referrals.split(",") if r})


async def report(s: AsyncSession, *, start: date, end: date, tz: tzinfo) -> Report:
    out = Report(start, end)
    daily: dict[tuple[date, str, str, str], Counter[str]] = {}

    def add(day: date, channel: str, risk: str, age_band: str, metric: str, n: int) -> None:
        daily.setdefault((day, channel, risk, age_band), Counter())[metric] += n

    counted = (
        await s.scalars(select(StatCount).where(col(StatCount.day) >= start, col(StatCount.day) <= end))
    ).all()
    for x in counted:
        if x.metric == OUTCOME:
            out.by_outcome[x.category] += x.count
        elif x.metric == REFERRAL:
            out.by_referral[x.category] += x.count
        elif x.category == ALL:
            add(x.day, x.channel, x.risk, x.age_band, x.metric, x.count)
        elif x.metric == "conversations":
            out.by_category[x.category] += x.count

    first, after = _bounds(start, end, tz)
    kept = (
        await s.scalars(
            select(Conversation).where(
                col(Conversation.created_at) >= first, col(Conversation.created_at) < after
            )
        )
    ).all()
    open_ids = [c.id for c in kept if c.state != State.CLOSED]
    handed = set(
        (
            await s.scalars(
                select(col(Handoff.conversation_id)).where(col(Handoff.conversation_id).in_(open_ids))
            )
        ).all()
    )
    for conv in kept:
        if conv.state == State.CLOSED:  # its counts are in stat_count; its outcome and referrals are here
            out.by_outcome[conv.outcome] += 1
            for ref in _referrals(conv):
                out.by_referral[ref] += 1
            continue
        day = conv.created_at.astimezone(tz).date()
        add(day, conv.channel, conv.risk, conv.age_band, "conversations", 1)
        if conv.id in handed:
            add(day, conv.channel, conv.risk, conv.age_band, "handed_off", 1)
        if conv.emergency:
            add(day, conv.channel, conv.risk, conv.age_band, "emergencies", 1)
        for cat in _categories(conv):
            out.by_category[cat] += 1
        out.by_outcome[OPEN] += 1
        out.still_open += 1
        for ref in _referrals(conv):
            out.by_referral[ref] += 1

    for (day, channel, risk, age_band), n in sorted(daily.items()):
        row = Daily(day, channel, risk, age_band, n["conversations"], n["handed_off"], n["emergencies"])
        out.daily.append(row)
        out.conversations += row.conversations
        out.handed_off += row.handed_off
        out.emergencies += row.emergencies
        out.by_day[day.isoformat()] += row.conversations
        out.by_channel[channel] += row.conversations
        out.by_risk[risk] += row.conversations
        out.by_age_band[age_band] += row.conversations
    return out


async def fold_purged(s: AsyncSession, *, conversation_ids: Sequence[str], tz: tzinfo) -> None:
    """Before retention deletes closed conversations: their outcome and referrals go into stat_count
    (in the purge's transaction), so the statistics still give them once the conversations are gone."""
    if not conversation_ids:
        return
    rows = (
        await s.scalars(
            select(Conversation).where(
                col(Conversation.id).in_(conversation_ids), col(Conversation.state) == State.CLOSED
            )
        )
    ).all()
    for conv in rows:
        day = conv.created_at.astimezone(tz).date()
        keys = [(OUTCOME, conv.outcome[:32])] + [(REFERRAL, ref[:32]) for ref in _referrals(conv)]
        for metric, value in keys:
            await _increment(s, day, conv, value, metric)


async def _increment(s: AsyncSession, day: date, conv: Conversation, category: str, metric: str) -> None:
    found = await s.scalar(
        select(StatCount).where(
            col(StatCount.day) == day,
            col(StatCount.channel) == conv.channel,
            col(StatCount.risk) == conv.risk,
            col(StatCount.category) == category,
            col(StatCount.age_band) == conv.age_band,
            col(StatCount.metric) == metric,
        )
    )
    if found is None:
        s.add(
            StatCount(
                day=day,
                channel=conv.channel,
                risk=conv.risk,
                category=category,
                age_band=conv.age_band,
                metric=metric,
                count=1,
            )
        )
        await s.flush()
    else:
        found.count += 1
