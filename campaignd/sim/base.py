"""What a budget policy is: the campaign it decides for (``PolicyContext``), what it sees
(``Observations``: the DSP's cumulative counts and the budgets in force) and what it answers
(``Policy.decide``: per-cell daily budgets in micros). The policies themselves are in
``campaignd.sim.policies`` (the baselines, the registry) and ``campaignd.sim.thompson``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import numpy as np

from campaignd.domain.budget_day import BudgetDay, flight_days_left, paced_budget_today
from campaignd.domain.campaign import OBJECTIVE_COUNTER, CampaignSpec, Cell

OBJECTIVE_FIELD = OBJECTIVE_COUNTER


@dataclass(frozen=True, slots=True)
class PolicyContext:
    spec: CampaignSpec
    cells: Sequence[Cell]
    lifetime_budget_micros: int
    daily_budget_micros: int
    seed: int = 0
    decision_seconds: int = 120
    budget_day: BudgetDay = field(default_factory=lambda: BudgetDay("UTC"))
    """The DSP account's day: when "today" (its spend, its budget) starts over."""

    @property
    def objective(self) -> str:
        return self.spec.objective

    def budget_today(self, spent_total: int, spent_today: int, now: datetime) -> int:
        """What the campaign may spend today (micros): ``paced_budget_today``, the lifetime
        budget paced over the flight's budget days left."""
        day = self.budget_day
        return paced_budget_today(
            lifetime_micros=self.lifetime_budget_micros, daily_micros=self.daily_budget_micros,
            spent_total_micros=spent_total, spent_today_micros=spent_today,
            days_left=flight_days_left(day, now, self.spec.flight_start, self.spec.flight_end))


@dataclass(frozen=True, slots=True)
class Observations:
    """Cumulative per-cell counts observed so far (what the DSP reported), aligned with
    ``cell_ids``; every array is int64."""

    now: datetime
    cell_ids: tuple[str, ...]
    impressions: np.ndarray
    spend_micros: np.ndarray
    clicks: np.ndarray
    completes: np.ndarray
    viewable: np.ndarray
    measurable: np.ndarray
    conversions: np.ndarray
    conversion_value_micros: np.ndarray
    spent_today_micros: np.ndarray
    budgets_micros: np.ndarray
    """The per-cell daily budgets in force."""

    def objective(self, objective: str) -> np.ndarray:
        out: np.ndarray = getattr(self, OBJECTIVE_FIELD[objective])
        return out


class Policy(Protocol):
    name: str

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        """Per-cell daily budgets (int64 micros, aligned with ``observations.cell_ids``)."""
        ...


def budget_today(ctx: PolicyContext, obs: Observations) -> int:
    """``ctx.budget_today`` from what ``obs`` says was spent."""
    return ctx.budget_today(int(obs.spend_micros.sum()), int(obs.spent_today_micros.sum()),
                            obs.now)


def equal_split(total_micros: int, n: int) -> np.ndarray:
    """``total`` split into ``n`` integer shares that sum exactly to ``total``."""
    out = np.full(n, total_micros // n, dtype=np.int64)
    out[: total_micros - int(out.sum())] += 1
    return out


__all__ = ["OBJECTIVE_FIELD", "Observations", "Policy", "PolicyContext", "budget_today",
           "equal_split"]
