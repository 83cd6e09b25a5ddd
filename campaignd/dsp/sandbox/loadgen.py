"""A constant-rate market for load tests: ``rate`` events a second, no ground-truth model.

``scripts/bench sustained`` serves it through the sandbox's Beeswax-compatible server in a
process of its own, so the daemon under test reads a feed of exactly the rate asked for, with
timestamps on the wall clock (the lag it reports is the pipeline's, not a simulated delay).
Events are spread over the active line items that have a creative: 70 % impressions (each one
a new auction), 25 % activities, 4 % clicks and 1 % conversions of recent impressions. The
market only generates; it never enforces budgets (a load test must not run dry).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from campaignd.dsp.sandbox.model import (
    ActivityEvent,
    ClickEvent,
    ConversionEvent,
    ImpressionEvent,
    LineItemConfig,
    MarketEvent,
    StepTotals,
)

_ACTIVITIES = ("START", "Q1", "MID", "Q3", "COMPLETE", "VIEWABILITY")
_KEYS = ("impressions", "spend_micros", "measurable", "viewable", "starts", "completes",
         "clicks", "conversions", "conversion_value_micros")


class ConstantRateMarket:
    def __init__(self, rate_per_s: float, *, start: datetime | None = None, seed: int = 0) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.rate = rate_per_s
        self._now = (start or datetime.now(UTC)).astimezone(UTC)
        self._rng = random.Random(seed)
        self._configs: dict[int, LineItemConfig] = {}
        self._live: list[LineItemConfig] = []
        self._recent: deque[tuple[str, LineItemConfig, str]] = deque(maxlen=20_000)
        self._carry = 0.0
        self._n = 0
        self._delivered: dict[int, dict[str, int]] = {}

    @property
    def now(self) -> datetime:
        return self._now

    def configure(self, config: LineItemConfig) -> None:
        self._configs[config.line_item_id] = config
        self._live = [c for c in self._configs.values() if c.active and c.creatives]

    def remove(self, line_item_id: int) -> None:
        self._configs.pop(line_item_id, None)
        self._live = [c for c in self._configs.values() if c.active and c.creatives]

    def delivered(self, ids: Iterable[int] | None = None) -> Mapping[int, Mapping[str, int]]:
        if ids is None:
            return self._delivered
        return {i: self._delivered[i] for i in ids if i in self._delivered}

    def _tally(self, li: int, key: str, n: int = 1) -> None:
        per = self._delivered.setdefault(li, dict.fromkeys(_KEYS, 0))
        per[key] += n

    def advance(self, until: datetime, *, emit_events: bool = True,
                ) -> tuple[StepTotals, Sequence[MarketEvent]]:
        until = until.astimezone(UTC)
        t0, t1 = int(self._now.timestamp() * 1e6), int(until.timestamp() * 1e6)
        self._now = until
        events: list[MarketEvent] = []
        if t1 > t0 and self._live:
            want = self.rate * (t1 - t0) / 1e6 + self._carry
            k = int(want)
            self._carry = want - k
            rng = self._rng
            for ts in sorted(rng.randrange(t0, t1) for _ in range(k)):
                events.append(self._event(ts, rng))
        empty = np.zeros(0, dtype=np.int64)
        return StepTotals(empty, *([empty] * 9)), events

    def _event(self, ts: int, rng: random.Random) -> MarketEvent:
        r = rng.random()
        self._n += 1
        if r < 0.70 or not self._recent:
            cfg = rng.choice(self._live)
            creative = next(iter(cfg.creatives))
            auction = f"{ts}.3054.{self._n}.sandbox"
            zips = sorted(cfg.zips) if cfg.zips else ["10001"]
            bundles = sorted(cfg.app_bundles) if cfg.app_bundles else ["com.hulu.plus"]
            hours = sorted(cfg.hours_of_week) if cfg.hours_of_week else [0]
            price = rng.randrange(15_000, 40_000)
            self._recent.append((auction, cfg, creative))
            self._tally(cfg.line_item_id, "impressions")
            self._tally(cfg.line_item_id, "spend_micros", price)
            return ImpressionEvent(ts, auction, cfg.campaign_id, cfg.line_item_id, creative,
                                   rng.choice(zips), rng.choice(bundles), 3,
                                   f"u{rng.randrange(10**6)}", cfg.cpm_bid_micros, price,
                                   rng.choice(hours) * 60 + rng.randrange(60))
        auction, cfg, creative = self._recent[-1 - rng.randrange(len(self._recent))]
        li = cfg.line_item_id
        if r < 0.95:
            return ActivityEvent(ts, auction, cfg.campaign_id, li, creative,
                                 rng.choice(_ACTIVITIES))
        if r < 0.99:
            return ClickEvent(ts, auction, cfg.campaign_id, li, creative)
        self._tally(li, "conversions")
        self._tally(li, "conversion_value_micros", 45_000_000)
        return ConversionEvent(ts, f"cv-load-{self._n}", auction, cfg.campaign_id, li,
                               creative, 45_000_000, "u1")


__all__ = ["ConstantRateMarket"]
