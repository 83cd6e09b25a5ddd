"""Materialising individual DSP log events consistent with the market's counts.

``EventEmitter`` owns the event random generator (separate from the one that draws the totals,
so asking for events does not change them) and the Beeswax-style auction id sequence
(``{ts}.{host}.{n}.{buzz key}``). Given one step's per-slot counts it picks, for every
impression, a pair in proportion to its supply (ZIP, app bundle, creative, device), a time, a
viewer, and which of those impressions started / reached each quartile / completed, were
viewable and were clicked; and it builds conversion events, pointing at one of the converting
line item's impressions when there is one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from campaignd.dsp.sandbox.model import (
    ActivityEvent,
    ClickEvent,
    ConversionEvent,
    ImpressionEvent,
    LineItemConfig,
    MarketEvent,
)
from campaignd.dsp.sandbox.pairs import Flow, Pairs
from campaignd.dsp.sandbox.world import World

ImpressionRefs = dict[int, list[tuple[str, str, str, int]]]
"""Per slot, the emitted impressions a conversion may point at: (auction id, user, creative, ts)."""


class EventEmitter:
    """Impression, activity, click and conversion events (see the module docstring)."""

    def __init__(self, rng: np.random.Generator, host_id: int, buzz_key: str) -> None:
        self.rng = rng
        self._host = host_id
        self._buzz = buzz_key
        self._tid = 0

    def auction_id(self, ts: int) -> str:
        self._tid += 1
        return f"{ts}.{self._host}.{self._tid}.{self._buzz}"

    def impressions(self, t0: int, t1: int, P: Pairs, w: World, f: Flow, act: np.ndarray,
                    imps: np.ndarray, measurable: np.ndarray, viewable: np.ndarray,
                    starts: np.ndarray, completes: np.ndarray, clicks: np.ndarray,
                    configs: Mapping[int, LineItemConfig], ids: Sequence[int],
                    events: list[MarketEvent]) -> ImpressionRefs:
        """Append the events of one step's impressions (slots ``act``; counts aligned with it)
        to ``events``; return the impressions by slot for conversions to point at."""
        rng = self.rng
        refs: ImpressionRefs = {}
        pli = P.li[f.idx]
        lo = np.searchsorted(pli, act, side="left")
        hi = np.searchsorted(pli, act, side="right")
        for j, slot in enumerate(act):
            k = int(imps[j])
            if k == 0:
                continue
            cfg = configs[ids[slot]]
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
            meas = np.zeros(k, dtype=bool)
            meas[meas_idx] = True
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
                aid = self.auction_id(t)
                user = f"u{z}-{int(rng.integers(5000)):04d}"
                off = int(f.off[pick[i]])
                how = int(f.how[pick[i]])
                minute = ((t // 1_000_000 + off) // 60) % 60
                events.append(ImpressionEvent(
                    t, aid, cfg.campaign_id, cfg.line_item_id, cre, z, b,
                    int(devs[int(rng.integers(len(devs)))]), user, cfg.cpm_bid_micros,
                    price, how * 60 + minute, bool(meas[i])))
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


    def conversion(self, due: int, cfg: LineItemConfig, conversion_id: str, value: int,
                   ref: tuple[str, str, str, int] | None) -> ConversionEvent:
        """A conversion of ``cfg`` due at ``due`` usecs, pointing at the impression ``ref``
        (auction id, user, creative, ts) or, without one, at a fresh auction id and viewer."""
        if ref is None:
            auction_id = self.auction_id(due)
            user_id = f"u{self.rng.integers(1 << 40):010x}"
            cre = next(iter(sorted(cfg.creatives)), "")
            imp_ts = 0
        else:
            auction_id, user_id, cre, imp_ts = ref
        return ConversionEvent(max(due, imp_ts), conversion_id, auction_id, cfg.campaign_id,
                               cfg.line_item_id, cre, value, user_id)


__all__ = ["EventEmitter", "ImpressionRefs"]
