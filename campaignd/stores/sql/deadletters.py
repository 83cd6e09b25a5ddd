"""Dead letters in SQL: every event the pipeline could not accept, kept with its reason and raw
payload (identical payloads with the same reason are one row with a count), so that nothing is
silently lost and a fixed bug can replay them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from campaignd.stores.sql.models import dead_letters


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    reason: str
    source: str
    raw: bytes
    first_seen: datetime
    last_seen: datetime
    count: int


def fingerprint(reason: str, raw: bytes) -> str:
    return hashlib.sha256(reason.encode() + b"\0" + raw).hexdigest()


class DeadLetterMethods:
    """Mixed into ``SqlStore`` (which provides ``engine`` and ``_tx``)."""

    engine: AsyncEngine

    def _tx(self, doing: str) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    async def add_dead_letters(self, items: Sequence[tuple[str, bytes]], *, source: str,
                               now: datetime) -> None:
        """Record (reason, raw payload) pairs; a payload seen again only raises its count."""
        if not items:
            return
        async with self._tx("recording dead letters") as conn:
            await self._write_dead_letters(conn, items, source=source, now=now)

    async def _write_dead_letters(self, conn: AsyncConnection,
                                  items: Sequence[tuple[str, bytes]], *, source: str,
                                  now: datetime, counts: Sequence[int] | None = None) -> None:
        """The insert-or-count statement, in the caller's transaction. ``counts`` (one per item)
        says how many events an item stands for (default 1)."""
        rows: dict[str, dict[str, Any]] = {}
        for i, (reason, raw) in enumerate(items):
            n = 1 if counts is None else int(counts[i])
            fp = fingerprint(reason, raw)
            if fp in rows:
                rows[fp]["count"] += n
            else:
                rows[fp] = {"fingerprint": fp, "reason": reason, "source": source[:255],
                            "raw": raw, "first_seen": now, "last_seen": now, "count": n}
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                  else sqlite.insert)
        # One statement for executemany (see ``AggregateMethods._adding_upsert`` on why).
        stmt = insert(dead_letters)
        stmt = stmt.on_conflict_do_update(index_elements=["fingerprint"], set_={
            "count": dead_letters.c.count + stmt.excluded.count,
            "last_seen": stmt.excluded.last_seen})
        await conn.execute(stmt, list(rows.values()))

    async def list_dead_letters(self, *, reason: str | None = None,
                                limit: int = 100) -> list[DeadLetter]:
        """Newest first."""
        query = select(dead_letters).order_by(dead_letters.c.last_seen.desc(),
                                              dead_letters.c.id.desc()).limit(limit)
        if reason is not None:
            query = query.where(dead_letters.c.reason == reason)
        async with self._tx("listing dead letters") as conn:
            rows = (await conn.execute(query)).all()
        return [_letter(r) for r in rows]

    async def get_dead_letter(self, letter_id: int) -> DeadLetter | None:
        async with self._tx(f"reading dead letter {letter_id}") as conn:
            row = (await conn.execute(select(dead_letters).where(
                dead_letters.c.id == letter_id))).first()
        return None if row is None else _letter(row)

    async def dead_letter_counts(self) -> dict[str, int]:
        """Reason → number of events (counting repeats)."""
        query = select(dead_letters.c.reason, func.sum(dead_letters.c.count)).group_by(
            dead_letters.c.reason)
        async with self._tx("counting dead letters") as conn:
            return {r: int(n) for r, n in (await conn.execute(query)).all()}

    async def archivable_dead_letters(self, *, before: datetime,
                                      limit: int = 10_000) -> list[dict[str, Any]]:
        """Up to ``limit`` dead letters last seen before ``before``, oldest first, as plain
        column dicts."""
        query = (select(dead_letters).where(dead_letters.c.last_seen < before)
                 .order_by(dead_letters.c.id).limit(limit))
        async with self._tx("reading dead letters to archive") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [dict(r) for r in rows]

    async def delete_dead_letters(self, ids: Sequence[int], *,
                                  seen_before: datetime | None = None) -> int:
        """Delete dead letters (with ``seen_before``: only those not seen again since)."""
        query = delete(dead_letters).where(dead_letters.c.id.in_(ids))
        if seen_before is not None:
            query = query.where(dead_letters.c.last_seen < seen_before)
        async with self._tx("deleting dead letters") as conn:
            result = await conn.execute(query)
        return int(result.rowcount or 0)


def _letter(r: Any) -> DeadLetter:
    return DeadLetter(id=int(r.id), reason=r.reason, source=r.source, raw=bytes(r.raw),
                      first_seen=r.first_seen, last_seen=r.last_seen, count=int(r.count))


__all__ = ["DeadLetter", "DeadLetterMethods", "fingerprint"]
