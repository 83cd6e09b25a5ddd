"""Sandbox scenarios: the TRUE world a ``Market`` simulates, read from TOML.

A scenario is written around one campaign spec (``campaign = "../campaigns/x.toml"``, resolved
relative to the scenario file) so that effects can name campaign levels; the market translates
them into DSP-level facts (see ``campaignd.dsp.sandbox.market``):

- an audience's effect lives on its ZIPs (share ``1 - signal_share``) and on its signals
  (segments, share ``signal_share``), so a line item gets it by buying those ZIPs/segments;
- a platform's effect lives on its app bundles, a creative's on its key (the level id), a
  daypart's on the viewer's local hours, a bid strategy's on the CPM bid (interpolated
  piecewise-linearly between the campaign's bid levels).

Rates are probabilities in ``[base]`` and additive logit effects everywhere else. Metrics:
``ctr`` (click per impression), ``completion`` (complete per start), ``viewability`` (viewable
per measurable impression), ``conversion`` (conversion per impression).

File layout (every table optional except ``campaign`` and ``[base]``)::

    name = "seed"                       campaign = "../campaigns/madhive_12345.toml"
    start = 2026-11-02T00:00:00Z        # default market start (default: campaign flight start)
    account_timezone = "UTC"            # the DSP account's time zone: the budget day (default UTC)
    world_seed = 7                      # fixes the hidden per-ZIP heterogeneity
    [base]         ctr, completion, viewability, conversion, measurable, start (probabilities)
    [supply]       per_zip_hour = {platform = imps/hour per ZIP}, default_per_zip_hour,
                   hourly = [24 factors by viewer local hour], zip_sigma, segment_reach,
                   segment_reach_by = {segment = share}
    [auction]      floor_cpm = {platform = "22.00"}, default_floor_cpm, width_cpm,
                   reserve_fraction
    [conversion_value]  distribution = "fixed"|"lognormal", mean = "45.00", sigma
    [conversion_delay]  distribution = "none"|"exponential"|"lognormal", mean_hours, sigma,
                        max_hours
    [fatigue]      half_life_impressions, floor, metrics = ["ctr", "conversion"]
    [journeys]     extra_touches_mean, max_touches
    [pacing]       mode = "supply"|"time", catch_up
    [zip_heterogeneity]  sigma (random per-ZIP conversion logit)
    signal_share = 0.3
    [[effects]]       <one dimension> = "<level id>", <metric> = <logit delta>…
    [[interactions]]  <two or more dimensions> = "<level id>", <metric> = …
    [[zip_clusters]]  name, (zips = [...] | state = "TX" | near = "94301", radius_km = 25),
                      <metric> = …
    [[drift]]         at_day = 3.5, <one or more dimensions> = "<level id>", <metric> = …

Everything is validated; every problem is reported at once as ``SpecErrors`` naming the field,
the value and the fix. The values themselves are in ``campaignd.dsp.sandbox.scenario_model``
(re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from campaignd.domain.budget_day import check_timezone
from campaignd.domain.campaign import (
    DIMENSIONS,
    CampaignSpec,
    load_spec,
    to_micros,
)
from campaignd.domain.geo import is_real_zip
from campaignd.dsp.sandbox.scenario_model import (
    DEFAULT_HOURLY,
    METRICS,
    Auction,
    BaseRates,
    ConversionDelay,
    ConversionValue,
    Deltas,
    Drift,
    Fatigue,
    Interaction,
    Journeys,
    LevelEffect,
    Pacing,
    Scenario,
    Supply,
    ZipCluster,
)
from campaignd.errors import BadInput, SpecError, SpecErrors
from campaignd.tomlfile import read_toml

_US_STATES = {
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
    "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
    "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA",
    "WV", "WI", "WY", "PR", "VI", "GU", "AS", "MP",
}


# --- parsing ---------------------------------------------------------------------------------

_BASE_DEFAULTS = BaseRates()


class _Errs:
    def __init__(self) -> None:
        self.errors: list[BadInput] = []

    def add(self, field: str, message: str, value: Any = None, fix: str | None = None) -> None:
        self.errors.append(SpecError(message, field=field, value=value, fix=fix))


def _num(raw: Any, field: str, errs: _Errs, *, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
         default: float | None = None) -> float | None:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        errs.add(field, "must be a number", raw)
        return None
    v = float(raw)
    if not math.isfinite(v):
        errs.add(field, "must be finite", raw)
        return None
    rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
           f"{'inf' if hi is None else hi}{')' if hi_open else ']'}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        errs.add(field, f"is out of range {rng}", raw, f"give a value in {rng}")
        return None
    if hi is not None and (v > hi or (hi_open and v == hi)):
        errs.add(field, f"is out of range {rng}", raw, f"give a value in {rng}")
        return None
    return v


def _prob(raw: Any, field: str, errs: _Errs, default: float) -> float:
    v = _num(raw, field, errs, lo=0.0, hi=1.0, lo_open=True, hi_open=True, default=default)
    return default if v is None else v


def _money_micros(raw: Any, field: str, errs: _Errs, default: int) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool):
        errs.add(field, "must be a decimal amount", raw, 'write it as a string, e.g. "22.00"')
        return default
    try:
        d = Decimal(repr(raw) if isinstance(raw, float) else str(raw))
    except (InvalidOperation, ValueError):
        errs.add(field, "is not a decimal amount", raw, 'write it as a string, e.g. "22.00"')
        return default
    if not d.is_finite() or d <= 0:
        errs.add(field, "must be a positive amount", raw, 'e.g. "22.00"')
        return default
    return to_micros(d)


def _table(data: Mapping[str, Any], key: str, errs: _Errs, allowed: set[str]) -> Mapping[str, Any]:
    raw = data.get(key, {})
    if not isinstance(raw, Mapping):
        errs.add(key, "must be a table", raw, f"write [{key}]")
        return {}
    for k in raw:
        if k not in allowed:
            errs.add(f"{key}.{k}", "is not a known setting", None,
                     f"allowed here: {', '.join(sorted(allowed))}")
    return raw


def _deltas(raw: Mapping[str, Any], where: str, errs: _Errs) -> Deltas:
    vals = {}
    for m in METRICS:
        v = _num(raw.get(m), f"{where}.{m}", errs, lo=-10.0, hi=10.0, default=0.0)
        vals[m] = 0.0 if v is None else v
    return Deltas(**vals)


def _level_refs(raw: Mapping[str, Any], where: str, spec: CampaignSpec, errs: _Errs,
                extra: set[str]) -> tuple[tuple[str, str], ...]:
    refs = []
    for key, val in raw.items():
        if key in METRICS or key in extra:
            continue
        if key not in DIMENSIONS:
            errs.add(f"{where}.{key}", "is not a dimension or a metric", None,
                     f"use dimensions {', '.join(DIMENSIONS)} and metrics {', '.join(METRICS)}")
            continue
        known = [lvl.id for lvl in spec.levels(key)]
        if val not in known:
            errs.add(f"{where}.{key}", f"names an unknown {key} of campaign {spec.id!r}", val,
                     f"known: {', '.join(known)}")
            continue
        refs.append((key, str(val)))
    return tuple(sorted(refs, key=lambda r: DIMENSIONS.index(r[0])))


def _per_platform(raw: Any, field: str, spec: CampaignSpec, errs: _Errs) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        errs.add(field, "must be a table keyed by platform id", raw,
                 'e.g. per_zip_hour = { hulu = 300, "disney+" = 250 }')
        return {}
    known = {p.id for p in spec.platforms}
    out = {}
    for k, v in raw.items():
        if k not in known:
            errs.add(f"{field}.{k}", f"is not a platform of campaign {spec.id!r}", k,
                     f"known: {', '.join(sorted(known))}")
            continue
        out[k] = v
    return out


TOP_KEYS = {"name", "description", "campaign", "start", "account_timezone", "world_seed",
            "signal_share", "base", "supply", "auction", "conversion_value", "conversion_delay",
            "fatigue", "journeys", "pacing", "zip_heterogeneity", "effects", "interactions",
            "zip_clusters", "drift"}


def parse_scenario(data: Mapping[str, Any], *, base_dir: Path, source: str = "scenario",
                   path: Path | None = None) -> Scenario:
    """Validate a decoded scenario; raise ``SpecErrors`` listing every problem found."""
    errs = _Errs()
    for k in data:
        if k not in TOP_KEYS:
            errs.add(k, "is not a known setting", None,
                     f"allowed at the top level: {', '.join(sorted(TOP_KEYS))}")
    name = data.get("name", path.stem if path else "scenario")
    if not isinstance(name, str) or not name:
        errs.add("name", "must be a non-empty string", name)
        name = "scenario"
    campaign_ref = data.get("campaign")
    if not isinstance(campaign_ref, str) or not campaign_ref:
        errs.add("campaign", "is missing", campaign_ref,
                 'name the campaign spec it is built around, e.g. '
                 'campaign = "../campaigns/madhive_12345.toml"')
        raise SpecErrors(source, errs.errors)
    campaign_path = (base_dir / campaign_ref).resolve()
    try:
        spec = load_spec(campaign_path)
    except SpecErrors as exc:
        errs.add("campaign", f"the campaign spec is invalid: {exc.message}", str(campaign_path),
                 "fix the campaign spec first")
        errs.errors.extend(exc.errors)
        raise SpecErrors(source, errs.errors) from None
    except SpecError as exc:
        errs.add("campaign", f"cannot load the campaign spec: {exc.message}", str(campaign_path),
                 "give a path relative to the scenario file")
        raise SpecErrors(source, errs.errors) from None

    start = None
    raw_start = data.get("start")
    if raw_start is not None:
        if isinstance(raw_start, datetime):
            start = raw_start if raw_start.tzinfo else raw_start.replace(tzinfo=UTC)
        elif isinstance(raw_start, date):
            start = datetime.combine(raw_start, time(0), tzinfo=UTC)
        else:
            errs.add("start", "is not a date-time", raw_start, "use e.g. 2026-11-02T00:00:00Z")
    account_tz = data.get("account_timezone", "UTC")
    try:
        check_timezone(account_tz)
    except ValueError as exc:
        errs.add("account_timezone", str(exc), account_tz,
                 'e.g. account_timezone = "America/New_York"')
        account_tz = "UTC"
    world_seed = data.get("world_seed", 7)
    if not isinstance(world_seed, int) or isinstance(world_seed, bool) or world_seed < 0:
        errs.add("world_seed", "must be a non-negative integer", world_seed)
        world_seed = 7
    signal_share = _num(data.get("signal_share"), "signal_share", errs, lo=0.0, hi=1.0,
                        default=0.3)

    # base
    b = _table(data, "base", errs, {"ctr", "completion", "viewability", "conversion",
                                    "measurable", "start"})
    if "base" not in data:
        errs.add("base", "is missing", None,
                 "add [base] with ctr, completion, viewability, conversion (probabilities)")
    base = BaseRates(**{k: _prob(b.get(k), f"base.{k}", errs, getattr(_BASE_DEFAULTS, k))
                        for k in ("ctr", "completion", "viewability", "conversion",
                                  "measurable", "start")})

    # supply
    s = _table(data, "supply", errs, {"per_zip_hour", "default_per_zip_hour", "hourly",
                                      "zip_sigma", "segment_reach", "segment_reach_by"})
    pzh = []
    for k, v in _per_platform(s.get("per_zip_hour"), "supply.per_zip_hour", spec, errs).items():
        n = _num(v, f"supply.per_zip_hour.{k}", errs, lo=0.0)
        if n is not None:
            pzh.append((k, n))
    dflt = _num(s.get("default_per_zip_hour"), "supply.default_per_zip_hour", errs, lo=0.0,
                default=50.0)
    hourly_raw = s.get("hourly")
    hourly = DEFAULT_HOURLY
    if hourly_raw is not None:
        if (not isinstance(hourly_raw, list) or len(hourly_raw) != 24
                or not all(isinstance(x, int | float) and not isinstance(x, bool) and x >= 0
                           for x in hourly_raw) or sum(hourly_raw) <= 0):
            errs.add("supply.hourly", "must be 24 non-negative numbers (one per local hour 0-23), "
                     "not all zero", hourly_raw)
        else:
            hourly = tuple(float(x) for x in hourly_raw)
    mean_h = sum(hourly) / 24.0
    hourly = tuple(x / mean_h for x in hourly)
    reach_by = []
    rb = s.get("segment_reach_by", {})
    if not isinstance(rb, Mapping):
        errs.add("supply.segment_reach_by", "must be a table of segment = share", rb)
    else:
        for k, v in rb.items():
            r = _num(v, f"supply.segment_reach_by.{k}", errs, lo=0.0, hi=1.0, lo_open=True)
            if r is not None:
                reach_by.append((str(k), r))
    supply = Supply(
        per_zip_hour=tuple(sorted(pzh)),
        default_per_zip_hour=dflt if dflt is not None else 50.0,
        hourly=hourly,
        zip_sigma=_num(s.get("zip_sigma"), "supply.zip_sigma", errs, lo=0.0, hi=3.0,
                       default=0.3) or 0.0,
        segment_reach=_num(s.get("segment_reach"), "supply.segment_reach", errs, lo=0.0, hi=1.0,
                           lo_open=True, default=0.35) or 0.35,
        segment_reach_by=tuple(sorted(reach_by)),
    )
    missing = [p.id for p in spec.platforms if p.id not in dict(pzh)]
    if "supply" in data and missing and s.get("per_zip_hour") is not None:
        errs.add("supply.per_zip_hour", "has no supply for platform(s) " + ", ".join(missing),
                 None, "give every platform of the campaign an impressions/hour figure")

    # auction
    a = _table(data, "auction", errs, {"floor_cpm", "default_floor_cpm", "width_cpm",
                                       "reserve_fraction"})
    floors = []
    for k, v in _per_platform(a.get("floor_cpm"), "auction.floor_cpm", spec, errs).items():
        floors.append((k, _money_micros(v, f"auction.floor_cpm.{k}", errs, 20_000_000)))
    auction = Auction(
        floor_cpm_micros=tuple(sorted(floors)),
        default_floor_cpm_micros=_money_micros(a.get("default_floor_cpm"),
                                               "auction.default_floor_cpm", errs, 20_000_000),
        width_cpm_micros=_money_micros(a.get("width_cpm"), "auction.width_cpm", errs, 4_000_000),
        reserve_fraction=_num(a.get("reserve_fraction"), "auction.reserve_fraction", errs,
                              lo=0.0, hi=1.0, default=0.5) or 0.0,
    )

    # conversion value
    cv = _table(data, "conversion_value", errs, {"distribution", "mean", "sigma"})
    cv_dist = cv.get("distribution", "fixed" if not cv.get("sigma") else "lognormal")
    if cv_dist not in ("fixed", "lognormal"):
        errs.add("conversion_value.distribution", "is not a known distribution", cv_dist,
                 'use "fixed" or "lognormal"')
        cv_dist = "fixed"
    default_value = spec.conversion_value if spec.conversion_value is not None else Decimal("45")
    conv_value = ConversionValue(
        distribution=cv_dist,
        mean_micros=_money_micros(cv.get("mean"), "conversion_value.mean", errs,
                                  to_micros(default_value)),
        sigma=_num(cv.get("sigma"), "conversion_value.sigma", errs, lo=0.0, hi=3.0,
                   default=0.0) or 0.0,
    )

    # conversion delay
    cd = _table(data, "conversion_delay", errs, {"distribution", "mean_hours", "sigma",
                                                 "max_hours"})
    cd_dist = cd.get("distribution", "exponential")
    if cd_dist not in ("none", "exponential", "lognormal"):
        errs.add("conversion_delay.distribution", "is not a known distribution", cd_dist,
                 'use "none", "exponential" or "lognormal"')
        cd_dist = "exponential"
    delay = ConversionDelay(
        distribution=cd_dist,
        mean_hours=_num(cd.get("mean_hours"), "conversion_delay.mean_hours", errs, lo=0.0,
                        hi=720.0, default=4.0) or 0.0,
        sigma=_num(cd.get("sigma"), "conversion_delay.sigma", errs, lo=0.0, hi=5.0,
                   default=1.0) or 0.0,
        max_hours=_num(cd.get("max_hours"), "conversion_delay.max_hours", errs, lo=0.0,
                       hi=2160.0, lo_open=True, default=72.0) or 72.0,
    )

    # fatigue
    f = _table(data, "fatigue", errs, {"half_life_impressions", "floor", "metrics"})
    hl = _num(f.get("half_life_impressions"), "fatigue.half_life_impressions", errs, lo=0.0,
              lo_open=True)
    fmetrics = f.get("metrics", ["ctr", "conversion"])
    if not isinstance(fmetrics, list) or any(m not in METRICS for m in fmetrics):
        errs.add("fatigue.metrics", "must be a list of metrics", fmetrics,
                 f"choose from {', '.join(METRICS)}")
        fmetrics = ["ctr", "conversion"]
    fatigue = Fatigue(hl, _num(f.get("floor"), "fatigue.floor", errs, lo=0.0, hi=1.0,
                               default=0.0) or 0.0, tuple(fmetrics))

    j = _table(data, "journeys", errs, {"extra_touches_mean", "max_touches"})
    mt = j.get("max_touches", 5)
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        errs.add("journeys.max_touches", "must be a whole number ≥ 1", mt)
        mt = 5
    journeys = Journeys(_num(j.get("extra_touches_mean"), "journeys.extra_touches_mean", errs,
                             lo=0.0, hi=20.0, default=0.0) or 0.0, mt)

    p = _table(data, "pacing", errs, {"mode", "catch_up"})
    pmode = p.get("mode", "supply")
    if pmode not in ("supply", "time"):
        errs.add("pacing.mode", "is not a pacing mode", pmode, 'use "supply" or "time"')
        pmode = "supply"
    pacing = Pacing(pmode, _num(p.get("catch_up"), "pacing.catch_up", errs, lo=0.0, hi=1.0,
                                default=0.05) or 0.0)

    zh = _table(data, "zip_heterogeneity", errs, {"sigma"})
    zip_sigma = _num(zh.get("sigma"), "zip_heterogeneity.sigma", errs, lo=0.0, hi=3.0,
                     default=0.0) or 0.0

    # effects
    effects: list[LevelEffect] = []
    seen: set[tuple[str, str]] = set()
    for i, raw in enumerate(_list(data, "effects", errs)):
        where = f"effects[{i}]"
        if not isinstance(raw, Mapping):
            errs.add(where, "must be a table", raw)
            continue
        refs = _level_refs(raw, where, spec, errs, set())
        if len(refs) != 1:
            if len(refs) > 1 or not any(k in DIMENSIONS for k in raw):
                errs.add(where, "must name exactly one level", dict(raw),
                         'e.g. platform = "hulu"; use [[interactions]] for combinations')
            continue
        if refs[0] in seen:
            errs.add(where, "repeats the effect of a level", f"{refs[0][0]}={refs[0][1]}",
                     "give each level one [[effects]] table")
            continue
        seen.add(refs[0])
        effects.append(LevelEffect(refs[0][0], refs[0][1], _deltas(raw, where, errs)))

    interactions: list[Interaction] = []
    for i, raw in enumerate(_list(data, "interactions", errs)):
        where = f"interactions[{i}]"
        if not isinstance(raw, Mapping):
            errs.add(where, "must be a table", raw)
            continue
        refs = _level_refs(raw, where, spec, errs, set())
        if len({d for d, _ in refs}) < 2:
            errs.add(where, "must name levels of at least two dimensions", dict(raw),
                     'e.g. audience = "suburban_families", platform = "disney+"')
            continue
        interactions.append(Interaction(refs, _deltas(raw, where, errs)))

    clusters: list[ZipCluster] = []
    for i, raw in enumerate(_list(data, "zip_clusters", errs)):
        where = f"zip_clusters[{i}]"
        if not isinstance(raw, Mapping):
            errs.add(where, "must be a table", raw)
            continue
        for k in raw:
            if k not in {"name", "zips", "state", "near", "radius_km", *METRICS}:
                errs.add(f"{where}.{k}", "is not a known setting", None,
                         "allowed: name, zips, state, near, radius_km, " + ", ".join(METRICS))
        kinds = [k for k in ("zips", "state", "near") if k in raw]
        if len(kinds) != 1:
            errs.add(where, "must say which ZIPs it holds with exactly one of zips, state, near",
                     kinds or None, 'e.g. state = "TX" or near = "94301", radius_km = 25')
            continue
        zips: frozenset[str] = frozenset()
        state = near = None
        radius = 0.0
        if "zips" in raw:
            zl = raw["zips"]
            if not isinstance(zl, list) or not zl or not all(isinstance(z, str) for z in zl):
                errs.add(f"{where}.zips", "must be a non-empty list of ZIP strings", zl)
                continue
            bad = [z for z in zl if not is_real_zip(z)]
            if bad:
                errs.add(f"{where}.zips", f"{len(bad)} invalid US ZIP code(s): "
                         + ", ".join(bad[:10]), None, 'use real 5-digit ZIPs, e.g. "10001"')
                continue
            zips = frozenset(zl)
        elif "state" in raw:
            state = raw["state"]
            if state not in _US_STATES:
                errs.add(f"{where}.state", "is not a US state code", state, 'e.g. "TX"')
                continue
        else:
            near = raw["near"]
            if not isinstance(near, str) or not is_real_zip(near):
                errs.add(f"{where}.near", "is not a real US ZIP code", near, 'e.g. "94301"')
                continue
            r = _num(raw.get("radius_km"), f"{where}.radius_km", errs, lo=0.0, hi=2000.0,
                     lo_open=True)
            if r is None:
                if raw.get("radius_km") is None:
                    errs.add(f"{where}.radius_km", "is missing", None,
                             "give the cluster radius in km, e.g. radius_km = 25")
                continue
            radius = r
        clusters.append(ZipCluster(str(raw.get("name", f"cluster{i}")),
                                   _deltas(raw, where, errs), zips, state, near, radius))

    drifts: list[Drift] = []
    for i, raw in enumerate(_list(data, "drift", errs)):
        where = f"drift[{i}]"
        if not isinstance(raw, Mapping):
            errs.add(where, "must be a table", raw)
            continue
        at = _num(raw.get("at_day"), f"{where}.at_day", errs, lo=0.0)
        if raw.get("at_day") is None:
            errs.add(f"{where}.at_day", "is missing", None,
                     "say when the change happens, in days after the start, e.g. at_day = 3.5")
        refs = _level_refs(raw, where, spec, errs, {"at_day"})
        if not refs:
            errs.add(where, "must name at least one level", None, 'e.g. platform = "hulu"')
            continue
        if at is None:
            continue
        drifts.append(Drift(at, refs, _deltas(raw, where, errs)))

    desc = data.get("description", "")
    if errs.errors:
        raise SpecErrors(source, errs.errors)
    return Scenario(
        name=name, path=path, campaign_path=campaign_path, campaign=spec, base=base,
        supply=supply, auction=auction, conversion_value=conv_value, conversion_delay=delay,
        fatigue=fatigue, journeys=journeys, pacing=pacing, effects=tuple(effects),
        interactions=tuple(interactions), zip_clusters=tuple(clusters),
        drift=tuple(sorted(drifts, key=lambda d: d.at_day)), zip_sigma=zip_sigma,
        signal_share=signal_share if signal_share is not None else 0.3,
        world_seed=world_seed, start=start, description=str(desc), account_timezone=account_tz,
    )


def _list(data: Mapping[str, Any], key: str, errs: _Errs) -> list[Any]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        errs.add(key, "must be a list of tables", raw, f"write [[{key}]] tables")
        return []
    return raw


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (TOML); its campaign path is relative to the file."""
    data = read_toml(path, field="SCENARIO", kind="a scenario TOML file, e.g. "
                     "config/scenarios/seed.toml")
    p = Path(path)
    return parse_scenario(data, base_dir=p.resolve().parent, source=str(p), path=p.resolve())


__all__ = [
    "DEFAULT_HOURLY", "METRICS", "Auction", "BaseRates", "ConversionDelay", "ConversionValue",
    "Deltas", "Drift", "Fatigue", "Interaction", "Journeys", "LevelEffect", "Pacing", "Scenario",
    "Supply", "ZipCluster", "load_scenario", "parse_scenario",
]
