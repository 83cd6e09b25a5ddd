"""Prometheus sees what ``campaignd status`` sees: an alerting rule on ``campaignd_healthy``
fires for the same problems, with gauges that say which one (a failing job, held decisions, a
refused feed)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from campaignd.settings import load_settings


def gauge(text: str, name: str) -> float:
    """The value of the sample line ``name`` (with its labels) in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")


async def test_prometheus_exposes_the_health_and_the_problems_behind_it(
        sql_url: str, tmp_path: Path) -> None:
    from campaignd.daemon import Daemon
    from campaignd.scheduling import JobSpec, RunRecord, Supervisor

    async def noop(now: datetime) -> int:
        return 0

    cfg = tmp_path / "campaignd.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "var"}"\n[database]\nurl = "{sql_url}"\n')
    d = Daemon(load_settings(cfg, environ={}))
    await d._open_stores()
    try:
        d.supervisor = Supervisor([JobSpec("monitor", 30, noop, 5.0),
                                   JobSpec("reallocation", 120, noop, 5.0)])
        d._ready = True
        await d._publish_status()
        text = d.metrics.render().decode()
        st = d.status()
        # no DSP yet: unhealthy, one problem, and nothing else raised
        assert st["problems"] and not st["healthy"]
        assert gauge(text, "campaignd_healthy") == 0
        assert gauge(text, "campaignd_problems") == len(st["problems"]) == 1
        assert gauge(text, 'campaignd_job_failing{job="monitor"}') == 0
        assert gauge(text, "campaignd_decisions_held") == 0

        state = d.supervisor.jobs["monitor"]
        t = d.wall.now()

        async def runs(outcome: str, n: int) -> str:
            """The monitor's next ``n`` runs end in ``outcome``; the metrics then."""
            for _ in range(n):
                state.history.append(RunRecord("monitor", t, t, 0.1, outcome))
                state.judge()
            await d._publish_status()
            return d.metrics.render().decode()

        # the monitor fails three runs in a row: a second problem, and its gauge says which
        text = await runs("error", 3)
        assert gauge(text, "campaignd_problems") == 2
        assert gauge(text, 'campaignd_job_failing{job="monitor"}') == 1
        assert gauge(text, 'campaignd_job_failing{job="reallocation"}') == 0
        text = await runs("ok", 2)  # two good runs clear it
        assert gauge(text, 'campaignd_job_failing{job="monitor"}') == 0
        assert gauge(text, "campaignd_problems") == 1
    finally:
        if d.sql is not None:
            await d.sql.close()
        if d.hot is not None:
            await d.hot.close()
