"""Rolling windows over per-cell counters: "what happened in the last 30 s / 5 min / 1 h / 3 h /
24 h", answered from arrays without scanning events.

A window of length ``W`` is kept as ``W / g`` sub-buckets of ``g`` seconds (the granularity, a
tenth to a twenty-fourth of the window; see ``GRANULARITY_S``). The window's value is the sum
of the bucket being filled now plus the ``W / g`` buckets before it, so it always covers at
least the last ``W`` seconds and at most ``W + g`` (the 30 s window: 30–35 s; the 24 h window:
24–25 h). Each window keeps a running sum (dense, ``metrics × cells``), the open bucket (dense)
and its closed buckets as sparse deltas (only the cells that had counts), so memory follows
activity rather than the number of buckets; a closed bucket leaving the window is subtracted
from the running sum. Time is the caller's (``at_s``, seconds since the epoch; the pipeline
passes the DSP's clock when a batch lands, the simulator its virtual clock); it must not go
backwards by more than one bucket (a late batch is counted in the open bucket).

Pure numpy; no clock reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np

WINDOWS_S: tuple[int, ...] = (30, 300, 3600, 10_800, 86_400)
"""The registry's standard windows: 30 s, 5 min, 1 h, 3 h, 24 h."""

GRANULARITY_S: Mapping[int, int] = {30: 5, 300: 30, 3600: 300, 10_800: 900, 86_400: 3600}
"""Sub-bucket length per standard window; other windows use a twelfth (at least 1 s)."""


def granularity(window_s: int) -> int:
    g = GRANULARITY_S.get(window_s, max(1, window_s // 12))
    if window_s % g:
        raise ValueError(f"window {window_s}s is not a whole number of {g}s buckets")
    return g


class _Window:
    __slots__ = ("buckets", "closed", "open", "open_bucket", "step", "sum")

    def __init__(self, window_s: int, n_metrics: int, n_cells: int) -> None:
        self.step = granularity(window_s)
        self.buckets = window_s // self.step
        self.sum = np.zeros((n_metrics, n_cells), dtype=np.int64)
        self.open = np.zeros((n_metrics, n_cells), dtype=np.int64)
        self.open_bucket: int | None = None
        self.closed: deque[tuple[int, np.ndarray, np.ndarray]] = deque()

    def roll(self, at_s: int) -> None:
        b = at_s // self.step
        if self.open_bucket is None:
            self.open_bucket = b
            return
        if b <= self.open_bucket:
            return
        nz = np.flatnonzero(self.open.any(axis=0))
        if nz.size:
            vals = self.open[:, nz]
            self.closed.append((self.open_bucket, nz, vals.copy()))
            self.sum[:, nz] += vals
            self.open[:, nz] = 0
        self.open_bucket = b
        oldest = b - self.buckets
        while self.closed and self.closed[0][0] < oldest:
            _, pos, vals = self.closed.popleft()
            self.sum[:, pos] -= vals

    def value(self) -> np.ndarray:
        return self.sum + self.open


class RollingWindows:
    """Per-cell sums over several trailing windows (see the module docstring)."""

    def __init__(self, n_metrics: int, n_cells: int,
                 windows_s: Iterable[int] = WINDOWS_S) -> None:
        self.n_metrics = n_metrics
        self.n_cells = n_cells
        self._w = {int(w): _Window(int(w), n_metrics, n_cells) for w in windows_s}
        for w in self._w:
            if w <= 0:
                raise ValueError(f"window lengths must be positive (got {w})")

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(sorted(self._w))

    def add(self, positions: np.ndarray, deltas: np.ndarray, at_s: int) -> None:
        """Add ``deltas`` (``metrics × len(positions)``, int64) at cells ``positions`` (unique)
        at second ``at_s``."""
        for win in self._w.values():
            win.roll(at_s)
            win.open[:, positions] += deltas

    def roll(self, at_s: int) -> None:
        """Move every window to ``at_s`` (old buckets leave) without adding anything."""
        for win in self._w.values():
            win.roll(at_s)

    def window(self, window_s: int) -> np.ndarray:
        """A copy of the ``metrics × cells`` sums of one window."""
        try:
            return self._w[window_s].value()
        except KeyError:
            raise KeyError(f"no {window_s}s window; kept: {self.lengths}") from None

    def all(self) -> dict[int, np.ndarray]:
        return {w: win.value() for w, win in sorted(self._w.items())}


__all__ = ["GRANULARITY_S", "WINDOWS_S", "RollingWindows", "granularity"]
