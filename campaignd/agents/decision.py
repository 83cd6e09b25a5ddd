"""The decision engine: from every agent's recommendations to the line-item actions to apply.

Pure: ``decide(recommendations, campaigns, now)`` reads values and returns a ``DecisionPlan``; the
executor (``campaignd.dsp.executor``) records and applies it. In order:

1. **Priority.** Every recommendation has priority = score × impact × (1 − risk) (``impact`` in
   objective units per day, ``risk`` the posterior probability that it hurts). A finding
   (priority 0, e.g. ``flag_underperformer``) is kept in the plan as skipped: nothing to apply.
2. **Risk budget.** Recommendations are taken in decreasing priority while their summed risk
   stays within ``risk_budget`` (default 0.2); one that would exceed it is skipped and cheaper
   ones may still fit. Risk is per recommendation: a budget rebalance of a whole campaign is one
   decision whose risk is the probability that the new allocation as a whole does worse.
3. **Conflicts.** A line item changes at most once per cycle: the higher-priority recommendation
   claims it, and the other recommendation's change to it is skipped (``conflict``).
4. **Materiality.** A budget change smaller than ``min_change_fraction`` of the budget and than
   ``min_change_micros`` is dropped: it would cost a DSP request and an audit row for nothing.
5. **Request budget.** At most ``max_requests`` actions per cycle (one DSP request each): the
   largest moves are kept, the rest wait for the next cycle (the agent proposes them again).
6. **Money.** Actions are ordered so that every prefix keeps the campaign within its caps:
   cuts first, then raises, each raise clipped to the headroom the cuts left under the campaign's
   daily cap (sum of line-item daily budgets) and lifetime cap (sum of line-item lifetime
   budgets, as Beeswax requires). A line item's lifetime budget follows its daily budget:
   spend so far + daily × days of flight left, never below what it has spent. Nothing is ever
   negative. The executor re-checks the caps against the DSP's acknowledged state before it
   applies a raise, so a cut that failed never lets a raise through.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from campaignd.domain.actions import (
    Action,
    CampaignState,
    LineItemState,
    Recommendation,
    action_key,
)

EXECUTABLE_KINDS = ("budget_rebalance", "pause_cell", "activate_cell")


@dataclass(frozen=True, slots=True)
class DecisionRules:
    risk_budget: float = 0.2
    """Summed risk of the recommendations executed in one cycle."""
    min_change_fraction: float = 0.05
    min_change_micros: int = 1_000_000
    """A budget change is material when it moves at least this fraction of the budget or at
    least this much money (default: 5 % or one currency unit a day)."""
    max_requests: int | None = None
    """DSP requests (= actions) per cycle; ``None``: no limit."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.risk_budget <= 1.0:
            raise ValueError(f"risk_budget must be in [0, 1], got {self.risk_budget}")
        if self.min_change_fraction < 0 or self.min_change_micros < 0:
            raise ValueError("min_change_fraction and min_change_micros must be >= 0")
        if self.max_requests is not None and self.max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {self.max_requests}")


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something the engine decided not to do, and why."""

    decision_id: str
    agent: str
    kind: str
    campaign_id: str
    target: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "agent": self.agent, "kind": self.kind,
                "campaign_id": self.campaign_id, "target": self.target, "reason": self.reason}


@dataclass(slots=True)
class DecisionPlan:
    actions: list[Action] = field(default_factory=list)
    """In execution order: every prefix keeps each campaign within its caps."""
    selected: list[Recommendation] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    risk_used: float = 0.0

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            head = s.reason.split(":", 1)[0]
            reasons[head] = reasons.get(head, 0) + 1
        return {"actions": len(self.actions), "selected": len(self.selected),
                "skipped": reasons, "risk_used": round(self.risk_used, 6)}


@dataclass(slots=True)
class _Claim:
    rec: Recommendation
    kind: str
    """``budget``, ``pause`` or ``activate``."""
    daily: int = 0


class DecisionEngine:
    """Turns recommendations into an ordered, capped list of actions (see the module
    docstring)."""

    def __init__(self, rules: DecisionRules | None = None) -> None:
        self.rules = rules or DecisionRules()

    def decide(self, recommendations: Iterable[Recommendation],
               campaigns: Mapping[str, CampaignState], now: datetime) -> DecisionPlan:
        rules = self.rules
        plan = DecisionPlan()
        ranked = sorted(recommendations, key=lambda r: (-r.priority, r.decision_id))
        claims: dict[str, dict[str, _Claim]] = {}
        for rec in ranked:
            if rec.kind not in EXECUTABLE_KINDS:
                plan.skipped.append(_skip(rec, "finding: nothing to apply"))
                continue
            if not rec.priority > 0:
                plan.skipped.append(_skip(rec, "no expected gain: priority is 0"))
                continue
            state = campaigns.get(rec.campaign_id)
            if state is None:
                plan.skipped.append(_skip(rec, "unknown campaign: not loaded or not synced"))
                continue
            if plan.risk_used + rec.risk > rules.risk_budget + 1e-12:
                plan.skipped.append(_skip(
                    rec, f"risk budget: risk {rec.risk:.3f} would bring this cycle's total to "
                         f"{plan.risk_used + rec.risk:.3f} > {rules.risk_budget:g}"))
                continue
            mine = claims.setdefault(rec.campaign_id, {})
            took = 0
            for cell, claim in _expand(rec, state):
                if cell not in state.line_items:
                    plan.skipped.append(_skip(rec, f"unknown cell: {cell} has no line item",
                                              target=cell))
                elif cell in mine:
                    plan.skipped.append(_skip(
                        rec, f"conflict: line item already changed this cycle by "
                             f"{mine[cell].rec.agent} ({mine[cell].rec.decision_id})",
                        target=cell))
                else:
                    mine[cell] = claim
                    took += 1
            if took:
                plan.risk_used += rec.risk
                plan.selected.append(rec)
        budget = rules.max_requests
        for cid, mine in claims.items():
            actions = self._campaign_actions(campaigns[cid], mine, now, plan)
            if budget is not None:
                actions, over = _within_requests(actions, budget)
                budget -= len(actions)
                plan.skipped.extend(_skip_action(a, "request budget: over this cycle's DSP "
                                                    "requests; proposed again next cycle")
                                    for a in over)
            plan.actions.extend(actions)
        return plan

    # --- money -------------------------------------------------------------------------

    def _campaign_actions(self, state: CampaignState, claims: Mapping[str, _Claim],
                          now: datetime, plan: DecisionPlan) -> list[Action]:
        rules = self.rules
        lis = state.line_items
        days = max(float(state.days_left), 0.0)
        D, L = int(state.daily_cap_micros), int(state.lifetime_cap_micros)
        cuts: list[tuple[int, Action]] = []
        raises: list[tuple[int, str, _Claim]] = []
        switches: list[Action] = []
        for cell, claim in claims.items():
            li = lis[cell]
            if claim.kind in ("pause", "activate"):
                if li.active == (claim.kind == "activate"):
                    plan.skipped.append(_skip(claim.rec, f"no change: already "
                                                         f"{'active' if li.active else 'paused'}",
                                              target=cell))
                    continue
                switches.append(_action(claim.rec, li, claim.kind, {"active": li.active},
                                        {"active": claim.kind == "activate"}, now))
                continue
            new = max(0, min(int(claim.daily), D))
            old = li.daily_budget_micros
            delta = new - old
            if abs(delta) < max(rules.min_change_fraction * old, rules.min_change_micros) \
                    or delta == 0:
                plan.skipped.append(_skip(claim.rec, "immaterial: change below "
                                                     f"{rules.min_change_fraction:.0%} and "
                                                     f"{rules.min_change_micros} micros",
                                          target=cell))
                continue
            if delta < 0:
                life = min(li.lifetime_budget_micros,
                           max(li.spent_micros, li.spent_micros + _ceil(new * days)))
                life = max(life, 0)
                cuts.append((-delta, _action(claim.rec, li, "budget", li.budgets(),
                                             {"daily_budget_micros": new,
                                              "lifetime_budget_micros": life}, now)))
            else:
                raises.append((delta, cell, claim))
        # headroom left once every cut is in
        after_daily = {c: li.daily_budget_micros for c, li in lis.items()}
        after_life = {c: li.lifetime_budget_micros for c, li in lis.items()}
        for _, a in cuts:
            after_daily[a.cell_id] = a.after["daily_budget_micros"]
            after_life[a.cell_id] = a.after["lifetime_budget_micros"]
        head_d = D - sum(after_daily.values())
        head_l = L - sum(after_life.values())
        out = [a for _, a in sorted(cuts, key=lambda t: (-t[0], t[1].cell_id))]
        out += [a for a in switches if a.kind == "pause"]
        grown: list[Action] = []
        for _, cell, claim in sorted(raises, key=lambda t: (-t[0], t[1])):
            li = lis[cell]
            old, old_life = li.daily_budget_micros, li.lifetime_budget_micros
            daily = min(int(claim.daily), old + max(head_d, 0), D)
            if daily - old < max(rules.min_change_micros, 1) and daily < int(claim.daily):
                plan.skipped.append(_skip(claim.rec, "no headroom: the campaign's daily cap "
                                                     "is taken by other line items",
                                          target=cell))
                continue
            want_life = li.spent_micros + _ceil(daily * days)
            life = max(old_life, min(want_life, old_life + max(head_l, 0), L))
            head_d -= daily - old
            head_l -= life - old_life
            grown.append(_action(claim.rec, li, "budget", li.budgets(),
                                 {"daily_budget_micros": daily,
                                  "lifetime_budget_micros": life}, now))
        out += grown
        out += [a for a in switches if a.kind == "activate"]
        return out


def _ceil(x: float) -> int:
    return math.ceil(x - 1e-9)


def _expand(rec: Recommendation, state: CampaignState) -> list[tuple[str, _Claim]]:
    if rec.kind == "budget_rebalance":
        budgets = rec.change.get("daily_budgets_micros", {})
        return [(cell, _Claim(rec, "budget", int(v))) for cell, v in sorted(budgets.items())]
    kind = "pause" if rec.kind == "pause_cell" else "activate"
    return [(rec.target, _Claim(rec, kind))]


def _action(rec: Recommendation, li: LineItemState, kind: str, before: dict[str, Any],
            after: dict[str, Any], now: datetime) -> Action:
    cells = rec.evidence.get("cells", {})
    cell_evidence = dict(cells.get(li.cell_id, {})) if isinstance(cells, Mapping) else {}
    why = cell_evidence.pop("why", None)
    evidence = {"recommendation": {k: v for k, v in rec.evidence.items() if k != "cells"},
                "cell": cell_evidence}
    reason = f"{rec.agent}: {rec.kind}" + (f" — {why}" if why else "")
    return Action(key=action_key(rec.decision_id, li.cell_id, kind, after),
                  decision_id=rec.decision_id, campaign_id=rec.campaign_id, cell_id=li.cell_id,
                  line_item_id=li.line_item_id, kind=kind, before=before, after=after,
                  agent=rec.agent, reason=reason, evidence=evidence, created_at=now,
                  score=rec.score, impact=rec.impact, risk=rec.risk, priority=rec.priority)


def _within_requests(actions: list[Action], budget: int) -> tuple[list[Action], list[Action]]:
    """Keep at most ``budget`` actions: the largest moves, keeping the money order (a kept raise
    never relies on a dropped cut: raises are re-clipped to the kept cuts' headroom)."""
    if len(actions) <= budget:
        return actions, []
    def size(a: Action) -> int:
        if a.kind != "budget":
            return 1 << 62  # pauses and activations first: they are explicit decisions
        return abs(int(a.after["daily_budget_micros"]) - int(a.before["daily_budget_micros"]))
    ranked = sorted(range(len(actions)), key=lambda i: (-size(actions[i]), i))
    keep_idx = set(ranked[:budget])
    kept = [a for i, a in enumerate(actions) if i in keep_idx]
    over = [a for i, a in enumerate(actions) if i not in keep_idx]
    # raises may only use what the kept cuts free: drop the freed money of the dropped cuts
    freed_d = sum(int(a.before["daily_budget_micros"]) - int(a.after["daily_budget_micros"])
                  for a in over if a.kind == "budget" and not a.is_increase)
    freed_l = sum(int(a.before["lifetime_budget_micros"]) - int(a.after["lifetime_budget_micros"])
                  for a in over if a.kind == "budget" and not a.is_increase)
    if freed_d <= 0 and freed_l <= 0:
        return kept, over
    out: list[Action] = []
    # remove the dropped cuts' money from the latest raises first
    for a in reversed(kept):
        if a.kind == "budget" and a.is_increase and (freed_d > 0 or freed_l > 0):
            bd, bl = int(a.before["daily_budget_micros"]), int(a.before["lifetime_budget_micros"])
            ad, al = int(a.after["daily_budget_micros"]), int(a.after["lifetime_budget_micros"])
            take_d = min(freed_d, ad - bd) if ad > bd else 0
            take_l = min(freed_l, al - bl) if al > bl else 0
            freed_d -= take_d
            freed_l -= take_l
            ad, al = ad - take_d, al - take_l
            if (ad, al) == (bd, bl):
                over.append(a)
                continue
            after = {"daily_budget_micros": ad, "lifetime_budget_micros": al}
            a = Action(**{**_fields(a), "after": after,
                          "key": action_key(a.decision_id, a.cell_id, a.kind, after)})
        out.append(a)
    out.reverse()
    return out, over


def _fields(a: Action) -> dict[str, Any]:
    return {f: getattr(a, f) for f in Action.__dataclass_fields__}


def _skip(rec: Recommendation, reason: str, *, target: str | None = None) -> Skipped:
    return Skipped(rec.decision_id, rec.agent, rec.kind, rec.campaign_id,
                   target if target is not None else rec.target, reason)


def _skip_action(a: Action, reason: str) -> Skipped:
    return Skipped(a.decision_id, a.agent, a.kind, a.campaign_id, a.cell_id, reason)


__all__ = ["EXECUTABLE_KINDS", "DecisionEngine", "DecisionPlan", "DecisionRules", "Skipped"]
