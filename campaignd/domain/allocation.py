"""Budget allocation across cells by Thompson sampling of value per dollar.

Usable on its own::

    from campaignd.domain.allocation import Allocator
    alloc = Allocator(cells=[{"audience": "a1", "platform": "hulu"}, ...], seed=0)
    spend = alloc.allocate(budget=1000.0, capacity=None)   # ndarray, >= 0, sums to <= budget
    alloc.observe(trials=trials_array, successes=successes_array)  # counts since the last call

The model (``campaignd.domain.allocation_model``) is an additive logit model of every cell's rate
on the objective -- main effects per dimension level, pairwise interactions and a per-cell
residual, all shrunk towards their priors -- fitted from all cells' counts at once by Newton's
method (Laplace approximation). Cost per trial (e.g. spend per impression) is estimated per cell
from ``observe(..., spend=...)``, shrunk towards a log-additive main-effects fit for cells with few
trials; without spend observations a trial costs one money unit.

``allocate`` draws ``draws`` joint posterior samples of every cell's rate, turns each into value
per money unit (rate x value per success / cost per trial) and fills the budget greedily in that
order up to each cell's capacity; the allocation is the average of the fills (probability
matching: a cell gets budget in proportion to how often it ranks among the best that the budget
can buy). With ``groups`` (cells that buy the same inventory, e.g. line items that differ only in
creative or bid) each draw instead solves a multiple-choice knapsack -- one cell per group first,
chosen by the value it adds over the budget's marginal value per money unit -- so budget is not
split across line items that would only outbid each other. Before the fill, in this order of
precedence:

1. **budget** -- never exceeded (hard);
2. **lower** -- optional per-cell lower bounds, e.g. money already committed today (hard, scaled
   down only if they alone exceed the budget);
3. **maximum cut** -- a cell keeps at least ``(1 - max_cut_per_cycle)`` of its previous
   allocation, and at least ``(1 - max_cut_per_day)`` of its allocation at the last
   ``begin_day()`` (DV360 cuts a line item by at most 20 % a day: ``DV360_MAX_DAILY_CUT``).
   A DSP's rule: it holds even above a cell's capacity (that money stays unspent);
4. **capacity** -- an optional per-cell upper bound on spend (e.g. what a line item could
   actually buy, learned by the caller from delivery): nothing above it is added, but it does
   not override 2 or 3;
5. **exploration floor** -- unproven cells (fewer than ``learning_successes`` expected successes
   at the pooled rate) share ``explore_fraction`` of the budget equally, within their capacity;
   this is also the learning threshold: an unproven cell is not cut below its floor.

If the cut limits and the floor cannot all be met within the budget, the amounts above the
hard lower bounds are scaled down together (the budget wins). Money: any consistent unit, as
floats for the optimisation; callers convert to integer micros at their edges
(``campaignd.sim.thompson.ThompsonPolicy`` rounds down per cell, so the integer budgets still sum
to at most the budget, and up where a cut limit would otherwise be missed by a micro:
``cut_floor``).

``assess(proposed, current, capacity)`` returns the posterior probability that ``proposed`` is
worth less than ``current`` (``risk_of``) and the expected gain in objective units over the
allocations' period (``expected_gain``), from joint draws of every cell's rate.

Pure: numpy + scipy, no clock, no I/O. The same seed and the same calls give the same results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import ndtri

from campaignd.domain.allocation_model import (
    INTERCEPT,
    AdditiveLogitModel,
    Prior,
    effect_name,
    sigmoid,
)
from campaignd.domain.knapsack import greedy_fill, group_fill

DV360_MAX_DAILY_CUT = 0.2
"""Display & Video 360 lets a line item's budget fall by at most 20 % a day."""


