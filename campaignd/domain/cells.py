"""Per-campaign cell statistics as a struct of arrays (numpy): the registry's unit.

A ``CellTable`` holds, for one campaign's cells (indexed by atomization order):

- running totals: one int64 row per metric of ``METRICS`` (``matrix[metric, cell]``; ``counts``
  gives the rows by name, as views);
- the counts of the current budget day by event time (``today``, what a DSP's daily budget has
  spent; the day is the calendar day in the DSP account's time zone, ``domain.budget_day``),
  reset when an event of a later day arrives or a snapshot is taken after midnight;
- rolling windows over the last 30 s, 5 min, 1 h, 3 h and 24 h (``domain.windows``);
- hourly series per creative (fatigue) and per ZIP code (discovery) over the last 72 hours
  (``domain.series``).

The pipeline adds whole batches (``apply``: one vectorised update for every structure); agents
read an immutable ``CellSnapshot`` (copies), so a running agent never sees counts change.
Money is integer micros. Pure: times are epoch seconds passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from campaignd.domain.budget_day import BudgetDay
from campaignd.domain.campaign import Cell
from campaignd.domain.series import KeyedSeries, SeriesSnapshot
from campaignd.domain.windows import WINDOWS_S, RollingWindows

METRICS: tuple[str, ...] = (
    "impressions", "measurable", "viewable", "starts", "q1", "mid", "q3", "completes",
    "clicks", "conversions", "conversion_value_micros", "spend_micros",
)
METRIC_INDEX: dict[str, int] = {m: i for i, m in enumerate(METRICS)}
N_METRICS = len(METRICS)
OTHER_ZIP = "other"
"""The ZIP series key for impressions from ZIP codes outside the campaign's audiences (and for
events whose impression's ZIP is no longer known)."""
SERIES_BUCKET_S = 3600
SERIES_SPAN = 72


@dataclass(frozen=True, slots=True)
class CellSnapshot:
    """An immutable copy of a campaign's counters at one moment."""

    campaign_id: str
    cell_ids: tuple[str, ...]
    levels: Mapping[str, tuple[str, ...]]
    """dimension → level id per cell, aligned with ``cell_ids``."""
    counts: Mapping[str, np.ndarray]
    """metric → int64 array aligned with ``cell_ids`` (running totals)."""
    windows: Mapping[int, Mapping[str, np.ndarray]] = field(default_factory=dict)
    """window seconds → metric → int64 array aligned with ``cell_ids``."""
    creatives: SeriesSnapshot | None = None
    zips: SeriesSnapshot | None = None
    at_s: int | None = None
    """When the snapshot was taken (the registry's time, epoch seconds)."""
    today: Mapping[str, np.ndarray] = field(default_factory=dict)
    """metric → int64 array aligned with ``cell_ids``: counts of the budget day ``day`` (event
    time), e.g. ``today["spend_micros"]`` is what each line item's daily budget has spent."""
    day: int | None = None
    """The budget day of ``today`` (a ``BudgetDay`` number: the local date in the account's
    time zone, as days since 1970-01-01); ``None`` before any event."""
    daily_budgets_micros: np.ndarray | None = None
    """The daily budget in force per cell (the DSP's, as last acknowledged), when the caller
    knows it (the daemon and the simulator fill it in; the registry does not keep budgets)."""

    def __len__(self) -> int:
        return len(self.cell_ids)

    def total(self, metric: str) -> int:
        return int(self.counts[metric].sum())

    def window(self, seconds: int) -> Mapping[str, np.ndarray]:
        try:
            return self.windows[seconds]
        except KeyError:
            raise KeyError(f"no {seconds}s window in this snapshot; kept: "
                           f"{sorted(self.windows)}") from None


