"""Warm and cold stores on SQLite and PostgreSQL: one transaction per commit (minutes, days,
totals, dead letters, cursor), 7-day retention of minute rows, Parquet round-trip."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from campaignd.domain.campaign import CampaignSpec, atomize
from campaignd.errors import StorageError
from campaignd.pipeline.rollup import (
    EXPORT_CHECKPOINT,
    apply_retention,
    day_path,
    export_changed_days,
    export_days,
    read_days,
)
from campaignd.stores.sql import SqlStore
from campaignd.stores.sql.aggregates import AggregateRow
from campaignd.stores.sql.models import COUNTER_COLUMNS

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BIG = 2**53 + 3  # money beyond a float's integers


def counts(**kw: int) -> tuple[int, ...]:
    return tuple(kw.get(c, 0) for c in COUNTER_COLUMNS)


async def stored(sql_store: SqlStore, spec: CampaignSpec) -> list[str]:
    cells = atomize(spec)
    await sql_store.upsert_campaign(spec, cells, now=NOW)
    return [c.cell_id for c in cells]


async def test_commit_adds_minutes_days_and_totals_with_the_cursor(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    a, b = (await stored(sql_store, seed_spec))[:2]
    m0 = NOW.replace(minute=0)
    cid = seed_spec.id
    await sql_store.commit_ingest(minutes=[
        AggregateRow(cid, a, m0, counts(impressions=2, spend_micros=BIG)),
        AggregateRow(cid, a, m0 + timedelta(minutes=1), counts(impressions=1, clicks=1)),
        AggregateRow(cid, b, m0 - timedelta(days=1), counts(impressions=5)),
    ], letters=[("bad_money", b"{1}"), ("bad_money", b"{1}")], letter_source="events:t",
        checkpoint=("events:t", "seq-10"), now=NOW)
    await sql_store.commit_ingest(minutes=[
        AggregateRow(cid, a, m0, counts(impressions=3, conversions=1)),
    ], checkpoint=("events:t", "seq-20"), now=NOW + timedelta(seconds=1))
    assert await sql_store.get_checkpoint("events:t") == "seq-20"
    totals = await sql_store.read_cell_totals(cid)
    assert dict(zip(COUNTER_COLUMNS, totals[a], strict=True))["impressions"] == 6
    assert dict(zip(COUNTER_COLUMNS, totals[a], strict=True))["spend_micros"] == BIG
    assert dict(zip(COUNTER_COLUMNS, totals[b], strict=True))["impressions"] == 5
    minutes = await sql_store.minute_rows(cid, since=m0 - timedelta(days=2),
                                          until=m0 + timedelta(hours=1))
    assert [(r.cell_id, r.at, r.as_dict()["impressions"]) for r in minutes] == [
        (b, m0 - timedelta(days=1), 5), (a, m0, 5), (a, m0 + timedelta(minutes=1), 1)]
    assert type(minutes[0].counts[0]) is int and minutes[1].at.tzinfo is not None  # type: ignore[union-attr]
    days = await sql_store.day_rows(cid, first=date(2026, 11, 30), last=date(2026, 12, 1))
    assert [(r.cell_id, r.at, r.as_dict()["impressions"]) for r in days] == [
        (b, date(2026, 11, 30), 5), (a, date(2026, 12, 1), 6)]
    assert days[1].as_dict()["spend_micros"] == BIG
    assert await sql_store.dead_letter_counts() == {"bad_money": 2}
    # what `campaign list` reports as spend comes from the running totals
    [summary] = await sql_store.list_campaigns()
    assert summary.spend_micros == BIG
    cells = {c.cell_id: c for c in await sql_store.list_cells(cid)}
    assert cells[a].spend_micros == BIG and cells[b].spend_micros == 0


async def test_a_failed_commit_changes_nothing(sql_store: SqlStore,
                                               seed_spec: CampaignSpec) -> None:
    [a] = (await stored(sql_store, seed_spec))[:1]
    cid = seed_spec.id
    await sql_store.set_checkpoint("events:t", "seq-1", now=NOW)
    with pytest.raises(StorageError):  # a row of a campaign that is not stored: FK violation
        await sql_store.commit_ingest(minutes=[
            AggregateRow(cid, a, NOW, counts(impressions=1)),
            AggregateRow("no_such_campaign", "x", NOW, counts(impressions=1)),
        ], letters=[("bad_money", b"x")], checkpoint=("events:t", "seq-2"), now=NOW)
    assert await sql_store.get_checkpoint("events:t") == "seq-1"
    assert await sql_store.read_cell_totals(cid) == {}
    assert await sql_store.dead_letter_counts() == {}


async def test_retention_deletes_whole_old_days_of_minutes_only(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    [a] = (await stored(sql_store, seed_spec))[:1]
    cid = seed_spec.id
    rows = [AggregateRow(cid, a, NOW - timedelta(days=d, hours=h), counts(impressions=1))
            for d in range(10) for h in (0, 11)]
    await sql_store.commit_ingest(minutes=rows, now=NOW)
    deleted = await apply_retention(sql_store, now=NOW, retention_days=7)
    # the days before 2026-11-24 go (Nov 22 and 23, two rows each); Nov 24 01:00 stays
    left = await sql_store.minute_rows(cid, since=NOW - timedelta(days=30),
                                       until=NOW + timedelta(minutes=1))
    assert deleted == 4 and len(left) == 16
    assert min(r.at for r in left) == datetime(2026, 11, 24, 1, tzinfo=UTC)  # type: ignore[type-var]
    assert await sql_store.oldest_minute() == min(r.at for r in left)  # type: ignore[type-var]
    # the cold rows keep every day, and the totals everything
    days = await sql_store.day_rows(cid, first=date(2026, 11, 1), last=date(2026, 12, 31))
    assert sum(r.as_dict()["impressions"] for r in days) == 20
    totals = await sql_store.read_cell_totals(cid)
    assert dict(zip(COUNTER_COLUMNS, totals[a], strict=True))["impressions"] == 20


async def test_retention_deletes_in_small_transactions_oldest_first_within_a_time_budget(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """A day of minute rows for 10,000 busy cells is 14.4 million rows: deleted in one
    transaction it held SQLite's write lock (the feed's commits wait on it) for minutes and
    ran past the transaction timeout. The rows go in chunks of whole minutes, oldest first;
    a minute holding more rows than a chunk still goes (progress), and a time budget stops
    after a chunk, the next run going on from there."""
    ids = (await stored(sql_store, seed_spec))[:5]
    cid = seed_spec.id
    # 10 days, 2 minutes a day, 5 cells a minute (more than a chunk of 3)
    rows = [AggregateRow(cid, c, NOW - timedelta(days=d, minutes=m), counts(impressions=1))
            for d in range(10) for m in (0, 1) for c in ids]
    await sql_store.commit_ingest(minutes=rows, now=NOW)
    cutoff = (NOW - timedelta(days=7)).date()
    # with no time left, one chunk: the oldest minute (all of its 5 rows)
    first = await sql_store.delete_minutes_before(cutoff, chunk_rows=3, time_budget_s=0)
    assert first == 5
    assert await sql_store.oldest_minute() == NOW - timedelta(days=9, minutes=0)
    rest = await sql_store.delete_minutes_before(cutoff, chunk_rows=3)
    # the days before Nov 24 (Nov 22 and 23: 2 minutes × 5 cells each) are gone, no other
    assert first + rest == 20
    left = await sql_store.minute_rows(cid, since=NOW - timedelta(days=30),
                                       until=NOW + timedelta(minutes=1))
    assert len(left) == 80
    assert await sql_store.oldest_minute() == NOW - timedelta(days=7, minutes=1)
    assert await sql_store.delete_minutes_before(cutoff, chunk_rows=3) == 0


async def test_reset_forgets_a_campaigns_counts(sql_store: SqlStore,
                                                seed_spec: CampaignSpec) -> None:
    [a] = (await stored(sql_store, seed_spec))[:1]
    await sql_store.commit_ingest(minutes=[
        AggregateRow(seed_spec.id, a, NOW, counts(impressions=1))], now=NOW)
    await sql_store.reset_counts(seed_spec.id)
    assert await sql_store.read_cell_totals(seed_spec.id) == {}
    assert await sql_store.day_rows(seed_spec.id, first=date(2026, 1, 1),
                                    last=date(2027, 1, 1)) == []


async def test_a_new_sandbox_market_forgets_the_last_ones_files(
        sql_store: SqlStore, seed_spec: CampaignSpec, tmp_path: Path) -> None:
    """The last market ran ahead on its sped-up clock: its checkpoint kept the new market's
    finished days from ever being exported, and its files stood as this market's."""
    from campaignd.pipeline.rollup import forget_exported

    [a] = (await stored(sql_store, seed_spec))[:1]
    cid = seed_spec.id
    ahead = NOW + timedelta(days=5)
    await sql_store.commit_ingest(minutes=[AggregateRow(cid, a, ahead - timedelta(days=1),
                                                        counts(impressions=7))], now=ahead)
    assert await export_changed_days(sql_store, tmp_path, now=ahead) == 1
    (tmp_path / "audit").mkdir()  # (the audit archive beside them is not a day file)
    # the new market: counts reset, its clock behind the last one's
    await sql_store.reset_counts(cid)
    assert await forget_exported(sql_store, tmp_path, [cid]) == 1
    assert read_days(tmp_path, cid).num_rows == 0 and (tmp_path / "audit").is_dir()
    yesterday = NOW - timedelta(days=1)
    await sql_store.commit_ingest(minutes=[AggregateRow(cid, a, yesterday,
                                                        counts(impressions=3))], now=NOW)
    assert await export_changed_days(sql_store, tmp_path, now=NOW) == 1
    assert pq.read_table(day_path(tmp_path, cid, yesterday.date()))["impressions"].to_pylist() \
        == [3]
    assert await forget_exported(sql_store, tmp_path / "none", [cid]) == 0


