"""Budget reallocation (2 min): the Bayesian allocator's budgets, one recommendation a campaign.

For every campaign whose budgets in force are known, the agent turns the snapshot into the
policy's observations (cumulative counts, today's spend, the daily budgets in force) and asks
its budget policy — ``thompson`` by default (``campaignd.sim.thompson.ThompsonPolicy``: the
additive-logit model shared across cells, Thompson sampling of value per dollar, learned
delivery capacity, exploration floor, cut limits) — for per-cell daily budgets. When they differ
from the budgets in force it recommends a ``budget_rebalance`` of the changed cells with:

- **evidence** per changed cell — posterior mean and credible interval of its rate on the
  objective, its trials and successes, value per money unit, the budget before and after, and a
  sentence saying why — and for the whole rebalance (pooled rate, money moved, draws);
- **impact**: the expected gain on the objective for the rest of the day,
  ``E[sum_i (min(new_i, u_i) - min(old_i, u_i)) x v_i]`` over joint posterior draws of every
  cell's value per money unit ``v_i``, where ``u_i`` is the most the cell can spend today
  (what the policy learned of its delivery capacity; money above it buys nothing);
- **risk**: the posterior probability that the rebalance as a whole does worse than the budgets
  in force (the share of draws where that sum is negative); **score** 1 (the allocator's
  uncertainty is all in the risk: priority = impact × (1 − risk)).

A baseline policy (``uniform``, ``seed``: chosen in settings, for comparison) has no posterior:
its changes are recommended unassessed (``assessed`` false in the evidence; impact 1 and risk 0
so that the engine applies the rule, within its caps, materiality and request budget).

A re-plan is assessed once: while the policy still wants the same budgets from the same
posterior (some changes wait for the DSP's request budget), the pending remainder is the same
decision and keeps its assessment.

**Pacing is not a bet.** When the budgets in force add up to more than the campaign may spend
today (its lifetime budget paced over the flight's days left, at most the daily budget; e.g. the
line items' first budgets, the daily budget split over the cells), the agent also recommends a
``budget_pace``: their cut to today's share, each line item's room above its spend cut in
proportion. The decision engine applies it whenever it does not apply the re-plan (which paces
by itself), whatever the posterior says.

The same agent runs in the daemon and in the simulator; a restarted daemon's agent first learns
everything counted so far as one interval (then re-plans from the budgets in force, within the
cut limits), so a restart never resets the campaign to an equal split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import structlog

from campaignd.agents.base import Agent
from campaignd.domain.actions import CellValues, Recommendation
from campaignd.domain.budget_day import BudgetDay
from campaignd.domain.campaign import CampaignSpec, Cell
from campaignd.domain.cells import CellSnapshot
from campaignd.sim.policies import Observations, Policy, PolicyContext, make_policy

log = structlog.get_logger(__name__)

RATE_NAME = {"conversions": "CVR", "revenue": "CVR", "clicks": "CTR",
             "completed_views": "completion rate"}


def observations_from(snap: CellSnapshot, now: datetime) -> Observations:
    """A policy's view of a snapshot (needs ``snap.daily_budgets_micros``)."""
    c = snap.counts
    n = len(snap)
    budgets = (np.zeros(n, dtype=np.int64) if snap.daily_budgets_micros is None
               else np.asarray(snap.daily_budgets_micros, dtype=np.int64))
    today = snap.today.get("spend_micros") if snap.today else None
    return Observations(
        now=now, cell_ids=snap.cell_ids, impressions=c["impressions"].copy(),
        spend_micros=c["spend_micros"].copy(), clicks=c["clicks"].copy(),
        completes=c["completes"].copy(), viewable=c["viewable"].copy(),
        measurable=c["measurable"].copy(), conversions=c["conversions"].copy(),
        conversion_value_micros=c["conversion_value_micros"].copy(),
        spent_today_micros=(np.zeros(n, dtype=np.int64) if today is None
                            else np.asarray(today, dtype=np.int64).copy()),
        budgets_micros=budgets)


def _zero_observations(obs: Observations, at: datetime) -> Observations:
    z = np.zeros_like(obs.impressions)
    return Observations(now=at, cell_ids=obs.cell_ids, impressions=z, spend_micros=z,
                        clicks=z, completes=z, viewable=z, measurable=z, conversions=z,
                        conversion_value_micros=z, spent_today_micros=z,
                        budgets_micros=obs.budgets_micros.copy())


