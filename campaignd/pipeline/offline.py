"""The pipeline outside the daemon: ``campaignd replay`` and ``campaignd deadletter retry``.

Both run the daemon's ``Pipeline`` over the configured stores (SQL, and the hot store's dedupe
marks), with the campaigns and line items stored in SQL, and commit exactly as the daemon does
(minute, day and total rows, dead letters and a checkpoint in one transaction). They refuse to
run while a daemon uses the same database: its registry would not see their counts, and (with
the in-memory hot store) it owns the dedupe marks.

Replay reads JSON lines in Beeswax's streaming format, gzipped or not. Each file is a stream of
its own: its position is (file content hash, line number), its progress is checkpointed every
``commit_lines`` lines, so an interrupted replay resumes where it stopped and replaying a file
again adds nothing. Timestamps are checked against the file's own newest event (a backfill of
last month's exhaust is fine; an event 72 h older than the rest of its file is not).
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from campaignd.clock import Clock, SystemClock
from campaignd.domain.budget_day import BudgetDay
from campaignd.domain.campaign import atomize
from campaignd.errors import BadInput, CampaigndError
from campaignd.pipeline.ingest import DEDUPE_NAMESPACE, Pipeline, commit, restore, stream_base
from campaignd.pipeline.registry import Registry
from campaignd.pipeline.validate import NO_PAYLOAD
from campaignd.stores.base import HotStore
from campaignd.stores.sql.models import COUNTER_COLUMNS


class DaemonRunning(CampaigndError):
    """A daemon uses this database right now."""


@dataclass
class FileSummary:
    path: str
    sha256: str
    lines: int = 0
    skipped_lines: int = 0
    """Lines replayed before (resumed or replayed again): not read this time."""
    ingested: int = 0
    duplicates: int = 0
    dead: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "lines": self.lines,
                "already_replayed_lines": self.skipped_lines, "ingested": self.ingested,
                "duplicates": self.duplicates, "dead_lettered": sum(self.dead.values()),
                "dead_by_reason": dict(sorted(self.dead.items()))}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_lines(path: Path) -> IO[bytes]:
    """The file's bytes, gunzipped when it starts with gzip's magic number."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _batches(fh: IO[bytes], skip: int, size: int) -> Iterator[tuple[int, list[bytes], list[int]]]:
    """(last line number, messages, their line numbers) in batches; blank lines are skipped
    (they are not events) but keep their numbers."""
    batch: list[bytes] = []
    numbers: list[int] = []
    n = 0
    for n, line in enumerate(fh, start=1):
        if n <= skip:
            continue
        line = line.strip()
        if not line:
            continue
        batch.append(line)
        numbers.append(n)
        if len(batch) >= size:
            yield n, batch, numbers
            batch, numbers = [], []
    yield n, batch, numbers


