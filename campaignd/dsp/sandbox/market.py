"""The sandbox's ground-truth market: delivery, outcomes and events from DSP-level facts.

``Market`` implements ``MarketProtocol``. It sees only ``LineItemConfig`` values (targeting, bid,
budgets, creatives, flight, active) and a ``Scenario`` (the true world). Per internal step (at
most ``step_seconds``, aligned to a grid so no step crosses a local hour or a UTC midnight):

1. **Supply.** Every (line item, ZIP, app bundle, creative) is a *pair*. A (ZIP, bundle) *unit*
   offers ``per_zip_hour[platform] / bundles x zip weight x hourly[viewer local hour]``
   impressions per hour (the ZIP's timezone gives the local hour). A line item buys a pair only
   if the viewer's local hour-of-week is targeted. A unit's supply is split equally among the
   eligible line items targeting it (the DSP picks one of the advertiser's line items per
   request), times the line item's segment reach (``1 - Π(1 - reach)``) and its win rate.
2. **Auction.** Competing bids ~ logistic(platform floor, width); win rate = P(competing < bid);
   clearing price = E[max(competing bid, reserve) | win] (second price). Closed form.
3. **Budgets.** Impressions are capped so that spend never exceeds the lifetime budget nor the
   paced daily allowance: ``daily x min(1, F(t) + catch_up)`` where F is the elapsed fraction of
   the UTC day, weighted by the line item's own expected supply (``pacing.mode = "supply"``,
   i.e. even pacing over available inventory) or by clock time (``"time"``).
4. **Outcomes.** Wins ~ Poisson(available); outcome counts are binomial draws from the true
   rates: logit(base) + level effects (attached to ZIPs, segments, bundles, creative keys, local
   hours, bid) + interactions + ZIP clusters + hidden ZIP heterogeneity + drift, with creative
   fatigue (per creative x audience exposure) multiplying the fatigued rates.
5. **Conversions** are caused by impressions, then wait out a sampled delay in a pending queue.
   Multi-touch journeys: a converting user may have seen other line items afterwards; the DSP
   credits the *last* touch, while each touch's true contribution (∝ its true conversion rate)
   is kept as ground truth (``true_contributions``).

Randomness: totals use one seeded generator and events another, so asking for events does not
change the totals. The hidden world (ZIP weights and heterogeneity) is fixed by the scenario's
``world_seed``, so runs with different seeds differ only in noise.

The world's ZIPs are those the scenario's campaign names plus any ZIP a line item targets; a line
item with ``zips = None`` buys the campaign's ZIPs, with ``app_bundles = None`` the campaign's
bundles, with ``segments = None`` every viewer (reach 1); an *empty* set matches nothing.
App bundles of no campaign platform get ``supply.default_per_zip_hour`` and the default floor;
creative keys the scenario does not know have no effect.

``StepTotals`` and ``delivered()`` cover every line item ever configured (sorted by id), removed
ones included: their pending conversions still arrive.

Ground truth for the oracle and tests: ``flow``, ``forecast``, ``true_rates``,
``expected_value_per_dollar``, ``true_contributions``, ``journeys``.
"""

from __future__ import annotations

import heapq
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from campaignd.domain.campaign import MICROS
from campaignd.domain.geo import zip_info, zip_timezone
from campaignd.dsp.sandbox.model import (
    ActivityEvent,
    ClickEvent,
    ConversionEvent,
    ImpressionEvent,
    LineItemConfig,
    MarketEvent,
    StepTotals,
)
from campaignd.dsp.sandbox.scenarios import METRICS, Scenario, ZipCluster

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CTR, _COMPLETION, _VIEWABILITY, _CONVERSION = range(4)
TOTAL_KEYS: tuple[str, ...] = ("impressions", "spend_micros", "measurable", "viewable", "starts",
                               "completes", "clicks", "conversions", "conversion_value_micros")
OBJECTIVE_METRIC = {"conversions": "conversions", "revenue": "conversion_value_micros",
                    "completed_views": "completes", "clicks": "clicks"}
_JOURNEY_CAP = 200_000


def _usecs(dt: datetime) -> int:
    d = dt - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def _from_usecs(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _sigmoid(x: np.ndarray) -> np.ndarray:
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
    win = _sigmoid((b - f) / w)
    total = b * win - w * (_softplus((b - f) / w) - _softplus((r - f) / w))
    ok = b > r
    win = np.where(ok, win, 0.0)
    price = np.where(ok & (win > 0), np.clip(total / np.where(win > 0, win, 1.0), r, b), 0.0)
    return win, price


# --- the translated world ------------------------------------------------------------------


class _World:
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
        logit[_CONVERSION] += sc.zip_sigma * rng.standard_normal()
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
        hour_key = _usecs(when) // 3_600_000_000
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


# --- pair tables ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Pairs:
    li: np.ndarray          # slot
    zip: np.ndarray
    bundle: np.ndarray
    cre: np.ndarray
    w: np.ndarray           # creative rotation share
    primary: np.ndarray     # first creative of the (li, unit): counts for competition
    unit: np.ndarray
    n_units: int
    li_tz: np.ndarray       # slot * n_tz + tz
    fg: np.ndarray          # creative * n_groups + group (fatigue key)
    base_supply: np.ndarray
    win: np.ndarray
    price: np.ndarray       # clearing CPM, micros
    static: np.ndarray      # (4, nnz) logits without hour effects, drift or fatigue
    dyn: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]
    """(active from usecs, pair mask, hour-of-week mask, deltas) terms."""


