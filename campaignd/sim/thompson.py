"""The ``thompson`` policy: per-cell daily budgets from the Bayesian allocator
(``campaignd.domain.allocation``) on the observed counts, with the conversion lag, creative
fatigue, change detection and each supply key's delivery capacity learnt from what the line
items could buy (see ``ThompsonPolicy``)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from campaignd.domain.campaign import CampaignSpec
from campaignd.domain.capacity import CapacityModel
from campaignd.domain.changes import LevelChangeDetector
from campaignd.domain.lag import LagEstimator
from campaignd.sim.base import Observations, PolicyContext

if TYPE_CHECKING:
    from campaignd.domain.allocation import Allocator


def _keep_cut_limits(budgets: np.ndarray, x: np.ndarray, floor: np.ndarray | None,
                     today: int, spent: np.ndarray) -> np.ndarray:
    """Integer budgets that keep the cut limits the allocation kept (``x`` at least
    ``floor``): rounding down alone could cut a line item 1 micro more than the DSP allows.
    The micros this adds come off the budgets with the most room above their own floor and
    their spend, so the sum stays within ``today`` (when the budget itself forced the limits
    down, the allocation did not keep them and neither does this)."""
    if floor is None:
        return budgets
    need = np.ceil(floor - 1e-6).astype(np.int64)
    short = (budgets < need) & (x >= floor - 1.0)
    if not short.any():
        return budgets
    out = np.where(short, need, budgets)
    over = int(out.sum()) - today
    if over > 0:
        slack = np.where(short, 0, out - np.maximum(need, spent))
        for i in np.argsort(-slack, kind="stable"):
            if over <= 0 or slack[i] <= 0:
                break
            take = min(int(slack[i]), over)
            out[i] -= take
            over -= take
        for i in np.flatnonzero(short):  # no room anywhere: the budget wins, as in allocate
            if over <= 0:
                break
            take = min(int(out[i] - budgets[i]), over)
            out[i] -= take
            over -= take
    return out


def _offset_hours(zone: Any, now: datetime) -> int:
    """A time zone's UTC offset at ``now``, in whole hours (floored)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    off = now.astimezone(zone).utcoffset()
    return int(off.total_seconds() // 3600) if off is not None else 0


_THOMPSON_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "replan_seconds": (lambda v: v >= 1, ">= 1 second"),
    "half_life_hours": (lambda v: v >= 0, ">= 0 hours (0: no discounting)"),
    "conversion_delay_hours": (lambda v: 0 <= v <= 365 * 24, "in [0, 8760] hours"),
    "learning_successes": (lambda v: v >= 0, ">= 0"),
    "capacity_prior": (lambda v: 0 < v <= 1, "in (0, 1] (a share of the daily budget)"),
    "capacity_growth": (lambda v: v >= 1, ">= 1"),
    "main_sd": (lambda v: v > 0, "> 0"),
    "interaction_sd": (lambda v: v > 0, "> 0"),
    "residual_sd": (lambda v: v > 0, "> 0"),
    "capacity_margin": (lambda v: v >= 1, ">= 1"),
    "capacity_groups": (lambda v: v > 0, "> 0"),
    "capacity_tolerance": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "capacity_optimism": (lambda v: v >= 0, ">= 0"),
    "change_threshold": (lambda v: v > 0, "> 0 (or none: no change detection)"),
    "change_up": (lambda v: v > 1, "> 1"),
    "change_down": (lambda v: 0 < v < 1, "in (0, 1)"),
}
"""The thompson policy's options whose range the allocator does not check itself."""


def _cost_prior(spec: CampaignSpec) -> float:
    """Money (micros) per impression assumed until the first spend is counted: the mean CPM
    bid of the campaign's bid strategies (the same for every cell, so it sets the scale of value
    per money and of expected gains, not which cells are funded)."""
    bids = [float(b.cpm_bid) for b in spec.bid_strategies if b.cpm_bid > 0]
    return (sum(bids) / len(bids) if bids else 20.0) * 1_000_000 / 1000


