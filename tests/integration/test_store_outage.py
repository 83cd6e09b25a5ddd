"""The event feed through a hot store that goes away and comes back: a private redis-server
(started here, on a free port, so that it can be killed) under the ingestor reading the
sandbox's feed. While Redis is down the feed reports a store outage (not a pipeline bug: no
message-by-message isolation, no traceback, no dead letter), the counts are marked not current
(no money decision on them), and once Redis is back the ingestor catches up by itself with
every delivered event counted exactly once. The in-memory hot store's dedupe-mark log on a full
disk is a store outage too, never a dead letter."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import CampaignSpec
from campaignd.errors import StorageError
from campaignd.metrics import Metrics
from campaignd.pipeline.ingest import Pipeline
from campaignd.pipeline.ingestor import EventIngestor
from campaignd.stores.memory import InMemoryHotStore
from campaignd.stores.redis import RedisHotStore
from campaignd.stores.sql import SqlStore
from campaignd.testing import impression_message, sandbox_feed, stored_campaign

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
CHECKPOINT = "events:beeswax:test"




class PrivateRedis:
    """A redis-server of this test's own (no persistence): ``stop`` kills it and its data."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.pid: int | None = None

    def start(self) -> None:
        pidfile = self.dir / "redis.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--daemonize", "yes",
                        "--dir", str(self.dir), "--pidfile", str(pidfile)],
                       check=True, capture_output=True, timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        self.pid = int(pidfile.read_text())
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.pid is None:
            return
        os.kill(self.pid, signal.SIGKILL)  # (its data goes with it: no persistence)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        self.pid = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (this test starts and kills its own)",
                        pytrace=False)
        pytest.skip("redis-server is not installed: this test starts and kills a Redis of its "
                    "own (apt-get install redis-server)")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_the_feed_survives_redis_going_away_and_counts_every_event_once(
        sql_store: SqlStore, seed_spec: CampaignSpec, virtual_clock: VirtualClock,
        private_redis: PrivateRedis) -> None:
    virtual_clock.set(NOW)
    registry, _ = await stored_campaign(sql_store, seed_spec, NOW)
    hot = RedisHotStore.from_url(private_redis.url, timeout_s=1.0)
    pipe = Pipeline(registry, hot, clock=virtual_clock, metrics=Metrics())
    ing = EventIngestor(adapter=None, sql=sql_store, pipeline=pipe, clock=virtual_clock,
                        metrics=Metrics(), checkpoint=CHECKPOINT, poll_s=0.02, batch=50,
                        flush_s=0.05)

    def counted() -> int:
        return int(registry.tables[0].counts["impressions"].sum())

    async def until(what: Any, seconds: float = 20) -> None:
        with anyio.fail_after(seconds):
            while not what():
                await anyio.sleep(0.02)

    try:
        with capture_logs() as logs:
            async with sandbox_feed() as (state, adapter), anyio.create_task_group() as tg:
                ing.adapter = adapter
                state.feed.extend(impression_message(i, line_item=100, ts_usecs=NOW_US - 5000 + i)
                                  for i in range(200))
                await tg.start(ing.run)
                await until(lambda: counted() == 200)
                assert ing.view_problem() is None

                private_redis.stop()
                state.feed.extend(impression_message(i, line_item=100,
                                                     ts_usecs=NOW_US - 5000 + i)
                                  for i in range(200, 400))
                await until(lambda: ing.view_problem() is not None)
                await anyio.sleep(0.5)  # several retries while it is down
                assert "Redis" in (ing.view_problem() or "")
                [problem] = ing.problems(after_s=0)
                assert "events are not being counted" in problem and "retries by itself" in problem
                assert counted() == 200  # nothing counted on a broken view

                private_redis.start()  # back, without its data
                await until(lambda: counted() == 400 and ing.committed_cursor == ing.cursor)
                assert ing.view_problem() is None and ing.problems(after_s=0) == []
                tg.cancel_scope.cancel()
    finally:
        await hot.close()
    # a store outage is not a pipeline bug: no traceback, no isolation, nothing dead-lettered
    assert not [e for e in logs if e["log_level"] == "error"], logs
    assert pipe.stats.dead == {} and pipe.stats.duplicates == 0
    failures = [e for e in logs if e["event"] == "event ingestion failed; retrying"]
    assert len(failures) == 1  # once per outage (and per minute), not once per attempt
    assert any(e["event"] == "event ingestion works again" for e in logs)
    totals = await sql_store.read_cell_totals(seed_spec.id)
    assert sum(c[0] for c in totals.values()) == 400


