"""Campaign specs and atomization.

A campaign spec (TOML) names a budget, a flight, an objective and its test dimensions. Its cells
are the cartesian product of the dimension levels minus the exclusion rules; each cell becomes one
DSP line item. ``atomize`` is a pure function: the same spec always yields the same cells, in
the same order, with the same ids, so reloading a campaign never duplicates a line item.

Money is ``Decimal`` here (parsed from strings or integers, never from binary floats) and micros
(``int``, 1 unit = 1,000,000 micros) at the storage and DSP edges. Amounts are bounded so that
their micros, and sums of them, fit a signed 64-bit SQL ``BIGINT`` (at most about 9.2e18 micros,
9.2 trillion units): a budget at most ``MAX_BUDGET`` (1,000,000,000 units = 1e15 micros), a
price — a CPM bid, another bid parameter, a conversion's value, amounts that are multiplied by
counts — at most ``MAX_PRICE`` (1,000,000 units).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from campaignd.domain.geo import is_real_zip
from campaignd.errors import BadInput, SpecError, SpecErrors
from campaignd.tomlfile import read_toml

DIMENSIONS: tuple[str, ...] = ("audience", "creative", "bid_strategy", "daypart", "platform")
"""The test dimensions, in cell-key order. The spec's tables are the plurals below."""

SPEC_TABLES: dict[str, str] = {
    "audience": "audiences",
    "creative": "creatives",
    "bid_strategy": "bid_strategies",
    "daypart": "dayparts",
    "platform": "platforms",
}

OBJECTIVES: tuple[str, ...] = ("conversions", "revenue", "completed_views", "clicks")
OBJECTIVE_COUNTER: dict[str, str] = {"conversions": "conversions",
                                     "revenue": "conversion_value_micros",
                                     "completed_views": "completes", "clicks": "clicks"}
"""The per-cell counter (a ``CellTable`` metric) that measures each objective."""
CREATIVE_TYPES: tuple[str, ...] = ("video", "banner", "native", "audio")
CURRENCIES: tuple[str, ...] = ("USD",)
"""The currencies a spec may use. Only USD until multi-currency is built: the Beeswax adapter
sends no currency (Beeswax campaigns default to USD, immutably) and the pipeline counts spend in
USD."""
BID_STRATEGIES: tuple[str, ...] = ("CPM", "CPM_PACED", "CPC", "CPC_PACED", "VCR", "VCR_PACED",
                                   "CPA", "CPA_PACED")
DEFAULT_MAX_CELLS = 20_000
MICROS = 1_000_000
MAX_BUDGET = Decimal(1_000_000_000)
"""The largest budget (lifetime or daily) a spec may give, in currency units: 1e15 micros, so
that thousands of such budgets still sum inside a signed 64-bit integer."""
MAX_PRICE = Decimal(1_000_000)
"""The largest price (CPM bid, bid parameter, conversion value), in currency units: prices are
multiplied by counts (value × conversions), so they get a lower bound than budgets."""
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")
"""An id (campaign, level): matched whole (``fullmatch``: ``$`` would let a final newline in)."""


