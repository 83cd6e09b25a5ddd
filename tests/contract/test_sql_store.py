"""The SQL store contract: every test runs on SQLite (aiosqlite) and on real PostgreSQL (asyncpg),
each on a fresh database."""

from __future__ import annotations

import dataclasses
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, insert, text

from campaignd.domain.campaign import (
    Audience,
    BidStrategy,
    CampaignSpec,
    Creative,
    Daypart,
    Platform,
    atomize,
)
from campaignd.errors import StorageError
from campaignd.stores.sql import (
    AgentRun,
    SqlStore,
    current_revision,
    head_revision,
    spec_to_dict,
    upgrade,
)
from campaignd.stores.sql.models import cells, metadata
from campaignd.stores.sql.repository import build_engine

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


# --- migrations ----------------------------------------------------------------------------


def _schema_diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


async def test_upgrade_from_empty_to_head_is_idempotent(sql_url: str) -> None:
    assert await current_revision(sql_url) is None
    head = head_revision()
    assert head == "0005"
    assert await upgrade(sql_url) == head
    assert await current_revision(sql_url) == head
    assert await upgrade(sql_url) == head  # again: nothing to do, no error
    # the migrations build exactly the schema the models describe
    engine = build_engine(sql_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
    finally:
        await engine.dispose()


async def test_connect_to_unreachable_database_names_it_without_password(
        tmp_path: object) -> None:
    with pytest.raises(StorageError) as info:
        await SqlStore.connect("postgresql+asyncpg://campaignd@127.0.0.1:1/nope",
                               password="s3cret-pw", timeout_s=5)
    message = str(info.value)
    assert "127.0.0.1:1/nope" in message
    assert "s3cret-pw" not in message
    assert "***" in message
    with pytest.raises(StorageError, match="no/such/dir"):
        await SqlStore.connect(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db")


async def test_sqlite_enforces_foreign_keys_and_uses_wal(sqlite_url: str) -> None:
    await upgrade(sqlite_url)
    store = await SqlStore.connect(sqlite_url)
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        with pytest.raises(StorageError):  # a cell of a campaign that does not exist
            async with store._tx("orphan") as conn:
                await conn.execute(insert(cells).values(
                    cell_id="c0", campaign_id="ghost", idx=0, audience="a", creative="c",
                    bid_strategy="b", daypart="d", platform="p", status="planned",
                    created_at=NOW, updated_at=NOW))
    finally:
        await store.close()


# --- campaigns and cells -------------------------------------------------------------------


async def test_upsert_campaign_is_idempotent(sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    seed_cells = atomize(seed_spec)
    assert len(seed_cells) == 432
    first = await sql_store.upsert_campaign(seed_spec, seed_cells, now=NOW)
    assert (first.created, first.cells_added, first.cells_unchanged, first.cells_removed) == (
        True, 432, 0, 0)
    again = await sql_store.upsert_campaign(seed_spec, atomize(seed_spec),
                                            now=NOW + timedelta(hours=1))
    assert (again.created, again.cells_added, again.cells_unchanged, again.cells_removed) == (
        False, 0, 432, 0)

    [summary] = await sql_store.list_campaigns()
    assert summary.id == "madhive_12345"
    assert summary.name == "MadHive Q4 CTV prospecting"
    assert (summary.cells_total, summary.cells_active, summary.spend_micros) == (432, 0, 0)
    assert summary.lifetime_budget_micros == 150_000_000_000
    assert summary.daily_budget_micros == 2_500_000_000
    assert summary.status == "active"
    assert summary.updated_at == NOW  # an unchanged spec changes nothing

    rows = await sql_store.list_cells(seed_spec.id)
    assert [r.cell_id for r in rows] == [c.cell_id for c in seed_cells]
    assert [r.index for r in rows] == list(range(432))
    assert (rows[5].audience, rows[5].creative, rows[5].bid_strategy, rows[5].daypart,
            rows[5].platform) == tuple(seed_cells[5].levels().values())
    assert {r.status for r in rows} == {"planned"}
    assert all(r.budget_micros is None and r.dsp_line_item_id is None for r in rows)

    detail = await sql_store.get_campaign(seed_spec.id)
    assert detail is not None
    assert dataclasses.asdict(summary).items() <= dataclasses.asdict(detail).items()
    assert detail.spec == spec_to_dict(seed_spec)
    assert detail.spec["lifetime_budget"] == "150000.00"  # exact decimal string
    assert detail.spec["flight_start"] == "2026-11-01T00:00:00+00:00"
    assert detail.cells_by_status == {"planned": 432, "active": 0, "paused": 0, "killed": 0,
                                      "graduated": 0}
    assert await sql_store.get_campaign("nope") is None
    assert await sql_store.list_cells("nope") == []


async def test_cells_missing_from_the_spec_are_killed_not_deleted(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    await sql_store.upsert_campaign(seed_spec, atomize(seed_spec), now=NOW)
    smaller = dataclasses.replace(seed_spec, name="Renamed", platforms=seed_spec.platforms[:3],
                                  lifetime_budget=Decimal("160000.50"))
    kept = atomize(smaller)
    assert len(kept) == 324
    later = NOW + timedelta(days=1)
    result = await sql_store.upsert_campaign(smaller, kept, now=later)
    assert (result.created, result.cells_added, result.cells_unchanged, result.cells_removed) == (
        False, 0, 324, 108)

    killed = await sql_store.list_cells(seed_spec.id, status="killed")
    assert len(killed) == 108
    assert {r.platform for r in killed} == {seed_spec.platforms[3].id}
    assert all(r.updated_at == later for r in killed)
    assert len(await sql_store.list_cells(seed_spec.id, status="planned")) == 324

    detail = await sql_store.get_campaign(seed_spec.id)
    assert detail is not None
    assert detail.cells_total == 432  # history kept
    assert detail.cells_by_status["killed"] == 108
    assert detail.name == "Renamed"
    assert detail.lifetime_budget_micros == 160_000_500_000
    assert detail.updated_at == later
    assert detail.created_at == NOW
    assert len(detail.spec["platforms"]) == 3

    # the same smaller spec again: nothing more to kill
    again = await sql_store.upsert_campaign(smaller, kept, now=later)
    assert (again.cells_added, again.cells_removed) == (0, 0)


async def test_a_new_level_adds_cells_and_keeps_the_spec_order(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    await sql_store.upsert_campaign(seed_spec, atomize(seed_spec), now=NOW)
    wider = dataclasses.replace(seed_spec, creatives=(Creative("teaser_6s"), *seed_spec.creatives))
    wider_cells = atomize(wider)
    result = await sql_store.upsert_campaign(wider, wider_cells, now=NOW)
    assert (result.cells_added, result.cells_unchanged, result.cells_removed) == (144, 432, 0)
    rows = await sql_store.list_cells(seed_spec.id)
    assert [(r.cell_id, r.index) for r in rows] == [(c.cell_id, c.index) for c in wider_cells]


async def test_cell_updates_round_trip_exact_integers(sql_store: SqlStore,
                                                      seed_spec: CampaignSpec) -> None:
    seed_cells = atomize(seed_spec)
    await sql_store.upsert_campaign(seed_spec, seed_cells, now=NOW)
    a, b, c = (cell.cell_id for cell in seed_cells[:3])
    big = 2**53 + 1  # not representable as a float
    await sql_store.set_cell_line_items({a: big, b: 7}, status="active", now=NOW)
    await sql_store.set_cell_line_items({c: 8})
    await sql_store.update_cell_budgets({a: (150_000_000_000, 2_500_000_001), b: (big, None),
                                         "unknown": (1, 1)})
    rows = {r.cell_id: r for r in await sql_store.list_cells(seed_spec.id)}
    assert (rows[a].dsp_line_item_id, rows[a].status) == (big, "active")
    assert (rows[b].dsp_line_item_id, rows[b].status) == (7, "active")
    assert (rows[c].dsp_line_item_id, rows[c].status) == (8, "planned")
    assert (rows[a].budget_micros, rows[a].daily_budget_micros) == (150_000_000_000,
                                                                    2_500_000_001)
    assert (rows[b].budget_micros, rows[b].daily_budget_micros) == (big, None)
    assert type(rows[a].budget_micros) is int

    await sql_store.set_cell_status([b, c, c], "paused")
    active = await sql_store.list_cells(seed_spec.id, status="active")
    assert [r.cell_id for r in active] == [a]
    [summary] = await sql_store.list_campaigns()
    assert summary.cells_active == 1
    with pytest.raises(ValueError, match="cell status"):
        await sql_store.set_cell_status([a], "deleted")
    with pytest.raises(ValueError, match="cell status"):
        await sql_store.list_cells(seed_spec.id, status="deleted")
    assert await sql_store.set_campaign_status(seed_spec.id, "paused") is True
    assert (await sql_store.list_campaigns())[0].status == "paused"
    assert await sql_store.set_campaign_status("nope", "paused") is False


async def test_aware_datetimes_round_trip_as_utc(sql_store: SqlStore,
                                                 seed_spec: CampaignSpec) -> None:
    plus5 = timezone(timedelta(hours=5))
    spec = dataclasses.replace(seed_spec, flight_start=datetime(2026, 12, 1, 5, 0, 0, 123456,
                                                                tzinfo=plus5))
    await sql_store.upsert_campaign(spec, atomize(spec), now=NOW)
    [summary] = await sql_store.list_campaigns()
    assert summary.flight_start == datetime(2026, 12, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert summary.flight_start.tzinfo is UTC
    assert summary.created_at == NOW and summary.created_at.tzinfo is UTC
    row = (await sql_store.list_cells(spec.id))[0]
    assert row.created_at == NOW and row.created_at.tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        await sql_store.set_checkpoint("x", "1", now=datetime(2026, 1, 1))


def _big_spec(seed: CampaignSpec) -> CampaignSpec:
    """10 x 10 x 4 x 5 x 5 = 10,000 cells."""
    return dataclasses.replace(
        seed, id="big_campaign",
        audiences=tuple(Audience(f"aud{i}", ("10001",)) for i in range(10)),
        creatives=tuple(Creative(f"cre{i}") for i in range(10)),
        bid_strategies=tuple(BidStrategy(f"bid{i}") for i in range(4)),
        dayparts=tuple(Daypart(f"dp{i}", (i,)) for i in range(5)),
        platforms=tuple(Platform(f"plat{i}") for i in range(5)),
        max_cells=10_000)


async def test_ten_thousand_cells(sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = _big_spec(seed_spec)
    big_cells = atomize(spec)
    assert len(big_cells) == 10_000
    result = await sql_store.upsert_campaign(spec, big_cells, now=NOW)
    assert (result.cells_added, result.cells_removed) == (10_000, 0)
    fewer = dataclasses.replace(spec, platforms=spec.platforms[:1])
    result = await sql_store.upsert_campaign(fewer, atomize(fewer), now=NOW)
    assert (result.cells_added, result.cells_unchanged, result.cells_removed) == (0, 2000, 8000)
    await sql_store.set_cell_status([c.cell_id for c in big_cells], "active")
    [summary] = await sql_store.list_campaigns()
    assert (summary.cells_total, summary.cells_active) == (10_000, 10_000)


# --- agent runs, checkpoints, DSP ids, status ---------------------------------------------


async def test_agent_runs(sql_store: SqlStore) -> None:
    assert await sql_store.recent_agent_runs() == []
    assert await sql_store.agent_run_counts() == {}
    runs = [
        AgentRun("monitor", NOW, NOW + timedelta(seconds=1), 1.25, "ok", 3),
        AgentRun("reallocation", NOW + timedelta(seconds=5), NOW + timedelta(seconds=35), 30.0,
                 "timeout", 0, "took longer than 30 s"),
        AgentRun("monitor", NOW + timedelta(seconds=30), NOW + timedelta(seconds=31), 0.5,
                 "error", 0, "ZeroDivisionError: division by zero"),
    ]
    ids = [await sql_store.record_agent_run(r) for r in runs]
    assert len(set(ids)) == 3

    recent = await sql_store.recent_agent_runs()
    assert recent == [runs[2], runs[1], runs[0]]  # newest first; id is not compared
    assert [r.id for r in recent] == [ids[2], ids[1], ids[0]]
    assert recent[1].error == "took longer than 30 s"
    assert recent[2].duration_s == 1.25
    assert await sql_store.recent_agent_runs("monitor", limit=1) == [runs[2]]
    assert await sql_store.agent_run_counts() == {"monitor": {"ok": 1, "error": 1},
                                                  "reallocation": {"timeout": 1}}
    with pytest.raises(ValueError, match="outcome"):
        await sql_store.record_agent_run(dataclasses.replace(runs[0], outcome="crashed"))


async def test_checkpoints(sql_store: SqlStore) -> None:
    assert await sql_store.get_checkpoint("events") is None
    await sql_store.set_checkpoint("events", "offset=10", now=NOW)
    await sql_store.set_checkpoint("other", "x", now=NOW)
    assert await sql_store.get_checkpoint("events") == "offset=10"
    await sql_store.set_checkpoint("events", "offset=20", now=NOW)
    assert await sql_store.get_checkpoint("events") == "offset=20"
    assert await sql_store.get_checkpoint("other") == "x"


async def test_dsp_ids(sql_store: SqlStore) -> None:
    assert await sql_store.get_dsp_id("line_item", "c1") is None
    await sql_store.put_dsp_ids("line_item", {"c1": 101, "c2": 2**62})
    await sql_store.put_dsp_ids("creative", {"c1": 5})
    await sql_store.put_dsp_ids("creative", {})
    assert await sql_store.get_dsp_id("line_item", "c1") == 101
    assert await sql_store.get_dsp_id("line_item", "c2") == 2**62
    assert await sql_store.get_dsp_id("creative", "c1") == 5
    await sql_store.put_dsp_ids("line_item", {"c1": 102})
    assert await sql_store.get_dsp_id("line_item", "c1") == 102
    many = {f"k{i}": i for i in range(2500)}
    await sql_store.put_dsp_ids("targeting_expression", many)
    assert await sql_store.get_dsp_id("targeting_expression", "k2499") == 2499


async def test_status_record(sql_store: SqlStore) -> None:
    assert await sql_store.read_status("host-1") is None
    started = NOW - timedelta(hours=2)
    await sql_store.write_status("host-1", 4242, "0.1.0", started, {"healthy": True,
                                                                   "agents": ["monitor"]},
                                 now=NOW)
    record = await sql_store.read_status("host-1")
    assert record is not None
    assert (record.pid, record.version, record.started_at, record.heartbeat_at) == (
        4242, "0.1.0", started, NOW)
    assert record.payload == {"healthy": True, "agents": ["monitor"]}
    await sql_store.write_status("host-1", 4242, "0.1.0", started, {"healthy": False},
                                 now=NOW + timedelta(seconds=30))
    record = await sql_store.read_status("host-1")
    assert record is not None
    assert record.heartbeat_at == NOW + timedelta(seconds=30)
    assert record.payload == {"healthy": False}
    assert await sql_store.read_status("host-2") is None


async def test_a_database_from_a_newer_campaignd_is_refused_in_one_line(sql_url: str) -> None:
    """alembic's "Can't locate revision" came out of every store-backed CLI command as a
    traceback (review finding)."""
    await upgrade(sql_url)
    engine = build_engine(sql_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        await engine.dispose()
    with pytest.raises(StorageError, match=r"schema revision 0099, newer than this campaignd "
                                           r"knows \(its newest is 0005\): upgrade campaignd"):
        await upgrade(sql_url)


async def test_concurrent_upgrades_from_several_processes(sql_url: str) -> None:
    """The daemon and a CLI command may both upgrade a fresh database at the same moment."""
    code = ("import asyncio, sys; from campaignd.stores.sql import upgrade; "
            "print(asyncio.run(upgrade(sys.argv[1])))")
    revisions: list[str] = []

    async def run_upgrade() -> None:
        done = await anyio.run_process([sys.executable, "-c", code, sql_url], check=False)
        assert done.returncode == 0, done.stderr.decode()
        revisions.append(done.stdout.decode().strip())

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(run_upgrade)
    assert revisions == [head_revision()] * 3
    assert await current_revision(sql_url) == head_revision()
