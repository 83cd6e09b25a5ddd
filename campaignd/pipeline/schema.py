"""Beeswax streaming log messages as msgspec Structs: the single source of truth.

The sandbox server encodes its log feed with these Structs; the pipeline decodes the feed (and,
in production, Beeswax's HTTP/Kinesis JSON push) with the same Structs.

Mapping to the reference (``/work/shared/reference/beeswax-api.md`` §6 and Beeswax's
``beeswax/logs/streaming/ad_log.proto``, whose JSON form prints uint64 values as strings):

==========================  =================================================================
Struct                      Beeswax message
==========================  =================================================================
``AdLogMessage``            ``logs.AdLogMessage`` — wrapper; one message per event as it
                            arrives ("Beeswax does not aggregate ad log objects on the same
                            auction id"); fields ``request``, ``impression``, ``clicks[]``,
                            ``activity[]``, ``conversion``.
``ImpressionLogMessage``    ``logs.ImpressionLogMessage`` (one per won auction)
``RequestLogMessage``       ``logs.RequestLogMessage``; ``bidrequest`` keeps the OpenRTB
                            subset campaignd needs (``app.bundle/name``, ``device.devicetype``,
                            ``device.geo.zip/region/country``, ``user.id``)
``ActivityLogMessage``      ``logs.ActivityLogMessage`` (video START/Q1/MID/Q3/COMPLETE,
                            VIEWABILITY, …)
``ClickLogMessage``         ``logs.ClickLogMessage``
``ConversionLogMessage``    ``logs.ConversionLogMessage`` (postback form: ``auctionid`` set)
``EventId``                 ``base.EventId`` (``hostid``, ``tid``, ``timestamp`` usecs)
``AdGroupId``               ``base.AdGroupId`` (``buzz_key``, ``accountid``, ``campaignid``,
                            ``lineitemid``)
==========================  =================================================================

Fields marked *extension* are not in Beeswax's streaming proto; they come from Beeswax's batch
logs (win log ``auction_adgroup_id``, ``user_time_of_week``, ``is_measurable``; conversion log
``conversion_id``)
and the sandbox fills them so the pipeline can deduplicate (``auction_adgroup_id`` for
impressions/activities/clicks, ``conversion_id`` for conversions) without re-deriving keys.
Every field is optional on decode, so a real Beeswax message (without the extensions) decodes
too; ``adgroup_key()`` derives the ``auction_adgroup_id`` when the extension is absent.

Conventions: money is integer micros carried as decimal strings (``*_micros_usd``), except
``ConversionLogMessage.value``, which Beeswax defines as the customer's transaction value
(currency units, a decimal string; see ``value_micros()``). Timestamps are microseconds since the
epoch as strings (``rx_timestamp_usecs``; ``rx_timestamp`` on conversions).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

import msgspec

__all__ = [
    "ACTIVITY_TYPES",
    "ActivityLogMessage",
    "ActivityView",
    "AdGroupId",
    "AdGroupIdView",
    "AdLogMessage",
    "AdLogView",
    "App",
    "BidRequest",
    "ClickLogMessage",
    "ClickView",
    "ConversionLogMessage",
    "ConversionView",
    "Device",
    "EventId",
    "Geo",
    "ImpressionLogMessage",
    "ImpressionView",
    "RequestLogMessage",
    "RequestView",
    "User",
    "decode_message",
    "decode_messages",
    "decode_view",
    "decode_view_lines",
    "encode_message",
]

ACTIVITY_TYPES: frozenset[str] = frozenset({
    "START", "Q1", "MID", "Q3", "COMPLETE", "SKIP", "MUTE", "UNMUTE", "PAUSE", "RESUME",
    "FULLSCREEN", "CLOSE", "COMPANION_VIEW", "VIEWABILITY", "AUDIO_PLAYS", "AUDIO_Q1S",
    "AUDIO_MIDPOINT", "AUDIO_Q3S", "AUDIO_COMPLETE", "AUDIO_SKIPS",
})
"""``ActivityLogMessage.Type`` names (proto enums print as their names in JSON)."""

_OPTS = {"omit_defaults": True, "forbid_unknown_fields": False, "gc": False}


# --- ingest views -------------------------------------------------------------------------
# The fields the pipeline reads, as base classes of the full messages below: decoding into a
# view skips every other field (msgspec skips unknown keys without building objects), which
# makes the pipeline's decode about 1.5x faster on real messages. A full message is a view too
# (a subclass), so in-process producers hand their ``AdLogMessage`` values over unchanged.


class AdGroupIdView(msgspec.Struct, **_OPTS):
    accountid: str = "0"
    campaignid: str = "0"
    lineitemid: str = "0"


class GeoView(msgspec.Struct, **_OPTS):
    zip: str | None = None


class DeviceView(msgspec.Struct, **_OPTS):
    devicetype: int | None = None
    geo: GeoView | None = None


class AppView(msgspec.Struct, **_OPTS):
    bundle: str | None = None


class BidRequestView(msgspec.Struct, **_OPTS):
    app: AppView | None = None
    device: DeviceView | None = None


class RequestView(msgspec.Struct, **_OPTS):
    bidrequest: BidRequestView | None = None
    user_time_of_week: int | None = None
    """*extension* (batch logs): minutes since Sunday 00:00 in the viewer's local time."""


