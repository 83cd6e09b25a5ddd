"""``scripts/bench decide``: the decision cycle — performance monitor + budget reallocation (a
re-plan: model fit, Thompson allocation, posterior draws for impact and risk) + the decision
engine — at 10,000+ and 100,000 cells, on synthetic counts with the shape of a live campaign
a few days in (targets: ≤ 100 ms median at 10,000 cells, ≤ 1 s at 100,000). Cycles come every
2 minutes as in the daemon; the policy re-plans every 10 (``replan_cycle_ms_median``: those
cycles alone, the costly ones). Every rebalance is handed to the engine as certain to help (the
costly case: with its real expected gain and risk the engine may skip it), up to the Beeswax
request budget of 1,200 actions a cycle (pending changes are proposed again each cycle).

The 12,000-cell campaign is ``config/campaigns/large_10k.toml``; the 100,000-cell one is the same
campaign with 50 platforms instead of 6 (10 x 5 x 5 x 8 x 50). Counts: impressions per cell
~ Poisson(20,000), conversions binomial at a rate with additive level effects, spend at a CPM
around $25, a third of the day spent; budgets in force: an equal split.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from datetime import timedelta
from typing import Any

import numpy as np

from campaignd.bench import ROOT, emit


def _campaign(cells: int) -> tuple[Any, list[Any]]:
    from campaignd.domain.campaign import Platform, atomize, load_spec
    spec = load_spec(ROOT / "config" / "campaigns" / "large_10k.toml")
    if cells > 20_000:
        base = spec.platforms[0]
        spec = dataclasses.replace(spec, max_cells=cells, platforms=tuple(
            Platform(f"platform_{i:02d}", tuple(f"{b}.{i}" for b in base.app_bundles),
                     f"Platform {i}") for i in range(50)))
    return spec, atomize(spec)


def _snapshot(spec: Any, cells: list[Any], rng: np.random.Generator, at_s: int) -> Any:
    from campaignd.domain.cells import METRIC_INDEX, CellTable
    n = len(cells)
    table = CellTable(spec.id, cells)
    effect = {}
    for dim in ("audience", "creative", "bid_strategy", "daypart", "platform"):
        for lvl in spec.levels(dim):
            effect[(dim, lvl.id)] = rng.normal(0, 0.3)
    logit = np.array([-6.0 + sum(effect[(d, getattr(c, d))] for d in
                                 ("audience", "creative", "bid_strategy", "daypart", "platform"))
                      for c in cells])
    imps = rng.poisson(20_000, n).astype(np.int64)
    conv = rng.binomial(imps, 1 / (1 + np.exp(-logit))).astype(np.int64)
    spend = (imps * rng.normal(25_000, 3_000, n).clip(5_000)).astype(np.int64)
    c = table.counts
    c["impressions"][:] = imps
    c["conversions"][:] = conv
    c["clicks"][:] = imps // 500
    c["spend_micros"][:] = spend
    budget = spec.daily_budget_micros // n
    table.day = at_s // 86_400
    # a third of the way through the day: a third of each budget spent, give or take
    table.today[METRIC_INDEX["spend_micros"]] = (budget * rng.uniform(0.1, 0.6, n)).astype(
        np.int64)
    snap = table.snapshot(at_s=at_s)
    return dataclasses.replace(snap, daily_budgets_micros=np.full(n, budget, dtype=np.int64))


def bench_decide() -> None:
    from campaignd.agents.decision import DecisionEngine, DecisionRules
    from campaignd.agents.monitor import PerformanceMonitor
    from campaignd.agents.reallocation import BudgetReallocationAgent
    from campaignd.domain.actions import CampaignState

    for cells_wanted, cycles in ((12_000, 30), (100_000, 10)):
        spec, cells = _campaign(cells_wanted)
        n = len(cells)
        rng = np.random.default_rng(1)
        now = spec.flight_start + timedelta(days=3, hours=8)
        snap = _snapshot(spec, cells, rng, int(now.timestamp()))
        monitor = PerformanceMonitor()
        agent = BudgetReallocationAgent(seed=1)
        agent.add_campaign(spec, cells)
        engine = DecisionEngine(DecisionRules(max_requests=1200))
        state = CampaignState(
            spec.id, spec.daily_budget_micros, spec.lifetime_budget_micros, 60.0,
            snap.cell_ids, np.arange(1, n + 1), snap.daily_budgets_micros.copy(),
            np.full(n, spec.lifetime_budget_micros // n), snap.counts["spend_micros"].copy(),
            snap.today["spend_micros"].copy(), np.ones(n, dtype=bool))
        agent.run({spec.id: snap}, now)  # warm start: learns the counts, first re-plan
        times: dict[str, list[float]] = {"monitor": [], "reallocation": [], "engine": [],
                                         "cycle": [], "replan_cycle": []}
        actions = 0
        skipped: dict[str, int] = {}
        last_replan = now
        for _ in range(cycles):
            now += timedelta(minutes=2)  # the daemon's cadence; the policy re-plans every 10
            snap.counts["impressions"][:] += rng.poisson(60, n)
            t0 = time.perf_counter()
            monitor.run({spec.id: snap}, now)
            t1 = time.perf_counter()
            recs = agent.run({spec.id: snap}, now)
            t2 = time.perf_counter()
            # the engine's work on the whole rebalance, whatever its expected gain and risk
            recs = [dataclasses.replace(r, impact=max(r.impact, 1.0), risk=0.0, score=1.0)
                    for r in recs]
            plan = engine.decide(recs, {spec.id: state}, now)
            t3 = time.perf_counter()
            if plan.actions:
                actions = len(plan.actions)
                skipped = plan.summary()["skipped"]
            for name, dt in (("monitor", t1 - t0), ("reallocation", t2 - t1),
                             ("engine", t3 - t2), ("cycle", t3 - t0)):
                times[name].append(dt)
            if (now - last_replan).total_seconds() >= 600:
                times["replan_cycle"].append(t3 - t0)
                last_replan = now
        emit("decide", cells=n, cycles=cycles, actions_last_cycle=actions,
             skipped_last_cycle=skipped,
             **{f"{k}_ms_median": round(statistics.median(v) * 1000, 1)
                for k, v in times.items()},
             cycle_ms_max=round(max(times["cycle"]) * 1000, 1), replans=len(
                 times["replan_cycle"]))


__all__ = ["bench_decide"]
