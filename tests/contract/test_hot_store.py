"""The hot store contract: every test runs on the in-memory store and on real Redis.

Expiry is checked on the in-memory store by moving its virtual clock, and on Redis by reading
the keys' PTTL — never by sleeping.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.clock import VirtualClock
from campaignd.stores.base import (
    BUCKET_TTL_S,
    SECOND_BUCKET_TTL_S,
    SECOND_WINDOW_MAX_S,
    HotStore,
)
from campaignd.stores.memory import InMemoryHotStore
from campaignd.stores.redis import RedisHotStore, mask_url

T0 = int(datetime(2026, 11, 15, 12, 0, tzinfo=UTC).timestamp())  # a whole minute


async def pttl_ms(store: RedisHotStore, redis_url: str, key: str) -> int:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return int(await client.pttl(store.prefix + key))
    finally:
        await client.aclose()


# --- JSON records --------------------------------------------------------------------------


async def test_json_round_trip(hot_store: HotStore) -> None:
    assert await hot_store.get_json("status") is None
    record = {"pid": 42, "agents": ["monitor", "reallocation"], "nested": {"ok": True},
              "spend_micros": 150_000_000_000}
    await hot_store.set_json("status", record, ttl_s=None)
    got = await hot_store.get_json("status")
    assert got == record
    assert got is not record
    got["pid"] = 0  # the stored record is not the returned object
    assert (await hot_store.get_json("status"))["pid"] == 42  # type: ignore[index]
    await hot_store.set_json("status", {"pid": 7}, ttl_s=None)
    assert await hot_store.get_json("status") == {"pid": 7}
    await hot_store.set_json("tuples", {"t": (1, 2)}, ttl_s=None)
    assert await hot_store.get_json("tuples") == {"t": [1, 2]}


async def test_json_ttl(hot_store: HotStore, virtual_clock: VirtualClock,
                        request: pytest.FixtureRequest) -> None:
    await hot_store.set_json("heartbeat", {"at": 1}, ttl_s=30)
    await hot_store.set_json("forever", {"at": 1}, ttl_s=None)
    if isinstance(hot_store, RedisHotStore):
        url = request.getfixturevalue("redis_url")
        assert 25_000 < await pttl_ms(hot_store, url, "json:heartbeat") <= 30_000
        assert await pttl_ms(hot_store, url, "json:forever") == -1  # no expiry
    else:
        virtual_clock.advance(29.9)
        assert await hot_store.get_json("heartbeat") == {"at": 1}
        virtual_clock.advance(0.2)
        assert await hot_store.get_json("heartbeat") is None
        virtual_clock.advance(365 * 86400)
        assert await hot_store.get_json("forever") == {"at": 1}
    with pytest.raises(ValueError):
        await hot_store.set_json("bad", {}, ttl_s=0)


# --- dedupe --------------------------------------------------------------------------------


async def test_mark_seen_new_and_duplicates(hot_store: HotStore) -> None:
    assert await hot_store.mark_seen("events", [], ttl_s=60) == []
    assert await hot_store.mark_seen("events", ["a", "b"], ttl_s=60) == [True, True]
    assert await hot_store.mark_seen("events", ["b", "c", "a"], ttl_s=60) == [False, True, False]
    # duplicates inside one batch: only the first occurrence is new
    assert await hot_store.mark_seen("events", ["d", "d", "e", "d", "e"], ttl_s=60) == [
        True, False, True, False, False]
    # namespaces are independent
    assert await hot_store.mark_seen("other", ["a", "a"], ttl_s=60) == [True, False]


async def test_mark_seen_expiry(hot_store: HotStore, virtual_clock: VirtualClock,
                                request: pytest.FixtureRequest) -> None:
    assert await hot_store.mark_seen("ev", ["x"], ttl_s=60) == [True]
    if isinstance(hot_store, RedisHotStore):
        url = request.getfixturevalue("redis_url")
        first = await pttl_ms(hot_store, url, "seen:ev:x")
        assert 55_000 < first <= 60_000
        # a duplicate does not extend the mark
        assert await hot_store.mark_seen("ev", ["x"], ttl_s=600) == [False]
        assert await pttl_ms(hot_store, url, "seen:ev:x") <= first
    else:
        virtual_clock.advance(30)
        assert await hot_store.mark_seen("ev", ["x"], ttl_s=600) == [False]  # no extension
        virtual_clock.advance(29.5)
        assert await hot_store.mark_seen("ev", ["x"], ttl_s=60) == [False]
        virtual_clock.advance(1)
        assert await hot_store.mark_seen("ev", ["x", "x"], ttl_s=60) == [True, False]


async def test_memory_mark_seen_is_bounded(virtual_clock: VirtualClock) -> None:
    store = InMemoryHotStore(virtual_clock, max_seen=3)
    assert await store.mark_seen("ev", ["a", "b", "c", "d"], ttl_s=60) == [True] * 4
    # "a", the oldest, was evicted to stay within 3 marks; the newest are remembered
    assert await store.mark_seen("ev", ["d", "c"], ttl_s=60) == [False, False]
    assert await store.mark_seen("ev", ["a"], ttl_s=60) == [True]
    assert store.marks_held() == 3
    virtual_clock.advance(61)
    assert await store.mark_seen("ev", ["z"], ttl_s=60) == [True]
    assert store.marks_held() == 1  # expired marks are purged, not just ignored


async def test_mark_seen_positions_tell_a_reprocessed_delivery_from_a_duplicate(
        hot_store: HotStore) -> None:
    # first deliveries at stream positions 10 and 11
    assert await hot_store.mark_seen("ev", ["a", "b"], ttl_s=60, positions=[10, 11]) == [
        True, True]
    # the same deliveries read again after a restart (same positions): new again;
    # a redelivery of "a" at position 12 is a duplicate
    assert await hot_store.mark_seen("ev", ["a", "b", "a"], ttl_s=60,
                                     positions=[10, 11, 12]) == [True, True, False]
    # positions beyond 2**53 survive the trip (no float rounding on the way)
    big = 2**62 + 1
    assert await hot_store.mark_seen("ev", ["c"], ttl_s=60, positions=[big]) == [True]
    assert await hot_store.mark_seen("ev", ["c", "c"], ttl_s=60, positions=[big, big - 1]) == [
        True, False]
    # without positions a marked id is always a duplicate
    assert await hot_store.mark_seen("ev", ["a", "z", "z"], ttl_s=60) == [False, True, False]
    assert await hot_store.mark_seen("ev", ["z"], ttl_s=60, positions=[5]) == [False]


async def test_memory_marks_survive_a_restart_through_the_log(
        tmp_path: Path, virtual_clock: VirtualClock) -> None:
    log = tmp_path / "marks"
    store = InMemoryHotStore(virtual_clock, seen_dir=log)
    assert await store.mark_seen("ev", ["a", "b"], ttl_s=60, positions=[1, 2]) == [True, True]
    virtual_clock.advance(30)
    assert await store.mark_seen("ev", ["c"], ttl_s=60) == [True]
    await store.close()
    [segment] = sorted(log.glob("seg-*.log"))
    with open(segment, "ab") as fh:
        fh.write(b'["ev", ["torn"')  # a crash in the middle of a write
    again = InMemoryHotStore(virtual_clock, seen_dir=log)
    assert await again.mark_seen("ev", ["a", "b", "c", "torn"], ttl_s=60,
                                 positions=[1, 9, 3, 4]) == [True, False, False, True]
    virtual_clock.advance(31)  # "a" and "b" expire; "c" lives 29 s more
    await again.close()
    third = InMemoryHotStore(virtual_clock, seen_dir=log)
    assert await third.mark_seen("ev", ["a", "c"], ttl_s=60) == [True, False]
    await third.close()


async def test_memory_mark_log_drops_whole_segments(tmp_path: Path,
                                                    virtual_clock: VirtualClock) -> None:
    log = tmp_path / "marks"
    store = InMemoryHotStore(virtual_clock, seen_dir=log, max_seen=1000)
    assert store._log is not None
    store._log.segment_marks = 500
    for i in range(60):
        await store.mark_seen("ev", [f"{i}-{j}" for j in range(250)], ttl_s=60)
    assert store.marks_held() == 1000
    # segments whose marks were all evicted are gone: about 1000 marks' worth stay on disk
    files = sorted(log.glob("seg-*.log"))
    assert 2 <= len(files) <= 4
    await store.close()
    reopened = InMemoryHotStore(virtual_clock, seen_dir=log, max_seen=1000)
    assert await reopened.mark_seen("ev", ["59-249", "56-0", "0-0"], ttl_s=60) == [
        False, False, True]
    virtual_clock.advance(61)  # everything expired: the next write drops every old segment
    assert await reopened.mark_seen("ev", ["x"], ttl_s=60) == [True]
    await reopened.close()
    assert len(sorted(log.glob("seg-*.log"))) == 1


# --- counters and buckets ------------------------------------------------------------------


async def test_add_buckets_and_set_totals(hot_store: HotStore) -> None:
    await hot_store.add_buckets("camp", {T0: {"c1": {"imp": 2, "spend_micros": 2**40}},
                                         T0 + 61: {"c1": {"imp": 3}, "c2": {"imp": 1}}})
    await hot_store.add_buckets("camp", {T0: {"c1": {"imp": 1}}, T0 + 1: {}})
    # buckets only: the running totals are the caller's to set
    assert await hot_store.cell_totals("camp", "c1") == {}
    assert await hot_store.cell_window("camp", "c1", since_epoch_s=T0,
                                       until_epoch_s=T0 + 1) == {"imp": 3,
                                                                  "spend_micros": 2**40}
    assert await hot_store.cell_window("camp", "c1", since_epoch_s=T0,
                                       until_epoch_s=T0 + 3600) == {"imp": 6,
                                                                     "spend_micros": 2**40}
    await hot_store.set_totals("camp", {"c1": {"imp": 6, "spend_micros": 2**40}, "c2": {}})
    await hot_store.set_totals("camp", {"c1": {"imp": 7}})  # absolute, and only what is named
    assert await hot_store.campaign_totals("camp") == {
        "c1": {"imp": 7, "spend_micros": 2**40}}


# --- counters and buckets (running totals with buckets) -----------------------------------


async def test_add_counts_totals(hot_store: HotStore) -> None:
    assert await hot_store.cell_totals("camp", "c1") == {}
    assert await hot_store.campaign_totals("camp") == {}
    await hot_store.add_counts("camp", {"c1": {"impressions": 10, "spend_micros": 250_000},
                                        "c2": {"impressions": 1}}, at_epoch_s=T0)
    await hot_store.add_counts("camp", {"c1": {"impressions": 5, "clicks": 0}},
                               at_epoch_s=T0 + 3600)
    await hot_store.add_counts("other", {"c1": {"impressions": 1000}}, at_epoch_s=T0)
    await hot_store.add_counts("camp", {}, at_epoch_s=T0)
    assert await hot_store.cell_totals("camp", "c1") == {
        "impressions": 15, "spend_micros": 250_000, "clicks": 0}
    assert await hot_store.campaign_totals("camp") == {
        "c1": {"impressions": 15, "spend_micros": 250_000, "clicks": 0},
        "c2": {"impressions": 1}}
    assert await hot_store.campaign_totals("other") == {"c1": {"impressions": 1000}}


async def test_cell_window(hot_store: HotStore) -> None:
    for offset, n in [(0, 1), (1, 2), (70, 4), (899, 8), (3600, 16)]:
        await hot_store.add_counts("camp", {"c1": {"imp": n}, "c2": {"imp": 100}},
                                   at_epoch_s=T0 + offset)

    async def window(since: int, until: int) -> dict[str, int]:
        return await hot_store.cell_window("camp", "c1", since_epoch_s=T0 + since,
                                           until_epoch_s=T0 + until)

    # short windows (≤ 15 min): exact, per second, half-open [since, until)
    assert await window(0, 1) == {"imp": 1}
    assert await window(0, 2) == {"imp": 3}
    assert await window(1, 71) == {"imp": 6}
    assert await window(0, SECOND_WINDOW_MAX_S) == {"imp": 15}
    assert await window(2, 70) == {}
    assert await window(5, 5) == {}
    # long windows: whole minutes overlapping the window
    assert await window(0, 3601) == {"imp": 31}
    assert await window(0, 3600) == {"imp": 15}
    assert await window(30, 1000) == {"imp": 15}  # widened to the minute of T0
    assert await window(61, 61 + SECOND_WINDOW_MAX_S + 1) == {"imp": 12}  # minutes 1..16
    with pytest.raises(ValueError):
        await window(10, 9)


async def test_buckets_expire_seconds_after_30_min_minutes_after_24h(
        hot_store: HotStore, virtual_clock: VirtualClock, request: pytest.FixtureRequest) -> None:
    await hot_store.add_counts("camp", {"c1": {"imp": 3}}, at_epoch_s=T0)
    if isinstance(hot_store, RedisHotStore):
        url = request.getfixturevalue("redis_url")
        assert SECOND_BUCKET_TTL_S * 1000 - 10_000 < await pttl_ms(
            hot_store, url, f"s:camp:c1:{T0}") <= SECOND_BUCKET_TTL_S * 1000
        assert BUCKET_TTL_S * 1000 - 10_000 < await pttl_ms(
            hot_store, url, f"m:camp:c1:{T0 // 60}") <= BUCKET_TTL_S * 1000
        assert await pttl_ms(hot_store, url, "tot:camp:c1") == -1  # totals never expire
        await hot_store.add_counts("camp", {"c1": {"imp": 1}}, at_epoch_s=T0 + 1, ttl_s=120)
        assert 110_000 < await pttl_ms(hot_store, url, f"s:camp:c1:{T0 + 1}") <= 120_000
        await hot_store.add_buckets("camp", {T0 + 2: {"c1": {"imp": 1}}})
        assert SECOND_BUCKET_TTL_S * 1000 - 10_000 < await pttl_ms(
            hot_store, url, f"s:camp:c1:{T0 + 2}") <= SECOND_BUCKET_TTL_S * 1000
        return

    async def short(now_s: int | None = None) -> dict[str, int]:
        return await hot_store.cell_window("camp", "c1", since_epoch_s=T0,
                                           until_epoch_s=T0 + 60, now_epoch_s=now_s)

    virtual_clock.advance(SECOND_BUCKET_TTL_S - 1)
    assert await short() == {"imp": 3}  # read from the second bucket
    virtual_clock.advance(2)
    assert await short() == {}  # the second bucket is gone...
    assert await short(T0 + SECOND_BUCKET_TTL_S + 1) == {"imp": 3}  # ...the minute one is not
    virtual_clock.advance(BUCKET_TTL_S - SECOND_BUCKET_TTL_S - 2)
    assert await short(T0 + BUCKET_TTL_S - 1) == {"imp": 3}
    virtual_clock.advance(2)  # 24 h + 1 s after the write
    assert await short(T0 + BUCKET_TTL_S + 1) == {}
    assert await hot_store.cell_window("camp", "c1", since_epoch_s=T0,
                                       until_epoch_s=T0 + 86400) == {}
    assert await hot_store.cell_totals("camp", "c1") == {"imp": 3}


async def test_memory_bucket_ttl_restarts_on_write(virtual_clock: VirtualClock) -> None:
    store = InMemoryHotStore(virtual_clock)
    await store.add_counts("camp", {"c1": {"imp": 1}}, at_epoch_s=T0)
    virtual_clock.advance(SECOND_BUCKET_TTL_S - 10)
    await store.add_counts("camp", {"c1": {"imp": 1}}, at_epoch_s=T0)  # same second bucket
    virtual_clock.advance(20)  # past the first write's expiry, not the second's
    assert await store.cell_window("camp", "c1", since_epoch_s=T0,
                                   until_epoch_s=T0 + 1) == {"imp": 2}
    virtual_clock.advance(BUCKET_TTL_S)
    assert await store.cell_window("camp", "c1", since_epoch_s=T0, until_epoch_s=T0 + 1) == {}
    assert store._blocks == {}  # purged, not only hidden
    assert store._bucket_expiry == []


async def test_window_rule_uses_now_to_pick_seconds_or_minutes(hot_store: HotStore) -> None:
    await hot_store.add_counts("camp", {"c1": {"imp": 1}}, at_epoch_s=T0 + 10)
    await hot_store.add_counts("camp", {"c1": {"imp": 2}}, at_epoch_s=T0 + 50)
    exact = {"since_epoch_s": T0 + 5, "until_epoch_s": T0 + 20}
    assert await hot_store.cell_window("camp", "c1", **exact) == {"imp": 1}
    assert await hot_store.cell_window("camp", "c1", **exact, now_epoch_s=T0 + 600) == {"imp": 1}
    # an old short window is read from the minute buckets, widened to whole minutes
    assert await hot_store.cell_window("camp", "c1", **exact,
                                       now_epoch_s=T0 + SECOND_BUCKET_TTL_S) == {"imp": 3}


events = st.lists(st.tuples(st.integers(0, 7200), st.integers(-5, 50)), max_size=40)
windows = st.tuples(st.integers(0, 7300), st.integers(0, 2000))


@settings(max_examples=150, deadline=None)
@given(events=events, window=windows)
def test_memory_window_matches_its_rule(events: list[tuple[int, int]],
                                        window: tuple[int, int]) -> None:
    """The reference store's windows equal a brute-force reading of the documented rule."""
    store = InMemoryHotStore(VirtualClock(datetime(2026, 11, 15, tzinfo=UTC)))
    since, length = T0 + window[0], window[1]
    until = since + length

    async def run() -> dict[str, int]:
        for at, n in events:
            await store.add_counts("camp", {"c": {"n": n}}, at_epoch_s=T0 + at)
        return await store.cell_window("camp", "c", since_epoch_s=since, until_epoch_s=until)

    got = asyncio.run(run())
    if length <= SECOND_WINDOW_MAX_S:
        inside = [n for at, n in events if since <= T0 + at < until]
    else:
        start, end = since // 60 * 60, -(-until // 60) * 60
        inside = [n for at, n in events if start <= T0 + at < end]
    assert got == ({"n": sum(inside)} if inside else {})