def to_micros(amount: Decimal) -> int:
    """Decimal currency units → integer micros (banker's rounding at the micro)."""
    return int((amount * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_micros(micros: int) -> Decimal:
    """Integer micros → exact Decimal currency units, with 2 to 6 decimal places."""
    exact = Decimal(int(micros)).scaleb(-6)
    for places in ("0.01", "0.001", "0.0001", "0.00001"):
        q = exact.quantize(Decimal(places))
        if q == exact:
            return q
    return exact.quantize(Decimal("0.000001"))


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Audience:
    id: str
    zips: tuple[str, ...]
    signals: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class Creative:
    id: str
    name: str = ""
    type: str = "video"
    duration_s: int | None = None
    click_url: str = ""


@dataclass(frozen=True, slots=True)
class BidStrategy:
    id: str
    strategy: str = "CPM"
    cpm_bid: Decimal = Decimal("10")
    params: tuple[tuple[str, str], ...] = ()
    """Other bidding parameters (e.g. ``cpc_goal``), as sorted (key, decimal string) pairs."""


@dataclass(frozen=True, slots=True)
class Daypart:
    id: str
    hours: tuple[int, ...]
    """Hours of the day (0–23) in the viewer's local time."""
    days: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
    """Days of the week, 0 = Monday … 6 = Sunday (ISO order minus one)."""

    def hours_of_week(self) -> tuple[int, ...]:
        """Hour-of-week buckets (0 = Sunday 00:00, as Beeswax's ``user_time_of_week``)."""
        out: list[int] = []
        for d in self.days:
            sunday_based = (d + 1) % 7
            out.extend(sunday_based * 24 + h for h in self.hours)
        return tuple(sorted(out))


@dataclass(frozen=True, slots=True)
class Platform:
    id: str
    app_bundles: tuple[str, ...] = ()
    name: str = ""
    device_types: tuple[int, ...] = (3,)
    """OpenRTB device types (3 = connected TV)."""


Level = Audience | Creative | BidStrategy | Daypart | Platform


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A combination not to test: every named dimension must match for a cell to be excluded."""

    match: tuple[tuple[str, str], ...]

    def excludes(self, levels: Mapping[str, str]) -> bool:
        return all(levels[dim] == lvl for dim, lvl in self.match)


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    id: str
    name: str
    currency: str
    objective: str
    lifetime_budget: Decimal
    daily_budget: Decimal
    flight_start: datetime
    flight_end: datetime
    audiences: tuple[Audience, ...]
    creatives: tuple[Creative, ...]
    bid_strategies: tuple[BidStrategy, ...]
    dayparts: tuple[Daypart, ...]
    platforms: tuple[Platform, ...]
    exclusions: tuple[Exclusion, ...] = ()
    max_cells: int = DEFAULT_MAX_CELLS
    advertiser: str = ""
    conversion_value: Decimal | None = None
    """Default value of one conversion, for ROAS when the DSP reports none."""

    def levels(self, dimension: str) -> tuple[Level, ...]:
        return getattr(self, SPEC_TABLES[dimension])

    def dimension_counts(self) -> dict[str, int]:
        return {d: len(self.levels(d)) for d in DIMENSIONS}

    @property
    def lifetime_budget_micros(self) -> int:
        return to_micros(self.lifetime_budget)

    @property
    def daily_budget_micros(self) -> int:
        return to_micros(self.daily_budget)

    def level(self, dimension: str, level_id: str) -> Level:
        for lvl in self.levels(dimension):
            if lvl.id == level_id:
                return lvl
        raise KeyError(f"{dimension} {level_id!r}")


@dataclass(frozen=True, slots=True)
class Cell:
    """One test cell: a combination of one level per dimension; one DSP line item."""

    cell_id: str
    campaign_id: str
    index: int
    audience: str
    creative: str
    bid_strategy: str
    daypart: str
    platform: str

    def levels(self) -> dict[str, str]:
        return {d: getattr(self, d) for d in DIMENSIONS}

    @property
    def alternative_id(self) -> str:
        """The deterministic external id stored on the DSP line item (≤ 191 chars)."""
        return f"campaignd:{self.campaign_id}:{self.cell_id}"

    def name(self) -> str:
        return " | ".join(getattr(self, d) for d in DIMENSIONS)


def cell_id_for(campaign_id: str, levels: Mapping[str, str]) -> str:
    """Stable id of a cell: a hash of the campaign id and its level ids, in dimension order."""
    key = "\x1f".join([campaign_id, *(levels[d] for d in DIMENSIONS)])
    return "c" + hashlib.sha256(key.encode()).hexdigest()[:15]


def count_cells(spec: CampaignSpec) -> int:
    """Number of cells without building them (for the ``max_cells`` guard)."""
    total = 1
    for d in DIMENSIONS:
        total *= len(spec.levels(d))
    if not spec.exclusions:
        return total
    return sum(1 for _ in _iter_levels(spec))


def _iter_levels(spec: CampaignSpec) -> Iterator[dict[str, str]]:
    ids = [[lvl.id for lvl in spec.levels(d)] for d in DIMENSIONS]
    for combo in itertools.product(*ids):
        levels = dict(zip(DIMENSIONS, combo, strict=True))
        if any(ex.excludes(levels) for ex in spec.exclusions):
            continue
        yield levels


def atomize(spec: CampaignSpec) -> list[Cell]:
    """The campaign's cells: the cartesian product of levels minus exclusions, in a stable order."""
    n = count_cells(spec)
    if n > spec.max_cells:
        raise SpecError(f"the spec makes {n} cells, more than max_cells = {spec.max_cells}",
                        field="max_cells", value=n,
                        fix="raise max_cells, drop levels, or add exclusions")
    cells = []
    for i, levels in enumerate(_iter_levels(spec)):
        cells.append(Cell(cell_id_for(spec.id, levels), spec.id, i, **levels))
    return cells


# --- parsing and validation ------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.errors: list[BadInput] = []

    def add(self, field: str, message: str, value: Any = None, fix: str | None = None) -> None:
        self.errors.append(SpecError(message, field=field, value=value, fix=fix))


def _decimal(raw: Any, field: str, errs: _Collector, *, maximum: Decimal,
             positive: bool = True) -> Decimal | None:
    if isinstance(raw, bool) or raw is None:
        errs.add(field, "must be a decimal amount", raw, 'write it as a string, e.g. "2500.00"')
        return None
    if isinstance(raw, float):
        # TOML floats are binary; re-read through repr keeps what the user wrote for ordinary
        # amounts, but money belongs in strings. Accept, exactly as written.
        raw = repr(raw)
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        errs.add(field, "is not a decimal amount", raw, 'write it as a string, e.g. "2500.00"')
        return None
    if not value.is_finite():
        errs.add(field, "must be a finite amount", raw)
        return None
    if positive and value <= 0:
        errs.add(field, "must be greater than 0", raw, "give a positive amount")
        return None
    if value > maximum:
        errs.add(field, f"is too large (at most {maximum:,} currency units)", raw,
                 f"give an amount of at most {maximum:,}")
        return None
    if value.as_tuple().exponent < -6:  # type: ignore[operator]
        errs.add(field, "has more than 6 decimal places (below one micro)", raw)
        return None
    return value


MIN_FLIGHT_YEAR, MAX_FLIGHT_YEAR = 2000, 2100
"""Flight dates outside these years are typos (and the calendar's edges overflow in UTC)."""


def _datetime(raw: Any, field: str, errs: _Collector) -> datetime | None:
    dt: datetime | None = None
    if isinstance(raw, datetime):
        dt = raw if raw.tzinfo else raw.replace(tzinfo=UTC)
    elif isinstance(raw, date):
        dt = datetime.combine(raw, time(0), tzinfo=UTC)
    elif isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            pass
        else:
            dt = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if dt is None:
        errs.add(field, "is not a date-time", raw, "use RFC 3339, e.g. 2026-12-01T00:00:00Z")
        return None
    try:
        utc = dt.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not MIN_FLIGHT_YEAR <= utc.year <= MAX_FLIGHT_YEAR:
        errs.add(field, f"is outside the years {MIN_FLIGHT_YEAR}-{MAX_FLIGHT_YEAR}", raw,
                 "give the flight's real date, e.g. 2026-12-01T00:00:00Z")
        return None
    return dt


def _str_list(raw: Any, field: str, errs: _Collector) -> tuple[str, ...] | None:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        errs.add(field, "must be a list of strings", raw)
        return None
    return tuple(raw)


def _check_id(raw: Any, field: str, errs: _Collector) -> str | None:
    if not isinstance(raw, str) or not _ID_RE.fullmatch(raw):
        errs.add(field, "is not a valid id", raw,
                 "use 1–64 letters, digits, '_', '-', '.', '+', starting with a letter or digit")
        return None
    return raw


def _known_keys(table: Mapping[str, Any], allowed: set[str], where: str, errs: _Collector) -> None:
    for key in table:
        if key not in allowed:
            errs.add(f"{where}.{key}" if where else key, "is not a known setting", None,
                     f"allowed here: {', '.join(sorted(allowed))}")


def _parse_level(dim: str, i: int, raw: Any, errs: _Collector) -> Level | None:
    where = f"{SPEC_TABLES[dim]}[{i}]"
    if not isinstance(raw, Mapping):
        errs.add(where, "must be a table", raw)
        return None
    lid = _check_id(raw.get("id"), f"{where}.id", errs)
    name = raw.get("name", "")
    if dim == "audience":
        _known_keys(raw, {"id", "name", "zips", "signals"}, where, errs)
        zips = _str_list(raw.get("zips"), f"{where}.zips", errs)
        signals = _str_list(raw.get("signals"), f"{where}.signals", errs)
        if zips is not None:
            if not zips:
                errs.add(f"{where}.zips", "must list at least one ZIP code", None)
            bad = [z for z in zips if not is_real_zip(z)]
            if bad:
                errs.add(f"{where}.zips", f"{len(bad)} invalid US ZIP code(s): "
                         + ", ".join(bad[:10]), None,
                         "use real 5-digit US ZIP codes as strings, e.g. \"10001\"")
            dup = sorted({z for z in zips if zips.count(z) > 1})
            if dup:
                errs.add(f"{where}.zips", "lists a ZIP code twice: " + ", ".join(dup[:10]))
        if lid is None or zips is None or signals is None:
            return None
        return Audience(lid, zips, signals, name)
    if dim == "creative":
        _known_keys(raw, {"id", "name", "type", "duration_s", "click_url"}, where, errs)
        ctype = raw.get("type", "video")
        if ctype not in CREATIVE_TYPES:
            errs.add(f"{where}.type", "is not a creative type", ctype,
                     f"use one of {', '.join(CREATIVE_TYPES)}")
            return None
        dur = raw.get("duration_s")
        if dur is not None and (not isinstance(dur, int) or isinstance(dur, bool) or dur <= 0):
            errs.add(f"{where}.duration_s", "must be a positive whole number of seconds", dur)
            return None
        if lid is None:
            return None
        return Creative(lid, name, ctype, dur, str(raw.get("click_url", "")))
    if dim == "bid_strategy":
        strategy = raw.get("strategy", "CPM")
        if strategy not in BID_STRATEGIES:
            errs.add(f"{where}.strategy", "is not a bidding strategy", strategy,
                     f"use one of {', '.join(BID_STRATEGIES)} (case-sensitive)")
            return None
        cpm = _decimal(raw.get("cpm_bid"), f"{where}.cpm_bid", errs, maximum=MAX_PRICE)
        params = []
        for key, val in sorted(raw.items()):
            if key in {"id", "name", "strategy", "cpm_bid"}:
                continue
            d = _decimal(val, f"{where}.{key}", errs, maximum=MAX_PRICE)
            if d is not None:
                params.append((key, str(d)))
        if lid is None or cpm is None:
            return None
        return BidStrategy(lid, strategy, cpm, tuple(params))
    if dim == "daypart":
        _known_keys(raw, {"id", "name", "hours", "days"}, where, errs)
        hours = raw.get("hours")
        if (not isinstance(hours, list) or not hours
                or not all(isinstance(h, int) and not isinstance(h, bool) and 0 <= h <= 23
                           for h in hours)):
            errs.add(f"{where}.hours",
                     "must be a non-empty list of hours 0–23 (viewer's local time)", hours)
            return None
        if len(set(hours)) != len(hours):
            errs.add(f"{where}.hours", "lists an hour twice", hours)
            return None
        days = raw.get("days", [0, 1, 2, 3, 4, 5, 6])
        if (not isinstance(days, list) or not days
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 6
                           for d in days)):
            errs.add(f"{where}.days", "must be a non-empty list of weekdays 0–6 (0 = Monday)", days)
            return None
        if lid is None:
            return None
        return Daypart(lid, tuple(sorted(hours)), tuple(sorted(set(days))))
    # platform
    _known_keys(raw, {"id", "name", "app_bundles", "device_types"}, where, errs)
    bundles = _str_list(raw.get("app_bundles"), f"{where}.app_bundles", errs)
    dts = raw.get("device_types", [3])
    if not isinstance(dts, list) or not all(isinstance(x, int) for x in dts) or not dts:
        errs.add(f"{where}.device_types", "must be a list of OpenRTB device types (3 = CTV)", dts)
        return None
    if lid is None or bundles is None:
        return None
    return Platform(lid, bundles or (lid,), name, tuple(dts))


TOP_KEYS = {"id", "name", "currency", "objective", "advertiser", "max_cells", "budget", "flight",
            "conversion_value", "exclusions", *SPEC_TABLES.values()}


def parse_spec(data: Mapping[str, Any], source: str = "campaign spec") -> CampaignSpec:
    """Validate a decoded spec; raise ``SpecErrors`` listing every problem found."""
    errs = _Collector()
    _known_keys(data, TOP_KEYS, "", errs)
    cid = _check_id(data.get("id"), "id", errs)
    name = data.get("name") or (cid or "")
    if not isinstance(name, str):
        errs.add("name", "must be a string", name)
    currency = data.get("currency", "USD")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        errs.add("currency", "must be an ISO 4217 code", currency, 'write currency = "USD"')
    elif currency not in CURRENCIES:
        # Beeswax campaigns are in USD (the account's currency cannot be set or changed by
        # campaignd) and the pipeline counts spend in USD (win_price_micros_usd): a ¥600,000
        # budget would go to the DSP as $600,000.
        errs.add("currency", "is not supported: campaignd buys and counts spend in USD only",
                 currency, 'write currency = "USD" (or leave it out) and give every amount in '
                 "US dollars")
    objective = data.get("objective", "conversions")
    if objective not in OBJECTIVES:
        errs.add("objective", "is not a known objective", objective,
                 f"use one of {', '.join(OBJECTIVES)}")

    budget = data.get("budget")
    lifetime = daily = None
    if not isinstance(budget, Mapping):
        errs.add("budget", "is missing", None, 'add [budget] with lifetime = "…" and daily = "…"')
    else:
        _known_keys(budget, {"lifetime", "daily"}, "budget", errs)
        lifetime = _decimal(budget.get("lifetime"), "budget.lifetime", errs, maximum=MAX_BUDGET)
        daily = _decimal(budget.get("daily"), "budget.daily", errs, maximum=MAX_BUDGET)
        if lifetime is not None and daily is not None and daily > lifetime:
            errs.add("budget.daily", f"is larger than budget.lifetime ({lifetime})", str(daily),
                     "lower the daily budget or raise the lifetime budget")

    flight = data.get("flight")
    start = end = None
    if not isinstance(flight, Mapping):
        errs.add("flight", "is missing", None, "add [flight] with start and end date-times")
    else:
        _known_keys(flight, {"start", "end"}, "flight", errs)
        start = _datetime(flight.get("start"), "flight.start", errs)
        end = _datetime(flight.get("end"), "flight.end", errs)
        if start and end and end <= start:
            errs.add("flight.end", "must be after flight.start", str(end))

    levels: dict[str, list[Level]] = {}
    for dim, table in SPEC_TABLES.items():
        raw = data.get(table)
        if not isinstance(raw, list) or not raw:
            errs.add(table, "must list at least one level", None,
                     f"add one or more [[{table}]] tables")
            levels[dim] = []
            continue
        parsed = [_parse_level(dim, i, r, errs) for i, r in enumerate(raw)]
        ok = [p for p in parsed if p is not None]
        seen: set[str] = set()
        for i, lvl in enumerate(ok):
            if lvl.id in seen:
                errs.add(f"{table}[{i}].id", "is a duplicate level id", lvl.id,
                         "give every level of a dimension its own id")
            seen.add(lvl.id)
        levels[dim] = ok

    # Overlapping dayparts would make two cells buy the same viewer hour.
    dps = [d for d in levels.get("daypart", []) if isinstance(d, Daypart)]
    for i, a in enumerate(dps):
        for b in dps[i + 1:]:
            overlap = set(a.hours_of_week()) & set(b.hours_of_week())
            if overlap:
                hours = sorted({h % 24 for h in overlap})
                errs.add("dayparts", f"{a.id!r} and {b.id!r} overlap at local hour(s) "
                         + ", ".join(map(str, hours)), None,
                         "make every daypart cover different hours")

    exclusions: list[Exclusion] = []
    raw_ex = data.get("exclusions", [])
    if not isinstance(raw_ex, list):
        errs.add("exclusions", "must be a list of tables", raw_ex)
        raw_ex = []
    for i, ex in enumerate(raw_ex):
        where = f"exclusions[{i}]"
        if not isinstance(ex, Mapping) or not ex:
            errs.add(where, "must be a table naming at least one dimension", ex)
            continue
        match = []
        for dim, lvl in ex.items():
            if dim not in DIMENSIONS:
                errs.add(f"{where}.{dim}", "is not a dimension", dim,
                         f"use one of {', '.join(DIMENSIONS)}")
                continue
            known = {x.id for x in levels.get(dim, [])}
            if not isinstance(lvl, str):
                errs.add(f"{where}.{dim}", f"must be one {dim} id (a string)", lvl,
                         f"one exclusion names one level per dimension; known: "
                         f"{', '.join(sorted(known)) or '(none)'}")
                continue
            if lvl not in known:
                errs.add(f"{where}.{dim}", f"names an unknown {dim}", lvl,
                         f"known: {', '.join(sorted(known)) or '(none)'}")
                continue
            match.append((dim, lvl))
        if match:
            exclusions.append(Exclusion(tuple(sorted(match))))

    max_cells = data.get("max_cells", DEFAULT_MAX_CELLS)
    if not isinstance(max_cells, int) or isinstance(max_cells, bool) or max_cells <= 0:
        errs.add("max_cells", "must be a positive whole number", max_cells)
        max_cells = DEFAULT_MAX_CELLS

    conv_value = None
    if "conversion_value" in data:
        conv_value = _decimal(data["conversion_value"], "conversion_value", errs,
                              maximum=MAX_PRICE)

    if errs.errors:
        raise SpecErrors(source, errs.errors)
    assert cid and lifetime and daily and start and end
    spec = CampaignSpec(
        id=cid, name=str(name), currency=str(currency), objective=str(objective),
        lifetime_budget=lifetime, daily_budget=daily, flight_start=start, flight_end=end,
        audiences=tuple(levels["audience"]),  # type: ignore[arg-type]
        creatives=tuple(levels["creative"]),  # type: ignore[arg-type]
        bid_strategies=tuple(levels["bid_strategy"]),  # type: ignore[arg-type]
        dayparts=tuple(levels["daypart"]),  # type: ignore[arg-type]
        platforms=tuple(levels["platform"]),  # type: ignore[arg-type]
        exclusions=tuple(exclusions), max_cells=max_cells,
        advertiser=str(data.get("advertiser", "")), conversion_value=conv_value,
    )
    n = count_cells(spec)
    if n == 0:
        raise SpecErrors(source, [SpecError("exclude every cell", field="exclusions",
                                            fix="remove or narrow the exclusion rules")])
    if n > spec.max_cells:
        raise SpecErrors(source, [SpecError(
            f"the spec makes {n} cells, more than max_cells = {spec.max_cells}",
            field="max_cells", value=n, fix="raise max_cells, drop levels, or add exclusions")])
    return spec


def load_spec(path: str | Path) -> CampaignSpec:
    """Read and validate a campaign spec file (TOML)."""
    data = read_toml(path, field="SPEC", kind="a campaign spec TOML file, e.g. "
                     "config/campaigns/madhive_12345.toml")
    return parse_spec(data, source=str(path))


def spec_summary(spec: CampaignSpec, cells: Sequence[Cell]) -> dict[str, Any]:
    """The stable JSON shape printed by ``campaignd campaign plan --json``."""
    return {"campaign_id": spec.id, "cells": len(cells), "dimensions": spec.dimension_counts()}


def cell_dict(cell: Cell) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "index": cell.index, **cell.levels(),
            "alternative_id": cell.alternative_id}


__all__ = [
    "CURRENCIES", "DIMENSIONS", "MAX_BUDGET", "MAX_PRICE", "OBJECTIVES", "SPEC_TABLES", "Audience",
    "BidStrategy", "CampaignSpec", "Cell",
    "Creative", "Daypart", "Exclusion", "Platform", "atomize", "cell_dict", "cell_id_for",
    "count_cells", "from_micros", "load_spec", "parse_spec", "spec_summary", "to_micros",
]

