"""Event aggregates in SQL: running totals, the warm store (minutes) and the cold store (days).

Everything the pipeline has counted since its last flush is committed in one transaction
(``commit_ingest``): the per-cell minute rows (added), the per-cell day rows (added), the running
totals (added), the refused events, and the event cursor that covers them. A crash therefore
leaves either all of a flush or none of it; after a restart the cursor resumes right after what
the totals contain, so nothing is lost or counted twice.

Retention deletes whole days of minute rows only (``delete_minutes_before`` is given a day
boundary), so the day rows — which never expire — stay exact. Counters are BIGINT; money is
integer micros. Times are aware UTC datetimes; days are UTC dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

import anyio
from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from campaignd.stores.sql.models import (
    COUNTER_COLUMNS,
    cell_days,
    cell_minutes,
    cell_totals,
    checkpoints,
    dead_letters,
)


@dataclass(frozen=True, slots=True)
class AggregateRow:
    """One cell's counters over one minute (warm), one day (cold) or its whole life (totals)."""

    campaign_id: str
    cell_id: str
    at: datetime | date | None
    """The minute (aware UTC datetime), the day (UTC date), or None for running totals."""
    counts: tuple[int, ...]
    """Aligned with ``COUNTER_COLUMNS``; money in micros."""

    def as_dict(self) -> dict[str, int]:
        return dict(zip(COUNTER_COLUMNS, self.counts, strict=True))


RETENTION_CHUNK_ROWS = 50_000
"""Minute rows deleted per transaction by the retention (about half a second on SQLite)."""


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


