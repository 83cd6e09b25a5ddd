"""Budget policies: what decides per-cell daily budgets, in the simulator and (later) live.

A policy is an object with ``decide(observations, now) -> budgets`` where ``budgets`` is an int64
array of per-cell daily budgets in micros, aligned with ``observations.cell_ids``. It is built
from a ``PolicyContext`` (the campaign, its cells, its lifetime and daily budget). The caller
(the simulator's driver, or the live decision engine) enforces the campaign's caps on whatever a
policy returns, so a policy cannot overspend; a well-behaved policy keeps the sum of its budgets
within the campaign's daily budget anyway.

Policies here:

- ``uniform``: an equal, static split of the daily budget.
- ``seed``: the seed's rule. Every decision (2 minutes), rank cells on the observed rate of the
  campaign's objective per impression, cut the bottom 20 % of cells' budgets by 50 % and share
  the freed budget equally among the top 20 %. Ties (e.g. cells with no conversion yet) are
  broken by a seeded random order, so the same seed makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from campaignd.domain.campaign import CampaignSpec, Cell

OBJECTIVE_FIELD = {"conversions": "conversions", "revenue": "conversion_value_micros",
                   "completed_views": "completes", "clicks": "clicks"}


@dataclass(frozen=True, slots=True)
class PolicyContext:
    spec: CampaignSpec
    cells: Sequence[Cell]
    lifetime_budget_micros: int
    daily_budget_micros: int
    seed: int = 0
    decision_seconds: int = 120

    @property
    def objective(self) -> str:
        return self.spec.objective


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


def equal_split(total_micros: int, n: int) -> np.ndarray:
    """``total`` split into ``n`` integer shares that sum exactly to ``total``."""
    out = np.full(n, total_micros // n, dtype=np.int64)
    out[: total_micros - int(out.sum())] += 1
    return out


class UniformPolicy:
    """An equal static split of the daily budget."""

    name = "uniform"

    def __init__(self, ctx: PolicyContext) -> None:
        self._budgets = equal_split(ctx.daily_budget_micros, len(ctx.cells))

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        return self._budgets.copy()


class SeedPolicy:
    """The seed's rule: cut the bottom 20 % by 50 %, give the freed budget to the top 20 %."""

    name = "seed"

    def __init__(self, ctx: PolicyContext, *, fraction: float = 0.2, cut: float = 0.5) -> None:
        self._ctx = ctx
        self._budgets: np.ndarray | None = None
        self._fraction = fraction
        self._cut = cut
        self._tiebreak = np.random.default_rng([ctx.seed, 7]).permutation(len(ctx.cells))

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        n = len(self._ctx.cells)
        if self._budgets is None:
            self._budgets = equal_split(self._ctx.daily_budget_micros, n)
            return self._budgets.copy()
        k = int(n * self._fraction)
        if k == 0:
            return self._budgets.copy()
        obj = observations.objective(self._ctx.objective).astype(float)
        imps = observations.impressions
        rate = np.where(imps > 0, obj / np.maximum(imps, 1), 0.0)
        order = np.lexsort((self._tiebreak, rate))  # ascending rate, seeded tie-break
        bottom, top = order[:k], order[-k:]
        b = self._budgets
        cut = (b[bottom] * self._cut).astype(np.int64)
        b[bottom] -= cut
        b[top] += equal_split(int(cut.sum()), k)
        return b.copy()


POLICIES: dict[str, Callable[[PolicyContext], Policy]] = {
    "uniform": UniformPolicy,
    "seed": SeedPolicy,
}


def make_policy(name: str, ctx: PolicyContext) -> Policy:
    """Build a named policy; ``oracle`` is built by the driver (it needs the market's truth)."""
    try:
        return POLICIES[name](ctx)
    except KeyError:
        from campaignd.errors import BadInput

        raise BadInput("is not a known policy", field="policy", value=name,
                       fix=f"use one of {', '.join([*POLICIES, 'oracle'])}") from None


__all__ = ["POLICIES", "Observations", "Policy", "PolicyContext", "SeedPolicy", "UniformPolicy",
           "equal_split", "make_policy"]