async def test_an_export_backlog_is_finished_run_by_run(
        sql_store: SqlStore, seed_spec: CampaignSpec, tmp_path: Path) -> None:
    """A backlog larger than one run can write (its job's timeout) was started over by every
    run and never finished: the checkpoint follows each file now."""
    [a] = (await stored(sql_store, seed_spec))[:1]
    cid = seed_spec.id
    for d in (3, 2, 1):  # three finished days, changed at one instant
        await sql_store.commit_ingest(minutes=[AggregateRow(
            cid, a, NOW - timedelta(days=d), counts(impressions=d))], now=NOW)
    await sql_store.commit_ingest(minutes=[AggregateRow(  # a fourth, changed later
        cid, a, NOW - timedelta(days=4), counts(impressions=4))], now=NOW + timedelta(hours=1))
    later = NOW + timedelta(hours=2)
    runs = [await export_changed_days(sql_store, tmp_path, now=later, time_budget_s=0.0)
            for _ in range(5)]
    # (the days changed at one instant go together: a checkpoint between them could not
    # tell them apart)
    assert runs == [3, 1, 0, 0, 0]
    assert sorted(read_days(tmp_path, cid)["impressions"].to_pylist()) == [1, 2, 3, 4]


async def test_parquet_round_trip_and_changed_days(sql_store: SqlStore, seed_spec: CampaignSpec,
                                                   tmp_path: Path) -> None:
    cells = await stored(sql_store, seed_spec)
    cid = seed_spec.id
    yesterday = NOW - timedelta(days=1)
    rows = [AggregateRow(cid, c, yesterday, counts(impressions=i + 1, spend_micros=BIG + i,
                                                   conversion_value_micros=7))
            for i, c in enumerate(cells[:50])]
    await sql_store.commit_ingest(minutes=rows, now=NOW)
    await sql_store.commit_ingest(minutes=[AggregateRow(cid, cells[0], NOW, counts(
        impressions=9))], now=NOW + timedelta(seconds=1))  # today: not finished
    assert await export_changed_days(sql_store, tmp_path, now=NOW) == 1
    path = day_path(tmp_path, cid, yesterday.date())
    assert path.exists() and not day_path(tmp_path, cid, NOW.date()).exists()
    table = pq.read_table(path)
    assert table.num_rows == 50
    got = {r["cell_id"]: r for r in table.to_pylist()}
    first = got[cells[0]]
    spec_cells = {c.cell_id: c for c in atomize(seed_spec)}
    assert first["impressions"] == 1 and first["spend_micros"] == BIG
    assert first["audience"] == spec_cells[cells[0]].audience
    assert first["date"] == yesterday.date() and first["campaign_id"] == cid
    assert sum(r["spend_micros"] for r in got.values()) == sum(BIG + i for i in range(50))
    assert table.schema.field("spend_micros").type == "int64"
    # nothing changed: nothing to do; a late event rewrites its day
    assert await export_changed_days(sql_store, tmp_path, now=NOW) == 0
    await sql_store.commit_ingest(minutes=[AggregateRow(cid, cells[0], yesterday,
                                                        counts(conversions=1))],
                                  now=NOW + timedelta(minutes=5))
    assert await export_changed_days(sql_store, tmp_path,
                                     now=NOW + timedelta(minutes=5)) == 1
    rewritten = {r["cell_id"]: r for r in pq.read_table(path).to_pylist()}
    assert rewritten[cells[0]]["conversions"] == 1
    # tomorrow, today is finished and exported too (a day changed after today's last change
    # may be written again: the export never skips a change, it may repeat one)
    assert await export_changed_days(sql_store, tmp_path, now=NOW + timedelta(days=1)) >= 1
    assert day_path(tmp_path, cid, NOW.date()).exists()
    assert await export_changed_days(sql_store, tmp_path, now=NOW + timedelta(days=1)) == 0
    assert await sql_store.get_checkpoint(EXPORT_CHECKPOINT) is not None
    everything = read_days(tmp_path, cid)
    assert everything.num_rows == 51
    # export over a range writes the same files (the CLI's `campaignd export`)
    out = tmp_path / "export"
    written = await export_days(sql_store, out, cid, yesterday.date(), NOW.date())
    assert [(d, n) for d, _p, n in written] == [(yesterday.date(), 50), (NOW.date(), 1)]
    assert pq.read_table(day_path(out, cid, yesterday.date())).equals(pq.read_table(path))
