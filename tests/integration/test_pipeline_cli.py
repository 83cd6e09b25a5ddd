"""`campaignd replay`, `campaignd export` and `campaignd deadletter retry` as a user runs them:
real processes over a real SQLite file and the in-memory hot store with its mark log."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pyarrow.parquet as pq

from campaignd.domain.campaign import atomize, load_spec
from campaignd.stores.sql import SqlStore, upgrade
from campaignd.testing import SEED_SPEC as SEED
from campaignd.testing import activity_message, cli, conversion_message, impression_message

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = int((NOW - timedelta(days=3)).timestamp() * 1_000_000)  # a backfill: 3 days old


def setup(tmp_path: Path) -> tuple[Path, list[str]]:
    db = tmp_path / "campaignd.db"
    cfg = tmp_path / "campaignd.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[database]\n'
                   f'url = "sqlite+aiosqlite:///{db}"\n')
    spec = load_spec(SEED)
    cells = atomize(spec)
    url = f"sqlite+aiosqlite:///{db}"

    async def store() -> None:
        await upgrade(url)
        sql = await SqlStore.connect(url)
        try:
            await sql.upsert_campaign(spec, cells)
            await sql.set_cell_line_items({c.cell_id: 100 + i for i, c in enumerate(cells[:10])})
        finally:
            await sql.close()

    anyio.run(store)
    return cfg, [c.cell_id for c in cells]


def exhaust(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        ts = T0 + i * 3_600_000_000 // n * 20  # spread over ~20 hours of one backfill
        li = 100 + i % 10
        out.append(impression_message(i, line_item=li, ts_usecs=ts))
        out.append(activity_message(i, "COMPLETE", line_item=li, ts_usecs=ts))
        if i % 25 == 0:
            out.append(conversion_message(f"cv{i}", line_item=li, ts_usecs=ts))
    return out


def test_replay_is_exactly_once_and_export_reads_back(tmp_path: Path) -> None:
    cfg, cell_ids = setup(tmp_path)
    good = exhaust(200)
    lines = good + random.Random(1).sample(good, 30)  # at-least-once duplicates
    random.Random(2).shuffle(lines)
    lines += [b"{not json", impression_message(999, line_item=777, ts_usecs=T0), b""]
    f = tmp_path / "exhaust.jsonl.gz"
    with gzip.open(f, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")

    r = cli("replay", str(f), "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["ingested"] == 408 and s["duplicates"] == 30
    assert s["dead_by_reason"] == {"malformed_json": 1, "unknown_line_item": 1}
    added = s["added_per_campaign"]["madhive_12345"]
    assert added["impressions"] == 200 and added["completes"] == 200
    assert added["conversions"] == 8 and added["spend_micros"] == 200 * 25_000

    # the same file again, and a reshuffled copy: nothing more is counted
    r = cli("replay", str(f), "--config", str(cfg), "--json")
    again = json.loads(r.stdout)
    assert again["ingested"] == 0 and again["added_per_campaign"] == {}
    assert again["files"][0]["already_replayed_lines"] == len(lines)
    g = tmp_path / "reshuffled.jsonl"
    random.Random(3).shuffle(good)
    g.write_bytes(b"\n".join(good))
    r = cli("replay", str(g), "--config", str(cfg), "--json")
    third = json.loads(r.stdout)
    assert third["ingested"] == 0 and third["duplicates"] == len(good)

    # human output
    r = cli("replay", str(f), "--config", str(cfg))
    assert r.returncode == 0 and "exhaust.jsonl.gz" in r.stdout

    # the cold store: Parquet files per day, one row per cell, read back with pyarrow
    out = tmp_path / "parquet"
    first_day = (NOW - timedelta(days=4)).date().isoformat()
    r = cli("export", "--campaign", "madhive_12345", "--from", first_day, "--to",
            NOW.date().isoformat(), "--out", str(out), "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)["files"]
    assert files and all(Path(x["path"]).exists() for x in files)
    rows = [row for x in files for row in pq.read_table(x["path"]).to_pylist()]
    assert sum(row["impressions"] for row in rows) == 200
    assert sum(row["spend_micros"] for row in rows) == 200 * 25_000
    assert {row["cell_id"] for row in rows} <= set(cell_ids[:10])
    assert all(row["audience"] and row["platform"] for row in rows)

    # and `campaign list` reports the replayed spend
    r = cli("campaign", "list", "--config", str(cfg), "--json")
    [c] = json.loads(r.stdout)["campaigns"]
    assert c["spend"] == "5.00"


def test_bad_input_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg, _ = setup(tmp_path)
    r = cli("replay", str(tmp_path / "missing.jsonl"), "--config", str(cfg))
    assert r.returncode == 2 and "FILE" in r.stderr and "Traceback" not in r.stderr
    r = cli("export", "--campaign", "madhive_12345", "--from", "2026-13-01", "--to",
            "2026-12-01", "--out", str(tmp_path), "--config", str(cfg))
    assert r.returncode == 2 and "--from" in r.stderr and "YYYY-MM-DD" in r.stderr
    r = cli("export", "--campaign", "madhive_12345", "--from", "2026-12-02", "--to",
            "2026-12-01", "--out", str(tmp_path), "--config", str(cfg))
    assert r.returncode == 2 and "--to" in r.stderr
    r = cli("export", "--campaign", "nope", "--from", "2026-12-01", "--to", "2026-12-01",
            "--out", str(tmp_path), "--config", str(cfg))
    assert r.returncode == 2 and "nope" in r.stderr
    r = cli("deadletter", "retry", "--config", str(cfg))
    assert r.returncode == 2 and "--all" in r.stderr
    r = cli("deadletter", "retry", "--reason", "bogus", "--config", str(cfg))
    assert r.returncode == 2 and "unknown_line_item" in r.stderr

    # a daemon using the database: replay refuses (its counts would miss the replay)
    async def running() -> None:
        sql = await SqlStore.connect(f"sqlite+aiosqlite:///{tmp_path / 'campaignd.db'}")
        try:
            await sql.write_status("default", 4242, "0", NOW, {"state": "running"},
                                   now=datetime.now(UTC))
        finally:
            await sql.close()

    anyio.run(running)
    f = tmp_path / "x.jsonl"
    f.write_bytes(b"{}\n")
    r = cli("replay", str(f), "--config", str(cfg))
    assert r.returncode == 1 and "pid 4242" in r.stderr and "stop it first" in r.stderr


def test_a_cut_or_corrupt_gzip_file_and_an_unusable_out_exit_2_naming_them(
        tmp_path: Path) -> None:
    cfg, _ = setup(tmp_path)
    lines = exhaust(6000)  # 12,240 lines: the cut keeps one batch of 5,000 whole
    whole = gzip.compress(b"\n".join(lines) + b"\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[:len(whole) // 2])
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    for f, why in ((cut, "it ends early"), (bad, "corrupt")):
        r = cli("replay", str(f), "--config", str(cfg))
        assert r.returncode == 2, r.stderr
        assert f"FILE ({f})" in r.stderr or str(f) in r.stderr, r.stderr
        assert "is not valid gzip after line" in r.stderr and why in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    # what came before the cut is counted, and a replay of the whole file adds the rest once
    whole_f = tmp_path / "whole.jsonl.gz"
    whole_f.write_bytes(whole)
    r = cli("replay", str(whole_f), "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert done["ingested"] + done["duplicates"] == len(lines)
    assert done["duplicates"] >= 5000  # the part the cut file had already counted

    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for out, needle in ((a_file, "is a file, not a directory"),
                        (Path("/proc/nope/parquet"), "cannot be created")):
        r = cli("export", "--campaign", "madhive_12345", "--from", "2026-12-01", "--to",
                "2026-12-01", "--out", str(out), "--config", str(cfg))
        assert r.returncode == 2 and "--out" in r.stderr and needle in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_an_internal_error_letter_whose_event_is_marked_seen_is_kept_not_dropped(
        tmp_path: Path) -> None:
    """A pipeline bug past the dedupe leaves the event marked seen and its message filed as
    internal_error; a retry finds the mark. Whether it was counted cannot be told, so the
    letter stays (before, it was deleted as a duplicate: the event was never counted)."""
    cfg, _ = setup(tmp_path)
    ts = int(NOW.timestamp() * 1_000_000) - 60_000_000
    msg = impression_message(7, line_item=100, ts_usecs=ts)
    f = tmp_path / "one.jsonl"
    f.write_bytes(msg + b"\n")
    r = cli("replay", str(f), "--config", str(cfg), "--json")
    assert json.loads(r.stdout)["ingested"] == 1  # marked seen (and here, counted)

    async def file_letter() -> None:
        sql = await SqlStore.connect(f"sqlite+aiosqlite:///{tmp_path / 'campaignd.db'}")
        try:
            await sql.commit_ingest(minutes=[], letters=[("internal_error", msg)],
                                    letter_source="events", now=NOW)
        finally:
            await sql.close()

    anyio.run(file_letter)
    r = cli("deadletter", "retry", "--reason", "internal_error", "--config", str(cfg), "--json")
    res = json.loads(r.stdout)
    assert res["resolved"] == 0 and res["marked_but_maybe_not_counted"] == 1, res
    assert res["still_refused"] == {"internal_error": 1}
    r = cli("deadletter", "retry", "--reason", "internal_error", "--config", str(cfg))
    assert r.returncode == 0 and "internal_error letter(s) kept" in r.stdout, r.stdout
    r = cli("deadletter", "list", "--config", str(cfg), "--json")
    assert [le["reason"] for le in json.loads(r.stdout)["dead_letters"]] == ["internal_error"]


def test_deadletter_retry_counts_events_once_their_line_item_is_known(tmp_path: Path) -> None:
    cfg, cell_ids = setup(tmp_path)
    ts = int(NOW.timestamp() * 1_000_000) - 60_000_000
    f = tmp_path / "late.jsonl"
    unknown = impression_message(1, line_item=555, ts_usecs=ts)
    f.write_bytes(b"\n".join([unknown, unknown, b"{not json",
                              impression_message(2, line_item=100, ts_usecs=ts)]))
    r = cli("replay", str(f), "--config", str(cfg), "--json")
    assert json.loads(r.stdout)["dead_by_reason"] == {"malformed_json": 1,
                                                      "unknown_line_item": 2}
    r = cli("deadletter", "list", "--config", str(cfg), "--json")
    letters = json.loads(r.stdout)["dead_letters"]
    unknown_id = next(le["id"] for le in letters if le["reason"] == "unknown_line_item")

    # still unknown: the letter stays
    r = cli("deadletter", "retry", "--all", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["resolved"] == 0
    assert res["still_refused"] == {"malformed_json": 1, "unknown_line_item": 2}

    # the line item becomes known (the daemon synced a new cell): the event counts, once
    async def learn() -> None:
        sql = await SqlStore.connect(f"sqlite+aiosqlite:///{tmp_path / 'campaignd.db'}")
        try:
            await sql.set_cell_line_items({cell_ids[20]: 555})
        finally:
            await sql.close()

    anyio.run(learn)
    r = cli("deadletter", "retry", "--reason", "unknown_line_item", "--config", str(cfg),
            "--json")
    res = json.loads(r.stdout)
    assert (res["ingested"], res["resolved"], res["still_refused"]) == (1, 1, {})
    r = cli("deadletter", "list", "--config", str(cfg), "--json")
    body = json.loads(r.stdout)
    assert body["counts"] == {"malformed_json": 1}
    assert all(le["id"] != unknown_id for le in body["dead_letters"])
    r = cli("campaign", "show", "madhive_12345", "--config", str(cfg), "--json", "--cells")
    cells = {c["cell_id"]: c for c in json.loads(r.stdout)["cell_list"]}
    assert cells[cell_ids[20]]["dsp_line_item_id"] == 555


def test_a_foreign_line_items_events_are_sampled_then_counted(tmp_path: Path) -> None:
    """An account-wide log push carries the events of line items campaignd never made: a few
    of each line item a day are kept whole, the rest counted in one row per line item and day
    (nothing to retry there); a line item campaignd made is never sampled."""
    cfg, cell_ids = setup(tmp_path)
    ts = int(NOW.timestamp() * 1_000_000) - 60_000_000

    async def made() -> None:  # a cell's line item campaignd made (its cell since removed)
        sql = await SqlStore.connect(f"sqlite+aiosqlite:///{tmp_path / 'campaignd.db'}")
        try:
            await sql.set_cell_line_items({cell_ids[20]: 556})
        finally:
            await sql.close()

    anyio.run(made)
    f = tmp_path / "account.jsonl"
    f.write_bytes(b"\n".join([impression_message(i, line_item=999, ts_usecs=ts)
                              for i in range(1, 41)]))
    env = {"CAMPAIGND_PIPELINE__UNKNOWN_LINE_ITEM_SAMPLES": "5"}
    r = cli("replay", str(f), "--config", str(cfg), "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dead_by_reason"] == {"unknown_line_item": 5,
                                                      "unknown_line_item_counted": 35}
    g = tmp_path / "more.jsonl"
    g.write_bytes(b"\n".join([impression_message(i, line_item=999, ts_usecs=ts)
                              for i in range(41, 51)]))
    r = cli("replay", str(g), "--config", str(cfg), "--json", env=env)
    # (a new run samples afresh: at most a few more rows, never one per event)
    assert json.loads(r.stdout)["dead_by_reason"] == {"unknown_line_item": 5,
                                                      "unknown_line_item_counted": 5}
    r = cli("deadletter", "list", "--config", str(cfg), "--json")
    body = json.loads(r.stdout)
    assert body["counts"] == {"unknown_line_item": 10, "unknown_line_item_counted": 40}
    (counted,) = [le for le in body["dead_letters"]
                  if le["reason"] == "unknown_line_item_counted"]
    assert counted["count"] == 40
    r = cli("deadletter", "show", str(counted["id"]), "--config", str(cfg), "--json")
    assert '"line_item_id": "999"' in json.loads(r.stdout)["raw"]
    r = cli("deadletter", "retry", "--all", "--config", str(cfg), "--json")
    res = json.loads(r.stdout)
    assert res["still_refused"] == {"unknown_line_item": 10, "unknown_line_item_counted": 40}
    assert json.loads(cli("deadletter", "list", "--config", str(cfg), "--json").stdout)[
        "counts"] == {"unknown_line_item": 10, "unknown_line_item_counted": 40}
    # a line item campaignd made keeps every event whole, routed or not
    h = tmp_path / "ours.jsonl"
    h.write_bytes(b"\n".join([impression_message(i, line_item=556, ts_usecs=ts)
                              for i in range(60, 70)]))
    r = cli("replay", str(h), "--config", str(cfg), "--json", env=env)
    assert json.loads(r.stdout)["ingested"] == 10


def test_replay_and_retry_refuse_a_daemon_that_is_still_starting(tmp_path: Path) -> None:
    """A daemon holds its locks from its first moment, but publishes its status only once it
    is ready — after loading and syncing its campaigns (minutes with Beeswax), while it already
    counts events; the status left in SQL is the last run's "stopped". Replay and dead-letter
    retry judged by that status alone ran beside it; they take the daemon's locks now."""
    import os

    from campaignd.stores.daemon_lock import DaemonLock

    cfg, _ = setup(tmp_path)
    db = tmp_path / "campaignd.db"
    url = f"sqlite+aiosqlite:///{db}"

    async def last_run_stopped() -> None:
        sql = await SqlStore.connect(url)
        try:
            await sql.write_status("default", 1, "test", NOW, {"state": "stopped"}, now=NOW)
        finally:
            await sql.close()

    anyio.run(last_run_stopped)
    f = tmp_path / "exhaust.jsonl"
    f.write_bytes(b"\n".join(exhaust(5)) + b"\n")
    starting = DaemonLock(state_dir=tmp_path / "state", database_url=url)
    anyio.run(starting.acquire)  # a daemon starting: its locks, no status yet
    try:
        for args in (("replay", str(f)), ("deadletter", "retry", "--all")):
            r = cli(*args, "--config", str(cfg))
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert f"a daemon (pid {os.getpid()}) is running on" in r.stderr, r.stderr
            assert "stop it first" in r.stderr
    finally:
        anyio.run(starting.release)
    r = cli("replay", str(f), "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ingested"] == 11  # 5 impressions, 5 activities, 1 conversion
