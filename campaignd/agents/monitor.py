"""Performance monitor (30 s): per-cell metrics and underperformer flags.

Metrics per cell: impressions, clicks, conversions, viewability, completion rate, CTR, CVR, CPA
and ROAS. A cell is flagged only when the posterior probability that its rate on the monitored
metric is below ``threshold_ratio`` × the campaign's pooled rate exceeds ``confidence`` (Beta
posterior with a weak prior centred on the pooled rate), and it has at least ``min_trials``
impressions. ``rule="raw"`` applies the seed's rule instead (observed rate below half the
threshold), kept for comparison: with small counts it flags noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import numpy as np
from scipy.stats import beta

from campaignd.agents.base import Agent
from campaignd.domain.actions import Recommendation
from campaignd.domain.cells import CellSnapshot, derived_metrics

SUCCESS_METRIC = {"ctr": "clicks", "cvr": "conversions", "completion": "completes"}


def cell_metrics(snap: CellSnapshot) -> dict[str, np.ndarray]:
    """Derived per-cell metrics of the running totals (floats; NaN where undefined)."""
    return derived_metrics(snap.counts)


class PerformanceMonitor(Agent):
    name = "monitor"

    def __init__(self, *, metric: Literal["ctr", "cvr", "completion"] = "cvr",
                 threshold_ratio: float = 0.5, confidence: float = 0.95,
                 min_trials: int = 200, rule: Literal["posterior", "raw"] = "posterior",
                 prior_successes: float = 2.0) -> None:
        self.metric = metric
        self.threshold_ratio = threshold_ratio
        self.confidence = confidence
        self.min_trials = min_trials
        self.rule = rule
        self.prior_successes = prior_successes
        self.last_metrics: dict[str, dict[str, Any]] = {}

    def run(self, snapshots: Mapping[str, CellSnapshot], now: datetime) -> list[Recommendation]:
        recs: list[Recommendation] = []
        for cid, snap in snapshots.items():
            if len(snap) == 0:
                continue
            trials = (snap.counts["starts"] if self.metric == "completion"
                      else snap.counts["impressions"]).astype(float)
            succ = snap.counts[SUCCESS_METRIC[self.metric]].astype(float)
            total_t, total_s = trials.sum(), succ.sum()
            metrics = cell_metrics(snap)
            self.last_metrics[cid] = {
                "impressions": int(total_t), SUCCESS_METRIC[self.metric]: int(total_s),
                "pooled_rate": float(total_s / total_t) if total_t else None,
            }
            if total_t <= 0 or total_s <= 0:
                continue
            pooled = total_s / total_t
            threshold = self.threshold_ratio * pooled
            eligible = trials >= self.min_trials
            if self.rule == "raw":
                with np.errstate(divide="ignore", invalid="ignore"):
                    observed = np.where(trials > 0, succ / np.maximum(trials, 1), np.nan)
                p_below = (observed < threshold).astype(float)
            else:
                a0 = self.prior_successes
                b0 = self.prior_successes * (1 - pooled) / pooled
                p_below = beta.cdf(threshold, a0 + succ, b0 + trials - succ)
            flagged = np.nonzero(eligible & (p_below >= self.confidence))[0]
            for i in flagged:
                recs.append(Recommendation(
                    agent=self.name, kind="flag_underperformer", campaign_id=cid,
                    target=snap.cell_ids[i], created_at=now,
                    evidence={"metric": self.metric, "trials": int(trials[i]),
                              "successes": int(succ[i]), "pooled_rate": float(pooled),
                              "threshold": float(threshold),
                              "p_below_threshold": float(p_below[i]), "rule": self.rule,
                              "cpa_micros": _num(metrics["cpa_micros"][i]),
                              "viewability": _num(metrics["viewability"][i])},
                    score=float(p_below[i]), impact=0.0, risk=0.0))
        return recs


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)
