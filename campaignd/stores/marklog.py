"""The in-memory hot store's dedupe marks on disk, so that they survive a restart.

An append-only log in segment files (``<dir>/seg-<n>.log``): each ``mark_seen`` call that made
new marks appends one JSON line ``[namespace, [ids], [positions], expiry]`` and flushes it
before returning (a crashed process loses nothing it acknowledged; a torn last line is ignored
on replay). ``sync`` makes what was written durable (fsync; the directory too after a new
segment): the pipeline calls it before every SQL commit of the counts the marks guard, so a
power loss cannot keep the counts and lose their marks (a redelivery would be counted again).
A line that cannot be written whole (a full disk) is cut off again before the error
is raised, so the next line never joins a torn one (both would be lost on replay) and no mark
the store refused reaches the log.

A segment is deleted, never rewritten, once none of its marks can still be live: when ``keep``
marks (the store's cap) have been written after it — the store evicts the oldest-made marks
first, so those marks are gone from memory too — or when all of its marks have expired. Disk use
is therefore bounded by about ``keep`` marks plus one segment, and no write ever stalls on a
compaction.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

SEGMENT_MARKS = 100_000


@dataclass(slots=True)
class _Segment:
    path: Path
    last_mark: int
    """Number of marks written (in total) when this segment ended."""
    max_expiry: float


class MarkLog:
    def __init__(self, directory: Path, *, keep: int,
                 segment_marks: int = SEGMENT_MARKS) -> None:
        self.directory = directory
        self.keep = keep
        self.segment_marks = segment_marks
        directory.mkdir(parents=True, exist_ok=True)
        self._segments: deque[_Segment] = deque()
        self._written = 0
        self._current: BinaryIO | None = None
        self._current_seg: _Segment | None = None
        self._current_marks = 0
        self._dir_dirty = False
        self._next_number = 1 + max((self._number(p) for p in self._files()), default=0)

    @staticmethod
    def _number(path: Path) -> int:
        try:
            return int(path.stem.split("-", 1)[1])
        except (IndexError, ValueError):
            return 0

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*.log"), key=self._number)

    def replay(self, now: float) -> Iterator[tuple[str, str, float, int]]:
        """Every mark still unexpired, oldest first: (namespace, id, expiry, position)."""
        for path in self._files():
            max_exp = 0.0
            with open(path, "rb") as fh:
                for line in fh:
                    try:
                        ns, ids, pos, expires = msgspec.json.decode(line)
                    except (msgspec.DecodeError, ValueError):
                        continue  # a torn last line
                    exps = expires if isinstance(expires, list) else [expires] * len(ids)
                    for id_, p, exp in zip(ids, pos, exps, strict=True):
                        max_exp = max(max_exp, exp)
                        self._written += 1
                        if exp > now:
                            yield ns, id_, float(exp), int(p)
            self._segments.append(_Segment(path, self._written, max_exp))
        self.prune(now)

    def append(self, namespace: str, ids: Sequence[str], positions: Sequence[int],
               expires: float, now: float) -> None:
        if self._current is None or self._current_marks >= self.segment_marks:
            self._roll()
        assert self._current is not None and self._current_seg is not None
        data = memoryview(msgspec.json.encode([namespace, list(ids), list(positions),
                                               expires]) + b"\n")
        f = self._current
        start = f.seek(0, 2)
        try:
            while data:  # (unbuffered: a short write says how much reached the file)
                n = f.write(data)
                data = data[n or 0:]
        except OSError:
            try:
                f.truncate(start)  # no torn line left behind
            except OSError:  # then a new segment: the torn line stays last in its own
                f.close()
                self._current = None
            raise
        self._written += len(ids)
        self._current_marks += len(ids)
        self._current_seg.last_mark = self._written
        self._current_seg.max_expiry = max(self._current_seg.max_expiry, expires)
        self.prune(now)

    def _roll(self) -> None:
        if self._current is not None:
            self._current.close()
        path = self.directory / f"seg-{self._next_number:08d}.log"
        self._next_number += 1
        self._current = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open for appends
        self._current_seg = _Segment(path, self._written, 0.0)
        self._segments.append(self._current_seg)
        self._current_marks = 0
        self._dir_dirty = True

    def sync_handles(self) -> list[int]:
        """Duplicated descriptors to fsync for ``sync`` (taken on the caller's thread, so that
        the fsync may run on another while appends go on); the caller closes them."""
        out = []
        if self._current is not None:
            out.append(os.dup(self._current.fileno()))
        if self._dir_dirty:
            out.append(os.open(self.directory, os.O_RDONLY))
            self._dir_dirty = False
        return out

    @staticmethod
    def sync(handles: Sequence[int]) -> None:
        """fsync and close ``handles`` (from ``sync_handles``); raises ``OSError``."""
        try:
            for fd in handles:
                os.fsync(fd)
        finally:
            for fd in handles:
                os.close(fd)

    def prune(self, now: float) -> None:
        """Delete the segments none of whose marks can be live any more."""
        while self._segments and self._segments[0] is not self._current_seg:
            seg = self._segments[0]
            if self._written - seg.last_mark >= self.keep or seg.max_expiry <= now:
                self._segments.popleft()
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
            else:
                break

    def segments(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None


__all__ = ["MarkLog"]
