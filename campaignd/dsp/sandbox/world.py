"""The scenario's true world translated to DSP-level terms, and the auction's closed form.

``World`` owns the translation from a ``Scenario`` (campaign levels and their true effects) to
what a DSP sees: ZIPs (timezone, hidden supply weight, hidden conversion heterogeneity, audience
and ZIP-cluster effects), data segments (reach, signal share of audience effects), app bundles
(platform supply, floor, platform effects), creative keys, viewer local hour-of-week (daypart
effects) and bids (interpolated bid-strategy effects). Its registries grow as line items name new
ZIPs, bundles and creative keys; a ZIP's hidden facts are fixed by ``(world_seed, ZIP)``, so they
do not depend on the order in which ZIPs are met.

Also here: ``auction_curve`` (win rate and second-price clearing CPM against logistic competing
bids), the metric indices of the (ctr, completion, viewability, conversion) logit vectors, and
the epoch-microsecond helpers the market's modules share.
"""

from __future__ import annotations

import math
import zlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from campaignd.domain.campaign import MICROS
from campaignd.domain.geo import zip_info, zip_timezone
from campaignd.dsp.sandbox.scenarios import Scenario, ZipCluster

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CTR, COMPLETION, VIEWABILITY, CONVERSION = range(4)
"""Indices of the metrics in the logit / rate vectors (the order of ``scenarios.METRICS``)."""


def usecs(dt: datetime) -> int:
    """Microseconds since the epoch (exact)."""
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_usecs(us: int) -> datetime:
    """The UTC datetime of ``us`` microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def auction_curve(bid_cpm: np.ndarray, floor_cpm: np.ndarray, width_cpm: float,
                  reserve_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Win rate and expected clearing CPM (same unit as the inputs) for bids against competing
    bids ~ logistic(floor, width), second-price with a reserve of ``reserve_fraction x floor``."""
    b = np.asarray(bid_cpm, dtype=float)
    f = np.asarray(floor_cpm, dtype=float)
    w = float(width_cpm)
    r = reserve_fraction * f
    win = sigmoid((b - f) / w)
    total = b * win - w * (_softplus((b - f) / w) - _softplus((r - f) / w))
    ok = b > r
    win = np.where(ok, win, 0.0)
    price = np.where(ok & (win > 0), np.clip(total / np.where(win > 0, win, 1.0), r, b), 0.0)
    return win, price


