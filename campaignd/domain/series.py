"""Keyed time series: per-key counters in fixed time buckets (a ring), plus running totals.

The registry keeps one per campaign for creatives (creative fatigue: CTR and completion rate of
each creative hour by hour) and one for ZIP codes (audience discovery: which ZIPs convert).
``KeyedSeries(keys, n_metrics, bucket_s=3600, span=72)`` holds the last ``span`` buckets of
``bucket_s`` seconds for every key; a bucket that falls out of the ring is forgotten (the
totals keep everything). Memory is ``keys × span × metrics`` int64.

Pure numpy; times are epoch seconds given by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    """An immutable copy: ``values[k, t, m]`` is key ``keys[k]``'s metric ``m`` in the bucket
    starting at ``starts[t]`` (oldest first; buckets never written are zeros)."""

    keys: tuple[str, ...]
    bucket_s: int
    starts: np.ndarray
    """Epoch seconds, int64, ascending."""
    values: np.ndarray
    totals: np.ndarray
    """``totals[k, m]``: everything ever added for key ``k``."""

    def index(self, key: str) -> int:
        return self.keys.index(key)


class KeyedSeries:
    def __init__(self, keys: Sequence[str], n_metrics: int, *, bucket_s: int = 3600,
                 span: int = 72) -> None:
        if bucket_s <= 0 or span <= 0:
            raise ValueError("bucket_s and span must be positive")
        self.keys: tuple[str, ...] = tuple(keys)
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        if len(self.key_index) != len(self.keys):
            raise ValueError("keys must be unique")
        self.bucket_s = bucket_s
        self.span = span
        self._data = np.zeros((len(self.keys), span, n_metrics), dtype=np.int64)
        self._bucket_of = np.full(span, -1, dtype=np.int64)
        self._newest = -1
        self.totals = np.zeros((len(self.keys), n_metrics), dtype=np.int64)

    def _slot(self, at_s: int) -> int | None:
        """The ring slot of ``at_s``'s bucket, or None when it is older than the ring."""
        b = at_s // self.bucket_s
        if self._newest >= 0 and b <= self._newest - self.span:
            return None
        slot = int(b % self.span)
        if self._bucket_of[slot] != b:
            self._data[:, slot] = 0
            self._bucket_of[slot] = b
        self._newest = max(self._newest, int(b))
        return slot

    def add(self, key_index: np.ndarray, deltas: np.ndarray, at_s: int) -> None:
        """Add ``deltas[m, j]`` to key ``key_index[j]`` (repeats accumulate) at ``at_s``; a
        time older than the ring only reaches the totals."""
        if key_index.size == 0:
            return
        slot = self._slot(at_s)
        if slot is not None:
            np.add.at(self._data[:, slot], key_index, deltas.T)
        np.add.at(self.totals, key_index, deltas.T)

    def snapshot(self) -> SeriesSnapshot:
        if self._newest < 0:
            starts = np.zeros(0, dtype=np.int64)
            return SeriesSnapshot(self.keys, self.bucket_s, starts,
                                  np.zeros((len(self.keys), 0, self._data.shape[2]), np.int64),
                                  self.totals.copy())
        buckets = np.arange(self._newest - self.span + 1, self._newest + 1, dtype=np.int64)
        slots = buckets % self.span
        held = self._bucket_of[slots] == buckets
        values = np.where(held[None, :, None], self._data[:, slots], 0)
        return SeriesSnapshot(self.keys, self.bucket_s, buckets * self.bucket_s, values,
                              self.totals.copy())


__all__ = ["KeyedSeries", "SeriesSnapshot"]
