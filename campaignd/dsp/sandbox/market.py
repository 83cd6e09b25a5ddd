"""The sandbox's ground-truth market: delivery, outcomes and events from DSP-level facts.

``Market`` implements ``MarketProtocol``. It sees only ``LineItemConfig`` values (targeting, bid,
budgets, creatives, flight, active) and a ``Scenario`` (the true world). Per internal step (at
most ``step_seconds``, aligned to a grid so no step crosses a local hour or the account's
midnight):

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
   the budget day (midnight to midnight in the DSP account's time zone, ``account_timezone``;
   the scenario's by default), weighted by the line item's own expected supply
   (``pacing.mode = "supply"``, i.e. even pacing over available inventory) or by clock time
   (``"time"``). A campaign with a daily budget (``campaign_daily_budget_micros``) stops
   buying for the day once its line items together (removed ones included) spent it, as
   Beeswax does: within a step its line items' room is cut in proportion.
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
``expected_value_per_dollar``, ``fatigue_outlook``, ``true_contributions``, ``journeys``.

The market is split by responsibility (this module re-exports the public names):

- ``world``: the scenario → DSP-level world (ZIP, segment, bundle, creative, hour, bid effects)
  and ``auction_curve``;
- ``pairs``: ``PairModel`` — line-item slots, the pair table and per-interval ``Flow``;
- ``truth``: ``GroundTruth`` — ``flow``, ``true_rates``, ``forecast`` (``Forecast``),
  ``expected_value_per_dollar``, ``fatigue_outlook``;
- ``emission``: ``EventEmitter`` — individual events and auction ids;
- here: ``Market`` — the protocol (configure / remove / advance / delivered), budgets and
  pacing, drawing the totals, and the conversion queue (delays, journeys, true contributions).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from campaignd.domain.budget_day import BudgetDay
from campaignd.dsp.sandbox.emission import EventEmitter, ImpressionRefs
from campaignd.dsp.sandbox.model import LineItemConfig, MarketEvent, StepTotals
from campaignd.dsp.sandbox.pairs import Flow
from campaignd.dsp.sandbox.scenarios import Scenario
from campaignd.dsp.sandbox.truth import OBJECTIVE_METRIC, Forecast, GroundTruth
from campaignd.dsp.sandbox.world import (
    COMPLETION,
    CONVERSION,
    CTR,
    VIEWABILITY,
    auction_curve,
    from_usecs,
    usecs,
)

TOTAL_KEYS: tuple[str, ...] = ("impressions", "spend_micros", "measurable", "viewable", "starts",
                               "completes", "clicks", "conversions", "conversion_value_micros")
_JOURNEY_CAP = 200_000


class Market(GroundTruth):
    """A deterministic ground-truth market (see the module docstring)."""

    def __init__(self, scenario: Scenario, *, seed: int = 0, start: datetime | None = None,
                 step_seconds: int = 300, host_id: int = 3054, buzz_key: str = "sandbox",
                 account_timezone: str | None = None) -> None:
        if step_seconds <= 0 or 3600 % step_seconds:
            raise ValueError("step_seconds must divide 3600")
        super().__init__(scenario, start)
        self.account_timezone = account_timezone or scenario.account_timezone
        """The DSP account's time zone: daily budgets and pacing reset at its midnight."""
        self.budget_day = BudgetDay(self.account_timezone)
        self.seed = seed
        self.step_seconds = step_seconds
        self._rng = np.random.default_rng([seed, 1])
        self._emitter = EventEmitter(np.random.default_rng([seed, 2]), host_id, buzz_key)
        self._conv_seq = 0
        self._totals = np.zeros((len(TOTAL_KEYS), 0), dtype=np.int64)
        # pacing
        self._day: int | None = None
        self._profile: np.ndarray | None = None  # (n, hours) cumulative fraction at hour ends
        self._profile_day: int | None = None
        # conversions
        self._pending: list[tuple[int, int, int, int, tuple[str, str, str, str, int]]] = []
        self._journeys: dict[str, tuple[tuple[int, float], ...]] = {}

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
        a["campaign"][slot] = int(config.campaign_id)
        a["campaign_daily"][slot] = (-1 if config.campaign_daily_budget_micros is None
                                     else max(0, int(config.campaign_daily_budget_micros)))
        a["start_us"][slot] = usecs(config.start) if config.start else -(2**62)
        a["end_us"][slot] = usecs(config.end) if config.end else 2**62
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
        t = usecs(self._now)
        end = usecs(until)
        while t < end:
            # a step never crosses the account's midnight (nor, with steps of at most 15
            # minutes, a local hour: every time zone's offset is a whole number of quarters)
            day_end = self.budget_day.span(t // 1_000_000)[1] * 1_000_000
            nxt = min(end, (t // step_us + 1) * step_us, day_end)
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

    def delivered(self, ids: Iterable[int] | None = None) -> Mapping[int, Mapping[str, int]]:
        out: dict[int, dict[str, int]] = {}
        wanted = self._ids if ids is None else {int(i) for i in ids if int(i) in self._slot}
        for lid in sorted(wanted):
            s = self._slot[lid]
            out[lid] = {k: int(self._totals[i, s]) for i, k in enumerate(TOTAL_KEYS)}
        return out

    # --- delivery state, and what was truly caused ------------------------------------------

    def spent_today_micros(self) -> np.ndarray:
        """Spend of each slot since the last midnight in the account's time zone (before
        ``now``)."""
        n = len(self._ids)
        if self._day != self.budget_day.of(self._now):
            return np.zeros(n, dtype=np.int64)  # a new day has begun: nothing spent yet
        return self._a["spent_today"][:n].copy()

    def totals_array(self) -> np.ndarray:
        """Lifetime totals (``TOTAL_KEYS`` x slots), int64, a copy."""
        return self._totals[:, : len(self._ids)].copy()

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

    def pending_value_micros(self) -> int:
        """The summed value of the conversions caused and not yet reported (still delayed)."""
        return int(sum(entry[3] for entry in self._pending))

    # --- internals ---------------------------------------------------------------------------

    def _grow(self, n: int) -> None:
        if n <= self._cap:
            return
        super()._grow(n)
        cap = self._cap
        tot = np.zeros((len(TOTAL_KEYS), cap), dtype=np.int64)
        tot[:, : self._totals.shape[1]] = self._totals
        self._totals = tot
        if self._profile is not None:
            prof = np.ones((cap, self._profile.shape[1]))
            prof[: self._profile.shape[0]] = self._profile
            self._profile = prof

    def _rebuild(self) -> None:
        if self._dirty:
            super()._rebuild()
            self._profile_day = None  # recompute the pacing profile with the new targeting

    def _pacing_profile(self, day_start_us: int, day_end_us: int) -> np.ndarray:
        """(n, hours): each slot's expected share of the budget day's supply elapsed at each
        hour end (a day has 23, 24 or 25 hours in a time zone with daylight saving)."""
        n = len(self._ids)
        el = np.ones(n, dtype=bool)
        hours = max(1, round((day_end_us - day_start_us) / 3_600_000_000))
        hourly = np.zeros((n, hours))
        for h in range(hours):
            t0 = day_start_us + h * 3_600_000_000
            f = self._flow_supply_only(t0, min(t0 + 3_600_000_000, day_end_us), el)
            hourly[:, h] = f
        tot = hourly.sum(axis=1, keepdims=True)
        cum = np.cumsum(hourly, axis=1)
        prof = np.where(tot > 0, cum / np.where(tot > 0, tot, 1.0),
                        (np.arange(1, hours + 1) / hours)[None, :])
        return prof

    def _step(self, t0: int, t1: int, acc: np.ndarray, events: list[MarketEvent] | None) -> None:
        a = self._a
        n = len(self._ids)
        sc = self.scenario
        day_start_s, day_end_s, day = self.budget_day.span(t0 // 1_000_000)
        if day != self._day:
            self._day = day
            a["spent_today"][:n] = 0
        if sc.pacing.mode == "supply" and self._profile_day != day:
            self._profile_day = day
            self._profile = self._pacing_profile(day_start_s * 1_000_000, day_end_s * 1_000_000)
        # paced daily allowance at the end of this step
        frac_day = (t1 - day_start_s * 1_000_000) / ((day_end_s - day_start_s) * 1e6)
        if sc.pacing.mode == "supply" and self._profile is not None:
            hours = self._profile.shape[1]
            h = min(hours - 1, int(frac_day * hours - 1e-9))
            prev = self._profile[:n, h - 1] if h > 0 else np.zeros(n)
            within = frac_day * hours - h
            frac = prev + (self._profile[:n, h] - prev) * within
        else:
            frac = np.full(n, frac_day)
        frac = np.minimum(1.0, frac + sc.pacing.catch_up)
        daily = a["daily"][:n]
        allowed = np.where(daily >= 0, np.floor(daily * frac).astype(np.int64), 2**62)
        room = np.minimum(a["lifetime"][:n] - self._totals[1, :n] - acc[1],
                          allowed - a["spent_today"][:n])
        room = np.maximum(room, 0)
        el = self.static_eligible(from_usecs(t0)) & (room > 0)
        room = self._within_campaign_daily(room, el)
        el &= room > 0
        if el.any():
            f = self._flow(t0, t1, el)
            self._deliver(t0, t1, f, room, acc, events)
        self._release(t1, acc, events)

    def _within_campaign_daily(self, room: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """``room`` scaled down so that no campaign with a daily budget spends more than it
        today: what its line items (removed ones included) spent today counts, and the room
        its eligible line items have is cut in proportion (floored) when it adds up to more
        than the campaign has left."""
        a = self._a
        n = room.size
        cap = a["campaign_daily"][:n]
        if not (cap >= 0).any():
            return room
        ids, inv = np.unique(a["campaign"][:n], return_inverse=True)
        left = np.full(ids.size, -1, dtype=np.int64)
        left[inv] = cap  # (every line item of a campaign carries the same daily budget)
        spent = np.bincount(inv, weights=a["spent_today"][:n], minlength=ids.size)
        want = np.bincount(inv, weights=np.where(eligible, room, 0), minlength=ids.size)
        avail = np.maximum(left - spent, 0)
        scale = np.where((left >= 0) & (want > avail), avail / np.maximum(want, 1.0), 1.0)
        out: np.ndarray = np.floor(room * scale[inv]).astype(np.int64)
        return out

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
        viewable = rng.binomial(measurable, r[VIEWABILITY])
        starts = rng.binomial(imps, sc.base.start)
        completes = rng.binomial(starts, r[COMPLETION])
        clicks = rng.binomial(imps, r[CTR])
        caused = rng.binomial(imps, r[CONVERSION])
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
        imp_refs: ImpressionRefs = {}
        if events is not None:
            assert self._pairs is not None
            imp_refs = self._emitter.impressions(
                t0, t1, self._pairs, self._w, f, act, imps, measurable, viewable, starts,
                completes, clicks, self._configs, self._ids, events)
        if caused.sum() > 0:
            self._cause(t0, t1, act, imps, caused, f.rates[CONVERSION], imp_refs)

    def _cause(self, t0: int, t1: int, act: np.ndarray, imps: np.ndarray, caused: np.ndarray,
               cvr: np.ndarray, imp_refs: ImpressionRefs) -> None:
        """Queue the conversions this step's impressions caused, with their values, delays and
        multi-touch journeys (true credit per touch; the DSP credits the last one)."""
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
                auction_id, user_id, cre, ts = refs[int(self._emitter.rng.integers(len(refs)))]
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
                ref = (auction_id, user_id, cre, imp_ts) if auction_id else None
                events.append(self._emitter.conversion(due, self._configs[self._ids[slot]], cid,
                                                       value, ref))


def _targeting(c: LineItemConfig) -> tuple[object, ...]:
    return (c.zips, c.segments, c.hours_of_week, c.app_bundles, tuple(sorted(c.creatives.items())),
            c.cpm_bid_micros)


__all__ = ["OBJECTIVE_METRIC", "TOTAL_KEYS", "Flow", "Forecast", "Market", "auction_curve"]
