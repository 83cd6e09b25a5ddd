"""A durable spool of pushed log messages: what the receiver acknowledged, the pipeline reads.

Beeswax pushes its streaming log messages (HTTP or Kinesis) and forgets them once they are
acknowledged; they carry no stream position. The receiver (``campaignd.web.receiver``) writes
every pushed message here and acknowledges only after the write is on disk (``fsync``), so a
crash can lose nothing that Beeswax was told is safe. The event feed (``EventIngestor``) reads
the spool like any DSP feed: the cursor is the next sequence number, a message's sequence
number is its stream position (dedupe tells a message read again after a restart from a
duplicate delivery), and the cursor is committed with the counts. Segments wholly below the
committed cursor are deleted (``release``), so the spool holds what is not yet counted.

Layout: ``<dir>/<first sequence number, 20 digits>.spool`` segment files, appended in order;
a new segment starts when the last one reaches ``segment_bytes``. A record is an 8-byte header
(payload length, CRC-32 of the payload; little-endian) and the payload (the raw message bytes,
unchanged). On open, a torn record at the end of the last segment (a crash mid-write, never
acknowledged) is cut off. A record that fails its CRC elsewhere (disk corruption) makes the rest
of its segment unreadable: the reader skips to the next segment and reports exactly how many
messages were lost (segment names carry their first sequence number), which the feed
dead-letters as ``lost_before_read`` — nothing is dropped silently.

Thread-safe: the receiver appends and the feed reads from worker threads at the same time; a
reader sees only records already synced to disk.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from campaignd.dsp.base import EventBatch
from campaignd.logs import get_logger

log = get_logger("campaignd.spool")

_HEADER = struct.Struct("<II")
_SUFFIX = ".spool"
MAX_RECORD_BYTES = 64 << 20
"""Larger payloads are refused (the receiver's body limit is lower)."""


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` already: the pushing side must retry later."""


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    first_seq: int
    next_seq: int
    segments: int
    bytes: int


def _name(first_seq: int) -> str:
    return f"{first_seq:020d}{_SUFFIX}"


class Spool:
    """See the module docstring. Call ``open`` first (it recovers the directory)."""

    def __init__(self, directory: Path | str, *, segment_bytes: int = 64 << 20,
                 max_bytes: int = 10 << 30, fsync: bool = True) -> None:
        if segment_bytes < 1024:
            raise ValueError("segment_bytes must be at least 1024")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()  # segment list, sizes, the next sequence number
        self._write_lock = threading.Lock()  # one writer at a time
        self._firsts: list[int] = []
        self._sizes: dict[int, int] = {}
        self._total = 0
        self._durable_seq = 0
        """The next sequence number: every record below it is on disk (appends are serial)."""
        self._active: int | None = None  # file descriptor of the last segment
        self._read_at: tuple[int, int, int] | None = None
        """(seq, segment, byte offset) after the last read: the next read continues there."""
        self._rotate = False  # the next append starts a new segment (corruption in the last)
        self.appended = 0

    # --- opening -------------------------------------------------------------------------

    def open(self, *, min_next_seq: int = 0) -> None:
        """Recover the directory: list segments, cut a torn tail off the last one, and continue
        numbering after it — or at ``min_next_seq`` if that is higher (the committed cursor:
        a spool directory that was emptied must not hand out positions the feed has passed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        firsts = sorted(int(p.name[:-len(_SUFFIX)]) for p in self.directory.glob("*" + _SUFFIX)
                        if p.name[:-len(_SUFFIX)].isdigit())
        sizes = {f: (self.directory / _name(f)).stat().st_size for f in firsts}
        next_seq = 0
        rotate = False
        if firsts:
            last = firsts[-1]
            count, good, corrupt = _scan(self.directory / _name(last))
            if good < sizes[last]:
                # an incomplete record at the very end: a crash mid-write, never acknowledged
                log.warning("spool: cut a torn record off the last segment (never acknowledged)",
                            segment=_name(last), bytes=sizes[last] - good)
                with open(self.directory / _name(last), "r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
                sizes[last] = good
            if corrupt:
                # complete records that fail their CRC (disk corruption): they keep their
                # sequence numbers (the reader reports them lost); new ones go to a new segment
                log.error("spool: corrupt records in the last segment", segment=_name(last),
                          corrupt=corrupt)
                rotate = True
            next_seq = last + count
        if min_next_seq > next_seq:
            if firsts:
                log.warning("spool: behind the committed cursor; numbering continues from it",
                            spool_next=next_seq, cursor=min_next_seq)
            next_seq = min_next_seq
            # a segment starting at the cursor keeps names and sequence numbers in step
            if firsts and sizes[firsts[-1]] == 0:
                os.unlink(self.directory / _name(firsts[-1]))
                del sizes[firsts[-1]]
                firsts.pop()
            firsts.append(next_seq)
            sizes[next_seq] = 0
            (self.directory / _name(next_seq)).touch()
            _fsync_dir(self.directory)
        with self._lock:
            self._firsts, self._sizes = firsts, sizes
            self._total = sum(sizes.values())
            self._durable_seq = next_seq
            self._active = None
            self._read_at = None
            self._rotate = rotate

    def close(self) -> None:
        with self._write_lock:
            if self._active is not None:
                os.close(self._active)
                self._active = None

    # --- writing -------------------------------------------------------------------------

    def append(self, payloads: Sequence[bytes]) -> int:
        """Write ``payloads`` as consecutive records and sync them to disk; returns the first
        one's sequence number. Raises ``SpoolFull`` (nothing written) when they would take the
        spool past ``max_bytes``, ``ValueError`` for a payload above ``MAX_RECORD_BYTES``."""
        if not payloads:
            return self._durable_seq
        parts: list[bytes] = []
        for p in payloads:
            if not p:
                raise ValueError("an empty message cannot be spooled")
            if len(p) > MAX_RECORD_BYTES:
                raise ValueError(f"a message of {len(p)} bytes is above the spool's limit of "
                                 f"{MAX_RECORD_BYTES}")
            parts.append(_HEADER.pack(len(p), zlib.crc32(p)))
            parts.append(p)
        data = b"".join(parts)
        with self._write_lock:
            with self._lock:
                if self._total + len(data) > self.max_bytes:
                    raise SpoolFull(f"the spool holds {self._total} bytes; {len(data)} more would "
                                    f"pass its limit of {self.max_bytes}")
                first = self._durable_seq
                new_segment = (not self._firsts or self._rotate
                               or self._sizes[self._firsts[-1]] >= self.segment_bytes)
            if new_segment:
                self._start_segment(first)
                with self._lock:  # only now: a failed start must not append behind bad records
                    self._rotate = False
            fd = self._fd()
            written = 0
            try:
                while written < len(data):
                    written += os.write(fd, data[written:])
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                # a partial write is cut off so that the next append starts on a record
                with self._lock:
                    size = self._sizes[self._firsts[-1]]
                os.ftruncate(fd, size)
                raise
            with self._lock:
                self._sizes[self._firsts[-1]] += len(data)
                self._total += len(data)
                self._durable_seq = first + len(payloads)
            self.appended += len(payloads)
        return first

    def _start_segment(self, first: int) -> None:
        if self._active is not None:
            os.close(self._active)
            self._active = None
        path = self.directory / _name(first)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if self.fsync:
                _fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        self._active = fd
        with self._lock:
            if not self._firsts or self._firsts[-1] != first:
                self._firsts.append(first)
                self._sizes[first] = 0

    def _fd(self) -> int:
        if self._active is None:
            path = self.directory / _name(self._firsts[-1])
            self._active = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return self._active

    # --- reading -------------------------------------------------------------------------

    def read(self, seq: int | None, limit: int) -> EventBatch:
        """Up to ``limit`` messages from sequence number ``seq`` (None: the oldest held), as an
        ``EventBatch`` whose ``next_cursor`` is the sequence number after them and whose
        ``first_seq`` is the first one's. ``skipped`` counts messages between ``seq`` and the
        first returned that the spool no longer holds or cannot read."""
        with self._lock:
            firsts = list(self._firsts)
            durable = self._durable_seq
            read_at = self._read_at
        oldest = firsts[0] if firsts else durable
        start = oldest if seq is None else seq
        skipped = 0
        if start < oldest:
            skipped, start = oldest - start, oldest
        if start >= durable or limit <= 0:
            return EventBatch([], str(start), skipped, start)
        messages: list[bytes] = []
        seq_now = start
        first_msg: int | None = None
        while seq_now < durable and len(messages) < limit:
            k = bisect.bisect_right(firsts, seq_now) - 1
            seg = firsts[k]
            seg_end = firsts[k + 1] if k + 1 < len(firsts) else durable
            offset = (read_at[2] if read_at is not None and read_at[0] == seq_now
                      and read_at[1] == seg else None)
            got, offset_after, ok = self._read_segment(seg, seq_now, offset,
                                                       min(limit - len(messages),
                                                           seg_end - seq_now))
            if got is None:  # the segment is gone (released meanwhile)
                if messages:  # report the loss on the next read, where it starts
                    break
                skipped += seg_end - seq_now
                seq_now = seg_end
                read_at = None
                continue
            if got and first_msg is None:
                first_msg = seq_now
            messages.extend(got)
            seq_now += len(got)
            read_at = (seq_now, seg, offset_after)
            if not ok:
                if k == len(firsts) - 1:
                    with self._lock:  # new appends must not land behind the bad record
                        self._rotate = True
                lost = seg_end - seq_now
                log.error("spool: a corrupt record; the rest of its segment is unreadable",
                          segment=_name(seg), seq=seq_now, lost=lost)
                if messages:  # report the loss on the next read, where it starts
                    break
                skipped += lost
                seq_now = seg_end
                read_at = None
        with self._lock:
            self._read_at = read_at
        return EventBatch(messages, str(seq_now), skipped, first_msg)

    def _read_segment(self, seg: int, seq: int, offset: int | None, n: int
                      ) -> tuple[list[bytes] | None, int, bool]:
        """``n`` records from ``seq`` in segment ``seg`` (its byte ``offset`` if known). Returns
        (messages, offset after them, whether every record was sound); messages None when the
        file is gone."""
        path = self.directory / _name(seg)
        try:
            fh = open(path, "rb")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            return None, 0, True
        out: list[bytes] = []
        with fh:
            if offset is None:  # skip to ``seq`` (once after a restart, then the offset is kept)
                pos = 0
                for _ in range(seq - seg):
                    head = fh.read(_HEADER.size)
                    if len(head) < _HEADER.size:
                        return out, pos, False
                    length, _crc = _HEADER.unpack(head)
                    pos += _HEADER.size + length
                    fh.seek(pos)
                offset = pos
            else:
                fh.seek(offset)
            pos = offset
            unpack, size, crc32 = _HEADER.unpack_from, _HEADER.size, zlib.crc32
            while len(out) < n:
                # read a chunk of records at a time; a record never spans two chunks' parse
                chunk = fh.read(1 << 20)
                if not chunk:
                    return out, pos, False
                i = 0
                while len(out) < n:
                    if i + size > len(chunk):
                        if i == 0:  # a few stray bytes where a header should be
                            return out, pos, False
                        break
                    length, crc = unpack(chunk, i)
                    if length == 0:  # never written by append: garbage
                        return out, pos, False
                    end = i + size + length
                    if end > len(chunk):
                        if i == 0:  # a record larger than the chunk: read it whole
                            rest = fh.read(end - len(chunk))
                            chunk += rest
                            if end > len(chunk):
                                return out, pos, False
                        else:
                            break
                    payload = chunk[i + size:end]
                    if crc32(payload) != crc:
                        return out, pos, False
                    out.append(payload)
                    i = end
                    pos += size + length
                fh.seek(pos)
        return out, pos, True

    # --- retention -----------------------------------------------------------------------

    def release(self, seq: int) -> int:
        """Delete the segments holding only messages before ``seq`` (the committed cursor);
        returns how many. The last segment goes too once everything in it is committed (the
        next append starts a new one), so a spool the feed keeps up with never fills."""
        with self._write_lock:  # no append while the last segment may go
            with self._lock:
                firsts = list(self._firsts)
                everything = seq >= self._durable_seq
            gone = [firsts[k] for k in range(len(firsts) - 1) if firsts[k + 1] <= seq]
            if everything and firsts and self._sizes.get(firsts[-1], 0) > 0:
                gone.append(firsts[-1])
                if self._active is not None:
                    os.close(self._active)
                    self._active = None
            for f in gone:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.directory / _name(f))
            if gone:
                with self._lock:
                    for f in gone:
                        self._firsts.remove(f)
                        self._total -= self._sizes.pop(f, 0)
        return len(gone)

    # --- state ---------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._durable_seq

    @property
    def bytes(self) -> int:
        return self._total

    def status(self) -> SpoolStatus:
        with self._lock:
            first = self._firsts[0] if self._firsts else self._durable_seq
            return SpoolStatus(first, self._durable_seq, len(self._firsts), self._total)


class SpoolFeed:
    """The spool as the event feed's source: ``read_events`` as a DSP adapter has it (blocking
    file I/O runs on a worker thread)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    async def read_events(self, cursor: str | None, *, limit: int = 1000) -> EventBatch:
        import anyio.to_thread

        seq = None if cursor is None else int(cursor)
        return await anyio.to_thread.run_sync(self.spool.read, seq, limit)


def _scan(path: Path) -> tuple[int, int, int]:
    """Walk a segment's records from the start: (records, bytes up to the end of the last
    complete one, complete records whose CRC fails). An incomplete record can only be the
    last (a torn write); a complete one with a bad CRC still holds its sequence number."""
    count = good = corrupt = 0
    size = _HEADER.size
    total = path.stat().st_size
    with open(path, "rb") as fh:
        while good + size <= total:
            fh.seek(good)
            length, crc = _HEADER.unpack(fh.read(size))
            end = good + size + length
            if end > total or length == 0:  # torn, or a zero-filled tail after a crash
                break
            if zlib.crc32(fh.read(length)) != crc:
                corrupt += 1
            count += 1
            good = end
    return count, good, corrupt


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["MAX_RECORD_BYTES", "Spool", "SpoolFeed", "SpoolFull", "SpoolStatus"]
