"""Enrichment facts: the viewer's local time from the ZIP code's timezone.

Beeswax's batch logs carry ``user_time_of_week`` (minutes since Sunday 00:00, viewer-local); its
streaming messages do not, so the pipeline derives the local hour from the impression's ZIP code
(``device.geo.zip``) and the ZIP's IANA timezone (``zipcodes`` data, ``domain.geo``). Offsets
are cached per timezone for the UTC hour they hold in (US offsets change only on whole hours),
so the per-impression cost is a dict lookup and two comparisons.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from campaignd.domain.geo import zip_info

HOUR_S = 3600
WEEK_H = 168
_EPOCH_WEEKDAY_SUNDAY_BASED = 4
"""1970-01-01 was a Thursday: hour 0 of the epoch is hour-of-week 4 × 24 (Sunday = 0)."""
_SUNDAY_SHIFT_S = _EPOCH_WEEKDAY_SUNDAY_BASED * 24 * HOUR_S


def hour_of_week(local_epoch_s: int) -> int:
    """Sunday-based hour of week (0 = Sunday 00:00–00:59) of a local wall-clock time given as
    seconds since the local epoch."""
    return (local_epoch_s // HOUR_S + _EPOCH_WEEKDAY_SUNDAY_BASED * 24) % WEEK_H


MAX_CACHED_ZIPS = 200_000
"""Per-ZIP caches start over past this many entries (the US has about 42,000 ZIP codes; the
rest would be junk from publishers, which must not grow the daemon's memory)."""


class LocalTime:
    """Viewer-local hour of week for (ZIP code, UTC second)."""

    def __init__(self) -> None:
        self._tz_of_zip: dict[str, str | None] = {}
        self._zones: dict[str, ZoneInfo] = {}
        self._span: dict[str, tuple[int, int, int]] = {}

    def timezone(self, zip_code: str) -> str | None:
        tz = self._tz_of_zip.get(zip_code, "")
        if tz == "":
            info = zip_info(zip_code)
            tz = info.timezone if info is not None and info.timezone else None
            if len(self._tz_of_zip) >= MAX_CACHED_ZIPS:  # junk ZIPs must not grow it forever
                self._tz_of_zip.clear()
            self._tz_of_zip[zip_code] = tz
        return tz

    def offset_s(self, tz: str, ts_s: int) -> int:
        span = self._span.get(tz)
        if span is not None and span[0] <= ts_s < span[1]:
            return span[2]
        zone = self._zones.get(tz)
        if zone is None:
            zone = self._zones[tz] = ZoneInfo(tz)
        start = ts_s - ts_s % HOUR_S
        off = datetime.fromtimestamp(start, UTC).astimezone(zone).utcoffset()
        offset = int(off.total_seconds()) if off is not None else 0
        self._span[tz] = (start, start + HOUR_S, offset)
        return offset

    def span(self, zip_code: str, ts_s: int) -> tuple[int, int, int | None]:
        """``(start, end, shift)`` for the UTC hour of ``ts_s`` (valid for ``start <= ts <
        end``): ``(ts + shift) // 3600 % 168`` is the viewer-local, Sunday-based hour of week
        (``shift`` is the ZIP's UTC offset plus the epoch's Thursday-to-Sunday shift); None for
        a ZIP code with no known timezone."""
        start = ts_s - ts_s % HOUR_S
        tz = self.timezone(zip_code)
        if tz is None:
            return start, start + HOUR_S, None
        # Shift so that ``(ts + offset) // 3600 % 168`` is Sunday-based directly.
        return start, start + HOUR_S, self.offset_s(tz, ts_s) + _SUNDAY_SHIFT_S

    def hour_of_week(self, zip_code: str, ts_s: int) -> int | None:
        """The viewer-local hour of week, or None for a ZIP code with no known timezone."""
        tz = self.timezone(zip_code)
        if tz is None:
            return None
        return hour_of_week(ts_s + self.offset_s(tz, ts_s))


__all__ = ["LocalTime", "hour_of_week"]