class CellEvidence(Mapping[str, dict[str, Any]]):
    """Per changed cell, the evidence of a rebalance (cell id → dict), built when read: the
    decision engine reads only the cells it acts on (at 10,000 cells most wait for a later
    cycle), and ``prefetch`` lets it ask for their posteriors in one batch."""

    def __init__(self, cell_ids: Sequence[str], changed: np.ndarray, current: np.ndarray,
                 wanted: np.ndarray, obs: Observations, alloc: Any, level: float,
                 pooled: float | None, rate_name: str, currency: str) -> None:
        self._index = {cell_ids[int(i)]: int(i) for i in changed}
        self._current, self._wanted, self._obs = current, wanted, obs
        self._alloc, self._level = alloc, level
        self._pooled, self._rate_name, self._currency = pooled, rate_name, currency
        self._post: dict[int, tuple[float, ...]] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def prefetch(self, cell_ids: Iterable[str]) -> None:
        """Compute the posteriors of these cells in one go (before reading them)."""
        idx = [self._index[c] for c in cell_ids
               if c in self._index and self._index[c] not in self._post]
        if not idx or self._alloc is None:
            return
        p = self._alloc.posterior(self._level, cells=np.asarray(idx))
        for j, i in enumerate(idx):
            self._post[i] = (float(p.trials[j]), float(p.successes[j]), float(p.rate_mean[j]),
                             float(p.rate_low[j]), float(p.rate_high[j]),
                             float(p.value_per_dollar[j]), float(bool(p.proven[j])))

    def __getitem__(self, cell_id: str) -> dict[str, Any]:
        i = self._index[cell_id]
        obs = self._obs
        before, after = int(self._current[i]), int(self._wanted[i])
        e: dict[str, Any] = {"before_micros": before, "after_micros": after,
                             "impressions": int(obs.impressions[i]),
                             "spend_micros": int(obs.spend_micros[i]),
                             "spent_today_micros": int(obs.spent_today_micros[i])}
        why = f"daily budget {before / 1e6:,.2f} → {after / 1e6:,.2f} {self._currency}"
        if self._alloc is not None:
            if i not in self._post:
                self.prefetch([cell_id])
            trials, successes, mean, low, high, vpd, proven = self._post[i]
            e.update(trials=round(trials, 3), successes=round(successes, 3), rate_mean=mean,
                     rate_low=low, rate_high=high, value_per_money=vpd * 1_000_000,
                     proven=bool(proven))
            if self._pooled is None:
                # nothing counted yet in the whole campaign: the "posterior" is the prior, whose
                # mean rate (over every rate from 0 to 100 %) says nothing about this cell
                why += "; nothing counted yet: every cell alike, the budget follows the prior"
            else:
                why += (f"; posterior {self._rate_name} {mean:.3%} ({self._level:.0%} interval "
                        f"{low:.3%}–{high:.3%}) vs campaign {self._pooled:.3%}"
                        f" on {int(obs.impressions[i]):,} impressions")
        e["why"] = why
        return e


@dataclass(slots=True)
class _Campaign:
    spec: CampaignSpec
    cell_ids: tuple[str, ...]
    policy: Policy
    started: bool = False
    assessed: tuple[Any, Any] | None = None
    """(what was assessed, the assessment) of the last recommendation."""


