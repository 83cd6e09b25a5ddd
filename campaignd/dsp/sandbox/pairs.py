"""Line-item slots and the pair table: what each line item can buy, and what flows through it.

``PairModel`` is the base of ``Market``. It owns

- the **slot registry**: every line item ever configured gets a slot (its index in the
  per-slot arrays ``_a``: active/removed flags, budgets, flight, bid, segment reach, spend today,
  true contributions; and its hour-of-week mask), removed ones included;
- the **pair table** (``Pairs``): every (line item, ZIP, app bundle, creative) the line item's
  targeting allows, with its static supply, win rate and clearing price (``auction_curve``),
  its static logits (base + ZIP + bundle + creative + bid + segment + static interactions) and
  the time- or hour-dependent terms (drift, daypart-limited interactions). It is rebuilt lazily
  (``_rebuild``) when a line item's targeting, bid or creatives change;
- **flow** (``_flow``): for one interval, the expected impressions available to each slot after
  competition, win rate and segment reach, its supply-weighted clearing price and true rates
  (hour effects, drift and creative fatigue applied), with the pair detail behind them;
- **fatigue exposure** per (creative, audience group), which ``_flow`` reads and ``Market``
  updates as impressions are delivered.

It never draws random numbers: everything here is an expectation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from campaignd.dsp.sandbox.model import LineItemConfig
from campaignd.dsp.sandbox.scenarios import METRICS, Scenario
from campaignd.dsp.sandbox.world import World, auction_curve, from_usecs, sigmoid, usecs


@dataclass(slots=True)
class Pairs:
    """The pair table: one entry per (slot, ZIP, app bundle, creative), sorted by slot."""

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


_SLOT_ARRAYS: dict[str, type] = {
    "active": bool, "removed": bool, "has_cre": bool, "lifetime": np.int64, "daily": np.int64,
    "start_us": np.int64, "end_us": np.int64, "bid": np.int64, "reach": float,
    "spent_today": np.int64, "true_contrib": float, "campaign": np.int64,
    "campaign_daily": np.int64,
}


class PairModel:
    """Slots, the pair table and per-interval flow over a ``World`` (see the module docstring)."""

    def __init__(self, scenario: Scenario, start: datetime | None) -> None:
        self.scenario = scenario
        self._now = (start or scenario.default_start).astimezone(UTC)
        self._origin = self._now
        self._w = World(scenario)
        # line items
        self._configs: dict[int, LineItemConfig] = {}
        self._slot: dict[int, int] = {}
        self._ids: list[int] = []
        self._cap = 0
        self._a: dict[str, np.ndarray] = {k: np.zeros(0, dtype=t) for k, t in _SLOT_ARRAYS.items()}
        self._how_mask = np.zeros((0, 168), dtype=bool)
        self._slot_pairs: dict[int, tuple[np.ndarray, ...]] = {}
        self._pairs: Pairs | None = None
        self._dirty = True
        self._exposure = np.zeros(0)
        self._ntz = 1
        fat = scenario.fatigue
        self._fat_metrics = [METRICS.index(m) for m in fat.metrics] if fat.half_life_impressions \
            else []

    def line_item_ids(self) -> np.ndarray:
        """Every line item ever configured, in slot order (the order of the ground-truth arrays
        below)."""
        return np.array(self._ids, dtype=np.int64)

    def static_eligible(self, at: datetime | None = None) -> np.ndarray:
        """Slots that may deliver at ``at`` if budget allows (active, creative, in flight)."""
        n = len(self._ids)
        a = self._a
        t = usecs(at or self._now)
        return (a["active"][:n] & ~a["removed"][:n] & a["has_cre"][:n]
                & (a["start_us"][:n] <= t) & (t < a["end_us"][:n]))

    def _grow(self, n: int) -> None:
        """Make room for ``n`` slots in the per-slot arrays (capacity at least doubles)."""
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

    def _pairs_for(self, slot: int, cfg: LineItemConfig) -> tuple[np.ndarray, ...]:
        """One slot's pairs: ZIP, bundle and creative indices, rotation share, first creative."""
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
        """Rebuild the pair table after targeting changes (each slot's pairs are cached)."""
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
        origin = usecs(self._origin)
        terms = [(-1.0, x.levels, x.deltas) for x in sc.interactions] + [
            (origin + d.at_day * 86_400e6, d.levels, d.deltas) for d in sc.drift]
        for at, levels, deltas in terms:
            pm, hm = self._level_masks(levels, pz, pb, pc, li)
            dv = np.array(deltas.as_tuple())
            if at < 0 and hm.all():
                static += dv[:, None] * pm[None, :]
            else:
                dyn.append((at, pm, hm, dv))
        fg = pc * w.n_groups + zg[pz] if pz.size else pz
        nfg = len(w.creatives) * w.n_groups
        if self._exposure.size < nfg:
            ex = np.zeros(nfg)
            ex[: self._exposure.size] = self._exposure
            self._exposure = ex
        self._pairs = Pairs(li, pz, pb, pc, pw, prim, unit, int(uniq.size), li * ntz + ptz, fg,
                            zw[pz] * bs[pb] if pz.size else np.zeros(0), win, price, static, dyn)
        self._ntz = ntz
        self._dirty = False

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
        """What ``[t0, t1)`` (usecs) offers slots ``el``; ``compete=False``: each slot as the
        only one of the advertiser's line items buying its units."""
        P = self._pairs
        assert P is not None
        w = self._w
        n = len(self._ids)
        mid = from_usecs((t0 + t1) // 2)
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
        p = sigmoid(logits)
        if self._fat_metrics:
            fat = self.scenario.fatigue
            assert fat.half_life_impressions is not None
            factor = fat.floor + (1 - fat.floor) * np.exp2(
                -self._exposure[P.fg[idx]] / fat.half_life_impressions)
            p[self._fat_metrics] *= factor
        rates = np.stack([np.bincount(li, avail_pair * p[m], minlength=n) for m in range(4)])
        rates = np.where(avail > 0, rates / safe, np.nan)
        return Flow(avail, price, rates, idx, avail_pair, how, off_tz[ptz])

    def _flow_supply_only(self, t0: int, t1: int, el: np.ndarray) -> np.ndarray:
        """Expected impressions won per slot in ``[t0, t1)`` before competition and reach."""
        P = self._pairs
        assert P is not None
        w = self._w
        n = len(self._ids)
        if P.li.size == 0:
            return np.zeros(n)
        how_tz, _ = w.how_by_tz(from_usecs((t0 + t1) // 2))
        mask_lt = self._how_mask[:n][:, how_tz] & el[:n, None]
        ok = mask_lt.ravel()[P.li_tz]
        how = how_tz[P.li_tz - P.li * self._ntz]
        s = P.base_supply * w.curve[how % 24] * P.w * P.win * ok
        return np.bincount(P.li, s, minlength=n)


__all__ = ["Flow", "PairModel", "Pairs"]
