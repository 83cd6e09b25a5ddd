"""Most of the feed refused (a clock off, a changed log format) is a problem, and the counts
are not current: decisions and changes to the DSP wait. Events of line items campaignd does not
manage are not judged (an account-wide push carries every campaign's)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import atomize
from campaignd.metrics import Metrics
from campaignd.pipeline.ingest import Pipeline
from campaignd.pipeline.ingestor import EventIngestor
from campaignd.pipeline.registry import Registry
from campaignd.pipeline.watch import RefusalWatch
from campaignd.stores.memory import InMemoryHotStore
from campaignd.testing import impression_message

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
HOUR_US = 3_600_000_000


class Ticker:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_feed_mostly_refused_holds_decisions_until_it_recovers(seed_spec) -> None:  # type: ignore[no-untyped-def]
    cells = atomize(seed_spec)
    registry = Registry()
    registry.add_campaign(seed_spec, cells)
    registry.register(seed_spec.id, {100: cells[0].cell_id})
    clock = VirtualClock(NOW)
    pipe = Pipeline(registry, InMemoryHotStore(clock), clock=clock, metrics=Metrics())
    ing = EventIngestor(adapter=None, sql=None, pipeline=pipe, clock=clock, metrics=Metrics())
    tick = Ticker()
    ing.refusals = RefusalWatch(pipe.stats, clock=tick)
    n = 0

    async def feed(good: int, future: int = 0, foreign: int = 0) -> None:
        nonlocal n
        raws = []
        for _ in range(good):
            n += 1
            raws.append(impression_message(n, line_item=100, ts_usecs=NOW_US - 1000))
        for _ in range(future):  # this host's clock two hours behind the DSP's
            n += 1
            raws.append(impression_message(n, line_item=100, ts_usecs=NOW_US + 2 * HOUR_US))
        for _ in range(foreign):
            n += 1
            raws.append(impression_message(n, line_item=999, ts_usecs=NOW_US - 1000))
        await pipe.ingest(raws)
        tick.t += 30

    assert ing.view_problem() is None  # the first snapshot
    # another campaign's events, however many, are not this feed's problem
    for _ in range(4):
        await feed(good=300, foreign=3000)
        assert ing.view_problem() is None and ing.problems() == []
    # the clock goes wrong: most events refused
    for _ in range(10):
        await feed(good=100, future=900)
    [problem] = ing.problems()
    assert "timestamp_in_future" in problem and "timedatectl" in problem, problem
    assert "of the last 5 min were refused" in problem
    held = ing.view_problem()
    assert held is not None and held.startswith("most events are refused")
    # fixed: the share falls as the window moves on; it clears below 20 %, not at 50 %
    await feed(good=2000)
    assert ing.view_problem() is not None  # ~30 % of the window still refused
    for _ in range(10):
        await feed(good=1000)
    assert ing.view_problem() is None and ing.problems() == []


def test_a_few_refusals_say_nothing() -> None:
    from campaignd.pipeline.ingest import PipelineStats

    stats = PipelineStats()
    tick = Ticker()
    watch = RefusalWatch(stats, clock=tick)
    watch.check()
    stats.dead["malformed_json"] += 400  # a quiet feed, all bad: under half of min_events
    tick.t += 60
    assert watch.check() is None
    assert watch.share == 0.4  # what campaignd_feed_refused_share exposes
    stats.dead["malformed_json"] += 200  # 600: more than half of the 1,000 asked for
    tick.t += 60
    problem = watch.check()
    assert problem is not None and "log format may have changed" in problem
    assert watch.share == 0.6
    assert "--reason malformed_json" in problem


def feed(stats: Any, tick: Ticker, watch: RefusalWatch, *, every_s: float, times: int,
         good: int = 0, refused: int = 0) -> None:
    """``times`` steps of ``every_s`` seconds, each reading ``good`` events and refusing
    ``refused`` (as timestamp_in_future), the watch checked after each."""
    for _ in range(times):
        stats.ingested["impression"] += good
        stats.dead["timestamp_in_future"] += refused
        tick.t += every_s
        watch.check()


def test_a_quiet_feed_keeps_a_refused_alarm_and_clears_a_good_one() -> None:
    from campaignd.pipeline.ingest import PipelineStats

    stats = PipelineStats()
    tick = Ticker()
    watch = RefusalWatch(stats, clock=tick)
    watch.check()
    feed(stats, tick, watch, refused=500, every_s=30, times=12)  # busy, all refused: raised
    assert watch.problem is not None
    for _ in range(100):  # the night: 1 event/s, still all refused -- the hold stays
        stats.dead["timestamp_in_future"] += 2
        tick.t += 2
        assert watch.check() is not None
    feed(stats, tick, watch, good=2, every_s=2, times=900)  # clock fixed, 1 good event/s:
    assert watch.check() is None  # cleared once the hour shows it
    # raised again, then the feed falls quiet with only good events (0.2/s): it clears
    feed(stats, tick, watch, refused=500, every_s=30, times=12)
    assert watch.problem is not None
    feed(stats, tick, watch, good=1, every_s=5, times=720)
    assert watch.check() is None
    # and a feed gone silent clears too (no evidence of refusals)
    feed(stats, tick, watch, refused=500, every_s=30, times=12)
    assert watch.problem is not None
    tick.t += 3700
    watch.check()
    tick.t += 10
    assert watch.check() is None
    # a small account, every event refused at 0.5/s: raised once 500 (half of 1,000) are
    small = PipelineStats()
    watch = RefusalWatch(small, clock=tick)
    raised_after = None
    for i in range(1800):
        small.dead["malformed_json"] += 1
        tick.t += 2
        if watch.check() is not None:
            raised_after = i
            break
    assert raised_after is not None and 495 < raised_after < 510


def test_the_account_wide_push_is_judged_as_a_whole() -> None:
    """Other campaigns' events are read too: their few bad prices are a small share of all the
    events read, and their conversions (naming no line item of campaignd's) are not judged."""
    from campaignd.pipeline.ingest import PipelineStats

    stats = PipelineStats()
    tick = Ticker()
    watch = RefusalWatch(stats, clock=tick)
    watch.check()
    for _ in range(20):
        stats.ingested["impression"] += 200
        stats.dead["unknown_line_item"] += 100
        stats.dead["unknown_line_item_counted"] += 1900
        stats.dead["bad_money"] += 30
        stats.dead["unattributed_conversion"] += 250
        stats.dead["lost_before_read"] += 5000  # a gap: not events read
        tick.t += 30
        assert watch.check() is None
