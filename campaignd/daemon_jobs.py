"""The daemon's scheduled jobs: the agents (performance monitor, budget reallocation with its
decision cycle) and the maintenance jobs (cold export, retention, the audit archive, DSP
reconciliation). Mixed into ``Daemon``, which owns the stores and services they use.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import anyio

from campaignd import logs as logmod
from campaignd.clock import Clock
from campaignd.domain.cells import CellSnapshot
from campaignd.scheduling import JobSpec
from campaignd.settings import Settings

log = logmod.get_logger("campaignd.daemon")

AGENT_RUN_RETENTION_DAYS = 30
"""Days the record of every agent and job run is kept in SQL (``agent_runs``; ~4,000 rows a
day at the default cadences). Deleted by the hourly ``retention`` job."""


class DaemonJobs:
    """The jobs' bodies (see the module docstring); ``Daemon`` provides what is declared here."""

    settings: Settings
    clock: Clock
    sql: Any
    dsp: Any
    monitor: Any
    reallocation: Any
    decisions: Any

    def snapshots(self) -> dict[str, CellSnapshot]:
        raise NotImplementedError

    def _view_problem(self) -> str | None:
        raise NotImplementedError

    def _jobs(self) -> list[JobSpec]:
        a = self.settings.agents
        p = self.settings.pipeline
        jobs = [JobSpec("monitor", a.monitor_s, self._run_monitor, a.timeout_s),
                JobSpec("reallocation", a.reallocation_s, self._run_reallocation, a.timeout_s),
                JobSpec("cold_export", p.rollup_s, self._run_cold_export, 300.0,
                        kind="maintenance"),
                JobSpec("retention", 3600.0, self._run_retention, 300.0, kind="maintenance"),
                JobSpec("archive", 3600.0, self._run_archive, 300.0, kind="maintenance")]
        if self.dsp is not None:
            jobs.append(JobSpec("reconcile", self.settings.dsp.reconcile_s,
                                self._run_reconcile, max(a.timeout_s, 60.0),
                                kind="maintenance"))
        return jobs

    async def _run_cold_export(self, now: datetime) -> int:
        """Parquet files of the finished days that changed (cold store)."""
        from campaignd.pipeline.rollup import export_changed_days
        assert self.sql is not None
        # (within its 300 s timeout: a backlog is finished by the next runs)
        return await export_changed_days(self.sql, self.settings.parquet_dir,
                                         now=self.clock.now(), time_budget_s=200.0)

    async def _run_retention(self, now: datetime) -> int:
        """Delete warm minute rows past ``pipeline.warm_retention_days`` (market time) and the
        records of agent and job runs older than ``AGENT_RUN_RETENTION_DAYS`` (wall time, as
        they are stamped: ``now``)."""
        from campaignd.pipeline.rollup import apply_retention
        assert self.sql is not None
        rows = await apply_retention(self.sql, now=self.clock.now(),
                                     retention_days=self.settings.pipeline.warm_retention_days,
                                     time_budget_s=120.0)
        return rows + await self.sql.delete_agent_runs_before(
            now - timedelta(days=AGENT_RUN_RETENTION_DAYS))

    async def _run_archive(self, now: datetime) -> int:
        """Move finished actions and dead letters past their retention to the audit archive
        (``campaignd.pipeline.archive``), two minutes of it at most per run."""
        from campaignd.pipeline.archive import archive_old
        assert self.sql is not None
        moved = await archive_old(
            self.sql, self.settings.parquet_dir, now=self.clock.now(),
            action_days=self.settings.decision.audit_retention_days,
            dead_letter_days=self.settings.pipeline.dead_letter_retention_days,
            time_budget_s=120.0)
        if any(moved.values()):
            log.info("audit archive", actions=moved["actions"],
                     dead_letters=moved["dead_letters"])
        return sum(moved.values())

    async def _run_monitor(self, now: datetime) -> int:
        # Agents decide in the DSP's time (the sandbox market's, when sped up).
        snaps = self.snapshots()
        recs = await anyio.to_thread.run_sync(self.monitor.run, snaps, self.clock.now())
        if self.decisions is not None:
            self.decisions.collect(self.monitor.name, recs)
        return len(recs)

    async def _run_reallocation(self, now: datetime) -> int:
        """The reallocation agent, then a decision cycle over every agent's recommendations."""
        if self.decisions is None:
            return 0
        at = self.clock.now()
        why = self._view_problem()
        if why is not None:  # no money decision on a broken view
            self.decisions.hold(why, at)
            return 0
        snaps = self.snapshots()
        recs = await anyio.to_thread.run_sync(self.reallocation.run, snaps, at)
        self.decisions.collect(self.reallocation.name, recs)
        await self.decisions.cycle(snaps, self.dsp, at)
        return len(recs)

    async def _run_reconcile(self, now: datetime) -> int:
        drift = await self.dsp.reconcile()
        return drift


__all__ = ["AGENT_RUN_RETENTION_DAYS", "DaemonJobs"]
