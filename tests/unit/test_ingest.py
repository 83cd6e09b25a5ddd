"""The pipeline: counts reach cells, duplicates and shuffles give identical counts, every
dead-letter reason, enrichment, and what a flush hands to the stores."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import atomize
from campaignd.domain.cells import METRIC_INDEX
from campaignd.metrics import Metrics
from campaignd.pipeline import ingest as ingest_module
from campaignd.pipeline import schema as s
from campaignd.pipeline.ingest import Pipeline
from campaignd.pipeline.registry import Registry
from campaignd.pipeline.validate import REASONS
from campaignd.stores.memory import InMemoryHotStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)


@pytest.fixture
def setup(seed_spec):  # type: ignore[no-untyped-def]
    cells = atomize(seed_spec)
    registry = Registry()
    table = registry.add_campaign(seed_spec, cells)
    registry.register(seed_spec.id, {100 + i: c.cell_id for i, c in enumerate(cells)})
    clock = VirtualClock(NOW)
    pipe = Pipeline(registry, InMemoryHotStore(clock), clock=clock, metrics=Metrics())
    return pipe, table, cells


def ag(li: int) -> s.AdGroupId:
    return s.AdGroupId(buzz_key="sandbox", accountid="1", campaignid="7", lineitemid=str(li))


def imp(n: int, li: int = 100, price: str = "25000", ts: int = NOW_US - 1_000_000,
        zip_code: str | None = None, bundle: str | None = None, utw: int | None = None,
        measurable: bool | None = None, device: int = 3) -> bytes:
    auction = f"{ts}.3054.{n}.sandbox"
    request = None
    if zip_code or bundle or utw is not None:
        request = s.RequestLogMessage(user_time_of_week=utw, bidrequest=s.BidRequest(
            app=s.App(bundle=bundle) if bundle else None,
            device=s.Device(devicetype=device, geo=s.Geo(zip=zip_code)) if zip_code else None))
    return s.encode_message(s.AdLogMessage(request=request, impression=s.ImpressionLogMessage(
        auctionid_str=auction, adgroupid=ag(li), win_price_micros_usd=price,
        rx_timestamp_usecs=str(ts), auction_adgroup_id=f"{auction}.1.7.{li}",
        is_measurable=measurable)))


def act(n: int, kind: str, li: int = 100, ts: int = NOW_US - 1_000_000) -> bytes:
    auction = f"{ts}.3054.{n}.sandbox"
    return s.encode_message(s.AdLogMessage(activity=(s.ActivityLogMessage(
        type=kind, auctionid_str=auction, adgroupid=ag(li), rx_timestamp_usecs=str(ts),
        auction_adgroup_id=f"{auction}.1.7.{li}"),)))


def click(n: int, li: int = 100, ts: int = NOW_US - 1_000_000, after_us: int = 5) -> bytes:
    auction = f"{ts}.3054.{n}.sandbox"
    return s.encode_message(s.AdLogMessage(clicks=(s.ClickLogMessage(
        auctionid_str=auction, adgroupid=ag(li), rx_timestamp_usecs=str(ts + after_us),
        auction_adgroup_id=f"{auction}.1.7.{li}"),)))


async def test_a_second_click_on_an_impression_counts_and_a_redelivered_one_does_not(
        setup) -> None:  # type: ignore[no-untyped-def]
    pipe, table, cells = setup
    r = await pipe.ingest([imp(1), click(1), click(1, after_us=9_000_000), click(1)])
    assert (r.accepted, r.duplicates) == (3, 1)
    assert table.counts["clicks"][table.index[cells[0].cell_id]] == 2


def conv(cid: str, li: int | None = 100, value: str = "45.00", n: int = 1,
         ts: int = NOW_US - 1_000_000) -> bytes:
    auction = f"{ts}.3054.{n}.sandbox"
    return s.encode_message(s.AdLogMessage(conversion=s.ConversionLogMessage(
        conversion_id=cid, value=value, rx_timestamp=str(ts), auctionid=auction,
        auction_adgroup_id=None if li is None else f"{auction}.1.7.{li}")))


async def test_counts_reach_the_cell(setup) -> None:  # type: ignore[no-untyped-def]
    pipe, table, cells = setup
    r = await pipe.ingest([imp(1), imp(2, measurable=False), act(1, "START"),
                           act(1, "COMPLETE"), act(2, "VIEWABILITY"), act(1, "MUTE"), click(1),
                           conv("c-1"), imp(3, li=101)])
    assert (r.read, r.accepted, r.duplicates) == (9, 9, 0)
    i0 = table.index[cells[0].cell_id]
    c = table.counts
    assert c["impressions"][i0] == 2 and c["measurable"][i0] == 1
    assert c["spend_micros"][i0] == 50_000
    assert c["starts"][i0] == 1 and c["completes"][i0] == 1 and c["viewable"][i0] == 1
    assert c["clicks"][i0] == 1
    assert c["conversions"][i0] == 1 and c["conversion_value_micros"][i0] == 45_000_000
    assert c["impressions"][table.index[cells[1].cell_id]] == 1
    assert pipe.stats.ingested == {"impression": 3, "activity": 4, "click": 1, "conversion": 1}
    # windows see the batch too; the creative series has it under the cell's creative
    snap = table.snapshot()
    assert snap.window(30)["impressions"][i0] == 2
    assert snap.window(86_400)["spend_micros"].sum() == 75_000
    cre = snap.creatives
    assert cre is not None
    assert cre.totals[cre.index(cells[0].creative), 0] >= 2


async def test_duplicates_and_shuffles_give_identical_counts(setup) -> None:  # type: ignore[no-untyped-def]
    pipe, table, _ = setup
    batch = [imp(i) for i in range(50)] + [act(i, "Q1") for i in range(50)] + \
        [conv(f"c{i}") for i in range(5)] + [click(i) for i in range(7)]
    await pipe.ingest(batch, range(len(batch)))
    before = table.matrix.copy()
    shuffled = list(reversed(batch)) + batch[:10]
    random.Random(3).shuffle(shuffled)
    # at-least-once redelivery at new stream positions: all duplicates
    r = await pipe.ingest(shuffled, range(1000, 1000 + len(shuffled)))
    assert r.duplicates == len(shuffled) and r.accepted == 0
    assert (table.matrix == before).all()
    # the same deliveries at the same positions are what a restart re-reads after a lost
    # commit: they are accepted again (the lost counts must come back), never as duplicates
    r = await pipe.ingest(batch, range(len(batch)))
    assert r.accepted == len(batch)


async def test_conversion_naming_only_its_auction_finds_the_impression(setup) -> None:  # type: ignore[no-untyped-def]
    pipe, table, cells = setup
    await pipe.ingest([imp(9, li=105, zip_code=cells[5].audience and "10001")])
    await pipe.ingest([conv("c-auction-only", li=None, n=9), conv("c-unknown", li=None, n=77)])
    assert table.counts["conversions"][5] == 1
    assert pipe.stats.dead == {"unattributed_conversion": 1}


NOT_JSON = b"{not json"


@pytest.mark.parametrize(("raw", "reason"), [
    (NOT_JSON, "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    # invalid UTF-8 in a field the pipeline reads (msgspec raises UnicodeDecodeError)
    (b'{"impression": {"auction_adgroup_id": "a.1.7.100", "rx_timestamp_usecs": "\xff"}}',
     "malformed_json"),
    (b'{"impression": {"auctionid_str": "\xed\xa0\x80"}}', "malformed_json"),  # a surrogate
    (b'{"impression": {"win_price_micros_usd": 5}}', "invalid_field"),
    (b'{"activity": "START"}', "invalid_field"),
    (b"{}", "empty_message"),
    (s.encode_message(s.AdLogMessage(impression=s.ImpressionLogMessage(
        win_price_micros_usd="1", rx_timestamp_usecs="1"))), "missing_dedupe_key"),
    (s.encode_message(s.AdLogMessage(conversion=s.ConversionLogMessage(value="1"))),
     "missing_dedupe_key"),
    (s.encode_message(s.AdLogMessage(impression=s.ImpressionLogMessage(
        auction_adgroup_id="a.1.7.100"))), "missing_timestamp"),
    (s.encode_message(s.AdLogMessage(impression=s.ImpressionLogMessage(
        auction_adgroup_id="a.1.7.100", rx_timestamp_usecs="soon"))), "wrong_type"),
    (imp(1, ts=NOW_US + 7200 * 1_000_000), "timestamp_in_future"),
    (imp(1, ts=NOW_US - 80 * 3600 * 1_000_000), "timestamp_too_old"),
    (imp(1, price="-5"), "bad_money"),
    (imp(1, price="lots"), "bad_money"),
    (imp(1, price="1000000001"), "bad_money"),
    (conv("c-inf", value="Infinity"), "bad_money"),
    (conv("c-neg", value="-45"), "bad_money"),
    (conv("c-big", value="1e30"), "bad_money"),
    (conv("c-nan", value="NaN"), "bad_money"),
    (conv("c-overflow", value="1e999999999"), "bad_money"),  # decimal.Overflow, not a crash
    (b'{"impression": ' + b'{"x": ' * 5000 + b'1' + b'}' * 5001, "invalid_field"),  # too deep
    (b'[' * 5000 + b']' * 5000, "invalid_field"),
    (imp(1, li=999), "unknown_line_item"),
    (conv("c-999", li=999), "unknown_line_item"),
    (conv("c-nobody", li=None, n=4242), "unattributed_conversion"),
])
async def test_bad_messages_are_dead_lettered_by_reason(setup, raw: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    pipe, table, _ = setup
    r = await pipe.ingest([raw, imp(77)])
    assert pipe.stats.dead == {reason: 1}
    assert r.accepted == 1  # the good message in the same batch still counts
    assert int(table.counts["impressions"].sum()) == 1
    flush = pipe.take_flush()
    assert flush.letters == [(reason, raw)]  # kept with its raw payload, for the SQL letter


def test_every_reason_is_tested() -> None:
    tested = {reason for _, reason in
              test_bad_messages_are_dead_lettered_by_reason.pytestmark[0].args[1]}
    # the feed gap and a batch the pipeline fails on are tested with the ingestor
    # the feed gap and a batch the pipeline fails on are tested with the ingestor; the counted
    # unknown line items below
    assert tested | {"lost_before_read", "internal_error",
                     "unknown_line_item_counted"} == set(REASONS)


async def test_a_line_item_campaignd_never_made_is_sampled_then_counted(seed_spec) -> None:  # type: ignore[no-untyped-def]
    """An account-wide log push carries every other campaign's events: each line item
    campaignd never made keeps its first events of the day whole, the rest are counted in one
    letter per line item and day. Line items campaignd made (a removed cell's) keep every one."""
    cells = atomize(seed_spec)
    registry = Registry()
    table = registry.add_campaign(seed_spec, cells)
    registry.register(seed_spec.id, {100: cells[0].cell_id})
    registry.know([555])  # a removed cell's line item
    clock = VirtualClock(NOW)
    pipe = Pipeline(registry, InMemoryHotStore(clock), clock=clock, metrics=Metrics(),
                    unknown_samples=3)
    foreign = [imp(i, li=999) for i in range(10)] + [conv("c-f", li=999)]
    ours = [imp(100 + i, li=555) for i in range(6)]
    r = await pipe.ingest([*foreign, *ours, imp(1)])
    assert r.accepted == 1 and int(table.counts["impressions"].sum()) == 1
    assert r.dead == {"unknown_line_item": 3 + 6, "unknown_line_item_counted": 8}
    r = await pipe.ingest([imp(200 + i, li=999) for i in range(4)] + [imp(300, li=998)])
    assert r.dead == {"unknown_line_item": 1, "unknown_line_item_counted": 4}
    flush = pipe.take_flush()
    kept = [raw for reason, raw in flush.letters if reason == "unknown_line_item"]
    assert kept == [*foreign[:3], *ours, imp(300, li=998)]  # whole, as they came
    counted = [(raw, n) for (reason, raw), n in zip(flush.letters, flush.letter_counts,
                                                    strict=True)
               if reason == "unknown_line_item_counted"]
    assert [n for _, n in counted] == [8, 4]
    assert counted[0][0] == counted[1][0]  # one payload: one SQL row per line item and day
    assert b'"line_item_id": "999"' in counted[0][0] and b'"day": "2026-12-01"' in counted[0][0]
    assert pipe.stats.dead["unknown_line_item_counted"] == 12
    # the next day the line item is sampled again
    clock.advance(86_400)
    later = NOW_US + 86_400_000_000
    r = await pipe.ingest([imp(400 + i, li=999, ts=later - 1_000_000) for i in range(4)])
    assert r.dead == {"unknown_line_item": 3, "unknown_line_item_counted": 1}
    # without a limit every event is kept whole
    whole = Pipeline(registry, InMemoryHotStore(clock), clock=clock)
    r = await whole.ingest([imp(500 + i, li=999, ts=later - 1_000_000) for i in range(10)])
    assert r.dead == {"unknown_line_item": 10}
    # 0: none kept whole
    none = Pipeline(registry, InMemoryHotStore(clock), clock=clock, unknown_samples=0)
    r = await none.ingest([imp(600 + i, li=997, ts=later - 1_000_000) for i in range(5)])
    assert r.dead == {"unknown_line_item_counted": 5}
    # a batch prepared and dropped (a store outage: the ingestor frees what the batches it
    # dropped reserved) takes no samples: read again, it keeps them
    again = Pipeline(registry, InMemoryHotStore(clock), clock=clock, unknown_samples=3)
    batch = [imp(700 + i, li=996, ts=later - 1_000_000) for i in range(5)]
    again.prepare(batch)  # (dropped)
    again.classifier.clear_pending()
    r = await again.ingest(batch)
    assert r.dead == {"unknown_line_item": 3, "unknown_line_item_counted": 2}
    # batches prepared ahead of counting (the live feed reads while it counts) share the day's
    # allowance: 3 kept whole in all, not 3 a batch
    ahead = Pipeline(registry, InMemoryHotStore(clock), clock=clock, unknown_samples=3)
    preps = [ahead.prepare([imp(800 + 10 * b + i, li=995, ts=later - 1_000_000)
                            for i in range(4)]) for b in range(3)]
    results = [await ahead.complete(p) for p in preps]
    assert sum(r.dead.get("unknown_line_item", 0) for r in results) == 3
    assert sum(r.dead.get("unknown_line_item_counted", 0) for r in results) == 9


async def test_typed_messages_take_the_same_path(setup) -> None:  # type: ignore[no-untyped-def]
    pipe, _table, _ = setup
    msgs = [s.decode_message(imp(1)), s.decode_message(act(1, "START")),
            s.decode_message(imp(2, li=999))]
    r = await pipe.ingest_messages(msgs)
    assert r.accepted == 2 and pipe.stats.dead == {"unknown_line_item": 1}
    assert pipe.take_flush().letters == [("unknown_line_item", s.encode_message(msgs[2]))]


async def test_enrichment_checks_targeting_and_fills_zip_series(setup, seed_spec) -> None:  # type: ignore[no-untyped-def]
    pipe, table, cells = setup
    cell = cells[0]
    aud = seed_spec.level("audience", cell.audience)
    plat = seed_spec.level("platform", cell.platform)
    part = seed_spec.level("daypart", cell.daypart)
    zip_in, bundle_in = aud.zips[0], plat.app_bundles[0]
    how_in = part.hours_of_week()[0]
    how_out = next(h for h in range(168) if h not in part.hours_of_week())
    await pipe.ingest([
        imp(1, zip_code=zip_in, bundle=bundle_in, utw=how_in * 60 + 5),   # on target
        imp(2, zip_code="99501", bundle="com.other.app", utw=how_out * 60,
            device=4),  # a phone, elsewhere, off hours, on another app: off on all four
        click(1), conv("c-zip", n=1),
    ])
    assert pipe.stats.mismatches == {"zip": 1, "daypart": 1, "platform": 1, "device": 1}
    zips = table.snapshot().zips
    assert zips is not None
    k_in, k_other = zips.index(zip_in), zips.index("other")
    assert zips.totals[k_in, 0] == 1 and zips.totals[k_other, 0] == 1   # impressions
    assert zips.totals[k_in, 8] == 1 and zips.totals[k_in, 9] == 1      # clicks, conversions


async def test_local_time_from_the_zip_when_the_dsp_does_not_send_it(setup, seed_spec) -> None:  # type: ignore[no-untyped-def]
    pipe, _table, _cells = setup
    # 2026-12-01 12:00 UTC is a Tuesday, 07:00 in New York (UTC-5) → hour of week 2*24+7
    # and 04:00 in Los Angeles (UTC-8) → 2*24+4
    assert pipe.classifier.local.hour_of_week("10001", NOW_US // 1_000_000) == 55
    assert pipe.classifier.local.hour_of_week("90012", NOW_US // 1_000_000) == 52
    # in July (daylight saving) New York is UTC-4
    july = int(datetime(2026, 7, 7, 12, 0, tzinfo=UTC).timestamp())
    assert pipe.classifier.local.hour_of_week("10001", july) == 2 * 24 + 8
    assert pipe.classifier.local.hour_of_week("00000", july) is None


async def test_flush_rows_per_cell_second_and_minute(setup) -> None:  # type: ignore[no-untyped-def]
    pipe, _table, cells = setup
    t0 = NOW_US - 120 * 1_000_000
    await pipe.ingest([imp(1, ts=t0), imp(2, ts=t0 + 1), imp(3, ts=t0 + 61 * 1_000_000),
                       imp(4, li=101, ts=t0)])
    flush = pipe.take_flush()
    assert len(flush.pending) == 3  # (cell 0, second t0) twice → one row
    rows = pipe.minute_rows(flush.pending)
    assert [(r.cell_id, int(r.at.timestamp()), r.counts[0]) for r in rows] == [  # type: ignore[union-attr]
        (cells[0].cell_id, t0 // 60_000_000 * 60, 2),
        (cells[0].cell_id, (t0 // 1_000_000 + 61) // 60 * 60, 1),
        (cells[1].cell_id, t0 // 60_000_000 * 60, 1)]
    buckets = pipe.hot_buckets(flush.pending)[cells[0].campaign_id]
    assert buckets[t0 // 1_000_000][cells[0].cell_id]["impressions"] == 2
    totals = pipe.hot_totals(flush.pending.slots)[cells[0].campaign_id]
    assert totals[cells[0].cell_id]["impressions"] == 3
    assert not pipe.take_flush()  # nothing left
    pipe.give_back(flush)
    assert len(pipe.take_flush().pending) == 3


async def test_stream_reference_backfills_old_files(seed_spec) -> None:  # type: ignore[no-untyped-def]
    cells = atomize(seed_spec)
    registry = Registry()
    table = registry.add_campaign(seed_spec, cells)
    registry.register(seed_spec.id, {100: cells[0].cell_id})
    clock = VirtualClock(NOW)
    month_ago = NOW_US - 30 * 86_400 * 1_000_000
    for reference, accepted in (("clock", 0), ("stream", 2)):
        pipe = Pipeline(registry, InMemoryHotStore(clock), clock=clock, reference=reference)
        await pipe.ingest([imp(1, ts=month_ago), imp(2, ts=month_ago + 5),
                           imp(3, ts=month_ago - 4 * 86_400 * 1_000_000)])
        assert sum(pipe.stats.ingested.values()) == accepted
    assert table.counts["impressions"][0] == 2
    assert pipe.stats.dead == {"timestamp_too_old": 1}  # 4 days before the stream's newest


def test_lag_quantiles() -> None:
    from campaignd.pipeline.ingest import LagStats
    lag = LagStats(keep=1000)
    lag.add(np.linspace(0.0, 1.0, 101))
    assert lag.quantile(0.5) == pytest.approx(0.5, abs=1e-6)
    lag.add(np.full(2000, 3.0))  # the ring keeps the newest samples
    assert lag.quantile(0.01) == pytest.approx(3.0)
    assert int(lag.counts.sum()) == 2101


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), dup_idx=st.lists(st.integers(0, 10_000), max_size=40),
       split=st.lists(st.integers(1, 50), min_size=1, max_size=6), seed=st.integers(0, 999),
       chunk=st.sampled_from([1, 3, 7, ingest_module.PREPARE_CHUNK]))
def test_counts_do_not_depend_on_duplicates_order_or_batching(
        seed_spec, n: int, dup_idx: list[int], split: list[int], seed: int,  # type: ignore[no-untyped-def]
        chunk: int) -> None:
    """Property: whatever the redeliveries, their order, the batch boundaries and the chunks a
    batch is prepared in, the counts are those of the distinct events."""
    cells = atomize(seed_spec)
    events = []
    for i in range(n):
        li = 100 + i % 7
        events.append(imp(i, li=li))
        if i % 2:
            events.append(act(i, "START", li=li))
        if i % 5 == 0:
            events.append(conv(f"p{i}", li=li))
    stream = events + [events[j % len(events)] for j in dup_idx]
    random.Random(seed).shuffle(stream)

    async def run() -> np.ndarray:
        registry = Registry()
        table = registry.add_campaign(seed_spec, cells)
        registry.register(seed_spec.id, {100 + i: c.cell_id for i, c in enumerate(cells[:7])})
        clock = VirtualClock(NOW)
        pipe = Pipeline(registry, InMemoryHotStore(clock), clock=clock)
        at, k = 0, 0
        while at < len(stream):
            size = split[k % len(split)]
            await pipe.ingest(stream[at:at + size], range(at, at + min(size, len(stream) - at)))
            at += size
            k += 1
        return table.matrix.copy()

    default = ingest_module.PREPARE_CHUNK
    ingest_module.PREPARE_CHUNK = chunk
    try:
        m = asyncio.run(run())
    finally:
        ingest_module.PREPARE_CHUNK = default
    assert int(m[METRIC_INDEX["impressions"]].sum()) == n
    assert int(m[METRIC_INDEX["starts"]].sum()) == n // 2
    assert int(m[METRIC_INDEX["conversions"]].sum()) == (n + 4) // 5
    assert int(m[METRIC_INDEX["spend_micros"]].sum()) == n * 25_000


async def test_memory_stays_bounded(seed_spec) -> None:  # type: ignore[no-untyped-def]
    """The impression context and the dedupe marks keep at most their capacity."""
    cells = atomize(seed_spec)
    registry = Registry()
    registry.add_campaign(seed_spec, cells)
    registry.register(seed_spec.id, {100: cells[0].cell_id})
    clock = VirtualClock(NOW)
    hot = InMemoryHotStore(clock, max_seen=1500)
    pipe = Pipeline(registry, hot, clock=clock, context_capacity=1000)
    for b in range(10):
        await pipe.ingest([imp(b * 500 + i) for i in range(500)])
    assert len(pipe.classifier.context) <= 1000
    assert hot.marks_held() == 1500
    assert int(registry.tables[0].counts["impressions"].sum()) == 5000


async def test_batch_decoding_keeps_messages_and_payloads_aligned(setup) -> None:  # type: ignore[no-untyped-def]
    """The batch is decoded as JSON lines only when every payload is exactly one line: a
    payload with a newline of its own, an empty one, or a bad one makes the batch decode one
    message at a time, so a refused payload is never another message's."""
    pipe, table, _ = setup
    spread = imp(1).replace(b",", b",\n", 1)  # valid JSON across two lines
    r = await pipe.ingest([imp(2), spread, b"", imp(3)])
    assert r.accepted == 3 and pipe.stats.dead == {"malformed_json": 1}
    assert pipe.take_flush().letters == [("malformed_json", b"")]
    r = await pipe.ingest(["not bytes but str", imp(4)])  # type: ignore[list-item]
    assert r.accepted == 1 and pipe.take_flush().letters == [("malformed_json",
                                                              b"not bytes but str")]
    assert int(table.counts["impressions"].sum()) == 4
    # two messages in one payload beside a blank one: the lines would be as many as the
    # payloads, but not theirs; both payloads are refused, nothing is miscounted
    two = imp(5) + b"\n" + imp(6)
    r = await pipe.ingest([two, b" \n ", imp(7)])
    assert r.accepted == 1
    assert pipe.take_flush().letters == [("malformed_json", two), ("malformed_json", b" \n ")]
    assert int(table.counts["impressions"].sum()) == 5


async def test_a_batch_prepared_in_chunks_keeps_payloads_and_positions_aligned(
        setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A live batch is decoded and classified a chunk at a time: a bad payload sends only its
    chunk down the one-by-one path, its letter carries its own payload, and every event keeps
    its own stream position (a batch read again at the same positions -- a restart before
    the commit -- is new again; at other positions it is duplicates)."""
    monkeypatch.setattr(ingest_module, "PREPARE_CHUNK", 2)
    pipe, table, _ = setup
    batch = [imp(1), b"{broken", imp(2), act(2, "START"), imp(3, price="-5"), imp(4), imp(5)]
    positions = list(range(100, 107))
    r = await pipe.ingest(batch, positions)
    assert (r.read, r.accepted, r.duplicates) == (7, 5, 0)
    assert sorted(pipe.take_flush().letters) == [("bad_money", batch[4]),
                                                 ("malformed_json", b"{broken")]
    # the same deliveries read again, in other batches and chunks (as after a restart)
    monkeypatch.setattr(ingest_module, "PREPARE_CHUNK", 3)
    r1 = await pipe.ingest(batch[:4], positions[:4])
    r2 = await pipe.ingest(batch[4:], positions[4:])
    assert (r1.accepted + r2.accepted, r1.duplicates + r2.duplicates) == (5, 0)
    r = await pipe.ingest(batch, range(200, 207))  # redeliveries
    assert (r.accepted, r.duplicates) == (0, 5)
    assert int(table.counts["impressions"].sum()) == 8
    assert int(table.counts["starts"].sum()) == 2


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), chunk=st.integers(1, 9), capacity=st.integers(2, 60),
       batch=st.integers(5, 40), seed=st.integers(0, 999))
def test_a_chunked_batch_is_prepared_exactly_as_a_whole_one(
        seed_spec, n: int, chunk: int, capacity: int, batch: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Property: preparing live batches in chunks gives the same accepted columns (keys,
    positions, cells, ZIP keys found through the impression context), the same letters and
    mismatch counts, and the same impression context afterwards, as preparing them whole --
    whatever the chunk size and however small the context (it changes generation once a
    batch either way). Activities, clicks and auction-only conversions look their impression
    up across chunk boundaries; str payloads and bad ones send their chunk down the
    one-by-one path."""
    cells = atomize(seed_spec)
    zips = ("10001", "60614", "75034", "99999")
    events: list[bytes | str] = []
    for i in range(n):
        events.append(imp(i, li=100 + i % 5, zip_code=zips[i % 4], bundle="com.hulu.plus"))
        events.append(act(i, "COMPLETE", li=100 + i % 5))
        if i % 3 == 0:
            events.append(click(i, li=100 + i % 5))
        if i % 4 == 0:
            events.append(conv(f"c{i}", li=None, n=i))
        if i % 7 == 3:
            events.append(b"{not json")
        if i % 11 == 5:
            events.append(act(i, "START", li=100 + i % 5).decode())
    rng = random.Random(seed)
    for j in range(len(events) - 1, 0, -1):  # a local shuffle: lookups stay near their impression
        k = max(0, j - rng.randrange(6))
        events[j], events[k] = events[k], events[j]

    def prepared(chunk_size: int) -> tuple[list[object], object]:
        registry = Registry()
        registry.add_campaign(seed_spec, cells)
        registry.register(seed_spec.id, {100 + i: c.cell_id for i, c in enumerate(cells[:5])})
        clock = VirtualClock(NOW)
        pipe = Pipeline(registry, InMemoryHotStore(clock), clock=clock,
                        context_capacity=capacity)
        default = ingest_module.PREPARE_CHUNK
        ingest_module.PREPARE_CHUNK = chunk_size
        try:
            outs = []
            for at in range(0, len(events), batch):
                o = pipe.prepare(events[at:at + batch], range(at, min(at + batch, len(events))))
                outs.append((o.out.keys, o.out.positions, o.out.slots, o.out.codes,
                             o.out.values, o.out.zip_keys, o.out.usecs,
                             sorted(o.out.letters), dict(o.out.mismatches), o.newest_us))
        finally:
            ingest_module.PREPARE_CHUNK = default
        ctx = pipe.classifier.context
        return outs, (ctx.new, ctx.old)

    assert prepared(chunk) == prepared(10**9)


async def test_junk_zip_codes_do_not_grow_the_caches_forever(setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from campaignd.pipeline import enrich, validate
    monkeypatch.setattr(enrich, "MAX_CACHED_ZIPS", 50)
    monkeypatch.setattr(validate, "MAX_CACHED_ZIPS", 50)
    pipe, _, _ = setup
    junk = [imp(i, zip_code=f"{i:05d}x", utw=10) for i in range(400)]
    r = await pipe.ingest([*junk, imp(1000, zip_code="10001", utw=10)])
    assert r.accepted == 401  # junk ZIPs are counted (as outside the targeting), not refused
    classifier = pipe.classifier
    assert len(classifier._spans) <= 50 and len(classifier.local._tz_of_zip) <= 50


async def test_an_event_stamped_ahead_is_deduplicated_for_its_whole_window(setup) -> None:  # type: ignore[no-untyped-def]
    """The feed takes events up to an hour ahead, and an event is inside the at-least-once
    window until 72 h after its own time. Its mark, made when it was read, used to expire 72 h
    after that: a redelivery in the last stretch of its window was counted again."""
    pipe, table, cells = setup
    ahead = NOW_US + 50 * 60 * 1_000_000  # stamped 50 min ahead of our clock
    r = await pipe.ingest([imp(1, ts=ahead)])
    assert r.accepted == 1
    pipe.clock.advance(72 * 3600 + 30 * 60)  # 72 h 30 min on: 71 h 40 min after its time
    r = await pipe.ingest([imp(1, ts=ahead)])
    assert (r.accepted, r.duplicates) == (0, 1)
    assert table.counts["impressions"][table.index[cells[0].cell_id]] == 1