class World:
    """Scenario facts translated to DSP terms, with registries that grow as line items name
    new ZIPs, bundles, creative keys and segments."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        spec = sc.campaign
        self.base_logit = np.array(sc.base.logits())
        # hour-of-week effects from dayparts
        self.how_logit = np.zeros((4, 168))
        for dp in spec.dayparts:
            d = np.array(sc.effect("daypart", dp.id).as_tuple())
            for h in dp.hours_of_week():
                self.how_logit[:, h] += d
        self.curve = np.array(sc.supply.hourly)
        # bids
        bids = sorted(spec.bid_strategies, key=lambda b: b.cpm_bid)
        self.bid_levels = [b.id for b in bids]
        self.bid_cpm = np.array([float(b.cpm_bid) for b in bids])
        self.bid_deltas = np.array([sc.effect("bid_strategy", b.id).as_tuple() for b in bids])
        # audiences → ZIP and segment effects
        self.audience_zips = {a.id: frozenset(a.zips) for a in spec.audiences}
        self.audience_index = {a.id: i for i, a in enumerate(spec.audiences)}
        self.n_groups = len(spec.audiences) + 1
        self.seg_effect: dict[str, np.ndarray] = {}
        for a in spec.audiences:
            d = np.array(sc.effect("audience", a.id).as_tuple()) * sc.signal_share
            for s in a.signals:
                self.seg_effect[s] = self.seg_effect.get(s, np.zeros(4)) + d
        self.reach_by = dict(sc.supply.segment_reach_by)
        # platforms → bundles
        self.platform_of: dict[str, str] = {}
        for p in spec.platforms:
            for b in p.app_bundles:
                self.platform_of.setdefault(b, p.id)
        self.platform_bundles = {p.id: p.app_bundles for p in spec.platforms}
        self.platform_devices = {p.id: p.device_types for p in spec.platforms}
        self.per_zip_hour = dict(sc.supply.per_zip_hour)
        self.floors = dict(sc.auction.floor_cpm_micros)
        self.default_zips = tuple(sorted({z for a in spec.audiences for z in a.zips}
                                         | {z for c in sc.zip_clusters for z in c.zips}))
        self.default_bundles = tuple(sorted(self.platform_of))
        # registries
        self.zip_idx: dict[str, int] = {}
        self.zip_tz: list[int] = []
        self.zip_weight: list[float] = []
        self.zip_logit: list[np.ndarray] = []
        self.zip_group: list[int] = []
        self.zips: list[str] = []
        self.tz_idx: dict[str, int] = {}
        self.tzs: list[ZoneInfo] = []
        self.bundle_idx: dict[str, int] = {}
        self.bundles: list[str] = []
        self.bundle_supply: list[float] = []
        self.bundle_floor: list[float] = []
        self.bundle_logit: list[np.ndarray] = []
        self.bundle_platform: list[str | None] = []
        self.creative_idx: dict[str, int] = {}
        self.creatives: list[str] = []
        self.creative_logit: list[np.ndarray] = []
        self._how_cache: dict[int, np.ndarray] = {}

    # registries
    def zip(self, z: str) -> int:
        i = self.zip_idx.get(z)
        if i is not None:
            return i
        sc = self.sc
        tzname = zip_timezone(z)
        if tzname not in self.tz_idx:
            self.tz_idx[tzname] = len(self.tzs)
            self.tzs.append(ZoneInfo(tzname))
            self._how_cache.clear()
        key = int(z) if z.isdigit() else zlib.crc32(z.encode())
        rng = np.random.default_rng([sc.world_seed, key])
        sig = sc.supply.zip_sigma
        weight = float(math.exp(sig * rng.standard_normal() - sig * sig / 2))
        logit = np.zeros(4)
        logit[CONVERSION] += sc.zip_sigma * rng.standard_normal()
        group = self.n_groups - 1
        for a in sc.campaign.audiences:
            if z in self.audience_zips[a.id]:
                logit += np.array(sc.effect("audience", a.id).as_tuple()) * (1 - sc.signal_share)
                if group == self.n_groups - 1:
                    group = self.audience_index[a.id]
        info = zip_info(z)
        for c in sc.zip_clusters:
            if _in_cluster(z, info, c):
                logit += np.array(c.deltas.as_tuple())
        i = len(self.zips)
        self.zip_idx[z] = i
        self.zips.append(z)
        self.zip_tz.append(self.tz_idx[tzname])
        self.zip_weight.append(weight)
        self.zip_logit.append(logit)
        self.zip_group.append(group)
        return i

    def bundle(self, b: str) -> int:
        i = self.bundle_idx.get(b)
        if i is not None:
            return i
        plat = self.platform_of.get(b)
        if plat is not None:
            supply = self.per_zip_hour.get(plat, self.sc.supply.default_per_zip_hour) / len(
                self.platform_bundles[plat])
            floor = self.floors.get(plat, self.sc.auction.default_floor_cpm_micros)
            logit = np.array(self.sc.effect("platform", plat).as_tuple())
        else:
            supply = self.sc.supply.default_per_zip_hour
            floor = self.sc.auction.default_floor_cpm_micros
            logit = np.zeros(4)
        i = len(self.bundles)
        self.bundle_idx[b] = i
        self.bundles.append(b)
        self.bundle_supply.append(float(supply))
        self.bundle_floor.append(float(floor))
        self.bundle_logit.append(logit)
        self.bundle_platform.append(plat)
        return i

    def creative(self, key: str) -> int:
        i = self.creative_idx.get(key)
        if i is not None:
            return i
        known = {c.id for c in self.sc.campaign.creatives}
        logit = (np.array(self.sc.effect("creative", key).as_tuple()) if key in known
                 else np.zeros(4))
        i = len(self.creatives)
        self.creative_idx[key] = i
        self.creatives.append(key)
        self.creative_logit.append(logit)
        return i

    def segment_reach(self, segments: frozenset[str] | None) -> float:
        if segments is None:
            return 1.0
        miss = 1.0
        for s in segments:
            miss *= 1.0 - self.reach_by.get(s, self.sc.supply.segment_reach)
        return 1.0 - miss

    def segment_logit(self, segments: frozenset[str] | None) -> np.ndarray:
        if not segments:
            return np.zeros(4)
        return np.mean([self.seg_effect.get(s, np.zeros(4)) for s in sorted(segments)], axis=0)

    def bid_logit(self, bid_micros: int) -> np.ndarray:
        b = bid_micros / MICROS
        return np.array([np.interp(b, self.bid_cpm, self.bid_deltas[:, m]) for m in range(4)])

    def nearest_bid_level(self, bid_micros: int) -> str:
        b = bid_micros / MICROS
        return self.bid_levels[int(np.argmin(np.abs(self.bid_cpm - b)))]

    def how_by_tz(self, when: datetime) -> tuple[np.ndarray, np.ndarray]:
        """Viewer local hour-of-week and minute offset (seconds east of UTC) per timezone."""
        hour_key = usecs(when) // 3_600_000_000
        hit = self._how_cache.get(hour_key)
        if hit is None:
            hows = np.empty(len(self.tzs), dtype=np.int64)
            offs = np.empty(len(self.tzs), dtype=np.int64)
            for i, tz in enumerate(self.tzs):
                loc = when.astimezone(tz)
                hows[i] = ((loc.weekday() + 1) % 7) * 24 + loc.hour
                off = loc.utcoffset()
                offs[i] = int(off.total_seconds()) if off is not None else 0
            hit = np.stack([hows, offs])
            if len(self._how_cache) > 4096:
                self._how_cache.clear()
            self._how_cache[hour_key] = hit
        return hit[0], hit[1]


def _in_cluster(z: str, info: object, c: ZipCluster) -> bool:
    if c.zips:
        return z in c.zips
    if info is None:
        return False
    if c.state is not None:
        return getattr(info, "state", None) == c.state
    if c.near is not None:
        centre = zip_info(c.near)
        if centre is None:
            return False
        return _haversine_km(centre.lat, centre.lon, info.lat, info.lon) <= c.radius_km  # type: ignore[attr-defined]
    return False


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a)))


__all__ = ["COMPLETION", "CONVERSION", "CTR", "VIEWABILITY", "World", "auction_curve",
           "from_usecs", "sigmoid", "usecs"]
