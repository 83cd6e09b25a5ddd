"""Delivery capacity per supply key: how much money a line item could spend in a day.

What a line item can buy depends on its inventory (audience, daypart, platform...) and its bid,
not on its creative, so capacity is kept per *supply key* (e.g. audience x daypart x platform x
bid strategy), on the log scale, as a Gaussian belief per key:

- **Measurements** (``measure``): when a line item spent less than its pacing allowed, supply held
  it back, so its spend per unit of supply (``spend / dF``, ``dF`` = the share of a day's supply
  that went by) is a noisy measurement of the key's daily capacity. Its log variance is
  ``1 / impressions`` (counting noise) plus ``shape_var`` (the supply shape behind ``dF`` is
  only estimated); it updates the key's own belief (a Kalman step).
- **Censored observations** (``kept_pace``): a line item that spent all its pacing allowed while
  funded up to the capacity we believed may buy more: its key's estimate is raised by
  ``growth`` (probing upwards; at most once per ``probe_hours``, cancelled by the next
  measurement) and the rate it reached is a lower bound.
- **Sharing** (``estimate``): keys without measurements borrow from those with some through a
  log-additive model over the keys' levels -- main effects and pairwise interactions, ridge
  (Gaussian) priors -- fitted on the measured keys, weighted by their precision (e.g. the
  bid's effect on volume learnt on one platform informs the same bid on the others). A key's
  estimate combines its own belief with that prediction; keys never measured get the
  prediction plus ``optimism`` prediction standard deviations (try them: an unknown key may
  buy a lot).
- **Forgetting** (``age``): own beliefs lose precision with time (supply drifts).

Pure: numpy and scipy only, no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np
import scipy.linalg as sla


class CapacityModel:
    """Daily capacity (money per day) per supply key (see the module docstring).

    ``keys``: one mapping dimension -> level per key (e.g. ``{"audience": "a1", "bid": "b2"}``);
    ``prior``: the capacity believed before any data (money per day), with log standard
    deviation ``prior_sd``; ``main_sd`` / ``interaction_sd``: prior spread (log scale) of the
    shared effects; ``residual_sd``: how far a key may sit from the additive model.
    """

    def __init__(self, keys: Sequence[Mapping[str, str]], prior: float, *,
                 prior_sd: float = 1.0, main_sd: float = 1.0, interaction_sd: float = 0.5,
                 residual_sd: float = 0.3, shape_var: float = 0.04, growth: float = 1.5,
                 optimism: float = 0.5, forget_per_day: float = 0.002,
                 probe_hours: float = 1.0, max_boost: float = 4.0,
                 probe_var: float = 0.02) -> None:
        if not prior > 0:
            raise ValueError(f"prior must be positive, got {prior}")
        if not growth >= 1.0:
            raise ValueError(f"growth must be >= 1, got {growth}")
        nk = len(keys)
        self.n_keys = nk
        dims: dict[str, None] = {}
        for k in keys:
            for d in k:
                dims.setdefault(d, None)
        cols: list[np.ndarray] = [np.zeros(nk, dtype=np.int64)]
        prec: list[float] = [1.0 / prior_sd**2]
        level_ids: list[np.ndarray] = []
        offset = 1
        for d in dims:
            ids: dict[str, int] = {}
            idx = np.array([ids.setdefault(str(k.get(d, "")), len(ids)) for k in keys],
                           dtype=np.int64)
            level_ids.append(idx)
            cols.append(idx + offset)
            prec.extend([1.0 / main_sd**2] * len(ids))
            offset += len(ids)
        for a, b in combinations(range(len(level_ids)), 2):
            raw = level_ids[a] * (int(level_ids[b].max(initial=0)) + 1) + level_ids[b]
            _, inv = np.unique(raw, return_inverse=True)
            m = int(inv.max(initial=-1)) + 1
            cols.append(inv.astype(np.int64) + offset)
            prec.extend([1.0 / interaction_sd**2] * m)
            offset += m
        self._cols = np.stack(cols, axis=1)
        self._p = offset
        self._prior_prec = np.array(prec)
        self._prior_mean = np.zeros(offset)
        self._prior_mean[0] = math.log(prior)
        self.residual_var = residual_sd**2
        self.shape_var = shape_var
        self.growth = growth
        self.optimism = optimism
        self.forget_per_day = forget_per_day
        self.probe_hours = probe_hours
        self.max_boost = max_boost
        self.probe_var = probe_var
        self.log_cap = np.full(nk, math.log(prior))
        """Own belief per key (log money per day), meaningful where ``precision > 0``."""
        self.precision = np.zeros(nk)
        self.lower = np.full(nk, -np.inf)
        """Log of a capacity each key is known to reach."""
        self.boost = np.zeros(nk)
        """Log raise from probes since the key's last measurement."""
        self._last_probe = np.full(nk, -np.inf)
        self._estimate: np.ndarray | None = None

    # --- data ----------------------------------------------------------------------------------

    def measure(self, keys: np.ndarray, daily_rate: np.ndarray,
                impressions: np.ndarray) -> None:
        """Supply-limited keys spent at ``daily_rate`` (money per day's worth of supply) over
        ``impressions`` impressions."""
        keys = np.asarray(keys, dtype=np.int64)
        ok = (np.asarray(daily_rate) > 0) & (np.asarray(impressions) > 0)
        keys, rate, imps = keys[ok], np.asarray(daily_rate)[ok], np.asarray(impressions)[ok]
        if keys.size == 0:
            return
        y = np.log(rate)
        r_prec = 1.0 / (1.0 / imps + self.shape_var)
        prec0 = self.precision[keys]
        mean0 = np.where(prec0 > 0, self.log_cap[keys], y)
        post = prec0 + r_prec
        self.log_cap[keys] = (prec0 * mean0 + r_prec * y) / post
        self.precision[keys] = post
        # what it reached is known; an older, higher bound was a misreading; no more probing
        self.lower[keys] = np.minimum(self.lower[keys], y)
        self.boost[keys] = 0.0
        self._estimate = None

    def kept_pace(self, keys: np.ndarray, daily_rate: np.ndarray, at: float) -> None:
        """Keys funded up to their estimate spent all their pacing allowed (at ``daily_rate``)
        at time ``at`` (hours, any origin, never decreasing): raise their estimates by
        ``growth`` -- at most once per ``probe_hours`` per key, so that a probe's effect is seen
        before the next, and at most to ``max_boost`` times the belief; a measurement cancels
        the raise; keys whose belief has a log variance below ``probe_var`` are not probed (a
        line item funded at exactly its capacity keeps pace too) -- and keep ``daily_rate`` as a
        lower bound."""
        keys = np.asarray(keys, dtype=np.int64)
        rate = np.asarray(daily_rate, dtype=float)
        # a key measured well enough keeps its measurement (a line item funded at its true
        # capacity keeps pace too); the others at most once per probe_hours
        due = (at - self._last_probe[keys] >= self.probe_hours) & (
            self.precision[keys] < 1.0 / self.probe_var)
        keys, rate = keys[due], rate[due]
        if keys.size == 0:
            return
        self.boost[keys] = np.minimum(self.boost[keys] + math.log(self.growth),
                                      math.log(self.max_boost))
        self._last_probe[keys] = at
        ok = rate > 0
        self.lower[keys[ok]] = np.maximum(self.lower[keys[ok]], np.log(rate[ok]))
        self._estimate = None

    def reached(self, keys: np.ndarray, daily_rate: np.ndarray) -> None:
        """Keys spent at ``daily_rate`` without being supply-limited: a lower bound (for keys
        not measured yet)."""
        keys = np.asarray(keys, dtype=np.int64)
        rate = np.asarray(daily_rate, dtype=float)
        ok = (rate > 0) & (self.precision[keys] == 0)
        if ok.any():
            self.lower[keys[ok]] = np.maximum(self.lower[keys[ok]], np.log(rate[ok]))
            self._estimate = None

    def age(self, days: float) -> None:
        """Let ``days`` go by: own beliefs lose precision (capacity drifts)."""
        if days > 0 and self.forget_per_day > 0:
            var = np.where(self.precision > 0, 1.0 / np.maximum(self.precision, 1e-300), np.inf)
            var = var + self.forget_per_day * days
            self.precision = np.where(np.isfinite(var), 1.0 / var, 0.0)
            self._estimate = None

    # --- estimates -----------------------------------------------------------------------------

    def estimate(self) -> np.ndarray:
        """Capacity per key (money per day)."""
        if self._estimate is None:
            self._estimate = np.exp(self._log_estimate())
        return self._estimate.copy()

    def _log_estimate(self) -> np.ndarray:
        nk = self.n_keys
        cols = self._cols
        p = self._p
        meas = self.precision > 0
        # shared effects fitted on the measured keys (Bayesian ridge): y = X theta + e,
        # var(e) = 1 / precision + residual_var
        w = np.where(meas, 1.0 / (1.0 / np.maximum(self.precision, 1e-300)
                                  + self.residual_var), 0.0)
        A = np.diag(self._prior_prec.copy())
        k = cols.shape[1]
        ia, ib = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        np.add.at(A, (cols[:, ia.ravel()], cols[:, ib.ravel()]),
                  np.repeat(w, k * k).reshape(nk, k * k))
        rhs = self._prior_prec * self._prior_mean
        np.add.at(rhs, cols, (w * np.where(meas, self.log_cap, 0.0))[:, None])
        Ainv = sla.cho_solve(sla.cho_factor(A, lower=True, check_finite=False), np.eye(p),
                             check_finite=False)
        theta = Ainv @ rhs
        pred = theta[cols].sum(axis=1)
        # prediction variance x A^-1 x' (+ residual)
        pvar = Ainv[cols[:, ia.ravel()], cols[:, ib.ravel()]].sum(axis=1) + self.residual_var
        # a key's own belief combined with the prediction
        own_p = self.precision
        comb = (pred / pvar + own_p * np.where(meas, self.log_cap, 0.0)) / (1.0 / pvar + own_p)
        out = np.where(meas, comb, pred + self.optimism * np.sqrt(pvar)) + self.boost
        out = np.maximum(out, self.lower)
        result: np.ndarray = out
        return result


__all__ = ["CapacityModel"]
