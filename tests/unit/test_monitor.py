"""Performance monitor: posterior flags need evidence; the raw rule flags noise."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from campaignd.agents.monitor import PerformanceMonitor, cell_metrics
from campaignd.domain.campaign import atomize
from campaignd.domain.cells import METRIC_INDEX, CellTable

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def table_with(seed_spec, imps: np.ndarray, convs: np.ndarray) -> CellTable:  # type: ignore[no-untyped-def]
    t = CellTable(seed_spec.id, atomize(seed_spec))
    t.counts["impressions"][:] = imps
    t.counts["conversions"][:] = convs
    t.counts["spend_micros"][:] = imps * 25_000
    return t


def test_flags_only_a_clearly_bad_cell(seed_spec) -> None:  # type: ignore[no-untyped-def]
    n = 432
    rng = np.random.default_rng(0)
    imps = np.full(n, 20_000)
    convs = rng.binomial(20_000, 0.004, n)
    convs[5] = 10  # 0.05%: clearly below half the pooled 0.4%
    t = table_with(seed_spec, imps, convs)
    recs = PerformanceMonitor(metric="cvr").run({seed_spec.id: t.snapshot()}, NOW)
    flagged = {r.target for r in recs}
    assert t.cell_ids[5] in flagged
    assert len(flagged) <= 3  # noise is not flagged
    r = next(r for r in recs if r.target == t.cell_ids[5])
    assert r.kind == "flag_underperformer" and r.evidence["p_below_threshold"] > 0.95


def test_raw_rule_flags_noise_that_the_posterior_does_not(seed_spec) -> None:  # type: ignore[no-untyped-def]
    n = 432
    rng = np.random.default_rng(1)
    imps = np.full(n, 300)  # sparse: about one conversion per cell
    convs = rng.binomial(300, 0.003, n)
    t = table_with(seed_spec, imps, convs)
    snaps = {seed_spec.id: t.snapshot()}
    raw = PerformanceMonitor(metric="cvr", rule="raw", min_trials=100,
                             window_s="totals").run(snaps, NOW)
    post = PerformanceMonitor(metric="cvr", min_trials=100).run(snaps, NOW)
    # Every cell has the same true rate: the raw rule flags the unlucky ones.
    assert len(raw) > 50
    assert len(post) == 0


def test_metrics_are_derived_per_cell(seed_spec) -> None:  # type: ignore[no-untyped-def]
    t = table_with(seed_spec, np.full(432, 1000), np.full(432, 2))
    t.counts["conversion_value_micros"][:] = 90_000_000
    m = cell_metrics(t.snapshot())
    assert m["cvr"][0] == 0.002
    assert m["cpa_micros"][0] == 12_500_000
    assert m["roas"][0] == 90_000_000 / 25_000_000


def test_metrics_over_windows_and_the_raw_rule_uses_the_last_30_seconds(seed_spec) -> None:  # type: ignore[no-untyped-def]
    cells = atomize(seed_spec)
    t = CellTable(seed_spec.id, cells)
    at = int(NOW.timestamp())
    n = len(cells)
    rows = np.zeros((12, n), dtype=np.int64)
    rows[0] = 1000  # impressions
    rows[9] = 4  # conversions: 0.4 % everywhere ...
    rows[11] = 25_000_000
    t.apply(np.arange(n), rows, at - 7200)  # two hours ago
    recent = np.zeros((12, n), dtype=np.int64)
    recent[0] = 50
    recent[9, 1:] = 1  # ... and in the last 30 s every cell but the first converted once
    t.apply(np.arange(n), recent, at - 5)
    snap = t.snapshot(at_s=at)
    w30 = cell_metrics(snap, 30)
    assert w30["cvr"][0] == 0 and w30["cvr"][1] == 1 / 50
    raw = PerformanceMonitor(metric="cvr", rule="raw", min_trials=10)
    assert raw.window_s == 30
    flagged = {r.target for r in raw.run({seed_spec.id: snap}, NOW)}
    assert flagged == {t.cell_ids[0]}
    post = PerformanceMonitor(metric="cvr", min_trials=10)
    assert post.run({seed_spec.id: snap}, NOW) == []  # over its totals cell 0 is fine
    summary = post.last_metrics[seed_spec.id]
    assert summary["windows"]["totals"]["impressions"] == 1050 * n
    assert summary["windows"]["30"]["impressions"] == 50 * n
    assert summary["windows"]["3600"]["conversions"] == n - 1
    assert summary["windows"]["totals"]["cpa_micros"] is not None
    # money goes out as whole micros, never a float (ratios stay floats)
    for window in summary["windows"].values():
        for key, value in window.items():
            if key.endswith("_micros") and value is not None:
                assert isinstance(value, int), (key, value)


def test_each_campaign_is_watched_on_its_objectives_rate(seed_spec) -> None:  # type: ignore[no-untyped-def]
    n = 432
    rng = np.random.default_rng(1)
    t = CellTable(seed_spec.id, atomize(seed_spec))
    t.counts["impressions"][:] = 20_000
    t.counts["clicks"][:] = rng.binomial(20_000, 0.01, n)
    t.counts["clicks"][7] = 0  # a clicks campaign's dead cell; no conversions anywhere
    t.counts["starts"][:] = 20_000
    t.counts["completes"][:] = rng.binomial(20_000, 0.8, n)
    mon = PerformanceMonitor()
    mon.objectives[seed_spec.id] = "clicks"
    recs = mon.run({seed_spec.id: t.snapshot()}, NOW)
    assert [r.target for r in recs] == [t.cell_ids[7]]
    assert recs[0].evidence["metric"] == "ctr"
    assert mon.last_metrics[seed_spec.id]["metric"] == "ctr"
    # completed views: the completion rate; a campaign of unknown objective: CVR
    mon.objectives[seed_spec.id] = "completed_views"
    assert mon.metric_for(seed_spec.id) == "completion"
    assert mon.run({seed_spec.id: t.snapshot()}, NOW) == []
    assert PerformanceMonitor().metric_for("unknown") == "cvr"
    assert PerformanceMonitor(metric="ctr").metric_for(seed_spec.id) == "ctr"


def test_the_raw_rule_as_the_daemon_runs_it_judges_any_cell_seen_in_its_30_seconds(
        seed_spec) -> None:  # type: ignore[no-untyped-def]
    """agents.monitor_rule = "raw" builds the monitor with its defaults: the posterior rule's
    200 trials within the 30-second window meant it never flagged anything (a seed-campaign
    cell buys about one impression in 30 seconds) -- no comparison at all."""
    cells = atomize(seed_spec)
    t = CellTable(seed_spec.id, cells)
    at = int(NOW.timestamp())
    n = len(cells)
    recent = np.zeros((12, n), dtype=np.int64)
    recent[0, :40] = 1  # 40 cells bought one impression each in the last 30 s
    recent[METRIC_INDEX["clicks"], :4] = 1  # 4 of them were clicked
    t.apply(np.arange(n), recent, at - 5)
    raw = PerformanceMonitor(metric="ctr", rule="raw")
    flagged = {r.target for r in raw.run({seed_spec.id: t.snapshot(at_s=at)}, NOW)}
    assert flagged == {t.cell_ids[i] for i in range(4, 40)}  # noise, as the seed's rule does
    assert PerformanceMonitor().min_trials == 200