class BudgetReallocationAgent(Agent):
    """See the module docstring. ``policy``: ``thompson`` (default) or a baseline (``uniform``,
    ``seed``) for comparison, built with ``policy_options`` (e.g. ``max_cut_per_day``);
    ``risk_draws``: joint posterior draws for impact and risk."""

    name = "reallocation"

    def __init__(self, *, policy: str = "thompson", seed: int = 0, risk_draws: int = 64,
                 decision_seconds: int = 120, level: float = 0.9,
                 policy_options: Mapping[str, Any] | None = None,
                 budget_day: BudgetDay | None = None) -> None:
        self.policy_name = policy
        self.budget_day = budget_day if budget_day is not None else BudgetDay("UTC")
        """The DSP account's day (``dsp.account_timezone``): when today's budget starts over."""
        self.policy_options = dict(policy_options or {})
        self.seed = seed
        self.risk_draws = risk_draws
        self.decision_seconds = decision_seconds
        self.level = level
        self._campaigns: dict[str, _Campaign] = {}
        self.errors = 0
        """Campaign runs that failed (logged; the other campaigns went on)."""
        self.last: dict[str, dict[str, Any]] = {}
        """Per campaign: what the last run concluded (for status and tests)."""

    def add_campaign(self, spec: CampaignSpec, cells: Sequence[Cell]) -> None:
        """Start (or restart, when its cells or spec changed) deciding for a campaign."""
        ids = tuple(c.cell_id for c in cells)
        known = self._campaigns.get(spec.id)
        if known is not None and known.cell_ids == ids and known.spec == spec:
            return
        ctx = PolicyContext(spec, list(cells), spec.lifetime_budget_micros,
                            spec.daily_budget_micros, seed=self.seed,
                            decision_seconds=self.decision_seconds, budget_day=self.budget_day)
        self._campaigns[spec.id] = _Campaign(spec, ids, make_policy(self.policy_name, ctx,
                                                                    **self.policy_options))

    def policy(self, campaign_id: str) -> Policy:
        return self._campaigns[campaign_id].policy

    def run(self, snapshots: Mapping[str, CellSnapshot], now: datetime) -> list[Recommendation]:
        recs: list[Recommendation] = []
        for cid, snap in snapshots.items():
            camp = self._campaigns.get(cid)
            if camp is None or snap.daily_budgets_micros is None:
                continue
            if snap.cell_ids != camp.cell_ids:
                raise ValueError(f"campaign {cid}: the snapshot's cells are not the agent's; "
                                 "call add_campaign with the campaign's current cells")
            try:
                got = self._run_campaign(camp, snap, now)
            except Exception as exc:  # one campaign's failure never stops the others
                log.error("reallocation: campaign skipped this cycle", campaign=cid,
                          error=f"{type(exc).__name__}: {exc}"[:300], exc_info=True)
                self.last[cid] = {"at": now.isoformat(), "error": f"{type(exc).__name__}: "
                                                                  f"{exc}"[:300]}
                self.errors += 1
                continue
            recs.extend(got)
        return recs

    def _run_campaign(self, camp: _Campaign, snap: CellSnapshot, now: datetime
                      ) -> list[Recommendation]:
        cid = camp.spec.id
        if not camp.spec.flight_start <= now < camp.spec.flight_end:
            # outside the flight nothing can be bought: no re-plan, no requests
            self.last[cid] = {"at": now.isoformat(), "cells_changed": 0,
                              "outside_flight": True}
            return []
        obs = observations_from(snap, now)
        if not camp.started:
            camp.started = True
            if int(obs.impressions.sum()) > 0:
                # Learn what was counted before this agent started as one interval -- from
                # the flight's start, at most a day back (older counts are taken as a
                # day old: a long flight's whole history as one interval would discount
                # it all away) -- instead of an equal split.
                since = min(max(camp.spec.flight_start, now - timedelta(days=1)),
                            now - timedelta(minutes=1))
                camp.policy.decide(_zero_observations(obs, since), since)
        wanted = np.asarray(camp.policy.decide(obs, now), dtype=np.int64)
        current = obs.budgets_micros
        changed = np.nonzero(wanted != current)[0]
        self.last[cid] = {"at": now.isoformat(), "cells_changed": int(changed.size)}
        out = ([self._recommend(camp, obs, wanted, current, changed, now)] if changed.size
               else [])
        pace = self._pace(camp, obs, current, now)
        if pace is not None:
            out.append(pace)
        return out

    def _pace(self, camp: _Campaign, obs: Observations, current: np.ndarray,
              now: datetime) -> Recommendation | None:
        """When the budgets in force add up to more than the campaign may spend today (its
        lifetime budget paced over the flight), their cut to it -- each line item's room
        above what it already spent cut in proportion (``affordable``), never raised --
        as a ``budget_pace`` the engine applies whenever the re-plan is not (too risky, no
        gain): pacing is a rule, not a bet, and must not wait for a confident re-plan."""
        today = getattr(camp.policy, "budget_today_micros", None)
        if today is None:
            return None
        spent = obs.spent_today_micros
        # (what each line item may still cost today: a budget below its spend costs its spend)
        if int(np.maximum(current, spent).sum()) <= today:
            return None
        # a DSP's cut limits (max_cut_per_day, …) hold here too: the cut comes off the room
        # above them
        alloc = getattr(camp.policy, "allocator", None)
        floor = None if alloc is None else alloc.cut_floor(previous=current.astype(float))
        paced = np.minimum(np.floor(affordable(current, spent, today, floor=floor)).astype(
            np.int64), current)
        if floor is not None:
            paced = np.maximum(paced, np.minimum(np.ceil(floor - 1e-6).astype(np.int64),
                                                 current))
        changed = np.nonzero(paced != current)[0]
        if changed.size == 0:
            return None
        spec = camp.spec
        summary = {"budget_before_micros": int(current.sum()),
                   "budget_after_micros": int(paced.sum()), "budget_today_micros": int(today),
                   "spent_today_micros": int(spent.sum()), "cells_changed": int(changed.size),
                   "why": "the budgets in force add up to more than today's share of the "
                          "lifetime budget (paced over the flight's days left): each line "
                          "item's room above its spend today is cut in proportion"}
        self.last[spec.id]["pace"] = summary
        return Recommendation(
            agent=self.name, kind="budget_pace", campaign_id=spec.id, target=spec.id,
            created_at=now,
            change={"daily_budgets_micros": CellValues(camp.cell_ids, changed,
                                                       paced[changed])},
            evidence={"summary": summary}, score=1.0, impact=0.0, risk=0.0)

    def _recommend(self, camp: _Campaign, obs: Observations, wanted: np.ndarray,
                   current: np.ndarray, changed: np.ndarray, now: datetime) -> Recommendation:
        spec = camp.spec
        assessment = None
        alloc = getattr(camp.policy, "allocator", None)
        if alloc is not None:
            # only money a cell can still spend today counts: a budget above what it can buy
            # (its supply, or its daypart is over) gains and loses nothing
            # Between re-plans the policy wants the same budgets from the same posterior: the
            # changes still pending (the DSP's request budget, materiality) are the same
            # decision, assessed once.
            key = (hash(wanted.tobytes()), float(alloc.trials.sum()),
                   float(alloc.successes.sum()))
            if camp.assessed is not None and camp.assessed[0] == key:
                assessment = camp.assessed[1]
            else:
                # joint draws cost cells x draws: fewer of them at 100,000 cells
                draws = max(16, min(self.risk_draws, 2_000_000 // max(len(camp.cell_ids), 1)))
                baseline = affordable(current, obs.spent_today_micros,
                                      getattr(camp.policy, "budget_today_micros", None))
                assessment = alloc.assess(wanted.astype(float), baseline,
                                          getattr(camp.policy, "spend_upper", None),
                                          draws=draws)
                camp.assessed = (key, assessment)
        if assessment is not None:
            impact, risk = assessment.expected_gain, assessment.risk
        else:
            # A baseline (the operator chose it in settings) has no posterior to assess its
            # changes with: they go to the engine unassessed (impact 1, risk 0, ``assessed``
            # false in the evidence), so the rule is applied as it says -- within the engine's
            # caps, materiality and request budget -- instead of never.
            impact, risk = 1.0, 0.0
        pooled = None
        if alloc is not None:
            t, sc = float(alloc.trials.sum()), float(alloc.successes.sum())
            pooled = sc / t if t > 0 else None
        cells = CellEvidence(camp.cell_ids, changed, current, wanted, obs, alloc, self.level,
                             pooled, RATE_NAME.get(spec.objective, "rate"), spec.currency)
        moved = int(np.abs(wanted[changed] - current[changed]).sum()) // 2
        assessed = assessment is not None
        summary: dict[str, Any] = {
            "policy": self.policy_name, "objective": spec.objective,
            "cells_changed": int(changed.size), "money_moved_micros": moved,
            "budget_before_micros": int(current.sum()),
            "budget_after_micros": int(wanted.sum()), "pooled_rate": pooled,
            "draws": assessment.draws if assessment is not None else 0,
            "assessed": assessed,
            "expected_gain_per_day": impact if assessed else None,
            "p_worse": risk if assessed else None}
        if assessment is not None:
            summary["gain_interval"] = [assessment.gain_low, assessment.gain_high]
            if pooled is None:
                # from the prior alone: its rates span 0-100 %, so the gain is only a sign
                summary["prior_only"] = True
        delay = getattr(camp.policy, "delay_hours", None)
        if delay:  # the conversion lag in use (measured, with estimate_delay)
            summary["conversion_delay_hours"] = round(float(delay), 2)
        self.last[spec.id].update(summary)
        return Recommendation(
            agent=self.name, kind="budget_rebalance", campaign_id=spec.id, target=spec.id,
            created_at=now,
            change={"daily_budgets_micros": CellValues(camp.cell_ids, changed,
                                                       wanted[changed])},
            evidence={"summary": summary, "cells": cells}, score=1.0,
            impact=max(impact, 0.0), risk=risk)



def affordable(current: np.ndarray, spent_today: np.ndarray, today: int | None, *,
               floor: np.ndarray | None = None) -> np.ndarray:
    """The budgets in force as they could stay: cut in proportion, above what each line item
    already spent today (and above ``floor``, a DSP's cut limits), to what the campaign may
    spend today (``today``: its lifetime budget paced over the flight) when they add up to more.
    A re-plan is judged against that, not against money the day does not have: otherwise every
    plan that must cut would look worse than standing still, in every draw (risk 1), and never
    be applied."""
    cur = np.asarray(current, dtype=float)
    if today is None or cur.sum() <= today:
        return cur
    spent = np.minimum(np.asarray(spent_today, dtype=float), cur)
    if floor is not None:
        spent = np.minimum(np.maximum(spent, np.asarray(floor, dtype=float)), cur)
    extra = cur - spent
    room = max(float(today) - float(spent.sum()), 0.0)
    total = float(extra.sum())
    out: np.ndarray = spent + (extra * (room / total) if total > 0 else 0.0)
    return out

__all__ = ["BudgetReallocationAgent", "CellEvidence", "affordable", "observations_from"]
