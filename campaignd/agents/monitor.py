"""Performance monitor (30 s): per-cell metrics over its windows and underperformer flags.

Metrics per cell and per campaign — impressions, clicks, conversions, viewability, completion
rate, CTR, CVR, CPA and ROAS — over the running totals and each of the registry's windows (30 s,
5 min, 1 h, 3 h, 24 h). A cell is flagged only when the posterior probability that its rate on
the monitored metric (by default the campaign objective's rate: CTR for clicks, completion
rate for completed views, CVR for conversions and revenue; over ``window_s`` seconds, or
``"totals"``; default: its running totals) is below ``threshold_ratio`` × the campaign's pooled
rate exceeds ``confidence`` (Beta posterior with a
weak prior centred on the pooled rate), and it has at least ``min_trials`` trials there.
``rule="raw"`` applies the seed's rule instead — the observed rate over the last 30 seconds
below half the threshold — kept for comparison: with small counts it flags noise.

Flags are findings (``flag_underperformer``, impact 0): the decision engine counts them and
applies nothing (the reallocation agent acts on the same evidence through the allocator); the
latest run's flags and metrics per window are in ``last_metrics`` (the control API's campaign
view shows them).
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
OBJECTIVE_METRIC = {"clicks": "ctr", "completed_views": "completion", "conversions": "cvr",
                    "revenue": "cvr"}
"""The rate each campaign objective is watched on (``metric="objective"``)."""
RAW_RULE_WINDOW_S = 30
"""The seed's rule looks at the last 30 seconds."""


def cell_metrics(snap: CellSnapshot, window_s: int | None = None) -> dict[str, np.ndarray]:
    """Derived per-cell metrics (floats; NaN where undefined) of the running totals, or of the
    last ``window_s`` seconds."""
    return derived_metrics(snap.counts if window_s is None else snap.window(window_s))


def campaign_metrics(counts: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A campaign's totals and rates over some counts (JSON-ready; None where undefined)."""
    tot = {m: int(np.asarray(counts[m]).sum()) for m in (
        "impressions", "clicks", "conversions", "viewable", "measurable", "starts",
        "completes", "spend_micros", "conversion_value_micros")}
    rates = derived_metrics({k: np.array([v]) for k, v in tot.items()})
    return {**{k: tot[k] for k in ("impressions", "clicks", "conversions", "spend_micros")},
            **{k: _num(v[0], k) for k, v in rates.items()}}


class PerformanceMonitor(Agent):
    name = "monitor"

    def __init__(self, *, metric: Literal["objective", "ctr", "cvr", "completion"] = "objective",
                 threshold_ratio: float = 0.5, confidence: float = 0.95,
                 min_trials: int | None = None,
                 rule: Literal["posterior", "raw"] = "posterior",
                 prior_successes: float = 2.0,
                 window_s: int | Literal["totals"] | None = None) -> None:
        self.metric = metric
        self.threshold_ratio = threshold_ratio
        self.confidence = confidence
        # (the raw rule is the seed's: any cell with an impression in its 30 s window has a
        # rate to judge -- 200 impressions in 30 s, a cell of the seed campaign never has)
        self.min_trials = min_trials if min_trials is not None else (1 if rule == "raw" else 200)
        self.rule = rule
        self.prior_successes = prior_successes
        # None: the rule's own (raw: the last 30 s; posterior: the running totals)
        self.window_s: int | None = (
            None if window_s == "totals" else
            (RAW_RULE_WINDOW_S if rule == "raw" else None) if window_s is None else window_s)
        self.objectives: dict[str, str] = {}
        """Campaign id → objective (``metric="objective"``: a campaign not here is watched on
        CVR)."""
        self.last_metrics: dict[str, dict[str, Any]] = {}
        """Per campaign: the pooled rate, campaign metrics per window and the flagged cells of
        the last run (what the control API shows)."""

    def metric_for(self, campaign_id: str) -> str:
        """The rate a campaign is watched on: ``metric``, or its objective's rate."""
        if self.metric != "objective":
            return self.metric
        return OBJECTIVE_METRIC.get(self.objectives.get(campaign_id, "conversions"), "cvr")

    def run(self, snapshots: Mapping[str, CellSnapshot], now: datetime) -> list[Recommendation]:
        recs: list[Recommendation] = []
        for cid, snap in snapshots.items():
            if len(snap) == 0:
                continue
            metric = self.metric_for(cid)
            counts = snap.counts if self.window_s is None else snap.window(self.window_s)
            trials = (counts["starts"] if metric == "completion"
                      else counts["impressions"]).astype(float)
            succ = counts[SUCCESS_METRIC[metric]].astype(float)
            total_t, total_s = trials.sum(), succ.sum()
            summary: dict[str, Any] = {
                "at": now.isoformat(), "metric": metric, "rule": self.rule,
                "window_s": self.window_s, "trials": int(total_t),
                "successes": int(total_s),
                "pooled_rate": float(total_s / total_t) if total_t else None,
                "windows": {"totals": campaign_metrics(snap.counts),
                            **{str(w): campaign_metrics(c) for w, c in snap.windows.items()}},
                "flagged": []}
            self.last_metrics[cid] = summary
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
            if flagged.size == 0:
                continue
            ranked = flagged[np.argsort(-p_below[flagged], kind="stable")]
            # the metrics over every window, for the most certain flags (what people read)
            top = ranked[:50]
            per_window = {"totals": derived_metrics({k: v[top] for k, v in snap.counts.items()}),
                          **{str(w): derived_metrics({k: v[top] for k, v in c.items()})
                             for w, c in snap.windows.items()}}
            for rank, i in enumerate(ranked):
                cell = snap.cell_ids[i]
                evidence: dict[str, Any] = {
                    "metric": metric, "window_s": self.window_s, "trials": int(trials[i]),
                    "successes": int(succ[i]), "pooled_rate": float(pooled),
                    "threshold": float(threshold), "p_below_threshold": float(p_below[i]),
                    "rule": self.rule}
                if rank < top.size:
                    evidence["metrics"] = {w: {k: _num(v[rank], k) for k, v in m.items()}
                                           for w, m in per_window.items()}
                    summary["flagged"].append({"cell_id": cell, **{
                        k: evidence[k] for k in ("trials", "successes", "p_below_threshold")}})
                recs.append(Recommendation(
                    agent=self.name, kind="flag_underperformer", campaign_id=cid, target=cell,
                    created_at=now, evidence=evidence, score=float(p_below[i]), impact=0.0,
                    risk=0.0))
            summary["flagged_total"] = int(flagged.size)
        return recs


def _num(x: float, name: str = "") -> float | int | None:
    """JSON-ready: None where undefined; money (``*_micros``) as whole micros (half to even),
    never a float on the wire."""
    if not np.isfinite(x):
        return None
    return round(float(x)) if name.endswith("_micros") else float(x)
