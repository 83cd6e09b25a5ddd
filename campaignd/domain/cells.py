"""Per-campaign cell statistics as a struct of arrays (numpy).

A ``CellTable`` holds one int64 counter array per metric, indexed by the cell's position in the
campaign's atomization order. Adding a batch is one vectorised ``np.add.at`` per metric; agents
read an immutable ``CellSnapshot`` (copies), so a running agent never sees counts change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from campaignd.domain.campaign import Cell

METRICS: tuple[str, ...] = (
    "impressions", "measurable", "viewable", "starts", "q1", "mid", "q3", "completes",
    "clicks", "conversions", "conversion_value_micros", "spend_micros",
)


@dataclass(frozen=True, slots=True)
class CellSnapshot:
    """An immutable copy of a campaign's counters at one moment."""

    campaign_id: str
    cell_ids: tuple[str, ...]
    levels: Mapping[str, tuple[str, ...]]
    """dimension → level id per cell, aligned with ``cell_ids``."""
    counts: Mapping[str, np.ndarray]
    """metric → int64 array aligned with ``cell_ids``."""

    def __len__(self) -> int:
        return len(self.cell_ids)

    def total(self, metric: str) -> int:
        return int(self.counts[metric].sum())


class CellTable:
    """Mutable counters for one campaign's cells."""

    def __init__(self, campaign_id: str, cells: Sequence[Cell]) -> None:
        self.campaign_id = campaign_id
        self.cell_ids: tuple[str, ...] = tuple(c.cell_id for c in cells)
        self.index: dict[str, int] = {cid: i for i, cid in enumerate(self.cell_ids)}
        self.levels = {d: tuple(getattr(c, d) for c in cells)
                       for d in ("audience", "creative", "bid_strategy", "daypart", "platform")}
        n = len(cells)
        self.counts: dict[str, np.ndarray] = {m: np.zeros(n, dtype=np.int64) for m in METRICS}

    def __len__(self) -> int:
        return len(self.cell_ids)

    def add(self, positions: np.ndarray, metric: str, values: np.ndarray | int = 1) -> None:
        """Add ``values`` to ``metric`` at cell ``positions`` (repeats accumulate)."""
        np.add.at(self.counts[metric], positions, values)

    def add_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Add a {cell_id: {metric: n}} batch; unknown cell ids are ignored by the caller."""
        for cell_id, metrics in counts.items():
            i = self.index[cell_id]
            for metric, n in metrics.items():
                self.counts[metric][i] += n

    def snapshot(self) -> CellSnapshot:
        return CellSnapshot(self.campaign_id, self.cell_ids, self.levels,
                            {m: a.copy() for m, a in self.counts.items()})

    def totals(self) -> dict[str, int]:
        return {m: int(a.sum()) for m, a in self.counts.items()}
