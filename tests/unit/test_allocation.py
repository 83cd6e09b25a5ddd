"""The Bayesian allocator: constraints (hypothesis), model recovery, evidence, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.domain.allocation import DV360_MAX_DAILY_CUT, Allocator, Prior, effect_name
from campaignd.domain.allocation_model import INTERCEPT, AdditiveLogitModel

TOL = 1e-6


def grid(**levels: int) -> list[dict[str, str]]:
    dims = list(levels)
    return [dict(zip(dims, (f"{d}{i}" for d, i in zip(dims, combo, strict=True)), strict=True))
            for combo in itertools.product(*(range(levels[d]) for d in dims))]


@st.composite
def problems(draw: st.DrawFn) -> dict[str, object]:
    la, lb = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    cells = grid(a=la, b=lb)
    n = len(cells)
    floats = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)
    trials = np.array(draw(st.lists(floats, min_size=n, max_size=n)))
    rates = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    budget = draw(st.floats(0, 1e5, allow_nan=False, allow_infinity=False))
    cap = None
    if draw(st.booleans()):
        cap = np.array(draw(st.lists(st.one_of(floats, st.just(np.inf)), min_size=n,
                                     max_size=n)))
    lower = None
    if draw(st.booleans()):
        lower = np.array(draw(st.lists(floats, min_size=n, max_size=n)))
    previous = None
    if draw(st.booleans()):
        previous = np.array(draw(st.lists(floats, min_size=n, max_size=n)))
    return {
        "cells": cells, "trials": trials, "successes": np.floor(trials * rates),
        "spend": trials * draw(st.floats(0.001, 0.1)), "budget": budget, "capacity": cap,
        "lower": lower, "previous": previous,
        "cut": draw(st.one_of(st.none(), st.floats(0, 1))),
        "explore": draw(st.floats(0, 0.5)),
        "groups": draw(st.booleans()),
        "one_cell": draw(st.booleans()),
        "seed": draw(st.integers(0, 3)),
        "spill": draw(st.sampled_from([0.0, 0.26, 0.9])),
        "scale": (np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
                  if draw(st.booleans()) else None),
    }


@settings(max_examples=100, deadline=None)
@given(problems())
def test_allocation_respects_budget_capacity_bounds_cuts_and_floor(p: dict) -> None:
    cells = p["cells"]
    n = len(cells)
    one_cell = p["groups"] and p["one_cell"]
    alloc = Allocator(cells, seed=p["seed"], draws=8, max_cut_per_cycle=p["cut"],
                      explore_fraction=p["explore"],
                      groups=[c["a"] for c in cells] if p["groups"] else None,
                      one_cell_per_group=one_cell, spill=p["spill"])
    alloc.rate_scale = p["scale"]
    alloc.observe(p["trials"], p["successes"], spend=p["spend"])
    budget = p["budget"]
    cap = p["capacity"] if p["capacity"] is not None else np.full(n, np.inf)
    lower = p["lower"] if p["lower"] is not None else np.zeros(n)
    x = alloc.allocate(budget, p["capacity"], lower=p["lower"], previous=p["previous"])
    assert x.shape == (n,)
    assert np.all(x >= 0)
    assert x.sum() <= budget * (1 + 1e-9) + TOL
    if lower.sum() <= budget:
        # hard bounds: committed money kept; nothing added above capacity -- a cell holds more
        # only for its commitment or its cut limit (a DSP's rule)
        assert np.all(x >= lower - TOL)
        held = lower.copy()
        if p["previous"] is not None and p["cut"] is not None:
            held = np.maximum(held, p["previous"] * (1 - p["cut"]))
        assert np.all(x <= np.maximum(cap, held) + TOL * (1 + np.abs(x)))
        # the cut limit and the floor hold whenever the budget allows all of them together
        keep = held.copy()
        unproven = ~alloc.proven()
        if unproven.any() and p["explore"] > 0 and not one_cell:
            floor = p["explore"] * budget / unproven.sum()
            keep = np.where(unproven, np.maximum(keep, np.minimum(floor, np.maximum(cap, lower))),
                            keep)
        if keep.sum() <= budget:
            assert np.all(x >= keep - 1e-6 * (1 + keep))
        if one_cell:
            # at most one cell per group gets more than its hard and cut bounds
            above = x > keep + 1e-6 * (1 + keep)
            for g in {c["a"] for c in cells}:
                assert sum(1 for i, c in enumerate(cells) if c["a"] == g and above[i]) <= 1
        # and the budget is used wherever there is room for it (with groups, cells of a group
        # share their room, so less may be usable)
        room = np.maximum(cap, lower).sum()
        if p["groups"]:
            pass
        elif np.isfinite(room) and room < budget:
            assert x.sum() == pytest.approx(min(room, budget), rel=1e-6, abs=1e-6)
        elif not np.isfinite(room):
            assert x.sum() == pytest.approx(budget, rel=1e-6, abs=1e-6)


def test_max_cut_per_cycle_and_per_day() -> None:
    cells = grid(a=2, b=2)
    alloc = Allocator(cells, seed=0, max_cut_per_cycle=0.5, max_cut_per_day=DV360_MAX_DAILY_CUT,
                      explore_fraction=0.0)
    # cell 0 is clearly the best: everything wants to move there
    alloc.observe(np.full(4, 10_000.0), np.array([400.0, 10.0, 10.0, 10.0]))
    first = alloc.allocate(100.0, previous=np.full(4, 25.0))
    assert np.all(first[1:] >= 25.0 * 0.5 - TOL)
    alloc.begin_day(np.full(4, 25.0))
    second = alloc.allocate(100.0)
    # the day's reference (25 each) may only fall by 20 %, whatever the per-cycle limit allows
    assert np.all(second[1:] >= 25.0 * (1 - DV360_MAX_DAILY_CUT) - TOL)
    assert second.sum() == pytest.approx(100.0)
    alloc.begin_day()
    third = alloc.allocate(100.0)
    assert np.all(third[1:] >= second[1:] * 0.8 - TOL)
    assert third[0] >= second[0] - TOL
    # a DSP's limit holds even where the capacity estimate says the cell buys nothing (its
    # daypart is over): the money it must keep stays unspent rather than cut too far
    alloc.begin_day(np.full(4, 25.0))
    fourth = alloc.allocate(100.0, capacity=np.array([np.inf, 0.0, np.inf, np.inf]))
    assert fourth[1] == pytest.approx(25.0 * (1 - DV360_MAX_DAILY_CUT))
    assert np.all(fourth >= 25.0 * (1 - DV360_MAX_DAILY_CUT) - TOL)
    assert fourth.sum() <= 100.0 + TOL
    np.testing.assert_allclose(alloc.cut_floor(np.full(4, 25.0)), np.full(4, 20.0))


def test_model_recovers_level_effects() -> None:
    rng = np.random.default_rng(3)
    cells = grid(aud=4, cre=3, plat=3)
    truth = {"aud": np.array([0.4, 0.0, -0.3, 0.2]), "cre": np.array([0.3, -0.3, 0.0]),
             "plat": np.array([-0.2, 0.1, 0.25])}
    eta = -4.0 + sum(truth[d][[int(c[d][len(d):]) for c in cells]] for d in truth)
    n = np.full(len(cells), 20_000.0)
    y = rng.binomial(n.astype(np.int64), 1 / (1 + np.exp(-eta))).astype(float)
    # without interactions the main effects are the parameters themselves
    plain = Allocator(cells, seed=0, interactions=False)
    plain.observe(n, y)
    eff = plain.effects()
    for d, t in truth.items():
        est = np.array([eff[effect_name((d, f"{d}{i}"))] for i in range(t.size)])
        # effects are identified up to a shift per dimension (absorbed by the intercept)
        assert np.allclose(est - est.mean(), t - t.mean(), atol=0.06), (d, est, t)
    # with interactions a level's effect is shared with its interactions: compare each level's
    # mean fitted logit over its cells (what the allocation uses)
    alloc = Allocator(cells, seed=0)
    alloc.observe(n, y)
    alloc.effects()
    fitted = alloc.model.eta()
    for d, t in truth.items():
        idx = np.array([int(c[d][len(d):]) for c in cells])
        est = np.array([fitted[idx == i].mean() for i in range(t.size)])
        assert np.allclose(est - est.mean(), t - t.mean(), atol=0.06), (d, est, t)
    post = alloc.posterior(0.95)
    p = 1 / (1 + np.exp(-eta))
    assert np.mean((post.rate_low <= p) & (p <= post.rate_high)) >= 0.85
    assert np.all(post.rate_low <= post.rate_mean) and np.all(post.rate_mean <= post.rate_high)


def test_budget_goes_to_the_best_cells_and_respects_capacity() -> None:
    cells = grid(a=3, b=3)
    rates = np.array([0.02 if c["a"] == "a0" else 0.005 for c in cells])
    n = np.full(len(cells), 50_000.0)
    alloc = Allocator(cells, seed=1, explore_fraction=0.0)
    alloc.observe(n, n * rates, spend=n * 0.01)
    cap = np.full(len(cells), 20.0)
    x = alloc.allocate(100.0, cap)
    best = np.array([c["a"] == "a0" for c in cells])
    assert x[best].sum() == pytest.approx(60.0, abs=1e-6)  # all the room the best cells have
    assert x.sum() == pytest.approx(100.0)
    assert np.all(x <= cap + TOL)


def test_cost_per_trial_changes_the_ranking() -> None:
    cells = grid(a=2)
    n = np.full(2, 100_000.0)
    alloc = Allocator(cells, seed=0, explore_fraction=0.0, max_cut_per_cycle=None)
    # same rate; cell 1 costs a third as much per trial: three times the value per dollar
    alloc.observe(n, n * 0.01, spend=n * np.array([0.03, 0.01]))
    x = alloc.allocate(10.0)
    assert x[1] == pytest.approx(10.0)
    post = alloc.posterior()
    assert post.value_per_dollar[1] == pytest.approx(3 * post.value_per_dollar[0], rel=0.05)


def test_groups_fund_one_cell_per_inventory() -> None:
    # two groups of two cells; within each group the cells buy the same inventory
    cells = [{"g": "g0", "c": "x"}, {"g": "g0", "c": "y"}, {"g": "g1", "c": "x"},
             {"g": "g1", "c": "y"}]
    n = np.full(4, 100_000.0)
    alloc = Allocator(cells, seed=0, explore_fraction=0.0, max_cut_per_cycle=None,
                      groups=[c["g"] for c in cells], interactions=False)
    alloc.observe(n, n * np.array([0.02, 0.01, 0.015, 0.0075]), spend=n * 0.01)
    x = alloc.allocate(100.0, np.full(4, 50.0))
    # the better cell of each group gets the group's room before any second cell
    assert x[0] == pytest.approx(50.0) and x[2] == pytest.approx(50.0)
    assert x[1] + x[3] == pytest.approx(0.0, abs=1e-9)


def test_same_seed_same_allocations_and_discounting() -> None:
    cells = grid(a=3, b=2)
    rng = np.random.default_rng(0)
    n = rng.integers(0, 500, len(cells)).astype(float)
    y = np.floor(n * 0.05)

    def run(seed: int) -> np.ndarray:
        a = Allocator(cells, seed=seed)
        a.observe(n, y)
        out = [a.allocate(10.0)]
        a.observe(n, y, discount=0.5)
        out.append(a.allocate(10.0))
        return np.concatenate(out)

    assert np.array_equal(run(4), run(4))
    assert not np.array_equal(run(4), run(5))
    a = Allocator(cells)
    a.observe(n, y)
    a.observe(n, y, discount=0.5)
    assert np.allclose(a.trials, 1.5 * n)


def test_supplied_priors_and_bad_input() -> None:
    cells = grid(a=2, b=2)
    alloc = Allocator(cells, priors={"a=a0": (1.5, 1e6), INTERCEPT: Prior(-3.0, 1e6)})
    eff = alloc.effects()
    assert eff["a=a0"] == pytest.approx(1.5, abs=1e-3)
    assert eff[INTERCEPT] == pytest.approx(-3.0, abs=1e-3)
    with pytest.raises(ValueError, match="no effect named"):
        Allocator(cells, priors={"a=zz": (0.0, 1.0)})
    with pytest.raises(ValueError, match="one value per cell"):
        alloc.observe(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        alloc.observe(-np.ones(4), np.zeros(4))
    with pytest.raises(ValueError, match="budget"):
        alloc.allocate(-1.0)
    with pytest.raises(ValueError, match="discount"):
        alloc.observe(np.ones(4), np.zeros(4), discount=0.0)
    # what a caller's bug looks like is refused, naming the argument (a NaN or negative
    # capacity silently defunded the cell; a string budget was a TypeError from numpy)
    for cap in ([np.nan, 1, 1, 1], [-1.0, 1, 1, 1], ["x", 1, 1, 1]):
        with pytest.raises(ValueError, match="capacity"):
            alloc.allocate(10.0, cap)
        with pytest.raises(ValueError, match="capacity"):
            alloc.assess(np.ones(4), np.zeros(4), cap)
    for budget in ("ten", None):
        with pytest.raises(ValueError, match="budget must be a number"):
            alloc.allocate(budget)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"cells\[1\]: each cell must be a mapping"):
        Allocator([{"a": "x"}, "b"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="cells: at least one cell"):
        Allocator("ab")  # type: ignore[arg-type]
    for bad in (float("nan"), -1.0, 0.0):
        with pytest.raises(ValueError, match="value_per_success"):
            Allocator(cells, value_per_success=bad)
    assert alloc.allocate(10.0, [np.inf, 0, 1, 2]).sum() <= 10.0
    assert AdditiveLogitModel(cells).names[:3] == (INTERCEPT, "a=a0", "a=a1")


def test_the_cost_prior_sets_the_scale_of_value_not_the_allocation() -> None:
    # before any spend is observed every cell costs ``cost_prior`` per trial: value per money
    # unit and expected gains scale with it, which cells are funded does not
    cells = grid(a=3, b=2)
    n = np.arange(1, 7) * 1000.0
    out = {}
    for prior in (1.0, 25_000.0):
        a = Allocator(cells, seed=3, cost_prior=prior)
        a.observe(n, np.floor(n * 0.004))
        assert np.all(a.cost_per_trial() == prior)
        out[prior] = (a.allocate(1e6), a.posterior().value_per_dollar,
                      a.expected_gain(np.r_[1e6, np.zeros(5)], np.r_[np.zeros(5), 1e6]))
    assert np.allclose(out[1.0][0], out[25_000.0][0])
    assert np.allclose(out[1.0][1], 25_000.0 * out[25_000.0][1])
    assert out[1.0][2] == pytest.approx(25_000.0 * out[25_000.0][2])
    a = Allocator(cells, cost_prior=25_000.0)  # once spend is seen, it is what counts
    a.observe(n, np.floor(n * 0.004), spend=n * 30_000.0)
    assert np.allclose(a.cost_per_trial(), 30_000.0, rtol=0.01)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cost_prior"):
            Allocator(cells, cost_prior=bad)


def test_unseen_levels_cost_the_average_not_less() -> None:
    # costs observed for one level of each dimension only: a cell of unseen levels is priced
    # at about the observed average (a ridge on the intercept made it look several times
    # cheaper and drew the budget to it)
    cells = grid(a=2, b=2)
    n = np.array([1000.0, 0.0, 0.0, 0.0])
    alloc = Allocator(cells, seed=0)
    alloc.observe(n, n * 0.01, spend=n * 25.0)
    cost = alloc.cost_per_trial()
    assert cost[0] == pytest.approx(25.0, rel=0.01)
    assert np.all(cost[1:] > 20.0)


def test_one_cell_per_group_funds_a_single_line_item_per_inventory() -> None:
    # three groups of four cells (creative x bid): budget above a cell's spend today makes it
    # bid, and line items of one group that bid split the group's supply, so at most one per
    # group may get budget above its lower bound
    cells = [{"g": f"g{g}", "c": f"c{c}", "b": f"b{b}"} for g in range(3) for c in range(2)
             for b in range(2)]
    groups = [c["g"] for c in cells]
    rng = np.random.default_rng(1)
    n = np.full(len(cells), 2_000.0)
    y = rng.binomial(2_000, 0.01, len(cells)).astype(float)
    for choice in ("mode", "sample"):
        alloc = Allocator(cells, seed=2, groups=groups, one_cell_per_group=True,
                          group_choice=choice, max_cut_per_cycle=None)
        alloc.observe(n, y, spend=n * 0.02)
        lower = rng.uniform(0, 2, len(cells))
        for _ in range(5):
            x = alloc.allocate(200.0, np.full(len(cells), 30.0), lower=lower)
            above = x > lower + 1e-9
            assert np.all(x >= lower - TOL)
            # the chosen cells get their group's room (capacity 30 each), the others keep
            # their committed money
            assert x.sum() == pytest.approx(90.0 + lower[~above].sum())
            for g in ("g0", "g1", "g2"):
                assert sum(1 for i, c in enumerate(cells) if c["g"] == g and above[i]) <= 1
    with pytest.raises(ValueError, match="group_choice"):
        Allocator(cells, groups=groups, group_choice="best")


def test_risk_and_expected_gain_of_a_change() -> None:
    cells = grid(a=2, b=2)
    n = np.full(4, 50_000.0)
    rates = np.array([0.02, 0.01, 0.02, 0.01])  # b0 cells twice as good as b1 cells
    alloc = Allocator(cells, seed=3, explore_fraction=0.0)
    alloc.observe(n, n * rates, spend=n * 0.01)  # one money unit buys 100 trials
    current = np.array([25.0, 25.0, 25.0, 25.0])
    better = np.array([50.0, 0.0, 50.0, 0.0])
    worse = better[::-1].copy()
    a = alloc.assess(better, current)
    # moving 50 units from rate 0.01 to rate 0.02 cells: +50 x 100 x 0.01 = +50 successes
    assert a.expected_gain == pytest.approx(50.0, rel=0.1)
    assert a.gain_low <= a.expected_gain <= a.gain_high
    assert a.risk < 0.01
    assert alloc.risk_of(worse, current) > 0.99
    assert alloc.expected_gain(worse, current) == pytest.approx(-50.0, rel=0.1)
    # no change, no risk; capacity caps what money can buy
    assert alloc.risk_of(current, current) == 0.0
    # (with room for 25 per cell, the proposal's extra 25 on each good cell buys nothing)
    capped = alloc.assess(better, current, capacity=np.full(4, 25.0))
    assert capped.expected_gain == pytest.approx(-50.0, rel=0.1) and capped.risk > 0.99
    # a change between cells the data cannot tell apart is a coin flip
    fresh = Allocator(cells, seed=0)
    r = fresh.risk_of(better, current, draws=2000)
    assert 0.3 < r < 0.7
    # assessing does not change what allocate returns
    b1 = Allocator(cells, seed=5)
    b2 = Allocator(cells, seed=5)
    for al in (b1, b2):
        al.observe(n, n * rates, spend=n * 0.01)
    b1.assess(better, current)
    assert np.array_equal(b1.allocate(100.0), b2.allocate(100.0))
    with pytest.raises(ValueError, match="one value per cell"):
        alloc.assess(np.ones(3), current)


def test_posterior_of_some_cells_equals_theirs_in_the_whole() -> None:
    rng = np.random.default_rng(4)
    cells = [{"a": f"a{i % 5}", "b": f"b{i % 7}"} for i in range(70)]
    alloc = Allocator(cells, seed=1)
    trials = rng.integers(100, 5000, 70).astype(float)
    alloc.observe(trials=trials, successes=rng.binomial(trials.astype(int), 0.01).astype(float),
                  spend=trials * 0.02)
    whole = alloc.posterior(0.8)
    some = np.array([3, 41, 69, 0])
    part = alloc.posterior(0.8, cells=some)
    for field in ("trials", "successes", "rate_mean", "rate_low", "rate_high",
                  "cost_per_trial", "value_per_dollar", "proven"):
        np.testing.assert_allclose(getattr(part, field), getattr(whole, field)[some])


def test_spill_of_last_touch_credit_is_taken_out_before_ranking() -> None:
    # a cheap cell credited 0.6 % and a dear one credited 1 %: per money unit the cheap one
    # looks better (0.006 / 0.5 > 0.010 / 1.0); with 40 % of every credit spilled over from
    # the pooled 0.8 %, the own rates are (0.006 - 0.0032) / 0.6 = 0.0047 and
    # (0.010 - 0.0032) / 0.6 = 0.0113, and the dear one wins (0.0047 / 0.5 < 0.0113 / 1.0)
    cells = [{"a": "cheap"}, {"a": "dear"}]
    trials = np.array([500_000.0, 500_000.0])
    succ = np.array([3_000.0, 5_000.0])
    spend = trials * np.array([0.5, 1.0])
    plain = Allocator(cells, seed=0, explore_fraction=0.0, exploration_scale=0.0,
                      max_cut_per_cycle=None)
    spilled = Allocator(cells, seed=0, explore_fraction=0.0, exploration_scale=0.0,
                        max_cut_per_cycle=None, spill=0.4)
    for a in (plain, spilled):
        a.observe(trials, succ, spend=spend)
    cap = np.array([60.0, 60.0])
    assert plain.allocate(100.0, cap)[0] == pytest.approx(60.0)
    assert spilled.allocate(100.0, cap)[1] == pytest.approx(60.0)
    post = spilled.posterior()
    assert post.value_per_dollar[1] > post.value_per_dollar[0]
    assert post.rate_mean[0] == pytest.approx(0.006, rel=0.05)  # the evidence: as credited
    with pytest.raises(ValueError, match="spill"):
        Allocator(cells, spill=1.0)


def test_rate_scale_forget_and_expected_successes() -> None:
    cells = grid(a=2, b=2)
    alloc = Allocator(cells, seed=0, explore_fraction=0.0, exploration_scale=0.0,
                      max_cut_per_cycle=None)
    alloc.observe(np.full(4, 1e5), np.array([300.0, 300.0, 100.0, 100.0]),
                  spend=np.full(4, 1e3))
    exp = alloc.expected_successes(np.full(4, 1e4))
    assert exp == pytest.approx([30.0, 30.0, 10.0, 10.0], rel=0.05)
    cap = np.full(4, 40.0)
    assert alloc.allocate(80.0, cap)[:2] == pytest.approx([40.0, 40.0])
    # the first two cells' creative is worn to a fifth of its strength: the others now win
    alloc.rate_scale = np.array([0.2, 0.2, 1.0, 1.0])
    assert alloc.allocate(80.0, cap)[2:] == pytest.approx([40.0, 40.0])
    # forgetting keeps a share of the chosen cells' history only
    alloc.forget(np.array([True, False, False, False]), 0.25)
    assert alloc.trials == pytest.approx([2.5e4, 1e5, 1e5, 1e5])
    assert alloc.successes == pytest.approx([75.0, 300.0, 100.0, 100.0])
    assert alloc.spend == pytest.approx([250.0, 1e3, 1e3, 1e3])
    with pytest.raises(ValueError, match="keep"):
        alloc.forget(np.ones(4, dtype=bool), 1.5)
    with pytest.raises(ValueError, match="cells"):
        alloc.forget(np.ones(3, dtype=bool), 0.5)


def test_trials_of_a_known_strength_teach_the_full_strength_rate() -> None:
    cells = grid(a=2)
    alloc = Allocator(cells, seed=0, interactions=False, residual_sd=0.01)
    alloc.observe(np.full(2, 1e5), np.array([100.0, 100.0]))
    # then at half strength (a worn creative): 50 successes of 1e5 trials is the same rate
    alloc.observe(np.full(2, 1e5), np.array([50.0, 50.0]), strength=np.full(2, 0.5),
                  discount=0.5)
    assert alloc.trials == pytest.approx([1.5e5, 1.5e5])  # costs and pooling: per trial
    assert alloc._strong == pytest.approx([1e5, 1e5])     # the model: at full strength
    assert alloc.posterior().rate_mean == pytest.approx([1e-3, 1e-3], rel=0.05)
    assert alloc.expected_successes(np.full(2, 1e4), np.full(2, 0.5)) == pytest.approx(
        [5.0, 5.0], rel=0.05)
    alloc.forget(np.array([True, False]), 0.5)
    assert alloc._strong == pytest.approx([5e4, 1e5])
    with pytest.raises(ValueError, match="strength"):
        alloc.observe(np.ones(2), np.zeros(2), strength=np.array([-1.0, 1.0]))
    with pytest.raises(ValueError, match="rate_scale"):
        alloc.rate_scale = np.ones(3)