@dataclass(slots=True)
class Flow:
    """What the market offers in one interval, per slot, and the pair detail behind it."""

    avail: np.ndarray       # expected impressions available (after win rate)
    price: np.ndarray       # clearing CPM micros (supply-weighted)
    rates: np.ndarray       # (4, n) true rates, supply-weighted; NaN where no supply
    idx: np.ndarray         # active pair indices
    avail_pair: np.ndarray
    how: np.ndarray         # local hour-of-week per active pair
    off: np.ndarray         # tz offset seconds per active pair


@dataclass(slots=True, frozen=True)
class Forecast:
    """Expected delivery per line item (aligned with ``line_item_ids``) over a window."""

    line_item_ids: np.ndarray
    impressions: np.ndarray
    spend_micros: np.ndarray
    clicks: np.ndarray
    completes: np.ndarray
    conversions: np.ndarray
    conversion_value_micros: np.ndarray

    def objective(self, objective: str) -> np.ndarray:
        out: np.ndarray = getattr(self, OBJECTIVE_METRIC[objective])
        return out


_SLOT_ARRAYS: dict[str, type] = {
    "active": bool, "removed": bool, "has_cre": bool, "lifetime": np.int64, "daily": np.int64,
    "start_us": np.int64, "end_us": np.int64, "bid": np.int64, "reach": float,
    "spent_today": np.int64, "true_contrib": float,
}


