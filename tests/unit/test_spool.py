"""The receiver's spool: what was appended is read back in order with its sequence numbers,
across segments, reopenings, torn writes, corruption and release."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignd.pipeline.spool import Spool, SpoolFull


def payloads(first: int, n: int) -> list[bytes]:
    return [b'{"n": %d, "pad": "%s"}' % (i, b"x" * (i % 50)) for i in range(first, first + n)]


def filled(directory: Path, appends: int, segment_bytes: int = 1024) -> tuple[Spool, list[int]]:
    """A spool with ``appends`` batches of 10 messages; its segments' first numbers."""
    sp = Spool(directory, segment_bytes=segment_bytes)
    sp.open()
    for i in range(appends):
        sp.append(payloads(i * 10, 10))
    return sp, sorted(int(p.stem) for p in directory.glob("*.spool"))


def record_offset(data: bytes | bytearray, k: int) -> int:
    """Where record ``k`` of a segment file starts."""
    off = 0
    for _ in range(k):
        off += 8 + int.from_bytes(data[off:off + 4], "little")
    return off


def read_all(spool: Spool, cursor: int | None, limit: int = 7) -> tuple[list[bytes], int, int]:
    """Everything from ``cursor`` in reads of ``limit``: (messages, next cursor, skipped)."""
    out: list[bytes] = []
    skipped = 0
    while True:
        b = spool.read(cursor, limit)
        skipped += b.skipped
        if b.messages:
            assert b.first_seq is not None
            assert b.first_seq == (int(b.next_cursor) - len(b.messages))
        out += b.messages
        if not b.messages and int(b.next_cursor) == (cursor or 0) + b.skipped:
            return out, int(b.next_cursor), skipped
        cursor = int(b.next_cursor)


def test_append_and_read_across_segments(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=1024)
    sp.open()
    first = [sp.append(payloads(i * 10, 10)) for i in range(6)]
    assert first == [0, 10, 20, 30, 40, 50]
    assert sp.status().segments > 1
    got, nxt, skipped = read_all(sp, None)
    assert got == payloads(0, 60) and nxt == 60 and skipped == 0
    # from the middle, then nothing more until something is appended
    b = sp.read(33, 5)
    assert b.messages == payloads(33, 5) and b.first_seq == 33 and b.next_cursor == "38"
    assert sp.read(60, 5).messages == []
    sp.append([b"late"])
    assert sp.read(60, 5).messages == [b"late"]


def test_reopen_continues_numbering_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=1024)
    sp.open()
    sp.append(payloads(0, 25))
    sp.close()
    last = sorted(tmp_path.glob("*.spool"))[-1]
    with open(last, "ab") as fh:  # a crash mid-write: a header promising more than was written
        fh.write(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"tor")
    again = Spool(tmp_path, segment_bytes=1024)
    again.open()
    assert again.next_seq == 25
    assert again.append([b"next"]) == 25
    got, nxt, _ = read_all(again, None)
    assert got == [*payloads(0, 25), b"next"] and nxt == 26


def test_a_corrupt_record_loses_exactly_the_rest_of_its_segment(tmp_path: Path) -> None:
    sp, firsts = filled(tmp_path, 8)
    assert len(firsts) >= 3
    seg, seg_end = firsts[0], firsts[1]
    path = tmp_path / f"{seg:020d}.spool"
    data = bytearray(path.read_bytes())
    data[record_offset(data, 2) + 8] ^= 0xFF  # a payload byte of the segment's third record
    path.write_bytes(bytes(data))
    got, nxt, skipped = read_all(sp, 0, limit=100)
    assert skipped == seg_end - (seg + 2)
    assert got == payloads(0, 2) + payloads(seg_end, 80 - seg_end)
    assert nxt == 80


def test_release_deletes_only_wholly_counted_segments(tmp_path: Path) -> None:
    sp, firsts = filled(tmp_path, 6)
    before = sp.bytes
    assert sp.release(firsts[1] + 1) == 1  # only the first segment is wholly below
    assert sorted(int(p.stem) for p in tmp_path.glob("*.spool")) == firsts[1:]
    assert sp.bytes < before
    assert sp.release(59) == len(firsts) - 2  # the last one holds an uncounted message
    assert len(list(tmp_path.glob("*.spool"))) == 1
    # a cursor behind what is held reads on from the oldest held, counting the gap
    b = sp.read(0, 1000)
    assert b.skipped == firsts[-1] and b.messages == payloads(firsts[-1], 60 - firsts[-1])
    # everything counted: the last segment goes too, and numbering carries on
    assert sp.release(60) == 1
    assert list(tmp_path.glob("*.spool")) == [] and sp.bytes == 0
    assert sp.append([b"next"]) == 60
    assert sp.read(60, 5).messages == [b"next"]
    sp.close()
    again = Spool(tmp_path)
    again.open(min_next_seq=60)
    assert again.next_seq == 61


