"""The streaming log message schema: round trips, Beeswax's own JSON form, clear errors."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaignd.pipeline.schema import (
    ACTIVITY_TYPES,
    ActivityLogMessage,
    AdGroupId,
    AdLogMessage,
    App,
    BidRequest,
    ClickLogMessage,
    ConversionLogMessage,
    Device,
    EventId,
    Geo,
    ImpressionLogMessage,
    RequestLogMessage,
    User,
    decode_message,
    decode_messages,
    encode_message,
)

AUCTION = "1793000000000000.3054.7.sandbox"
AG = AdGroupId(buzz_key="sandbox", accountid="1", campaignid="216", lineitemid="822")
AAG = f"{AUCTION}.1.216.822"
EID = EventId(hostid=3054, tid=7, timestamp="1793000000000000")

MESSAGES = {
    "impression": AdLogMessage(
        request=RequestLogMessage(
            auctionid=EID, inventory_source="SANDBOX", user_time_of_week=1260,
            bidrequest=BidRequest(id=AUCTION, app=App(bundle="com.hulu.plus", name="Hulu"),
                                  device=Device(devicetype=3,
                                                geo=Geo(zip="10001", region="USA/NY",
                                                        country="USA")),
                                  user=User(id="u-1"))),
        impression=ImpressionLogMessage(
            auctionid=EID, auctionid_str=AUCTION, adgroupid=AG, creative_id="897",
            advertiser_id="13", bid_price_micros_usd="25000000",
            win_price_micros_usd="21000000", user_id="u-1",
            rx_timestamp_usecs="1793000000461896", auction_id=AUCTION,
            auction_adgroup_id=AAG)),
    "activity": AdLogMessage(activity=(ActivityLogMessage(
        type="COMPLETE", auctionid_str=AUCTION, adgroupid=AG, creative_id="897",
        rx_timestamp_usecs="1793000030000000", auction_adgroup_id=AAG),)),
    "click": AdLogMessage(clicks=(ClickLogMessage(
        auctionid_str=AUCTION, adgroupid=AG, creative_id="897",
        rx_timestamp_usecs="1793000031000000", auction_adgroup_id=AAG),)),
    "conversion": AdLogMessage(conversion=ConversionLogMessage(
        user_id="u-1", value="45.500000", ord="conv-9", tag_id=1, buzz_key="sandbox",
        rx_timestamp="1793003600000000", auctionid=AUCTION, conversion_id="conv-9",
        auction_adgroup_id=AAG)),
}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_every_kind_round_trips(kind: str) -> None:
    message = MESSAGES[kind]
    raw = encode_message(message)
    back = decode_message(raw)
    assert back == message
    assert back.kind == kind
    assert decode_message(raw.decode()) == message  # str input too


def test_uint64_values_are_json_strings_and_defaults_are_omitted() -> None:
    raw = msgspec.json.decode(encode_message(MESSAGES["impression"]))
    assert raw["impression"]["win_price_micros_usd"] == "21000000"
    assert raw["impression"]["adgroupid"]["lineitemid"] == "822"
    assert raw["impression"]["auctionid"] == {"hostid": 3054, "tid": 7,
                                              "timestamp": "1793000000000000"}
    assert "is_gdpr" not in raw["impression"] and "clicks" not in raw


def test_dedupe_keys() -> None:
    assert MESSAGES["impression"].impression.adgroup_key() == AAG  # type: ignore[union-attr]
    assert MESSAGES["activity"].activity[0].adgroup_key() == AAG
    assert MESSAGES["click"].clicks[0].adgroup_key() == AAG
    conversion = MESSAGES["conversion"].conversion
    assert conversion is not None and conversion.value_in_micros() == 45_500_000
    assert ConversionLogMessage(value="n/a").value_in_micros() is None
    assert ConversionLogMessage(value="1", value_micros="7").value_in_micros() == 7


@pytest.mark.timeout(20)
@pytest.mark.parametrize("value", ["1e999999999", "-1e999999999", "1e999990", "1e18", "sNaN",
                                   "Infinity"])
def test_absurd_conversion_values_are_not_amounts(value: str) -> None:
    """A customer's pixel sets the value: an exponent past the decimal context must not raise,
    and one just inside it must not build a million-digit integer (38 s of CPU each)."""
    assert ConversionLogMessage(value=value).value_in_micros() is None
    assert ConversionLogMessage(value="0.0000001").value_in_micros() == 0
    assert ConversionLogMessage(value="999999999999.123456789").value_in_micros() == \
        999_999_999_999_123_456
    keys = {k: m.dedupe_key() for k, m in MESSAGES.items()}
    assert keys == {"impression": f"imp:{AAG}", "activity": f"act:COMPLETE:{AAG}",
                    "click": f"clk:{AAG}:1793000031000000", "conversion": "conv:conv-9"}
    assert MESSAGES["conversion"].timestamp_usecs() == 1793003600000000
    assert AdLogMessage().dedupe_key() is None and AdLogMessage().timestamp_usecs() is None


def test_beeswax_unjoined_json_without_extensions_decodes() -> None:
    # The shape of Beeswax's streaming sample (beeswax/logs/streaming/samples/unjoined_json):
    # no sandbox extensions, extra fields we do not model.
    raw = b"""{"impression": {
        "auctionid": {"hostid": 3639509630, "tid": 21276, "timestamp": "1594144799542230"},
        "adgroupid": {"buzz_key": "canary", "accountid": "1", "campaignid": "216",
                      "lineitemid": "822"},
        "bid_price_micros_usd": "2000", "inventory_source": "MOPUB", "user_id": "REDACTED",
        "win_price_micros_usd": "1509", "rx_timestamp_usecs": "1594144800461896",
        "data_center": "US_EAST_1", "exchange_bid_price_micros_usd": "1881",
        "creative_id": "897", "advertiser_id": "13",
        "auctionid_str": "1594144799542230.3639509630.21276.canary", "is_gdpr": false,
        "gdpr_consent_string": "",
        "win_price": {"amount": {"micros": "1509", "currency": "USD"}, "rate": 1},
        "requestid_str": "1594144799542230.3639509630.21276.canary"}}"""
    msg = decode_message(raw)
    assert msg.kind == "impression" and msg.impression is not None
    assert msg.impression.auction_adgroup_id is None
    assert msg.impression.adgroup_key() == "1594144799542230.3639509630.21276.canary.1.216.822"


@pytest.mark.parametrize(("raw", "needle"), [
    (b'{"impression": {"rx_timestamp_usecs"', "truncated"),
    (b"not json", "malformed"),
    (b'{"impression": {"rx_timestamp_usecs": {"x": 1}}}', "$.impression.rx_timestamp_usecs"),
    (b'{"activity": "START"}', "$.activity"),
    (b'{"conversion": {"tag_id": "one"}}', "$.conversion.tag_id"),
    (b"[]", "Expected `object`"),
])
def test_malformed_messages_raise_a_clear_msgspec_error(raw: bytes, needle: str) -> None:
    with pytest.raises(msgspec.DecodeError) as exc:
        decode_message(raw)
    assert needle in str(exc.value)


def test_decode_messages_splits_good_and_bad() -> None:
    good = [encode_message(m) for m in MESSAGES.values()]
    raws = [good[0], b"{", good[1], b'{"clicks": 5}', good[2], good[3], b""]
    ok, bad = decode_messages(raws)
    assert [m.kind for m in ok] == ["impression", "activity", "click", "conversion"]
    assert [raw for raw, _ in bad] == [b"{", b'{"clicks": 5}', b""]
    assert all(isinstance(err, msgspec.DecodeError) for _, err in bad)
    assert decode_message(b"{}").kind == "empty"


uint64 = st.integers(min_value=0, max_value=2**64 - 1).map(str)


@given(auction=st.text(min_size=1, max_size=40), line_item=uint64, win=uint64, ts=uint64,
       creative=uint64, activity=st.sampled_from(sorted(ACTIVITY_TYPES)),
       zip_code=st.from_regex(r"\d{5}", fullmatch=True), how=st.integers(0, 10_079))
def test_round_trip_property(auction: str, line_item: str, win: str, ts: str, creative: str,
                             activity: str, zip_code: str, how: int) -> None:
    ag = AdGroupId(buzz_key="b", accountid="1", campaignid="2", lineitemid=line_item)
    for message in (
        AdLogMessage(
            request=RequestLogMessage(user_time_of_week=how, bidrequest=BidRequest(
                device=Device(geo=Geo(zip=zip_code)))),
            impression=ImpressionLogMessage(auctionid_str=auction, adgroupid=ag,
                                            creative_id=creative, win_price_micros_usd=win,
                                            rx_timestamp_usecs=ts)),
        AdLogMessage(activity=(ActivityLogMessage(type=activity, auctionid_str=auction,
                                                  adgroupid=ag, rx_timestamp_usecs=ts),)),
    ):
        assert decode_message(encode_message(message)) == message