class Market:
    """A deterministic ground-truth market (see the module docstring)."""

    def __init__(self, scenario: Scenario, *, seed: int = 0, start: datetime | None = None,
                 step_seconds: int = 300, host_id: int = 3054, buzz_key: str = "sandbox") -> None:
        if step_seconds <= 0 or 3600 % step_seconds:
            raise ValueError("step_seconds must divide 3600")
        self.scenario = scenario
        self.seed = seed
        self.step_seconds = step_seconds
        self._now = (start or scenario.default_start).astimezone(UTC)
        self._origin = self._now
        self._rng = np.random.default_rng([seed, 1])
        self._erng = np.random.default_rng([seed, 2])
        self._w = _World(scenario)
        self._host = host_id
        self._buzz = buzz_key
        self._tid = 0
        self._conv_seq = 0
        # line items
        self._configs: dict[int, LineItemConfig] = {}
        self._slot: dict[int, int] = {}
        self._ids: list[int] = []
        self._cap = 0
        self._a: dict[str, np.ndarray] = {k: np.zeros(0, dtype=t) for k, t in _SLOT_ARRAYS.items()}
        self._how_mask = np.zeros((0, 168), dtype=bool)
        self._totals = np.zeros((len(TOTAL_KEYS), 0), dtype=np.int64)
        self._slot_pairs: dict[int, tuple[np.ndarray, ...]] = {}
        self._pairs: _Pairs | None = None
        self._dirty = True
        self._exposure = np.zeros(0)
        # pacing
        self._day: int | None = None
        self._profile: np.ndarray | None = None  # (n, 24) cumulative fraction at hour ends
        self._profile_day: int | None = None
        self._ntz = 1
        # conversions
        self._pending: list[tuple[int, int, int, int, tuple[str, str, str, str, int]]] = []
        self._journeys: dict[str, tuple[tuple[int, float], ...]] = {}
        fat = scenario.fatigue
        self._fat_metrics = [METRICS.index(m) for m in fat.metrics] if fat.half_life_impressions \
            else []

    # --- protocol ------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self._now

    def configure(self, config: LineItemConfig) -> None:
        lid = config.line_item_id
        old = self._configs.get(lid)
        slot = self._slot.get(lid)
        if slot is None:
            slot = len(self._ids)
            self._slot[lid] = slot
            self._ids.append(lid)
            self._grow(slot + 1)
        self._configs[lid] = config
        a = self._a
        a["removed"][slot] = False
        a["active"][slot] = bool(config.active)
        a["has_cre"][slot] = any(w >= 0 for w in config.creatives.values()) and bool(
            config.creatives)
        a["lifetime"][slot] = max(0, int(config.lifetime_budget_micros))
        a["daily"][slot] = -1 if config.daily_budget_micros is None else max(
            0, int(config.daily_budget_micros))
        a["start_us"][slot] = _usecs(config.start) if config.start else -(2**62)
        a["end_us"][slot] = _usecs(config.end) if config.end else 2**62
        if old is None or _targeting(old) != _targeting(config):
            self._dirty = True
            self._slot_pairs.pop(slot, None)

    def remove(self, line_item_id: int) -> None:
        slot = self._slot.get(line_item_id)
        if slot is not None:
            self._a["removed"][slot] = True

    def set_budgets(self, line_item_ids: Sequence[int] | np.ndarray,
                    daily_budget_micros: np.ndarray, lifetime_budget_micros: np.ndarray) -> None:
        """Bulk budget update for the in-process simulator: what ``configure`` does to budgets,
        without rebuilding configs. A later ``configure`` of the same line item overrides it."""
        slots = np.fromiter((self._slot[int(i)] for i in line_item_ids), dtype=np.int64)
        self._a["daily"][slots] = np.maximum(0, np.asarray(daily_budget_micros, dtype=np.int64))
        self._a["lifetime"][slots] = np.maximum(
            0, np.asarray(lifetime_budget_micros, dtype=np.int64))

    def budgets(self) -> tuple[np.ndarray, np.ndarray]:
        """Current (daily, lifetime) budget micros per slot; daily is -1 where uncapped."""
        n = len(self._ids)
        return self._a["daily"][:n].copy(), self._a["lifetime"][:n].copy()

    def advance(self, until: datetime, *, emit_events: bool = True
                ) -> tuple[StepTotals, Sequence[MarketEvent]]:
        until = until.astimezone(UTC)
        if until < self._now:
            raise ValueError("the market never goes backwards")
        self._rebuild()
        n = len(self._ids)
        acc = np.zeros((len(TOTAL_KEYS), n), dtype=np.int64)
        events: list[MarketEvent] = []
        step_us = self.step_seconds * 1_000_000
        t = _usecs(self._now)
        end = _usecs(until)
        while t < end:
            nxt = min(end, (t // step_us + 1) * step_us)
            self._step(t, nxt, acc, events if emit_events else None)
            t = nxt
        self._now = until
        self._totals[:, :n] += acc
        order = np.argsort(np.array(self._ids, dtype=np.int64), kind="stable")
        acc = acc[:, order]
        totals = StepTotals(np.array(self._ids, dtype=np.int64)[order],
                            *(acc[i] for i in range(len(TOTAL_KEYS))))
        if emit_events:
            events.sort(key=lambda e: e.ts_usecs)
        return totals, events

    def delivered(self) -> Mapping[int, Mapping[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for lid in sorted(self._ids):
            s = self._slot[lid]
            out[lid] = {k: int(self._totals[i, s]) for i, k in enumerate(TOTAL_KEYS)}
        return out

    # --- ground truth ----------------------------------------------------------------------

    def line_item_ids(self) -> np.ndarray:
        """Every line item ever configured, in slot order (the order of the ground-truth arrays
        below)."""
        return np.array(self._ids, dtype=np.int64)

    def spent_today_micros(self) -> np.ndarray:
        """Spend of each slot since the last UTC midnight (before ``now``)."""
        n = len(self._ids)
        if self._day != _usecs(self._now) // 86_400_000_000:
            return np.zeros(n, dtype=np.int64)  # a new day has begun: nothing spent yet
        return self._a["spent_today"][:n].copy()

    def totals_array(self) -> np.ndarray:
        """Lifetime totals (``TOTAL_KEYS`` x slots), int64, a copy."""
        return self._totals[:, : len(self._ids)].copy()

    def static_eligible(self, at: datetime | None = None) -> np.ndarray:
        """Slots that may deliver at ``at`` if budget allows (active, creative, in flight)."""
        n = len(self._ids)
        a = self._a
        t = _usecs(at or self._now)
        return (a["active"][:n] & ~a["removed"][:n] & a["has_cre"][:n]
                & (a["start_us"][:n] <= t) & (t < a["end_us"][:n]))

    def flow(self, start: datetime, end: datetime, eligible: np.ndarray | None = None) -> Flow:
        """Expected supply, clearing price and true rates per slot for one interval (which must
        not cross a local hour), with competition among ``eligible`` slots."""
        self._rebuild()
        el = self.static_eligible(start) if eligible is None else eligible
        return self._flow(_usecs(start), _usecs(end), el)

    def true_rates(self, line_item_id: int, at: datetime | None = None) -> dict[str, float]:
        """The line item's true per-impression rates (``ctr``, ``completion`` per start,
        ``viewability`` per measurable, ``conversion``) at ``at``, weighted by its supply; if it
        has no supply then, over the next 24 hours."""
        self._rebuild()
        slot = self._slot[line_item_id]
        at = (at or self._now).astimezone(UTC)
        el = self.static_eligible(at)
        el[slot] = True
        t = _usecs(at)
        hour = 3_600_000_000
        t0 = t - t % hour
        num = np.zeros(4)
        den = 0.0
        for h in range(25):
            f = self._flow(max(t, t0 + h * hour) if h == 0 else t0 + h * hour,
                           t0 + (h + 1) * hour, el)
            if f.avail[slot] > 0:
                num += f.rates[:, slot] * f.avail[slot]
                den += f.avail[slot]
                if h == 0:
                    break
        if den == 0:
            return dict.fromkeys(METRICS, float("nan"))
        r = num / den
        return {m: float(r[i]) for i, m in enumerate(METRICS)}

    def forecast(self, start: datetime, end: datetime, *, eligible: np.ndarray | None = None,
                 slot_seconds: int = 3600, compete: bool = True) -> Forecast:
        """Expected delivery per slot over ``[start, end)`` if budgets did not bind, with the
        current fatigue, competition among ``eligible`` slots (default: statically eligible).
        ``compete=False``: each slot as if it were the only one of the advertiser's line items
        buying its inventory (its sole-bidder capacity)."""
        self._rebuild()
        n = len(self._ids)
        out = np.zeros((6, n))
        sc = self.scenario
        mean_value = sc.conversion_value.mean_micros
        t = _usecs(start)
        e = _usecs(end)
        step = slot_seconds * 1_000_000
        while t < e:
            nxt = min(e, (t // step + 1) * step)
            el = self.static_eligible(_from_usecs(t)) if eligible is None else eligible
            f = self._flow(t, nxt, el, compete=compete)
            r = np.nan_to_num(f.rates)
            out[0] += f.avail
            out[1] += f.avail * f.price / 1000.0
            out[2] += f.avail * r[_CTR]
            out[3] += f.avail * sc.base.start * r[_COMPLETION]
            out[4] += f.avail * r[_CONVERSION]
            out[5] += f.avail * r[_CONVERSION] * mean_value
            t = nxt
        return Forecast(self.line_item_ids(), *out)

    def expected_value_per_dollar(self, objective: str, start: datetime, end: datetime, *,
                                  eligible: np.ndarray | None = None) -> np.ndarray:
        """True expected objective units per currency unit of spend, per slot (0 if no supply)."""
        f = self.forecast(start, end, eligible=eligible)
        v = f.objective(objective)
        return np.where(f.spend_micros > 0, v / np.maximum(f.spend_micros, 1e-9) * MICROS, 0.0)

    def fatigue_outlook(self, extra_impressions: np.ndarray) -> np.ndarray:
        """Per slot: the average fatigue multiplier while each slot delivers
        ``extra_impressions[slot]`` more impressions, relative to the current one (1 = no
        further fatigue). Impressions are spread over a slot's pairs by supply, and exposure is
        shared by every slot showing the same creative to the same audience."""
        self._rebuild()
        n = len(self._ids)
        fat = self.scenario.fatigue
        P = self._pairs
        assert P is not None
        if not self._fat_metrics or P.li.size == 0 or fat.half_life_impressions is None:
            return np.ones(n)
        hl = fat.half_life_impressions
        wts = P.base_supply * P.w * P.win * self._a["reach"][P.li]
        tot = np.bincount(P.li, wts, minlength=n)
        wn = wts / np.where(tot[P.li] > 0, tot[P.li], 1.0)
        extra = np.asarray(extra_impressions, dtype=float)
        add = np.bincount(P.fg, wn * extra[P.li], minlength=self._exposure.size)
        x0 = self._exposure[P.fg]
        d = add[P.fg]
        decay = np.exp2(-x0 / hl)
        cur = fat.floor + (1 - fat.floor) * decay
        k = d * math.log(2) / hl
        avg_decay = np.where(k > 1e-12, decay * (1 - np.exp(-k)) / np.where(k > 1e-12, k, 1.0),
                             decay)
        ratio = (fat.floor + (1 - fat.floor) * avg_decay) / cur
        out = np.bincount(P.li, wn * ratio, minlength=n)
        return np.where(tot > 0, out, 1.0)

    def fatigued_metrics(self) -> tuple[str, ...]:
        return tuple(METRICS[i] for i in self._fat_metrics)

    def true_contributions(self) -> dict[int, float]:
        """Conversions truly caused, by line item (fractional: multi-touch credit ∝ true rate)."""
        tc = self._a["true_contrib"]
        return {lid: float(tc[self._slot[lid]]) for lid in sorted(self._ids)}

    def journeys(self) -> Mapping[str, tuple[tuple[int, float], ...]]:
        """Ground truth for emitted conversions: conversion id → ((line item, true credit), …),
        touches in time order, the last one being the one the DSP attributes."""
        return self._journeys

    def pending_conversions(self) -> int:
        return len(self._pending)

    # --- internals ---------------------------------------------------------------------------

    def _grow(self, n: int) -> None:
        if n <= self._cap:
            return
        cap = max(n, 2 * self._cap, 16)
        self._cap = cap
        for k, arr in self._a.items():
            new = np.zeros(cap, dtype=arr.dtype)
            new[: arr.size] = arr
            self._a[k] = new
        hm = np.zeros((cap, 168), dtype=bool)
        hm[: self._how_mask.shape[0]] = self._how_mask
        self._how_mask = hm
        tot = np.zeros((len(TOTAL_KEYS), cap), dtype=np.int64)
        tot[:, : self._totals.shape[1]] = self._totals
        self._totals = tot
        if self._profile is not None:
            prof = np.ones((cap, 24))
            prof[: self._profile.shape[0]] = self._profile
            self._profile = prof

    def _pairs_for(self, slot: int, cfg: LineItemConfig) -> tuple[np.ndarray, ...]:
        w = self._w
        zips = sorted(cfg.zips) if cfg.zips is not None else list(w.default_zips)
        bundles = sorted(cfg.app_bundles) if cfg.app_bundles is not None else list(
            w.default_bundles)
        cres = sorted(cfg.creatives.items())
        tw = sum(max(0, x) for _, x in cres)
        shares = [(k, (max(0, x) / tw) if tw > 0 else 1.0 / len(cres)) for k, x in cres]
        shares = [(k, s) for k, s in shares if s > 0]
        zi = np.array([w.zip(z) for z in zips], dtype=np.int64)
        bi = np.array([w.bundle(b) for b in bundles], dtype=np.int64)
        ci = np.array([w.creative(k) for k, _ in shares], dtype=np.int64)
        cw = np.array([s for _, s in shares])
        nz, nb, nc = zi.size, bi.size, ci.size
        if nz * nb * nc == 0:
            e = np.zeros(0, dtype=np.int64)
            return e, e, e, np.zeros(0), np.zeros(0, dtype=bool)
        grid = np.meshgrid(zi, bi, np.arange(nc), indexing="ij")
        z, b, c = (g.ravel() for g in grid)
        return z, b, ci[c], cw[c], c == 0

    def _rebuild(self) -> None:
        if not self._dirty:
            return
        w = self._w
        sc = self.scenario
        n = len(self._ids)
        parts = []
        for slot, lid in enumerate(self._ids):
            cfg = self._configs[lid]
            got = self._slot_pairs.get(slot)
            if got is None:
                got = self._pairs_for(slot, cfg)
                self._slot_pairs[slot] = got
                hm = np.zeros(168, dtype=bool)
                if cfg.hours_of_week is None:
                    hm[:] = True
                else:
                    hm[[h for h in cfg.hours_of_week if 0 <= h < 168]] = True
                self._how_mask[slot] = hm
                self._a["reach"][slot] = w.segment_reach(cfg.segments)
                self._a["bid"][slot] = cfg.cpm_bid_micros
            parts.append(got)
        sizes = np.array([p[0].size for p in parts], dtype=np.int64)
        li = np.repeat(np.arange(n, dtype=np.int64), sizes)
        cat = (lambda i, dt: np.concatenate([p[i] for p in parts]).astype(dt)  # noqa: E731
               if parts else np.zeros(0, dtype=dt))
        pz, pb, pc = cat(0, np.int64), cat(1, np.int64), cat(2, np.int64)
        pw, prim = cat(3, float), cat(4, bool)
        nb = max(1, len(w.bundles))
        unit_raw = pz * nb + pb
        uniq, unit = np.unique(unit_raw, return_inverse=True)
        ntz = max(1, len(w.tzs))
        ztz = np.array(w.zip_tz, dtype=np.int64)
        zw = np.array(w.zip_weight)
        zl = np.array(w.zip_logit).reshape(-1, 4)
        zg = np.array(w.zip_group, dtype=np.int64)
        bs = np.array(w.bundle_supply)
        bf = np.array(w.bundle_floor)
        bl = np.array(w.bundle_logit).reshape(-1, 4)
        cl = np.array(w.creative_logit).reshape(-1, 4)
        bids = self._a["bid"][:n].astype(float)
        ptz = ztz[pz] if pz.size else pz
        win, price = auction_curve(bids[li], bf[pb], sc.auction.width_cpm_micros,
                                   sc.auction.reserve_fraction)
        # per-slot logit pieces
        li_logit = np.zeros((n, 4))
        for slot, lid in enumerate(self._ids):
            cfg = self._configs[lid]
            li_logit[slot] = w.bid_logit(cfg.cpm_bid_micros) + w.segment_logit(cfg.segments)
        static = (w.base_logit[:, None] + zl[pz].T + bl[pb].T + cl[pc].T + li_logit[li].T)
        dyn: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
        origin = _usecs(self._origin)
        terms = [(-1.0, x.levels, x.deltas) for x in sc.interactions] + [
            (origin + d.at_day * 86_400e6, d.levels, d.deltas) for d in sc.drift]
        for at, levels, deltas in terms:
            pm, hm = self._level_masks(levels, pz, pb, pc, li)
            dv = np.array(deltas.as_tuple())
            if at < 0 and hm.all():
                static += dv[:, None] * pm[None, :]
            else:
                dyn.append((at, pm, hm, dv))
        nz = max(1, len(w.zips))
        fg = pc * w.n_groups + zg[pz] if pz.size else pz
        nfg = len(w.creatives) * w.n_groups
        if self._exposure.size < nfg:
            ex = np.zeros(nfg)
            ex[: self._exposure.size] = self._exposure
            self._exposure = ex
        del nz
        self._pairs = _Pairs(li, pz, pb, pc, pw, prim, unit, int(uniq.size), li * ntz + ptz, fg,
                             zw[pz] * bs[pb] if pz.size else np.zeros(0), win, price, static, dyn)
        self._ntz = ntz
        self._dirty = False
        self._profile_day = None  # recompute the pacing profile with the new targeting

    def _level_masks(self, levels: tuple[tuple[str, str], ...], pz: np.ndarray, pb: np.ndarray,
                     pc: np.ndarray, li: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = self._w
        spec = self.scenario.campaign
        pm = np.ones(pz.size, dtype=bool)
        hm = np.ones(168, dtype=bool)
        for dim, lvl in levels:
            if dim == "audience":
                zs = np.array([z in w.audience_zips[lvl] for z in w.zips], dtype=bool)
                pm &= zs[pz] if zs.size else False
            elif dim == "platform":
                bm = np.array([p == lvl for p in w.bundle_platform], dtype=bool)
                pm &= bm[pb] if bm.size else False
            elif dim == "creative":
                cm = np.array([c == lvl for c in w.creatives], dtype=bool)
                pm &= cm[pc] if cm.size else False
            elif dim == "bid_strategy":
                sm = np.array([w.nearest_bid_level(self._configs[lid].cpm_bid_micros) == lvl
                               for lid in self._ids], dtype=bool)
                pm &= sm[li] if sm.size else False
            elif dim == "daypart":
                d = spec.level("daypart", lvl)
                m = np.zeros(168, dtype=bool)
                m[list(d.hours_of_week())] = True  # type: ignore[union-attr]
                hm &= m
        return pm, hm

    def _flow(self, t0: int, t1: int, el: np.ndarray, *, compete: bool = True) -> Flow:
        P = self._pairs
        assert P is not None
        w = self._w
        n = len(self._ids)
        mid = _from_usecs((t0 + t1) // 2)
        how_tz, off_tz = w.how_by_tz(mid)
        ntz = self._ntz
        mask_lt = self._how_mask[:n][:, how_tz] & el[:n, None]     # (n, ntz)
        idx = np.flatnonzero(mask_lt.ravel()[P.li_tz]) if P.li.size else P.li
        if idx.size == 0:
            z = np.zeros(n)
            return Flow(z, z.copy(), np.full((4, n), np.nan), idx, np.zeros(0), idx, idx)
        li = P.li[idx]
        ptz = P.li_tz[idx] - li * ntz
        how = how_tz[ptz]
        unit = P.unit[idx]
        n_u = (np.bincount(unit[P.primary[idx]], minlength=P.n_units) if compete
               else np.ones(P.n_units, dtype=np.int64))
        dt_h = (t1 - t0) / 3.6e9
        supply = P.base_supply[idx] * w.curve[how % 24] * dt_h
        avail_pair = supply / np.maximum(n_u[unit], 1) * P.w[idx] * P.win[idx] \
            * self._a["reach"][li]
        avail = np.bincount(li, avail_pair, minlength=n)
        safe = np.where(avail > 0, avail, 1.0)
        price = np.bincount(li, avail_pair * P.price[idx], minlength=n) / safe
        logits = P.static[:, idx] + w.how_logit[:, how]
        tmid = (t0 + t1) / 2
        for at, pm, hm, dv in P.dyn:
            if tmid >= at:
                sel = pm[idx] & hm[how]
                logits += dv[:, None] * sel[None, :]
        p = _sigmoid(logits)
        if self._fat_metrics:
            fat = self.scenario.fatigue
            assert fat.half_life_impressions is not None
            factor = fat.floor + (1 - fat.floor) * np.exp2(
                -self._exposure[P.fg[idx]] / fat.half_life_impressions)
            p[self._fat_metrics] *= factor
        rates = np.stack([np.bincount(li, avail_pair * p[m], minlength=n) for m in range(4)])
        rates = np.where(avail > 0, rates / safe, np.nan)
        return Flow(avail, price, rates, idx, avail_pair, how, off_tz[ptz])

    def _pacing_profile(self, day_start_us: int) -> np.ndarray:
        """(n, 24): each slot's expected share of the UTC day's supply elapsed at each hour end."""
        n = len(self._ids)
        el = np.ones(n, dtype=bool)
        hourly = np.zeros((n, 24))
        for h in range(24):
            t0 = day_start_us + h * 3_600_000_000
            f = self._flow_supply_only(t0, t0 + 3_600_000_000, el)
            hourly[:, h] = f
        tot = hourly.sum(axis=1, keepdims=True)
        cum = np.cumsum(hourly, axis=1)
        prof = np.where(tot > 0, cum / np.where(tot > 0, tot, 1.0),
                        (np.arange(1, 25) / 24.0)[None, :])
        return prof

    def _flow_supply_only(self, t0: int, t1: int, el: np.ndarray) -> np.ndarray:
        P = self._pairs
        assert P is not None
        w = self._w
        n = len(self._ids)
        if P.li.size == 0:
            return np.zeros(n)
        how_tz, _ = w.how_by_tz(_from_usecs((t0 + t1) // 2))
        mask_lt = self._how_mask[:n][:, how_tz] & el[:n, None]
        ok = mask_lt.ravel()[P.li_tz]
        how = how_tz[P.li_tz - P.li * self._ntz]
        s = P.base_supply * w.curve[how % 24] * P.w * P.win * ok
        return np.bincount(P.li, s, minlength=n)

    def _step(self, t0: int, t1: int, acc: np.ndarray, events: list[MarketEvent] | None) -> None:
        a = self._a
        n = len(self._ids)
        sc = self.scenario
        day = t0 // 86_400_000_000
        if day != self._day:
            self._day = day
            a["spent_today"][:n] = 0
        if sc.pacing.mode == "supply" and self._profile_day != day:
            self._profile_day = day
            self._profile = self._pacing_profile(day * 86_400_000_000)
        # paced daily allowance at the end of this step
        frac_day = (t1 - self._day * 86_400_000_000) / 86_400e6
        if sc.pacing.mode == "supply" and self._profile is not None:
            h = min(23, int(frac_day * 24 - 1e-9))
            prev = self._profile[:n, h - 1] if h > 0 else np.zeros(n)
            within = frac_day * 24 - h
            frac = prev + (self._profile[:n, h] - prev) * within
        else:
            frac = np.full(n, frac_day)
        frac = np.minimum(1.0, frac + sc.pacing.catch_up)
        daily = a["daily"][:n]
        allowed = np.where(daily >= 0, np.floor(daily * frac).astype(np.int64), 2**62)
        room = np.minimum(a["lifetime"][:n] - self._totals[1, :n] - acc[1],
                          allowed - a["spent_today"][:n])
        room = np.maximum(room, 0)
        el = self.static_eligible(_from_usecs(t0)) & (room > 0)
        if el.any():
            f = self._flow(t0, t1, el)
            self._deliver(t0, t1, f, room, acc, events)
        self._release(t1, acc, events)

    def _deliver(self, t0: int, t1: int, f: Flow, room: np.ndarray, acc: np.ndarray,
                 events: list[MarketEvent] | None) -> None:
        rng = self._rng
        sc = self.scenario
        act = np.flatnonzero(f.avail > 0)
        if act.size == 0:
            return
        price = np.maximum(1, np.rint(f.price[act] / 1000.0)).astype(np.int64)
        wins = rng.poisson(f.avail[act])
        imps = np.minimum(wins, room[act] // price)
        spend = imps * price
        r = f.rates[:, act]
        measurable = rng.binomial(imps, sc.base.measurable)
        viewable = rng.binomial(measurable, r[_VIEWABILITY])
        starts = rng.binomial(imps, sc.base.start)
        completes = rng.binomial(starts, r[_COMPLETION])
        clicks = rng.binomial(imps, r[_CTR])
        caused = rng.binomial(imps, r[_CONVERSION])
        acc[0, act] += imps
        acc[1, act] += spend
        acc[2, act] += measurable
        acc[3, act] += viewable
        acc[4, act] += starts
        acc[5, act] += completes
        acc[6, act] += clicks
        self._a["spent_today"][act] += spend
        # fatigue exposure: realised impressions spread over pairs in proportion to supply
        if self._fat_metrics:
            P = self._pairs
            assert P is not None
            scale = np.zeros(len(self._ids))
            scale[act] = imps / f.avail[act]
            li = P.li[f.idx]
            self._exposure += np.bincount(P.fg[f.idx], f.avail_pair * scale[li],
                                          minlength=self._exposure.size)
        imp_refs: dict[int, list[tuple[str, str, str, int]]] = {}
        if events is not None:
            imp_refs = self._emit(t0, t1, f, act, imps, measurable, viewable, starts, completes,
                                  clicks, events)
        if caused.sum() > 0:
            self._cause(t0, t1, act, imps, caused, f.rates[_CONVERSION], imp_refs)

    def _cause(self, t0: int, t1: int, act: np.ndarray, imps: np.ndarray, caused: np.ndarray,
               cvr: np.ndarray, imp_refs: dict[int, list[tuple[str, str, str, int]]]) -> None:
        rng = self._rng
        sc = self.scenario
        src = np.repeat(act, caused)
        k = src.size
        cv = sc.conversion_value
        if cv.distribution == "lognormal" and cv.sigma > 0:
            mu = math.log(cv.mean_micros) - cv.sigma ** 2 / 2
            values = np.rint(rng.lognormal(mu, cv.sigma, k)).astype(np.int64)
        else:
            values = np.full(k, cv.mean_micros, dtype=np.int64)
        cd = sc.conversion_delay
        if cd.distribution == "exponential" and cd.mean_hours > 0:
            delay_h = rng.exponential(cd.mean_hours, k)
        elif cd.distribution == "lognormal" and cd.mean_hours > 0:
            delay_h = rng.lognormal(math.log(cd.mean_hours) - cd.sigma ** 2 / 2, cd.sigma, k)
        else:
            delay_h = np.zeros(k)
        delay_h = np.minimum(delay_h, cd.max_hours)
        at = t0 + rng.random(k) * (t1 - t0)
        due = (at + delay_h * 3.6e9).astype(np.int64)
        jm = sc.journeys
        extra = (np.minimum(rng.poisson(jm.extra_touches_mean, k), jm.max_touches - 1)
                 if jm.extra_touches_mean > 0 else np.zeros(k, dtype=np.int64))
        weights = imps / imps.sum()
        tc = self._a["true_contrib"]
        for j in range(k):
            touches = [int(src[j])]
            if extra[j] > 0:
                touches += [int(x) for x in rng.choice(act, size=int(extra[j]), p=weights)]
            rates = np.array([cvr[s] for s in touches])
            credit = rates / rates.sum() if rates.sum() > 0 else np.full(len(touches),
                                                                          1 / len(touches))
            for s, c in zip(touches, credit, strict=True):
                tc[s] += c
            last = touches[-1]
            self._conv_seq += 1
            cid = f"cv{self.seed}-{self._conv_seq}"
            payload = None
            refs = imp_refs.get(last)
            if refs:
                auction_id, user_id, cre, ts = refs[int(self._erng.integers(len(refs)))]
                payload = (auction_id, user_id, cre, ts)
                if len(self._journeys) < _JOURNEY_CAP:
                    self._journeys[cid] = tuple(
                        (self._ids[s], float(c)) for s, c in zip(touches, credit, strict=True))
            heapq.heappush(self._pending, (int(due[j]), self._conv_seq, last, int(values[j]),
                                           (cid, *payload) if payload else (cid, "", "", "", 0)))

    def _release(self, t1: int, acc: np.ndarray, events: list[MarketEvent] | None) -> None:
        pend = self._pending
        while pend and pend[0][0] < t1:
            due, _seq, slot, value, (cid, auction_id, user_id, cre, imp_ts) = heapq.heappop(pend)
            acc[7, slot] += 1
            acc[8, slot] += value
            if events is not None:
                cfg = self._configs[self._ids[slot]]
                if not auction_id:
                    auction_id = self._auction_id(due)
                    user_id = f"u{self._erng.integers(1 << 40):010x}"
                    cre = next(iter(sorted(cfg.creatives)), "")
                events.append(ConversionEvent(max(due, imp_ts), cid, auction_id, cfg.campaign_id,
                                              cfg.line_item_id, cre, value, user_id))

    def _auction_id(self, ts: int) -> str:
        self._tid += 1
        return f"{ts}.{self._host}.{self._tid}.{self._buzz}"

    def _emit(self, t0: int, t1: int, f: Flow, act: np.ndarray, imps: np.ndarray,
              measurable: np.ndarray, viewable: np.ndarray, starts: np.ndarray,
              completes: np.ndarray, clicks: np.ndarray, events: list[MarketEvent]
              ) -> dict[int, list[tuple[str, str, str, int]]]:
        """Materialise individual events consistent with this step's counts."""
        P = self._pairs
        assert P is not None
        w = self._w
        rng = self._erng
        refs: dict[int, list[tuple[str, str, str, int]]] = {}
        pli = P.li[f.idx]
        lo = np.searchsorted(pli, act, side="left")
        hi = np.searchsorted(pli, act, side="right")
        for j, slot in enumerate(act):
            k = int(imps[j])
            if k == 0:
                continue
            cfg = self._configs[self._ids[slot]]
            sel = np.arange(lo[j], hi[j])
            wts = f.avail_pair[sel]
            pick = sel[rng.choice(sel.size, size=k, p=wts / wts.sum())]
            pidx = f.idx[pick]
            ts = np.sort(rng.integers(t0, t1, size=k))
            price = int(max(1, round(f.price[slot] / 1000.0)))
            order = rng.permutation(k)
            started = np.zeros(k, dtype=bool)
            started[order[: starts[j]]] = True
            comp = np.zeros(k, dtype=bool)
            st_idx = np.flatnonzero(started)
            comp[rng.choice(st_idx, size=int(completes[j]), replace=False)] = True
            meas_idx = rng.choice(k, size=int(measurable[j]), replace=False)
            view = np.zeros(k, dtype=bool)
            view[rng.choice(meas_idx, size=int(viewable[j]), replace=False)] = True
            clk = np.zeros(k, dtype=bool)
            clk[rng.choice(k, size=int(clicks[j]), replace=False)] = True
            progress = rng.integers(0, 4, size=k)  # quartiles reached by non-completes
            out = refs.setdefault(int(slot), [])
            for i in range(k):
                p = int(pidx[i])
                z = w.zips[int(P.zip[p])]
                b = w.bundles[int(P.bundle[p])]
                cre = w.creatives[int(P.cre[p])]
                plat = w.bundle_platform[int(P.bundle[p])]
                devs = w.platform_devices.get(plat, (3,)) if plat else (3,)
                t = int(ts[i])
                aid = self._auction_id(t)
                user = f"u{z}-{int(rng.integers(5000)):04d}"
                off = int(f.off[pick[i]])
                how = int(f.how[pick[i]])
                minute = ((t // 1_000_000 + off) // 60) % 60
                events.append(ImpressionEvent(
                    t, aid, cfg.campaign_id, cfg.line_item_id, cre, z, b,
                    int(devs[int(rng.integers(len(devs)))]), user, cfg.cpm_bid_micros,
                    price, how * 60 + minute))
                out.append((aid, user, cre, t))
                base = dict(ts_usecs=t, auction_id=aid, campaign_id=cfg.campaign_id,
                            line_item_id=cfg.line_item_id, creative_key=cre)
                if started[i]:
                    reached = 4 if comp[i] else int(progress[i])
                    for q, typ in enumerate(("START", "Q1", "MID", "Q3", "COMPLETE")):
                        if q == 0 or q <= reached:
                            events.append(ActivityEvent(**base, type=typ))  # type: ignore[arg-type]
                if view[i]:
                    events.append(ActivityEvent(**base, type="VIEWABILITY"))  # type: ignore[arg-type]
                if clk[i]:
                    events.append(ClickEvent(**{**base, "ts_usecs": t + 5_000_000}))  # type: ignore[arg-type]
        return refs


def _targeting(c: LineItemConfig) -> tuple[object, ...]:
    return (c.zips, c.segments, c.hours_of_week, c.app_bundles, tuple(sorted(c.creatives.items())),
            c.cpm_bid_micros)


__all__ = ["OBJECTIVE_METRIC", "TOTAL_KEYS", "Flow", "Forecast", "Market", "auction_curve"]
