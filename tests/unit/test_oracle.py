"""The oracle: beats the uniform split on the seed world, respects the same caps."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from campaignd.domain.campaign import atomize
from campaignd.dsp.sandbox.market import Market
from campaignd.dsp.sandbox.scenarios import load_scenario
from campaignd.sim.driver import line_item_configs, run_policy, run_simulation, targeting_groups
from campaignd.sim.oracle import OraclePolicy, _multiple_choice_knapsack
from campaignd.sim.policies import PolicyContext

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT / "config" / "scenarios" / "seed.toml"


def test_oracle_beats_uniform_on_the_seed_world() -> None:
    rep = run_simulation(SEED, days=0.5, seed=2, policy="uniform")
    assert rep["oracle_conversions"] > rep["conversions"]
    assert Decimal(rep["oracle_spend"]) <= Decimal(rep["budget"])
    assert rep["capture_ratio"] < 1


def test_oracle_respects_caps() -> None:
    sc = load_scenario(SEED)
    spec = sc.campaign
    cells = atomize(spec)
    daily, lifetime = 400_000_000, 700_000_000
    ctx = PolicyContext(spec, cells, lifetime, daily, seed=1)
    market = Market(sc, seed=1)
    configs = line_item_configs(spec, cells, 0)
    for cfg in configs:
        market.configure(cfg)
    pol = OraclePolicy(ctx, market, targeting_groups(configs))
    start = sc.default_start
    days = []
    t = start
    trace_spend = 0
    for _ in range(2):
        trace = run_policy(market, pol, ctx, start=t, end=t + timedelta(days=1),
                           decision_seconds=3600)
        assert trace.totals is not None
        spent = int(trace.totals[1].sum())
        days.append(spent - trace_spend)
        trace_spend = spent
        t += timedelta(days=1)
    assert all(d <= daily for d in days)
    assert trace_spend <= lifetime
    paced = ctx.budget_today(0, 0, start)  # the lifetime budget over the flight's days
    assert paced < daily
    assert 0.9 * paced < days[0] <= paced  # it spends the budget it is given


def test_multiple_choice_knapsack() -> None:
    groups = np.array([0, 0, 1, 1, 2])
    cost = np.array([10.0, 30.0, 10.0, 20.0, 50.0])
    value = np.array([10.0, 20.0, 5.0, 6.0, 1.0])
    plan = _multiple_choice_knapsack(groups, cost, value, 15.0)
    assert plan == {0: 10.0, 2: 5.0}
    plan = _multiple_choice_knapsack(groups, cost, value, 1000.0)
    assert set(plan) == {1, 3, 4}  # the biggest option of each group once budget is ample
    assert sum(plan.values()) <= 1000.0
    for budget in (0.0, 7.0, 25.0, 45.0, 60.0):
        plan = _multiple_choice_knapsack(groups, cost, value, budget)
        assert sum(plan.values()) <= budget + 1e-9
        assert len({int(groups[i]) for i in plan}) == len(plan)
        assert all(x <= cost[i] + 1e-9 for i, x in plan.items())


def test_fatigue_outlook() -> None:
    sc = load_scenario(ROOT / "config" / "scenarios" / "fatigue.toml")
    cells = atomize(sc.campaign)
    m = Market(sc, seed=1)
    for cfg in line_item_configs(sc.campaign, cells, 0):
        m.configure(cfg)
    none = m.fatigue_outlook(np.zeros(len(cells)))
    assert np.allclose(none, 1.0)
    extra = np.zeros(len(cells))
    extra[0] = 50_000
    out = m.fatigue_outlook(extra)
    assert out[0] < 0.6  # ~4 half-lives of 12k impressions
    assert (out <= 1.0 + 1e-12).all()
    # the same creative shown to the same audience by another line item shares the exposure
    same = [i for i, c in enumerate(cells) if c.creative == cells[0].creative
            and c.audience == cells[0].audience and i != 0]
    other = [i for i, c in enumerate(cells) if c.creative != cells[0].creative]
    assert (out[same] < 1.0).all()
    assert np.allclose(out[other], 1.0)
    assert m.fatigued_metrics() == ("ctr", "conversion")
