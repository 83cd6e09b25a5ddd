"""The in-memory hot store: the reference implementation and the embedded default.

Single-process only. Time comes from an injected ``Clock`` (``monotonic()`` for the TTLs of
records and buckets, ``now()`` for dedupe marks, which can outlive the process), so under a
``VirtualClock`` expiry is exact and needs no sleeping. Memory is bounded: expired entries are
purged as the clock moves (cheaply, from a heap ordered by expiry), and dedupe marks are also
capped at ``max_seen`` entries, evicting the oldest marks first (about 250 bytes a mark).

Dedupe marks survive a restart when ``seen_dir`` names a directory: every new mark is appended
to a segmented log there before ``mark_seen`` returns (like Redis's append-only file), replayed
at start; see ``campaignd.stores.marklog``.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

from campaignd.clock import Clock, SystemClock
from campaignd.stores.base import BUCKET_TTL_S, HotStore, check_ttl, window_buckets
from campaignd.stores.marklog import MarkLog

DEFAULT_MAX_SEEN = 1_000_000


# (campaign_id, cell_id, "s" | "m", epoch second or minute)
_BucketKey = tuple[str, str, str, int]


class InMemoryHotStore(HotStore):
    def __init__(self, clock: Clock | None = None, *, max_seen: int = DEFAULT_MAX_SEEN,
                 seen_dir: Path | str | None = None) -> None:
        if max_seen <= 0:
            raise ValueError(f"max_seen must be greater than 0 (got {max_seen!r})")
        self.clock: Clock = clock or SystemClock()
        self.max_seen = max_seen
        self._json: dict[str, tuple[str, float | None]] = {}
        # (namespace, id) -> (expiry as epoch seconds, stream position or -1); insertion order
        # is age, for the max_seen cap.
        self._seen: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()
        self._log: MarkLog | None = None
        if seen_dir is not None:
            self._log = MarkLog(Path(seen_dir), keep=max_seen)
            seen = self._seen
            for ns, id_, exp, pos in self._log.replay(self.clock.now().timestamp()):
                seen.pop((ns, id_), None)
                seen[(ns, id_)] = (exp, pos)
                if len(seen) > max_seen:
                    seen.popitem(last=False)
        self._totals: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        self._buckets: dict[_BucketKey, tuple[dict[str, int], float]] = {}
        # (expiry, key) for every live bucket; a refreshed bucket's entry is stale and re-pushed.
        self._bucket_expiry: list[tuple[float, _BucketKey]] = []

    async def ping(self) -> None:
        return None

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
                        positions: Sequence[int] | None = None) -> list[bool]:
        check_ttl(ttl_s)
        now = self.clock.now().timestamp()
        self._purge_seen(now)
        expires = now + ttl_s
        seen = self._seen
        setdefault = seen.setdefault
        out: list[bool] = []
        add = out.append
        logging = self._log is not None
        new_ids: list[str] = []
        new_pos: list[int] = []
        for id_, pos in zip(ids, positions if positions is not None else repeat(-1),
                            strict=False):
            key = (namespace, id_)
            mark = (expires, pos)
            old = setdefault(key, mark)
            if old is not mark:
                if old[0] > now:
                    add(pos >= 0 and old[1] == pos)
                    continue
                # expired but not yet purged (a longer TTL was ahead of it): a new mark
                del seen[key]
                seen[key] = mark
            add(True)
            if logging:
                new_ids.append(id_)
                new_pos.append(pos)
        while len(seen) > self.max_seen:
            seen.popitem(last=False)
        if logging and new_ids:
            assert self._log is not None
            self._log.append(namespace, new_ids, new_pos, expires, now)
        return out

    def _purge_seen(self, now: float) -> None:
        # Oldest first; stops at the first live mark. With mixed TTLs a few expired marks may
        # wait behind a live one: they are still treated as unseen, and the cap bounds them.
        seen = self._seen
        while seen:
            key, (expires, _) = next(iter(seen.items()))
            if expires > now:
                break
            del seen[key]

    # --- per-cell counters and buckets ----------------------------------------------------

    async def add_counts(self, campaign_id: str, counts: Mapping[str, Mapping[str, int]], *,
                         at_epoch_s: int, ttl_s: int = BUCKET_TTL_S) -> None:
        check_ttl(ttl_s)
        now = self.clock.monotonic()
        self._purge_buckets(now)
        expires = now + ttl_s
        totals = self._totals[campaign_id]
        for cell_id, metrics in counts.items():
            cell_totals = totals.setdefault(cell_id, {})
            _add(cell_totals, metrics)
            self._bucket_add(campaign_id, cell_id, at_epoch_s, metrics, expires)

    def _purge_buckets(self, now: float) -> None:
        heap = self._bucket_expiry
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            entry = self._buckets.get(key)
            if entry is None:
                continue
            if entry[1] <= now:
                del self._buckets[key]
            else:  # written again since: wait for its new expiry
                heapq.heappush(heap, (entry[1], key))

    async def add_buckets(self, campaign_id: str,
                          by_second: Mapping[int, Mapping[str, Mapping[str, int]]], *,
                          ttl_s: int = BUCKET_TTL_S) -> None:
        check_ttl(ttl_s)
        now = self.clock.monotonic()
        self._purge_buckets(now)
        expires = now + ttl_s
        for at_epoch_s, counts in by_second.items():
            for cell_id, metrics in counts.items():
                self._bucket_add(campaign_id, cell_id, int(at_epoch_s), metrics, expires)

    def _bucket_add(self, campaign_id: str, cell_id: str, at_epoch_s: int,
                    metrics: Mapping[str, int], expires: float) -> None:
        for key in ((campaign_id, cell_id, "s", at_epoch_s),
                    (campaign_id, cell_id, "m", at_epoch_s // 60)):
            entry = self._buckets.get(key)
            bucket = entry[0] if entry is not None else {}
            _add(bucket, metrics)
            self._buckets[key] = (bucket, expires)
            if entry is None:
                heapq.heappush(self._bucket_expiry, (expires, key))

    async def set_totals(self, campaign_id: str,
                         totals: Mapping[str, Mapping[str, int]]) -> None:
        mine = self._totals[campaign_id]
        for cell_id, metrics in totals.items():
            if metrics:
                mine.setdefault(cell_id, {}).update({m: int(n) for m, n in metrics.items()})

    async def cell_totals(self, campaign_id: str, cell_id: str) -> dict[str, int]:
        return dict(self._totals.get(campaign_id, {}).get(cell_id, {}))

    async def cell_window(self, campaign_id: str, cell_id: str, *, since_epoch_s: int,
                          until_epoch_s: int) -> dict[str, int]:
        kind, slots = window_buckets(since_epoch_s, until_epoch_s)
        self._purge_buckets(self.clock.monotonic())
        out: dict[str, int] = {}
        for slot in slots:
            entry = self._buckets.get((campaign_id, cell_id, kind, slot))
            if entry is not None:
                _add(out, entry[0])
        return out

    async def campaign_totals(self, campaign_id: str) -> dict[str, dict[str, int]]:
        return {cell: dict(m) for cell, m in self._totals.get(campaign_id, {}).items()}


def _add(into: dict[str, int], metrics: Mapping[str, int]) -> None:
    for metric, n in metrics.items():
        into[metric] = into.get(metric, 0) + int(n)