# --- Redis specifics -----------------------------------------------------------------------


async def test_redis_unreachable_is_a_storage_error() -> None:
    from campaignd.errors import StorageError

    store = RedisHotStore.from_url("redis://:hunter2@127.0.0.1:1/0", timeout_s=2)
    try:
        with pytest.raises(StorageError) as info:
            await store.ping()
    finally:
        await store.close()
    assert "127.0.0.1:1" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert mask_url("redis://user:pw@h:1/2") == "redis://user:***@h:1/2"


async def test_mark_seen_by_event_hour(hot_store: HotStore) -> None:
    """With ``hours`` the same answers as without (a store may only store them differently)."""
    h0, h1 = T0 // 3600, T0 // 3600 + 1
    assert await hot_store.mark_seen("evh", ["a", "b", "c"], ttl_s=60, positions=[1, 2, 3],
                                     hours=[h0, h1, h0]) == [True, True, True]
    # re-read at the same positions: new; redeliveries elsewhere, and repeats in the batch: dups
    assert await hot_store.mark_seen("evh", ["b", "a", "a", "d", "d"], ttl_s=60,
                                     positions=[2, 1, 9, 4, 5],
                                     hours=[h1, h0, h0, h1, h1]) == [True, True, False, True, False]
    assert await hot_store.mark_seen("evh2", ["x", "x", "y"], ttl_s=60,
                                     hours=[h0, h0, h0]) == [True, False, True]
    assert await hot_store.mark_seen("evh2", ["x", "y", "z"], ttl_s=60,
                                     hours=[h0, h0, h1]) == [False, False, True]
    big = [f"id{i}" for i in range(9000)]  # more than one Lua unpack's worth
    assert await hot_store.mark_seen("evh3", big, ttl_s=60, hours=[h0] * 9000) == [True] * 9000
    assert await hot_store.mark_seen("evh3", big[::-1], ttl_s=60, hours=[h0] * 9000) == [
        False] * 9000