def test_full_spool_refuses_without_writing_until_the_feed_catches_up(tmp_path: Path) -> None:
    sp = Spool(tmp_path, segment_bytes=64 * 1024, max_bytes=600)  # one segment never fills
    sp.open()
    sp.append(payloads(0, 10))
    with pytest.raises(SpoolFull):
        sp.append(payloads(10, 20))
    assert sp.next_seq == 10
    got, nxt, _ = read_all(sp, None)
    assert got == payloads(0, 10)
    sp.release(nxt)  # counted and committed: room again
    assert sp.append(payloads(10, 5)) == 10
    assert read_all(sp, nxt)[0] == payloads(10, 5)


def test_corruption_in_the_last_segment_keeps_numbering_and_reports_the_loss(
        tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.open()
    sp.append(payloads(0, 40))
    sp.close()
    [path] = tmp_path.glob("*.spool")
    data = bytearray(path.read_bytes())
    data[record_offset(data, 5) + 10] ^= 0xFF  # record 5's payload
    path.write_bytes(bytes(data))
    again = Spool(tmp_path)
    again.open(min_next_seq=3)
    assert again.next_seq == 40  # acknowledged records keep their numbers
    assert again.append([b"new"]) == 40  # in a segment of its own, after the bad one
    got, nxt, skipped = read_all(again, 3, limit=100)
    assert got == [*payloads(3, 2), b"new"] and skipped == 35 and nxt == 41


def test_a_failed_segment_start_still_keeps_new_records_off_a_corrupt_segment(
        tmp_path: Path) -> None:
    """After corruption in the last segment, an append whose new segment cannot be created
    (here a directory in the way: EISDIR, as a full or read-only disk fails it) is refused,
    and the next one still goes to a new segment, not behind the bad record where it would
    be acknowledged and then lost."""
    sp = Spool(tmp_path)
    sp.open()
    sp.append(payloads(0, 10))
    sp.close()
    [path] = tmp_path.glob("*.spool")
    data = bytearray(path.read_bytes())
    data[record_offset(data, 5) + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    again = Spool(tmp_path)
    again.open()
    (tmp_path / f"{10:020d}.spool").mkdir()
    with pytest.raises(OSError):
        again.append([b"refused"])
    (tmp_path / f"{10:020d}.spool").rmdir()
    assert again.append([b"kept"]) == 10
    got, nxt, skipped = read_all(again, None, limit=100)
    assert got == [*payloads(0, 5), b"kept"] and skipped == 5 and nxt == 11


def test_stray_bytes_at_a_segment_end_do_not_stall_the_reader(tmp_path: Path) -> None:
    sp, firsts = filled(tmp_path, 8)
    path = tmp_path / f"{firsts[0]:020d}.spool"
    data = path.read_bytes()
    path.write_bytes(data[:record_offset(data, firsts[1] - 1) + 3])  # inside the last header
    got, nxt, skipped = read_all(sp, 0, limit=100)
    assert nxt == 80
    assert skipped == 1 and got == payloads(0, firsts[1] - 1) + payloads(firsts[1],
                                                                          80 - firsts[1])


def test_an_emptied_spool_numbers_from_the_committed_cursor(tmp_path: Path) -> None:
    sp = Spool(tmp_path)
    sp.open(min_next_seq=1234)
    assert sp.append([b"a", b"b"]) == 1234
    b = sp.read(1234, 10)
    assert b.messages == [b"a", b"b"] and b.first_seq == 1234 and b.next_cursor == "1236"
    sp.close()
    again = Spool(tmp_path)
    again.open(min_next_seq=1000)  # an older cursor does not move numbering back
    assert again.next_seq == 1236


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 30)),
    st.tuples(st.just("read"), st.integers(1, 40)),
    st.tuples(st.just("reopen"), st.just(0)),
    st.tuples(st.just("release"), st.just(0)),
), min_size=1, max_size=40))
def test_matches_a_list(tmp_path_factory: pytest.TempPathFactory,
                        ops: list[tuple[str, int]]) -> None:
    """Against a reference list: reads return exactly what was appended, in order, from the
    cursor; reopening and releasing below the cursor change nothing a reader can see."""
    d = tmp_path_factory.mktemp("spool")
    sp = Spool(d, segment_bytes=2048)
    sp.open()
    model: list[bytes] = []
    cursor = 0
    for op, n in ops:
        if op == "append":
            assert sp.append(payloads(len(model), n)) == len(model)
            model += payloads(len(model), n)
        elif op == "read":
            b = sp.read(cursor, n)
            assert b.skipped == 0
            assert b.messages == model[cursor:cursor + n]
            cursor = int(b.next_cursor)
        elif op == "reopen":
            sp.close()
            sp = Spool(d, segment_bytes=2048)
            sp.open(min_next_seq=cursor)
            assert sp.next_seq == len(model)
        else:
            sp.release(cursor)
            assert sp.status().first_seq <= cursor
    rest = sp.read(cursor, len(model) + 1)
    assert rest.messages == model[cursor:] and rest.skipped == 0
    sp.close()
