"""v2 targeting expressions in the sandbox: validation and translation for the market.

Shape (reference §3.4): ``{"modules": {<module>: {"all"|"any": {<key>: {"any"|"all":
[{"comparator": "equals", "value": ...}]}}}}}``. Values within a key are ORed; keys combine by the
module block (``all`` = AND, ``any`` = OR); modules are ANDed. Errors are keyed
``modules.<module>.<all|any>.<key>``.

The ``time`` module's ``user_time_of_week`` key with hour-of-week integers (0 = Sunday 00h …
167) is [INFER]: Beeswax's exact v2 daypart encoding is not public.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from campaignd.dsp.sandbox.entities import FieldError


def _zip(v: Any) -> str:
    if not isinstance(v, str):
        raise FieldError(["Postal code should be passed as a string."])
    if not re.fullmatch(r"\d{5}", v):
        raise FieldError([f'"{v}" is not a valid postal code.'])
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise FieldError(["Not a valid string."])
    return v


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise FieldError(["A valid integer is required."])
        if not lo <= v <= hi:
            raise FieldError([f'"{v}" is not a valid choice.'])
        return v
    return check


KEYS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "geo": {"zip": _zip, "country": _str, "region": _str, "metro": _str, "city": _str},
    "user": {"segment": _str},
    "platform": {"device_type": _int_range(1, 8), "os": _str, "browser": _str},
    "app_site": {"app_bundle": _str, "app_bundle_list": _int_range(1, 2**31),
                 "deal_id": _str, "domain": _str, "environment_type": _str},
    "time": {"user_time_of_week": _int_range(0, 167), "time_of_week": _int_range(0, 167)},
    "content": {"content_category": _str, "language": _str, "content_rating": _str},
    "exchange": {"inventory_source": _str},
}
COMPARATORS = ("equals", "not_equals", "boolean_expression", "contains", "starts_with")


def _validate_key(module: str, key: str, body: Any) -> list[str] | dict[str, Any] | None:
    if not isinstance(body, dict) or not body or set(body) - {"any", "all"}:
        return ['Expected {"any": [...]} or {"all": [...]}.']
    check = KEYS[module][key]
    for terms in body.values():
        if not isinstance(terms, list) or not terms:
            return ["Expected a non-empty list of terms."]
        for term in terms:
            if not isinstance(term, dict) or "value" not in term:
                return ['Each term needs "comparator" and "value".']
            comparator = term.get("comparator", "equals")
            if comparator not in COMPARATORS:
                return [f'"{comparator}" is not a valid choice.']
            if comparator == "boolean_expression":
                if key != "segment" or not isinstance(term["value"], str):
                    return ["boolean_expression is only valid for user.segment strings."]
                continue
            try:
                check(term["value"])
            except FieldError as exc:
                return exc.detail
    return None


def validate_modules(raw: Any) -> dict[str, Any]:
    """Validate a ``modules`` object; raise FieldError with the nested error body."""
    if not isinstance(raw, dict):
        raise FieldError(["Invalid data. Expected a dictionary."])
    errors: dict[str, Any] = {}
    for module, blocks in raw.items():
        if module not in KEYS:
            errors[module] = [f'"{module}" is not a valid choice.']
            continue
        if not isinstance(blocks, dict) or set(blocks) - {"all", "any"}:
            errors[module] = ['Expected {"all": {...}} and/or {"any": {...}}.']
            continue
        for block, keys in blocks.items():
            if not isinstance(keys, dict):
                errors.setdefault(module, {})[block] = ["Invalid data. Expected a dictionary."]
                continue
            for key, body in keys.items():
                if key not in KEYS[module]:
                    problem: Any = [f'"{key}" is not a valid choice.']
                else:
                    problem = _validate_key(module, key, body)
                if problem:
                    errors.setdefault(module, {}).setdefault(block, {})[key] = problem
    if errors:
        raise FieldError(errors)
    return raw


_SEGMENT_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def _segments_from_expression(expr: str) -> list[str]:
    """Positive segment ids of a boolean expression (``(a OR b) AND NOT c`` → a, b)."""
    out: list[str] = []
    negate = False
    for tok in _SEGMENT_TOKEN.findall(expr):
        upper = tok.upper()
        if upper == "NOT":
            negate = True
        elif upper in ("AND", "OR", "(", ")"):
            continue
        else:
            if not negate:
                out.append(tok)
            negate = False
    return out


def included_values(modules: dict[str, Any] | None, module: str, key: str) -> frozenset[Any] | None:
    """The ``equals`` values of ``module.key`` (any block), or None when the key is absent."""
    if not modules or module not in modules:
        return None
    found: set[Any] | None = None
    for keys in modules[module].values():
        body = keys.get(key)
        if body is None:
            continue
        found = found if found is not None else set()
        for terms in body.values():
            for term in terms:
                comparator = term.get("comparator", "equals")
                if comparator == "equals":
                    found.add(term["value"])
                elif comparator == "boolean_expression":
                    found.update(_segments_from_expression(term["value"]))
    return frozenset(found) if found is not None else None
