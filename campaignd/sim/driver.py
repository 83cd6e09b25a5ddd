"""The simulator: a campaign, a policy and the sandbox market on a virtual clock, in-process.

``run_simulation`` atomizes the campaign, creates one DSP line item per cell (targeting from the
cell's levels: the audience's ZIPs and signals, the daypart's hours of week, the platform's app
bundles, the creative level id as creative key, the bid strategy's CPM bid), and steps the
market. What the market delivers goes through campaignd's own pipeline into a registry, as in
the daemon: by default the market's per-step totals enter the pipeline's aggregation stage
(``Aggregator.add_rows``: the same cell totals, rolling windows and creative series; the
totals carry no ZIP code, so the ZIP series stays empty); with
``events=True`` every impression, activity, click and conversion is materialised as the
``AdLogMessage`` Beeswax would send and goes through the whole pipeline — validation,
enrichment, dedupe, aggregation — typed, without JSON (slower: about 10 s per simulated day of
the seed campaign). Every ``decision_seconds`` (2 simulated minutes) the policy sees the
per-cell counts the registry holds and returns per-cell daily budgets; the driver enforces the
campaign's caps and applies them. Then it runs the oracle (``campaignd.sim.oracle``) on a
second market with the same seed and reports achieved vs oracle. No HTTP, no sleeping: the
clock is a ``VirtualClock``.

Caps, enforced on whatever a policy returns (so no policy can overspend):

- daily: ``sum(max(budget_i, spent_today_i)) <= campaign daily budget``: budget above what a cell
  already spent today is scaled down proportionally when the sum would exceed the cap (a cell
  cut below its spend simply stops for the day);
- lifetime: each line item's lifetime budget = its spend so far + a share of the campaign's
  remaining lifetime budget proportional to its daily budget, so the sum can never exceed it.

Money in the report is decimal strings in currency units; ratios are floats. The same scenario,
campaign, policy, seed and days give the same report except ``wall_seconds``.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from campaignd.clock import VirtualClock
from campaignd.domain.budget_day import BudgetDay
from campaignd.domain.campaign import (
    DIMENSIONS,
    CampaignSpec,
    Cell,
    atomize,
    from_micros,
    load_spec,
)
from campaignd.domain.cells import METRIC_INDEX, N_METRICS, CellTable
from campaignd.dsp.sandbox.feed import Ids, MessageEncoder
from campaignd.dsp.sandbox.market import TOTAL_KEYS, Market
from campaignd.dsp.sandbox.model import LineItemConfig
from campaignd.dsp.sandbox.scenarios import Scenario, load_scenario
from campaignd.errors import BadInput
from campaignd.pipeline.aggregate import Aggregator
from campaignd.pipeline.ingest import Pipeline
from campaignd.pipeline.registry import Registry
from campaignd.sim.oracle import OraclePolicy
from campaignd.sim.policies import Observations, Policy, PolicyContext, make_policy

DECISION_SECONDS = 120
SAMPLE_SECONDS = 3600
_T = {k: i for i, k in enumerate(TOTAL_KEYS)}
_OBJECTIVE_TOTAL = {"conversions": "conversions", "revenue": "conversion_value_micros",
                    "completed_views": "completes", "clicks": "clicks"}


def line_item_configs(spec: CampaignSpec, cells: list[Cell], daily_micros: int,
                      campaign_id: int = 1) -> list[LineItemConfig]:
    """One DSP line item per cell, ids ``1..n`` in cell order."""
    out = []
    for i, c in enumerate(cells):
        a = spec.level("audience", c.audience)
        p = spec.level("platform", c.platform)
        d = spec.level("daypart", c.daypart)
        b = spec.level("bid_strategy", c.bid_strategy)
        out.append(LineItemConfig(
            line_item_id=i + 1, campaign_id=campaign_id, active=True,
            lifetime_budget_micros=spec.lifetime_budget_micros,
            daily_budget_micros=daily_micros,
            cpm_bid_micros=int(b.cpm_bid * 1_000_000),  # type: ignore[union-attr]
            creatives={c.creative: 1},
            zips=frozenset(a.zips), segments=frozenset(a.signals),  # type: ignore[union-attr]
            hours_of_week=frozenset(d.hours_of_week()),  # type: ignore[union-attr]
            app_bundles=frozenset(p.app_bundles),  # type: ignore[union-attr]
            start=spec.flight_start, end=spec.flight_end,
            alternative_id=c.alternative_id,
        ))
    return out


def targeting_groups(configs: list[LineItemConfig]) -> np.ndarray:
    """Group id per line item: equal ids buy the same inventory (same targeting)."""
    keys: dict[tuple[Any, ...], int] = {}
    return np.array([keys.setdefault((c.zips, c.segments, c.hours_of_week, c.app_bundles),
                                     len(keys)) for c in configs], dtype=np.int64)


def enforce_caps(budgets: np.ndarray, spent_today: np.ndarray, daily_cap: int) -> np.ndarray:
    """Scale budget above today's spend so that ``sum(max(b, spent)) <= daily_cap``."""
    b = np.maximum(np.asarray(budgets, dtype=np.int64), 0)
    s = np.asarray(spent_today, dtype=np.int64)
    head = np.maximum(b - s, 0)
    room = daily_cap - int(np.maximum(s, 0).sum())
    total = int(head.sum())
    if total <= max(room, 0):
        return b
    if room <= 0:
        return np.minimum(b, s)
    scaled = (head.astype(object) * room // total).astype(np.int64)  # exact integer scaling
    return np.where(b > s, s + scaled, b)


def lifetime_shares(budgets: np.ndarray, spent_total: np.ndarray, lifetime_cap: int) -> np.ndarray:
    """Per-line-item lifetime budgets whose sum never exceeds the campaign's lifetime cap."""
    rem = max(0, lifetime_cap - int(spent_total.sum()))
    tot = int(budgets.sum())
    if tot <= 0:
        return spent_total.astype(np.int64).copy()
    share = (budgets.astype(object) * rem // tot).astype(np.int64)
    return spent_total.astype(np.int64) + share


def _lifetime_cap(lifetimes: np.ndarray, cap: int) -> np.ndarray:
    """``lifetimes`` if they sum to at most ``cap``, else scaled down to (the DSP's rule)."""
    total = int(np.asarray(lifetimes, dtype=np.int64).sum())
    if total <= cap:
        return np.asarray(lifetimes, dtype=np.int64)
    return (np.asarray(lifetimes).astype(object) * cap // total).astype(np.int64)


@dataclass
class RunTrace:
    """What one run did, sampled hourly (for the HTML report)."""

    times: list[datetime] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    spend_micros: list[int] = field(default_factory=list)
    level_share: dict[str, list[list[float]]] = field(default_factory=dict)
    actions: list[int] = field(default_factory=list)
    totals: np.ndarray | None = None
    actions_by_kind: dict[str, int] = field(default_factory=dict)
    decisions: int = 0
    market_totals: np.ndarray | None = None
    """What the market says it delivered (``totals`` is what the pipeline counted)."""
    pipeline: dict[str, Any] | None = None
    """The pipeline's counters when events went through it (``events=True``)."""
    days_touched: int = 0
    """Budget days (the account's) the run overlaps: the budget available is the daily budget
    times this."""
    after_end: dict[str, int] = field(default_factory=dict)
    """Conversions (and their value, micros) the run caused that the DSP reports after its end
    (their delay runs past it): part of what the run achieved."""


_TOTAL_METRIC = np.array([METRIC_INDEX[k] for k in TOTAL_KEYS], dtype=np.int64)
"""Row ``i`` of the market's totals is registry metric ``_TOTAL_METRIC[i]``."""


def _observe(table: CellTable, market: Market, now: datetime,
             budgets: np.ndarray) -> Observations:
    c = table.counts
    return Observations(
        now=now, cell_ids=table.cell_ids, impressions=c["impressions"].copy(),
        spend_micros=c["spend_micros"].copy(), clicks=c["clicks"].copy(),
        completes=c["completes"].copy(), viewable=c["viewable"].copy(),
        measurable=c["measurable"].copy(), conversions=c["conversions"].copy(),
        conversion_value_micros=c["conversion_value_micros"].copy(),
        spent_today_micros=market.spent_today_micros(), budgets_micros=budgets.copy())


def _registry_totals(table: CellTable) -> np.ndarray:
    """The registry's totals in the market's ``TOTAL_KEYS`` layout (rows × cells)."""
    return table.matrix[_TOTAL_METRIC].copy()


class _Feed:
    """What the market delivers → campaignd's pipeline → the registry (see the module
    docstring)."""

    def __init__(self, spec: CampaignSpec, cells: list[Cell], clock: VirtualClock, *,
                 events: bool, budget_day: BudgetDay | None = None) -> None:
        self.registry = Registry(budget_day)
        self.table = self.registry.add_campaign(spec, cells)
        self.registry.register(spec.id, {i + 1: c.cell_id for i, c in enumerate(cells)})
        self.events = events
        self.n = len(cells)
        if events:
            from campaignd.stores.memory import InMemoryHotStore
            self._runner = asyncio.Runner()
            self.pipeline = Pipeline(self.registry, InMemoryHotStore(clock), clock=clock,
                                     keep_pending=False)
            self._encoder = MessageEncoder("sandbox")
            self._ids = [Ids(1, 1, 1, i + 1, None) for i in range(self.n)]
        else:
            self.aggregator = Aggregator(self.registry, keep_pending=False)

    def advance(self, market: Market, until: datetime) -> None:
        totals, events = market.advance(until, emit_events=self.events)
        at_s = int(until.timestamp())
        if self.events:
            ids, enc = self._ids, self._encoder
            msgs = [enc.message(e, ids[e.line_item_id - 1]) for e in events]
            self._runner.run(self.pipeline.ingest_messages(msgs))
            return
        rows = np.zeros((self.n, N_METRICS), dtype=np.int64)
        slots = totals.line_item_ids - 1
        for i, key in enumerate(TOTAL_KEYS):
            rows[slots, _TOTAL_METRIC[i]] = getattr(totals, key)
        self.aggregator.add_rows(slots, np.full(slots.size, at_s - 1), rows[slots], at_s)

    def close(self) -> None:
        if self.events:
            self._runner.close()


def run_policy(market: Market, policy: Policy, ctx: PolicyContext, *, start: datetime,
               end: datetime, decision_seconds: int, events: bool = False) -> RunTrace:
    """Drive ``market`` with ``policy`` from ``start`` to ``end`` on a virtual clock; the
    policy sees what campaignd's pipeline counted."""
    clock = VirtualClock(start)
    spec = ctx.spec
    cells = list(ctx.cells)
    n = len(cells)
    ids = np.arange(1, n + 1, dtype=np.int64)
    level_idx = {d: np.array([[lvl.id for lvl in spec.levels(d)].index(getattr(c, d))
                              for c in cells]) for d in DIMENSIONS}
    n_levels = {d: len(spec.levels(d)) for d in DIMENSIONS}
    trace = RunTrace(level_share={d: [] for d in DIMENSIONS})
    budgets = np.zeros(n, dtype=np.int64)
    objective_key = _T[_OBJECTIVE_TOTAL[spec.objective]]
    next_sample = start
    actions_this_hour = 0
    feed = _Feed(spec, cells, clock, events=events, budget_day=ctx.budget_day)
    table = feed.table
    try:
        while True:
            now = clock.now()
            obs = _observe(table, market, now, budgets)
            if now < end:
                wanted = np.asarray(policy.decide(obs, now), dtype=np.int64)
                if wanted.shape != (n,):
                    raise BadInput("returned budgets of the wrong shape", field="policy",
                                   value=wanted.shape, fix=f"return one budget per cell ({n})")
                new = enforce_caps(wanted, obs.spent_today_micros, ctx.daily_budget_micros)
                changed = int(np.count_nonzero(new != budgets))
                if trace.decisions > 0:
                    trace.actions_by_kind["budget_change"] = (
                        trace.actions_by_kind.get("budget_change", 0) + changed)
                    actions_this_hour += changed
                trace.decisions += 1
                budgets = new
                # a policy that sets line-item lifetime budgets itself (the daemon's decision
                # path) has them applied as they are; otherwise shares of what is left
                own = getattr(policy, "lifetime_budgets", None)
                life = (np.minimum(own, _lifetime_cap(own, ctx.lifetime_budget_micros))
                        if own is not None else
                        lifetime_shares(budgets, obs.spend_micros, ctx.lifetime_budget_micros))
                market.set_budgets(ids, budgets, life)
            if now >= next_sample or now >= end:
                tot = _registry_totals(table)
                trace.times.append(now)
                trace.objective.append(float(tot[objective_key].sum()))
                trace.spend_micros.append(int(tot[_T["spend_micros"]].sum()))
                total_b = max(1, int(budgets.sum()))
                for d in DIMENSIONS:
                    trace.level_share[d].append(
                        list(np.bincount(level_idx[d], budgets, minlength=n_levels[d]) / total_b))
                trace.actions.append(actions_this_hour)
                actions_this_hour = 0
                while next_sample <= now:  # on an hourly grid from the start
                    next_sample += timedelta(seconds=SAMPLE_SECONDS)
            if now >= end:
                break
            # (a step ends on each sample time, whatever the decision interval)
            step_end = min(end, now + timedelta(seconds=decision_seconds), next_sample)
            feed.advance(market, step_end)
            clock.set(step_end)
    finally:
        feed.close()
    trace.totals = _registry_totals(table)
    trace.market_totals = market.totals_array()
    trace.after_end = {"conversions": market.pending_conversions(),
                       "conversion_value_micros": market.pending_value_micros()}
    if feed.events:
        trace.pipeline = feed.pipeline.stats.as_dict()
    last = end - timedelta(microseconds=1)
    trace.days_touched = ctx.budget_day.of(last) - ctx.budget_day.of(start) + 1
    return trace


class HandOver:
    """The policy until ``at``, then the oracle on the same market (``simulate``'s
    ``oracle_after``: what perfect learning from ``at`` on would reach). The oracle re-plans
    hourly from the hand-over, as it does on its own."""

    def __init__(self, policy: Policy, oracle: OraclePolicy, at: datetime,
                 budget_day: BudgetDay | None = None) -> None:
        self.name = policy.name
        self.policy, self.oracle, self.at = policy, oracle, at
        self.budget_day = budget_day
        """The account's day: a plan made yesterday is not today's (re-plan at midnight)."""
        self._planned: datetime | None = None
        self._budgets: np.ndarray | None = None

    @property
    def lifetime_budgets(self) -> np.ndarray | None:
        """The policy's own line-item lifetime budgets until the hand-over (if it sets them);
        then none: the driver shares what is left, as for the oracle."""
        if self._planned is not None:
            return None
        own: np.ndarray | None = getattr(self.policy, "lifetime_budgets", None)
        return own

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        if now < self.at:
            return self.policy.decide(observations, now)
        if (self._planned is None or self._budgets is None
                or (now - self._planned).total_seconds() >= OraclePolicy.decision_seconds
                or (self.budget_day is not None
                    and self.budget_day.of(now) != self.budget_day.of(self._planned))):
            self._planned = now
            self._budgets = self.oracle.decide(observations, now)
        return self._budgets


@dataclass
class SimulationResult:
    report: dict[str, Any]
    scenario: Scenario
    spec: CampaignSpec
    cells: list[Cell]
    policy_trace: RunTrace
    oracle_trace: RunTrace


MAX_DAYS = 3660
"""The longest run ``simulate`` takes: ten years of market time (a longer one is a typo, and
``inf`` would overflow the clock)."""


def simulate(scenario_path: str | Path, *, campaign_path: str | Path | None = None,
             days: float, seed: int, policy: str = "uniform",
             decision_seconds: int = DECISION_SECONDS, oracle: bool = True,
             events: bool = False, engine: bool = True,
             policy_options: Mapping[str, Any] | None = None,
             oracle_after: float | None = None) -> SimulationResult:
    """Run a policy (and the oracle) and return the report with the traces behind it.

    ``thompson`` runs the daemon's decision path (``DecidingPolicy``: the reallocation agent,
    then the decision engine with the daemon's rules); ``engine=False`` applies its budgets
    directly instead (a diagnostic: what the engine's rules cost or gain). ``policy_options``:
    the policy's keyword options (e.g. ``fatigue_half_life`` for ``thompson``).

    ``oracle_after`` (hours): a bound on learning, not a policy -- the policy decides for the
    first ``oracle_after`` hours, then the oracle (the true rates) takes over the same market:
    what the run would reach had the policy learnt everything by then (``HandOver``)."""
    wall0 = time.perf_counter()
    if not 0 < days <= MAX_DAYS:  # (NaN fails it too; inf overflowed the market's clock)
        raise BadInput(f"must be more than 0 and at most {MAX_DAYS} days", field="days",
                       value=days, fix="e.g. --days 7")
    if seed < 0:  # numpy's generators take none below 0
        raise BadInput("must be 0 or more", field="seed", value=seed, fix="e.g. --seed 1")
    if oracle_after is not None and policy == "oracle":
        raise BadInput("the oracle cannot hand over to itself", field="oracle_after",
                       value=oracle_after, fix="simulate another policy, or drop it")
    if oracle_after is not None and not 0 <= oracle_after <= days * 24:
        raise BadInput("must be between 0 and the run's hours", field="oracle_after",
                       value=oracle_after, fix=f"e.g. --oracle-after 24 (at most {days * 24:g})")
    options = dict(policy_options or {})
    if options and policy == "oracle":
        raise BadInput("takes no options", field="policy", value=policy,
                       fix="drop the policy options, or simulate another policy")
    scenario = load_scenario(scenario_path)
    spec = load_spec(campaign_path) if campaign_path is not None else scenario.campaign
    cells = atomize(spec)
    start = scenario.default_start
    end = start + timedelta(days=days)
    ctx = PolicyContext(spec, cells, spec.lifetime_budget_micros, spec.daily_budget_micros,
                        seed=seed, decision_seconds=decision_seconds,
                        budget_day=BudgetDay(scenario.account_timezone))
    configs = line_item_configs(spec, cells, 0)

    def fresh_market() -> Market:
        m = Market(scenario, seed=seed, start=start)
        for cfg in configs:
            m.configure(cfg)
        return m

    market = fresh_market()
    if policy == "oracle":
        pol: Policy = OraclePolicy(ctx, market, targeting_groups(configs))
        ptrace = run_policy(market, pol, ctx, start=start, end=end,
                            decision_seconds=OraclePolicy.decision_seconds)
    else:
        if policy == "thompson" and engine:
            from campaignd.sim.deciding import DecidingPolicy
            pol = DecidingPolicy(ctx, options=options)
        else:
            pol = make_policy(policy, ctx, **options)
        if oracle_after is not None:
            pol = HandOver(pol, OraclePolicy(ctx, market, targeting_groups(configs)),
                           start + timedelta(hours=oracle_after), ctx.budget_day)
        ptrace = run_policy(market, pol, ctx, start=start, end=end,
                            decision_seconds=decision_seconds, events=events)
    if oracle:
        om = fresh_market()
        otrace = run_policy(om, OraclePolicy(ctx, om, targeting_groups(configs)), ctx,
                            start=start, end=end, decision_seconds=OraclePolicy.decision_seconds)
    else:
        otrace = ptrace
    report = _report(scenario, spec, cells, policy, seed, days, ptrace, otrace,
                     time.perf_counter() - wall0,
                     paced_daily=ctx.budget_today(0, 0, start))
    return SimulationResult(report, scenario, spec, cells, ptrace, otrace)


def _money(micros: int) -> str:
    return str(from_micros(int(micros)))


def _report(scenario: Scenario, spec: CampaignSpec, cells: list[Cell], policy: str, seed: int,
            days: float, p: RunTrace, o: RunTrace, wall: float, *,
            paced_daily: int) -> dict[str, Any]:
    assert p.totals is not None and o.totals is not None
    pt = p.totals.sum(axis=1)
    ot = o.totals.sum(axis=1)
    key = _T[_OBJECTIVE_TOTAL[spec.objective]]
    # conversions still on their way when the run ends were caused by it: they count (for
    # both; dropping the same few from each pulls a ratio below 1 further down)
    late = _OBJECTIVE_TOTAL[spec.objective]
    achieved = int(pt[key]) + p.after_end.get(late, 0)
    best = int(ot[key]) + o.after_end.get(late, 0)
    # the days' budgets paced over the flight (the lifetime budget spread over its days, at
    # most the daily budget each)
    budget = min(spec.lifetime_budget_micros, paced_daily * p.days_touched)
    return {
        "scenario": scenario.name,
        "campaign": spec.id,
        "policy": policy,
        "seed": seed,
        "days": days,
        "cells": len(cells),
        "objective": spec.objective,
        "impressions": int(pt[_T["impressions"]]),
        "clicks": int(pt[_T["clicks"]]),
        "completed_views": int(pt[_T["completes"]]),
        "viewable": int(pt[_T["viewable"]]),
        "conversions": int(pt[_T["conversions"]]),
        "conversion_value": _money(pt[_T["conversion_value_micros"]]),
        "spend": _money(pt[_T["spend_micros"]]),
        "budget": _money(budget),
        "oracle_impressions": int(ot[_T["impressions"]]),
        "oracle_conversions": int(ot[_T["conversions"]]),
        "oracle_conversion_value": _money(ot[_T["conversion_value_micros"]]),
        "oracle_completed_views": int(ot[_T["completes"]]),
        "oracle_clicks": int(ot[_T["clicks"]]),
        "oracle_spend": _money(ot[_T["spend_micros"]]),
        "conversions_after_end": p.after_end.get("conversions", 0),
        "oracle_conversions_after_end": o.after_end.get("conversions", 0),
        "capture_ratio": round(achieved / best, 4) if best > 0 else None,
        "capture_by_day": _capture_by_day(p, o, late),
        "actions": dict(sorted(p.actions_by_kind.items())) or {"budget_change": 0},
        "decisions": p.decisions,
        "events": p.pipeline is not None,
        **({"pipeline": p.pipeline} if p.pipeline is not None else {}),
        "wall_seconds": round(wall, 3),
    }


def _capture_by_day(p: RunTrace, o: RunTrace, objective: str = "") -> list[float | None]:
    """Per 24 hours of the run (the last one may be shorter): achieved ÷ oracle on the
    objective over those hours, from the hourly samples (``None`` where the oracle got none;
    the last day with the ``objective``'s units reported after the run's end).
    The first day is the cost of learning from nothing; the later ones show how close the
    policy gets once it has data."""
    if not p.times or not o.times:
        return []
    start = p.times[0]

    def at(trace: RunTrace, t: datetime) -> float:
        i = bisect.bisect_right(trace.times, t) - 1  # the last sample at or before t
        return trace.objective[max(i, 0)]

    out: list[float | None] = []
    day = timedelta(days=1)
    t0 = start
    while t0 < p.times[-1]:
        t1 = min(t0 + day, p.times[-1])
        got = at(p, t1) - at(p, t0)
        best = at(o, t1) - at(o, t0)
        if t1 >= p.times[-1]:  # the last day: with what arrives after the run's end
            got += p.after_end.get(objective, 0)
            best += o.after_end.get(objective, 0)
        out.append(round(got / best, 4) if best > 0 else None)
        t0 = t1
    return out


def run_simulation(scenario_path: str | Path, *, campaign_path: str | Path | None = None,
                   days: float, seed: int, policy: str = "uniform",
                   report_html: Path | None = None, events: bool = False,
                   engine: bool = True,
                   policy_options: Mapping[str, Any] | None = None,
                   oracle_after: float | None = None) -> dict[str, Any]:
    """Simulate ``days`` of the campaign under ``policy`` against the scenario's market; return
    the JSON report (and write the HTML report to ``report_html`` if given). When the HTML
    report cannot be written the JSON report is still returned, with ``report_error`` saying
    why: a run's result is never lost to a bad path (check it first with
    ``campaignd.sim.report.check_report_path``)."""
    result = simulate(scenario_path, campaign_path=campaign_path, days=days, seed=seed,
                      policy=policy, events=events, engine=engine,
                      policy_options=policy_options, oracle_after=oracle_after)
    if policy_options:
        result.report["policy_options"] = dict(policy_options)
    if oracle_after is not None:
        result.report["oracle_after_hours"] = oracle_after
    if report_html is not None:
        from campaignd.sim.report import write_html_report

        try:
            write_html_report(Path(report_html), result)
        except OSError as exc:
            result.report["report_error"] = f"{report_html}: {exc.strerror or exc}"
    return result.report


__all__ = ["DECISION_SECONDS", "HandOver", "RunTrace", "SimulationResult", "enforce_caps",
           "lifetime_shares", "line_item_configs", "run_policy", "run_simulation", "simulate",
           "targeting_groups"]
