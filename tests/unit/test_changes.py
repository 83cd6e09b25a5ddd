"""Per-level change detection (two-sided Poisson CUSUM on observed vs expected successes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from campaignd.domain.changes import LevelChangeDetector


def _cells() -> list[dict[str, str]]:
    return [{"platform": p, "creative": c, "audience": a}
            for p, c, a in itertools.product(["p0", "p1", "p2"], ["c0", "c1"], ["a0", "a1"])]


def test_a_steady_market_rarely_raises_an_alarm() -> None:
    cells = _cells()
    det = LevelChangeDetector(cells, up=2.0, down=0.5, threshold=8.0)
    rng = np.random.default_rng(1)
    expected = np.full(len(cells), 0.5)  # 6 expected successes per update over all cells
    # 2,000 updates: two weeks of 10-minute re-plans; measured 1.15 false alarms per 1,000
    # updates at this rate over 20,000 (0.05 at a threshold of 10)
    alarms = sum(len(det.update(rng.poisson(expected).astype(float), expected))
                 for _ in range(2_000))
    assert alarms <= 4
    # observed exactly as expected: the sums only fall
    assert all(det.update(expected, expected) == [] for _ in range(100))


@pytest.mark.parametrize(("factor", "level"), [(0.3, ("platform", "p1")),
                                               (2.5, ("creative", "c1"))])
def test_a_level_that_moves_is_named_within_hours(factor: float,
                                                  level: tuple[str, str]) -> None:
    cells = _cells()
    det = LevelChangeDetector(cells, up=2.0, down=0.5, threshold=8.0)
    moved = det.cells_of([level])
    assert moved.sum() == sum(1 for c in cells if c[level[0]] == level[1])
    rng = np.random.default_rng(2)
    expected = np.full(len(cells), 0.5)
    truth = np.where(moved, expected * factor, expected)
    for _ in range(40):  # under 7 hours of 10-minute re-plans
        found = det.update(rng.poisson(truth).astype(float), expected)
        if found:
            # the moved level, not one that only shares cells with it
            assert found == [level]
            break
    else:
        pytest.fail("the change was not detected")
    # every sum started over
    assert det._s_up.max() == det._s_down.max() == 0.0


def test_bad_arguments_name_themselves() -> None:
    cells = _cells()
    for kw, name in (({"up": 1.0}, "up"), ({"down": 1.2}, "down"),
                     ({"threshold": 0.0}, "threshold")):
        with pytest.raises(ValueError, match=name):
            LevelChangeDetector(cells, **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cells"):
        LevelChangeDetector([])
    det = LevelChangeDetector(cells)
    with pytest.raises(ValueError, match="one value per cell"):
        det.update(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        det.update(np.full(len(cells), np.nan), np.zeros(len(cells)))
