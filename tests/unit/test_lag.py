"""The conversion lag measured from aggregate counts (``campaignd.domain.lag``)."""

from __future__ import annotations

import numpy as np
import pytest

from campaignd.domain.lag import LagEstimator

STEP_H = 1 / 6  # the policy's 10-minute re-plans


def _arrivals(true_hours: float, expected: np.ndarray, seed: int) -> np.ndarray:
    """Poisson conversions of each step's impressions, arriving an exponential lag later."""
    rng = np.random.default_rng(seed)
    steps = expected.size
    out = np.zeros(steps)
    for i in range(steps):
        n = rng.poisson(expected[i])
        t = (i + rng.uniform(0, 1, n)) * STEP_H + rng.exponential(true_hours, n)
        idx = (t / STEP_H).astype(int)
        np.add.at(out, idx[idx < steps], 1)
    return out


def _prime_time(days: int, per_day: float) -> np.ndarray:
    """Expected conversions per step with a prime-time peak, ``per_day`` a day on average."""
    hours = np.arange(int(days * 24 / STEP_H)) * STEP_H
    shape = 1 + 3 * np.maximum(0, np.sin(2 * np.pi * (hours % 24) / 24)) ** 3
    out: np.ndarray = shape / shape.mean() * per_day * STEP_H / 24
    return out


@pytest.mark.parametrize("true_hours", [1.0, 3.0, 4.0, 8.0])
def test_the_lag_is_found_from_delivery_that_varies_over_the_day(true_hours: float) -> None:
    expected = _prime_time(4, 2_000)
    arrived = _arrivals(true_hours, expected, seed=int(true_hours * 10))
    est = LagEstimator(3.0)
    for x, c in zip(expected, arrived, strict=True):
        est.update(0.7 * x, c, STEP_H)  # the model's rates 30 % off: only the shape counts
    assert est.hours == pytest.approx(true_hours, rel=0.25)
    # the posterior is concentrated: the candidates more than 2x away are all but excluded
    post = est.posterior()
    far = (est.grid < true_hours / 2) | (est.grid > true_hours * 2)
    assert post[far].sum() < 0.01


def test_a_thin_day_moves_the_set_lag_less_than_a_busy_one() -> None:
    # the set lag is the prior: 100 conversions that say 6 h move it part of the way, 20,000
    # move it all the way
    moved = []
    for per_day in (100, 20_000):
        expected = _prime_time(1, per_day)
        arrived = _arrivals(6.0, expected, seed=4)
        est = LagEstimator(3.0, min_conversions=0)
        for x, c in zip(expected, arrived, strict=True):
            est.update(x, c, STEP_H)
        moved.append(est.hours)
    assert 3.0 <= moved[0] < 5.0
    assert moved[1] == pytest.approx(6.0, rel=0.15)


def test_the_prior_holds_until_enough_conversions_arrived() -> None:
    est = LagEstimator(3.0, min_conversions=100)
    expected = _prime_time(1, 300)
    arrived = _arrivals(8.0, expected, seed=3)
    seen = 0.0
    for x, c in zip(expected, arrived, strict=True):
        est.update(x, c, STEP_H)
        seen += c
        if seen < 100:
            assert est.hours == 3.0
    assert seen >= 100 and est.hours != 3.0


def test_no_conversions_keep_the_prior() -> None:
    est = LagEstimator(2.5, min_conversions=0)
    for _ in range(100):
        est.update(1.0, 0.0, STEP_H)
    assert est.hours == 2.5
    est.update(1.0, 0.0, 0.0)  # an empty interval changes nothing
    assert est.seen == 0.0
    # a day of counts in one interval (a restart catching up) is no evidence of timing
    est.update(500.0, 450.0, 30.0)
    assert est.hours == 2.5 and est.seen == 0.0


def test_a_lag_that_moves_is_followed() -> None:
    expected = _prime_time(12, 2_000)
    half = expected.size // 2
    arrived = np.concatenate([_arrivals(2.0, expected[:half], seed=5),
                              _arrivals(6.0, expected[half:], seed=6)])
    est = LagEstimator(3.0, half_life_hours=48)
    for i, (x, c) in enumerate(zip(expected, arrived, strict=True)):
        est.update(x, c, STEP_H)
        if i == half - 1:
            assert est.hours == pytest.approx(2.0, rel=0.25)
    assert est.hours == pytest.approx(6.0, rel=0.3)


@pytest.mark.parametrize(("kwargs", "field"), [({"prior_hours": 0}, "prior_hours"),
                                               ({"prior_hours": 3, "grid": [2.0]}, "grid"),
                                               ({"prior_hours": 3, "half_life_hours": 0},
                                                "half_life_hours"),
                                               ({"prior_hours": 3, "prior_sd": 0}, "prior_sd")])
def test_bad_settings_are_refused_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LagEstimator(**kwargs)  # type: ignore[arg-type]