class AggregateMethods:
    """Mixed into ``SqlStore`` (which provides ``engine``, ``_tx`` and the dead-letter writer)."""

    engine: AsyncEngine

    def _tx(self, doing: str) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    async def _write_dead_letters(self, conn: AsyncConnection,
                                  items: Sequence[tuple[str, bytes]], *, source: str,
                                  now: datetime, counts: Sequence[int] | None = None) -> None:
        raise NotImplementedError

    def _adding_upsert(self, table: Table, key: Sequence[str], extra: Sequence[str] = ()) -> Any:
        """INSERT … ON CONFLICT (key) DO UPDATE SET counter = counter + excluded.counter, as
        one statement for executemany (a statement built with ``.values(rows)`` would compile —
        and be cached — once per number of rows: hundreds of megabytes of compiled SQL)."""
        ins = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        stmt = ins(table)
        set_: dict[str, Any] = {c: table.c[c] + stmt.excluded[c] for c in COUNTER_COLUMNS}
        for c in extra:
            set_[c] = stmt.excluded[c]
        return stmt.on_conflict_do_update(index_elements=list(key), set_=set_)

    async def _add_rows(self, conn: AsyncConnection, table: Table, rows: list[dict[str, Any]],
                        key: Sequence[str], extra: Sequence[str] = ()) -> None:
        await conn.execute(self._adding_upsert(table, key, extra), rows)

    async def commit_ingest(self, *, minutes: Sequence[AggregateRow],
                            letters: Sequence[tuple[str, bytes]] = (),
                            letter_counts: Sequence[int] | None = None,
                            letter_source: str = "", checkpoint: tuple[str, str] | None = None,
                            more_checkpoints: Sequence[tuple[str, str]] = (),
                            delete_dead_letters: Sequence[int] = (), now: datetime) -> None:
        """Add ``minutes`` (per-cell minute rows) to the warm rows, to their days' cold rows and
        to the running totals; delete the dead letters ``delete_dead_letters`` (retried), then
        record ``letters``; set ``checkpoint`` (name, value) — all in one transaction."""
        minute_rows: list[dict[str, Any]] = []
        days: dict[tuple[str, str, date], list[int]] = {}
        totals: dict[tuple[str, str], list[int]] = {}
        for r in minutes:
            assert isinstance(r.at, datetime)
            minute_rows.append({"campaign_id": r.campaign_id, "cell_id": r.cell_id,
                                "minute": r.at, **r.as_dict()})
            for acc in (days.setdefault((r.campaign_id, r.cell_id, r.at.astimezone(UTC).date()),
                                        [0] * len(COUNTER_COLUMNS)),
                        totals.setdefault((r.campaign_id, r.cell_id),
                                          [0] * len(COUNTER_COLUMNS))):
                for j, n in enumerate(r.counts):
                    acc[j] += n
        day_rows = [{"campaign_id": c, "cell_id": cell, "day": d, "updated_at": now,
                     **dict(zip(COUNTER_COLUMNS, v, strict=True))}
                    for (c, cell, d), v in days.items()]
        total_rows = [{"campaign_id": c, "cell_id": cell, "updated_at": now,
                       **dict(zip(COUNTER_COLUMNS, v, strict=True))}
                      for (c, cell), v in totals.items()]
        async with self._tx("committing ingested events") as conn:
            if minute_rows:
                await self._add_rows(conn, cell_minutes, minute_rows,
                                     ["campaign_id", "cell_id", "minute"])
                await self._add_rows(conn, cell_days, day_rows, ["campaign_id", "cell_id", "day"],
                                     ["updated_at"])
                await self._add_rows(conn, cell_totals, total_rows, ["campaign_id", "cell_id"],
                                     ["updated_at"])
            for i in range(0, len(delete_dead_letters), 1000):
                await conn.execute(delete(dead_letters).where(
                    dead_letters.c.id.in_(list(delete_dead_letters[i:i + 1000]))))
            if letters:
                await self._write_dead_letters(conn, letters, source=letter_source, now=now,
                                               counts=letter_counts)
            for name, value in ([checkpoint] if checkpoint is not None else []) + list(
                    more_checkpoints):
                ins = (postgresql.insert if self.engine.dialect.name == "postgresql"
                       else sqlite.insert)
                stmt = ins(checkpoints).values(name=name, value=value, updated_at=now)
                await conn.execute(stmt.on_conflict_do_update(
                    index_elements=["name"], set_={"value": stmt.excluded.value,
                                                   "updated_at": stmt.excluded.updated_at}))

    async def read_cell_totals(self, campaign_id: str) -> dict[str, tuple[int, ...]]:
        """Running totals per cell id (cells with nothing counted are absent)."""
        cols = [cell_totals.c[c] for c in COUNTER_COLUMNS]
        query = select(cell_totals.c.cell_id, *cols).where(
            cell_totals.c.campaign_id == campaign_id)
        async with self._tx(f"reading the totals of {campaign_id}") as conn:
            rows = (await conn.execute(query)).all()
        return {r[0]: tuple(int(v) for v in r[1:]) for r in rows}

    async def minute_rows(self, campaign_id: str, *, since: datetime,
                          until: datetime) -> list[AggregateRow]:
        """Warm rows with ``since <= minute < until``, by minute then cell."""
        t = cell_minutes
        query = (select(t.c.cell_id, t.c.minute, *[t.c[c] for c in COUNTER_COLUMNS])
                 .where(t.c.campaign_id == campaign_id, t.c.minute >= since, t.c.minute < until)
                 .order_by(t.c.minute, t.c.cell_id))
        async with self._tx(f"reading the minutes of {campaign_id}") as conn:
            rows = (await conn.execute(query)).all()
        return [AggregateRow(campaign_id, r[0], r[1], tuple(int(v) for v in r[2:])) for r in rows]

    async def day_rows(self, campaign_id: str, *, first: date, last: date) -> list[AggregateRow]:
        """Cold rows of the days ``first``..``last`` (inclusive), by day then cell."""
        t = cell_days
        query = (select(t.c.cell_id, t.c.day, *[t.c[c] for c in COUNTER_COLUMNS])
                 .where(t.c.campaign_id == campaign_id, t.c.day >= first, t.c.day <= last)
                 .order_by(t.c.day, t.c.cell_id))
        async with self._tx(f"reading the days of {campaign_id}") as conn:
            rows = (await conn.execute(query)).all()
        return [AggregateRow(campaign_id, r[0], _as_date(r[1]), tuple(int(v) for v in r[2:]))
                for r in rows]

    async def days_changed(self, *, since: datetime | None = None,
                           ) -> list[tuple[str, date, datetime]]:
        """(campaign id, day, last change) of every cold day changed after ``since`` (all days
        when None), in the order of their last change (then day and campaign)."""
        t = cell_days
        last = func.max(t.c.updated_at)
        query = select(t.c.campaign_id, t.c.day, last).group_by(t.c.campaign_id, t.c.day)
        if since is not None:
            query = query.having(last > since)
        async with self._tx("listing changed days") as conn:
            rows = (await conn.execute(query.order_by(last, t.c.day, t.c.campaign_id))).all()
        return [(r[0], _as_date(r[1]), _aware(r[2])) for r in rows]

    async def delete_minutes_before(self, cutoff_day: date, *,
                                    chunk_rows: int = RETENTION_CHUNK_ROWS,
                                    time_budget_s: float | None = None) -> int:
        """Delete the warm rows of the days before ``cutoff_day`` (whole days only), oldest
        first, in transactions of about ``chunk_rows`` rows (whole minutes; more when one
        minute holds more); returns the rows deleted. With ``time_budget_s`` it stops after
        the chunk that used it up (the rest goes at the next call).

        One transaction for a whole day held SQLite's write lock for as long as it took --
        about 11 s per million rows, and 10,000 busy cells make 14.4 million a day -- so the
        feed's commits waited (and the status went unhealthy) and past ``tx_timeout_s`` the
        job failed every hour."""
        cutoff = day_start(cutoff_day)
        deadline = None if time_budget_s is None else anyio.current_time() + time_budget_s
        pause = 0.15 if self.engine.dialect.name == "sqlite" else 0.0
        total = 0
        while True:
            async with self._tx("deleting old minute rows") as conn:
                # the minute about ``chunk_rows`` rows in (an index scan)
                upto = (await conn.execute(
                    select(cell_minutes.c.minute).where(cell_minutes.c.minute < cutoff)
                    .order_by(cell_minutes.c.minute).offset(chunk_rows).limit(1))).scalar()
                where = (cell_minutes.c.minute < cutoff if upto is None
                         else cell_minutes.c.minute <= upto)
                result = await conn.execute(delete(cell_minutes).where(where))
            total += int(result.rowcount or 0)
            if upto is None or (deadline is not None and anyio.current_time() >= deadline):
                return total
            # (SQLite: a writer waiting for the lock retries every 100 ms at most; let it in)
            await anyio.sleep(pause)

    async def oldest_minute(self) -> datetime | None:
        async with self._tx("reading the oldest minute row") as conn:
            value = (await conn.execute(select(func.min(cell_minutes.c.minute)))).scalar()
        return None if value is None else _aware(value)

    async def reset_counts(self, campaign_id: str) -> None:
        """Forget every count of a campaign (a new sandbox market): totals, minutes and days."""
        async with self._tx(f"resetting the counts of {campaign_id}") as conn:
            for table in (cell_totals, cell_minutes, cell_days):
                await conn.execute(delete(table).where(table.c.campaign_id == campaign_id))


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, str):
        return date.fromisoformat(value[:10])
    return value


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


__all__ = ["AggregateMethods", "AggregateRow", "day_start"]
