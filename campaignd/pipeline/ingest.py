"""Event ingestion: DSP log feed → decode → validate → dedupe → aggregate → registry + hot store.

Reads the adapter's resumable feed in batches, decodes with the msgspec Structs of
``pipeline.schema``, drops what cannot be attributed (counted by reason), removes at-least-once
duplicates (``auction_adgroup_id`` for impressions, activities and clicks; ``conversion_id`` for
conversions) through the hot store's ``mark_seen`` window, adds the counts to the campaign's
``CellTable`` and to the hot store, then checkpoints the cursor in SQL. Nothing in a message can
crash the loop; DSP failures are retried with backoff.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import numpy as np
from anyio.abc import TaskStatus

from campaignd.clock import Clock
from campaignd.domain.cells import CellTable
from campaignd.errors import DSPError, StorageError
from campaignd.logs import get_logger
from campaignd.metrics import Metrics
from campaignd.pipeline.schema import AdLogMessage, decode_message

log = get_logger("campaignd.ingest")

DEDUPE_WINDOW_S = 72 * 3600
"""Beeswax accepts impression notifications up to 72 h after the auction: dedupe that long."""
MAX_FUTURE_S = 3600
MAX_IMPRESSION_PRICE_MICROS = 1_000_000_000
"""$1,000 for one impression: anything above is a corrupt record, not a price."""
MAX_CONVERSION_VALUE_MICROS = 1_000_000 * 1_000_000
"""$1,000,000 for one conversion."""
ACTIVITY_METRIC = {"START": "starts", "Q1": "q1", "MID": "mid", "Q3": "q3",
                   "COMPLETE": "completes", "VIEWABILITY": "viewable"}


@dataclass(slots=True)
class _Target:
    table: CellTable
    position: int
    cell_id: str


class EventIngestor:
    def __init__(self, *, adapter: Any, sql: Any, hot: Any, metrics: Metrics, clock: Clock,
                 poll_s: float = 1.0, batch: int = 5000, checkpoint: str = "events",
                 time_scale: float = 1.0) -> None:
        self.adapter = adapter
        self.sql = sql
        self.hot = hot
        self.metrics = metrics
        self.clock = clock
        self.poll_s = poll_s
        self.batch = batch
        self.checkpoint_name = checkpoint
        self.time_scale = time_scale
        """DSP seconds per real second (the sandbox's speed-up); lag is reported in real s."""
        self.cursor: str | None = None
        self._targets: dict[int, _Target] = {}
        self.ingested = 0
        self.duplicates = 0
        self.dead: Counter[str] = Counter()
        self.lag_s: float | None = None
        self.last_error: str | None = None
        self._letters: list[tuple[str, bytes]] = []

    def register(self, table: CellTable, line_items: Mapping[int, str]) -> None:
        """Route events of these DSP line item ids to the table's cells."""
        for li, cell_id in line_items.items():
            self._targets[int(li)] = _Target(table, table.index[cell_id], cell_id)

    def status(self) -> dict[str, Any]:
        return {"ingested": self.ingested, "duplicates": self.duplicates,
                "dead_lettered": sum(self.dead.values()), "dead_by_reason": dict(self.dead),
                "lag_s": None if self.lag_s is None else round(self.lag_s, 3),
                "cursor": self.cursor, "last_error": self.last_error}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.cursor = await self.sql.get_checkpoint(self.checkpoint_name)
        task_status.started()
        backoff = self.poll_s
        while True:
            await anyio.lowlevel.checkpoint()  # a cancelled loop stops here, not mid-batch
            try:
                n = await self.poll_once()
                self.last_error = None
                backoff = self.poll_s
            except (DSPError, StorageError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("event ingestion failed; retrying", error=self.last_error,
                            retry_in_s=backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            except Exception as exc:  # a bug must not take the daemon down with it
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("event ingestion failed unexpectedly; retrying",
                          error=self.last_error, retry_in_s=backoff, exc_info=True)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            if n < self.batch:
                await anyio.sleep(self.poll_s)

    async def poll_once(self) -> int:
        """Read and ingest one batch; returns the number of raw messages read."""
        batch = await self.adapter.read_events(self.cursor, limit=self.batch)
        if batch.skipped:
            # The DSP no longer held these: there is no payload to keep, only the count.
            self.dead["lost_before_read"] += batch.skipped
            self.metrics.events_dead.labels("lost_before_read").inc(batch.skipped)
        await self.ingest(batch.messages)
        self.cursor = batch.next_cursor
        await self.sql.set_checkpoint(self.checkpoint_name, batch.next_cursor)
        return len(batch.messages)

    def _dead(self, reason: str, raw: bytes | str) -> None:
        """Count a refused event and keep its raw payload for the SQL dead-letter table."""
        self.dead[reason] += 1
        self.metrics.events_dead.labels(reason).inc()
        self._letters.append((reason, raw.encode() if isinstance(raw, str) else bytes(raw)))

    async def _store_letters(self) -> None:
        letters, self._letters = self._letters, []
        if letters and self.sql is not None:
            await self.sql.add_dead_letters(letters, source=self.checkpoint_name,
                                            now=self.clock.now())

    async def ingest(self, raws: Sequence[bytes]) -> None:
        now_us = int(self.clock.now().timestamp() * 1_000_000)
        keyed: list[tuple[str, AdLogMessage, _Target, int]] = []
        for raw in raws:
            try:
                m = decode_message(raw)
            except msgspec.DecodeError:
                self._dead("malformed", raw)
                continue
            item = self._classify(m, raw, now_us)
            if item is not None:
                keyed.append(item)
        # Refused events are stored before anything else can fail: nothing is lost.
        await self._store_letters()
        if not keyed:
            return
        fresh = await self.hot.mark_seen("events", [k for k, *_ in keyed], DEDUPE_WINDOW_S)
        per_cell: dict[str, dict[str, dict[str, int]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(int)))
        newest_us = 0
        kinds: Counter[str] = Counter()
        for (_, m, target, ts_us), is_new in zip(keyed, fresh, strict=True):
            if not is_new:
                self.duplicates += 1
                continue
            counts = per_cell[target.table.campaign_id][target.cell_id]
            kind = m.kind
            kinds[kind] += 1
            if kind == "impression":
                imp = m.impression
                assert imp is not None
                counts["impressions"] += 1
                counts["measurable"] += 1
                counts["spend_micros"] += int(imp.win_price_micros_usd or 0)
            elif kind == "activity":
                metric = ACTIVITY_METRIC.get(m.activity[0].type)
                if metric:
                    counts[metric] += 1
            elif kind == "click":
                counts["clicks"] += 1
            elif kind == "conversion":
                conv = m.conversion
                assert conv is not None
                counts["conversions"] += 1
                counts["conversion_value_micros"] += conv.value_in_micros() or 0  # validated
            newest_us = max(newest_us, ts_us)
        dup = len(keyed) - sum(kinds.values())
        if dup:
            self.metrics.events_duplicate.inc(dup)
        for kind, n in kinds.items():
            self.metrics.events_ingested.labels(kind).inc(n)
        self.ingested += sum(kinds.values())
        at = int(self.clock.now().timestamp())
        for campaign_id, cells in per_cell.items():
            plain = {cid: dict(c) for cid, c in cells.items()}
            table = next(t.table for t in self._targets.values()
                         if t.table.campaign_id == campaign_id)
            for cid, c in plain.items():
                pos = np.array([table.index[cid]])
                for metric, n in c.items():
                    table.add(pos, metric, n)
            await self.hot.add_counts(campaign_id, plain, at_epoch_s=at)
        if newest_us:
            self.lag_s = max(0.0, (now_us - newest_us) / 1e6 / self.time_scale)
            self.metrics.event_lag.set(self.lag_s)

    def _classify(self, m: AdLogMessage, raw: bytes | str,
                  now_us: int) -> tuple[str, AdLogMessage, _Target, int] | None:
        kind = m.kind
        if kind == "impression":
            part: Any = m.impression
            key = part.adgroup_key()
            ag, ts = part.adgroupid, part.rx_timestamp_usecs
            li = ag.lineitemid if ag else None
            if part.win_price_micros_usd is not None:
                try:
                    price = int(part.win_price_micros_usd)
                except ValueError:
                    self._dead("bad_money", raw)
                    return None
                if not 0 <= price <= MAX_IMPRESSION_PRICE_MICROS:
                    self._dead("bad_money", raw)
                    return None
            dedupe = f"i:{key}"
        elif kind == "activity":
            part = m.activity[0]
            key = part.adgroup_key()
            ag, ts = part.adgroupid, part.rx_timestamp_usecs
            li = ag.lineitemid if ag else _li_from_key(key)
            dedupe = f"a:{part.type}:{key}"
        elif kind == "click":
            part = m.clicks[0]
            key = part.adgroup_key()
            ag, ts = part.adgroupid, part.rx_timestamp_usecs
            li = ag.lineitemid if ag else _li_from_key(key)
            dedupe = f"c:{key}"
        elif kind == "conversion":
            part = m.conversion
            key = part.conversion_id
            ts = part.rx_timestamp or part.rx_timestamp_usecs
            li = _li_from_key(part.auction_adgroup_id)
            dedupe = f"v:{key}"
            if part.value is not None or part.value_micros is not None:
                try:
                    value = part.value_in_micros()
                except (OverflowError, ValueError):
                    value = None
                if value is None or not 0 <= value <= MAX_CONVERSION_VALUE_MICROS:
                    self._dead("bad_money", raw)
                    return None
        else:
            self._dead("empty_message", raw)
            return None
        if not key:
            self._dead("missing_dedupe_key", raw)
            return None
        try:
            li_id = int(li) if li is not None else None
            ts_us = int(ts) if ts is not None else None
        except ValueError:
            self._dead("wrong_type", raw)
            return None
        if ts_us is None:
            self._dead("missing_timestamp", raw)
            return None
        if ts_us > now_us + MAX_FUTURE_S * 1_000_000:
            self._dead("timestamp_in_future", raw)
            return None
        if ts_us < now_us - DEDUPE_WINDOW_S * 1_000_000:
            self._dead("timestamp_too_old", raw)
            return None
        target = self._targets.get(li_id) if li_id is not None else None
        if target is None:
            self._dead("unknown_line_item", raw)
            return None
        return dedupe, m, target, ts_us

    async def flush(self) -> None:
        """Persist the cursor (called at shutdown)."""
        if self.cursor is not None:
            with contextlib.suppress(Exception):
                await self.sql.set_checkpoint(self.checkpoint_name, self.cursor)


def _li_from_key(key: str | None) -> str | None:
    """The line item id is the last part of ``<auction_id>.<account>.<campaign>.<line_item>``."""
    if not key:
        return None
    return key.rsplit(".", 1)[-1]
