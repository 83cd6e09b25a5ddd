"""Ground truth for the oracle and the tests: what the market would deliver, and at what rates.

``GroundTruth`` sits between ``PairModel`` and ``Market``. Its queries read the pair table and
the current fatigue exposure but never draw random numbers nor change delivery, so asking them
does not change a run:

- ``flow``: expected supply, clearing price and true rates per slot for one interval;
- ``true_rates``: a line item's true per-impression rates, weighted by its supply;
- ``forecast`` (a ``Forecast``): expected delivery per slot over a window if budgets did not
  bind, with or without competition among the advertiser's own line items;
- ``expected_value_per_dollar``: true objective units per currency unit of spend;
- ``fatigue_outlook`` / ``fatigued_metrics``: how much further creative fatigue would cost.

(What was truly caused — ``true_contributions``, ``journeys`` — is recorded by ``Market`` as it
draws conversions.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from campaignd.domain.campaign import MICROS, OBJECTIVE_COUNTER
from campaignd.dsp.sandbox.pairs import Flow, PairModel
from campaignd.dsp.sandbox.scenarios import METRICS
from campaignd.dsp.sandbox.world import COMPLETION, CONVERSION, CTR, from_usecs, usecs

OBJECTIVE_METRIC = OBJECTIVE_COUNTER


@dataclass(slots=True, frozen=True)
class Forecast:
    """Expected delivery per line item (aligned with ``line_item_ids``) over a window."""

    line_item_ids: np.ndarray
    impressions: np.ndarray
    spend_micros: np.ndarray
    clicks: np.ndarray
    completes: np.ndarray
    conversions: np.ndarray
    conversion_value_micros: np.ndarray

    def objective(self, objective: str) -> np.ndarray:
        out: np.ndarray = getattr(self, OBJECTIVE_METRIC[objective])
        return out


class GroundTruth(PairModel):
    """Ground-truth queries over the pair table (see the module docstring)."""

    def flow(self, start: datetime, end: datetime, eligible: np.ndarray | None = None) -> Flow:
        """Expected supply, clearing price and true rates per slot for one interval (which must
        not cross a local hour), with competition among ``eligible`` slots."""
        self._rebuild()
        el = self.static_eligible(start) if eligible is None else eligible
        return self._flow(usecs(start), usecs(end), el)

    def true_rates(self, line_item_id: int, at: datetime | None = None) -> dict[str, float]:
        """The line item's true per-impression rates (``ctr``, ``completion`` per start,
        ``viewability`` per measurable, ``conversion``) at ``at``, weighted by its supply; if it
        has no supply then, over the next 24 hours."""
        self._rebuild()
        slot = self._slot[line_item_id]
        at = (at or self._now).astimezone(UTC)
        el = self.static_eligible(at)
        el[slot] = True
        t = usecs(at)
        hour = 3_600_000_000
        t0 = t - t % hour
        num = np.zeros(4)
        den = 0.0
        for h in range(25):
            f = self._flow(max(t, t0 + h * hour) if h == 0 else t0 + h * hour,
                           t0 + (h + 1) * hour, el)
            if f.avail[slot] > 0:
                num += f.rates[:, slot] * f.avail[slot]
                den += f.avail[slot]
                if h == 0:
                    break
        if den == 0:
            return dict.fromkeys(METRICS, float("nan"))
        r = num / den
        return {m: float(r[i]) for i, m in enumerate(METRICS)}

    def forecast(self, start: datetime, end: datetime, *, eligible: np.ndarray | None = None,
                 slot_seconds: int = 3600, compete: bool = True) -> Forecast:
        """Expected delivery per slot over ``[start, end)`` if budgets did not bind, with the
        current fatigue, competition among ``eligible`` slots (default: statically eligible).
        ``compete=False``: each slot as if it were the only one of the advertiser's line items
        buying its inventory (its sole-bidder capacity)."""
        self._rebuild()
        n = len(self._ids)
        out = np.zeros((6, n))
        sc = self.scenario
        mean_value = sc.conversion_value.mean_micros
        t = usecs(start)
        e = usecs(end)
        step = slot_seconds * 1_000_000
        while t < e:
            nxt = min(e, (t // step + 1) * step)
            el = self.static_eligible(from_usecs(t)) if eligible is None else eligible
            f = self._flow(t, nxt, el, compete=compete)
            r = np.nan_to_num(f.rates)
            out[0] += f.avail
            out[1] += f.avail * f.price / 1000.0
            out[2] += f.avail * r[CTR]
            out[3] += f.avail * sc.base.start * r[COMPLETION]
            out[4] += f.avail * r[CONVERSION]
            out[5] += f.avail * r[CONVERSION] * mean_value
            t = nxt
        return Forecast(self.line_item_ids(), *out)

    def expected_value_per_dollar(self, objective: str, start: datetime, end: datetime, *,
                                  eligible: np.ndarray | None = None) -> np.ndarray:
        """True expected objective units per currency unit of spend, per slot (0 if no supply)."""
        f = self.forecast(start, end, eligible=eligible)
        v = f.objective(objective)
        return np.where(f.spend_micros > 0, v / np.maximum(f.spend_micros, 1e-9) * MICROS, 0.0)

    def fatigue_outlook(self, extra_impressions: np.ndarray) -> np.ndarray:
        """Per slot: the average fatigue multiplier while each slot delivers
        ``extra_impressions[slot]`` more impressions, relative to the current one (1 = no
        further fatigue). Impressions are spread over a slot's pairs by supply, and exposure is
        shared by every slot showing the same creative to the same audience."""
        self._rebuild()
        n = len(self._ids)
        fat = self.scenario.fatigue
        P = self._pairs
        assert P is not None
        if not self._fat_metrics or P.li.size == 0 or fat.half_life_impressions is None:
            return np.ones(n)
        hl = fat.half_life_impressions
        wts = P.base_supply * P.w * P.win * self._a["reach"][P.li]
        tot = np.bincount(P.li, wts, minlength=n)
        wn = wts / np.where(tot[P.li] > 0, tot[P.li], 1.0)
        extra = np.asarray(extra_impressions, dtype=float)
        add = np.bincount(P.fg, wn * extra[P.li], minlength=self._exposure.size)
        x0 = self._exposure[P.fg]
        d = add[P.fg]
        decay = np.exp2(-x0 / hl)
        cur = fat.floor + (1 - fat.floor) * decay
        k = d * math.log(2) / hl
        avg_decay = np.where(k > 1e-12, decay * (1 - np.exp(-k)) / np.where(k > 1e-12, k, 1.0),
                             decay)
        ratio = (fat.floor + (1 - fat.floor) * avg_decay) / cur
        out = np.bincount(P.li, wn * ratio, minlength=n)
        return np.where(tot > 0, out, 1.0)

    def fatigued_metrics(self) -> tuple[str, ...]:
        return tuple(METRICS[i] for i in self._fat_metrics)


__all__ = ["OBJECTIVE_METRIC", "Forecast", "GroundTruth"]
