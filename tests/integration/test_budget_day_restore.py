"""After a restart the registry's "today" is the account's whole budget day again, even on the
25-hour day that ends daylight saving time (its first hour is more than 24 h old)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from campaignd.clock import VirtualClock
from campaignd.domain.budget_day import BudgetDay
from campaignd.domain.campaign import CampaignSpec, atomize
from campaignd.domain.cells import METRIC_INDEX, N_METRICS
from campaignd.pipeline.ingest import Pipeline, restore
from campaignd.pipeline.registry import Registry
from campaignd.stores.memory import InMemoryHotStore
from campaignd.stores.sql import SqlStore
from campaignd.stores.sql.aggregates import AggregateRow

# 1 November 2026 in New York: 00:00 EDT (04:00 UTC) to 00:00 EST (05:00 UTC on 2 November)
DAY_START = datetime(2026, 11, 1, 4, tzinfo=UTC)
NOW = DAY_START + timedelta(hours=24, minutes=30)  # the 25th hour of that day


def row(spec: CampaignSpec, cell_id: str, at: datetime, spend: int) -> AggregateRow:
    counts = [0] * N_METRICS
    counts[METRIC_INDEX["impressions"]] = 1
    counts[METRIC_INDEX["spend_micros"]] = spend
    return AggregateRow(spec.id, cell_id, at, tuple(counts))


async def test_restore_rebuilds_a_25_hour_days_spend_today(sql_store: SqlStore,
                                                           seed_spec: CampaignSpec) -> None:
    cells = atomize(seed_spec)
    await sql_store.upsert_campaign(seed_spec, cells, now=NOW)
    cell = cells[0].cell_id
    rows = [row(seed_spec, cell, DAY_START - timedelta(minutes=10), 1_000),  # the day before
            row(seed_spec, cell, DAY_START + timedelta(minutes=5), 20_000),  # > 24 h ago
            row(seed_spec, cell, DAY_START + timedelta(hours=12), 300_000),
            row(seed_spec, cell, NOW - timedelta(minutes=1), 4_000_000)]
    await sql_store.commit_ingest(minutes=rows, now=NOW)

    registry = Registry(BudgetDay("America/New_York"))
    table = registry.add_campaign(seed_spec, cells)
    clock = VirtualClock(NOW)
    pipeline = Pipeline(registry, InMemoryHotStore(clock), clock=clock)
    await restore(pipeline, sql_store, now=NOW)
    spend = METRIC_INDEX["spend_micros"]
    assert int(table.matrix[spend, 0]) == 4_321_000  # lifetime: every row
    assert int(table.today[spend, 0]) == 4_320_000  # today: all 25 hours of 1 November
    assert table.day == BudgetDay("America/New_York").of(NOW)
    # the windows hold the last 24 h only
    assert int(table.windows.all()[86_400][spend, 0]) == 4_300_000


async def test_restore_keeps_the_spend_today_of_a_cell_the_spec_no_longer_has(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    cells = atomize(seed_spec)
    await sql_store.upsert_campaign(seed_spec, cells, now=NOW)
    gone = cells[1].cell_id
    rows = [row(seed_spec, gone, DAY_START - timedelta(minutes=10), 9_000),  # the day before
            row(seed_spec, gone, DAY_START + timedelta(minutes=5), 20_000),  # > 24 h ago
            row(seed_spec, gone, NOW - timedelta(minutes=2), 600_000),
            row(seed_spec, cells[0].cell_id, NOW - timedelta(minutes=1), 1_000)]
    await sql_store.commit_ingest(minutes=rows, now=NOW)
    registry = Registry(BudgetDay("America/New_York"))
    # restarted with a spec that no longer has the cell
    table = registry.add_campaign(seed_spec, [c for c in cells if c.cell_id != gone])
    clock = VirtualClock(NOW)
    await restore(Pipeline(registry, InMemoryHotStore(clock), clock=clock), sql_store, now=NOW)
    assert table.gone_today == {gone: 620_000}
    assert int(table.today[METRIC_INDEX["spend_micros"]].sum()) == 1_000
    table.roll_day(table.day + 1)  # the next budget day starts over
    assert table.gone_today == {}


async def test_restore_keeps_each_creatives_running_totals(sql_store: SqlStore,
                                                           seed_spec: CampaignSpec) -> None:
    """The creative series' totals are everything each creative ever had (creative fatigue
    reads its cumulative exposure), not only the last 24 hours a restart replays."""
    cells = atomize(seed_spec)
    await sql_store.upsert_campaign(seed_spec, cells, now=NOW)
    a, b = cells[0], next(c for c in cells if c.creative != cells[0].creative)
    rows = [row(seed_spec, a.cell_id, NOW - timedelta(days=3), 5_000),  # older than 24 h
            row(seed_spec, a.cell_id, NOW - timedelta(hours=2), 7_000),
            row(seed_spec, b.cell_id, NOW - timedelta(days=2), 11_000)]
    await sql_store.commit_ingest(minutes=rows, now=NOW)
    registry = Registry(BudgetDay("America/New_York"))
    table = registry.add_campaign(seed_spec, cells)
    clock = VirtualClock(NOW)
    await restore(Pipeline(registry, InMemoryHotStore(clock), clock=clock), sql_store, now=NOW)
    series = table.snapshot().creatives
    assert series is not None
    spend, imps = METRIC_INDEX["spend_micros"], METRIC_INDEX["impressions"]
    assert int(series.totals[series.index(a.creative), spend]) == 12_000
    assert int(series.totals[series.index(a.creative), imps]) == 2
    assert int(series.totals[series.index(b.creative), spend]) == 11_000
    # the hourly buckets hold what the restart replayed (the last 24 h)
    assert int(series.values[series.index(a.creative), :, spend].sum()) == 7_000
    assert int(series.values[series.index(b.creative), :, spend].sum()) == 0