def derived_metrics(c: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rates from counters (floats; NaN where undefined). Money stays in micros.

    ``ctr`` clicks/impression, ``cvr`` conversions/impression, ``viewability``
    viewable/measurable, ``completion_rate`` completes/starts, ``cpm_micros`` spend per 1000
    impressions, ``cpa_micros`` spend per conversion, ``roas`` conversion value/spend.
    """
    imps = c["impressions"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "ctr": c["clicks"] / imps,
            "cvr": c["conversions"] / imps,
            "viewability": c["viewable"] / c["measurable"].astype(float),
            "completion_rate": c["completes"] / c["starts"].astype(float),
            "cpm_micros": c["spend_micros"] * 1000.0 / imps,
            "cpa_micros": c["spend_micros"] / c["conversions"].astype(float),
            "roas": c["conversion_value_micros"] / c["spend_micros"].astype(float),
        }


class CellTable:
    """Mutable counters for one campaign's cells."""

    def __init__(self, campaign_id: str, cells: Sequence[Cell], *,
                 zips: Iterable[str] = (), windows_s: Iterable[int] = WINDOWS_S,
                 budget_day: BudgetDay | None = None) -> None:
        self.campaign_id = campaign_id
        self.budget_day = budget_day if budget_day is not None else BudgetDay("UTC")
        """What "today" is: the day in the DSP account's time zone."""
        self.cell_ids: tuple[str, ...] = tuple(c.cell_id for c in cells)
        self.index: dict[str, int] = {cid: i for i, cid in enumerate(self.cell_ids)}
        self.levels = {d: tuple(getattr(c, d) for c in cells)
                       for d in ("audience", "creative", "bid_strategy", "daypart", "platform")}
        n = len(cells)
        self.matrix = np.zeros((N_METRICS, n), dtype=np.int64)
        self.counts: dict[str, np.ndarray] = {m: self.matrix[i] for i, m in enumerate(METRICS)}
        self.windows = RollingWindows(N_METRICS, n, windows_s)
        creatives = sorted(set(self.levels["creative"]))
        self._creative_of = np.array([creatives.index(c) for c in self.levels["creative"]],
                                     dtype=np.int64)
        self.by_creative = KeyedSeries(creatives, N_METRICS, bucket_s=SERIES_BUCKET_S,
                                       span=SERIES_SPAN)
        zip_keys = [*sorted(set(zips) - {OTHER_ZIP}), OTHER_ZIP]
        self.by_zip = KeyedSeries(zip_keys, N_METRICS, bucket_s=SERIES_BUCKET_S,
                                  span=SERIES_SPAN)
        self.last_at_s: int | None = None
        self.today = np.zeros((N_METRICS, n), dtype=np.int64)
        self.day: int | None = None
        self.gone_today: dict[str, int] = {}
        """Spend today (micros) of cells the campaign no longer has (removed from the spec
        today): their line items' money still counts against today's cap."""
        self._later: dict[int, np.ndarray] = {}
        self._later_gone: dict[int, dict[str, int]] = {}
        """Rows stamped in a budget day the clock has not reached (a DSP clock ahead of ours,
        within ``pipeline.max_future_s``): held until that day starts. Never a reason to start
        it early -- that would zero today's spend while today's money is still being spent."""

    def __len__(self) -> int:
        return len(self.cell_ids)

    def zip_key(self, zip_code: str | None) -> int:
        """The ZIP series index of ``zip_code`` (``OTHER_ZIP``'s when it is not one of ours)."""
        idx = self.by_zip.key_index
        return idx.get(zip_code, idx[OTHER_ZIP]) if zip_code else idx[OTHER_ZIP]

    def apply(self, positions: np.ndarray, deltas: np.ndarray, at_s: int) -> None:
        """Add a batch: ``deltas[metric, j]`` to cell ``positions[j]`` (positions unique),
        observed at ``at_s``: totals, windows and the creative series."""
        if positions.size == 0:
            self.windows.roll(at_s)
            return
        self.matrix[:, positions] += deltas
        self.windows.add(positions, deltas, at_s)
        self.by_creative.add(self._creative_of[positions], deltas, at_s)
        self.last_at_s = at_s if self.last_at_s is None else max(self.last_at_s, at_s)

    def add_days(self, positions: np.ndarray, seconds: np.ndarray, deltas: np.ndarray, *,
                 now_s: int) -> None:
        """Count rows into ``today``: ``deltas[j, metric]`` of cell ``positions[j]`` (repeats
        accumulate) at event second ``seconds[j]``, counted at clock second ``now_s``. The
        clock's budget day is today (a later one starts over); rows of an earlier day are not
        today's; rows of a later day wait for it (``_later``)."""
        if positions.size == 0:
            return
        days = self.budget_day.indices(seconds)
        self.roll_day(self.budget_day.index(now_s))
        m = days == self.day
        if m.any():
            np.add.at(self.today.T, positions[m], deltas[m])
        for day in np.unique(days[days > self.day]):
            buf = self._later.setdefault(int(day), np.zeros_like(self.today))
            md = days == day
            np.add.at(buf.T, positions[md], deltas[md])

    def roll_day(self, day: int) -> None:
        """Move ``today`` to budget day ``day`` (``BudgetDay`` numbers) if it is a later one,
        with the rows already counted for it."""
        if self.day is None or day > self.day:
            self.today[:] = 0
            early = self._later.pop(day, None)
            if early is not None:
                self.today += early
            self.gone_today = self._later_gone.pop(day, {})
            for later in (self._later, self._later_gone):
                for d in [d for d in later if d < day]:
                    del later[d]
            self.day = day

    def add_gone_days(self, cell_ids: Sequence[str], seconds: np.ndarray,
                      spend: np.ndarray, *, now_s: int) -> None:
        """Count the spend of cells no longer in the table into ``gone_today``, as
        ``add_days`` counts rows (at clock second ``now_s``)."""
        if not len(cell_ids):
            return
        days = self.budget_day.indices(seconds)
        self.roll_day(self.budget_day.index(now_s))
        for cell_id, day, micros in zip(cell_ids, days, spend, strict=True):
            if day >= self.day:
                into = self.gone_today if day == self.day else \
                    self._later_gone.setdefault(int(day), {})
                into[cell_id] = into.get(cell_id, 0) + int(micros)

    def apply_zips(self, zip_index: np.ndarray, deltas: np.ndarray, at_s: int) -> None:
        """Add ``deltas[metric, j]`` to ZIP series key ``zip_index[j]`` (repeats accumulate)."""
        self.by_zip.add(zip_index, deltas, at_s)

    def replay_recent(self, positions: np.ndarray, at_s: np.ndarray, deltas: np.ndarray, *,
                      now_s: int) -> None:
        """Rebuild the windows and creative series from stored rows (``deltas[j, metric]`` of
        cell ``positions[j]`` at ``at_s[j]``; negative positions are skipped) without touching
        the totals — after a restart, from the warm store's minute rows (which also rebuild
        ``today``)."""
        keep = positions >= 0
        positions, at_s, deltas = positions[keep], at_s[keep], deltas[keep]
        for t in np.unique(at_s):
            m = at_s == t
            pos, inv = np.unique(positions[m], return_inverse=True)
            d = np.zeros((pos.size, N_METRICS), dtype=np.int64)
            np.add.at(d, inv, deltas[m])
            self.windows.add(pos, d.T, int(t))
            self.by_creative.add(self._creative_of[pos], d.T, int(t))
        self.add_days(positions, at_s, deltas, now_s=now_s)

    def restore_creative_totals(self) -> None:
        """Set the creative series' running totals to the sums of its cells' totals — after a
        restart, which replays only the last 24 h of minute rows into the hourly buckets: the
        totals are everything each creative ever had (its cells in the spec)."""
        totals = np.zeros_like(self.by_creative.totals)
        np.add.at(totals, self._creative_of, self.matrix.T)
        self.by_creative.totals = totals

    def add(self, positions: np.ndarray, metric: str, values: np.ndarray | int = 1) -> None:
        """Add ``values`` to the running total of ``metric`` at cell ``positions`` (repeats
        accumulate). Totals only: for restoring state and for tests."""
        np.add.at(self.counts[metric], positions, values)

    def reset(self) -> None:
        """Forget everything (a new sandbox market)."""
        n = len(self)
        self.matrix[:] = 0
        self.windows = RollingWindows(N_METRICS, n, self.windows.lengths)
        self.by_creative = KeyedSeries(self.by_creative.keys, N_METRICS,
                                       bucket_s=SERIES_BUCKET_S, span=SERIES_SPAN)
        self.by_zip = KeyedSeries(self.by_zip.keys, N_METRICS, bucket_s=SERIES_BUCKET_S,
                                  span=SERIES_SPAN)
        self.last_at_s = None
        self.today[:] = 0
        self.day = None
        self.gone_today = {}
        self._later = {}
        self._later_gone = {}

    def snapshot(self, *, at_s: int | None = None, windows: bool = True) -> CellSnapshot:
        """A copy of everything; ``at_s`` first moves the windows to that time (so a quiet
        campaign's windows empty out)."""
        if at_s is not None:
            self.windows.roll(at_s)
            self.roll_day(self.budget_day.index(at_s))
        wins: dict[int, Mapping[str, np.ndarray]] = {}
        if windows:
            for w, arr in self.windows.all().items():
                wins[w] = {m: arr[i] for i, m in enumerate(METRICS)}
        matrix = self.matrix.copy()
        today = self.today.copy()
        return CellSnapshot(self.campaign_id, self.cell_ids, self.levels,
                            {m: matrix[i] for i, m in enumerate(METRICS)}, wins,
                            self.by_creative.snapshot(), self.by_zip.snapshot(),
                            at_s if at_s is not None else self.last_at_s,
                            {m: today[i] for i, m in enumerate(METRICS)}, self.day)

    def totals(self) -> dict[str, int]:
        return {m: int(a.sum()) for m, a in self.counts.items()}


__all__ = ["METRICS", "METRIC_INDEX", "N_METRICS", "OTHER_ZIP", "CellSnapshot", "CellTable",
           "derived_metrics"]
