"""The sandbox's log feed: market events → Beeswax streaming JSON log messages, in a bounded,
cursor-addressed buffer.

Real Beeswax pushes ``AdLogMessage`` JSON over HTTP or Kinesis (reference §6). The sandbox keeps
the same messages in a buffer and serves them as a pull feed,
``GET /rest/v2/sandbox/log-stream?cursor=<opaque>&limit=N`` → ``{"messages": ["<json>", …],
"next_cursor": "<opaque>", "skipped": 0}``. Each message is a JSON *string* (as a push body or a
Kinesis record would be bytes), so malformed messages can travel too. A cursor is the sequence
number of the next message; messages evicted from the bounded buffer are reported as
``skipped``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from campaignd.dsp.sandbox.faults import FaultConfig, FaultStats
from campaignd.dsp.sandbox.model import (
    ActivityEvent,
    ClickEvent,
    ConversionEvent,
    ImpressionEvent,
    MarketEvent,
)
from campaignd.pipeline.schema import (
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
    encode_message,
)

CURSOR_PREFIX = "seq-"


def encode_cursor(seq: int) -> str:
    return f"{CURSOR_PREFIX}{seq}"


def decode_cursor(cursor: str | None) -> int | None:
    """None for "from the oldest"; raises ValueError for a cursor this feed never issued."""
    if cursor is None or cursor == "":
        return None
    if not cursor.startswith(CURSOR_PREFIX):
        raise ValueError(cursor)
    seq = int(cursor[len(CURSOR_PREFIX):])
    if seq < 0:
        raise ValueError(cursor)
    return seq


@dataclass(frozen=True, slots=True)
class Ids:
    """What the server knows about a line item, to fill Beeswax ids into a message."""

    account_id: int
    advertiser_id: int
    campaign_id: int
    line_item_id: int
    creative_id: int | None


def _event_id(auction_id: str, ts_usecs: int) -> EventId:
    # Beeswax auction ids look like ``<timestamp_usecs>.<hostid>.<tid>.<buzz_key>``.
    parts = auction_id.split(".")
    if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit():
        return EventId(hostid=int(parts[1]) & 0xFFFFFFFF, tid=int(parts[2]) & 0xFFFFFFFF,
                       timestamp=parts[0])
    return EventId(hostid=0, tid=0, timestamp=str(ts_usecs))


def _region(zip_code: str) -> str | None:
    try:
        import zipcodes

        found = zipcodes.matching(zip_code)
    except Exception:  # unknown ZIP or library quirk: region is optional
        return None
    return f"USA/{found[0]['state']}" if found else None


class MessageEncoder:
    """MarketEvent → ``AdLogMessage`` (typed, or JSON bytes), with the server's Beeswax ids."""

    def __init__(self, buzz_key: str) -> None:
        self.buzz_key = buzz_key
        self._regions: dict[str, str | None] = {}

    def _region_of(self, zip_code: str) -> str | None:
        if zip_code not in self._regions:
            self._regions[zip_code] = _region(zip_code)
        return self._regions[zip_code]

    def encode(self, event: MarketEvent, ids: Ids) -> bytes:
        return encode_message(self.message(event, ids))

    def message(self, event: MarketEvent, ids: Ids) -> AdLogMessage:
        """The ``AdLogMessage`` Beeswax would send for ``event`` (typed; no JSON)."""
        ag = AdGroupId(buzz_key=self.buzz_key, accountid=str(ids.account_id),
                       campaignid=str(ids.campaign_id), lineitemid=str(ids.line_item_id))
        aag = f"{event.auction_id}.{ids.account_id}.{ids.campaign_id}.{ids.line_item_id}"
        creative_id = None if ids.creative_id is None else str(ids.creative_id)
        advertiser_id = str(ids.advertiser_id)
        ts = str(event.ts_usecs)
        msg: AdLogMessage
        if isinstance(event, ImpressionEvent):
            eid = _event_id(event.auction_id, event.ts_usecs)
            msg = AdLogMessage(
                request=RequestLogMessage(
                    auctionid=eid, inventory_source="SANDBOX",
                    bidrequest=BidRequest(
                        id=event.auction_id,
                        app=App(bundle=event.app_bundle, name=event.app_bundle),
                        device=Device(devicetype=event.device_type,
                                      geo=Geo(zip=event.zip, region=self._region_of(event.zip),
                                              country="USA")),
                        user=User(id=event.user_id)),
                    user_time_of_week=event.user_time_of_week),
                impression=ImpressionLogMessage(
                    auctionid=eid, auctionid_str=event.auction_id,
                    requestid_str=event.auction_id, adgroupid=ag, creative_id=creative_id,
                    advertiser_id=advertiser_id,
                    # per impression, as win_price_micros_usd is (Beeswax's sample: bid
                    # 2000, win 1509 micros): the CPM bid / 1000
                    exchange_bid_price_micros_usd=str(event.bid_price_micros // 1000),
                    bid_price_micros_usd=str(event.bid_price_micros // 1000),
                    inventory_source="SANDBOX", user_id=event.user_id,
                    win_price_micros_usd=str(event.win_price_micros), rx_timestamp_usecs=ts,
                    data_center="US_EAST_1", auction_id=event.auction_id,
                    auction_adgroup_id=aag, is_measurable=event.measurable))
        elif isinstance(event, ActivityEvent):
            msg = AdLogMessage(activity=(ActivityLogMessage(
                type=event.type, auctionid=_event_id(event.auction_id, event.ts_usecs),
                auctionid_str=event.auction_id, adgroupid=ag, creative_id=creative_id,
                advertiser_id=advertiser_id, rx_timestamp_usecs=ts, auction_adgroup_id=aag),))
        elif isinstance(event, ClickEvent):
            msg = AdLogMessage(clicks=(ClickLogMessage(
                auctionid=_event_id(event.auction_id, event.ts_usecs),
                auctionid_str=event.auction_id, adgroupid=ag, creative_id=creative_id,
                advertiser_id=advertiser_id, rx_timestamp_usecs=ts, auction_adgroup_id=aag),))
        elif isinstance(event, ConversionEvent):
            value = f"{event.value_micros // 1_000_000}.{event.value_micros % 1_000_000:06d}"
            msg = AdLogMessage(conversion=ConversionLogMessage(
                user_id=event.user_id, value=value, order="1", ord=event.conversion_id,
                tag_id=1, buzz_key=self.buzz_key, rx_timestamp=ts, auctionid=event.auction_id,
                conversion_id=event.conversion_id, auction_adgroup_id=aag,
                value_micros=str(event.value_micros), rx_timestamp_usecs=ts))
        else:  # pragma: no cover - MarketEvent is a closed union
            raise TypeError(type(event))
        return msg


_MALFORMED: tuple[Callable[[bytes], bytes], ...] = (
    lambda good: good[: max(1, len(good) // 2)],                       # truncated JSON
    lambda good: b'{"impression": {"rx_timestamp_usecs": {"nested": true}}}',  # wrong type
    lambda good: b'{"activity": "START"}',                              # wrong shape
    lambda good: b"not json at all",
)


class LogFeed:
    """A bounded buffer of JSON messages addressed by sequence numbers (the cursor)."""

    def __init__(self, *, capacity: int = 500_000, faults: FaultConfig | None = None,
                 stats: FaultStats | None = None) -> None:
        self.capacity = capacity
        # A list with a moving head: O(1) slicing by sequence number (a deque indexes in O(n)).
        self._buf: list[bytes] = []
        self._head = 0
        self._first_seq = 0
        self.faults = faults or FaultConfig()
        self._rng = random.Random(self.faults.seed + 1)
        self.stats = stats or FaultStats({})

    def __len__(self) -> int:
        return len(self._buf) - self._head

    @property
    def next_seq(self) -> int:
        return self._first_seq + len(self)

    @property
    def first_seq(self) -> int:
        return self._first_seq

    def _push(self, message: bytes) -> None:
        self._buf.append(message)
        if len(self) > self.capacity:
            self._head += 1
            self._first_seq += 1
            if self._head >= self.capacity:
                del self._buf[: self._head]
                self._head = 0

    def extend(self, messages: Iterable[bytes]) -> None:
        """Append messages, applying at-least-once delivery faults."""
        cfg = self.faults
        rng = self._rng
        pending_dupes: list[tuple[int, bytes]] = []
        pushed = 0  # messages of this call: readers cannot have seen them yet
        for i, message in enumerate(messages):
            if cfg.rate_malformed and rng.random() < cfg.rate_malformed:
                self._push(rng.choice(_MALFORMED)(message))
                pushed += 1
                self.stats.bump("feed_malformed")
            if cfg.rate_reorder and pushed > 0 and len(self) > 0 \
                    and rng.random() < cfg.rate_reorder:
                # Out of order: this message overtakes its predecessor (never one a reader may
                # already have read: that would lose this message, not reorder it).
                self._buf[-1], message = message, self._buf[-1]
                self.stats.bump("feed_reorder")
            self._push(message)
            pushed += 1
            if cfg.rate_duplicate and rng.random() < cfg.rate_duplicate:
                pending_dupes.append((i + rng.randint(0, 5), message))
                self.stats.bump("feed_duplicate")
            while pending_dupes and pending_dupes[0][0] <= i:
                self._push(pending_dupes.pop(0)[1])
                pushed += 1
        for _, message in pending_dupes:
            self._push(message)

    def read(self, cursor: str | None, limit: int) -> tuple[list[bytes], str, int]:
        """Messages from ``cursor`` (at most ``limit``), the next cursor, and how many
        messages between the cursor and the oldest held were already evicted."""
        seq = decode_cursor(cursor)
        if seq is None:
            seq = self._first_seq
        skipped = 0
        if seq < self._first_seq:
            skipped = self._first_seq - seq
            seq = self._first_seq
        seq = min(seq, self.next_seq)
        start = self._head + seq - self._first_seq
        out = self._buf[start:start + max(0, limit)]
        return out, encode_cursor(seq + len(out)), skipped
