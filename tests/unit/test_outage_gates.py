"""A store outage is logged once per interval (not once per attempt), and while the counts are
not current no decision cycle runs and the executor sends nothing to the DSP."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import anyio
from structlog.testing import capture_logs

from campaignd.decisions import DecisionService
from campaignd.dsp.executor import ActionExecutor
from campaignd.logs import Outage, get_logger
from campaignd.metrics import Metrics

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_an_outage_is_one_line_a_minute_and_one_when_it_ends() -> None:
    t = [0.0]
    outage = Outage(get_logger("test"), "store down", every_s=60.0, clock=lambda: t[0])
    with capture_logs() as logs:
        for _ in range(59):  # a flush a second for a minute
            outage.failed("StorageError: refused")
            t[0] += 1.0
        assert [e["event"] for e in logs] == ["store down"]
        assert outage.failing_for() == 59.0
        t[0] += 1.0
        outage.failed("StorageError: refused")
        outage.ok("store back")
        outage.ok("store back")  # (working already: nothing more)
    assert [e["event"] for e in logs] == ["store down", "store down", "store back"]
    assert logs[1]["attempts"] == 60 and logs[1]["failing_for_s"] == 60.0
    assert logs[2]["down_s"] == 60.0 and outage.since is None


async def test_the_executor_sends_nothing_while_the_counts_are_not_current() -> None:
    calls = []

    class Sql:
        async def outbox(self) -> list[Any]:
            calls.append(1)
            return []

    why: list[str | None] = ["the event feed is failing: StorageError: Redis down"]
    ex = ActionExecutor(sql=Sql(), dsp=SimpleNamespace(writing=anyio.Lock()),
                        clock=SimpleNamespace(now=lambda: NOW), poll_s=0.01)
    ex.hold = lambda: why[0]
    # a raise that had waited for headroom for 20 minutes before the hold
    ex._waiting_since[7] = time.monotonic() - 1200
    async with anyio.create_task_group() as tg:
        await tg.start(ex.run)
        await anyio.sleep(0.2)
        assert calls == [] and ex.held == why[0]
        # its wait starts over when the drains resume (max_wait_s is not spent on a hold)
        assert ex._waiting_since == {}
        why[0] = None
        with anyio.fail_after(5):
            while not calls:
                await anyio.sleep(0.01)
        assert ex.held is None
        tg.cancel_scope.cancel()


def test_a_decision_cycle_on_counts_that_are_not_current_is_skipped() -> None:
    settings = SimpleNamespace(decision=SimpleNamespace(mode="live", risk_budget=0.2))
    svc = DecisionService(settings=settings, sql=None, metrics=Metrics())
    svc.collect("reallocation", [object()])  # type: ignore[list-item]
    svc.hold("the event feed is failing: StorageError: Redis down", NOW)
    st = svc.status()
    assert st["held"].startswith("the event feed is failing")
    assert st["skipped_since_start"] == {"counts not current": 1}
    assert svc.inbox == {} and svc.cycles == 0


def test_a_hold_that_lasts_is_logged_once_not_every_cycle() -> None:
    settings = SimpleNamespace(decision=SimpleNamespace(mode="live", risk_budget=0.2))
    svc = DecisionService(settings=settings, sql=None, metrics=Metrics())
    with capture_logs() as logs:
        for _ in range(30):  # an hour of 2-minute cycles
            svc.hold("the event feed is failing: StorageError: Redis down", NOW)
    assert [e["log_level"] for e in logs] == ["warning"]
    assert svc.status()["skipped_since_start"] == {"counts not current": 30}
