"""The supervisor: cadences, one instance per job, timeouts, isolation of failures."""

from __future__ import annotations

from datetime import datetime

import anyio
import pytest

from campaignd.scheduling import JobSpec, RunRecord, Supervisor

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_jobs_run_and_failures_are_isolated() -> None:
    records: list[RunRecord] = []
    calls = {"good": 0, "bad": 0}

    async def good(now: datetime) -> int:
        calls["good"] += 1
        return 3

    async def bad(now: datetime) -> int:
        calls["bad"] += 1
        raise RuntimeError("boom")

    async def record(rec: RunRecord) -> None:
        records.append(rec)

    sup = Supervisor([JobSpec("good", 0.05, good, 1.0, first_delay_s=0.0),
                      JobSpec("bad", 0.05, bad, 1.0, first_delay_s=0.0)], on_record=record)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        with anyio.fail_after(5):
            while calls["good"] < 3 or calls["bad"] < 3:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    good_runs = [r for r in records if r.agent == "good"]
    bad_runs = [r for r in records if r.agent == "bad"]
    assert good_runs and all(r.outcome == "ok" and r.recommendations == 3 for r in good_runs)
    assert bad_runs and all(r.outcome == "error" and "boom" in (r.error or "") for r in bad_runs)
    st = {s["name"]: s for s in sup.status()}
    assert st["bad"]["last_error"] == "RuntimeError: boom"
    assert st["good"]["last_outcome"] == "ok"
    assert not sup.healthy()  # bad failed its last three runs


async def test_timeout_and_single_instance() -> None:
    started = anyio.Event()
    release = anyio.Event()
    runs: list[RunRecord] = []

    async def slow(now: datetime) -> int:
        started.set()
        await release.wait()
        return 0

    async def stuck(now: datetime) -> int:
        await anyio.sleep(10)
        return 0

    async def record(rec: RunRecord) -> None:
        runs.append(rec)

    sup = Supervisor([JobSpec("slow", 3600, slow, 5.0, first_delay_s=3600),
                      JobSpec("stuck", 3600, stuck, 0.1, first_delay_s=3600)], on_record=record)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        assert sup.trigger("slow")
        with anyio.fail_after(2):
            await started.wait()
        # While the first run is going, more ticks are skipped, not queued in parallel.
        assert sup.trigger("slow") and sup.trigger("slow")
        await anyio.sleep(0.05)
        assert sup.jobs["slow"].skipped == 2
        release.set()
        assert sup.trigger("stuck")
        with anyio.fail_after(3):
            while len(runs) < 2:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    by = {r.agent: r for r in runs}
    assert by["slow"].outcome == "ok"
    assert by["stuck"].outcome == "timeout"
    assert not sup.trigger("unknown")


async def test_apscheduler_fires_on_cadence() -> None:
    n = 0

    async def job(now: datetime) -> None:
        nonlocal n
        n += 1

    sup = Supervisor([JobSpec("tick", 0.1, job, 1.0, first_delay_s=0.0)])
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await anyio.sleep(0.75)
        tg.cancel_scope.cancel()
    # 0.75 s at a 0.1 s cadence: several runs, not one and not dozens.
    assert 3 <= n <= 9
    assert sup.jobs["tick"].next_run is not None


async def test_a_job_failing_run_after_run_logs_once_with_its_traceback_not_every_run() -> None:
    """A night-long database outage fails a 30-second job about a thousand times, and every
    run's record cannot be stored either: the log gets one line for each when it starts
    (the job's with its traceback) and one when it works again -- not a line per run."""
    from structlog.testing import capture_logs

    broken = {"job": True, "record": True}
    runs: list[str] = []

    async def job(now: datetime) -> int:
        runs.append("run")
        if broken["job"]:
            raise ConnectionError("the database is down")
        return 0

    async def record(rec: RunRecord) -> None:
        if broken["record"]:
            raise ConnectionError("the database is down")

    sup = Supervisor([JobSpec("export", 0.02, job, 1.0, first_delay_s=0.0)], on_record=record)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            with anyio.fail_after(5):
                while len(runs) < 8:
                    await anyio.sleep(0.01)
            broken["job"] = broken["record"] = False
            n = len(runs)
            with anyio.fail_after(5):
                while len(runs) < n + 3:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    events = [e["event"] for e in logs]
    assert events.count("job failed") == 1
    [failed] = [e for e in logs if e["event"] == "job failed"]
    assert failed["exc_info"] is True and failed["job"] == "export"
    assert events.count("could not record job runs") == 1
    assert events.count("job works again") == 1
    assert events.count("job runs recorded again") == 1
    assert sup.jobs["export"].errors >= 8


def test_a_job_failing_on_and_off_does_not_flap_the_health() -> None:
    """Unhealthy after three failed runs in a row; healthy again only after two good runs in a
    row — one good run between failures does not page anyone twice."""
    from datetime import UTC

    from campaignd.scheduling import JobState

    async def noop(now: datetime) -> int:
        return 0

    state = JobState(JobSpec("flaky", 30, noop, 5.0))
    t = datetime(2026, 12, 3, tzinfo=UTC)
    seen = []
    for outcome in ["ok", "error", "timeout", "error", "ok", "error", "ok", "ok", "error",
                    "error"]:
        state.history.append(RunRecord("flaky", t, t, 0.1, outcome))
        state.judge()
        seen.append(state.alarm)
    assert seen == [False, False, False, True, True, True, True, False, False, False]
    assert state.as_dict()["failing"] is False
    sup = Supervisor([JobSpec("a", 30, noop, 5.0), JobSpec("b", 30, noop, 5.0)])
    sup.jobs["b"].alarm = True
    assert not sup.healthy() and sup.failing() == ["b"]


def test_a_level_hovering_at_the_line_raises_its_problem_once() -> None:
    from campaignd.alarms import LevelAlarm

    spool = LevelAlarm(raise_above=0.9, clear_below=0.75)
    levels = [0.5, 0.89, 0.91, 0.89, 0.92, 0.8, 0.76, 0.75, 0.89, 0.95]
    assert [spool.update(x) for x in levels] == [False, False, True, True, True, True, True,
                                                 False, False, True]
