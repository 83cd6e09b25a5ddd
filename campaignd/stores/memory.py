"""The in-memory hot store: the reference implementation and the embedded default.

Single-process only. Time comes from an injected ``Clock`` (``monotonic()`` for the TTLs of
records and buckets, ``now()`` for dedupe marks, which can outlive the process), so under a
``VirtualClock`` expiry is exact and needs no sleeping. Memory is bounded: expired entries are
purged as the clock moves (cheaply, from a heap ordered by expiry), and dedupe marks are also
capped at ``max_seen`` entries, evicting the soonest-expiring first (about 190 bytes a mark with a
60-character id: a dict entry, the id, a slot in its batch).

Dedupe marks survive a restart when ``seen_dir`` names a directory: every new mark is appended
to a segmented log there before ``mark_seen`` returns (like Redis's append-only file), replayed
at start; see ``campaignd.stores.marklog``.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from campaignd.clock import Clock, SystemClock
from campaignd.errors import StorageError
from campaignd.logs import get_logger
from campaignd.stores.base import (
    BUCKET_TTL_S,
    SECOND_BUCKET_TTL_S,
    HotStore,
    check_ttl,
    window_buckets,
)
from campaignd.stores.marklog import MarkLog

log = get_logger("campaignd.hot")

DEFAULT_MAX_SEEN = 1_000_000


# (campaign_id, "s" | "m", epoch second or minute)
_BucketKey = tuple[str, str, int]


class _Batch:
    """The marks one ``mark_seen`` call made: they expire together."""

    __slots__ = ("expires", "held", "ids", "start")

    def __init__(self, expires: float, held: dict[str, int], ids: list[str]) -> None:
        self.expires = expires
        self.held = held
        self.ids = ids
        self.start = 0
        """``ids[:start]`` were evicted already (the cap)."""


def _expiry(batch: _Batch) -> float:
    return batch.expires


class _Marks:
    """Dedupe marks: per namespace a plain dict id → stream position (-1: none); expiry and the
    cap kept per batch, in a deque ordered by expiry (for expiry) and one in the order the
    batches were made (for the cap), so a mark costs one dict entry and one list slot (no tuple
    per mark, nothing for the cyclic GC to walk, no ``OrderedDict`` node; against an
    ``OrderedDict`` of ``(namespace, id) -> (expiry, position)``: 1,500 fewer instructions per
    event in the pipeline, ~190 bytes a mark instead of ~350).

    Every held id sits in exactly one batch's live ids (``ids[start:]``): a new mark is only
    made for an id not held, and an id leaves the dict only with its batch (expiry) or from the
    front of the oldest-made batch (the cap). The cap forgets the oldest-made marks, not the
    soonest-expiring: marks that expire later than new ones (restored after the window was
    shortened, or a sandbox market restarted behind the last run's sped-up clock) would
    otherwise make every new batch the first to go, and nothing would be deduplicated."""

    def __init__(self) -> None:
        self.by_namespace: dict[str, dict[str, int]] = {}
        self.batches: deque[_Batch] = deque()
        self.made: deque[_Batch] = deque()
        """The same batches in the order they were made (exhausted ones dropped lazily)."""
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add_batch(self, held: dict[str, int], ids: list[str], expires: float) -> None:
        batch = _Batch(expires, held, ids)
        batches = self.batches
        if not batches or batches[-1].expires <= expires:
            batches.append(batch)
        else:  # an earlier expiry after a later one: keep the deque ordered by expiry
            # (a shorter TTL, or a sandbox market restarted behind the last run's clock)
            batches.insert(bisect.bisect_right(batches, expires, key=_expiry), batch)
        self.made.append(batch)
        self.n += len(ids)

    def oldest(self) -> _Batch | None:
        """The oldest-made batch with live marks."""
        made = self.made
        while made and made[0].start >= len(made[0].ids):
            made.popleft()
        return made[0] if made else None

    def restore(self, entries: Iterable[tuple[str, str, float, int]], cap: int) -> None:
        """The marks replayed from the log, oldest first: (namespace, id, expiry, position).

        One batch per namespace and expiry (a log line's marks share one), added in order of
        expiry, then the cap. The log is in the order marks were made, not of expiry: a
        sandbox market restarts at the wall clock, behind the last run's sped-up market time,
        so a restarted sandbox's marks expire before the last run's. Placing them one by one
        made a batch per mark, each inserted by a scan of the deque: a quadratic start that
        took minutes after a few sandbox runs."""
        assert not self.batches, "restore() is for an empty store"
        groups: dict[tuple[str, float], list[str]] = {}
        for namespace, id_, expires, pos in entries:
            held = self.by_namespace.setdefault(namespace, {})
            if id_ in held:  # written again after an eviction: the newer position wins
                held[id_] = pos
                continue
            held[id_] = pos
            ids = groups.get((namespace, expires))
            if ids is None:
                ids = groups[(namespace, expires)] = []
            ids.append(id_)
        # the cap's order is the log's (a group where its first mark was written); expiry's
        # is sorted once
        made = [_Batch(expires, self.by_namespace[namespace], ids)
                for (namespace, expires), ids in groups.items()]
        self.made.extend(made)
        self.batches.extend(sorted(made, key=_expiry))
        self.n += sum(len(b.ids) for b in made)
        self.evict(cap)

    def purge(self, now: float) -> None:
        """Drop every batch whose marks have expired."""
        batches = self.batches
        while batches and batches[0].expires <= now:
            batch = batches.popleft()
            pop = batch.held.pop
            for id_ in batch.ids[batch.start:]:
                pop(id_, None)
            self.n -= len(batch.ids) - batch.start
            batch.ids, batch.start = [], 0  # (left in ``made`` until it reaches the front)

    def evict(self, cap: int) -> int:
        """Forget the oldest-made marks until at most ``cap`` are held; returns how many
        (marks not yet expired: a redelivery of one is counted again). A batch emptied here
        stays in the expiry deque, holding nothing, until it expires."""
        evicted = 0
        while self.n > cap:
            batch = self.oldest()
            assert batch is not None
            take = min(self.n - cap, len(batch.ids) - batch.start)
            evicted += take
            pop = batch.held.pop
            for id_ in batch.ids[batch.start:batch.start + take]:
                pop(id_, None)
            batch.start += take
            self.n -= take
            if batch.start >= len(batch.ids):
                batch.ids, batch.start = [], 0  # (its memory back now, not at its expiry)
                self.made.popleft()
        return evicted


class InMemoryHotStore(HotStore):
    def __init__(self, clock: Clock | None = None, *, max_seen: int = DEFAULT_MAX_SEEN,
                 seen_dir: Path | str | None = None) -> None:
        if max_seen <= 0:
            raise ValueError(f"max_seen must be greater than 0 (got {max_seen!r})")
        self.clock: Clock = clock or SystemClock()
        self.max_seen = max_seen
        self.evictions = 0
        """Batches that made the cap forget marks still inside their window."""
        self._eviction_logged_at = -math.inf
        self._json: dict[str, tuple[str, float | None]] = {}
        self._marks = _Marks()
        self._log: MarkLog | None = None
        if seen_dir is not None:
            self._log = MarkLog(Path(seen_dir), keep=max_seen)
            self._marks.restore(self._log.replay(self.clock.now().timestamp()), max_seen)
        self._totals: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        self._cells: dict[str, dict[str, int]] = {}
        self._metrics: dict[str, int] = {}
        self._metric_names: list[str] = []
        self._blocks: dict[_BucketKey, _Block] = {}
        # (expiry, key) for every live bucket; a refreshed bucket's entry is stale and re-pushed.
        self._bucket_expiry: list[tuple[float, _BucketKey]] = []

    async def ping(self) -> None:
        return None

    async def sync(self) -> None:
        """fsync the dedupe-mark log (``MarkLog.sync``), off the event loop."""
        if self._log is None:
            return
        log_dir = self._log.directory
        try:
            await anyio.to_thread.run_sync(MarkLog.sync, self._log.sync_handles())
        except OSError as exc:
            raise StorageError(
                f"cannot make the dedupe marks in {log_dir} durable: {exc.strerror or exc}; "
                "check the disk under state_dir -- counting resumes by itself") from exc

    async def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # --- JSON records ---------------------------------------------------------------------

    async def set_json(self, key: str, value: Mapping[str, Any],
                       ttl_s: float | None = None) -> None:
        if ttl_s is not None:
            check_ttl(ttl_s)
        expires = None if ttl_s is None else self.clock.monotonic() + ttl_s
        self._json[key] = (json.dumps(value), expires)

    async def get_json(self, key: str) -> dict[str, Any] | None:
        entry = self._json.get(key)
        if entry is None:
            return None
        text, expires = entry
        if expires is not None and expires <= self.clock.monotonic():
            del self._json[key]
            return None
        return json.loads(text)

    # --- dedupe ---------------------------------------------------------------------------

    async def mark_seen(self, namespace: str, ids: Sequence[str], ttl_s: float, *,
                        positions: Sequence[int] | None = None,
                        hours: Sequence[int] | None = None) -> list[bool]:
        check_ttl(ttl_s)
        now = self.clock.now().timestamp()
        marks = self._marks
        marks.purge(now)
        held = marks.by_namespace.get(namespace)
        if held is None:
            held = marks.by_namespace[namespace] = {}
        get = held.get
        out: list[bool] = []
        add = out.append
        new_ids: list[str] = []
        new = new_ids.append
        new_pos: list[int] = []
        if positions is None:
            for id_ in ids:
                if get(id_) is None:
                    held[id_] = -1
                    new(id_)
                    add(True)
                else:
                    add(False)
        else:
            at = new_pos.append
            for id_, pos in zip(ids, positions, strict=True):
                old = get(id_)
                if old is None:
                    held[id_] = pos
                    new(id_)
                    at(pos)
                    add(True)
                else:
                    # the same delivery read again (same position) is new again
                    add(pos >= 0 and old == pos)
        if new_ids:
            expires = now + ttl_s
            if self._log is not None:  # before the cap may forget some of them
                try:
                    self._log.append(namespace, new_ids, new_pos or [-1] * len(new_ids),
                                     expires, now)
                except OSError as exc:
                    # (a full or read-only disk) not marked, so not counted: the batch is
                    # retried as it is once the log can be written again
                    for id_ in new_ids:
                        del held[id_]
                    raise StorageError(
                        f"cannot write the dedupe marks in {self._log.directory}: "
                        f"{exc.strerror or exc}; free space on that disk or make it writable "
                        "again (state_dir) -- counting resumes by itself") from exc
            marks.add_batch(held, new_ids, expires)
            if marks.evict(self.max_seen):
                self._evicted(now, ttl_s)
        return out

    def _evicted(self, now: float, ttl_s: float) -> None:
        """Marks still inside the window were forgotten for the cap: say so (at most hourly),
        with how much of the window the cap covers."""
        self.evictions += 1
        if now - self._eviction_logged_at < 3600:
            return
        self._eviction_logged_at = now
        first = self._marks.oldest()
        oldest = first.expires - ttl_s if first is not None else now
        covered_h = max(0.0, now - oldest) / 3600
        log.warning("dedupe marks forgotten before their window ends",
                    max_seen=self.max_seen, covers_hours=round(covered_h, 1),
                    window_hours=round(ttl_s / 3600, 1),
                    fix="a redelivery older than that is counted again: raise "
                        "pipeline.max_seen (about 190 bytes of memory a mark) or use Redis "
                        "(redis.url)")

    def marks_held(self) -> int:
        """Dedupe marks in memory (all namespaces)."""
        return len(self._marks)

    # --- per-cell counters and buckets ----------------------------------------------------
    # A bucket is one block per (campaign, "s" | "m", second or minute): the cells that had
    # counts (sorted indices) and a counts matrix with a "seen" mask (a metric written with 0
    # still appears). About 8 bytes per cell and metric, against ~1 KB per cell for a dict of
    # dicts — 432 busy cells' 30 minutes of seconds and 24 hours of minutes take ~140 MB.

    def _cell_index(self, campaign_id: str, cell_ids: Sequence[str]) -> np.ndarray:
        index = self._cells.setdefault(campaign_id, {})
        return np.fromiter((index.setdefault(c, len(index)) for c in cell_ids),
                           dtype=np.int64, count=len(cell_ids))

    def _metric_index(self, name: str) -> int:
        i = self._metrics.get(name)
        if i is None:
            i = self._metrics[name] = len(self._metric_names)
            self._metric_names.append(name)
        return i

    def _write(self, campaign_id: str, kind: str, slot: int,
               counts: Mapping[str, Mapping[str, int]], expires: float) -> None:
        cell_ids = [c for c, m in counts.items() if m]
        if not cell_ids:
            return
        rows = self._cell_index(campaign_id, cell_ids)
        cols = [[self._metric_index(m) for m in counts[c]] for c in cell_ids]
        width = len(self._metric_names)
        values = np.zeros((len(cell_ids), width), dtype=np.int64)
        seen = np.zeros((len(cell_ids), width), dtype=bool)
        for r, (c, ci) in enumerate(zip(cell_ids, cols, strict=True)):
            values[r, ci] = list(counts[c].values())
            seen[r, ci] = True
        order = np.argsort(rows, kind="stable")
        rows, values, seen = rows[order], values[order], seen[order]
        key = (campaign_id, kind, slot)
        old = self._blocks.get(key)
        if old is not None:
            rows, values, seen = _merge(old, rows, values, seen, width)
        else:
            heapq.heappush(self._bucket_expiry, (expires, key))
        self._blocks[key] = _Block(rows, values, seen, expires)

    def _buckets_add(self, campaign_id: str,
                     by_second: Mapping[int, Mapping[str, Mapping[str, int]]], ttl_s: float,
                     ) -> None:
        check_ttl(ttl_s)
        now = self.clock.monotonic()
        self._purge_buckets(now)
        minutes: dict[int, dict[str, dict[str, int]]] = {}
        for at, counts in by_second.items():
            self._write(campaign_id, "s", int(at), counts,
                        now + min(ttl_s, SECOND_BUCKET_TTL_S))
            per = minutes.setdefault(int(at) // 60, {})
            for cell_id, metrics in counts.items():
                _add(per.setdefault(cell_id, {}), metrics)
        for minute, counts in minutes.items():
            self._write(campaign_id, "m", minute, counts, now + ttl_s)

    async def add_counts(self, campaign_id: str, counts: Mapping[str, Mapping[str, int]], *,
                         at_epoch_s: int, ttl_s: int = BUCKET_TTL_S) -> None:
        check_ttl(ttl_s)
        totals = self._totals[campaign_id]
        for cell_id, metrics in counts.items():
            _add(totals.setdefault(cell_id, {}), metrics)
        self._buckets_add(campaign_id, {at_epoch_s: counts}, ttl_s)

    async def add_buckets(self, campaign_id: str,
                          by_second: Mapping[int, Mapping[str, Mapping[str, int]]], *,
                          ttl_s: int = BUCKET_TTL_S) -> None:
        self._buckets_add(campaign_id, by_second, ttl_s)

    def _purge_buckets(self, now: float) -> None:
        heap = self._bucket_expiry
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            block = self._blocks.get(key)
            if block is None:
                continue
            if block.expires <= now:
                del self._blocks[key]
            else:  # written again since: wait for its new expiry
                heapq.heappush(heap, (block.expires, key))

    async def set_totals(self, campaign_id: str,
                         totals: Mapping[str, Mapping[str, int]]) -> None:
        mine = self._totals[campaign_id]
        for cell_id, metrics in totals.items():
            if metrics:
                mine.setdefault(cell_id, {}).update({m: int(n) for m, n in metrics.items()})

    async def cell_totals(self, campaign_id: str, cell_id: str) -> dict[str, int]:
        return dict(self._totals.get(campaign_id, {}).get(cell_id, {}))

    async def cell_window(self, campaign_id: str, cell_id: str, *, since_epoch_s: int,
                          until_epoch_s: int, now_epoch_s: int | None = None) -> dict[str, int]:
        kind, slots = window_buckets(since_epoch_s, until_epoch_s, now_epoch_s)
        self._purge_buckets(self.clock.monotonic())
        idx = self._cells.get(campaign_id, {}).get(cell_id)
        if idx is None:
            return {}
        width = len(self._metric_names)
        total = np.zeros(width, dtype=np.int64)
        seen = np.zeros(width, dtype=bool)
        blocks = self._blocks
        for slot in slots:
            block = blocks.get((campaign_id, kind, slot))
            if block is None:
                continue
            j = int(np.searchsorted(block.rows, idx))
            if j < block.rows.size and block.rows[j] == idx:
                w = block.values.shape[1]
                total[:w] += block.values[j]
                seen[:w] |= block.seen[j]
        names = self._metric_names
        return {names[i]: int(total[i]) for i in np.flatnonzero(seen)}

    async def campaign_totals(self, campaign_id: str) -> dict[str, dict[str, int]]:
        return {cell: dict(m) for cell, m in self._totals.get(campaign_id, {}).items()}


class _Block:
    __slots__ = ("expires", "rows", "seen", "values")

    def __init__(self, rows: np.ndarray, values: np.ndarray, seen: np.ndarray,
                 expires: float) -> None:
        self.rows = rows
        self.values = values
        self.seen = seen
        self.expires = expires


def _merge(old: _Block, rows: np.ndarray, values: np.ndarray, seen: np.ndarray,
           width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``old`` plus new rows (sorted, unique), widened to ``width`` metrics."""
    all_rows = np.union1d(old.rows, rows)
    v = np.zeros((all_rows.size, width), dtype=np.int64)
    m = np.zeros((all_rows.size, width), dtype=bool)
    a = np.searchsorted(all_rows, old.rows)
    w = old.values.shape[1]
    v[a, :w] = old.values
    m[a, :w] = old.seen
    b = np.searchsorted(all_rows, rows)
    v[b] += values
    m[b] |= seen
    return all_rows, v, m


def _add(into: dict[str, int], metrics: Mapping[str, int]) -> None:
    for metric, n in metrics.items():
        into[metric] = into.get(metric, 0) + int(n)
