"""Delivery capacity per supply key: measurements, probes, sharing through the additive model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from campaignd.domain.capacity import CapacityModel


def keys() -> list[dict[str, str]]:
    return [{"g": f"g{g}", "bid": f"b{b}"} for g, b in itertools.product(range(6), range(3))]


def truth() -> np.ndarray:
    # log-additive: inventory size per group x volume per bid
    g = np.array([100.0, 200.0, 50.0, 400.0, 120.0, 80.0])
    b = np.array([0.2, 1.0, 2.5])
    return np.array([g[i] * b[j] for i, j in itertools.product(range(6), range(3))])


def test_measurements_are_believed_and_shared() -> None:
    m = CapacityModel(keys(), prior=100.0, optimism=0.0, main_sd=2.0)
    t = truth()
    # every group measured at one bid (rotating), one group at all three
    measured = [0, 4, 8, 9, 13, 17, 10, 11]
    m.measure(np.array(measured), t[measured], np.full(len(measured), 5_000.0))
    est = m.estimate()
    assert np.allclose(est[measured], t[measured], rtol=0.05)
    # the others come from the additive model: within a factor of 1.6 of the truth
    others = np.setdiff1d(np.arange(18), measured)
    ratio = est[others] / t[others]
    assert np.all((ratio > 1 / 1.6) & (ratio < 1.6)), ratio


def test_probes_raise_estimates_until_measured() -> None:
    m = CapacityModel(keys(), prior=100.0, growth=1.5)
    before = m.estimate()
    m.kept_pace(np.array([0]), np.array([before[0]]), at=0.0)
    after = m.estimate()
    assert after[0] == pytest.approx(1.5 * before[0], rel=1e-6)
    # at most one probe per hour: the next one waits to see the effect of this one
    m.kept_pace(np.array([0]), np.array([before[0]]), at=0.5)
    assert m.estimate()[0] == pytest.approx(after[0], rel=1e-6)
    for h in range(1, 10):
        m.kept_pace(np.array([0]), np.array([before[0]]), at=float(h))
    assert m.estimate()[0] == pytest.approx(4.0 * before[0], rel=1e-6)  # max_boost
    # a measurement cancels the probes and replaces a higher bound
    m.measure(np.array([0]), np.array([40.0]), np.array([1e5]))
    assert m.estimate()[0] == pytest.approx(40.0, rel=0.1)


def test_forgetting_and_bad_input() -> None:
    m = CapacityModel(keys(), prior=100.0)
    m.measure(np.array([2]), np.array([500.0]), np.array([1e4]))
    p = m.precision[2]
    m.age(10.0)
    assert 0 < m.precision[2] < p
    with pytest.raises(ValueError, match="prior"):
        CapacityModel(keys(), prior=0.0)
    with pytest.raises(ValueError, match="growth"):
        CapacityModel(keys(), prior=1.0, growth=0.5)
