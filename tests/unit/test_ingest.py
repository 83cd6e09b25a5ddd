"""Event ingestion: counts, at-least-once duplicates, and every drop reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import atomize
from campaignd.domain.cells import CellTable
from campaignd.metrics import Metrics
from campaignd.pipeline import schema as s
from campaignd.pipeline.ingest import EventIngestor
from campaignd.stores.memory import InMemoryHotStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)


@pytest.fixture
def setup(seed_spec):  # type: ignore[no-untyped-def]
    cells = atomize(seed_spec)
    table = CellTable(seed_spec.id, cells)
    clock = VirtualClock(NOW)
    ing = EventIngestor(adapter=None, sql=None, hot=InMemoryHotStore(clock), metrics=Metrics(),
                        clock=clock)
    ing.register(table, {100 + i: c.cell_id for i, c in enumerate(cells)})
    return ing, table, cells


def ag(li: int) -> s.AdGroupId:
    return s.AdGroupId(buzz_key="sandbox", accountid="1", campaignid="7", lineitemid=str(li))


def imp(n: int, li: int = 100, price: str = "25000", ts: int = NOW_US - 1_000_000) -> bytes:
    auction = f"{ts}.3054.{n}.sandbox"
    return s.encode_message(s.AdLogMessage(impression=s.ImpressionLogMessage(
        auctionid_str=auction, adgroupid=ag(li), win_price_micros_usd=price,
        rx_timestamp_usecs=str(ts), auction_adgroup_id=f"{auction}.1.7.{li}")))


def act(n: int, kind: str, li: int = 100) -> bytes:
    ts = NOW_US - 1_000_000
    auction = f"{ts}.3054.{n}.sandbox"
    return s.encode_message(s.AdLogMessage(activity=(s.ActivityLogMessage(
        type=kind, auctionid_str=auction, adgroupid=ag(li), rx_timestamp_usecs=str(ts),
        auction_adgroup_id=f"{auction}.1.7.{li}"),)))


def conv(cid: str, li: int = 100, value: str = "45.00") -> bytes:
    ts = NOW_US - 1_000_000
    return s.encode_message(s.AdLogMessage(conversion=s.ConversionLogMessage(
        conversion_id=cid, value=value, rx_timestamp=str(ts),
        auction_adgroup_id=f"{ts}.3054.1.sandbox.1.7.{li}")))


async def test_counts_reach_the_cell(setup) -> None:  # type: ignore[no-untyped-def]
    ing, table, cells = setup
    await ing.ingest([imp(1), imp(2), act(1, "START"), act(1, "COMPLETE"), act(2, "VIEWABILITY"),
                      conv("c-1"), imp(3, li=101)])
    i0 = table.index[cells[0].cell_id]
    assert table.counts["impressions"][i0] == 2
    assert table.counts["spend_micros"][i0] == 50_000
    assert table.counts["starts"][i0] == 1 and table.counts["completes"][i0] == 1
    assert table.counts["viewable"][i0] == 1
    assert table.counts["conversions"][i0] == 1
    assert table.counts["conversion_value_micros"][i0] == 45_000_000
    assert table.counts["impressions"][table.index[cells[1].cell_id]] == 1
    assert ing.ingested == 7 and ing.duplicates == 0
    totals = await ing.hot.cell_totals(cells[0].campaign_id, cells[0].cell_id)
    assert totals["impressions"] == 2


async def test_duplicates_and_shuffles_give_identical_counts(setup) -> None:  # type: ignore[no-untyped-def]
    ing, table, _ = setup
    batch = [imp(i) for i in range(50)] + [act(i, "Q1") for i in range(50)] + \
        [conv(f"c{i}") for i in range(5)]
    await ing.ingest(batch)
    before = {m: a.copy() for m, a in table.counts.items()}
    await ing.ingest(list(reversed(batch)) + batch[:10])  # at-least-once redelivery
    assert all((table.counts[m] == before[m]).all() for m in before)
    assert ing.duplicates == len(batch) + 10


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "malformed"),
    (b'{"impression": {"win_price_micros_usd": 5}}', "malformed"),
    (b"{}", "empty_message"),
    (s.encode_message(s.AdLogMessage(impression=s.ImpressionLogMessage(
        win_price_micros_usd="1", rx_timestamp_usecs="1"))), "missing_dedupe_key"),
    (imp(1, li=999), "unknown_line_item"),
    (imp(1, price="-5"), "bad_money"),
    (imp(1, price="lots"), "bad_money"),
    (imp(1, ts=NOW_US + 7200 * 1_000_000), "timestamp_in_future"),
    (conv("c-inf", value="Infinity"), "bad_money"),
    (conv("c-neg", value="-45"), "bad_money"),
    (conv("c-big", value="1e30"), "bad_money"),
    (conv("c-nan", value="NaN"), "bad_money"),
    (imp(1, ts=NOW_US - 80 * 3600 * 1_000_000), "timestamp_too_old"),
])
async def test_bad_messages_are_counted_by_reason(setup, raw: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    ing, table, _ = setup
    await ing.ingest([raw, imp(77)])
    assert ing.dead[reason] == 1
    assert ing.ingested == 1  # the good message in the same batch still counts
    assert int(table.counts["impressions"].sum()) == 1


async def test_refused_events_are_kept_in_sql_with_their_payload(seed_spec, sql_store) -> None:  # type: ignore[no-untyped-def]
    cells = atomize(seed_spec)
    table = CellTable(seed_spec.id, cells)
    clock = VirtualClock(NOW)
    ing = EventIngestor(adapter=None, sql=sql_store, hot=InMemoryHotStore(clock),
                        metrics=Metrics(), clock=clock, checkpoint="events:test")
    ing.register(table, {100 + i: c.cell_id for i, c in enumerate(cells)})
    bad = [b"{not json", imp(1, li=999), conv("c-neg", value="-45"), b"{not json"]
    await ing.ingest([*bad, imp(2)])
    assert ing.ingested == 1
    assert await sql_store.dead_letter_counts() == {"malformed": 2, "unknown_line_item": 1,
                                                    "bad_money": 1}
    letters = {le.reason: le for le in await sql_store.list_dead_letters()}
    assert letters["malformed"].raw == b"{not json" and letters["malformed"].count == 2
    assert letters["unknown_line_item"].raw == imp(1, li=999)
    assert letters["bad_money"].source == "events:test"