@dataclass(frozen=True, slots=True)
class CellPosterior:
    """Evidence per cell (arrays aligned with the allocator's cells)."""

    trials: np.ndarray
    successes: np.ndarray
    rate_mean: np.ndarray
    """Posterior mean of the rate (Laplace, by the delta method on the logit scale)."""
    rate_low: np.ndarray
    rate_high: np.ndarray
    """Central credible interval at ``level``."""
    cost_per_trial: np.ndarray
    value_per_dollar: np.ndarray
    """Posterior-mean value per money unit (rate x value per success / cost per trial; the
    cell's own rate, with the allocator's ``spill`` and ``rate_scale``)."""
    proven: np.ndarray
    level: float


@dataclass(frozen=True, slots=True)
class ChangeAssessment:
    """What a change of allocation is likely to do (``Allocator.assess``)."""

    risk: float
    """Posterior probability that the proposed allocation is worth less than the current one."""
    expected_gain: float
    """Posterior mean of proposed - current, in objective units over the allocations' period."""
    gain_low: float
    gain_high: float
    """Central credible interval of the gain."""
    draws: int


class Allocator:
    """Thompson-sampling budget allocator over cells (see the module docstring).

    Keyword options (defaults in brackets): ``draws`` [32] posterior draws averaged per
    allocation; ``explore_fraction`` [0.05] of the budget is the floor shared by unproven cells;
    ``learning_successes`` [3.0] expected successes that make a cell proven;
    ``max_cut_per_cycle`` [0.5] and ``max_cut_per_day`` [None] limit cuts (``None``: no limit);
    ``value_per_success`` [None: the observed mean value per success if ``value`` was observed,
    else 1]; ``cost_prior`` [1.0] money per trial assumed until any spend is observed (e.g. a
    CPM bid per impression: it sets the scale of value per money, the expected gains and their
    evidence, not which cells are funded, as it is the same for every cell);
    ``cost_prior_trials`` [100] pseudo-trials of the cost prior; model options
    ``dimensions``, ``interactions`` [True], ``main_sd`` [1.0], ``interaction_sd`` [0.5],
    ``residual_sd`` [0.25] and ``priors`` (effect name -> ``Prior`` or ``(mean, precision)``);
    ``groups`` [None]: one hashable per cell; cells of one group buy the same inventory (e.g. DSP
    line items with the same targeting, differing only in creative or bid), so each draw funds
    one cell per group before any second one (see ``_group_fill``); ``exploration_scale``
    [1.0] multiplies the spread of the posterior draws (1 = Thompson sampling; below 1 exploits
    more, 0 = greedy on the posterior mode); ``one_cell_per_group`` [False] (with ``groups``):
    fund a single cell per group -- e.g. when a DSP splits a targeting's inventory among all the
    line items that bid on it, so that a second funded line item only takes supply from the
    first -- chosen per allocation as the cell the group's knapsack funds in most draws
    (``group_choice="mode"``) or in one random draw (``"sample"``); the other cells of the
    group keep their lower and cut-limit bounds only, and the exploration floor goes to the
    chosen cells of groups not yet proven; ``spill`` [0.0]: the share of every cell's own
    successes that last-touch attribution credits to other cells (a converting user saw
    another line item's ad last), which land on the cells in proportion to their trials -- the
    credited rate is then about ``(1 - spill) x own + spill x pooled``, which makes cheap, poor
    cells look better per money unit than they are, so the allocator ranks ``(credited - spill
    x pooled) / (1 - spill)`` instead (the share cannot be told apart from smaller effects in
    the counts: it comes from the attribution's path data).

    ``observe(..., strength=)`` and ``rate_scale`` (attribute, default ``None``): for trials of
    a known strength -- e.g. ``ThompsonPolicy`` with creative fatigue: trials count at the
    strength their impressions had, the model learns rates at full strength, and a cell's rate
    is scaled by the wear its creative has reached when allocating and assessing.

    ``assess`` / ``risk_of`` / ``expected_gain`` compare two allocations on joint posterior
    draws (the decision engine's "risk that a change hurts" and "expected impact").
    """

    def __init__(self, cells: Sequence[Mapping[str, str]], *, seed: int = 0, draws: int = 32,
                 explore_fraction: float = 0.05, learning_successes: float = 3.0,
                 max_cut_per_cycle: float | None = 0.5, max_cut_per_day: float | None = None,
                 value_per_success: float | None = None, cost_prior: float = 1.0,
                 cost_prior_trials: float = 100.0,
                 dimensions: Sequence[str] | None = None, interactions: bool = True,
                 main_sd: float = 1.0, interaction_sd: float = 0.5, residual_sd: float = 0.25,
                 priors: Mapping[str, Prior | tuple[float, float]] | None = None,
                 groups: Sequence[object] | None = None,
                 exploration_scale: float = 1.0, one_cell_per_group: bool = False,
                 group_choice: str = "mode", spill: float = 0.0) -> None:
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        if not 0.0 <= explore_fraction <= 1.0:
            raise ValueError(f"explore_fraction must be in [0, 1], got {explore_fraction}")
        for name, v in (("max_cut_per_cycle", max_cut_per_cycle),
                        ("max_cut_per_day", max_cut_per_day)):
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {v}")
        pri = {k: v if isinstance(v, Prior) else Prior(float(v[0]), float(v[1]))
               for k, v in (priors or {}).items()}
        self.model = AdditiveLogitModel(cells, dimensions=dimensions, interactions=interactions,
                                        main_sd=main_sd, interaction_sd=interaction_sd,
                                        residual_sd=residual_sd, priors=pri)
        n = self.model.n_cells
        self.n_cells = n
        self.draws = draws
        if not exploration_scale >= 0:
            raise ValueError(f"exploration_scale must be >= 0, got {exploration_scale}")
        self.exploration_scale = exploration_scale
        if not 0.0 <= spill < 1.0:
            raise ValueError(f"spill must be in [0, 1), got {spill}")
        self.spill = spill
        if group_choice not in ("mode", "sample"):
            raise ValueError(f"group_choice must be 'mode' or 'sample', got {group_choice!r}")
        self.one_cell_per_group = one_cell_per_group
        self.group_choice = group_choice
        self.explore_fraction = explore_fraction
        self.learning_successes = learning_successes
        self.max_cut_per_cycle = max_cut_per_cycle
        self.max_cut_per_day = max_cut_per_day
        if value_per_success is not None and not (
                isinstance(value_per_success, int | float)
                and math.isfinite(value_per_success) and value_per_success > 0):
            raise ValueError(f"value_per_success must be a finite number > 0 (or None), got "
                             f"{value_per_success!r}")
        self.value_per_success = value_per_success
        if not (math.isfinite(cost_prior) and cost_prior > 0):
            raise ValueError(f"cost_prior must be a positive money amount per trial, got "
                             f"{cost_prior!r}")
        self.cost_prior = float(cost_prior)
        self.cost_prior_trials = cost_prior_trials
        self._rng = np.random.default_rng([seed, 5])
        self._risk_rng = np.random.default_rng([seed, 11])
        self._groups: np.ndarray | None = None
        if groups is not None:
            if len(groups) != n:
                raise ValueError(f"groups: need one group per cell ({n}), got {len(groups)}")
            ids: dict[object, int] = {}
            self._groups = np.array([ids.setdefault(g, len(ids)) for g in groups],
                                    dtype=np.int64)
        self._rate_scale: np.ndarray | None = None
        self.trials = np.zeros(n)
        self._strong: np.ndarray | None = None  # trials x their strength, once one was given
        self.successes = np.zeros(n)
        self.spend = np.zeros(n)
        self.value = np.zeros(n)
        self._spend_seen = False
        self._value_seen = False
        self._dirty = True
        self._cost: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._day_start: np.ndarray | None = None
        # main-effect columns (intercept + one level per dimension) for the cost model
        k = 1 + len(self.model.dimensions)
        cols = self.model._cols[:, :k]
        self._cost_X = sp.csr_matrix((np.ones(n * k), cols.ravel(), np.arange(0, n * k + 1, k)),
                                     shape=(n, 1 + int(cols[:, 1:].max(initial=0))))

    # --- data ----------------------------------------------------------------------------------

    def observe(self, trials: np.ndarray, successes: np.ndarray, *,
                spend: np.ndarray | None = None, value: np.ndarray | None = None,
                discount: float = 1.0, strength: np.ndarray | None = None) -> None:
        """Add per-cell counts since the last call (floats allowed: e.g. delay-adjusted trials).

        ``spend``: money spent on those trials (enables value per dollar); ``value``: total value
        of those successes (e.g. revenue); ``discount`` in (0, 1]: first multiply everything
        observed so far by it (forgetting, for markets that drift); ``strength``: per cell, the
        share of its full rate these trials had (e.g. the creative fatigue they were shown at):
        the model then learns rates at full strength, and ``rate_scale`` says what they are
        now (costs and the pooled rate stay per trial)."""
        t = self._vec(trials, "trials")
        s = self._vec(successes, "successes")
        sp = None if spend is None else self._vec(spend, "spend")
        v = None if value is None else self._vec(value, "value")
        st = None if strength is None else self._vec(strength, "strength")
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {discount}")
        if st is not None and self._strong is None:
            self._strong = self.trials.copy()  # what came before counted at full strength
        if discount != 1.0:
            for arr in (self.trials, self.successes, self.spend, self.value):
                arr *= discount
            if self._strong is not None:
                self._strong *= discount
        if self._strong is not None:
            self._strong += t if st is None else t * st
        self.trials += t
        self.successes += s
        if sp is not None:
            self.spend += sp
            self._spend_seen = True
        if v is not None:
            self.value += v
            self._value_seen = True
        self._dirty = True
        self._cost = None

    def forget(self, cells: np.ndarray, keep: float) -> None:
        """Keep only ``keep`` (in [0, 1]) of everything observed so far of the cells in the
        mask ``cells`` -- e.g. when their rate has changed (``LevelChangeDetector``)."""
        mask = np.asarray(cells, dtype=bool)
        if mask.shape != (self.n_cells,):
            raise ValueError(f"cells: need one flag per cell ({self.n_cells}), got shape "
                             f"{mask.shape}")
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"keep must be in [0, 1], got {keep}")
        for arr in (self.trials, self.successes, self.spend, self.value):
            arr[mask] *= keep
        if self._strong is not None:
            self._strong[mask] *= keep
        self._dirty = True
        self._cost = None

    def expected_successes(self, trials: np.ndarray,
                           strength: np.ndarray | None = None) -> np.ndarray:
        """Per cell: the successes (as credited) the posterior mode expects of ``trials`` more
        trials at ``strength`` (default: full strength; see ``observe``)."""
        t = self._vec(trials, "trials")
        if strength is not None:
            t = t * self._vec(strength, "strength")
        self._fit()
        out: np.ndarray = t * sigmoid(self.model.eta())
        return out

    @property
    def rate_scale(self) -> np.ndarray | None:
        """Optional per-cell multiplier of the modelled (full-strength) rate when allocating
        and assessing: the strength the cells' trials have now (see ``observe``)."""
        return self._rate_scale

    @rate_scale.setter
    def rate_scale(self, scale: np.ndarray | None) -> None:
        self._rate_scale = None if scale is None else self._vec(scale, "rate_scale").copy()

    def _capacity(self, capacity: np.ndarray | Sequence[float]) -> np.ndarray:
        """Per-cell upper bounds on spend: >= 0, ``inf`` for none (a NaN or a negative bound is
        a caller's bug, not a cell to defund silently)."""
        try:
            cap = np.asarray(capacity, dtype=float)
        except (TypeError, ValueError):
            raise ValueError("capacity: need one number per cell (inf: no bound)") from None
        if cap.shape != (self.n_cells,):
            raise ValueError(f"capacity: need one value per cell ({self.n_cells}), got shape "
                             f"{cap.shape}")
        if np.isnan(cap).any() or (cap < 0).any():
            raise ValueError("capacity: values must be >= 0 (inf: no bound), with no NaN")
        return cap

    def _vec(self, x: np.ndarray | Sequence[float], name: str) -> np.ndarray:
        a = np.asarray(x, dtype=float)
        if a.shape != (self.n_cells,):
            raise ValueError(f"{name}: need one value per cell ({self.n_cells}), got shape "
                             f"{a.shape}")
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name}: values must be finite and >= 0")
        return a

    def _fit(self) -> None:
        if self._dirty:
            self.model.fit(self.trials if self._strong is None else self._strong,
                           self.successes)
            self._dirty = False

    # --- estimates -----------------------------------------------------------------------------

    def pooled_rate(self) -> float:
        return float((self.successes.sum() + 0.5) / (self.trials.sum() + 1.0))

    def proven(self) -> np.ndarray:
        """Cells past the learning threshold (``learning_successes`` expected successes)."""
        out: np.ndarray = self.trials * self.pooled_rate() >= self.learning_successes
        return out

    def cost_per_trial(self) -> np.ndarray:
        """Money per trial per cell: observed, shrunk towards a log-additive main-effects fit."""
        if self._cost is None:
            self._cost = self._cost_per_trial()
        return self._cost.copy()

    def _cost_per_trial(self) -> np.ndarray:
        n = self.n_cells
        if not self._spend_seen:
            return np.full(n, self.cost_prior)
        ok = (self.trials > 0) & (self.spend > 0)
        if not ok.any():
            return np.full(n, self.cost_prior)
        y = np.zeros(n)
        y[ok] = np.log(self.spend[ok] / self.trials[ok])
        w = np.where(ok, np.minimum(self.trials, 1e6), 0.0)
        X = self._cost_X
        A = (X.T @ sp.diags(w) @ X).toarray()
        # a light ridge on the level effects only: the intercept takes the mean log cost, so a
        # level without data sits at the average of the others (a ridge on the intercept too
        # would split the mean across the dimensions and make unseen levels look far cheaper)
        lam = 1e-3 * max(float(w.sum()), 1.0) / max(n, 1)
        A[np.diag_indices_from(A)] += lam
        A[0, 0] += 1e-9 - lam
        theta = np.linalg.solve(A, X.T @ (w * y))
        prior = np.exp(X @ theta)
        k0 = self.cost_prior_trials
        out: np.ndarray = (self.spend + k0 * prior) / (self.trials + k0)
        return out

    def _value_per_success(self) -> float:
        if self.value_per_success is not None:
            return float(self.value_per_success)
        if self._value_seen and self.successes.sum() > 0:
            return float(self.value.sum() / self.successes.sum())
        return 1.0

    def posterior(self, level: float = 0.9, *, cells: np.ndarray | None = None
                  ) -> CellPosterior:
        """Per-cell posterior means and central credible intervals of the rate, and value per
        money unit, for evidence; of the cells at positions ``cells`` only (arrays aligned with
        ``cells``), when given — much cheaper than all of them at 10,000 cells."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        self._fit()
        m = self.model
        sub = None if cells is None else np.asarray(cells, dtype=np.int64)
        idx = slice(None) if sub is None else sub
        eta = m.eta()[idx]
        sd = m.eta_sd(sub)
        z = float(ndtri(0.5 + level / 2))
        mean = sigmoid(eta) + 0.5 * sigmoid(eta) * (1 - sigmoid(eta)) * (
            1 - 2 * sigmoid(eta)) * sd**2
        mean = np.clip(mean, 0.0, 1.0)
        cost = self.cost_per_trial()[idx]
        own = np.clip(self._own(mean, idx), 0.0, 1.0)
        return CellPosterior(self.trials[idx].copy(), self.successes[idx].copy(), mean,
                             sigmoid(eta - z * sd), sigmoid(eta + z * sd), cost,
                             own * self._value_per_success() / cost, self.proven()[idx],
                             level)

    def effects(self) -> dict[str, float]:
        """Posterior-mode shared effects (logit scale), by name (see ``effect_name``)."""
        self._fit()
        return self.model.effects()

    # --- decisions: risk and expected impact of a change ---------------------------------------

    def assess(self, proposed: np.ndarray, current: np.ndarray,
               capacity: np.ndarray | None = None, *, draws: int = 256,
               level: float = 0.9) -> ChangeAssessment:
        """How a change of allocation from ``current`` to ``proposed`` (per-cell spend over the
        same period, e.g. daily budgets) is likely to turn out, from ``draws`` joint posterior
        draws of every cell's rate (the Laplace posterior, with its correlations: cells that
        share levels move together).

        In each draw an allocation's value is ``sum_i min(x_i, capacity_i) x rate_i x value per
        success / cost per trial_i`` (objective units -- successes, or value with
        ``value_per_success`` / observed values -- over the allocations' period); money above a
        cell's capacity buys nothing. Cost per trial is taken at its estimate. Returns the share
        of draws in which ``proposed`` is worth strictly less than ``current`` (``risk``), the
        mean difference (``expected_gain``, proposed - current) and its central interval at
        ``level``. Draws come from a generator of their own: assessing never changes what
        ``allocate`` returns."""
        x1 = self._vec(proposed, "proposed")
        x0 = self._vec(current, "current")
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        if capacity is not None:
            cap = self._capacity(capacity)
            x1, x0 = np.minimum(x1, cap), np.minimum(x0, cap)
        delta = x1 - x0
        live = np.flatnonzero(delta != 0)
        if live.size == 0:
            return ChangeAssessment(0.0, 0.0, 0.0, 0.0, draws)
        self._fit()
        eta = self.model.draw_eta(self._risk_rng, draws)[:, live]
        per_money = self._own_rate(eta, live) * (self._value_per_success()
                                                 / self.cost_per_trial()[live])[None, :]
        gain = per_money @ delta[live]
        lo, hi = np.quantile(gain, [0.5 - level / 2, 0.5 + level / 2])
        return ChangeAssessment(float(np.mean(gain < 0)), float(gain.mean()), float(lo),
                                float(hi), draws)

    def risk_of(self, proposed: np.ndarray, current: np.ndarray,
                capacity: np.ndarray | None = None, *, draws: int = 256) -> float:
        """Posterior probability that ``proposed`` yields less objective value than ``current``
        (see ``assess``)."""
        return self.assess(proposed, current, capacity, draws=draws).risk

    def expected_gain(self, proposed: np.ndarray, current: np.ndarray,
                      capacity: np.ndarray | None = None, *, draws: int = 256) -> float:
        """Posterior mean of (value of ``proposed`` - value of ``current``), in objective units
        over the allocations' period, e.g. per day for daily budgets (see ``assess``)."""
        return self.assess(proposed, current, capacity, draws=draws).expected_gain

    # --- allocation ----------------------------------------------------------------------------

    @property
    def previous(self) -> np.ndarray | None:
        """The last allocation returned (the reference for ``max_cut_per_cycle``)."""
        return None if self._previous is None else self._previous.copy()

    def begin_day(self, reference: np.ndarray | None = None) -> None:
        """Start a new day for ``max_cut_per_day``: cuts are measured from ``reference``
        (default: the last allocation)."""
        ref = self._previous if reference is None else self._vec(reference, "reference")
        self._day_start = None if ref is None else ref.copy()

    def cut_floor(self, previous: np.ndarray | None = None) -> np.ndarray | None:
        """Per cell, the least the cut limits let it keep (from ``previous``, default the last
        allocation, and the day's reference); ``None`` without limits. For callers that round:
        ``allocate`` keeps these amounts exactly, so rounding them down would cut too much."""
        prev = self._previous if previous is None else self._vec(previous, "previous")
        out: np.ndarray | None = None
        if prev is not None and self.max_cut_per_cycle is not None:
            out = prev * (1.0 - self.max_cut_per_cycle)
        if self._day_start is not None and self.max_cut_per_day is not None:
            day = self._day_start * (1.0 - self.max_cut_per_day)
            out = day if out is None else np.maximum(out, day)
        return out

    def allocate(self, budget: float, capacity: np.ndarray | None = None, *,
                 lower: np.ndarray | None = None,
                 previous: np.ndarray | None = None) -> np.ndarray:
        """Per-cell spend (float array, >= 0, summing to at most ``budget``).

        ``capacity``: optional per-cell upper bounds (``inf`` = unbounded; the cut limits and
        ``lower`` hold above them); ``lower``: optional
        per-cell lower bounds (committed money); ``previous``: the allocation in force, for the
        cut limits (default: the last one this allocator returned)."""
        try:
            B = float(budget)
        except (TypeError, ValueError):
            raise ValueError(f"budget must be a number, got {budget!r}") from None
        if not math.isfinite(B) or B < 0:
            raise ValueError(f"budget must be finite and >= 0, got {budget}")
        n = self.n_cells
        cap = np.full(n, np.inf) if capacity is None else self._capacity(capacity)
        lo = np.zeros(n) if lower is None else self._vec(lower, "lower")
        cap = np.maximum(cap, lo)
        total_lo = float(lo.sum())
        if total_lo >= B:
            out = lo * (B / total_lo) if total_lo > 0 else lo.copy()
            return self._finish(out, B)
        chosen: np.ndarray | None = None
        if self._groups is not None and self.one_cell_per_group:
            chosen = self._choose_cells(B - total_lo, np.minimum(cap - lo, B - total_lo))
        base = lo.copy()
        prev = self._previous if previous is None else self._vec(previous, "previous")
        # the cut limits are the DSP's rules (DV360 refuses a larger cut): they hold even where
        # the capacity estimate says less can be bought (that money then stays unspent)
        if prev is not None and self.max_cut_per_cycle is not None:
            base = np.maximum(base, prev * (1.0 - self.max_cut_per_cycle))
        if self._day_start is not None and self.max_cut_per_day is not None:
            base = np.maximum(base, self._day_start * (1.0 - self.max_cut_per_day))
        unproven = ~self.proven()
        if chosen is not None:
            assert self._groups is not None
            # the floor is per group, for the cell that buys the group's inventory
            g_trials = np.bincount(self._groups, self.trials)[self._groups]
            unproven = chosen & (g_trials * self.pooled_rate() < self.learning_successes)
        if self.explore_fraction > 0 and unproven.any():
            floor = self.explore_fraction * B / int(unproven.sum())
            base = np.where(unproven, np.maximum(base, np.minimum(floor, cap)), base)
        extra = base - lo
        room_for_extra = B - total_lo
        if extra.sum() > room_for_extra:
            base = lo + extra * (room_for_extra / extra.sum())
        rest = B - float(base.sum())
        room = np.clip(cap - base, 0.0, max(rest, 0.0))
        if chosen is not None:
            room[~chosen] = 0.0
        fill = np.zeros(n)
        if rest > 0 and room.sum() > 0:
            fill = self._thompson_fill(rest, room)
        return self._finish(base + fill, B)

    def _finish(self, out: np.ndarray, budget: float) -> np.ndarray:
        out = np.maximum(out, 0.0)
        s = float(out.sum())
        if s > budget:  # float round-off only
            out *= budget / s * (1 - 1e-12)
        self._previous = out.copy()
        return out

    def _draw_vpd(self, live: np.ndarray) -> np.ndarray:
        """Posterior draws of value per money unit of cells ``live``, shape (draws, live)."""
        self._fit()
        eta = self.model.draw_eta(self._rng, self.draws)[:, live]
        if self.exploration_scale != 1.0:
            mode = self.model.eta()[live]
            eta = mode[None, :] + self.exploration_scale * (eta - mode[None, :])
        out: np.ndarray = self._own_rate(eta, live) / self.cost_per_trial()[live][None, :]
        return out

    def _own_rate(self, eta: np.ndarray, live: np.ndarray | slice) -> np.ndarray:
        return self._own(sigmoid(eta), live)

    def _own(self, p: np.ndarray, live: np.ndarray | slice) -> np.ndarray:
        """The rate a cell itself yields now, from (draws of) its credited rate at full
        strength ``p``: times ``rate_scale`` (the strength now), less the spill of last-touch
        credit (``spill``), which follows impressions, not strength."""
        if self._rate_scale is not None:
            p = p * self._rate_scale[live]
        if self.spill > 0:
            q = self.spill
            p = np.maximum(p - q * self.pooled_rate(), 1e-3 * p) / (1.0 - q)
        return p

    def _choose_cells(self, rest: float, room: np.ndarray) -> np.ndarray:
        """One cell per group (mask): the cell the group's knapsack funds most often over the
        draws (``group_choice="mode"``) or in one random draw (``"sample"``: Thompson sampling
        of the choice itself); a group funded in no draw gets its cell of highest mean value.
        Groups whose cells have no room get none."""
        assert self._groups is not None
        n = self.n_cells
        chosen = np.zeros(n, dtype=bool)
        live = np.flatnonzero(room > 0)
        if live.size == 0 or rest <= 0:
            return chosen
        vpd = self._draw_vpd(live)
        fills = self._group_draw_fills(vpd, live, room[live], rest)  # (draws, live)
        score = fills.sum(axis=0)
        if self.group_choice == "sample":
            d = int(self._rng.integers(fills.shape[0]))
            score = fills[d] * 1e6 + score
        g = self._groups[live]
        # within a group: highest score, then highest mean value per money unit
        order = np.lexsort((-vpd.mean(axis=0), -score, g))
        first = np.r_[True, g[order][1:] != g[order][:-1]]
        chosen[live[order[first]]] = True
        return chosen

    def _group_draw_fills(self, vpd: np.ndarray, live: np.ndarray, r_live: np.ndarray,
                          rest: float) -> np.ndarray:
        """Per-draw fills of cells ``live`` (columns aligned with ``live``) by the grouped
        knapsack (see ``_group_fill``)."""
        assert self._groups is not None
        # cells of one group with the same room differ only in value: per draw only the best
        # of them can be funded, so the knapsack runs on those "keys" (e.g. the creatives of
        # one line item's inventory and bid: 5x fewer columns on a 12,000-cell campaign)
        g = self._groups[live]
        ks = np.lexsort((r_live, g))
        g_s, r_s = g[ks], r_live[ks]
        new_key = np.r_[True, (g_s[1:] != g_s[:-1]) | (r_s[1:] != r_s[:-1])]
        starts = np.flatnonzero(new_key)
        key_of = np.cumsum(new_key) - 1
        v_s = vpd[:, ks]
        vkey = np.maximum.reduceat(v_s, starts, axis=1)
        best = v_s >= vkey[:, key_of]
        cs = np.cumsum(best, axis=1)
        first = best & (cs - (cs - best)[:, starts][:, key_of] == 1)
        fill_key = group_fill(vkey, r_s[starts], g_s[starts], rest)
        out = np.empty((vpd.shape[0], live.size))
        out[:, ks] = first * fill_key[:, key_of]
        return out

    def _thompson_fill(self, rest: float, room: np.ndarray) -> np.ndarray:
        live = np.flatnonzero(room > 0)
        vpd = self._draw_vpd(live)
        r_live = room[live]
        out = np.zeros(self.n_cells)
        if self._groups is not None:
            out[live] = self._group_draw_fills(vpd, live, r_live, rest).mean(axis=0)
            return out
        # Only cells that can be reached in some draw need sorting: the cells whose smallest
        # drawn value is at least T have room for the whole rest, so no draw ever funds a cell
        # whose largest drawn value is below T.
        vmin = vpd.min(axis=0)
        by_min = np.argsort(-vmin)
        covered = np.searchsorted(np.cumsum(r_live[by_min]), rest)
        if covered < live.size:
            cand = np.flatnonzero(vpd.max(axis=0) >= vmin[by_min[covered]])
            live, vpd, r_live = live[cand], vpd[:, cand], r_live[cand]
        out[live] = greedy_fill(vpd, np.broadcast_to(r_live, vpd.shape), rest).mean(axis=0)
        return out


__all__ = ["DV360_MAX_DAILY_CUT", "INTERCEPT", "Allocator", "CellPosterior", "ChangeAssessment",
           "Prior", "effect_name"]
