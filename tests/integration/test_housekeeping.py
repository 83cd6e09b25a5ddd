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


async def test_a_database_has_one_identity_however_it_is_reached(sql_url: str,
                                                                tmp_path: Path) -> None:
    """The CLI tells whether the daemon answering on its port uses its database by this id,
    not by the URL's spelling: two connections to one database (two first askers at once
    included) agree; another database differs."""
    import anyio

    from campaignd.stores.sql import SqlStore, upgrade

    await upgrade(sql_url)
    a, b = await SqlStore.connect(sql_url), await SqlStore.connect(sql_url)
    other_url = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    await upgrade(other_url)
    other = await SqlStore.connect(other_url)
    try:
        ids: list[str] = []

        async def ask(store: SqlStore) -> None:
            ids.append(await store.database_id())

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, a)
            tg.start_soon(ask, b)
        assert ids[0] == ids[1] and len(ids[0]) == 32
        assert await a.database_id() == ids[0]
        assert await other.database_id() != ids[0]
    finally:
        for s in (a, b, other):
            await s.close()
