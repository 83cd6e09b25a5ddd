"""The decision engine: from every agent's recommendations to the line-item actions to apply.

Pure: ``decide(recommendations, campaigns, now)`` reads values and returns a ``DecisionPlan``; the
executor (``campaignd.dsp.executor``) records and applies it. In order:

1. **Priority.** Every recommendation has priority = score × impact × (1 − risk) (``impact`` in
   objective units per day, ``risk`` the posterior probability that it hurts). A finding
   (priority 0, e.g. ``flag_underperformer``) is kept in the plan as skipped: nothing to apply.
   A rule (``REQUIRED_KINDS``: ``budget_pace``, the cut of a campaign's budgets to today's share
   of its lifetime budget) is applied whatever its priority and spends no risk, after the
   rest, unless its campaign's budget rebalance was selected (which paces it by itself).
2. **Risk budget.** Recommendations are taken in decreasing priority while their summed risk
   stays within ``risk_budget`` (default 0.2) per campaign (campaigns are separate money, so one
   campaign's decisions never starve another's); one that would exceed it is skipped and
   cheaper ones may still fit. Risk is per recommendation: a budget rebalance of a whole
   campaign is one decision whose risk is the probability that the new allocation as a whole
   does worse. Changes that will not be made (immaterial, or to a line item a person has just
   changed: ``held``) are dropped first and spend no risk.
3. **Conflicts.** A line item changes at most once per cycle: the higher-priority recommendation
   claims it, and the other recommendation's change to it is skipped (``conflict``).
4. **Materiality.** A budget change smaller than ``min_change_fraction`` of the budget *and*
   than ``min_change_micros`` is dropped: it would cost a DSP request and an audit row for
   nothing.
5. **Money.** Actions are ordered so that every prefix keeps the campaign within its caps:
   cuts first, then raises, each raise clipped to the headroom the cuts left under the campaign's
   daily cap (sum of line-item daily budgets) and lifetime cap (sum of line-item lifetime
   budgets, as Beeswax requires). A line item's lifetime budget follows its daily budget: spend
   so far + daily × ``runway_days`` (2; less near the flight's end), never below what it has
   spent — so cuts free lifetime budget for raises — and a line item left with less than a day
   of runway is topped up (before raises take the headroom). Nothing is ever negative. The
   executor re-checks the caps against the DSP's acknowledged state before it applies a raise,
   so a cut that failed never lets a raise through.
6. **Request budget.** At most ``max_requests`` actions per cycle (one DSP request each): the
   largest moves are kept, the rest wait for the next cycle (the agent proposes them again); the
   money the dropped cuts would have freed is taken back from the kept raises.

Everything per cell is numpy over the campaign's arrays (``CampaignState``); only the kept
changes become ``Action`` objects, so a 10,000-cell rebalance costs a few milliseconds. What was
skipped is reported per recommendation and reason with a count and a few example cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from campaignd.domain.actions import (
    Action,
    CampaignState,
    CellValues,
    Recommendation,
    action_key,
)

EXECUTABLE_KINDS = ("budget_rebalance", "budget_pace", "pause_cell", "activate_cell")
REQUIRED_KINDS = ("budget_pace",)
"""Rules, not bets: applied whatever their priority, spending no risk -- unless a budget
rebalance of the same campaign was selected this cycle (it paces the campaign by itself)."""
_BUDGET_KINDS = ("budget_rebalance", "budget_pace")
_BUDGET, _PAUSE, _ACTIVATE = 0, 1, 2
_KIND_NAME = {_BUDGET: "budget", _PAUSE: "pause", _ACTIVATE: "activate"}


@dataclass(frozen=True, slots=True)
class DecisionRules:
    risk_budget: float = 0.2
    """Summed risk of the recommendations executed in one cycle."""
    min_change_fraction: float = 0.05
    min_change_micros: int = 1_000_000
    """A budget change is immaterial when it moves less than this fraction of the budget and
    less than this much money (default: 5 % and one currency unit a day)."""
    max_requests: int | None = None
    """DSP requests (= actions) per cycle; ``None``: no limit."""
    runway_days: float = 2.0
    """A line item's lifetime budget covers what it spent plus this many days of its daily
    budget (less near the flight's end); one with less than a day left is topped up."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.risk_budget <= 1.0:
            raise ValueError(f"risk_budget must be in [0, 1], got {self.risk_budget}")
        if self.min_change_fraction < 0 or self.min_change_micros < 0:
            raise ValueError("min_change_fraction and min_change_micros must be >= 0")
        if self.max_requests is not None and self.max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {self.max_requests}")


@dataclass(frozen=True, slots=True)
class Skipped:
    """Something the engine decided not to do, and why: ``count`` changes of one
    recommendation (``targets``: a few of their cells, or the recommendation's target)."""

    decision_id: str
    agent: str
    kind: str
    campaign_id: str
    target: str
    reason: str
    count: int = 1
    targets: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "agent": self.agent, "kind": self.kind,
                "campaign_id": self.campaign_id, "target": self.target, "reason": self.reason,
                "count": self.count, "targets": list(self.targets)}


