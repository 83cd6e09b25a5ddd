"""The daemon's event feed: read the adapter's stream, count it through a ``Pipeline``, commit.

``EventIngestor`` reads the DSP's feed in batches, decoding the next batch while the current one
is deduplicated and counted, and every ``flush_s`` commits what was counted together with the
cursor after it (``ingest.commit``: one SQL transaction, then the hot store). A restart resumes
from the committed cursor with the committed totals: nothing is lost or counted twice. Nothing
in a message can crash the loop; DSP and store failures are retried with backoff, and reading
pauses while the stores are behind (the uncommitted backlog never grows without bound). A batch
the pipeline itself keeps failing on (a bug some message triggers: ``ISOLATE_AFTER`` failures
in a row without the cursor moving) is then counted one message at a time, and the messages it
fails on are dead-lettered as ``internal_error`` (kept whole, to ``retry`` once fixed): one
message can never stop the feed.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from campaignd.clock import Clock
from campaignd.errors import DSPError, StorageError, leaves
from campaignd.logs import Outage, get_logger
from campaignd.metrics import Metrics
from campaignd.pipeline.ingest import Pipeline, Prepared, commit, let_io_start, stream_base
from campaignd.pipeline.watch import RefusalWatch

log = get_logger("campaignd.ingest")

ISOLATE_AFTER = 3
"""Unexpected failures in a row on the same batch before it is counted message by message."""
STALE_AFTER_S = 5.0
"""A feed failing this long makes the counts not current: decisions and changes wait."""
PROBLEM_AFTER_S = 10.0
"""Seconds a store or the DSP may fail before ``campaignd status`` reports it (a blip is not a
problem to wake anyone for; the retries are logged)."""


class EventIngestor:
    """The daemon's feed loop and flush loop over one ``Pipeline`` (see the module docstring)."""

    def __init__(self, *, adapter: Any, sql: Any, pipeline: Pipeline, clock: Clock,
                 metrics: Metrics, poll_s: float = 0.25, batch: int = 5000,
                 checkpoint: str = "events", flush_s: float = 1.0,
                 max_backlog: int = 2_000_000,
                 on_commit: Callable[[], Any] | None = None) -> None:
        self.adapter = adapter
        self.sql = sql
        self.pipeline = pipeline
        self.clock = clock
        self.metrics = metrics
        self.poll_s = poll_s
        self.batch = batch
        self.checkpoint_name = checkpoint
        self.flush_s = flush_s
        self.max_backlog = max_backlog
        self.on_commit = on_commit
        self.base = stream_base(checkpoint)
        self.cursor: str | None = None
        self.committed_cursor: str | None = None
        self.last_error: str | None = None
        self.flushes = 0
        self.flush_failures = 0
        self.last_flush_s: float | None = None
        self._isolated: tuple[str | None, int] | None = None
        """(cursor, n) while the batch at ``cursor`` is counted message by message and its
        first n messages are counted (or dead-lettered): committed with the cursor (the
        ``<checkpoint>:counted_of_batch`` checkpoint), so that neither a retry nor a restart
        counts them again -- their marks' positions would let them in."""
        self._committed_part = 0
        """The ``n`` of ``_isolated`` as last committed (0: no batch half-counted)."""
        self.feed_outage = Outage(log, "event ingestion failed; retrying")
        """Reading and counting the feed (a hot-store or DSP failure)."""
        self.commit_outage = Outage(
            log, "could not commit ingested events; keeping them for the next flush")
        """Committing the counts to SQL."""
        self.refusals = RefusalWatch(pipeline.stats)
        """Most of the feed refused (a clock off, a changed log format): a problem, and the
        counts are not current."""

    def problems(self, after_s: float = PROBLEM_AFTER_S) -> list[str]:
        """What ``campaignd status`` reports: a failure lasting ``after_s`` or more, with what
        to do about it."""
        out = []
        f, c = self.feed_outage, self.commit_outage
        if f.since is not None and f.failing_for() >= after_s:
            out.append(f"events are not being counted ({f.failing_for():.0f} s, {f.attempts} "
                       f"attempts): {f.error} -- campaignd retries by itself and catches up "
                       "once it answers; decisions and changes to the DSP wait until then")
        if c.since is not None and c.failing_for() >= after_s:
            out.append(f"event counts cannot be committed to the database "
                       f"({c.failing_for():.0f} s, {self.pipeline.backlog} rows kept in "
                       f"memory): {c.error} -- check that the database server is running; "
                       "campaignd commits them by itself once it answers")
        refused = self.refusals.check()
        if refused is not None:
            out.append(refused)
        return out

    def view_problem(self) -> str | None:
        """Why the counts are not current now (the feed has not counted for ``STALE_AFTER_S``
        or more, reading waits for the database, or most events are refused), or None. No
        money decision is made on them meanwhile. (A single failed read, retried within a
        second, holds nothing back.)"""
        if self.feed_outage.since is not None and \
                self.feed_outage.failing_for() >= STALE_AFTER_S:
            return f"the event feed is failing: {self.feed_outage.error}"
        if self.pipeline.backlog > self.max_backlog:
            return (f"reading the feed waits for the database ({self.pipeline.backlog} rows "
                    f"not committed): {self.commit_outage.error}")
        refused = self.refusals.check()
        if refused is not None:
            return f"most events are refused: {refused}"
        return None

    def status(self) -> dict[str, Any]:
        return {**self.pipeline.stats.as_dict(), "cursor": self.cursor,
                "committed_cursor": self.committed_cursor, "backlog": self.pipeline.backlog,
                "flushes": self.flushes, "flush_failures": self.flush_failures,
                "last_flush_s": None if self.last_flush_s is None else round(
                    self.last_flush_s, 4), "last_error": self.last_error}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.cursor = self.committed_cursor = await self.sql.get_checkpoint(
            self.checkpoint_name)
        part = await self.sql.get_checkpoint(self.progress_checkpoint)
        self._committed_part = int(part) if part and part.isdigit() else 0
        if self._committed_part:
            # stopped half-way through a batch counted message by message: finish it so
            self._isolated = (self.cursor, self._committed_part)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._flush_loop)
            task_status.started()
            await self._poll_loop()

    async def _poll_loop(self) -> None:
        backoff = self.poll_s
        stuck = 0  # unexpected failures in a row without the cursor moving
        while True:
            await anyio.lowlevel.checkpoint()  # a cancelled loop stops here, not mid-batch
            started_at = self.cursor
            try:
                if stuck >= ISOLATE_AFTER or self._isolated is not None:
                    await self._isolate()
                    stuck = 0
                await self._stream()
            except Exception as exc:
                # (``_stream`` raises what failed in its task group inside a group)
                outage = _outage(exc)
                if outage is not None:
                    self.last_error = f"{type(outage).__name__}: {outage}"
                    self.feed_outage.failed(self.last_error, retry_in_s=backoff)
                else:  # a bug must not take the daemon down with it
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    stuck = 1 if self.cursor != started_at else stuck + 1
                    log.error("event ingestion failed unexpectedly; retrying",
                              error=self.last_error, retry_in_s=backoff, exc_info=True,
                              batch_one_by_one=stuck >= ISOLATE_AFTER)
            if self.cursor != started_at:
                backoff = self.poll_s  # it had been working: a fresh failure, a short wait
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

    async def _isolate(self) -> None:
        """Count the batch at the cursor one message at a time; a message the pipeline fails
        on is dead-lettered (``internal_error``) instead of stopping the feed. (A message that
        failed half-way through counting may have been marked seen: the dead letter keeps it
        whole for ``campaignd deadletter retry`` once the bug is fixed.)"""
        # (a store failure or a restart half-way through: the messages counted before it are
        # not counted again when the batch is read again -- their marks' positions would let
        # them in. The read takes at least as many as were counted, whatever pipeline.batch is
        # now; those the DSP dropped meanwhile were counted, not lost.)
        done = self._isolated[1] if self._isolated and self._isolated[0] == self.cursor else 0
        batch = await self.adapter.read_events(self.cursor, limit=max(self.batch, done))
        already = min(done, batch.skipped)
        self._gap(batch.skipped - already, self.cursor)
        done -= already
        positions = self._positions(batch)
        failed = 0
        errors: Counter[str] = Counter()
        for i, raw in enumerate(batch.messages):
            if i < done:
                continue
            try:
                await self.pipeline.ingest([raw], None if positions is None
                                           else positions[i:i + 1])
            except (DSPError, StorageError):
                raise
            except Exception as exc:
                failed += 1
                self.pipeline.dead_letter("internal_error", raw if isinstance(raw, bytes)
                                          else str(raw).encode())
                error = f"{type(exc).__name__}: {exc}"[:300]
                if not errors:
                    # One traceback a batch: a bug that every message hits would otherwise
                    # write one per event (thousands a second) to the journal.
                    log.error("the pipeline failed on a message; dead-lettered as "
                              "internal_error", error=error, exc_info=True)
                errors[error] += 1
            # (a flush from here on commits this progress with the cursor)
            self._isolated = (self.cursor, already + i + 1)
        self.cursor = batch.next_cursor
        self._isolated = None
        self.last_error = None
        self.feed_outage.ok("event ingestion works again")
        log.warning("a batch the pipeline kept failing on was counted message by message",
                    messages=len(batch.messages), dead_lettered=failed,
                    errors=dict(errors.most_common(5)))

    async def _stream(self) -> None:
        """Read and prepare the next batch while the previous one is deduplicated and counted.
        The cursor moves only when a batch is counted; after a failure the loop starts again
        from it (prepared batches are dropped: preparing counts nothing)."""
        send, recv = anyio.create_memory_object_stream[tuple[Prepared, str, int, str | None]](1)
        # (the last run's batches prepared and not counted were dropped with it)
        self.pipeline.classifier.clear_pending()

        async def count() -> None:
            async with recv:
                async for prep, next_cursor, skipped, read_from in recv:
                    self._gap(skipped, read_from)
                    await self.pipeline.complete(prep)
                    self.cursor = next_cursor
                    self.last_error = None
                    self.feed_outage.ok("event ingestion works again")

        async with anyio.create_task_group() as tg:
            tg.start_soon(count)
            async with send:
                cursor = self.cursor
                while True:
                    await anyio.lowlevel.checkpoint()
                    if self.pipeline.backlog > self.max_backlog:
                        # The stores are behind (or down): stop reading until a flush gets
                        # through.
                        await anyio.sleep(self.poll_s)
                        continue
                    batch = await self.adapter.read_events(cursor, limit=self.batch)
                    prep = self.pipeline.prepare(batch.messages, self._positions(batch))
                    await send.send((prep, batch.next_cursor, batch.skipped, cursor))
                    await let_io_start()
                    cursor = batch.next_cursor
                    await anyio.sleep(self._pause(len(batch.messages)))

    def _pause(self, n: int) -> float:
        """How long to wait before the next read: nothing when the batch was full (more is
        waiting), ``poll_s`` when the feed was empty, a fifth of it in between — short enough
        that an event waits well under a second, long enough not to read a trickle."""
        if n >= self.batch:
            return 0.0
        return self.poll_s if n == 0 else self.poll_s / 5

    def _positions(self, batch: Any) -> range | None:
        if batch.first_seq is None:
            return None
        first = self.base | batch.first_seq
        return range(first, first + len(batch.messages))

    def _gap(self, skipped: int, cursor: str | None) -> None:
        if skipped:
            # The DSP no longer held these: no payload to keep, but never silently dropped.
            self.pipeline.dead_letter("lost_before_read", json.dumps(
                {"cursor": cursor, "skipped": skipped}).encode(), skipped)

    async def poll_once(self) -> int:
        """Read, ingest and count one batch; returns the number of raw messages read."""
        batch = await self.adapter.read_events(self.cursor, limit=self.batch)
        self._gap(batch.skipped, self.cursor)
        await self.pipeline.ingest(batch.messages, self._positions(batch))
        self.cursor = batch.next_cursor
        return len(batch.messages)

    async def _flush_loop(self) -> None:
        while True:
            await anyio.sleep(self.flush_s)
            with contextlib.suppress(StorageError):
                await self.flush()

    @property
    def progress_checkpoint(self) -> str:
        """The checkpoint holding how many messages of the batch at the cursor are counted
        (while one is counted message by message; "0" otherwise)."""
        return f"{self.checkpoint_name}:counted_of_batch"

    async def flush(self) -> None:
        """Commit what was ingested, with the cursor after it (also called at shutdown) -- and,
        while a batch is counted message by message, how many of its messages are."""
        cursor = self.cursor
        iso = self._isolated
        part = iso[1] if iso is not None and iso[0] == cursor else 0
        flush = self.pipeline.take_flush()
        if (not flush and cursor == self.committed_cursor and part == self._committed_part
                and self.pipeline.in_doubt is None):
            return
        t0 = anyio.current_time()
        more = [(self.progress_checkpoint, str(part))] if part != self._committed_part else []
        try:
            await commit(self.pipeline, self.sql, flush,
                         checkpoint=(self.checkpoint_name, cursor) if cursor is not None
                         else None, more_checkpoints=more, source=self.checkpoint_name,
                         now=self.clock.now())
        except StorageError as exc:
            self.flush_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.commit_outage.failed(self.last_error, backlog=self.pipeline.backlog)
            raise
        self.committed_cursor = cursor
        self._committed_part = part
        self.commit_outage.ok("ingested events committed again")
        self.flushes += 1
        self.last_flush_s = anyio.current_time() - t0
        if self.on_commit is not None:
            done = self.on_commit()
            if inspect.isawaitable(done):
                await done


def _outage(exc: Exception) -> DSPError | StorageError | None:
    """The store or DSP failure ``exc`` is (a task group raises what failed in it inside a
    group), or None when it is anything else -- a bug."""
    errors = list(leaves(exc))
    if errors and all(isinstance(e, DSPError | StorageError) for e in errors):
        return errors[0]  # type: ignore[return-value]
    return None


__all__ = ["EventIngestor"]
