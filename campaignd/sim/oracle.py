"""The oracle: the best allocation a policy that knew the truth could reach, as a reference.

How it is computed. The driver runs a *second* market, same scenario, same seed, same cells and
line items, same pacing, budgets and delivery limits, and lets ``OraclePolicy`` set the per-cell
daily budgets through the same ``decide`` interface and the same cap enforcement as any policy.
The oracle differs only in what it sees: instead of observed counts it reads the market's ground
truth (``Market.forecast``: expected available impressions, clearing prices and true rates, with
the current creative fatigue and any drift at each hour, per line item). Every hour it re-plans
the rest of the budget day (to the account's midnight):

1. for every line item, its spend capacity (expected wins x clearing price) and expected
   objective value for the rest of the day *as the sole buyer of its inventory*. Line items
   with identical targeting (same ZIPs, segments, hours, bundles: a targeting group) split the
   same inventory, so the oracle funds at most one per group; a higher bid buys more of the
   group's inventory at a higher price, so the options of a group trade value for volume;
2. a multiple-choice knapsack, solved as its LP relaxation: on each group's upper convex hull
   of (cost, value) options, increments are taken greedily by incremental value per dollar until
   the remaining daily budget is used (the optimum for linear value under one budget constraint,
   up to the one fractional group);
3. fatigue: values use the creative fatigue reached so far (re-read every hour). Optionally
   (``fatigue_rounds > 0``) values are also discounted by the average fatigue the plan's own
   impressions would cause over the rest of the day (``Market.fatigue_outlook``) and the
   knapsack re-solved in damped rounds; over seeds 1-3 on fatigue.toml and seed.toml that made
   no difference beyond noise (-2 % and +1 %), so it is off by default;
4. each funded cell's daily budget = spent today + its planned spend; others = spent today (no
   further spend). Pacing then spreads it over the cell's inventory.

Why it is an upper bound-ish reference, not a bound. Greedy-by-value-per-dollar is optimal for
the expected objective of one day when supply caps, prices and rates are known and linear, which
is what the oracle is given. It is not a strict bound: realised delivery is random (Poisson wins,
binomial outcomes) and the two runs draw different noise; fatigue caused by its own spend is
estimated (spread by supply, damped), then corrected at the next hourly re-plan; drift is known
as soon as it happens (the forecast evaluates each hour's truth); and the budget left unspent
because expected supply did not materialise is re-planned only hourly. A learning policy can
therefore beat it by a few percent by luck, but not systematically.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from campaignd.dsp.sandbox.market import Market
from campaignd.sim.policies import Observations, PolicyContext

_FATIGUED_BY = {"conversions": "conversion", "revenue": "conversion", "clicks": "ctr",
                "completed_views": "completion"}


class OraclePolicy:
    """Sets budgets from the market's ground truth (see the module docstring)."""

    name = "oracle"
    decision_seconds = 3600
    fatigue_rounds = 0
    """Rounds of the fatigue-aware re-plan (step 3); 0 = plan on the current fatigue only."""

    def __init__(self, ctx: PolicyContext, market: Market, groups: np.ndarray) -> None:
        self._ctx = ctx
        self._market = market
        self._groups = np.asarray(groups, dtype=np.int64)
        self.plans = 0

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        m = self._market
        ctx = self._ctx
        now = now.astimezone(UTC)
        day_end = datetime.fromtimestamp(ctx.budget_day.span(now.timestamp())[1], UTC)
        spent = observations.spent_today_micros.astype(np.int64)
        budgets = spent.copy()
        # paced over the flight as every policy is (PolicyContext.budget_today)
        remaining = ctx.budget_today(int(observations.spend_micros.sum()), int(spent.sum()),
                                     now) - int(spent.sum())
        self.plans += 1
        if remaining <= 0:
            return budgets
        el = m.static_eligible(now)
        # each line item's capacity and value for the rest of the day as the sole buyer of its
        # inventory (competition only happens inside a targeting group, and we fund one per group)
        f = m.forecast(now, day_end, eligible=el, compete=False)
        cost = np.where(el, f.spend_micros, 0.0)
        value = np.where(el, f.objective(ctx.objective), 0.0)
        plan = _multiple_choice_knapsack(self._groups, cost, value, float(remaining))
        if _FATIGUED_BY.get(ctx.objective) in m.fatigued_metrics():
            # the plan's own spend wears creatives out: re-plan on values discounted by the
            # fatigue the previous plan would cause (a few damped fixed-point rounds)
            price = np.where(f.impressions > 0, f.spend_micros / np.maximum(f.impressions, 1e-9),
                             0.0)
            ratio = np.ones(cost.size)
            for _ in range(self.fatigue_rounds):
                spend = np.zeros(cost.size)
                for i, x in plan.items():
                    spend[i] = x
                imps = np.where(price > 0, spend / np.where(price > 0, price, 1.0), 0.0)
                ratio = 0.5 * ratio + 0.5 * m.fatigue_outlook(imps)
                plan = _multiple_choice_knapsack(self._groups, cost, value * ratio,
                                                 float(remaining))
        for i, x in plan.items():
            budgets[i] += int(x)
        return budgets


def _multiple_choice_knapsack(groups: np.ndarray, cost: np.ndarray, value: np.ndarray,
                              budget: float) -> dict[int, float]:
    """At most one item per group, fractional in the budget: the LP relaxation's greedy on each
    group's upper convex hull of (cost, value) options, by incremental value per unit of cost.
    Returns item -> planned spend."""
    ok = np.flatnonzero((cost > 0) & (value > 0))
    increments: list[tuple[float, int, int, float, float]] = []  # (-slope, group, item, dc, dv)
    by_group: dict[int, list[int]] = {}
    for item in ok:
        by_group.setdefault(int(groups[item]), []).append(int(item))
    for g, items in by_group.items():
        c0 = v0 = 0.0
        cand = sorted(items, key=lambda i: cost[i])
        while True:
            best, best_slope = -1, 0.0
            for i in cand:
                if cost[i] > c0:
                    slope = float((value[i] - v0) / (cost[i] - c0))
                    if slope > best_slope:
                        best, best_slope = i, slope
            if best < 0:
                break
            increments.append((-best_slope, g, best, float(cost[best] - c0),
                               float(value[best] - v0)))
            c0, v0 = float(cost[best]), float(value[best])
    increments.sort()
    chosen: dict[int, tuple[int, float]] = {}  # group -> (item, spend)
    frozen: set[int] = set()
    left = budget
    for _neg, g, i, dc, _dv in increments:
        if left <= 0:
            break
        if g in frozen:
            continue
        prev_spend = chosen[g][1] if g in chosen else 0.0
        take = min(dc, left)
        spend = prev_spend + take
        if take < dc and g in chosen:
            # a partial upgrade buys less than the LP promises (the bigger option is funded
            # below capacity at its own value per dollar): keep the cheaper option if it is
            # worth at least as much, and let other groups use the rest
            j = chosen[g][0]
            if value[i] / cost[i] * spend <= value[j]:
                frozen.add(g)
                continue
        chosen[g] = (i, spend)
        left -= take
    return {i: spend for i, spend in chosen.values()}


__all__ = ["OraclePolicy"]