class ImpressionView(msgspec.Struct, **_OPTS):
    auctionid_str: str | None = None
    adgroupid: AdGroupIdView | None = None
    win_price_micros_usd: str | None = None
    rx_timestamp_usecs: str | None = None
    auction_adgroup_id: str | None = None
    """*extension*: ``<auction_id>.<account_id>.<campaign_id>.<line_item_id>`` (dedupe key)."""
    is_measurable: bool | None = None
    """*extension* (win log ``is_measurable``): whether viewability could be measured; absent
    means measured (a VIEWABILITY activity can only follow a measured impression)."""

    def adgroup_key(self) -> str | None:
        return self.auction_adgroup_id or _adgroup_key(self.auctionid_str, self.adgroupid)


class ActivityView(msgspec.Struct, **_OPTS):
    type: str = ""
    """One of ``ACTIVITY_TYPES``."""
    auctionid_str: str | None = None
    adgroupid: AdGroupIdView | None = None
    rx_timestamp_usecs: str | None = None
    auction_adgroup_id: str | None = None
    """*extension*: the impression's ``auction_adgroup_id``."""

    def adgroup_key(self) -> str | None:
        return self.auction_adgroup_id or _adgroup_key(self.auctionid_str, self.adgroupid)


class ClickView(msgspec.Struct, **_OPTS):
    auctionid_str: str | None = None
    adgroupid: AdGroupIdView | None = None
    rx_timestamp_usecs: str | None = None
    auction_adgroup_id: str | None = None
    """*extension*: the impression's ``auction_adgroup_id``."""

    def adgroup_key(self) -> str | None:
        return self.auction_adgroup_id or _adgroup_key(self.auctionid_str, self.adgroupid)


class ConversionView(msgspec.Struct, **_OPTS):
    value: str | None = None
    """Customer-defined transaction value, currency units as a decimal string."""
    ord: str | None = None
    rx_timestamp: str | None = None
    """Microseconds since the epoch (uint64 as a string)."""
    auctionid: str | None = None
    conversion_id: str | None = None
    """*extension* (conversion log): the dedupe key."""
    auction_adgroup_id: str | None = None
    """*extension*: the credited impression's ``auction_adgroup_id``."""
    value_micros: str | None = None
    """*extension*: ``value`` in integer micros (uint64 as a string)."""
    rx_timestamp_usecs: str | None = None
    """*extension*: same as ``rx_timestamp`` (the name the other messages use)."""

    def value_in_micros(self) -> int | None:
        """The conversion value in integer micros (``value_micros``, else ``value`` parsed), or
        None when absent, not a finite number, or beyond any real amount (10^18 or more in
        magnitude): the value comes from a customer's pixel, and ``1e999999`` must cost neither
        a ``decimal.Overflow`` nor seconds of CPU building a million-digit integer."""
        try:
            if self.value_micros is not None:
                return int(self.value_micros)
            if self.value is None:
                return None
            amount = Decimal(self.value)
            if not amount.is_finite() or amount.adjusted() >= 18:
                return None
            return int(amount.scaleb(6))
        except (InvalidOperation, ValueError, OverflowError):
            return None


