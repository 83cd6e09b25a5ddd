"""Validate, key and enrich decoded log messages: one pass, one message at a time (the hot path).

``Classifier.classify`` turns ``AdLogView`` values into columns of accepted events (dedupe
key, stream position, cell slot, event second, event code, money, ZIP series key) and a list of
refused ones (reason, raw payload) for the dead letter. Nothing raises on bad input.

Dead-letter reasons (``REASONS``), checked in this order:

=========================  ======================================================================
``malformed_json``         not JSON (or truncated, or not UTF-8) — from the decoder
``invalid_field``          JSON, but a field has the wrong type or shape (msgspec names the path),
                           or it is nested deeper than the decoder goes
``empty_message``          none of impression / activity / clicks / conversion is set
``missing_dedupe_key``     no ``auction_adgroup_id`` (or auction id + ad group) / ``conversion_id``
``missing_timestamp``      no ``rx_timestamp_usecs`` (``rx_timestamp`` on conversions)
``wrong_type``             a number field (timestamp) that is not an integer
``timestamp_in_future``    more than ``max_future_s`` (1 h) ahead of the clock
``timestamp_too_old``      older than the at-least-once window (72 h) before the reference time
``bad_money``              a price or conversion value that is not an amount, negative or absurd
                           (> $1,000 for one impression, > $1,000,000 for one conversion)
``unknown_line_item``      a line item campaignd does not manage (or not yet: see ``retry``)
``unknown_line_item_counted`` (no payload) events of a line item campaignd never made, beyond
                           the first ``unknown_samples`` of it kept whole that day (an
                           account-wide log push carries every other campaign's events): one
                           row per line item and day counts them
``unattributed_conversion``a conversion naming neither a line item nor an impression still known
``lost_before_read``       (no payload) messages the DSP dropped before campaignd read them
``internal_error``         the pipeline itself failed on it (a bug): the feed counted its batch
                           message by message and kept this one whole, to ``retry`` once fixed
=========================  ======================================================================

Enrichment (impressions): the route gives the cell; the request gives the ZIP code, the app
bundle and the device type; the viewer-local hour of week comes from ``user_time_of_week`` when
the DSP sends it, else from the ZIP's timezone. Impressions outside the cell's targeting (ZIP,
daypart, platform's app bundles, platform's device types) are counted by dimension — a DSP
that delivers outside what was asked for is worth an alert — and still counted: the money was
spent.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import msgspec

from campaignd.pipeline.enrich import MAX_CACHED_ZIPS, LocalTime
from campaignd.pipeline.registry import Registry
from campaignd.pipeline.schema import AdLogView, decode_view, decode_view_lines

REASONS: tuple[str, ...] = (
    "malformed_json", "invalid_field", "empty_message", "missing_dedupe_key",
    "missing_timestamp", "wrong_type", "timestamp_in_future", "timestamp_too_old", "bad_money",
    "unknown_line_item", "unknown_line_item_counted", "unattributed_conversion",
    "lost_before_read", "internal_error",
)
NO_PAYLOAD: tuple[str, ...] = ("unknown_line_item_counted", "lost_before_read")
"""Reasons whose letters count events without keeping them: nothing to retry."""
MAX_UNKNOWN_TRACKED = 100_000
"""Line items never made by campaignd tracked in a day (each a counted row at most); events of
any further one are only counted, in one row (line item "other")."""

DEDUPE_WINDOW_S = 72 * 3600
"""Beeswax accepts impression notifications up to 72 h after the auction: dedupe that long."""
MAX_FUTURE_S = 3600
MAX_IMPRESSION_PRICE_MICROS = 1_000_000_000
"""$1,000 for one impression: anything above is a corrupt record, not a price."""
MAX_CONVERSION_VALUE_MICROS = 1_000_000 * 1_000_000
"""$1,000,000 for one conversion."""

# Event codes (what an accepted event adds; see ``aggregate``).
IMP_MEASURED, IMP_UNMEASURED = 0, 1
ACTIVITY_CODE = {"START": 2, "Q1": 3, "MID": 4, "Q3": 5, "COMPLETE": 6, "VIEWABILITY": 7}
ACT_OTHER, CLICK, CONVERSION = 8, 9, 10
N_CODES = 11
KIND_OF_CODE = ("impression", "impression", "activity", "activity", "activity", "activity",
                "activity", "activity", "activity", "click", "conversion")


@dataclass(slots=True)
class Classified:
    """Accepted events as parallel columns (``usecs``: event time), and the refused ones."""

    keys: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    zip_keys: list[int] = field(default_factory=list)
    usecs: list[int] = field(default_factory=list)
    letters: list[tuple[str, bytes]] = field(default_factory=list)
    mismatches: Counter[str] = field(default_factory=Counter)
    unkept: Counter[str] = field(default_factory=Counter)
    """Line item → events of a line item campaignd never made that were counted and not kept
    (beyond the day's samples), on ``sample_day``."""
    sampled: dict[str, int] = field(default_factory=dict)
    """Line item → its events kept whole as samples in this batch."""
    sample_day: str = ""
    """The UTC day (ISO) of ``unkept`` and ``sampled``: the clock's when the batch was read."""

    def __len__(self) -> int:
        return len(self.keys)


class ImpressionContext:
    """Auction id → (slot, ZIP key) of recent impressions, so that a conversion naming only its
    auction (Beeswax's streaming conversions carry no line item) finds its cell, and clicks and
    conversions land on their impression's ZIP. Bounded: two generations of at most
    ``capacity / 2`` entries; the older is dropped when the newer fills (O(1), no scans)."""

    def __init__(self, capacity: int = 500_000) -> None:
        self.half = max(1, capacity // 2)
        self.new: dict[str, int] = {}
        self.old: dict[str, int] = {}

    def put(self, auction_id: str, packed: int) -> None:
        self.new[auction_id] = packed
        self.rotate()

    def rotate(self) -> None:
        """Start a new generation once the newer is full (callers that write ``new`` directly
        call this after a batch)."""
        if len(self.new) >= self.half:
            self.old, self.new = self.new, {}

    def get(self, auction_id: str) -> int | None:
        v = self.new.get(auction_id)
        return v if v is not None else self.old.get(auction_id)

    def __len__(self) -> int:
        return len(self.new) + len(self.old)


_CTX_SHIFT = 20  # packed = slot << 20 | zip key (a campaign has < 1M ZIP keys)
_ZK_MASK = (1 << _CTX_SHIFT) - 1


def _iso_day(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()


def unkept_letter(line_item: str, day: str, samples: int) -> bytes:
    """The payload of an ``unknown_line_item_counted`` letter: the same for one line item
    and day, so that the day's events are one row whose count grows."""
    return json.dumps({"line_item_id": line_item, "day": day, "kept_whole": samples,
                       "note": "events of a line item campaignd never made, beyond the "
                               "first kept whole that day: counted, not kept"},
                      sort_keys=True).encode()


def _auction_of(key: str) -> str:
    """``<auction_id>.<account>.<campaign>.<line_item>`` → ``<auction_id>``."""
    return key.rsplit(".", 3)[0]


class Classifier:
    """Validation and enrichment over a ``Registry`` (see the module docstring)."""

    def __init__(self, registry: Registry, *, dedupe_window_s: int = DEDUPE_WINDOW_S,
                 max_future_s: int = MAX_FUTURE_S, context_capacity: int = 500_000,
                 unknown_samples: int | None = None) -> None:
        self.registry = registry
        self.unknown_samples = unknown_samples
        """Events kept whole per line item campaignd never made, per UTC day (None: all)."""
        self._unknown_kept: dict[str, int] = {}
        self._unknown_pending: dict[str, int] = {}
        self._unknown_seen: set[str] = set()
        """Line items never made by campaignd seen today (at most ``MAX_UNKNOWN_TRACKED``)."""
        self._unknown_day = -1
        self._unknown_iso = ""
        self.window_us = dedupe_window_s * 1_000_000
        self.future_us = max_future_s * 1_000_000
        self.context = ImpressionContext(context_capacity)
        self.local = LocalTime()
        self._spans: dict[str, tuple[int, int, int | None]] = {}

    @staticmethod
    def decode(raws: Sequence[bytes | str], positions: Sequence[int] | None,
               out: Classified) -> tuple[list[AdLogView], Sequence[bytes | str],
                                         list[int] | None]:
        """Decode; refused payloads go to ``out.letters``. Returns the decoded messages with
        their raw payloads and positions."""
        dec = decode_view
        try:  # the common case: one call for the batch, as newline-delimited JSON
            # The messages line up with their raw payloads when every raw has something
            # besides whitespace and the lines decode to exactly one message per raw: each raw
            # then gives at least one non-blank line, so each gives exactly one.
            if all(raws) and not any(map(bytes.isspace, raws)):  # type: ignore[arg-type]
                decoded = decode_view_lines(b"\n".join(raws))  # type: ignore[arg-type]
                if len(decoded) == len(raws):
                    return decoded, raws, list(positions) if positions is not None else None
        except (msgspec.DecodeError, TypeError, RecursionError, UnicodeDecodeError):
            pass  # a bad message (or str payloads): decode one by one, below
        msgs: list[AdLogView] = []
        kept: list[bytes | str] = []
        kept_pos: list[int] | None = [] if positions is not None else None
        letters = out.letters
        for i, raw in enumerate(raws):
            try:
                msgs.append(dec(raw))
            except (msgspec.ValidationError, RecursionError):  # wrong type; nested too deep
                letters.append(("invalid_field", _bytes(raw)))
                continue
            except (msgspec.DecodeError, UnicodeDecodeError):  # invalid UTF-8 in a string read
                letters.append(("malformed_json", _bytes(raw)))
                continue
            kept.append(raw)
            if kept_pos is not None:
                kept_pos.append(positions[i])  # type: ignore[index]
        return msgs, kept, kept_pos

    def _unknown(self, li: str | None, raw: bytes | str, out: Classified, now_us: int) -> None:
        """Refuse an event of a line item with no route: kept whole (``unknown_line_item``),
        unless campaignd never made the line item and its samples of the day are taken --
        then only counted (``out.unkept``). A sample is reserved (``_unknown_pending``) when
        the batch is prepared and taken (``_unknown_kept``) when it is counted
        (``commit_samples``), so that batches prepared ahead of counting share the day's
        allowance, and one prepared and then dropped (a store outage: ``clear_pending``)
        takes none."""
        n = self.unknown_samples
        if n is None or li is None or self.registry.managed(li):
            out.letters.append(("unknown_line_item", _bytes(raw)))
            return
        day = now_us // 86_400_000_000
        if day != self._unknown_day:
            self._unknown_day, self._unknown_iso = day, _iso_day(day)
            self._unknown_kept.clear()
            self._unknown_pending.clear()
            self._unknown_seen.clear()
        out.sample_day = self._unknown_iso
        if li not in self._unknown_seen:
            if len(self._unknown_seen) >= MAX_UNKNOWN_TRACKED:
                out.unkept["other"] += 1  # (one row for the rest of a day's line items)
                return
            self._unknown_seen.add(li)
        pending = self._unknown_pending.get(li, 0)
        if self._unknown_kept.get(li, 0) + pending < n:
            self._unknown_pending[li] = pending + 1
            out.sampled[li] = out.sampled.get(li, 0) + 1
            out.letters.append(("unknown_line_item", _bytes(raw)))
        else:
            out.unkept[li] += 1

    def commit_samples(self, out: Classified) -> None:
        """The samples a counted batch reserved are taken (see ``_unknown``)."""
        if not out.sampled or out.sample_day != self._unknown_iso:
            return  # (a batch of a day gone by: that day's counts are gone)
        kept, pending = self._unknown_kept, self._unknown_pending
        for li, k in out.sampled.items():
            kept[li] = kept.get(li, 0) + k
            left = pending.get(li, 0) - k
            if left > 0:
                pending[li] = left
            else:
                pending.pop(li, None)

    def clear_pending(self) -> None:
        """Batches prepared and not counted were dropped: their reserved samples are free."""
        self._unknown_pending.clear()

    def classify(self, msgs: Sequence[AdLogView], raws: Sequence[bytes | str],
                 positions: Sequence[int] | None, *, now_us: int, reference_us: int,
                 out: Classified, rotate: bool = True) -> int:
        """Append accepted events to ``out`` (refused ones to ``out.letters``).

        ``rotate=False`` leaves the impression context's generation change to the caller
        (``ImpressionContext.rotate``), e.g. once per batch classified in several calls, so
        that how a batch is split does not change which impressions stay findable.

        ``now_us`` bounds future timestamps; ``reference_us`` is the time the at-least-once
        window counts back from (the clock for a live feed, the newest event seen for a replayed
        file). Returns the newest accepted event time (usecs; 0 when none).
        """
        routes = self.registry.routes
        ctx = self.context
        ctx_new = ctx.new
        local = self.local
        spans = self._spans
        too_new = now_us + self.future_us
        too_old = reference_us - self.window_us
        keys, poss, slots = out.keys, out.positions, out.slots
        codes, values, zkeys, usecs = out.codes, out.values, out.zip_keys, out.usecs
        letters = out.letters
        first = len(usecs)
        off_zip = off_hours = off_platform = off_device = 0
        key: str | None
        li: str | None
        ts: str | None
        for i, m in enumerate(msgs):
            value = 0
            imp = m.impression
            if imp is not None:
                key = imp.auction_adgroup_id or imp.adgroup_key()
                if not key:
                    letters.append(("missing_dedupe_key", _bytes(raws[i])))
                    continue
                ag = imp.adgroupid
                li = ag.lineitemid if ag is not None else key.rsplit(".", 1)[-1]
                ts = imp.rx_timestamp_usecs
                dkey = "i:" + key
                price = imp.win_price_micros_usd
                if price is not None:
                    try:
                        value = int(price)
                    except ValueError:
                        letters.append(("bad_money", _bytes(raws[i])))
                        continue
                    if not 0 <= value <= MAX_IMPRESSION_PRICE_MICROS:
                        letters.append(("bad_money", _bytes(raws[i])))
                        continue
                code = IMP_UNMEASURED if imp.is_measurable is False else IMP_MEASURED
            elif m.activity:
                act = m.activity[0]
                key = act.auction_adgroup_id or act.adgroup_key()
                if not key:
                    letters.append(("missing_dedupe_key", _bytes(raws[i])))
                    continue
                ag = act.adgroupid
                li = ag.lineitemid if ag is not None else key.rsplit(".", 1)[-1]
                ts = act.rx_timestamp_usecs
                dkey = "a:" + act.type + ":" + key
                code = ACTIVITY_CODE.get(act.type, ACT_OTHER)
            elif m.clicks:
                clk = m.clicks[0]
                key = clk.auction_adgroup_id or clk.adgroup_key()
                if not key:
                    letters.append(("missing_dedupe_key", _bytes(raws[i])))
                    continue
                ag = clk.adgroupid
                li = ag.lineitemid if ag is not None else key.rsplit(".", 1)[-1]
                ts = clk.rx_timestamp_usecs
                # a viewer may click one impression more than once (Beeswax counts each:
                # the win log's `clicks`); a redelivered click has the same receive time
                dkey = "c:" + key + ":" + (clk.rx_timestamp_usecs or "")
                code = CLICK
            elif m.conversion is not None:
                conv = m.conversion
                cid = conv.conversion_id or conv.ord
                if not cid:
                    letters.append(("missing_dedupe_key", _bytes(raws[i])))
                    continue
                ts = conv.rx_timestamp_usecs or conv.rx_timestamp
                dkey = "v:" + cid
                code = CONVERSION
                if conv.value is not None or conv.value_micros is not None:
                    v = conv.value_in_micros()
                    if v is None or not 0 <= v <= MAX_CONVERSION_VALUE_MICROS:
                        letters.append(("bad_money", _bytes(raws[i])))
                        continue
                    value = v
                key = conv.auction_adgroup_id or ""
                li = key.rsplit(".", 1)[-1] if key else None
            else:
                letters.append(("empty_message", _bytes(raws[i])))
                continue
            if ts is None:
                letters.append(("missing_timestamp", _bytes(raws[i])))
                continue
            try:
                t_us = int(ts)
            except ValueError:
                letters.append(("wrong_type", _bytes(raws[i])))
                continue
            if t_us > too_new:
                letters.append(("timestamp_in_future", _bytes(raws[i])))
                continue
            if t_us < too_old:
                letters.append(("timestamp_too_old", _bytes(raws[i])))
                continue
            route = routes.get(li) if li is not None else None
            if code == CONVERSION:
                auction = (_auction_of(key) if key else None) or m.conversion.auctionid  # type: ignore[union-attr]
                packed = ctx.get(auction) if auction else None
                if route is not None:
                    slot = route.slot
                    zk = (packed & _ZK_MASK
                          if packed is not None and packed >> _CTX_SHIFT == slot
                          else route.other_zip)
                elif packed is not None:
                    slot, zk = packed >> _CTX_SHIFT, packed & _ZK_MASK
                elif li is None:
                    letters.append(("unattributed_conversion", _bytes(raws[i])))
                    continue
                else:
                    self._unknown(li, raws[i], out, now_us)
                    continue
            elif route is None:
                self._unknown(li, raws[i], out, now_us)
                continue
            else:
                slot = route.slot
                if code <= IMP_UNMEASURED:
                    auction = imp.auctionid_str or _auction_of(key)  # type: ignore[union-attr]
                    # Enrichment, inline (the hot path): ZIP, app bundle, viewer-local hour.
                    req = m.request
                    zip_code = bundle = None
                    how = -1
                    if req is not None:
                        br = req.bidrequest
                        if br is not None:
                            dev = br.device
                            if dev is not None:
                                if dev.geo is not None:
                                    zip_code = dev.geo.zip
                                if dev.devicetype is not None and route.device_types and \
                                        dev.devicetype not in route.device_types:
                                    off_device += 1
                            if br.app is not None:
                                bundle = br.app.bundle
                        if req.user_time_of_week is not None:
                            how = req.user_time_of_week // 60 % 168
                    if zip_code is not None:
                        if how < 0:
                            t_s = t_us // 1_000_000
                            span = spans.get(zip_code)
                            if span is None or not span[0] <= t_s < span[1]:
                                span = local.span(zip_code, t_s)
                                if len(spans) >= MAX_CACHED_ZIPS:
                                    spans.clear()
                                spans[zip_code] = span
                            how = (t_s + span[2]) // 3600 % 168 if span[2] is not None else -1
                        if zip_code not in route.zips:
                            off_zip += 1
                        zk = route.zip_keys.get(zip_code, route.other_zip)
                    else:
                        zk = route.other_zip
                    if how >= 0 and how not in route.hours_of_week:
                        off_hours += 1
                    if bundle is not None and route.bundles and bundle not in route.bundles:
                        off_platform += 1
                    ctx_new[auction] = slot << _CTX_SHIFT | zk
                else:
                    auction = (m.activity[0].auctionid_str if code < CLICK else
                               m.clicks[0].auctionid_str) or _auction_of(key)
                    packed = ctx_new.get(auction)
                    if packed is None:
                        packed = ctx.old.get(auction)
                    zk = (packed & _ZK_MASK
                          if packed is not None and packed >> _CTX_SHIFT == slot
                          else route.other_zip)
            keys.append(dkey)
            if positions is not None:
                poss.append(positions[i])
            slots.append(slot)
            usecs.append(t_us)
            codes.append(code)
            values.append(value)
            zkeys.append(zk)
        if rotate:
            ctx.rotate()
        mism = out.mismatches
        for dim, n in (("zip", off_zip), ("daypart", off_hours), ("platform", off_platform),
                       ("device", off_device)):
            if n:
                mism[dim] += n
        return max(usecs[first:], default=0)


def _bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else bytes(raw)


__all__ = ["DEDUPE_WINDOW_S", "KIND_OF_CODE", "MAX_FUTURE_S", "N_CODES", "REASONS",
           "Classified", "Classifier", "ImpressionContext"]
