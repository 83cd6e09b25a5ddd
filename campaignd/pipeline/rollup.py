"""The cold store's files and the stores' housekeeping.

- Parquet: one file per campaign and UTC day, Hive-partitioned —
  ``<dir>/campaign=<id>/date=<YYYY-MM-DD>/part-0.parquet`` — with one row per cell: the cell's
  levels and its day counters (int64; money in micros, as in SQL). pyarrow, ``zstd``. Files are
  written aside and renamed, so a reader never sees half a file.
- ``export_changed_days``: writes the file of every finished day whose counts changed since the
  last export (a late conversion rewrites its day), remembering how far it got in a checkpoint.
- ``apply_retention``: deletes warm minute rows older than the retention (whole days; the day
  rows they were added to stay forever).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import pyarrow as pa
import pyarrow.parquet as pq

from campaignd.stores.sql.aggregates import AggregateRow
from campaignd.stores.sql.models import COUNTER_COLUMNS

LEVEL_COLUMNS = ("audience", "creative", "bid_strategy", "daypart", "platform")
PARQUET_SCHEMA = pa.schema(
    [pa.field("campaign_id", pa.string(), nullable=False),
     pa.field("date", pa.date32(), nullable=False),
     pa.field("cell_id", pa.string(), nullable=False),
     *[pa.field(c, pa.string()) for c in LEVEL_COLUMNS],
     *[pa.field(c, pa.int64(), nullable=False) for c in COUNTER_COLUMNS]],
    metadata={b"campaignd.money": b"integer micros (1 currency unit = 1,000,000)",
              b"campaignd.date": b"UTC day (not the DSP account's budget day)"})
EXPORT_CHECKPOINT = "cold:parquet:exported_until"


def day_path(root: Path, campaign_id: str, day: date) -> Path:
    return root / f"campaign={campaign_id}" / f"date={day.isoformat()}" / "part-0.parquet"


def write_day(root: Path, campaign_id: str, day: date, rows: Sequence[AggregateRow],
              levels: dict[str, dict[str, str]]) -> Path:
    """Write (replace) one campaign-day file from its cold rows; ``levels`` maps cell id →
    dimension → level id. Returns the path."""
    path = day_path(root, campaign_id, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: dict[str, list[Any]] = {f.name: [] for f in PARQUET_SCHEMA}
    for r in rows:
        cols["campaign_id"].append(campaign_id)
        cols["date"].append(day)
        cols["cell_id"].append(r.cell_id)
        lv = levels.get(r.cell_id, {})
        for c in LEVEL_COLUMNS:
            cols[c].append(lv.get(c))
        for c, n in zip(COUNTER_COLUMNS, r.counts, strict=True):
            cols[c].append(int(n))
    table = pa.Table.from_pydict(cols, schema=PARQUET_SCHEMA)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    # durable before it replaces the old file and before the checkpoint in SQL passes it: a
    # power cut must not leave an empty file that no export will ever write again
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def read_days(root: Path, campaign_id: str | None = None) -> pa.Table:
    """Every exported row under ``root`` (optionally one campaign), as one table."""
    files = sorted(root.glob(f"campaign={campaign_id or '*'}/date=*/part-0.parquet"))
    if not files:
        return PARQUET_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=PARQUET_SCHEMA) for f in files])


async def _levels(sql: Any, campaign_id: str) -> dict[str, dict[str, str]]:
    return {c.cell_id: {d: getattr(c, d) for d in LEVEL_COLUMNS}
            for c in await sql.list_cells(campaign_id)}


async def export_days(sql: Any, root: Path, campaign_id: str, first: date,
                      last: date) -> list[tuple[date, Path, int]]:
    """Write the files of ``first``..``last`` for one campaign (days with counts only);
    returns (day, path, rows) per file written."""
    rows = await sql.day_rows(campaign_id, first=first, last=last)
    by_day: dict[date, list[AggregateRow]] = {}
    for r in rows:
        assert isinstance(r.at, date)
        by_day.setdefault(r.at, []).append(r)
    levels = await _levels(sql, campaign_id) if by_day else {}
    return [(d, write_day(root, campaign_id, d, day_rows, levels), len(day_rows))
            for d, day_rows in sorted(by_day.items())]


async def export_changed_days(sql: Any, root: Path, *, now: datetime,
                              time_budget_s: float | None = None) -> int:
    """Export every finished UTC day changed since the last run; returns files written.

    Days go in the order of their last change and the checkpoint follows each file written, so
    a backlog larger than one run can write (``time_budget_s``, e.g. the first export of a long
    history: ~0.25 s per 12,000-cell campaign-day) is finished by the runs after it instead of
    being started over by each, past its job's timeout. Files are written on a worker thread
    (the event loop counts events meanwhile)."""
    raw = await sql.get_checkpoint(EXPORT_CHECKPOINT)
    since = datetime.fromisoformat(raw) if raw else None
    today = now.astimezone(UTC).date()
    started = time.monotonic()
    written = 0
    done = since  # every day whose last change is at or before this is exported
    last = since  # the last change of the last day written
    unfinished: datetime | None = None
    levels: dict[str, dict[str, dict[str, str]]] = {}
    changed_days = await sql.days_changed(since=since)
    for k, (campaign_id, day, changed) in enumerate(changed_days):
        if day >= today:
            # Not finished: exported once it is. The checkpoint must not pass its changes.
            unfinished = changed if unfinished is None else min(unfinished, changed)
            continue
        if (time_budget_s is not None and written and done is not None and last is not None
                and done >= last
                and time.monotonic() - started > time_budget_s):
            # (the rest at the next run, from the checkpoint: never inside a group of days
            # changed at one instant -- the checkpoint could not pass them one by one)
            break
        rows = await sql.day_rows(campaign_id, first=day, last=day)
        if campaign_id not in levels:
            levels[campaign_id] = await _levels(sql, campaign_id)
        await anyio.to_thread.run_sync(write_day, root, campaign_id, day, rows,
                                       levels[campaign_id])
        written += 1
        # (a day changed at the same instant and not yet written must not be passed)
        tie = k + 1 < len(changed_days) and changed_days[k + 1][2] <= changed
        mark = changed - timedelta(microseconds=1) if tie else changed
        last = changed
        if unfinished is not None:
            mark = min(mark, unfinished - timedelta(microseconds=1))
        if done is None or mark > done:
            done = mark
            if written % 50 == 0:
                await sql.set_checkpoint(EXPORT_CHECKPOINT, done.isoformat(), now=now)
    if done is not None and (since is None or done > since):
        await sql.set_checkpoint(EXPORT_CHECKPOINT, done.isoformat(), now=now)
    return written


async def forget_exported(sql: Any, root: Path, campaign_ids: Sequence[str]) -> int:
    """A new sandbox market (its counts reset): delete the campaigns' day files, the last
    market's, and restart the export's checkpoint -- the new market's clock starts behind the
    last one's sped-up time, so its days would never pass the checkpoint and be exported.
    Returns the files deleted."""
    deleted = 0
    for campaign_id in campaign_ids:
        part = root / f"campaign={campaign_id}"
        if part.is_dir():
            deleted += sum(1 for _ in part.glob("date=*/part-0.parquet"))
            shutil.rmtree(part)
    await sql.set_checkpoint(EXPORT_CHECKPOINT, "")
    return deleted


async def apply_retention(sql: Any, *, now: datetime, retention_days: int,
                          time_budget_s: float | None = None) -> int:
    """Delete warm minute rows of the days older than ``retention_days``, in chunks (at most
    ``time_budget_s`` of it: the rest at the next run); returns rows."""
    cutoff = now.astimezone(UTC).date() - timedelta(days=retention_days)
    return int(await sql.delete_minutes_before(cutoff, time_budget_s=time_budget_s))


__all__ = [
    "EXPORT_CHECKPOINT",
    "PARQUET_SCHEMA",
    "apply_retention",
    "day_path",
    "export_changed_days",
    "export_days",
    "forget_exported",
    "read_days",
    "write_day",
]