@pytest.mark.redis
async def test_redis_hour_marks_expire_after_the_ttl(redis_url: str, redis_prefix: str) -> None:
    store = RedisHotStore.from_url(redis_url, prefix=redis_prefix)
    try:
        await store.mark_seen("evh", ["a"], ttl_s=600, hours=[T0 // 3600])
        assert 590_000 < await pttl_ms(store, redis_url, f"seenh:evh:{T0 // 3600}") <= 600_000
    finally:
        await store.close()


async def test_redis_expires_market_durations_at_the_sandboxs_speed(
        redis_url: str, redis_prefix: str) -> None:
    """In sandbox mode the daemon's clock runs at the market's speed and Redis expires in real
    time: at 1,440x a 30-minute second bucket lived 30 real minutes (a month of market time;
    94 MB after 40 s of a demo). Marks and buckets are divided by the speed-up; a JSON record's
    TTL (a heartbeat) is real time already."""
    store = RedisHotStore.from_url(redis_url, prefix=redis_prefix, time_scale=1440)
    try:
        await store.mark_seen("ev", ["a"], ttl_s=72 * 3600)
        assert 170_000 < await pttl_ms(store, redis_url, "seen:ev:a") <= 180_000
        await store.mark_seen("evh", ["a"], ttl_s=72 * 3600, hours=[T0 // 3600])
        assert 170_000 < await pttl_ms(store, redis_url, f"seenh:evh:{T0 // 3600}") <= 180_000
        await store.add_buckets("c1", {T0: {"cell": {"impressions": 2}}})
        assert 0 < await pttl_ms(store, redis_url, f"s:c1:cell:{T0}") <= 2_000
        assert 59_000 < await pttl_ms(store, redis_url, f"m:c1:cell:{T0 // 60}") <= 60_000
        await store.add_counts("c2", {"cell": {"impressions": 1}}, at_epoch_s=T0)
        assert 59_000 < await pttl_ms(store, redis_url, f"m:c2:cell:{T0 // 60}") <= 60_000
        await store.set_json("beat", {"ok": True}, ttl_s=30)
        assert 29_000 < await pttl_ms(store, redis_url, "json:beat") <= 30_000
    finally:
        await store.close()
    with pytest.raises(ValueError, match="time_scale"):
        RedisHotStore.from_url(redis_url, time_scale=0)