@dataclass(slots=True)
class DecisionPlan:
    actions: list[Action] = field(default_factory=list)
    """In execution order: every prefix keeps each campaign within its caps."""
    budgets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Per campaign, the budget changes as arrays (positions in the campaign's cells, daily and
    lifetime budgets after), in the same order as ``actions`` — all a simulator needs."""
    selected: list[Recommendation] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    risk_used: float = 0.0

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for s in self.skipped:
            head = s.reason.split(":", 1)[0]
            reasons[head] = reasons.get(head, 0) + s.count
        n = sum(p.size for p, _, _ in self.budgets.values())
        return {"actions": max(len(self.actions), n), "selected": len(self.selected),
                "skipped": reasons, "risk_used": round(self.risk_used, 6)}


@dataclass(slots=True)
class _Claims:
    """One campaign's claimed changes, as arrays (one entry per changed line item)."""

    pos: list[np.ndarray] = field(default_factory=list)
    kind: list[np.ndarray] = field(default_factory=list)
    value: list[np.ndarray] = field(default_factory=list)
    rec: list[np.ndarray] = field(default_factory=list)


class DecisionEngine:
    """Turns recommendations into an ordered, capped list of actions (see the module
    docstring)."""

    def __init__(self, rules: DecisionRules | None = None) -> None:
        self.rules = rules or DecisionRules()

    def decide(self, recommendations: Iterable[Recommendation],
               campaigns: Mapping[str, CampaignState], now: datetime, *,
               materialize: bool = True) -> DecisionPlan:
        """The plan (see the module docstring); ``materialize=False`` leaves ``actions`` empty
        and gives only ``budgets`` (no keys, evidence or reasons: for the simulator)."""
        rules = self.rules
        plan = DecisionPlan()
        # (the required ones last: a selected re-plan supersedes its campaign's pacing cut)
        ranked = sorted(recommendations, key=lambda r: (r.kind in REQUIRED_KINDS, -r.priority,
                                                        r.decision_id))
        replanned: set[str] = set()  # campaigns whose budget rebalance was selected
        recs: list[Recommendation] = []
        claims: dict[str, _Claims] = {}
        claimed: dict[str, np.ndarray] = {}  # campaign → rec index per cell (-1: free)
        risk: dict[str, float] = {}  # campaign → risk taken this cycle
        for rec in ranked:
            if rec.kind not in EXECUTABLE_KINDS:
                plan.skipped.append(_skip(rec, "finding: nothing to apply"))
                continue
            required = rec.kind in REQUIRED_KINDS
            if required and rec.campaign_id in replanned:
                plan.skipped.append(_skip(rec, "superseded: the campaign's re-plan this cycle "
                                               "paces it"))
                continue
            if not required and not rec.priority > 0:
                plan.skipped.append(_skip(rec, "no expected gain: priority is 0"))
                continue
            state = campaigns.get(rec.campaign_id)
            if state is None:
                plan.skipped.append(_skip(rec, "unknown campaign: not loaded or not synced"))
                continue
            used = risk.get(rec.campaign_id, 0.0)
            if not required and used + rec.risk > rules.risk_budget + 1e-12:
                plan.skipped.append(_skip(
                    rec, f"risk budget: risk {rec.risk:.3f} would bring this cycle's total for "
                         f"the campaign to {used + rec.risk:.3f} > {rules.risk_budget:g}"))
                continue
            pos, kind, value, unknown = _expand(rec, state)
            if unknown:
                plan.skipped.append(_skip(rec, "unknown cell: no line item for it",
                                          targets=unknown))
            # pauses and activations of line items already in that state change nothing:
            # they spend no risk and claim no line item
            noop = (kind != _BUDGET) & (state.active[pos] == (kind == _ACTIVATE))
            if noop.any():
                plan.skipped.append(_skip(rec, "no change: already in that state",
                                          count=int(noop.sum()),
                                          targets=_cells(state, pos[noop])))
                pos, kind, value = pos[~noop], kind[~noop], value[~noop]
                if pos.size == 0:
                    continue
            # changes that will not be made spend no risk: immaterial ones, held line items
            small = self._immaterial(state, pos, kind, value)
            if small.any():
                plan.skipped.append(_skip(
                    rec, f"immaterial: change below both {rules.min_change_fraction:.0%} and "
                         f"{rules.min_change_micros} micros", count=int(small.sum()),
                    targets=_cells(state, pos[small])))
            held = state.held[pos] if state.held is not None else np.zeros(pos.size, bool)
            held &= ~small
            if held.any():
                plan.skipped.append(_skip(
                    rec, "held: a person changed this line item recently (undo); agents leave "
                         "it alone for decision.manual_hold_s", count=int(held.sum()),
                    targets=_cells(state, pos[held])))
            keep = ~small & ~held
            pos, kind, value = pos[keep], kind[keep], value[keep]
            owner = claimed.setdefault(rec.campaign_id, np.full(len(state.cell_ids), -1))
            taken = owner[pos]
            clash = taken >= 0
            if clash.any():
                first = recs[int(taken[clash][0])]
                plan.skipped.append(_skip(
                    rec, f"conflict: line item already changed this cycle by {first.agent} "
                         f"({first.decision_id})", count=int(clash.sum()),
                    targets=_cells(state, pos[clash])))
                pos, kind, value = pos[~clash], kind[~clash], value[~clash]
            if pos.size == 0:
                continue
            owner[pos] = len(recs)
            c = claims.setdefault(rec.campaign_id, _Claims())
            c.pos.append(pos)
            c.kind.append(kind)
            c.value.append(value)
            c.rec.append(np.full(pos.size, len(recs)))
            recs.append(rec)
            if not required:
                risk[rec.campaign_id] = used + rec.risk
                plan.risk_used += rec.risk
            if rec.kind == "budget_rebalance":
                replanned.add(rec.campaign_id)
            plan.selected.append(rec)
        budget = rules.max_requests
        for cid, c in claims.items():
            ops = self._campaign_ops(campaigns[cid], c, recs, plan)
            if budget is not None:
                ops = _within_requests(ops, budget, campaigns[cid], recs, plan)
                budget -= len(ops.pos)
            b = ops.kind == _BUDGET
            plan.budgets[cid] = (ops.pos[b], ops.daily[b], ops.lifetime[b])
            if materialize:
                # only the kept changes become actions (keys, evidence, reasons: the costly part)
                plan.actions.extend(_actions(ops, campaigns[cid], recs, now))
        return plan

    def _immaterial(self, st: CampaignState, pos: np.ndarray, kind: np.ndarray,
                    value: np.ndarray) -> np.ndarray:
        """Budget changes below both materiality thresholds (or no change at all)."""
        rules = self.rules
        old = st.daily[pos]
        delta = np.clip(value, 0, int(st.daily_cap_micros)) - old
        out: np.ndarray = (kind == _BUDGET) & (
            (delta == 0) | ((np.abs(delta) < rules.min_change_fraction * old)
                            & (np.abs(delta) < rules.min_change_micros)))
        return out

    # --- money -------------------------------------------------------------------------

    def _campaign_ops(self, st: CampaignState, c: _Claims, recs: list[Recommendation],
                      plan: DecisionPlan) -> _Ops:
        rules = self.rules
        pos, kind = np.concatenate(c.pos), np.concatenate(c.kind)
        value, rec = np.concatenate(c.value), np.concatenate(c.rec)
        days = max(float(st.days_left), 0.0)
        runway = min(days, rules.runway_days)
        D, L = int(st.daily_cap_micros), int(st.lifetime_cap_micros)
        # pauses and activations (those that would change nothing were dropped in decide)
        switch = kind != _BUDGET
        # budgets
        b = ~switch
        new = np.clip(value, 0, D)
        old = st.daily[pos]
        delta = np.where(b, new - old, 0)
        immaterial = b & (delta == 0)  # (the rest was filtered when the changes were claimed)
        spent = st.spent[pos]
        cut = b & ~immaterial & (delta < 0)
        grow = b & ~immaterial & (delta > 0)
        life_old = st.lifetime[pos]
        life_cut = np.minimum(life_old, np.maximum(spent, spent + _ceil(new * runway)))
        # headroom once every cut is in
        daily_after = st.daily.copy()
        life_after = st.lifetime.copy()
        daily_after[pos[cut]] = new[cut]
        life_after[pos[cut]] = life_cut[cut]
        # (a budget cut below what its line item spent frees only what it had not spent)
        head_d = D - int(np.maximum(daily_after, st.spent_today).sum())
        head_l = L - int(np.maximum(life_after, st.spent).sum())
        # lifetime top-ups: line items nobody changes this cycle whose lifetime budget has less
        # than a day of their daily budget left (they would stop delivering) get their runway
        # back, before any raise takes the lifetime headroom
        budget_recs = rec[b]
        t = np.zeros(0, dtype=np.int64)
        life_t = np.zeros(0, dtype=np.int64)
        if budget_recs.size and runway > 0:
            free = np.ones(len(st.cell_ids), dtype=bool)
            free[pos] = False
            if st.held is not None:  # a person's change stands: no top-up on top of it
                free &= ~st.held
            short = free & st.active & (st.daily > 0) & (
                st.lifetime - st.spent < st.daily * min(1.0, runway))
            t = np.nonzero(short)[0]
            want_t = np.minimum(st.spent[t] + _ceil(st.daily[t] * runway), L)
            inc_t = np.maximum(want_t - st.lifetime[t], 0)
            order_t = np.lexsort((t, -inc_t))
            t, inc_t = t[order_t], inc_t[order_t]
            got_t = np.clip(max(head_l, 0) - (np.cumsum(inc_t) - inc_t), 0, inc_t)
            t, got_t = t[got_t > 0], got_t[got_t > 0]
            life_t = st.lifetime[t] + got_t
            head_l -= int(got_t.sum())
        # raises, largest first, each up to what is left
        g = np.nonzero(grow)[0]
        g = g[np.lexsort((pos[g], -delta[g]))]
        want = delta[g]
        granted = np.clip(max(head_d, 0) - (np.cumsum(want) - want), 0, want)
        starved = (granted < want) & (granted < max(rules.min_change_micros, 1))
        _skip_each(plan, recs, st, rec[g[starved]], pos[g[starved]],
                   "no headroom: the campaign's daily cap is taken by other line items")
        g, granted = g[~starved], granted[~starved]
        daily_g = old[g] + granted
        want_life = np.minimum(spent[g] + _ceil(daily_g * runway), L)
        inc_l = np.maximum(want_life - life_old[g], 0)
        got_l = np.clip(max(head_l, 0) - (np.cumsum(inc_l) - inc_l), 0, inc_l)
        life_g = life_old[g] + got_l
        # the money order: cuts (largest first), pauses, top-ups, raises (largest first),
        # activations
        k = np.nonzero(cut)[0]
        k = k[np.lexsort((pos[k], delta[k]))]
        sw = np.nonzero(switch)[0]
        pauses, acts = sw[kind[sw] == _PAUSE], sw[kind[sw] == _ACTIVATE]
        order = np.concatenate([k, pauses])
        tail = np.concatenate([g, acts])
        top_rec = np.full(t.size, int(budget_recs[0]) if budget_recs.size else 0)
        return _Ops(
            np.concatenate([pos[order], t, pos[tail]]),
            np.concatenate([kind[order], np.full(t.size, _BUDGET), kind[tail]]),
            np.concatenate([rec[order], top_rec, rec[tail]]),
            np.concatenate([new[k], old[pauses], st.daily[t], daily_g, old[acts]]
                           ).astype(np.int64),
            np.concatenate([life_cut[k], life_old[pauses], life_t, life_g, life_old[acts]]
                           ).astype(np.int64))


