"""Opening hours: ``mon-fri 10:00-22:00; sat 14:00-20:00`` in one time zone.

A range may end at 24:00, and may cross midnight (``22:00-06:00`` is open until six the next morning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PART = re.compile(r"^([a-z]{3})(?:-([a-z]{3}))?\s+(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


class HoursError(ValueError):
    pass


@dataclass(frozen=True)
class Window:
    day: int  # Monday = 0
    start: int  # minutes from midnight
    end: int  # minutes from midnight of ``day``; may exceed 1440 when the range crosses midnight


@dataclass(frozen=True)
class Hours:
    spec: str
    tz: ZoneInfo
    windows: tuple[Window, ...]
    parts: tuple[tuple[int, int, int, int], ...]  # as written: first day, last day, start, end (minutes)

    @classmethod
    def parse(cls, spec: str, tz: str = "Asia/Tokyo") -> Hours:
        windows: list[Window] = []
        parts: list[tuple[int, int, int, int]] = []
        for raw in spec.split(";"):
            part = " ".join(raw.strip().lower().split())
            if not part:
                continue
            m = _PART.match(part)
            if not m:
                raise HoursError(f"cannot read {raw.strip()!r}: expected e.g. 'mon-fri 10:00-22:00'")
            first, last = m.group(1), m.group(2) or m.group(1)
            if first not in DAYS or last not in DAYS:
                raise HoursError(f"unknown day in {raw.strip()!r}: use {', '.join(DAYS)}")
            h1, m1, h2, m2 = (int(m.group(i)) for i in range(3, 7))
            if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
                raise HoursError(f"impossible time in {raw.strip()!r}")
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if end <= start:
                end += 24 * 60
            d, stop = DAYS.index(first), DAYS.index(last)
            parts.append((d, stop, h1 * 60 + m1, h2 * 60 + m2))
            while True:
                windows.append(Window(d, start, end))
                if d == stop:
                    break
                d = (d + 1) % 7
        if not windows:
            raise HoursError("no opening hours given")
        return cls(spec, ZoneInfo(tz), tuple(windows), tuple(parts))

    def _intervals(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """Opening intervals (local, aware) from the day before ``around`` to a week after."""
        local = around.astimezone(self.tz)
        base = local.replace(hour=0, minute=0, second=0, microsecond=0)
        out = []
        for offset in range(-1, 8):
            day = base + timedelta(days=offset)
            for w in self.windows:
                if w.day == day.weekday():
                    # Wall-clock arithmetic, then re-attach the zone (Japan has no DST).
                    start = (day + timedelta(minutes=w.start)).replace(tzinfo=self.tz)
                    out.append((start, (day + timedelta(minutes=w.end)).replace(tzinfo=self.tz)))
        return sorted(out)

    def is_open(self, now: datetime) -> bool:
        return any(s <= now < e for s, e in self._intervals(now))

    def next_open(self, now: datetime) -> datetime | None:
        """When it opens next (``now`` itself when open); None if it never opens."""
        for s, e in self._intervals(now):
            if s <= now < e:
                return now
            if s > now:
                return s
        return None

    def always(self) -> bool:
        return all(any(w.day == d and w.start == 0 and w.end >= 1440 for w in self.windows) for d in range(7))