class ThompsonPolicy:
    """Budgets from the Bayesian allocator, re-planned every ``replan_seconds`` (and at every
    midnight of the account's budget day, ``PolicyContext.budget_day``) from what the DSP
    reported -- never from the market's ground truth.

    Every re-plan:

    1. **Counts.** The increments of impressions (trials), the objective's successes
       (conversions, clicks or completed views; revenue = conversions with their value) and spend
       since the last re-plan go to the allocator; with ``half_life_hours`` set, older counts
       are discounted with that half-life (default 0: kept; the fatigue model and the change
       detector below do the forgetting). Conversions arrive after a
       delay, so impressions count as trials only as they mature: a pending pool releases them
       with an exponential delay of mean ``conversion_delay_hours`` (the campaign's conversion
       lag, a setting; 0 for clicks and completed views). With ``estimate_delay`` the lag is
       measured from the counts (``campaignd.domain.lag.LagEstimator``: when conversions arrive
       after the delivery that the model expects them from), the setting being its prior.
    2. **Delivery shape.** Each (audience, daypart) pair buys at its own hours: its share of a
       day's supply by UTC hour is taken as uniform over the daypart's local hours in each of
       the audience's ZIPs' time zones (from the spec). ``F(t)`` = the share of today's supply
       already past (today: the account's budget day, which may start at any UTC hour and last
       23 or 25 hours on a daylight-saving change). (Learning the shape from delivery was tried
       and was worse: delivery follows our own budget changes -- catch-up bursts -- as much as
       the supply.)
    3. **Capacity.** What a line item can buy depends on its inventory and bid, not on its
       creative, so capacity (money per day) is estimated per supply key (audience, daypart,
       platform, bid strategy) by a ``CapacityModel`` (``campaignd.domain.capacity``: a
       log-additive model over the keys' levels, so e.g. what a bid buys on one platform informs
       the others). It starts at ``min(capacity_prior, capacity_groups / targeting groups) x``
       the daily budget. Over each interval in which a key's supply advanced by ``dF``: a cell
       that spent less than ``(1 - capacity_tolerance) x`` its budget x ``F`` was held back by
       supply (the DSP paces a daily budget over the line item's supply), so ``spend / dF`` is
       a measurement of the key's daily capacity; a cell funded up to the capacity believed
       that kept pace may buy more: the key is probed upwards by ``capacity_growth`` (at most
       hourly, cancelled by the next measurement).
    4. **Allocation.** Today's budget is the daily budget, capped by what the lifetime budget has
       left. Each cell's committed spend today is a lower bound and its spend today +
       ``capacity_margin x`` capacity x (1 - F) an upper bound (the margin leaves room to see
       whether a line item is held back by supply); the allocator splits the day's budget by
       Thompson sampling of value per dollar (draws sharpened by ``exploration_scale``) under
       those bounds, its exploration floor and its cut limits. Line items of one targeting group
       (audience, daypart, platform) buy the same inventory and the DSP splits it among those
       that bid, so with ``one_cell_per_group`` (default) only one line item per group -- the one
       the group's knapsack funds in most draws -- gets budget above what it already spent
       today; the others stop bidding. Budgets are rounded down to micros per cell, so they sum
       to at most today's budget. Between re-plans the budgets in force are returned unchanged.
       The first decision is already the allocator's (on its priors).

    Cut limits (``max_cut_per_cycle``, ``max_cut_per_day``) are off by default here: the
    sandbox DSP has none, and a cut limit keeps a group's previous line item bidding next to
    the new one (splitting the group's supply). Set them for a DSP that limits cuts.

    The defaults since the eighth session (BENCHMARKS.md, "The thompson policy": over 16 seeds
    through the decision engine they gain on seed, drift and large and cost nothing on sparse):
    creative fatigue modelled with an assumed curve (200,000 impressions, floor 0.5), no
    discounting (``half_life_hours`` 0: fatigue and change detection do the forgetting),
    change detection at threshold 8 and the conversion lag measured (``estimate_delay``).
    Since the sixteenth session the interactions' prior sd is 0.15 (it was 0.3): a cell's
    draw sums ten pairwise terms, ~0.95 on the logit scale at 0.3 before any count -- more than
    the main effects it should rank by -- and with the lifetime budget paced (half the money a
    day, half the data) the narrower prior gained over 12 seeds through the engine: sparse
    +0.061, drift +0.037, seed +0.005, large (4 seeds) +0.025 (BENCHMARKS.md).
    Set ``fatigue_half_life=None, half_life_hours=24, change_threshold=None,
    estimate_delay=False`` for the policy of before. ``spill`` stays 0: with no discounting it
    cost sparse.toml's early days (0.06 over 3 days).

    - ``fatigue_half_life`` (impressions) and ``fatigue_floor``: creative fatigue per
      (creative, audience) -- a rate falls to ``floor + (1 - floor) x 2^(-shown /
      half-life)`` of its fresh value, ``shown`` being the impressions of that creative to that
      audience so far. Trials count at the strength they had (their cost per impression
      unchanged) and a cell's rate is scaled by the wear reached (``Allocator.rate_scale``), so
      the model learns fresh rates and needs no discounting for fatigue.
    - ``spill``: the share of credited conversions that last-touch attribution moved from the
      line item that caused them (``Allocator``'s ``spill``).
    - ``change_threshold`` (with ``change_up``, ``change_down``, ``change_keep``): per-level
      change detection (``campaignd.domain.changes.LevelChangeDetector``) on the successes
      observed against those the model expected; a level that changed keeps ``change_keep`` of
      its cells' history. The last levels and times are in ``changed``.
    """

    name = "thompson"

    def __init__(self, ctx: PolicyContext, *, replan_seconds: int = 600,
                 half_life_hours: float = 0.0, conversion_delay_hours: float = 3.0,
                 explore_fraction: float = 0.03, learning_successes: float = 3.0,
                 max_cut_per_cycle: float | None = None, max_cut_per_day: float | None = None,
                 capacity_prior: float = 0.1, capacity_growth: float = 1.5,
                 draws: int | None = None, exploration_scale: float = 0.5, main_sd: float = 0.5,
                 interaction_sd: float = 0.15, residual_sd: float = 0.05,
                 capacity_margin: float = 1.3, capacity_groups: float = 4.0,
                 capacity_tolerance: float = 0.15, capacity_optimism: float = 0.5,
                 one_cell_per_group: bool = True, group_choice: str = "mode",
                 fatigue_half_life: float | None = 200_000.0, fatigue_floor: float = 0.5,
                 spill: float = 0.0, change_threshold: float | None = 8.0,
                 change_keep: float = 0.3, change_up: float = 2.0,
                 change_down: float = 0.5, estimate_delay: bool = True) -> None:
        from campaignd.domain.allocation import Allocator

        given = dict(locals())
        for key, (ok, what) in _THOMPSON_RANGES.items():
            value = given[key]
            if value is not None and not ok(value):
                raise ValueError(f"{key} must be {what}, got {value!r}")
        self._ctx = ctx
        cells = list(ctx.cells)
        n = len(cells)
        self._n = n
        if draws is None:  # 16 draws keep a 10,000-cell cycle within ~60 ms
            draws = 32 if n <= 4000 else 16
        self._alloc = Allocator([c.levels() for c in cells], seed=ctx.seed, draws=draws,
                                explore_fraction=explore_fraction,
                                learning_successes=learning_successes,
                                max_cut_per_cycle=max_cut_per_cycle,
                                max_cut_per_day=max_cut_per_day,
                                groups=[(c.audience, c.daypart, c.platform) for c in cells],
                                exploration_scale=exploration_scale, main_sd=main_sd,
                                interaction_sd=interaction_sd, residual_sd=residual_sd,
                                one_cell_per_group=one_cell_per_group,
                                group_choice=group_choice, spill=spill,
                                cost_prior=_cost_prior(ctx.spec))
        self.replan_seconds = replan_seconds
        if fatigue_half_life is not None and not fatigue_half_life > 0:
            raise ValueError(f"fatigue_half_life must be positive impressions or None, got "
                             f"{fatigue_half_life!r}")
        if not 0.0 <= fatigue_floor < 1.0:
            raise ValueError(f"fatigue_floor must be in [0, 1), got {fatigue_floor!r}")
        if not 0.0 <= change_keep <= 1.0:
            raise ValueError(f"change_keep must be in [0, 1], got {change_keep!r}")
        self.fatigue_half_life = fatigue_half_life
        self.fatigue_floor = fatigue_floor
        self._changes: LevelChangeDetector | None = None
        if change_threshold is not None:
            self._changes = LevelChangeDetector([c.levels() for c in cells], up=change_up,
                                                down=change_down, threshold=change_threshold)
        self.change_keep = change_keep
        self.changed: deque[tuple[datetime, tuple[str, str]]] = deque(maxlen=100)
        """The last 100 levels whose rate changed, and when (their history was forgotten)."""
        pairs: dict[tuple[str, str], int] = {}
        self._wear_key = np.array([pairs.setdefault((c.creative, c.audience), len(pairs))
                                   for c in cells], dtype=np.int64)
        self.half_life_hours = half_life_hours
        delayed = ctx.objective in ("conversions", "revenue")
        self.delay_hours = conversion_delay_hours if delayed else 0.0
        self._lag: LagEstimator | None = None
        if estimate_delay and self.delay_hours > 0:
            self._lag = LagEstimator(self.delay_hours)
        self.capacity_growth = capacity_growth
        self.capacity_margin = capacity_margin
        self.capacity_tolerance = capacity_tolerance
        self._success_field = {"conversions": "conversions", "revenue": "conversions",
                               "clicks": "clicks", "completed_views": "completes"}[ctx.objective]
        keys: dict[tuple[str, str], int] = {}
        self._group = np.array([keys.setdefault((c.audience, c.daypart), len(keys))
                                for c in cells], dtype=np.int64)
        self._group_keys = list(keys)
        self._prior_shapes: dict[tuple[int, ...], np.ndarray] = {}
        self._shape_zones: list[tuple[list[Any], tuple[int, ...]]] | None = None
        self._zone_set: list[Any] = []
        self._shape_days: list[tuple[int, ...]] = []
        # capacity is a property of the inventory a line item buys and its bid, not of its
        # creative: one estimate per supply key (audience, daypart, platform, bid strategy)
        skeys: dict[tuple[str, str, str, str], int] = {}
        self._skey = np.array([skeys.setdefault((c.audience, c.daypart, c.platform,
                                                 c.bid_strategy), len(skeys)) for c in cells],
                              dtype=np.int64)
        n_groups = len({(c.audience, c.daypart, c.platform) for c in cells})
        self._capacity = CapacityModel(
            [{"audience": a, "daypart": d, "platform": p, "bid_strategy": b}
             for a, d, p, b in skeys],
            ctx.daily_budget_micros * min(capacity_prior, capacity_groups / max(n_groups, 1)),
            growth=capacity_growth, optimism=capacity_optimism)
        self._last: Observations | None = None
        self._last_at: datetime | None = None
        self._held_today = 0
        """The day's money the cut limits held above the paced day at the last re-plan."""
        self.budget_today_micros: int | None = None
        """What the last decision allowed the day (paced; raised to what cut limits hold)."""
        self._pending = np.zeros(n)
        self._pending_spend = np.zeros(n)
        self._budgets = np.zeros(n, dtype=np.int64)
        self._at_cap = np.zeros(n, dtype=bool)
        self._start: datetime | None = None
        self.spend_upper: np.ndarray | None = None
        """At the last re-plan: per cell, the most it can spend today (spent + learned capacity
        for the rest of its day), micros; what a budget above it cannot buy."""

    @property
    def allocator(self) -> Allocator:
        """The allocator behind the decisions (its posterior is the evidence)."""
        return self._alloc

    # --- delivery shape ---------------------------------------------------------------------

    def _prior(self, now: datetime) -> np.ndarray:
        from zoneinfo import ZoneInfo

        from campaignd.domain.geo import zip_timezone

        spec = self._ctx.spec
        if self._shape_zones is None:
            # per (audience, daypart): the time zone of each ZIP (one entry per ZIP) and the
            # daypart's local hours
            zones: dict[str, ZoneInfo] = {}
            self._shape_zones = [
                ([zones.setdefault(tz, ZoneInfo(tz)) for tz in (
                    zip_timezone(z) for z in (spec.level("audience", aud).zips  # type: ignore[union-attr]
                                              or ("",)))],
                 tuple(spec.level("daypart", dp).hours))  # type: ignore[union-attr]
                for aud, dp in self._group_keys]
            self._shape_days = [
                tuple(spec.level("daypart", dp).days)  # type: ignore[union-attr]
                for _, dp in self._group_keys]
            self._zone_set = list(zones.values())
        # the shape depends on the zones' UTC offsets now (daylight saving moves them twice a
        # year): computed once per set of offsets
        key = tuple(_offset_hours(z, now) for z in self._zone_set)
        shape_now = self._prior_shapes.get(key)
        if shape_now is None:
            if all(len(d) == 7 for d in self._shape_days):
                shape = np.zeros((len(self._group_keys), 24))
                for g, (zs, hours) in enumerate(self._shape_zones):
                    for z in zs:
                        off_h = _offset_hours(z, now)
                        for h in hours:
                            shape[g, (h - off_h) % 24] += 1.0
                tot = shape.sum(axis=1, keepdims=True)
                shape_now = np.where(tot > 0, shape / np.where(tot > 0, tot, 1.0), 1 / 24)
            else:
                shape_now = self._weekly_shape(now)
            self._prior_shapes[key] = shape_now
        return shape_now

    def _weekly_shape(self, now: datetime) -> np.ndarray:
        """Dayparts limited to some weekdays: per group, the supply by UTC hour of the week
        (168 slots, slot ``j`` = hours since the epoch mod 168: the epoch is a Thursday),
        scaled so that a day of the daypart holds one day's worth (a day off holds none)."""
        assert self._shape_zones is not None
        shape = np.zeros((len(self._group_keys), 168))
        j = np.arange(168)
        utc_day, utc_hour = (j // 24 + 3) % 7, j % 24  # 0 = Monday
        for g, ((zs, hours), days) in enumerate(zip(self._shape_zones, self._shape_days,
                                                   strict=True)):
            in_hours = np.zeros(24, dtype=bool)
            in_hours[list(hours)] = True
            in_days = np.zeros(7, dtype=bool)
            in_days[list(days)] = True
            for z in zs:
                local = utc_hour + _offset_hours(z, now)
                shape[g] += in_hours[local % 24] & in_days[(utc_day + local // 24) % 7]
            per_day = shape[g].sum() / max(len(days), 1)
            shape[g] = shape[g] / per_day if per_day > 0 else 1 / 24
        return shape

    def _shape(self, now: datetime) -> np.ndarray:
        """Per (audience, daypart): share of a day's supply by UTC hour, from the spec:
        uniform over the daypart's local hours in each of the audience's ZIPs' time zones.
        (Learning it from delivery was tried and was worse: delivery follows our own budget
        changes -- catch-up bursts -- as much as the supply.)"""
        return self._prior(now)

    def _elapsed(self, shape: np.ndarray, now: datetime) -> np.ndarray:
        """Per cell: the share of its supply of the budget day of ``now`` already past."""
        return self._elapsed_and_day(shape, now)[0]

    def _day_supply(self, shape: np.ndarray, now: datetime) -> np.ndarray | None:
        """Per cell: the budget day's supply in days' worth (``None``: one day's worth for
        every cell, as when every daypart runs all week)."""
        return self._elapsed_and_day(shape, now)[1]

    def _elapsed_and_day(self, shape: np.ndarray, now: datetime
                         ) -> tuple[np.ndarray, np.ndarray | None]:
        ts = now.timestamp()
        start, end, _ = self._ctx.budget_day.span(ts)
        # the flight's last day ends with the flight: supply after it buys nothing
        ends_early = self._ctx.spec.flight_end.timestamp() < end
        if ends_early:
            end = max(int(self._ctx.spec.flight_end.timestamp()), start)
        period = shape.shape[1]
        if (period == 24 and not ends_early and start % 86_400 == 0
                and end - start == 86_400):
            # a day from UTC midnight: the arithmetic of before, so UTC runs stay bit-identical
            t = now.astimezone(UTC)
            h = t.hour
            frac = (t.minute * 60 + t.second + t.microsecond / 1e6) / 3600
            f = shape[:, :h].sum(axis=1) + shape[:, h] * frac
        else:  # supply past since the day's midnight ÷ the whole day's (any offset, any length)
            def cum(t: float) -> np.ndarray:  # the shape's cumulative sum over UTC hours
                k = int(t // 3600)
                c: np.ndarray = (k // period) * total + head[:, k % period] + shape[
                    :, k % period] * (t / 3600 - k)
                return c

            total = shape.sum(axis=1)
            head = np.concatenate([np.zeros((shape.shape[0], 1)), np.cumsum(shape, axis=1)],
                                  axis=1)
            c0, c1 = cum(start), cum(end)
            day = c1 - c0
            f = (cum(ts) - c0) / np.where(day > 0, day, 1.0)
            if period != 24 or ends_early:  # not a whole day's worth of supply
                out_f: np.ndarray = np.clip(f, 0.0, 1.0)[self._group]
                return out_f, day[self._group]
        out: np.ndarray = np.clip(f, 0.0, 1.0)[self._group]
        return out, None

    # --- decisions ----------------------------------------------------------------------------

    def decide(self, observations: Observations, now: datetime) -> np.ndarray:
        ctx = self._ctx
        obs = observations
        spent_today = obs.spent_today_micros.astype(np.int64)
        today = ctx.budget_today(int(obs.spend_micros.sum()), int(spent_today.sum()), now)
        self.budget_today_micros = today
        if self._last is None or self._last_at is None:
            self._start = now
            new_day = True
        else:
            day = ctx.budget_day
            new_day = day.of(now) != day.of(self._last_at)
            if (not new_day and (now - self._last_at).total_seconds() < self.replan_seconds
                    and int(self._budgets.sum()) <= max(today, self._held_today)):
                # (spend may have used up the rest; a DSP's cut limits may hold more)
                self.budget_today_micros = max(today, self._held_today)
                return self._budgets.copy()
            self._learn(obs, now, new_day)
        if new_day:
            # the day's cut limit counts from the budgets the DSP holds as the day starts
            self._alloc.begin_day(reference=obs.budgets_micros.astype(float))
        floor = self._alloc.cut_floor(previous=obs.budgets_micros.astype(float))
        if floor is not None:
            # A DSP's cut limits are its rules; pacing is ours: when the limits keep more than
            # the paced day allows, the day keeps that much (within the daily and lifetime caps)
            hard = min(ctx.daily_budget_micros, int(spent_today.sum()) + max(
                0, ctx.lifetime_budget_micros - int(obs.spend_micros.sum())))
            today = min(max(today, int(np.ceil(floor).sum())), hard)
            self.budget_today_micros = today
        self._held_today = today if floor is not None else 0
        shape = self._shape(now)
        f_now, day_supply = self._elapsed_and_day(shape, now)
        s = spent_today.astype(float)
        key_cap = self._capacity.estimate()[self._skey]
        supply_left = 1.0 - f_now if day_supply is None else day_supply * (1.0 - f_now)
        cap = s + self.capacity_margin * key_cap * supply_left
        self.spend_upper = cap
        x = self._alloc.allocate(float(today), cap, lower=np.minimum(s, float(today)),
                                 previous=obs.budgets_micros.astype(float))
        budgets = spent_today + np.floor(np.maximum(x - s, 0.0)).astype(np.int64)
        budgets = _keep_cut_limits(budgets, x, self._alloc.cut_floor(
            obs.budgets_micros.astype(float)), today, spent_today)
        # cells funded up to their capacity: if they then keep pace, the capacity was too low
        self._at_cap = (x - s > 0.5 * (cap - s)) & (cap > s)
        if int(budgets.sum()) > today:  # only if today's spend already exceeds today's budget
            # (every line item stops: none is raised, not even one that spent above its budget)
            budgets = np.minimum(budgets, np.minimum(spent_today, obs.budgets_micros))
        self._budgets = budgets
        self._last, self._last_at = obs, now
        return budgets.copy()

    def _wear(self, obs: Observations) -> np.ndarray:
        """Per cell: the creative fatigue its (creative, audience) has reached, from the
        impressions shown so far: floor + (1 - floor) x 2^(-impressions / half-life)."""
        assert self.fatigue_half_life
        k = self._wear_key
        exposure = np.bincount(k, obs.impressions.astype(float), minlength=int(k.max()) + 1)
        f = self.fatigue_floor + (1.0 - self.fatigue_floor) * np.exp2(
            -exposure / self.fatigue_half_life)
        out: np.ndarray = f[k]
        return out

    def _learn(self, obs: Observations, now: datetime, new_day: bool) -> None:
        last, last_at = self._last, self._last_at
        assert last is not None and last_at is not None
        dt_h = max((now - last_at).total_seconds() / 3600, 1e-9)
        d_imps = (obs.impressions - last.impressions).astype(float)
        d_succ = (getattr(obs, self._success_field)
                  - getattr(last, self._success_field)).astype(float)
        d_spend = (obs.spend_micros - last.spend_micros).astype(float)
        d_value = (obs.conversion_value_micros - last.conversion_value_micros).astype(float)
        wear = self._wear(obs) if self.fatigue_half_life else None
        if self._lag is not None:
            # the conversions this interval's impressions will bring, by the model as it stands
            self._lag.update(float(self._alloc.expected_successes(
                np.maximum(d_imps, 0.0), wear).sum()), float(np.maximum(d_succ, 0.0).sum()),
                dt_h)
            self.delay_hours = self._lag.hours
        # impressions mature into trials as their conversions have had time to arrive
        if self.delay_hours > 0:
            e = math.exp(-dt_h / self.delay_hours)
            new_mature = 1.0 - self.delay_hours / dt_h * (1.0 - e)
            trials = self._pending * (1 - e) + d_imps * new_mature
            spend = self._pending_spend * (1 - e) + d_spend * new_mature
            self._pending = self._pending * e + d_imps * (1 - new_mature)
            self._pending_spend = self._pending_spend * e + d_spend * (1 - new_mature)
        else:
            trials, spend = d_imps, d_spend
        # (floored: a restarted agent's first interval can be a long flight, and 0.5 ** 1000 is
        # 0.0, which the allocator refuses)
        discount = max(0.5 ** (dt_h / self.half_life_hours), 1e-12) \
            if self.half_life_hours > 0 else 1.0
        value = d_value if self._ctx.objective == "revenue" else None
        # the strength of these trials: the wear their creative had reached (at the end of the
        # interval: a little low for trials that matured from earlier impressions)
        trials = np.maximum(trials, 0.0)
        if self._changes is not None:
            # a change is a departure from what was learnt: only proven cells take part (an
            # unproven cell's expectation is the prior's)
            known = self._alloc.proven()
            levels = self._changes.update(
                np.where(known, np.maximum(d_succ, 0.0), 0.0),
                np.where(known, self._alloc.expected_successes(trials, wear), 0.0))
            if levels:
                self._alloc.forget(self._changes.cells_of(levels), self.change_keep)
                self.changed.extend((now, lvl) for lvl in levels)
        self._alloc.observe(trials, np.maximum(d_succ, 0.0), spend=np.maximum(spend, 0.0),
                            value=value, discount=discount, strength=wear)
        if wear is not None:
            self._alloc.rate_scale = wear
        if new_day:
            return  # spent today restarted: this interval says nothing clean about capacity
        shape = self._shape(now)
        f0 = self._elapsed(shape, last_at)
        f1, day_supply = self._elapsed_and_day(shape, now)
        df = f1 - f0
        if day_supply is not None:  # in days' worth of supply (a day off has none)
            df = df * day_supply
        b = obs.budgets_micros.astype(float)
        s0 = last.spent_today_micros.astype(float)
        s1 = obs.spent_today_micros.astype(float)
        ds = s1 - s0
        # a line item with budget left that could buy: the DSP paces its daily budget over its
        # supply, so it may spend about b x F by now; well below that, supply held it back
        active = (df > 0.002) & (b > s0)
        supply_limited = active & (s1 < (1.0 - self.capacity_tolerance) * b * f1)
        budget_limited = active & ~supply_limited
        nk = self._capacity.n_keys
        k = self._skey
        key_ds = np.bincount(k, np.where(active, ds, 0.0), minlength=nk)
        key_imps = np.bincount(k, np.where(active, d_imps, 0.0), minlength=nk)
        key_df = np.zeros(nk)
        np.maximum.at(key_df, k, np.where(active, df, 0.0))
        key_sup = np.bincount(k, supply_limited, minlength=nk) > 0
        key_bud = np.bincount(k, budget_limited, minlength=nk) > 0
        key_at_cap = np.bincount(k, budget_limited & self._at_cap, minlength=nk) > 0
        rate = key_ds / np.where(key_df > 0, key_df, 1.0)
        cm = self._capacity
        cm.age(dt_h / 24)
        # supply-limited: the spend per unit of supply is a measurement of the capacity
        m = np.flatnonzero(key_sup & ~key_bud & (key_df > 0))
        cm.measure(m, rate[m], key_imps[m])
        # one that bought nothing at all: less than one impression's worth over that share of
        # the day (a measurement, so a line item with no inventory stops holding budget)
        imps_all = float(obs.impressions.sum())
        none = m[key_imps[m] <= 0]
        if none.size and imps_all > 0:
            cpi = float(obs.spend_micros.sum()) / imps_all
            cm.measure(none, cpi / key_df[none], np.ones(none.size))
        # kept pace while funded up to the capacity we believed: it can buy more (probe up)
        up = np.flatnonzero(key_at_cap & ~key_sup)
        assert self._start is not None
        cm.kept_pace(up, rate[up], (now - self._start).total_seconds() / 3600)
        # whatever it spent, it could
        lb = np.flatnonzero(key_bud & ~key_sup & ~key_at_cap)
        cm.reached(lb, rate[lb])


__all__ = ["ThompsonPolicy"]
