"""The conversion lag, measured from the counts: how long after an impression do its conversions
arrive?

A conversion is reported when it happens, hours after the impression it is credited to. The
allocator counts an impression as a trial only as its conversions have had time to arrive (an
exponential lag of mean ``d`` hours), and the change detector compares the conversions that
arrived with those the model expected by now -- both need ``d``. A wrong ``d`` makes every burst
of delivery look like a drop and then a rise in conversions (measured on large.toml: the policy
assumed 3 h against the market's 4 h, and the detector raised 28 false alarms in 3 days).

``LagEstimator`` measures ``d`` from what the policy sees anyway: per update, the conversions
the new impressions will eventually bring (the model's rates x impressions, summed over the
campaign) and the conversions that arrived. For every candidate ``d`` on a grid it keeps the
pending pool of not-yet-arrived conversions, so it predicts the arrivals of each interval as
``k x m_d`` with the scale ``k`` free (the model's rates may be off by a common factor; the
shape of the arrivals over time is what tells the lags apart). Poisson log-likelihood with ``k``
at its maximum::

    LL(d) = C log(C / M_d) + sum(c log m_d) - C,   C = sum(c), M_d = sum(m_d)

discounted with a half-life so that it follows a lag that moves. The prior is the lag set for
the campaign: normal on ``log d`` around it with ``prior_sd`` (0.4: the setting is believed to
within a factor of 1.5 or so), so a few hundred conversions of a thin first day do not move it
far, and the thousands a day of a large campaign do. The estimate is the posterior's mean of
``log d``, used once ``min_conversions`` conversions have been seen; before that, the prior
value. Delivery that varies over the day
(prime time) is what identifies the lag: a flat delivery rate makes every ``d`` fit equally.

Pure: numpy, no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_GRID = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 12.0, 24.0)
"""Candidate lags, hours."""


class LagEstimator:
    """Exponential conversion lag (mean hours) from aggregate counts (module docstring)."""

    def __init__(self, prior_hours: float, *, grid: Sequence[float] = DEFAULT_GRID,
                 half_life_hours: float = 72.0, min_conversions: float = 100.0,
                 prior_sd: float = 0.4, max_interval_hours: float = 6.0) -> None:
        if not prior_hours > 0:
            raise ValueError(f"prior_hours must be positive, got {prior_hours!r}")
        g = np.asarray(sorted(float(x) for x in grid))
        if g.size < 2 or not (g > 0).all():
            raise ValueError("grid: need at least two positive candidate lags")
        if not half_life_hours > 0:
            raise ValueError(f"half_life_hours must be positive, got {half_life_hours!r}")
        if not prior_sd > 0:
            raise ValueError(f"prior_sd must be positive, got {prior_sd!r}")
        self.prior_hours = float(prior_hours)
        self._log_prior = -0.5 * ((np.log(g) - math.log(prior_hours)) / prior_sd) ** 2
        self.grid = g
        self.half_life_hours = float(half_life_hours)
        self.min_conversions = float(min_conversions)
        self.max_interval_hours = float(max_interval_hours)
        self._pending = np.zeros(g.size)
        self._c = 0.0  # discounted conversions that arrived
        self._m = np.zeros(g.size)  # discounted predicted arrivals per candidate
        self._clogm = np.zeros(g.size)  # discounted sum of c log m per candidate
        self.seen = 0.0
        """Conversions seen so far (undiscounted)."""

    def update(self, expected: float, arrived: float, hours: float) -> None:
        """One interval of ``hours``: ``expected`` = the conversions the interval's new
        impressions will bring in the end (spread evenly over the interval), ``arrived`` = the
        conversions reported in it. Intervals longer than ``max_interval_hours`` only move the
        pending pools."""
        if not hours > 0:
            return
        x = max(float(expected), 0.0)
        c = max(float(arrived), 0.0)
        g = self.grid
        e = np.exp(-hours / g)
        new_mature = 1.0 - g / hours * (1.0 - e)  # share of the interval's own that arrived
        m = self._pending * (1.0 - e) + x * new_mature
        self._pending = self._pending * e + x * (1.0 - new_mature)
        if hours > self.max_interval_hours:
            # a long interval (a restart catching up on a day of counts) keeps the pools right
            # but says little about timing: delivery within it is not known to be even
            return
        disc = 0.5 ** (hours / self.half_life_hours)
        self._c = self._c * disc + c
        self._m = self._m * disc + m
        if c > 0:
            self._clogm = self._clogm * disc + c * np.log(np.maximum(m, 1e-12))
        else:
            self._clogm = self._clogm * disc
        self.seen += c

    def log_likelihood(self) -> np.ndarray:
        """Per candidate lag: the (discounted) log-likelihood of the arrivals, scale at its
        maximum."""
        c = self._c
        if c <= 0:
            return np.zeros(self.grid.size)
        m = np.maximum(self._m, 1e-12)
        out: np.ndarray = c * np.log(c / m) + self._clogm - c
        return out

    def posterior(self) -> np.ndarray:
        """Per candidate lag: its posterior probability."""
        ll = self.log_likelihood() + self._log_prior
        w = np.exp(ll - ll.max())
        out: np.ndarray = w / w.sum()
        return out

    @property
    def hours(self) -> float:
        """The lag to use: the posterior mean of log lag once ``min_conversions`` have been
        seen (and some still count after discounting), else the prior."""
        if self.seen < self.min_conversions or self._c <= 0:
            return self.prior_hours
        return float(math.exp(float(self.posterior() @ np.log(self.grid))))


__all__ = ["DEFAULT_GRID", "LagEstimator"]