class AdLogView(msgspec.Struct, **_OPTS):
    request: RequestView | None = None
    impression: ImpressionView | None = None
    activity: tuple[ActivityView, ...] = ()
    conversion: ConversionView | None = None
    clicks: tuple[ClickView, ...] = ()

    def timestamp_usecs(self) -> int | None:
        """When Beeswax received the event (microseconds since the epoch), if readable."""
        raw: str | None = None
        if self.impression is not None:
            raw = self.impression.rx_timestamp_usecs
        elif self.activity:
            raw = self.activity[0].rx_timestamp_usecs
        elif self.clicks:
            raw = self.clicks[0].rx_timestamp_usecs
        elif self.conversion is not None:
            raw = self.conversion.rx_timestamp_usecs or self.conversion.rx_timestamp
        try:
            return None if raw is None else int(raw)
        except ValueError:
            return None

    @property
    def kind(self) -> str:
        """``impression`` | ``activity`` | ``click`` | ``conversion`` | ``empty``."""
        if self.impression is not None:
            return "impression"
        if self.activity:
            return "activity"
        if self.clicks:
            return "click"
        if self.conversion is not None:
            return "conversion"
        return "empty"


# --- the full messages ---------------------------------------------------------------------


class EventId(msgspec.Struct, **_OPTS):
    """``base.EventId``: the auction id's parts (``timestamp`` is uint64 usecs → string)."""

    hostid: int = 0
    tid: int = 0
    timestamp: str = "0"


class AdGroupId(AdGroupIdView, **_OPTS):
    """``base.AdGroupId``: which account/campaign/line item won (uint64 ids as strings)."""

    buzz_key: str = ""


class Geo(GeoView, **_OPTS):
    """OpenRTB ``Geo`` subset; ``country`` is ISO-3166 alpha-3, ``region`` like ``USA/NY``."""

    region: str | None = None
    country: str | None = None
    utcoffset: int | None = None


class Device(DeviceView, **_OPTS):
    """OpenRTB ``Device`` subset; ``devicetype`` is the OpenRTB int (3 = connected TV)."""

    geo: Geo | None = None
    os: str | None = None


class App(AppView, **_OPTS):
    name: str | None = None


class User(msgspec.Struct, **_OPTS):
    id: str | None = None


class BidRequest(BidRequestView, **_OPTS):
    """OpenRTB ``BidRequest`` subset carried in ``RequestLogMessage.bidrequest``."""

    app: App | None = None
    device: Device | None = None
    id: str | None = None
    user: User | None = None


class RequestLogMessage(RequestView, **_OPTS):
    """``logs.RequestLogMessage``: the bid request the impression answered."""

    bidrequest: BidRequest | None = None
    auctionid: EventId | None = None
    inventory_source: str | None = None


class ImpressionLogMessage(ImpressionView, **_OPTS):
    """``logs.ImpressionLogMessage``: one won auction (an impression)."""

    adgroupid: AdGroupId | None = None
    auction_id: str | None = None
    """*extension*: same value as ``auctionid_str`` (not read by the pipeline: a view skips it)."""
    auctionid: EventId | None = None
    requestid_str: str | None = None
    creative_id: str | None = None
    advertiser_id: str | None = None
    exchange_bid_price_micros_usd: str | None = None
    bid_price_micros_usd: str | None = None
    inventory_source: str | None = None
    user_id: str | None = None
    user_id_hashed: str | None = None
    data_center: str | None = None
    is_gdpr: bool = False


class ActivityLogMessage(ActivityView, **_OPTS):
    """``logs.ActivityLogMessage``: a video/audio/viewability event of an impression."""

    adgroupid: AdGroupId | None = None
    auctionid: EventId | None = None
    creative_id: str | None = None
    advertiser_id: str | None = None
    user_id: str | None = None
    is_gdpr: bool = False


