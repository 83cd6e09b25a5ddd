"""APScheduler wiring and the job supervisor.

APScheduler 3.x is only a clock here: each of its jobs posts a tick (the job's name) into a
bounded stream. The ``Supervisor`` receives ticks and runs the job with a timeout, at most one
instance of each job at a time (a tick that arrives while the job still runs is counted as
skipped), records every run (start, duration, outcome, error) in memory and through
``on_record`` (SQL), and never lets one job's exception stop the others. APScheduler's job store
stays in memory; campaignd's own state lives in campaignd's stores.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from anyio.abc import TaskStatus
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from campaignd.clock import Clock, SystemClock
from campaignd.logs import Outage, get_logger

log = get_logger("campaignd.scheduling")

JobFunc = Callable[[datetime], Awaitable[int | None]]
"""A job: given the tick time, do the work; return the number of recommendations (or None)."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    cadence_s: float
    func: JobFunc
    timeout_s: float
    kind: str = "agent"
    first_delay_s: float | None = None
    """Delay before the first run (default: one cadence, capped at 5 s)."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    agent: str
    started_at: datetime
    finished_at: datetime
    duration_s: float
    outcome: str
    """``ok``, ``error``, ``timeout`` or ``skipped``."""
    error: str | None = None
    recommendations: int = 0


FAILS_TO_ALARM = 3
"""Failed runs in a row after which a job makes the daemon unhealthy."""
OKS_TO_CLEAR = 2
"""Good runs in a row after which it no longer does."""


@dataclass(slots=True)
class JobState:
    spec: JobSpec
    running: bool = False
    runs: int = 0
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0
    last_started: datetime | None = None
    last_duration_s: float | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    next_run: datetime | None = None
    history: deque[RunRecord] = field(default_factory=lambda: deque(maxlen=50))
    alarm: bool = False
    """Raised when the job failed (or timed out) on each of its last ``FAILS_TO_ALARM`` runs;
    cleared only after ``OKS_TO_CLEAR`` good runs in a row, so that a job failing on and off
    does not flap the daemon's health (and page someone) on every run."""
    failing: Outage = field(default_factory=lambda: Outage(log, "job failed"))
    """Its failures in a row: the first logged with its traceback, then at most one line a
    minute (a job failing on every run of a night-long outage is one story, not hundreds)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.spec.name, "kind": self.spec.kind, "cadence_s": self.spec.cadence_s,
            "running": self.running, "runs": self.runs, "errors": self.errors,
            "timeouts": self.timeouts, "skipped": self.skipped,
            "last_run": self.last_started.isoformat() if self.last_started else None,
            "last_duration_s": self.last_duration_s, "last_outcome": self.last_outcome,
            "last_error": self.last_error,
            "next_run": self.next_run.isoformat() if self.next_run else None,
            "failing": self.alarm,
        }

    def judge(self) -> None:
        """Raise or clear ``alarm`` from the runs so far (after each run)."""
        runs = list(self.history)
        if not self.alarm:
            last = runs[-FAILS_TO_ALARM:]
            self.alarm = (len(last) == FAILS_TO_ALARM
                          and all(r.outcome in ("error", "timeout") for r in last))
        else:
            last = runs[-OKS_TO_CLEAR:]
            self.alarm = not (len(last) == OKS_TO_CLEAR
                              and all(r.outcome == "ok" for r in last))


class Supervisor:
    """Runs jobs on their cadences (via APScheduler ticks) or on demand (``trigger``)."""

    def __init__(self, jobs: Sequence[JobSpec], *, clock: Clock | None = None,
                 on_record: Callable[[RunRecord], Awaitable[None]] | None = None) -> None:
        names = [j.name for j in jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate job names in {names}")
        self.clock = clock or SystemClock()
        self.jobs: dict[str, JobState] = {j.name: JobState(j) for j in jobs}
        self.on_record = on_record
        self._send, self._recv = anyio.create_memory_object_stream[str](max_buffer_size=256)
        self._scheduler: AsyncIOScheduler | None = None
        self._stopping = False
        self._recording = Outage(log, "could not record job runs")

    # --- ticks ---------------------------------------------------------------------------

    def trigger(self, name: str) -> bool:
        """Ask for a run of ``name`` now; False if unknown or the tick queue is full."""
        if name not in self.jobs or self._stopping:
            return False
        try:
            self._send.send_nowait(name)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.jobs[name].skipped += 1
            return False
        return True

    async def _tick(self, name: str) -> None:
        # Runs on the event loop (APScheduler's AsyncIOExecutor awaits coroutine jobs).
        self.trigger(name)
        self._refresh_next_run(name)

    def _refresh_next_run(self, name: str) -> None:
        if self._scheduler is None:
            return
        job = self._scheduler.get_job(name)
        if job is not None and job.next_run_time is not None:
            self.jobs[name].next_run = job.next_run_time.astimezone(UTC)

    # --- running -------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        scheduler = AsyncIOScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 60})
        now = datetime.now(UTC)
        for state in self.jobs.values():
            spec = state.spec
            delay = spec.first_delay_s if spec.first_delay_s is not None else min(
                spec.cadence_s, 5.0)
            scheduler.add_job(self._tick, IntervalTrigger(seconds=spec.cadence_s, timezone=UTC),
                              args=[spec.name], id=spec.name, name=spec.name,
                              next_run_time=now + timedelta(seconds=delay))
            state.next_run = now + timedelta(seconds=delay)
        self._scheduler = scheduler
        scheduler.start()
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                async with self._recv:
                    async for name in self._recv:
                        state = self.jobs[name]
                        if state.running:
                            state.skipped += 1
                            continue
                        state.running = True
                        tg.start_soon(self._run_one, state, name=f"job:{name}")
        finally:
            self._stopping = True
            scheduler.shutdown(wait=False)
            self._scheduler = None

    async def _run_one(self, state: JobState) -> None:
        spec = state.spec
        started = self.clock.now()
        t0 = time.monotonic()
        state.last_started = started
        outcome, error, n = "ok", None, 0
        try:
            with anyio.fail_after(spec.timeout_s):
                n = (await spec.func(started)) or 0
        except TimeoutError:
            outcome, error = "timeout", f"did not finish within {spec.timeout_s:g} s"
            state.timeouts += 1
        except anyio.get_cancelled_exc_class():
            state.running = False
            raise
        except Exception as exc:  # one job's failure never stops the others
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
            state.errors += 1
            state.failing.failed(error, job=spec.name, exc_info=state.failing.since is None)
        else:
            state.failing.ok("job works again", job=spec.name)
        duration = time.monotonic() - t0
        state.running = False
        state.runs += 1
        state.last_duration_s = round(duration, 6)
        state.last_outcome = outcome
        state.last_error = error
        record = RunRecord(spec.name, started, self.clock.now(), duration, outcome, error, int(n))
        state.history.append(record)
        state.judge()
        if self.on_record is not None:
            try:
                with anyio.fail_after(10):
                    await self.on_record(record)
            except Exception as exc:
                self._recording.failed(str(exc) or type(exc).__name__, job=spec.name)
            else:
                self._recording.ok("job runs recorded again")

    def status(self) -> list[dict[str, Any]]:
        for name in self.jobs:
            self._refresh_next_run(name)
        return [s.as_dict() for s in self.jobs.values()]

    def healthy(self) -> bool:
        """False while any job's alarm is raised (``JobState.alarm``: it failed or timed out
        on each of its last three runs, and has not run well twice in a row since)."""
        return not any(s.alarm for s in self.jobs.values())

    def failing(self) -> list[str]:
        """The jobs whose alarm is raised."""
        return [name for name, s in self.jobs.items() if s.alarm]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]
