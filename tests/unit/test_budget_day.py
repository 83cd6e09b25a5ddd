"""The budget day: days in the DSP account's time zone, daylight saving included."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.domain.budget_day import BudgetDay, check_timezone
from campaignd.domain.campaign import CampaignSpec

NY = ZoneInfo("America/New_York")


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def test_utc_days_are_plain_epoch_days() -> None:
    d = BudgetDay("UTC")
    s = ts("2026-11-02T13:45:00+00:00")
    assert d.index(s) == s // 86_400
    assert d.span(s) == (s // 86_400 * 86_400, (s // 86_400 + 1) * 86_400, s // 86_400)
    assert d.bounds(s // 86_400) == d.span(s)[:2]


def test_a_new_york_day_starts_at_new_york_midnight_not_utc_midnight() -> None:
    d = BudgetDay("America/New_York")
    # 2 November 2026 (EST, UTC-5): the day runs 05:00Z to 05:00Z the next day
    start = ts("2026-11-02T05:00:00+00:00")
    assert d.span(start) == (start, start + 86_400, date(2026, 11, 2).toordinal()
                             - date(1970, 1, 1).toordinal())
    assert d.index(start - 1) == d.index(start) - 1  # 23:59:59 on 1 November, New York time
    assert d.index(ts("2026-11-03T04:59:59+00:00")) == d.index(start)
    # UTC midnight is the middle of the New York evening: the same budget day
    assert d.index(ts("2026-11-03T00:00:00+00:00")) == d.index(ts("2026-11-02T23:59:59+00:00"))
    assert d.start(start + 6 * 3600) == start


@pytest.mark.parametrize(("day", "hours"), [("2026-03-08", 23), ("2026-11-01", 25),
                                            ("2026-07-04", 24)])
def test_daylight_saving_days_have_23_or_25_hours(day: str, hours: int) -> None:
    d = BudgetDay("America/New_York")
    local = date.fromisoformat(day)
    start = int(datetime(local.year, local.month, local.day, tzinfo=NY).timestamp())
    n = d.index(start)
    assert d.bounds(n) == (start, start + hours * 3600)
    assert d.index(start + hours * 3600 - 1) == n
    assert d.index(start + hours * 3600) == n + 1


def test_a_half_hour_zone() -> None:
    d = BudgetDay("Asia/Kolkata")  # UTC+5:30: midnight is 18:30 UTC
    start = ts("2026-11-01T18:30:00+00:00")
    assert d.start(start + 100) == start
    assert d.index(start) == d.index(start - 1) + 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(ts("2026-01-01T00:00:00+00:00"), ts("2027-01-01T00:00:00+00:00")),
                min_size=1, max_size=40),
       st.sampled_from(["UTC", "America/New_York", "America/Los_Angeles", "Europe/London",
                        "Australia/Lord_Howe", "Asia/Kathmandu"]))
def test_array_days_equal_the_local_calendar_dates(seconds: list[int], zone: str) -> None:
    d = BudgetDay(zone)
    got = d.indices(np.array(seconds, dtype=np.int64))
    tz = ZoneInfo(zone)
    want = [datetime.fromtimestamp(s, UTC).astimezone(tz).date().toordinal()
            - date(1970, 1, 1).toordinal() for s in seconds]
    assert got.tolist() == want
    for s, n in zip(seconds, want, strict=True):
        start, end = d.bounds(n)
        assert start <= s < end
        assert d.index(start) == n and d.index(end) == n + 1
        assert timedelta(hours=22) <= timedelta(seconds=end - start) <= timedelta(hours=26)


@pytest.mark.parametrize("bad", ["", "Mars/Olympus", "EST5EDT/x", "../etc/passwd"])
def test_unknown_time_zones_are_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(ValueError, match="IANA time zone"):
        check_timezone(bad)
    with pytest.raises(ValueError):
        BudgetDay(bad)


def test_a_cell_tables_today_follows_the_account_day(seed_spec: CampaignSpec) -> None:
    from campaignd.domain.campaign import atomize
    from campaignd.domain.cells import METRIC_INDEX, N_METRICS, CellTable

    spend = METRIC_INDEX["spend_micros"]
    t = CellTable(seed_spec.id, atomize(seed_spec), budget_day=BudgetDay("America/New_York"))

    def add(at: str, micros: int) -> None:  # counted as it happens
        row = np.zeros((1, N_METRICS), dtype=np.int64)
        row[0, spend] = micros
        t.add_days(np.array([0]), np.array([ts(at)]), row, now_s=ts(at))

    add("2026-11-02T23:00:00+00:00", 5)   # 18:00 in New York, 2 November
    add("2026-11-03T01:00:00+00:00", 7)   # past UTC midnight: still 2 November in New York
    assert int(t.today[spend, 0]) == 12
    assert t.day == BudgetDay("America/New_York").index(ts("2026-11-02T23:00:00+00:00"))
    # a snapshot before New York midnight keeps the day; one after it starts a new one
    assert int(t.snapshot(at_s=ts("2026-11-03T04:59:00+00:00")).today["spend_micros"][0]) == 12
    snap = t.snapshot(at_s=ts("2026-11-03T05:00:00+00:00"))
    assert int(snap.today["spend_micros"][0]) == 0
    add("2026-11-03T04:00:00+00:00", 100)  # late: yesterday's (New York) money, not today's
    add("2026-11-03T06:00:00+00:00", 3)
    assert int(t.today[spend, 0]) == 3
    # a UTC table would have started over at 00:00 UTC
    u = CellTable(seed_spec.id, atomize(seed_spec))
    for at, micros in (("2026-11-02T23:00:00+00:00", 5), ("2026-11-03T01:00:00+00:00", 7)):
        row = np.zeros((1, N_METRICS), dtype=np.int64)
        row[0, spend] = micros
        u.add_days(np.array([0]), np.array([ts(at)]), row, now_s=ts(at))
    assert int(u.today[spend, 0]) == 7


def test_an_event_stamped_in_tomorrow_does_not_start_it_early(seed_spec: CampaignSpec) -> None:
    """The feed takes events stamped up to an hour ahead (a DSP clock ahead of ours). One
    stamped after midnight, read at 23:10, used to start the next day at once: today's spend
    went to 0 for the last hour, and the caps let raises spend what was already spent."""
    from campaignd.domain.campaign import atomize
    from campaignd.domain.cells import METRIC_INDEX, N_METRICS, CellTable

    spend = METRIC_INDEX["spend_micros"]
    day = BudgetDay("America/New_York")
    t = CellTable(seed_spec.id, atomize(seed_spec), budget_day=day)

    def add(cell: int, stamped: str, micros: int, *, read: str) -> None:
        row = np.zeros((1, N_METRICS), dtype=np.int64)
        row[0, spend] = micros
        t.add_days(np.array([cell]), np.array([ts(stamped)]), row, now_s=ts(read))

    # New York: 22:00, 23:10 (an event stamped 00:05 tomorrow), 23:20
    add(0, "2026-11-03T03:00:00+00:00", 55_000_000, read="2026-11-03T03:00:05+00:00")
    add(1, "2026-11-03T03:00:00+00:00", 10_000_000, read="2026-11-03T03:00:05+00:00")
    add(1, "2026-11-03T05:05:00+00:00", 1, read="2026-11-03T04:10:00+00:00")
    add(0, "2026-11-03T04:20:00+00:00", 3_000_000, read="2026-11-03T04:20:05+00:00")
    t.add_gone_days(["removed"], np.array([ts("2026-11-03T05:06:00+00:00")]),
                    np.array([2]), now_s=ts("2026-11-03T04:21:00+00:00"))
    assert t.day == day.index(ts("2026-11-03T04:20:00+00:00"))
    assert t.today[spend, :2].tolist() == [58_000_000, 10_000_000]
    assert t.gone_today == {}
    # what the daemon reads for the caps at 23:30 (a snapshot rolls to the clock's day)
    snap = t.snapshot(at_s=ts("2026-11-03T04:30:00+00:00"))
    assert snap.today["spend_micros"][:2].tolist() == [58_000_000, 10_000_000]
    # at midnight the early rows are tomorrow's first
    snap = t.snapshot(at_s=ts("2026-11-03T05:00:00+00:00"))
    assert snap.today["spend_micros"][:2].tolist() == [0, 1]
    assert t.gone_today == {"removed": 2}
    # a clock that jumps two days drops what it held for the day between
    add(2, "2026-11-04T05:30:00+00:00", 9, read="2026-11-04T04:50:00+00:00")
    t.roll_day(t.day + 2)
    assert int(t.today[spend].sum()) == 0 and not t._later


def test_the_daemon_counts_days_in_the_configured_account_time_zone(tmp_path: Path) -> None:
    from campaignd.daemon import Daemon
    from campaignd.settings import load_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text('[dsp]\naccount_timezone = "America/Chicago"\n')
    d = Daemon(load_settings(cfg, environ={}))
    assert d.registry.budget_day == BudgetDay("America/Chicago")
    assert d.reallocation.budget_day == BudgetDay("America/Chicago")
    assert load_settings(None, environ={}).dsp.account_timezone == "America/New_York"


def test_a_flight_ending_at_midnight_ends_the_day_before() -> None:
    """A flight's end is exclusive: one ending at 00:00 has its last day before it (counting
    that midnight's day too paced the last day at half of what was left)."""
    from campaignd.domain.budget_day import flight_days_left

    day = BudgetDay("UTC")
    start = datetime(2027, 2, 1, tzinfo=UTC)
    at = datetime(2027, 2, 28, 9, tzinfo=UTC)
    assert flight_days_left(day, at, start, datetime(2027, 3, 1, tzinfo=UTC)) == 1
    assert flight_days_left(day, at, start, datetime(2027, 2, 28, 23, 59, 59, tzinfo=UTC)) == 1
    assert flight_days_left(day, at, start, datetime(2027, 3, 1, 0, 0, 1, tzinfo=UTC)) == 2
    assert flight_days_left(day, at, start, datetime(2027, 2, 28, 9, tzinfo=UTC)) == 0
    # before the flight: all of its days
    assert flight_days_left(day, datetime(2027, 1, 1, tzinfo=UTC), start,
                            datetime(2027, 3, 1, tzinfo=UTC)) == 28

