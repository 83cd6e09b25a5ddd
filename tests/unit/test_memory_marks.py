"""The in-memory store's dedupe marks against a reference model (a dict of id -> expiry and
position), under random batches, TTLs (mixed, so batches expire out of order), positions,
clock moves and restarts through the mark log."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.clock import VirtualClock
from campaignd.stores.memory import InMemoryHotStore

T0 = datetime(2026, 12, 1, tzinfo=UTC)

_batch = st.tuples(
    st.sampled_from(["ev", "other"]),
    st.lists(st.sampled_from([f"id{i}" for i in range(12)]), max_size=8),
    st.sampled_from([30.0, 60.0, 600.0]),
    st.booleans(),  # with positions
    st.floats(min_value=0, max_value=90),  # clock advance before the call
    st.booleans(),  # restart from the log before the call
)


class Reference:
    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], tuple[float, int]] = {}

    def mark(self, ns: str, ids: list[str], ttl: float, positions: list[int] | None,
             now: float) -> list[bool]:
        out = []
        for k, id_ in enumerate(ids):
            pos = positions[k] if positions is not None else -1
            old = self.marks.get((ns, id_))
            if old is not None and old[0] > now:
                out.append(pos >= 0 and old[1] == pos)
            else:
                self.marks[(ns, id_)] = (now + ttl, pos)
                out.append(True)
        return out

    def live(self, now: float) -> int:
        return sum(1 for exp, _ in self.marks.values() if exp > now)


@settings(max_examples=60, deadline=None)
@given(st.lists(_batch, max_size=25))
def test_marks_match_the_reference(batches: list) -> None:  # type: ignore[type-arg]
    async def run(directory: Path) -> None:
        clock = VirtualClock(T0)
        store = InMemoryHotStore(clock, seen_dir=directory)
        ref = Reference()
        seq = 0
        for ns, ids, ttl, positioned, advance, restart in batches:
            clock.advance(advance)
            if restart:
                await store.close()
                store = InMemoryHotStore(clock, seen_dir=directory)
            positions = None
            if positioned:
                # mostly fresh positions, sometimes the same delivery read again
                positions = [(seq + k) if (seq + k) % 3 else 7 for k in range(len(ids))]
                seq += len(ids)
            now = clock.now().timestamp()
            got = await store.mark_seen(ns, ids, ttl, positions=positions)
            assert got == ref.mark(ns, ids, ttl, positions, now)
            assert store.marks_held() == ref.live(now)
        await store.close()

    with TemporaryDirectory() as d:
        asyncio.run(run(Path(d)))


def test_the_cap_forgets_the_oldest_made_first() -> None:
    async def run() -> None:
        clock = VirtualClock(T0)
        store = InMemoryHotStore(clock, max_seen=4)
        assert await store.mark_seen("ev", ["long1", "long2"], 600) == [True, True]
        assert await store.mark_seen("ev", ["short1", "short2"], 30) == [True, True]
        assert await store.mark_seen("ev", ["new"], 600) == [True]
        assert store.marks_held() == 4
        # "long1" was made first and was forgotten; the others are still marked
        assert await store.mark_seen("ev", ["long2", "short1", "short2"], 600) == [False] * 3
        assert await store.mark_seen("ev", ["long1"], 600) == [True]  # (forgetting "long2")
        clock.advance(31)  # "short1" and "short2" expire
        assert await store.mark_seen("ev", ["short2"], 600) == [True]
        assert store.marks_held() == 3

    asyncio.run(run())


def test_marks_expiring_after_the_new_ones_do_not_push_every_new_one_out(
        tmp_path: Path) -> None:
    """A sandbox market restarted behind the last run's sped-up clock (or a window shortened
    between runs) restores marks that expire after every new one: a full cap forgot each new
    batch as soon as it was made, and no redelivery was caught (review finding)."""
    async def run() -> None:
        ahead = InMemoryHotStore(VirtualClock(T0 + timedelta(days=3)), max_seen=1000,
                                 seen_dir=tmp_path)
        assert await ahead.mark_seen("old", [f"o{i}" for i in range(1000)], 72 * 3600) == \
            [True] * 1000
        await ahead.close()
        store = InMemoryHotStore(VirtualClock(T0), max_seen=1000, seen_dir=tmp_path)
        assert store.marks_held() == 1000
        for i in range(20):
            assert await store.mark_seen("new", [f"n{i}"], 72 * 3600,
                                         positions=[i]) == [True]
            # redelivered at another position: a duplicate (the old market's marks go first)
            assert await store.mark_seen("new", [f"n{i}"], 72 * 3600,
                                         positions=[1000 + i]) == [False]
        assert store.marks_held() == 1000
        await store.close()
        # the log keeps the same order: after a restart the new marks are still there
        again = InMemoryHotStore(VirtualClock(T0), max_seen=1000, seen_dir=tmp_path)
        assert await again.mark_seen("new", ["n0", "n19"], 72 * 3600, positions=[7, 8]) == \
            [False, False]
        assert await again.mark_seen("old", ["o0"], 72 * 3600) == [True]  # forgotten first
        await again.close()

    asyncio.run(run())


def test_marks_the_cap_forgot_are_logged_with_their_positions(tmp_path: Path) -> None:
    """A restart with a larger cap knows the same delivery at the same position again, even
    for marks the cap made the first process forget at once."""
    async def run() -> None:
        clock = VirtualClock(T0)
        small = InMemoryHotStore(clock, max_seen=2, seen_dir=tmp_path)
        assert await small.mark_seen("ev", ["a", "b", "c", "d"], 600,
                                     positions=[10, 11, 12, 13]) == [True] * 4
        await small.close()
        big = InMemoryHotStore(clock, max_seen=10, seen_dir=tmp_path)
        assert await big.mark_seen("ev", ["a", "b", "c", "d"], 600,
                                   positions=[10, 11, 12, 13]) == [True] * 4
        assert await big.mark_seen("ev", ["a"], 600, positions=[99]) == [False]
        await big.close()

    asyncio.run(run())


def test_a_line_the_disk_cut_short_leaves_no_torn_line_behind(tmp_path: Path) -> None:
    """The file-size limit (RLIMIT_FSIZE) lets the kernel write part of a line and then refuse
    the rest (EFBIG), as a disk filling up mid-write would: the part is cut off again, so the
    next line is read back on replay, and the refused marks are not."""
    import resource
    import signal

    from campaignd.stores.marklog import MarkLog

    log = MarkLog(tmp_path / "marks", keep=1000)
    log.append("ns", ["a"], [1], 5000.0, 0.0)
    (seg,) = list((tmp_path / "marks").glob("seg-*.log"))
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (seg.stat().st_size + 10, hard))
        with pytest.raises(OSError):
            log.append("ns", ["b", "c"], [2, 3], 5000.0, 0.0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    log.append("ns", ["d"], [4], 5000.0, 0.0)
    log.close()
    got = [(ns, id_, pos) for ns, id_, _, pos in MarkLog(tmp_path / "marks", keep=1000)
           .replay(1.0)]
    assert got == [("ns", "a", 1), ("ns", "d", 4)]


def test_a_restart_behind_the_last_runs_clock_restores_one_batch_per_log_line(
        tmp_path: Path) -> None:
    """A sandbox market restarts at the wall clock, behind the last run's sped-up market time,
    so the log holds marks expiring before the ones written before them. Replayed one by one,
    each such mark became a batch of its own, inserted by a scan of the deque: a start that
    took minutes (and `campaignd replay` ten) after a few sandbox runs. One batch per line,
    ordered by expiry, every mark still known."""
    async def run() -> None:
        ahead = VirtualClock(T0.replace(day=5))  # the first run's market, days ahead
        first = InMemoryHotStore(ahead, seen_dir=tmp_path)
        for line in range(30):
            await first.mark_seen("ev", [f"a{line}-{k}" for k in range(40)], 259200)
            ahead.advance(1)
        await first.close()
        behind = VirtualClock(T0)  # the restarted market, at the wall clock
        second = InMemoryHotStore(behind, seen_dir=tmp_path)
        for line in range(30):
            await second.mark_seen("ev", [f"b{line}-{k}" for k in range(40)], 259200)
            behind.advance(1)
        await second.close()

        third = InMemoryHotStore(behind, seen_dir=tmp_path)
        batches = list(third._marks.batches)
        assert len(batches) == 60  # one per log line, not one per mark
        assert [b.expires for b in batches] == sorted(b.expires for b in batches)
        assert third.marks_held() == 60 * 40
        for line in range(30):
            for prefix in ("a", "b"):
                ids = [f"{prefix}{line}-{k}" for k in range(40)]
                assert await third.mark_seen("ev", ids, 259200) == [False] * 40
        await third.close()

    asyncio.run(run())


def test_marks_forgotten_for_the_cap_inside_their_window_are_reported() -> None:
    """``pipeline.max_seen`` bounds the marks; a busy feed can fill it before the window ends
    (the seed campaign makes about 800,000 a day against a 72 h window). A redelivery of a
    forgotten mark is counted again, so the store says so: a warning with how many hours the
    cap covers, at most hourly, and a count."""
    from structlog.testing import capture_logs

    clock = VirtualClock(T0)

    async def run() -> InMemoryHotStore:
        store = InMemoryHotStore(clock, max_seen=1000)
        with capture_logs() as logs:
            for hour in range(6):
                ids = [f"h{hour}-{i}" for i in range(400)]
                assert all(await store.mark_seen("ev", ids, 72 * 3600))
                clock.advance(3600)
        warned = [e for e in logs if e["event"] == "dedupe marks forgotten before their "
                  "window ends"]
        assert warned and warned[0]["max_seen"] == 1000 and warned[0]["window_hours"] == 72
        assert warned[0]["covers_hours"] < 72 and "pipeline.max_seen" in warned[0]["fix"]
        assert len(warned) <= 4  # at most hourly
        # the oldest marks are gone: their redelivery is new again (what the warning is for)
        assert await store.mark_seen("ev", ["h0-0"], 72 * 3600) == [True]
        return store

    store = asyncio.run(run())
    assert store.evictions >= 3
