"""The daemon's housekeeping jobs keep every SQL table bounded over months of running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from campaignd.settings import load_settings
from campaignd.stores.sql.repository import AgentRun


async def test_the_retention_job_deletes_agent_runs_older_than_30_days(
        sql_url: str, tmp_path: Path) -> None:
    """Every agent and job run adds a row to ``agent_runs`` (about 4,000 a day at the default
    cadences); the hourly retention job keeps the last 30 days (wall time, as they are
    stamped) and deletes the rest."""
    from campaignd.daemon import Daemon
    from campaignd.daemon_jobs import AGENT_RUN_RETENTION_DAYS

    cfg = tmp_path / "campaignd.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "var"}"\n[database]\nurl = "{sql_url}"\n')
    d = Daemon(load_settings(cfg, environ={}))
    await d._open_stores()
    try:
        assert d.sql is not None
        now = datetime.now(UTC)
        ages = [0, 1, AGENT_RUN_RETENTION_DAYS - 1, AGENT_RUN_RETENTION_DAYS + 1, 200]
        for days in ages:
            at = now - timedelta(days=days)
            await d.sql.record_agent_run(AgentRun("monitor", at, at + timedelta(seconds=1),
                                                  1.0, "ok", 0))
        deleted = await d._run_retention(now)
        assert deleted == 2
        left = await d.sql.recent_agent_runs(limit=100)
        assert sorted(round((now - r.started_at) / timedelta(days=1)) for r in left) == [
            0, 1, AGENT_RUN_RETENTION_DAYS - 1]
    finally:
        if d.sql is not None:
            await d.sql.close()
        if d.hot is not None:
            await d.hot.close()