class OfflineIngest:
    """Stores, registry and checks for an offline pipeline run (use ``async with``)."""

    def __init__(self, settings: Any, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.sql: Any = None
        self.hot: HotStore | None = None
        self.registry = Registry(BudgetDay(settings.dsp.account_timezone))
        self._lock: Any = None
        self.before: dict[str, dict[str, int]] = {}
        """Each campaign's totals before this run (``added`` = now minus these)."""

    async def __aenter__(self) -> OfflineIngest:
        from campaignd.status import STATUS_STALE_S
        from campaignd.stores.daemon_lock import DaemonLock, LockHeld
        from campaignd.stores.opening import (
            database_url,
            masked_database_url,
            open_hot_store,
            open_sql,
        )
        from campaignd.stores.sql.repository import spec_from_dict

        # The daemon's own locks, held for the whole run: a daemon still starting (upgrading,
        # loading its campaigns, syncing them to the DSP, counting already) has published no
        # status yet, or the last run's "stopped"; and one started meanwhile waits for us
        # rather than counting beside us.
        self._lock = DaemonLock(state_dir=self.settings.state_dir,
                                database_url=database_url(self.settings),
                                shown_url=masked_database_url(self.settings))
        try:
            await self._lock.acquire()
        except LockHeld as exc:
            self._lock = None
            pid = f" (pid {exc.holder})" if exc.holder != "unknown" else ""
            raise DaemonRunning(
                f"a daemon{pid} is running on {exc.what or 'this database'}; stop it first "
                "(`systemctl stop campaignd`): its counts would not include this run, and it "
                "owns the dedupe marks") from None
        except BaseException:
            self._lock = None
            raise
        try:
            self.sql = await open_sql(self.settings)
            rec = await self.sql.read_status(self.settings.instance)
            if rec is not None and rec.payload.get("state") != "stopped" and (
                    datetime.now(UTC) - rec.heartbeat_at).total_seconds() < STATUS_STALE_S:
                raise DaemonRunning(
                    f"a daemon (pid {rec.pid}) is using this database; stop it first "
                    "(`systemctl stop campaignd`): its counts would not include this run, "
                    "and it owns the dedupe marks")
            self.hot = await open_hot_store(self.settings, self.clock)
            for summary in await self.sql.list_campaigns():
                detail = await self.sql.get_campaign(summary.id)
                spec = spec_from_dict(detail.spec)
                cells = atomize(spec)
                self.registry.add_campaign(spec, cells)
                routes = {c.dsp_line_item_id: c.cell_id
                          for c in await self.sql.list_cells(spec.id)
                          if c.dsp_line_item_id is not None}
                self.registry.register(spec.id, routes)
                self.before[spec.id] = {
                    m: int(v) for m, v in zip(
                        COUNTER_COLUMNS,
                        [sum(c[i] for c in (await self.sql.read_cell_totals(spec.id)).values())
                         for i in range(len(COUNTER_COLUMNS))], strict=True)}
            self.registry.know(await self.sql.known_line_item_ids())
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.hot is not None:
            await self.hot.close()
            self.hot = None
        if self.sql is not None:
            await self.sql.close()
            self.sql = None
        if self._lock is not None:
            await self._lock.release()
            self._lock = None

    def pipeline(self, *, reference: str, sampled: bool = True) -> Pipeline:
        """``sampled=False``: every refused event of an unknown line item is kept whole
        (a retry: a letter kept whole must not turn into a count)."""
        assert self.hot is not None
        p = self.settings.pipeline
        return Pipeline(self.registry, self.hot, clock=self.clock,
                        dedupe_window_s=p.dedupe_window_s, max_future_s=p.max_future_s,
                        reference=reference, context_capacity=p.context_capacity,
                        namespace=DEDUPE_NAMESPACE,
                        unknown_samples=p.unknown_line_item_samples if sampled else None)

    def line_items(self) -> int:
        return len(self.registry.routes)

    def added(self) -> dict[str, dict[str, int]]:
        """Per campaign, what this run added to the counters (non-zero ones)."""
        out = {}
        for t in self.registry.tables:
            now = t.totals()
            before = self.before.get(t.campaign_id, {})
            delta = {m: n - before.get(m, 0) for m, n in now.items() if n - before.get(m, 0)}
            if delta:
                out[t.campaign_id] = delta
        return out

    # --- replay ------------------------------------------------------------------------

    async def replay(self, paths: Sequence[Path], *, batch: int = 5000,
                     commit_lines: int = 100_000,
                     progress: Callable[[str, int], None] | None = None) -> list[FileSummary]:
        """Replay each file (see the module docstring); ``progress(path, bytes_read)``."""
        out = []
        for path in paths:
            if not path.is_file():
                raise BadInput("is not a readable file", field="FILE", value=str(path),
                               fix="give JSON-lines files in Beeswax's streaming format")
        for path in paths:
            out.append(await self._replay_one(path, batch, commit_lines, progress))
        return out

    async def _replay_one(self, path: Path, batch: int, commit_lines: int,
                          progress: Callable[[str, int], None] | None) -> FileSummary:
        sha = file_sha256(path)
        name = f"replay:{sha}"
        done = int(await self.sql.get_checkpoint(name) or 0)
        summary = FileSummary(str(path), sha, skipped_lines=done)
        pipe = self.pipeline(reference="stream")
        await restore(pipe, self.sql, now=self.clock.now())
        base = stream_base(name)
        since_commit = 0
        last = done
        with open_lines(path) as fh:
            raw_fh = getattr(fh, "fileobj", None) or fh
            try:
                for last, msgs, numbers in _batches(fh, done, batch):
                    if msgs:
                        r = await pipe.ingest(msgs, [base | n for n in numbers])
                        summary.ingested += r.accepted
                        summary.duplicates += r.duplicates
                        summary.dead.update(r.dead)
                        since_commit += len(msgs)
                    if since_commit >= commit_lines:
                        await self._commit(pipe, name, last)
                        since_commit = 0
                    if progress is not None:
                        progress(str(path), raw_fh.tell())
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                # a cut or corrupt gzip file: keep what was counted, say where it broke
                await self._commit(pipe, name, max(last, done))
                why = "it ends early" if isinstance(exc, EOFError) else f"corrupt ({exc})"
                raise BadInput(f"is not valid gzip after line {max(last, done)}: {why}",
                               field="FILE", value=str(path),
                               fix="the events before that line are counted; give the whole "
                                   "file (or gunzip what is left and replay that)") from None
            summary.lines = last
        await self._commit(pipe, name, max(last, done))
        return summary

    async def _commit(self, pipe: Pipeline, checkpoint: str, line: int) -> None:
        await commit(pipe, self.sql, pipe.take_flush(), checkpoint=(checkpoint, str(line)),
                     source=checkpoint, now=self.clock.now())

    # --- dead letters ------------------------------------------------------------------

    async def retry(self, letters: Sequence[Any]) -> dict[str, Any]:
        """Run refused events through the pipeline again (e.g. after their line item became
        known). An accepted one — or a duplicate of one already counted — leaves the dead
        letter; one refused again stays, under its new reason. A letter with a count of n is
        one payload delivered n times: it counts once at most. An ``internal_error`` letter whose
        event is already marked seen stays (``marked_but_maybe_not_counted``)."""
        pipe = self.pipeline(reference="clock", sampled=False)
        await restore(pipe, self.sql, now=self.clock.now())
        base = stream_base("deadletter")
        gone: list[int] = []
        still: Counter[str] = Counter()
        moved: dict[bytes, int] = {}
        ingested = duplicates = resolved = uncertain = 0
        for le in letters:
            if le.reason in NO_PAYLOAD:
                still[le.reason] += le.count  # no payload: nothing to retry
                continue
            r = await pipe.ingest([le.raw], [base | le.id])
            if r.duplicates and le.reason == "internal_error":
                # The pipeline failed on it after marking it seen (a bug past the dedupe):
                # whether it was counted cannot be told, so the letter stays, to be judged
                # against the counts -- never dropped as if counted.
                still[le.reason] += le.count
                uncertain += 1
                continue
            if r.accepted or r.duplicates:
                ingested += r.accepted
                duplicates += r.duplicates
                resolved += 1
                gone.append(le.id)
                continue
            reason = next(iter(r.dead))
            still[reason] += le.count
            if reason != le.reason:  # refused for another reason now: re-filed under it
                gone.append(le.id)
                moved[bytes(le.raw)] = moved.get(bytes(le.raw), 0) + le.count
        flush = pipe.take_flush()
        refiled = [(reason, raw) for reason, raw in flush.letters if raw in moved]
        # Refused again for the same reason: the letter stays as it is (first seen, count).
        await pipe.hot.sync()  # the marks before the counts they guard
        await self.sql.commit_ingest(
            minutes=pipe.minute_rows(flush.pending), letters=refiled,
            letter_counts=[moved[raw] for _, raw in refiled], letter_source="deadletter retry",
            now=self.clock.now(), delete_dead_letters=gone)
        return {"retried": len(letters), "ingested": ingested, "duplicates": duplicates,
                "resolved": resolved, "still_refused": dict(sorted(still.items())),
                "reason_changed": len(refiled), "marked_but_maybe_not_counted": uncertain}


def summary_json(files: Sequence[FileSummary], added: dict[str, dict[str, int]],
                 ) -> dict[str, Any]:
    total: Counter[str] = Counter()
    for f in files:
        total["lines"] += f.lines
        total["ingested"] += f.ingested
        total["duplicates"] += f.duplicates
    dead: Counter[str] = Counter()
    for f in files:
        dead.update(f.dead)
    return {"files": [f.as_dict() for f in files], **total,
            "dead_lettered": sum(dead.values()), "dead_by_reason": dict(sorted(dead.items())),
            "added_per_campaign": added}


__all__ = ["DaemonRunning", "FileSummary", "OfflineIngest", "open_lines", "summary_json"]
