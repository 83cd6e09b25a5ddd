"""The decision engine: priority, the risk budget, conflicts, materiality, the request budget and
the money rules (property-tested: no prefix of a plan ever breaks a cap, nothing negative)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.agents.decision import DecisionEngine, DecisionRules
from campaignd.domain.actions import CampaignState, LineItemState, Recommendation

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
M = 1_000_000


def state(budgets: dict[str, int], *, D: int = 100 * M, L: int = 1000 * M,
          spent: int = 0, days: float = 5.0, lifetime: int | None = None) -> CampaignState:
    return CampaignState.of("c1", D, L, days, {
        cell: LineItemState(cell, i + 1, b, lifetime if lifetime is not None else b * 10,
                            spent_micros=spent)
        for i, (cell, b) in enumerate(budgets.items())})


def rebalance(budgets: dict[str, int], *, risk: float = 0.05, impact: float = 10.0,
              agent: str = "reallocation", at: datetime = NOW) -> Recommendation:
    return Recommendation(agent=agent, kind="budget_rebalance", campaign_id="c1", target="c1",
                          created_at=at, change={"daily_budgets_micros": budgets},
                          evidence={"summary": {"p_worse": risk},
                                    "cells": {c: {"why": f"because {c}"} for c in budgets}},
                          score=1 - risk, impact=impact, risk=risk)


def test_a_rebalance_becomes_cuts_then_raises_within_the_daily_cap() -> None:
    s = state({"a": 40 * M, "b": 30 * M, "c": 30 * M})
    plan = DecisionEngine().decide([rebalance({"a": 10 * M, "c": 60 * M})], {"c1": s}, NOW)
    assert [(a.cell_id, a.after["daily_budget_micros"]) for a in plan.actions] == [
        ("a", 10 * M), ("c", 60 * M)]
    assert not plan.actions[0].is_increase and plan.actions[1].is_increase
    # lifetime follows daily: spent + daily x the runway (2 days)
    assert plan.actions[0].after["lifetime_budget_micros"] == 20 * M
    assert plan.actions[1].after["lifetime_budget_micros"] == 300 * M  # its 10 days kept
    assert plan.actions[1].reason == "reallocation: budget_rebalance — because c"
    assert plan.actions[1].evidence["cell"] == {}
    assert plan.risk_used == pytest.approx(0.05)


def test_raises_are_clipped_to_the_headroom_the_cuts_leave() -> None:
    s = state({"a": 40 * M, "b": 30 * M, "c": 30 * M})
    plan = DecisionEngine().decide([rebalance({"a": 35 * M, "c": 90 * M})], {"c1": s}, NOW)
    raise_ = next(a for a in plan.actions if a.cell_id == "c")
    assert raise_.after["daily_budget_micros"] == 35 * M  # 30 + the 5 freed by a
    assert sum(a.after["daily_budget_micros"] - a.before["daily_budget_micros"]
               for a in plan.actions) == 0


def test_a_cut_below_todays_spend_frees_only_what_was_not_spent() -> None:
    s = CampaignState.of("c1", 100 * M, 1000 * M, 5.0, {
        "a": LineItemState("a", 1, 40 * M, 400 * M, spent_micros=35 * M,
                           spent_today_micros=35 * M),
        "b": LineItemState("b", 2, 30 * M, 300 * M),
        "c": LineItemState("c", 3, 30 * M, 300 * M)})
    plan = DecisionEngine().decide([rebalance({"a": 10 * M, "c": 60 * M})], {"c1": s}, NOW)
    after = {a.cell_id: a.after["daily_budget_micros"] for a in plan.actions}
    assert after == {"a": 10 * M, "c": 35 * M}  # a stops at its 35: 5 freed, not 30


def test_the_risk_budget_takes_the_best_recommendations_that_fit() -> None:
    s = state({"a": 10 * M, "b": 10 * M, "c": 10 * M, "d": 10 * M})
    recs = [rebalance({"a": 5 * M}, risk=0.15, impact=100.0, agent="x"),
            rebalance({"b": 5 * M}, risk=0.1, impact=10.0, agent="y"),
            rebalance({"c": 5 * M}, risk=0.04, impact=1.0, agent="z")]
    plan = DecisionEngine(DecisionRules(risk_budget=0.2)).decide(recs, {"c1": s}, NOW)
    assert sorted(a.cell_id for a in plan.actions) == ["a", "c"]
    assert [s.reason.split(":")[0] for s in plan.skipped] == ["risk budget"]
    assert plan.risk_used == pytest.approx(0.19)


def pace(budgets: dict[str, int]) -> Recommendation:
    return Recommendation(agent="reallocation", kind="budget_pace", campaign_id="c1",
                          target="c1", created_at=NOW, change={"daily_budgets_micros": budgets},
                          evidence={"summary": {"why": "paced"}}, score=1.0)


def test_the_pacing_cut_is_applied_unless_the_re_plan_is() -> None:
    """Pacing is a rule, not a bet: the cut of a campaign's budgets to today's share of its
    lifetime budget travelled only inside the re-plan, so a re-plan refused for its risk (or no
    gain) left the line items at the daily budget split over them, burning the lifetime budget
    at up to twice its pace (review finding)."""
    s = state({"a": 40 * M, "b": 30 * M, "c": 30 * M})
    cut = pace({"a": 20 * M, "b": 15 * M, "c": 15 * M})
    for refused in (rebalance({"a": 10 * M, "c": 40 * M}, risk=0.5),
                    rebalance({"a": 10 * M, "c": 40 * M}, impact=0.0)):
        plan = DecisionEngine().decide([cut, refused], {"c1": s}, NOW)
        assert {a.cell_id: a.after["daily_budget_micros"] for a in plan.actions} == {
            "a": 20 * M, "b": 15 * M, "c": 15 * M}
        assert plan.risk_used == 0.0 and plan.selected == [cut]
        assert plan.actions[0].reason == "reallocation: budget_pace — paced"
    # a re-plan selected this cycle paces the campaign by itself: the cut is superseded
    plan = DecisionEngine().decide([cut, rebalance({"a": 10 * M, "c": 40 * M})], {"c1": s}, NOW)
    assert {a.cell_id: a.after["daily_budget_micros"] for a in plan.actions} == {
        "a": 10 * M, "c": 40 * M}
    assert [x.reason.split(":")[0] for x in plan.skipped] == ["superseded"]
    # alone (a one-cell campaign, whose re-plan never gains), it is applied too
    plan = DecisionEngine().decide([cut], {"c1": s}, NOW)
    assert len(plan.actions) == 3


def test_findings_and_changes_without_expected_gain_are_not_applied() -> None:
    s = state({"a": 10 * M})
    flag = Recommendation(agent="monitor", kind="flag_underperformer", campaign_id="c1",
                          target="a", created_at=NOW, score=0.99)
    plan = DecisionEngine().decide([flag, rebalance({"a": 1 * M}, impact=0.0)], {"c1": s}, NOW)
    assert plan.actions == []
    assert sorted(x.reason.split(":")[0] for x in plan.skipped) == ["finding", "no expected gain"]


def test_two_changes_to_one_line_item_keep_the_higher_priority() -> None:
    s = state({"a": 10 * M, "b": 10 * M})
    low = rebalance({"a": 2 * M, "b": 5 * M}, impact=1.0, agent="low")
    high = Recommendation(agent="lifecycle", kind="pause_cell", campaign_id="c1", target="a",
                          created_at=NOW, score=0.9, impact=50.0, risk=0.01)
    plan = DecisionEngine().decide([low, high], {"c1": s}, NOW)
    kinds = {(a.cell_id, a.kind) for a in plan.actions}
    assert kinds == {("a", "pause"), ("b", "budget")}
    assert any(x.reason.startswith("conflict") and x.targets == ("a",) and x.count == 1
               for x in plan.skipped)


def test_a_line_item_about_to_run_out_of_lifetime_budget_is_topped_up() -> None:
    s = CampaignState.of("c1", 100 * M, 1000 * M, 5.0, {
        "a": LineItemState("a", 1, 40 * M, 45 * M, spent_micros=30 * M),  # 15 left: < a day
        "b": LineItemState("b", 2, 30 * M, 300 * M),
        "c": LineItemState("c", 3, 30 * M, 300 * M)})
    plan = DecisionEngine().decide([rebalance({"b": 10 * M, "c": 50 * M})], {"c1": s}, NOW)
    by = {a.cell_id: a for a in plan.actions}
    assert [a.cell_id for a in plan.actions] == ["b", "a", "c"]  # cut, top-up, raise
    assert by["a"].after == {"daily_budget_micros": 40 * M,
                             "lifetime_budget_micros": 30 * M + 80 * M}
    assert by["b"].after["lifetime_budget_micros"] == 20 * M  # a cut frees lifetime budget


def test_a_held_line_item_is_not_topped_up_and_no_op_switches_spend_no_risk() -> None:
    from dataclasses import replace

    s = CampaignState.of("c1", 100 * M, 1000 * M, 5.0, {
        "a": LineItemState("a", 1, 40 * M, 45 * M, spent_micros=30 * M),  # short of runway
        "b": LineItemState("b", 2, 30 * M, 300 * M),
        "c": LineItemState("c", 3, 30 * M, 300 * M, active=False)})
    held = replace(s, held=np.array([True, False, False]))
    pause_c = Recommendation(agent="lifecycle", kind="pause_cell", campaign_id="c1",
                             target="c", created_at=NOW, score=1.0, impact=50.0, risk=0.15)
    plan = DecisionEngine(DecisionRules(risk_budget=0.2)).decide(
        [pause_c, rebalance({"b": 10 * M}, risk=0.1)], {"c1": held}, NOW)
    # a person's undo on "a" stands (no top-up); pausing the paused "c" changes nothing, so it
    # neither spends the risk budget nor blocks the rebalance
    assert [a.cell_id for a in plan.actions] == ["b"]
    assert plan.risk_used == pytest.approx(0.1)
    assert [(x.reason.split(":")[0], x.targets) for x in plan.skipped] == [
        ("no change", ("c",))]


def test_conflicts_are_counted_per_line_item() -> None:
    cells = {f"x{i}": 10 * M for i in range(20)}
    s = state(cells, D=400 * M, L=4000 * M)
    first = rebalance({c: 5 * M for c in cells}, impact=100.0, risk=0.05, agent="first")
    second = rebalance({c: 6 * M for c in cells}, impact=1.0, risk=0.05, agent="second")
    plan = DecisionEngine().decide([first, second], {"c1": s}, NOW)
    assert plan.summary()["skipped"] == {"conflict": 20}


def test_immaterial_changes_are_dropped() -> None:
    s = state({"a": 100 * M, "b": 100 * M}, D=300 * M)
    rules = DecisionRules(min_change_fraction=0.05, min_change_micros=10 * M)
    plan = DecisionEngine(rules).decide(
        [rebalance({"a": 96 * M, "b": 89 * M})], {"c1": s}, NOW)
    assert [a.cell_id for a in plan.actions] == ["b"]  # 4 % and $4 vs 11 %
    assert plan.skipped[0].reason.startswith("immaterial")


def test_the_request_budget_keeps_the_largest_moves_and_the_caps() -> None:
    budgets = {f"x{i}": 10 * M for i in range(10)}
    s = state(budgets)
    want = {"x0": 1 * M, "x1": 8 * M, "x2": 9 * M, "x3": 20 * M, "x4": 12 * M}
    plan = DecisionEngine(DecisionRules(max_requests=2)).decide([rebalance(want)], {"c1": s}, NOW)
    assert len(plan.actions) <= 2
    cells = [a.cell_id for a in plan.actions]
    assert cells == ["x0", "x3"]
    total = 100 * M + sum(a.after["daily_budget_micros"] - a.before["daily_budget_micros"]
                          for a in plan.actions)
    assert total <= s.daily_cap_micros
    assert any(x.reason.startswith("request budget") for x in plan.skipped)


def test_the_same_decision_has_the_same_idempotency_keys() -> None:
    s = state({"a": 40 * M, "b": 30 * M})
    rec = rebalance({"a": 10 * M, "b": 50 * M})
    k1 = [a.key for a in DecisionEngine().decide([rec], {"c1": s}, NOW).actions]
    k2 = [a.key for a in DecisionEngine().decide([rec], {"c1": s}, NOW).actions]
    assert k1 == k2 and len(set(k1)) == 2
    later = rebalance({"a": 10 * M, "b": 50 * M}, at=NOW.replace(minute=2))
    assert not set(k1) & {a.key for a in DecisionEngine().decide([later], {"c1": s},
                                                                  NOW).actions}


def test_unknown_campaigns_and_cells_are_skipped() -> None:
    s = state({"a": 10 * M})
    other = Recommendation(agent="r", kind="budget_rebalance", campaign_id="zz", target="zz",
                           created_at=NOW, change={"daily_budgets_micros": {"a": 1}},
                           score=1, impact=1)
    plan = DecisionEngine().decide([other, rebalance({"nope": 5 * M})], {"c1": s}, NOW)
    assert plan.actions == []
    assert sorted(x.reason.split(":")[0] for x in plan.skipped) == ["unknown campaign",
                                                                    "unknown cell"]


# --- money properties ----------------------------------------------------------------------

money = st.integers(min_value=0, max_value=50 * M)


@settings(max_examples=200, deadline=None)
@given(st.lists(money, min_size=1, max_size=12), st.lists(money, min_size=1, max_size=12),
       st.integers(min_value=1, max_value=300 * M), st.integers(min_value=0, max_value=4000 * M),
       st.floats(min_value=0.0, max_value=30.0), st.integers(min_value=0, max_value=20 * M),
       st.one_of(st.none(), st.integers(min_value=0, max_value=12)))
def test_no_prefix_of_a_plan_breaks_a_cap_and_nothing_goes_negative(
        current: list[int], wanted: list[int], D: int, L: int, days: float, spent: int,
        max_requests: int | None) -> None:
    cells = [f"k{i}" for i in range(len(current))]
    # a state within the caps: scale the current budgets down to fit
    tot_d = sum(current)
    daily = [b * D // tot_d if tot_d > D else b for b in current]
    life = [spent + b for b in daily]
    tot_l = sum(life)
    if tot_l > L:
        life = [x * L // tot_l for x in life]
    s = CampaignState.of("c1", D, L, days, {
        c: LineItemState(c, i, daily[i], life[i], spent_micros=min(spent, life[i]))
        for i, c in enumerate(cells)})
    want = {c: w for c, w in zip(cells, wanted, strict=False)}
    plan = DecisionEngine(DecisionRules(max_requests=max_requests, min_change_micros=0,
                                        min_change_fraction=0.0)).decide(
        [rebalance(want)], {"c1": s}, NOW)
    d = dict(zip(s.cell_ids, s.daily.tolist(), strict=True))
    lf = dict(zip(s.cell_ids, s.lifetime.tolist(), strict=True))
    assert max_requests is None or len(plan.actions) <= max_requests
    for a in plan.actions:
        d[a.cell_id] = a.after["daily_budget_micros"]
        lf[a.cell_id] = a.after["lifetime_budget_micros"]
        assert min(d[a.cell_id], lf[a.cell_id]) >= 0
        assert d[a.cell_id] <= D and lf[a.cell_id] <= L
        assert sum(d.values()) <= D
        assert sum(lf.values()) <= L
        if a.is_increase:  # a raise up to what was wanted, or a lifetime top-up
            assert a.after["daily_budget_micros"] <= want.get(
                a.cell_id, a.before["daily_budget_micros"])
        else:
            i = s.index[a.cell_id]
            assert a.after["lifetime_budget_micros"] >= min(int(s.spent[i]),
                                                            a.before["lifetime_budget_micros"])
    assert len({a.cell_id for a in plan.actions}) == len(plan.actions)


def test_held_line_items_are_left_alone_and_risk_is_per_campaign() -> None:
    base = state({"a": 40 * M, "b": 30 * M, "c": 30 * M})
    held = CampaignState(base.campaign_id, base.daily_cap_micros, base.lifetime_cap_micros,
                         base.days_left, base.cell_ids, base.line_item_ids, base.daily,
                         base.lifetime, base.spent, base.spent_today, base.active,
                         held=np.array([True, False, False]))
    plan = DecisionEngine().decide([rebalance({"a": 10 * M, "b": 20 * M, "c": 40 * M})],
                                   {"c1": held}, NOW)
    assert {a.cell_id for a in plan.actions} == {"b", "c"}
    assert any(s.reason.startswith("held") and s.targets == ("a",) for s in plan.skipped)
    # a second campaign's rebalance has its own risk budget
    other = CampaignState("c2", 100 * M, 1000 * M, 5.0, ("x", "y"), np.array([7, 8]),
                          np.array([50 * M, 50 * M]), np.array([500 * M, 500 * M]),
                          np.zeros(2, np.int64), np.zeros(2, np.int64), np.ones(2, bool))
    r2 = Recommendation(agent="reallocation", kind="budget_rebalance", campaign_id="c2",
                        target="c2", created_at=NOW,
                        change={"daily_budgets_micros": {"x": 20 * M, "y": 80 * M}},
                        score=1.0, impact=5.0, risk=0.15)
    plan = DecisionEngine().decide([rebalance({"a": 10 * M, "c": 60 * M}, risk=0.15), r2],
                                   {"c1": base, "c2": other}, NOW)
    assert {a.campaign_id for a in plan.actions} == {"c1", "c2"}


def test_recommendations_must_say_numbers_that_make_sense() -> None:
    for bad in ({"risk": 1.5}, {"risk": -0.1}, {"score": 2.0}, {"impact": float("nan")}):
        with pytest.raises(ValueError):
            Recommendation(agent="x", kind="budget_rebalance", campaign_id="c", target="c",
                           created_at=NOW, **bad)  # type: ignore[arg-type]
