"""Aggregation: accepted events (or pre-counted rows) → the registry, and the flush buffer.

Both entry points end in the same place:

- ``add_events`` — columns of deduplicated events (slot, second, event code, money, ZIP key) from
  the JSON or typed-message path;
- ``add_rows`` — per-(slot, second) counter rows, as the simulator produces them from the
  market's step totals ("what is simulated is what runs": the same registry update, windows and
  creative series, and the same flush buffer; rows carry no ZIP code, so not the ZIP series).

Each batch becomes per-(cell, second) rows (``np.unique`` over ``slot << 32 | second``), summed
into the cells' totals, rolling windows, creative series and the day's counts (by event time),
and into the ZIP series; the rows
are kept in the flush buffer until ``take_pending`` hands them to the warm store and the hot
store. All arithmetic is int64 (money in micros).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from campaignd.domain.cells import METRIC_INDEX, N_METRICS
from campaignd.pipeline.registry import Registry
from campaignd.pipeline.validate import ACTIVITY_CODE, CLICK, CONVERSION, IMP_MEASURED, N_CODES

_SHIFT = 32  # group key = slot << 32 | epoch second (seconds fit 32 bits until 2106)

# What one event of each code adds: +1 to ONE_COL, +1 to measurable (measured impressions),
# +value to VALUE_COL.
ONE_COL = np.full(N_CODES, -1, dtype=np.int64)
VALUE_COL = np.full(N_CODES, -1, dtype=np.int64)
ONE_COL[[0, 1]] = METRIC_INDEX["impressions"]
VALUE_COL[[0, 1]] = METRIC_INDEX["spend_micros"]
for _name, _code in ACTIVITY_CODE.items():
    ONE_COL[_code] = METRIC_INDEX[{"START": "starts", "Q1": "q1", "MID": "mid", "Q3": "q3",
                                   "COMPLETE": "completes", "VIEWABILITY": "viewable"}[_name]]
ONE_COL[CLICK] = METRIC_INDEX["clicks"]
ONE_COL[CONVERSION] = METRIC_INDEX["conversions"]
VALUE_COL[CONVERSION] = METRIC_INDEX["conversion_value_micros"]
MEASURABLE = METRIC_INDEX["measurable"]


def event_deltas(group: np.ndarray, n_groups: int, codes: np.ndarray,
                 values: np.ndarray) -> np.ndarray:
    """``[n_groups, metrics]`` counters of events whose group index is ``group``."""
    out = np.zeros(n_groups * N_METRICS, dtype=np.int64)
    base = group * N_METRICS
    one = ONE_COL[codes]
    m = one >= 0
    np.add.at(out, base[m] + one[m], 1)
    m = codes == IMP_MEASURED
    np.add.at(out, base[m] + MEASURABLE, 1)
    vcol = VALUE_COL[codes]
    m = (vcol >= 0) & (values != 0)
    np.add.at(out, base[m] + vcol[m], values[m])
    return out.reshape(n_groups, N_METRICS)


@dataclass(frozen=True, slots=True)
class Pending:
    """Per-(slot, second) counters not yet committed: ``keys`` (``slot << 32 | second``,
    unique, sorted) and ``values[len(keys), metrics]``."""

    keys: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.size)

    @property
    def slots(self) -> np.ndarray:
        return self.keys >> _SHIFT

    @property
    def seconds(self) -> np.ndarray:
        return self.keys & ((1 << _SHIFT) - 1)

    @staticmethod
    def empty() -> Pending:
        return Pending(np.zeros(0, dtype=np.int64), np.zeros((0, N_METRICS), dtype=np.int64))


def _reduce(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inv = np.unique(keys, return_inverse=True)
    out = np.zeros((uniq.size, values.shape[1]), dtype=np.int64)
    np.add.at(out, inv, values)
    return uniq, out


class Aggregator:
    """Registry updates plus the flush buffer (see the module docstring)."""

    def __init__(self, registry: Registry, *, keep_pending: bool = True) -> None:
        self.registry = registry
        self.keep_pending = keep_pending
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self.pending_rows = 0

    def add_events(self, slots: np.ndarray, seconds: np.ndarray, codes: np.ndarray,
                   values: np.ndarray, zip_keys: np.ndarray, at_s: int) -> None:
        """Deduplicated events (parallel int64 columns) observed at registry time ``at_s``."""
        if slots.size == 0:
            self._apply(np.zeros(0, np.int64), np.zeros((0, N_METRICS), np.int64), at_s)
            return
        keys = slots << _SHIFT | seconds
        uniq, inv = np.unique(keys, return_inverse=True)
        deltas = event_deltas(inv, uniq.size, codes, values)
        self._apply(uniq, deltas, at_s)
        # ZIP series: per (campaign, ZIP key)
        for k, mask, _pos in self.registry.locate(slots):
            zk = zip_keys[mask]
            zu, zinv = np.unique(zk, return_inverse=True)
            self.registry.tables[k].apply_zips(zu, event_deltas(zinv, zu.size, codes[mask],
                                                                values[mask]).T, at_s)

    def add_rows(self, slots: np.ndarray, seconds: np.ndarray, deltas: np.ndarray,
                 at_s: int) -> None:
        """Pre-counted rows: ``deltas[j, metric]`` for cell slot ``slots[j]`` at second
        ``seconds[j]`` (repeats accumulate), observed at registry time ``at_s``."""
        slots = np.asarray(slots, dtype=np.int64)
        keys = slots << _SHIFT | np.asarray(seconds, dtype=np.int64)
        uniq, vals = _reduce(keys, np.asarray(deltas, dtype=np.int64))
        self._apply(uniq, vals, at_s)

    def _apply(self, keys: np.ndarray, deltas: np.ndarray, at_s: int) -> None:
        reg = self.registry
        if keys.size == 0:
            for table in reg.tables:
                table.apply(np.zeros(0, np.int64), np.zeros((N_METRICS, 0), np.int64), at_s)
            return
        slots = keys >> _SHIFT
        us, sinv = np.unique(slots, return_inverse=True)
        per_slot = np.zeros((us.size, N_METRICS), dtype=np.int64)
        np.add.at(per_slot, sinv, deltas)
        touched = set()
        for k, mask, pos in reg.locate(us):
            reg.tables[k].apply(pos, per_slot[mask].T, at_s)
            touched.add(k)
        seconds = keys & ((1 << _SHIFT) - 1)
        for k, mask, pos in reg.locate(slots):  # the budget day's counts, by event time
            reg.tables[k].add_days(pos, seconds[mask], deltas[mask], now_s=at_s)
        for k, table in enumerate(reg.tables):
            if k not in touched:
                table.windows.roll(at_s)
        if self.keep_pending:
            self._keys.append(keys)
            self._values.append(deltas)
            self.pending_rows += int(keys.size)

    def take_pending(self) -> Pending:
        """Everything added since the last call, reduced to unique (slot, second) rows."""
        if not self._keys:
            return Pending.empty()
        keys = np.concatenate(self._keys)
        values = np.concatenate(self._values)
        self._keys, self._values, self.pending_rows = [], [], 0
        uniq, vals = _reduce(keys, values)
        return Pending(uniq, vals)

    def restore_pending(self, pending: Pending) -> None:
        """Put back rows whose commit failed (they are committed with the next flush)."""
        if len(pending):
            self._keys.insert(0, pending.keys)
            self._values.insert(0, pending.values)
            self.pending_rows += len(pending)


def minute_rows(pending: Pending) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slots, epoch minutes, values) of the pending rows summed per cell and minute."""
    if not len(pending):
        return (np.zeros(0, np.int64), np.zeros(0, np.int64),
                np.zeros((0, N_METRICS), np.int64))
    keys = pending.slots << _SHIFT | (pending.seconds // 60)
    uniq, vals = _reduce(keys, pending.values)
    return uniq >> _SHIFT, uniq & ((1 << _SHIFT) - 1), vals


__all__ = ["Aggregator", "Pending", "event_deltas", "minute_rows"]
