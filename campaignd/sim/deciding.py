"""The daemon's decision path as a simulator policy: what is simulated is what runs.

``DecidingPolicy`` runs, at every decision step, exactly what the daemon's reallocation job runs:
the reallocation agent (``campaignd.agents.reallocation``) on a snapshot of the counts with the
budgets in force, then the decision engine (``campaignd.agents.decision``) with the daemon's
rules — risk budget, materiality, the DSP's request budget, cap-safe ordering — and applies the
plan's actions to the budgets, as the executor would once the DSP acknowledges them. Line-item
lifetime budgets are kept as the engine sets them (the driver still enforces the campaign's
caps on top, as the DSP would).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from campaignd.agents.decision import DecisionEngine, DecisionRules
from campaignd.agents.reallocation import BudgetReallocationAgent
from campaignd.domain.actions import CampaignState
from campaignd.domain.cells import METRICS, CellSnapshot
from campaignd.sim.policies import Observations, PolicyContext

BEESWAX_REQUESTS_PER_CYCLE = 1200
"""The daemon's default on Beeswax: 20 requests/s x a 120 s cycle x ``request_share`` 0.5."""


class DecidingPolicy:
    """See the module docstring. ``inner``: the agent's budget policy, built with
    ``options``."""

    def __init__(self, ctx: PolicyContext, *, inner: str = "thompson",
                 rules: DecisionRules | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        self.name = inner
        self._ctx = ctx
        self.agent = BudgetReallocationAgent(policy=inner, seed=ctx.seed,
                                             decision_seconds=ctx.decision_seconds,
                                             budget_day=ctx.budget_day,
                                             policy_options=options)
        self.agent.add_campaign(ctx.spec, ctx.cells)
        self.engine = DecisionEngine(rules or DecisionRules(
            max_requests=BEESWAX_REQUESTS_PER_CYCLE))
        self._ids = tuple(c.cell_id for c in ctx.cells)
        self._index = {c: i for i, c in enumerate(self._ids)}
        n = len(self._ids)
        # as the daemon's sync creates them: an equal split of the lifetime budget
        self._lifetime = np.full(n, ctx.lifetime_budget_micros // max(n, 1), dtype=np.int64)
        self.actions = 0
        self.skipped: dict[str, int] = {}

    @property
    def lifetime_budgets(self) -> np.ndarray:
        """The line items' lifetime budgets as the decision engine set them (the driver applies
        them as they are, as the executor would)."""
        return self._lifetime.copy()

    @property
    def allocator(self) -> object:
        return getattr(self.agent.policy(self._ctx.spec.id), "allocator", None)

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        obs = observations
        spec = self._ctx.spec
        budgets = np.asarray(obs.budgets_micros, dtype=np.int64).copy()
        counts = {m: np.asarray(getattr(obs, m), dtype=np.int64)
                  for m in METRICS if hasattr(obs, m)}
        zeros = np.zeros(len(self._ids), dtype=np.int64)
        snap = CellSnapshot(spec.id, self._ids, {}, {m: counts.get(m, zeros) for m in METRICS},
                            today={"spend_micros": np.asarray(obs.spent_today_micros)},
                            daily_budgets_micros=budgets)
        recs = self.agent.run({spec.id: snap}, now)
        if not recs:
            return budgets
        spent = counts["spend_micros"]
        n = len(self._ids)
        state = CampaignState(spec.id, self._ctx.daily_budget_micros,
                              self._ctx.lifetime_budget_micros,
                              max(0.0, (spec.flight_end - now).total_seconds() / 86400),
                              self._ids, np.arange(1, n + 1, dtype=np.int64), budgets.copy(),
                              self._lifetime.copy(), np.asarray(spent, dtype=np.int64),
                              np.asarray(obs.spent_today_micros, dtype=np.int64),
                              np.ones(n, dtype=bool))
        plan = self.engine.decide(recs, {spec.id: state}, now, materialize=False)
        if spec.id in plan.budgets:
            pos, daily, lifetime = plan.budgets[spec.id]
            budgets[pos] = daily
            self._lifetime[pos] = lifetime
            self.actions += int(pos.size)
        for sk in plan.skipped:
            head = sk.reason.split(":", 1)[0]
            self.skipped[head] = self.skipped.get(head, 0) + sk.count
        return budgets


__all__ = ["BEESWAX_REQUESTS_PER_CYCLE", "DecidingPolicy"]
