"""The audit archive: finished actions and old dead letters move from SQL to Parquet.

The actions table is the executor's outbox and the audit log of every change; the dead-letter
table keeps every refused event. Both would grow without end in SQL (at 12,000 cells the
decision engine records about 10,000 actions a day), so the retention job moves, in chunks:

- actions in a finished status (applied, failed, refused, rejected, superseded, shadow) last
  updated more than ``decision.audit_retention_days`` ago — never an open one (proposed,
  pending, applying), and never one that an action still in SQL undoes (it follows its undo);
- dead letters not seen again for ``pipeline.dead_letter_retention_days``,

to ``<parquet_dir>/audit/<table>/archived=<YYYY-MM-DD>/part-<first id>-<last id>.parquet``
(every column as stored: JSON columns as text, payloads as bytes, times in UTC; zstd), then
deletes them from SQL. A file is written aside, synced and renamed (and its directory synced)
before the rows are deleted, so neither a crash nor a power cut loses a row; it can leave a
chunk in two files (written again by the next run), so readers key rows by id and creation
time (SQLite may give an id again once the newest rows have left the table).
``read_archive`` reads one table back with pyarrow. An archived action can no longer be undone
with ``campaignd actions undo``. The daemon runs it as the hourly ``archive`` job, at most two
minutes of it a run, the files written on a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pyarrow as pa
import pyarrow.parquet as pq

_TS = pa.timestamp("us", tz="UTC")

ACTIONS_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False), pa.field("key", pa.string()),
    pa.field("decision_id", pa.string()), pa.field("campaign_id", pa.string()),
    pa.field("cell_id", pa.string()), pa.field("line_item_id", pa.int64()),
    pa.field("kind", pa.string()), pa.field("status", pa.string()),
    pa.field("mode", pa.string()), pa.field("agent", pa.string()),
    pa.field("actor", pa.string()), pa.field("reason", pa.string()),
    pa.field("before_json", pa.string()), pa.field("after_json", pa.string()),
    pa.field("evidence_json", pa.string()), pa.field("result_json", pa.string()),
    pa.field("score", pa.float64()), pa.field("impact", pa.float64()),
    pa.field("risk", pa.float64()), pa.field("priority", pa.float64()),
    pa.field("attempts", pa.int64()), pa.field("error", pa.string()),
    pa.field("undo_of", pa.int64()), pa.field("created_at", _TS),
    pa.field("updated_at", _TS), pa.field("decided_at", _TS), pa.field("applied_at", _TS),
], metadata={b"campaignd.money": b"integer micros in before_json / after_json"})

DEAD_LETTERS_SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False), pa.field("fingerprint", pa.string()),
    pa.field("reason", pa.string()), pa.field("source", pa.string()),
    pa.field("raw", pa.binary()), pa.field("first_seen", _TS), pa.field("last_seen", _TS),
    pa.field("count", pa.int64()),
])

SCHEMAS = {"actions": ACTIONS_SCHEMA, "dead_letters": DEAD_LETTERS_SCHEMA}


def archive_dir(root: Path, table: str) -> Path:
    return root / "audit" / table


def write_chunk(root: Path, table: str, rows: Sequence[dict[str, Any]], *,
                now: datetime) -> Path:
    """One chunk of rows (ordered by id) as a Parquet file; returns its path."""
    schema = SCHEMAS[table]
    cols = {f.name: [_utc(r.get(f.name)) for r in rows] for f in schema}
    path = (archive_dir(root, table) / f"archived={now.astimezone(UTC).date().isoformat()}"
            / f"part-{rows[0]['id']}-{rows[-1]['id']}.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), tmp, compression="zstd")
    # On disk for good before the rows leave SQL: the file, its name, its directory.
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    for d in (path.parent, path.parent.parent):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _utc(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:  # SQLite hands back naive UTC
        return value.replace(tzinfo=UTC)
    return value


def read_archive(root: Path, table: str) -> pa.Table:
    """Every archived row of ``table`` ("actions" or "dead_letters"), one per row archived
    (keyed by id and creation time: SQLite may give an id again once the newest rows have
    left the table)."""
    files = sorted(archive_dir(root, table).glob("archived=*/part-*.parquet"))
    schema = SCHEMAS[table]
    if not files:
        return schema.empty_table()
    t = pa.concat_tables([pq.read_table(f, schema=schema) for f in files])
    # A row can be in two files (a crash between writing a file and deleting its rows, or a
    # row that changed after it was read and was archived again later): keep its newest copy.
    born, stamp = _STAMPS[table]
    newest: dict[tuple[int, Any], tuple[Any, int]] = {}
    for i, (id_, b, at) in enumerate(zip(t.column("id").to_pylist(),
                                         t.column(born).to_pylist(),
                                         t.column(stamp).to_pylist(), strict=True)):
        old = newest.get((id_, b))
        if old is None or (at is not None and (old[0] is None or at >= old[0])):
            newest[(id_, b)] = (at, i)
    keep = sorted(i for _, i in newest.values())
    return t.take(pa.array(keep, type=pa.int64())).sort_by([("id", "ascending"),
                                                            (born, "ascending")])


_STAMPS = {"actions": ("created_at", "updated_at"), "dead_letters": ("first_seen", "last_seen")}


async def archive_old(sql: Any, root: Path, *, now: datetime, action_days: int,
                      dead_letter_days: int, chunk: int = 10_000,
                      time_budget_s: float | None = None) -> dict[str, int]:
    """Move what is past its retention from SQL to the archive; returns rows moved per table.
    Files are written on a worker thread (the event loop keeps ingesting); with
    ``time_budget_s`` a run stops starting chunks after that long and the next run goes on
    (the first run over a long history need not fit one job's timeout)."""
    moved = {"actions": 0, "dead_letters": 0}
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s

    def more() -> bool:
        return deadline is None or time.monotonic() < deadline

    before = now - timedelta(days=action_days)
    while more() and (rows := await sql.archivable_actions(before=before, limit=chunk)):
        await anyio.to_thread.run_sync(partial(write_chunk, root, "actions", rows, now=now))
        n = await sql.delete_actions([r["id"] for r in rows], updated_before=before)
        moved["actions"] += n
        if n < len(rows):  # some changed since they were read: the rest waits for next run
            break
    before = now - timedelta(days=dead_letter_days)
    while more() and (rows := await sql.archivable_dead_letters(before=before, limit=chunk)):
        await anyio.to_thread.run_sync(partial(write_chunk, root, "dead_letters", rows,
                                               now=now))
        n = await sql.delete_dead_letters([r["id"] for r in rows], seen_before=before)
        moved["dead_letters"] += n
        if n < len(rows):
            break
    return moved


__all__ = ["ACTIONS_SCHEMA", "DEAD_LETTERS_SCHEMA", "archive_dir", "archive_old",
           "read_archive", "write_chunk"]
