"""Beeswax v2 wire formats ↔ campaignd values: decimal strings ↔ micros, DRF error bodies,
targeting expressions ↔ ``Targeting``. Pure functions; used only by the adapter
(``beeswax.py``, ``beeswax_session.py``) and its contract tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from campaignd.dsp.base import Targeting
from campaignd.errors import DSPTransientError

MICROS = 1_000_000
MAX_AMOUNT = Decimal(10) ** 12
"""No budget or spend is a trillion currency units: larger values are corrupt."""


def micros_to_decimal(micros: int) -> str:
    """Integer micros → the decimal string Beeswax v2 accepts (exact, no float)."""
    return format(Decimal(micros).scaleb(-6).normalize(), "f") if micros else "0"


def decimal_to_micros(value: Any) -> int:
    """A v2 decimal (string, or a number from a lenient endpoint) → integer micros."""
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise DSPTransientError(f"Beeswax returned a non-decimal amount {value!r}") from None
    if not d.is_finite() or abs(d) > MAX_AMOUNT:
        raise DSPTransientError(f"Beeswax returned an impossible amount {value!r}")
    return int((d * MICROS).to_integral_value(rounding=ROUND_HALF_EVEN))


def flatten_errors(body: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested 400 body → ``{"spend_budget.lifetime": ["A valid number is required."]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(body, dict):
        for key, value in body.items():
            out.update(flatten_errors(value, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(body, list) and all(isinstance(x, str) for x in body):
        out[prefix or "non_field_errors"] = list(body)
    elif isinstance(body, list):
        for i, value in enumerate(body):
            out.update(flatten_errors(value, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix or "non_field_errors"] = [str(body)]
    return out


def _eq(values: Sequence[Any]) -> dict[str, Any]:
    return {"any": [{"comparator": "equals", "value": v} for v in values]}


def targeting_modules(t: Targeting) -> dict[str, Any]:
    """``Targeting`` → v2 ``modules`` (values ORed within a key; modules ANDed)."""
    t = t.normalized()
    modules: dict[str, Any] = {}
    if t.zips:
        modules["geo"] = {"all": {"zip": _eq(t.zips)}}
    if t.segments:
        modules["user"] = {"all": {"segment": _eq(t.segments)}}
    if t.device_types:
        modules["platform"] = {"all": {"device_type": _eq(t.device_types)}}
    if t.app_bundles:
        modules["app_site"] = {"all": {"app_bundle": _eq(t.app_bundles)}}
    if t.hours_of_week:
        # [INFER] Beeswax's v2 daypart encoding is not public: a ``time`` module with
        # ``user_time_of_week`` hour-of-week buckets (0 = Sunday 00h, viewer local time).
        modules["time"] = {"all": {"user_time_of_week": _eq(t.hours_of_week)}}
    return modules


def targeting_from_modules(modules: Mapping[str, Any] | None) -> Targeting:
    """v2 ``modules`` → ``Targeting`` (``equals`` terms only; other comparators are ignored)."""

    def values(module: str, key: str) -> tuple[Any, ...]:
        found: list[Any] = []
        for block in (modules or {}).get(module, {}).values():
            for terms in (block.get(key) or {}).values():
                found.extend(t["value"] for t in terms
                             if t.get("comparator", "equals") == "equals")
        return tuple(found)

    return Targeting(
        zips=tuple(str(v) for v in values("geo", "zip")),
        segments=tuple(str(v) for v in values("user", "segment")),
        hours_of_week=tuple(int(v) for v in values("time", "user_time_of_week")),
        app_bundles=tuple(str(v) for v in values("app_site", "app_bundle")),
        device_types=tuple(int(v) for v in values("platform", "device_type")),
    ).normalized()


def targeting_key(t: Targeting) -> str:
    canonical = json.dumps(targeting_modules(t), sort_keys=True, separators=(",", ":"))
    return "campaignd-te:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