async def test_a_full_disk_under_the_memory_marks_is_a_storage_error_and_marks_nothing(
        tmp_path: Path, virtual_clock: VirtualClock) -> None:
    virtual_clock.set(NOW)
    store = InMemoryHotStore(virtual_clock, seen_dir=tmp_path / "marks")
    assert store._log is not None
    append = store._log.append

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store._log.append = full  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="No space left on device"):
        await store.mark_seen("ns", ["a", "b"], 3600, positions=[1, 2])
    with pytest.raises(StorageError):
        await store.mark_seen("ns", ["c"], 3600)
    store._log.append = append  # type: ignore[method-assign]
    # the batch retried once the disk has room is new (counted once), with or without positions
    assert await store.mark_seen("ns", ["a", "b"], 3600, positions=[1, 2]) == [True, True]
    assert await store.mark_seen("ns", ["c"], 3600) == [True]
    assert await store.mark_seen("ns", ["c"], 3600) == [False]


async def test_hot_totals_missed_in_an_outage_are_published_again_at_the_next_commit(
        sql_store: SqlStore, seed_spec: CampaignSpec, virtual_clock: VirtualClock,
        private_redis: PrivateRedis) -> None:
    from campaignd.pipeline.ingest import commit

    virtual_clock.set(NOW)
    registry, cells = await stored_campaign(sql_store, seed_spec, NOW, line_items=2)
    hot = RedisHotStore.from_url(private_redis.url, timeout_s=1.0)
    pipe = Pipeline(registry, hot, clock=virtual_clock, metrics=Metrics())

    async def count(line_item: int, first: int, n: int) -> None:
        await pipe.ingest([impression_message(i, line_item=line_item, ts_usecs=NOW_US - 5000 + i)
                           for i in range(first, first + n)])

    async def push() -> None:
        await commit(pipe, sql_store, pipe.take_flush(), checkpoint=None, source="test",
                     now=NOW)

    try:
        await count(100, 0, 5)
        await push()
        assert (await hot.cell_totals(seed_spec.id, cells[0].cell_id))["impressions"] == 5
        await count(100, 5, 3)
        private_redis.stop()
        await push()  # committed to SQL; the hot store misses it
        assert pipe.hot_totals_stale
        private_redis.start()  # back, without its data
        await count(101, 100, 2)
        await push()  # a flush that touches only the other cell
        assert not pipe.hot_totals_stale
        # every cell's exact total is back, not only the one this flush touched
        assert (await hot.cell_totals(seed_spec.id, cells[0].cell_id))["impressions"] == 8
        assert (await hot.cell_totals(seed_spec.id, cells[1].cell_id))["impressions"] == 2
    finally:
        await hot.close()


class LostAnswers:
    """The SQL store with an unreliable link (fault injection on the real database): a commit
    refused before it reached SQL (``refuse_next``), a commit whose answer is lost after it
    landed (``lose_next``: a timeout or a connection dropped during COMMIT), and reads of the
    checkpoints that fail (``reads_fail`` times)."""

    def __init__(self, sql: SqlStore) -> None:
        self.sql = sql
        self.refuse_next = self.lose_next = False
        self.reads_fail = 0

    async def commit_ingest(self, **kwargs: Any) -> None:
        if self.refuse_next:
            self.refuse_next = False
            raise StorageError("connection refused")
        await self.sql.commit_ingest(**kwargs)
        if self.lose_next:
            self.lose_next = False
            raise StorageError("committing ingested events took longer than 30 s")

    async def get_checkpoint(self, name: str) -> str | None:
        if self.reads_fail:
            self.reads_fail -= 1
            raise StorageError("connection refused")
        return await self.sql.get_checkpoint(name)