@dataclass(slots=True)
class _Ops:
    """Planned changes of one campaign, in execution order (arrays)."""

    pos: np.ndarray
    kind: np.ndarray
    rec: np.ndarray
    daily: np.ndarray
    """Daily budget after (budget changes; the current one for pauses and activations)."""
    lifetime: np.ndarray

    def take(self, mask: np.ndarray) -> _Ops:
        return _Ops(self.pos[mask], self.kind[mask], self.rec[mask], self.daily[mask],
                    self.lifetime[mask])


def _ceil(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.ceil(np.asarray(x, dtype=float) - 1e-9).astype(np.int64)
    return out


def _expand(rec: Recommendation, st: CampaignState
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """(positions, kinds, new daily budgets, unknown cells) of what ``rec`` changes."""
    if rec.kind in _BUDGET_KINDS:
        budgets: Mapping[str, int] = rec.change.get("daily_budgets_micros", {})
        unknown: tuple[str, ...] = ()
        if isinstance(budgets, CellValues) and (budgets.cell_ids is st.cell_ids
                                                or budgets.cell_ids == st.cell_ids):
            pos, val = budgets.positions, budgets.amounts
        else:
            idx = st.index
            known = [(idx[c], int(v)) for c, v in budgets.items() if c in idx]
            unknown = tuple(c for c in budgets if c not in idx)
            pos = np.fromiter((p for p, _ in known), dtype=np.int64, count=len(known))
            val = np.fromiter((v for _, v in known), dtype=np.int64, count=len(known))
        if rec.kind == "budget_pace":  # a cut, never a raise (the budgets may have moved)
            val = np.minimum(val, st.daily[pos])
        return pos, np.full(pos.size, _BUDGET), val, unknown
    if rec.target not in st.index:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                (rec.target,))
    kind = _PAUSE if rec.kind == "pause_cell" else _ACTIVATE
    return (np.array([st.index[rec.target]]), np.array([kind]), np.zeros(1, np.int64), ())


def _within_requests(ops: _Ops, budget: int, st: CampaignState, recs: list[Recommendation],
                     plan: DecisionPlan) -> _Ops:
    """Keep at most ``budget`` changes: the largest moves (pauses and activations first), in
    the money order. A kept raise never relies on a dropped cut: the money the dropped cuts
    would have freed is taken back from the kept raises, the last first."""
    n = ops.pos.size
    if n <= budget:
        return ops
    switch = ops.kind != _BUDGET
    size = np.where(switch, np.iinfo(np.int64).max,
                    np.abs(ops.daily - st.daily[ops.pos]))
    ranked = np.lexsort((np.arange(n), -size))
    keep = np.zeros(n, dtype=bool)
    keep[ranked[:budget]] = True
    dropped = ops.take(~keep)
    _skip_each(plan, recs, st, dropped.rec, dropped.pos,
               "request budget: over this cycle's DSP requests; proposed again next cycle")
    kept = ops.take(keep)
    is_b = dropped.kind == _BUDGET
    freed_d = int(np.maximum(st.daily[dropped.pos] - dropped.daily, 0)[is_b].sum())
    freed_l = int(np.maximum(st.lifetime[dropped.pos] - dropped.lifetime, 0)[is_b].sum())
    if freed_d <= 0 and freed_l <= 0:
        return kept
    raise_d = np.where(kept.kind == _BUDGET, np.maximum(kept.daily - st.daily[kept.pos], 0), 0)
    raise_l = np.where(kept.kind == _BUDGET,
                       np.maximum(kept.lifetime - st.lifetime[kept.pos], 0), 0)
    for amount, raised, after in ((freed_d, raise_d, kept.daily),
                                  (freed_l, raise_l, kept.lifetime)):
        back = raised[::-1]  # the last raises give back first
        take = np.clip(amount - (np.cumsum(back) - back), 0, back)[::-1]
        after -= take
    nothing = (kept.kind == _BUDGET) & (kept.daily == st.daily[kept.pos]) & (
        kept.lifetime == st.lifetime[kept.pos])
    if nothing.any():
        _skip_each(plan, recs, st, kept.rec[nothing], kept.pos[nothing],
                   "request budget: its headroom came from cuts deferred to the next cycle")
    return kept.take(~nothing)


def _actions(ops: _Ops, st: CampaignState, recs: list[Recommendation],
             now: datetime) -> list[Action]:
    for r in np.unique(ops.rec):  # lazy evidence: fetch what these actions need in one go
        cells = recs[int(r)].evidence.get("cells")
        prefetch = getattr(cells, "prefetch", None)
        if prefetch is not None:
            prefetch([st.cell_ids[int(p)] for p in ops.pos[ops.rec == r]])
    out = []
    for p, k, r, d, lf in zip(ops.pos.tolist(), ops.kind.tolist(), ops.rec.tolist(),
                              ops.daily.tolist(), ops.lifetime.tolist(), strict=True):
        rec = recs[r]
        li = st.line_item(p)
        kind = _KIND_NAME[k]
        if kind == "budget":
            before: dict[str, Any] = li.budgets()
            after: dict[str, Any] = {"daily_budget_micros": d, "lifetime_budget_micros": lf}
        else:
            before, after = {"active": li.active}, {"active": kind == "activate"}
        cells = rec.evidence.get("cells", {})
        found = cells.get(li.cell_id) if isinstance(cells, Mapping) else None
        cell_evidence = dict(found) if found else {}
        why = cell_evidence.pop("why", None) or rec.evidence.get("summary", {}).get("why")
        evidence = {"recommendation": {k2: v for k2, v in rec.evidence.items() if k2 != "cells"},
                    "cell": cell_evidence}
        reason = f"{rec.agent}: {rec.kind}" + (f" — {why}" if why else "")
        out.append(Action(key=action_key(rec.decision_id, li.cell_id, kind, after),
                          decision_id=rec.decision_id, campaign_id=rec.campaign_id,
                          cell_id=li.cell_id, line_item_id=li.line_item_id, kind=kind,
                          before=before, after=after, agent=rec.agent, reason=reason,
                          evidence=evidence, created_at=now, score=rec.score,
                          impact=rec.impact, risk=rec.risk, priority=rec.priority))
    return out


def _cells(st: CampaignState, pos: np.ndarray, limit: int = 5) -> tuple[str, ...]:
    return tuple(st.cell_ids[int(p)] for p in pos[:limit])


def _skip(rec: Recommendation, reason: str, *, count: int = 1,
          targets: tuple[str, ...] = ()) -> Skipped:
    return Skipped(rec.decision_id, rec.agent, rec.kind, rec.campaign_id, rec.target, reason,
                   count=max(count, len(targets)) if targets else count,
                   targets=targets[:5])


def _skip_each(plan: DecisionPlan, recs: list[Recommendation], st: CampaignState,
               rec_idx: np.ndarray, pos: np.ndarray, reason: str) -> None:
    """One ``Skipped`` per recommendation for these changes, with their count."""
    if rec_idx.size == 0:
        return
    for r in np.unique(rec_idx):
        m = rec_idx == r
        plan.skipped.append(Skipped(
            recs[int(r)].decision_id, recs[int(r)].agent, recs[int(r)].kind,
            recs[int(r)].campaign_id, recs[int(r)].target, reason, count=int(m.sum()),
            targets=_cells(st, pos[m])))


__all__ = ["EXECUTABLE_KINDS", "DecisionEngine", "DecisionPlan", "DecisionRules", "Skipped"]
