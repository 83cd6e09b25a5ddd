"""The sandbox market: budget caps, delivery rules, targeting, events vs totals, determinism."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignd.domain.campaign import atomize
from campaignd.dsp.sandbox.market import Market, auction_curve
from campaignd.dsp.sandbox.model import LineItemConfig, StepTotals
from campaignd.dsp.sandbox.scenarios import Pacing, Scenario, load_scenario
from campaignd.sim.driver import line_item_configs

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 11, 2, tzinfo=UTC)


@lru_cache(maxsize=1)
def seed_scenario() -> Scenario:
    return load_scenario(ROOT / "config" / "scenarios" / "seed.toml")


@lru_cache(maxsize=1)
def seed_configs() -> tuple[LineItemConfig, ...]:
    sc = seed_scenario()
    return tuple(line_item_configs(sc.campaign, atomize(sc.campaign), 0))


def config(i: int, *, daily: int | None = 100_000_000, lifetime: int = 10**12,
           **changes: object) -> LineItemConfig:
    base = seed_configs()[i]
    cfg = LineItemConfig(
        line_item_id=base.line_item_id, campaign_id=1, active=True,
        lifetime_budget_micros=lifetime, daily_budget_micros=daily,
        cpm_bid_micros=base.cpm_bid_micros, creatives=dict(base.creatives), zips=base.zips,
        segments=base.segments, hours_of_week=base.hours_of_week, app_bundles=base.app_bundles)
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def primetime_cells(n: int) -> list[int]:
    """Indices of seed cells buying primetime with the premium bid (they deliver a lot)."""
    sc = seed_scenario()
    cells = atomize(sc.campaign)
    return [c.index for c in cells
            if c.daypart == "primetime" and c.bid_strategy == "cpm_premium"][:n]


def run(m: Market, hours: float, *, emit: bool = False, chunk_minutes: int = 30
        ) -> tuple[StepTotals, list]:
    """Advance in chunks; sum the totals; collect the events."""
    end = m.now + timedelta(hours=hours)
    acc: dict[str, np.ndarray] = {}
    events: list = []
    ids = None
    while m.now < end:
        tot, ev = m.advance(min(end, m.now + timedelta(minutes=chunk_minutes)), emit_events=emit)
        ids = tot.line_item_ids
        for k in ("impressions", "spend_micros", "measurable", "viewable", "starts", "completes",
                  "clicks", "conversions", "conversion_value_micros"):
            acc[k] = acc.get(k, 0) + getattr(tot, k)
        events.extend(ev)
    assert ids is not None
    return StepTotals(ids, **acc), events


def test_budgets_bind_and_supply_exceeds_them() -> None:
    m = Market(seed_scenario(), seed=1, start=START)
    for i in primetime_cells(4):
        m.configure(config(i, daily=50_000_000))
    tot, _ = run(m, 24, chunk_minutes=60)
    assert tot.impressions.sum() > 0
    # every line item spends close to its daily budget: supply exceeds budget
    assert (tot.spend_micros <= 50_000_000).all()
    assert (tot.spend_micros >= 40_000_000).all()


def test_a_campaigns_daily_budget_caps_its_line_items_together() -> None:
    m = Market(seed_scenario(), seed=1, start=START)
    cells = primetime_cells(6)
    # campaign 1: four line items of $50 a day under a $120 campaign daily budget; campaign 2:
    # two line items and no campaign-level daily budget
    for i in cells[:4]:
        m.configure(config(i, daily=50_000_000, campaign_daily_budget_micros=120_000_000))
    for i in cells[4:]:
        m.configure(config(i, daily=50_000_000, campaign_id=2))
    tot, _ = run(m, 24, chunk_minutes=60)
    first = np.isin(tot.line_item_ids, [c + 1 for c in cells[:4]])
    assert tot.spend_micros[first].sum() <= 120_000_000
    assert tot.spend_micros[first].sum() >= 100_000_000  # it binds: supply exceeds it
    assert (tot.spend_micros[~first] >= 40_000_000).all()  # the other campaign is not capped
    # the next day: one line item removed after spending; what it spent still counts
    day2, _ = run(m, 6, chunk_minutes=60)
    m.remove(cells[0] + 1)
    rest, _ = run(m, 18, chunk_minutes=60)
    both = day2.spend_micros[first].sum() + rest.spend_micros[first].sum()
    assert both <= 120_000_000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    budgets=st.lists(st.tuples(st.integers(0, 80_000_000), st.integers(0, 150_000_000)),
                     min_size=1, max_size=5),
    chunks=st.lists(st.integers(1, 400), min_size=1, max_size=12),
    seed=st.integers(0, 5),
)
def test_spend_never_exceeds_daily_or_lifetime(budgets: list[tuple[int, int]],
                                               chunks: list[int], seed: int) -> None:
    m = Market(seed_scenario(), seed=seed, start=START + timedelta(hours=20))
    cells = primetime_cells(len(budgets))
    for i, (daily, lifetime) in zip(cells, budgets, strict=False):
        m.configure(config(i, daily=daily, lifetime=lifetime))
    per_day: dict[int, np.ndarray] = {}
    for minutes in chunks:
        # split at UTC midnight so that each advance belongs to one day
        target = m.now + timedelta(minutes=minutes)
        midnight = datetime(m.now.year, m.now.month, m.now.day, tzinfo=UTC) + timedelta(days=1)
        for stop in ([midnight, target] if target > midnight else [target]):
            day = m.now.toordinal()
            tot, _ = m.advance(stop, emit_events=False)
            assert (tot.spend_micros >= 0).all()
            assert (tot.impressions >= 0).all()
            per_day[day] = per_day.get(day, 0) + tot.spend_micros
    ids = sorted(c + 1 for c in cells[: len(budgets)])
    by_id = dict(zip((c + 1 for c in cells), budgets, strict=False))
    daily_caps = np.array([by_id[i][0] for i in ids])
    life_caps = np.array([by_id[i][1] for i in ids])
    for spent in per_day.values():
        assert (spent <= daily_caps).all()
    delivered = m.delivered()
    total = np.array([delivered[i]["spend_micros"] for i in ids])
    assert (total <= life_caps).all()
    assert (total <= daily_caps * len(per_day)).all()


@pytest.mark.parametrize("mode", ["time", "supply"])
def test_daily_budget_is_paced_over_the_day(mode: str) -> None:
    sc = replace(seed_scenario(), pacing=Pacing(mode, 0.05))
    m = Market(sc, seed=2, start=START)
    cells = atomize(sc.campaign)
    i = next(c.index for c in cells if c.daypart == "morning" and c.bid_strategy == "cpm_premium"
             and c.audience == "suburban_families")
    m.configure(config(i, daily=20_000_000))
    # ET/CT morning (06-11 local) is 11-17 UTC: at 14:00 UTC the line item has half its day's
    # inventory behind it; time pacing allows 14/24 + 5 %, supply pacing about half + 5 %
    tot, _ = run(m, 14, chunk_minutes=60)
    spent = int(tot.spend_micros.sum())
    assert 0 < spent <= 20_000_000 * (14 / 24 + 0.05)
    tot2, _ = run(m, 10)
    assert spent + tot2.spend_micros.sum() <= 20_000_000


@pytest.mark.parametrize("change", [
    {"active": False},
    {"creatives": {}},
    {"start": START + timedelta(days=3)},
    {"end": START - timedelta(days=1)},
    {"daily_budget_micros": 0},
    {"lifetime_budget_micros": 0},
    {"cpm_bid_micros": 1_000_000},  # below every reserve price
])
def test_line_items_that_cannot_deliver_deliver_nothing(change: dict) -> None:
    m = Market(seed_scenario(), seed=3, start=START)
    i = primetime_cells(1)[0]
    m.configure(config(i, **change))
    tot, ev = run(m, 24, emit=True, chunk_minutes=120)
    assert tot.impressions.sum() == 0
    assert tot.spend_micros.sum() == 0
    assert ev == []


def test_removed_line_item_stops() -> None:
    m = Market(seed_scenario(), seed=3, start=START)
    i = primetime_cells(1)[0]
    m.configure(config(i))
    m.remove(i + 1)
    tot, _ = run(m, 24, chunk_minutes=120)
    assert tot.impressions.sum() == 0


def test_targeting_restricts_delivery() -> None:
    m = Market(seed_scenario(), seed=4, start=START)
    i = primetime_cells(1)[0]
    narrow = frozenset(sorted(seed_configs()[i].zips or ())[:3])
    cfg = config(i, zips=narrow, app_bundles=frozenset({"com.hulu.plus"}))
    m.configure(cfg)
    _, ev = run(m, 24, emit=True, chunk_minutes=60)
    imps = [e for e in ev if e.kind == "impression"]
    assert imps
    assert {e.zip for e in imps} <= narrow
    assert {e.app_bundle for e in imps} == {"com.hulu.plus"}
    hours = cfg.hours_of_week or frozenset()
    assert all(e.user_time_of_week // 60 in hours for e in imps)
    assert all(0 <= e.user_time_of_week < 7 * 24 * 60 for e in imps)


def test_event_totals_equal_step_totals() -> None:
    m = Market(seed_scenario(), seed=5, start=START + timedelta(hours=22))
    for i in primetime_cells(3):
        m.configure(config(i, daily=30_000_000))
    for _ in range(6):
        tot, ev = m.advance(m.now + timedelta(minutes=40))
        by_li = {lid: i for i, lid in enumerate(tot.line_item_ids)}
        counts = np.zeros((6, len(by_li)), dtype=np.int64)
        for e in ev:
            j = by_li[e.line_item_id]
            if e.kind == "impression":
                counts[0, j] += 1
            elif e.kind == "click":
                counts[1, j] += 1
            elif e.kind == "conversion":
                counts[2, j] += 1
            elif e.type == "START":
                counts[3, j] += 1
            elif e.type == "COMPLETE":
                counts[4, j] += 1
            elif e.type == "VIEWABILITY":
                counts[5, j] += 1
        assert (counts[0] == tot.impressions).all()
        assert (counts[1] == tot.clicks).all()
        assert (counts[2] == tot.conversions).all()
        assert (counts[3] == tot.starts).all()
        assert (counts[4] == tot.completes).all()
        assert (counts[5] == tot.viewable).all()
        spend = {}
        for e in ev:
            if e.kind == "impression":
                spend[e.line_item_id] = spend.get(e.line_item_id, 0) + e.win_price_micros
        assert [spend.get(int(lid), 0) for lid in tot.line_item_ids] == list(tot.spend_micros)


def test_auction_ids_are_beeswax_shaped_and_unique() -> None:
    m = Market(seed_scenario(), seed=6, start=START + timedelta(hours=23))
    m.configure(config(primetime_cells(1)[0]))
    _, ev = m.advance(m.now + timedelta(minutes=30))
    ids = [e.auction_id for e in ev if e.kind == "impression"]
    assert ids and len(set(ids)) == len(ids)
    for aid, e in zip(ids, [e for e in ev if e.kind == "impression"], strict=True):
        ts, host, tid, buzz = aid.split(".")
        assert int(ts) == e.ts_usecs and host.isdigit() and tid.isdigit() and buzz


def _fingerprint(seed: int, emit: bool) -> tuple:
    m = Market(seed_scenario(), seed=seed, start=START + timedelta(hours=20))
    for i in primetime_cells(3):
        m.configure(config(i, daily=40_000_000))
    tot, ev = run(m, 8, emit=emit, chunk_minutes=45)
    return (tuple(tot.impressions), tuple(tot.spend_micros), tuple(tot.conversions),
            tuple(tot.clicks), tuple(tot.completes)), ev


def test_deterministic_given_the_seed() -> None:
    a, ev_a = _fingerprint(11, True)
    b, ev_b = _fingerprint(11, True)
    assert a == b
    assert ev_a == ev_b
    c, _ = _fingerprint(11, False)
    assert a == c  # asking for events does not change what is delivered
    d, _ = _fingerprint(12, False)
    assert a != d


def test_conversions_arrive_after_their_impression() -> None:
    m = Market(seed_scenario(), seed=7, start=START + timedelta(hours=22))
    for i in primetime_cells(4):
        m.configure(config(i, daily=60_000_000))
    _, ev = run(m, 6, emit=True, chunk_minutes=20)
    imp_ts = {e.auction_id: e.ts_usecs for e in ev if e.kind == "impression"}
    convs = [e for e in ev if e.kind == "conversion"]
    assert convs
    assert m.pending_conversions() > 0  # some are still on their way
    lags = [c.ts_usecs - imp_ts[c.auction_id] for c in convs if c.auction_id in imp_ts]
    assert lags and min(lags) >= 0
    assert np.mean(lags) > 10 * 60 * 1_000_000  # exponential delay, mean 3 h, truncated by 6 h
    assert all(c.value_micros > 0 for c in convs)
    journeys = m.journeys()
    credited = [journeys[c.conversion_id] for c in convs if c.conversion_id in journeys]
    assert credited
    for touches in credited:
        assert abs(sum(w for _, w in touches) - 1.0) < 1e-9


def test_auction_curve_is_monotone_and_second_price() -> None:
    bids = np.linspace(5e6, 60e6, 50)
    win, price = auction_curve(bids, np.full(50, 24e6), 4e6, 0.5)
    assert (np.diff(win) >= 0).all()
    assert (price <= bids + 1e-6).all()
    assert (win[price > 0] > 0).all()
    assert (np.diff(price[win > 0]) >= -1e-6).all()


def test_truth_matches_delivery() -> None:
    """The ground truth the oracle reads agrees with what the market delivers."""
    m = Market(seed_scenario(), seed=8, start=START)
    for i in primetime_cells(4):
        m.configure(config(i, daily=None))
    fc = m.forecast(m.now, m.now + timedelta(days=1))
    tot, _ = run(m, 24, chunk_minutes=60)
    assert tot.impressions.sum() == pytest.approx(fc.impressions.sum(), rel=0.05)
    rates = m.true_rates(int(tot.line_item_ids[0]))
    assert 0.0005 < rates["conversion"] < 0.01
    assert 0.8 < rates["completion"] < 0.99
    assert rates["viewability"] > 0.85


def test_creative_rotation_and_unknown_inventory() -> None:
    m = Market(seed_scenario(), seed=9, start=START + timedelta(hours=23))
    i = primetime_cells(1)[0]
    m.configure(config(i, creatives={"hero_30s": 3, "brand_new": 1},
                       app_bundles=frozenset({"com.hulu.plus", "com.unknown.app"})))
    _, ev = m.advance(m.now + timedelta(hours=3))
    imps = [e for e in ev if e.kind == "impression"]
    by_cre = {k: sum(1 for e in imps if e.creative_key == k) for k in ("hero_30s", "brand_new")}
    assert by_cre["hero_30s"] > 2 * by_cre["brand_new"] > 0
    assert {e.app_bundle for e in imps} == {"com.hulu.plus", "com.unknown.app"}
    # a budget-only change keeps the targeting tables
    m.configure(config(i, daily=1, creatives={"hero_30s": 3, "brand_new": 1},
                       app_bundles=frozenset({"com.hulu.plus", "com.unknown.app"})))
    assert not m._dirty


def test_spent_today_resets_at_utc_midnight() -> None:
    m = Market(seed_scenario(), seed=10, start=START + timedelta(hours=22))
    m.configure(config(primetime_cells(1)[0], daily=30_000_000))
    m.advance(START + timedelta(hours=23, minutes=58), emit_events=False)
    assert m.spent_today_micros().sum() > 0
    m.advance(START + timedelta(days=1), emit_events=False)
    assert m.spent_today_micros().sum() == 0  # a new day: nothing spent yet
    m.advance(START + timedelta(days=1, hours=1), emit_events=False)
    assert 0 < m.spent_today_micros().sum() <= 30_000_000


def _market_for(name: str) -> tuple[Market, list[LineItemConfig]]:
    sc = load_scenario(ROOT / "config" / "scenarios" / f"{name}.toml")
    configs = line_item_configs(sc.campaign, atomize(sc.campaign), 10_000_000)
    return Market(sc, seed=1), configs


def test_zip_clusters_reward_narrowing_the_zip_list() -> None:
    m, configs = _market_for("discovery")
    sc = m.scenario
    cells = atomize(sc.campaign)
    i = next(c.index for c in cells if c.audience == "affluent_cord_cutters"
             and c.daypart == "primetime")
    full = configs[i]
    bay = frozenset(z for z in full.zips or () if z.startswith("94"))
    narrow = LineItemConfig(**{**{k: getattr(full, k) for k in full.__slots__},
                               "line_item_id": 99_999, "zips": bay})
    m.configure(full)
    m.configure(narrow)
    at = START + timedelta(days=1, hours=3)
    assert (m.true_rates(99_999, at)["conversion"]
            > 1.4 * m.true_rates(full.line_item_id, at)["conversion"])


def test_drift_changes_a_level_mid_flight() -> None:
    m, configs = _market_for("drift")
    cells = atomize(m.scenario.campaign)
    i = next(c.index for c in cells if c.platform == "hulu" and c.daypart == "primetime")
    m.configure(configs[i])
    before = m.true_rates(configs[i].line_item_id, START + timedelta(days=2, hours=2))
    after = m.true_rates(configs[i].line_item_id, START + timedelta(days=3, hours=2))
    assert after["conversion"] < 0.5 * before["conversion"]


def test_a_new_york_account_starts_its_budget_day_at_new_york_midnight() -> None:
    # 2 November 2026 is EST (UTC-5): the account's day turns at 05:00 UTC, not at 00:00
    m = Market(seed_scenario(), seed=10, start=START + timedelta(hours=22),
               account_timezone="America/New_York")
    m.configure(config(primetime_cells(1)[0], daily=30_000_000))
    m.advance(START + timedelta(days=1), emit_events=False)
    by_utc_midnight = int(m.spent_today_micros().sum())
    m.advance(START + timedelta(days=1, minutes=30), emit_events=False)
    before = int(m.spent_today_micros().sum())
    # UTC midnight passed: still the same New York day, so today keeps what it had
    assert before > by_utc_midnight > 0
    m.advance(START + timedelta(days=1, hours=4, minutes=59), emit_events=False)
    assert m.spent_today_micros().sum() >= before
    m.advance(START + timedelta(days=1, hours=5), emit_events=False)
    assert m.spent_today_micros().sum() == 0  # New York midnight: nothing spent yet
    m.advance(START + timedelta(days=1, hours=6), emit_events=False)
    assert 0 <= m.spent_today_micros().sum() <= 30_000_000


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.integers(7, 300), min_size=3, max_size=12), seed=st.integers(0, 5),
       zone=st.sampled_from(["America/New_York", "America/Los_Angeles", "Asia/Kolkata"]))
def test_daily_caps_hold_per_account_day(chunks: list[int], seed: int, zone: str) -> None:
    from campaignd.domain.budget_day import BudgetDay

    day = BudgetDay(zone)
    m = Market(seed_scenario(), seed=seed, start=START + timedelta(hours=20),
               account_timezone=zone)
    cells = primetime_cells(3)
    for i in cells:
        m.configure(config(i, daily=40_000_000))
    per_day: dict[int, np.ndarray] = {}
    for minutes in chunks:
        target = m.now + timedelta(minutes=minutes)
        midnight = datetime.fromtimestamp(day.span(m.now.timestamp())[1], UTC)
        for stop in ([midnight, target] if target > midnight else [target]):
            n = day.of(m.now)
            tot, _ = m.advance(stop, emit_events=False)
            per_day[n] = per_day.get(n, 0) + tot.spend_micros
    for spent in per_day.values():
        assert (spent <= 40_000_000).all()
    # spent today is what was spent since the account's midnight
    assert m.spent_today_micros().sum() == (
        per_day[day.of(m.now)].sum() if day.start(m.now.timestamp()) < m.now.timestamp()
        else 0)


def test_a_coarse_step_stops_at_a_half_hour_zones_midnight() -> None:
    # Asia/Kolkata's midnight is 18:30 UTC: off an hourly step grid, so the market must cut
    # its step there, or the spend of 18:00-19:00 would all land on one day
    from campaignd.domain.budget_day import BudgetDay

    zone = "Asia/Kolkata"
    day = BudgetDay(zone)
    m = Market(seed_scenario(), seed=4, start=START + timedelta(hours=12), step_seconds=3600,
               account_timezone=zone)
    for i in primetime_cells(2):  # bidding around the clock
        m.configure(config(i, daily=6_000_000, hours_of_week=frozenset(range(168))))
    midnight = datetime(2026, 11, 2, 18, 30, tzinfo=UTC)
    # one advance across midnight, on an hourly grid: 18:00-19:00 UTC is split at 18:30
    first, _ = m.advance(datetime(2026, 11, 2, 19, tzinfo=UTC), emit_events=False)
    assert day.of(m.now) == day.of(midnight)
    # what was spent since 18:30 UTC is today's; what was spent before is yesterday's
    assert 0 < m.spent_today_micros().sum() < first.spend_micros.sum()
    later, _ = m.advance(midnight + timedelta(hours=6), emit_events=False)
    assert (m.spent_today_micros() <= 6_000_000).all()
    assert (first.spend_micros + later.spend_micros <= 2 * 6_000_000).all()  # two days