async def test_a_commit_whose_answer_was_lost_is_counted_once(
        sql_store: SqlStore, seed_spec: CampaignSpec, virtual_clock: VirtualClock) -> None:
    from campaignd.pipeline.ingest import commit
    from campaignd.stores.sql.models import COUNTER_COLUMNS

    virtual_clock.set(NOW)
    registry, cells = await stored_campaign(sql_store, seed_spec, NOW, line_items=1)
    pipe = Pipeline(registry, InMemoryHotStore(virtual_clock), clock=virtual_clock,
                    metrics=Metrics())
    link = LostAnswers(sql_store)
    seq = iter(range(10_000))

    async def count(n: int) -> None:
        await pipe.ingest([impression_message(next(seq), line_item=100,
                                              ts_usecs=NOW_US - 5000) for _ in range(n)])

    async def push() -> None:
        await commit(pipe, link, pipe.take_flush(), checkpoint=("test", "c"), source="test",
                     now=NOW)

    async def in_sql() -> int:
        totals = await sql_store.read_cell_totals(seed_spec.id)
        return totals[cells[0].cell_id][COUNTER_COLUMNS.index("impressions")]

    # the answer is lost, and read back at once: it landed, so it stands (not given back)
    await count(5)
    link.lose_next = True
    await push()
    assert await in_sql() == 5 and pipe.backlog == 0
    # lost, and SQL cannot say yet: held in doubt; a commit while it cannot say fails and keeps
    # its own rows; once it can, the one that landed is not sent again
    await count(3)
    link.lose_next, link.reads_fail = True, 1
    with pytest.raises(StorageError):
        await push()
    assert pipe.in_doubt is not None and pipe.backlog > 0
    await count(2)
    link.reads_fail = 1
    with pytest.raises(StorageError, match="cannot be read yet"):
        await push()
    await count(1)
    await push()
    assert await in_sql() == 5 + 3 + 2 + 1 and pipe.in_doubt is None and pipe.backlog == 0
    # (the hot store missed the flush that landed in doubt: every total is published again)
    assert (await pipe.hot.cell_totals(seed_spec.id, cells[0].cell_id))["impressions"] == 11
    # refused before it reached SQL and SQL cannot say: in doubt until it can, then sent again
    await count(4)
    link.refuse_next, link.reads_fail = True, 1
    with pytest.raises(StorageError):
        await push()
    assert await in_sql() == 11
    await push()
    assert await in_sql() == 15 and pipe.in_doubt is None and pipe.backlog == 0
    # refused and read back at once: given back, sent with the next commit
    await count(2)
    link.refuse_next = True
    with pytest.raises(StorageError):
        await push()
    assert pipe.in_doubt is None and pipe.backlog > 0
    await push()
    assert await in_sql() == 17
    assert await sql_store.get_checkpoint("test") == "c"


async def test_the_dedupe_marks_are_made_durable_before_the_counts_they_guard(
        sql_store: SqlStore, seed_spec: CampaignSpec, virtual_clock: VirtualClock,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from campaignd.pipeline.ingest import commit

    virtual_clock.set(NOW)
    registry, cells = await stored_campaign(sql_store, seed_spec, NOW, line_items=1)
    store = InMemoryHotStore(virtual_clock, seen_dir=tmp_path / "marks")
    pipe = Pipeline(registry, store, clock=virtual_clock, metrics=Metrics())
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    async def push() -> None:
        await commit(pipe, sql_store, pipe.take_flush(), checkpoint=None, source="test",
                     now=NOW)

    await pipe.ingest([impression_message(i, line_item=100, ts_usecs=NOW_US - 5000)
                       for i in range(3)])
    await push()
    assert len(synced) == 2  # the segment and, new, its directory
    await pipe.ingest([impression_message(3, line_item=100, ts_usecs=NOW_US - 5000)])
    await push()
    assert len(synced) == 3  # the segment only

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    await pipe.ingest([impression_message(4, line_item=100, ts_usecs=NOW_US - 5000)])
    with pytest.raises(StorageError, match="durable: Input/output error"):
        await push()
    assert pipe.backlog > 0  # not committed, kept for the next commit
    totals = await sql_store.read_cell_totals(seed_spec.id)
    from campaignd.stores.sql.models import COUNTER_COLUMNS
    assert totals[cells[0].cell_id][COUNTER_COLUMNS.index("impressions")] == 4
    monkeypatch.setattr(os, "fsync", real_fsync)
    await push()
    totals = await sql_store.read_cell_totals(seed_spec.id)
    assert totals[cells[0].cell_id][COUNTER_COLUMNS.index("impressions")] == 5
    await store.close()