class ClickLogMessage(ClickView, **_OPTS):
    """``logs.ClickLogMessage``: a click on an impression."""

    adgroupid: AdGroupId | None = None
    auctionid: EventId | None = None
    creative_id: str | None = None
    advertiser_id: str | None = None
    user_id: str | None = None
    click_type: str = "REGULAR"
    is_gdpr: bool = False


class ConversionLogMessage(ConversionView, **_OPTS):
    """``logs.ConversionLogMessage`` in its postback form (``auctionid`` names the credited
    impression)."""

    user_id: str | None = None
    order: str | None = None
    tag_id: int | None = None
    buzz_key: str | None = None
    is_gdpr: bool = False


class AdLogMessage(AdLogView, **_OPTS):
    """``logs.AdLogMessage``: exactly one of the parts is normally set (``request`` travels with
    ``impression``)."""

    request: RequestLogMessage | None = None
    impression: ImpressionLogMessage | None = None
    activity: tuple[ActivityLogMessage, ...] = ()
    conversion: ConversionLogMessage | None = None
    clicks: tuple[ClickLogMessage, ...] = ()

    def dedupe_key(self) -> str | None:
        """A key equal for redeliveries of the same event (Beeswax: dedupe impressions on
        ``auction_adgroup_id``, conversions on ``conversion_id``): ``imp:<aag>``,
        ``act:<type>:<aag>``, ``clk:<aag>:<rx usecs>``, ``conv:<conversion_id>``; None when the
        message lacks the ids."""
        if self.impression is not None:
            key = self.impression.adgroup_key()
            return None if key is None else f"imp:{key}"
        if self.activity:
            act = self.activity[0]
            key = act.adgroup_key()
            return None if key is None else f"act:{act.type}:{key}"
        if self.clicks:
            click = self.clicks[0]
            key = click.adgroup_key()
            return None if key is None else f"clk:{key}:{click.rx_timestamp_usecs}"
        if self.conversion is not None:
            conv = self.conversion
            cid = conv.conversion_id or conv.ord
            return None if cid is None else f"conv:{cid}"
        return None


def _adgroup_key(auction_id: str | None, ag: AdGroupIdView | None) -> str | None:
    if not auction_id or ag is None:
        return None
    return f"{auction_id}.{ag.accountid}.{ag.campaignid}.{ag.lineitemid}"


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AdLogMessage)
_VIEW_DECODER = msgspec.json.Decoder(AdLogView)


def encode_message(message: AdLogMessage) -> bytes:
    """One message as compact JSON bytes."""
    return _ENCODER.encode(message)


def decode_message(raw: bytes | str) -> AdLogMessage:
    """Decode one JSON message; raises ``msgspec.DecodeError`` (or its subclass
    ``msgspec.ValidationError``) naming the offending path, e.g.
    ``Expected `str | null`, got `object` - at `$.impression.rx_timestamp_usecs```."""
    return _DECODER.decode(raw)


def decode_view(raw: bytes | str) -> AdLogView:
    """Decode one JSON message into its ingest view (the fields the pipeline reads); raises
    like ``decode_message``."""
    return _VIEW_DECODER.decode(raw)


def decode_view_lines(buf: bytes) -> list[AdLogView]:
    """Decode newline-delimited messages into views in one call (blank lines are skipped);
    raises on the first bad one."""
    return _VIEW_DECODER.decode_lines(buf)


def decode_messages(
    raws: Iterable[bytes | str],
) -> tuple[list[AdLogMessage], list[tuple[bytes | str, msgspec.DecodeError]]]:
    """Decode a batch fast; return ``(messages, failures)``, one failure per undecodable raw
    message (with the raw payload, for the dead-letter queue). Never raises on bad input."""
    ok: list[AdLogMessage] = []
    bad: list[tuple[bytes | str, msgspec.DecodeError]] = []
    decode = _DECODER.decode
    for raw in raws:
        try:
            ok.append(decode(raw))
        except msgspec.DecodeError as exc:
            bad.append((raw, exc))
    return ok, bad
