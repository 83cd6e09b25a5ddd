"""The budget day: the calendar day in the DSP account's time zone.

A DSP resets daily budgets, pacing and "today's spend" at midnight in the *account's* time zone,
not at UTC midnight (Beeswax: "All API dates are in the account timezone", America/New_York
unless the account says otherwise). Everything in campaignd that speaks of "today" -- a cell's
spend today, the reallocation's budget for the rest of the day, the sandbox's daily caps and
pacing -- counts days with a ``BudgetDay``.

Days are numbered like UTC days since the epoch, but by the *local* date: day ``n`` is the local
date ``1970-01-01 + n days``. A day is 24 hours long except on daylight-saving changes (23 or
25 hours), so its bounds come from the time zone, never from ``n * 86400``. Pure: times are
epoch seconds (UTC) or aware datetimes.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

DAY_S = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone this host knows; ValueError saying the fix if not."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("must be an IANA time zone name such as America/New_York or UTC")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known IANA time zone: use a name such as "
                         "America/New_York, America/Los_Angeles or UTC") from None
    return name


class BudgetDay:
    """Day numbers and bounds in one time zone (``"UTC"`` makes days plain UTC days)."""

    def __init__(self, timezone: str = "UTC") -> None:
        self.timezone = check_timezone(timezone)
        self._zone = ZoneInfo(timezone)
        self._utc = timezone in ("UTC", "Etc/UTC", "Etc/GMT", "GMT")
        self._span: tuple[int, int, int] = (0, 0, 0)  # start, end (epoch s), day number

    def __repr__(self) -> str:
        return f"BudgetDay({self.timezone!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BudgetDay) and other.timezone == self.timezone

    def __hash__(self) -> int:
        return hash(self.timezone)

    # --- scalars ---------------------------------------------------------------------------

    def span(self, epoch_s: float) -> tuple[int, int, int]:
        """``(start, end, day)`` of the day holding ``epoch_s``: start and end in epoch
        seconds (end exclusive), ``day`` its number."""
        s = int(epoch_s // 1)
        cached = self._span  # one read: another thread may replace it meanwhile
        if cached[0] <= s < cached[1]:
            return cached
        if self._utc:
            day = s // DAY_S
            start, end = day * DAY_S, (day + 1) * DAY_S
        else:
            local = datetime.fromtimestamp(s, UTC).astimezone(self._zone).date()
            day = local.toordinal() - _EPOCH_ORDINAL
            start = self._midnight(local)
            end = self._midnight(local + timedelta(days=1))
        span = (start, end, day)
        self._span = span  # replaced whole, never updated in place
        return span

    def index(self, epoch_s: float) -> int:
        """The number of the day holding ``epoch_s``."""
        return self.span(epoch_s)[2]

    def of(self, when: datetime) -> int:
        """The number of the day holding ``when`` (an aware datetime)."""
        return self.index(when.timestamp())

    def start(self, epoch_s: float) -> int:
        """Epoch seconds of the midnight that began the day holding ``epoch_s``."""
        return self.span(epoch_s)[0]

    def bounds(self, day: int) -> tuple[int, int]:
        """``(start, end)`` epoch seconds of day number ``day``."""
        if self._utc:
            return day * DAY_S, (day + 1) * DAY_S
        local = date.fromordinal(day + _EPOCH_ORDINAL)
        return self._midnight(local), self._midnight(local + timedelta(days=1))

    def _midnight(self, local: date) -> int:
        # Midnight may not exist on a DST change (a few zones change at 00:00): fold=0 then
        # names the first instant of the day after the gap, which is what starts the day.
        wall = datetime(local.year, local.month, local.day, tzinfo=self._zone)
        ts = int(wall.timestamp())
        if datetime.fromtimestamp(ts, UTC).astimezone(self._zone).date() != local:
            ts = int(datetime(local.year, local.month, local.day, 1, tzinfo=self._zone).timestamp())
        return ts

    # --- arrays ----------------------------------------------------------------------------

    def indices(self, seconds: np.ndarray) -> np.ndarray:
        """Day numbers of an array of epoch seconds (int64)."""
        s = np.asarray(seconds, dtype=np.int64)
        if self._utc or s.size == 0:
            return s // DAY_S
        lo, hi = int(s.min()), int(s.max())
        start, end, day = self.span(lo)
        if hi < end:  # the whole batch in one day: the usual case
            return np.full(s.shape, day, dtype=np.int64)
        # Several days: the bounds of each, from the first to the last.
        starts = [start]
        days = [day]
        while end <= hi:
            start, end, day = self.span(end)
            starts.append(start)
            days.append(day)
        pos = np.searchsorted(np.asarray(starts, dtype=np.int64), s, side="right") - 1
        out: np.ndarray = np.asarray(days, dtype=np.int64)[pos]
        return out



def flight_days_left(day: BudgetDay, now: datetime, start: datetime, end: datetime) -> int:
    """Budget days of the flight from ``now``'s (or the flight's first, before it starts) to
    its last, both included; 0 once it has ended."""
    if now >= end:
        return 0
    # the flight's end is exclusive (an end at midnight is the day before's last moment)
    last = day.index(math.ceil(end.timestamp()) - 1)
    return last - day.of(max(now, start)) + 1


def paced_budget_today(*, lifetime_micros: int, daily_micros: int, spent_total_micros: int,
                       spent_today_micros: int, days_left: int) -> int:
    """What a campaign may spend today (micros): the lifetime budget left when the day began,
    spread evenly over the flight's budget days left (``days_left``, today's included) --
    paced over the flight, so that it lasts to the flight's end --, never less than today's
    spend, but never more than the daily budget or the lifetime budget left (which win over
    today's spend: a day that overspent them gets no more). (A day that
    underspends leaves its money to the days after it.)"""
    if days_left <= 0:  # the flight is over
        return max(0, spent_today_micros)
    before_today = max(0, lifetime_micros - (spent_total_micros - spent_today_micros))
    paced = before_today // days_left
    return max(0, min(daily_micros, max(paced, spent_today_micros), before_today))

__all__ = ["DAY_S", "BudgetDay", "check_timezone", "flight_days_left", "paced_budget_today"]
