"""The sandbox's Beeswax v2 objects: field validation, business rules, filters, pagination.

Django-REST-Framework semantics, as Beeswax v2 shows them (reference §2-§4): objects are JSON
dicts with ``id``, ``account_id``, ``create_date``, ``update_date``; decimals are returned as
strings; dates are ``YYYY-MM-DD HH:MM:SS`` in the account's time zone; 400 bodies are keyed by
field path (``{"spend_budget": {"lifetime": ["A valid number is required."]}}``); list filters are
``field=``, ``field__in=``, ``__gte/__gt/__lte/__lt``, ``__not``, ``__isempty``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

MICROS = 1_000_000
REQUIRED = "This field is required."
NOT_NULL = "This field may not be null."


class ValidationFailed(Exception):
    """A 400: ``errors`` is the DRF-style field-keyed body."""

    def __init__(self, errors: Mapping[str, Any]) -> None:
        super().__init__(str(errors))
        self.errors = dict(errors)


class FieldError(Exception):
    def __init__(self, detail: list[str] | dict[str, Any]) -> None:
        super().__init__(str(detail))
        self.detail = detail


class ObjectNotFound(Exception):
    """A 404 ``{"detail": "Not found."}``."""


# --- scalar parsers ----------------------------------------------------------------------------


def decimal_to_micros(raw: Any) -> int:
    """A DRF DecimalField value (string or number) → micros; FieldError when not a number."""
    if isinstance(raw, bool) or raw is None or isinstance(raw, (dict, list)):
        raise FieldError(["A valid number is required."])
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise FieldError(["A valid number is required."]) from None
    if not value.is_finite():
        raise FieldError(["A valid number is required."])
    if value < 0:
        raise FieldError(["Ensure this value is greater than or equal to 0."])
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -6:
        raise FieldError(["Ensure that there are no more than 6 decimal places."])
    return int(value * MICROS)


def micros_to_decimal_str(micros: int) -> str:
    """Micros → Beeswax's decimal string: two places, more only when needed."""
    d = (Decimal(micros) / MICROS).quantize(Decimal("0.000001"))
    if micros % 10_000 == 0:
        return str(d.quantize(Decimal("0.01")))
    return format(d.normalize(), "f")


def parse_int(raw: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(raw, bool):
        raise FieldError(["A valid integer is required."])
    try:
        value = int(raw)
        if isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError):
        raise FieldError(["A valid integer is required."]) from None
    if lo is not None and value < lo:
        raise FieldError([f"Ensure this value is greater than or equal to {lo}."])
    if hi is not None and value > hi:
        raise FieldError([f"Ensure this value is less than or equal to {hi}."])
    return value


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if raw in ("true", "True", "1", 1):
        return True
    if raw in ("false", "False", "0", 0):
        return False
    raise FieldError(["Must be a valid boolean."])


def parse_str(raw: Any, *, max_length: int = 255, allow_blank: bool = True) -> str:
    if not isinstance(raw, str):
        raise FieldError(["Not a valid string."])
    if not allow_blank and not raw.strip():
        raise FieldError(["This field may not be blank."])
    if len(raw) > max_length:
        raise FieldError([f"Ensure this field has no more than {max_length} characters."])
    return raw


def parse_choice(raw: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(raw, str) or raw not in choices:
        raise FieldError([f'"{raw}" is not a valid choice.'])
    return raw


_DT_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T")


class Dates:
    """Account-time-zone date handling (Beeswax: all API dates are in the account's zone)."""

    def __init__(self, tz: str) -> None:
        self.tz = ZoneInfo(tz)

    def parse(self, raw: Any) -> datetime:
        """A request date → aware UTC. Naive strings are in the account's zone; ISO 8601 with
        ``Z``/offset is honoured."""
        if not isinstance(raw, str):
            raise FieldError(["Datetime has wrong format. Use one of these formats instead: "
                              "YYYY-MM-DD hh:mm:ss."])
        text = raw.strip()
        if _ISO_RE.match(text):
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                dt = None
            if dt is not None:
                if dt.tzinfo is None:
                    dt = dt.replace(tzinfo=self.tz)
                return dt.astimezone(UTC)
        for fmt in _DT_FORMATS:
            try:
                return datetime.strptime(text, fmt).replace(tzinfo=self.tz).astimezone(UTC)
            except ValueError:
                continue
        raise FieldError(["Datetime has wrong format. Use one of these formats instead: "
                          "YYYY-MM-DD hh:mm:ss."])

    def render(self, dt: datetime) -> str:
        return dt.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def from_record(self, text: str | None) -> datetime | None:
        if text is None:
            return None
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=self.tz).astimezone(UTC)


# --- resource definitions ---------------------------------------------------------------------

Parser = Callable[[Any, "Context"], Any]


@dataclass(frozen=True, slots=True)
class FieldDef:
    name: str
    parse: Parser
    required: bool = False
    nullable: bool = True
    default: Any = None
    immutable: bool = False


@dataclass(slots=True)
class Context:
    store: EntityStore
    existing: dict[str, Any] | None


def _s(max_length: int = 255, allow_blank: bool = True) -> Parser:
    return lambda raw, ctx: parse_str(raw, max_length=max_length, allow_blank=allow_blank)


def _b(raw: Any, ctx: Context) -> bool:
    return parse_bool(raw)


def _choice(*choices: str) -> Parser:
    return lambda raw, ctx: parse_choice(raw, choices)


def _fk(resource: str) -> Parser:
    def parse(raw: Any, ctx: Context) -> int:
        pk = parse_int(raw)
        if pk not in ctx.store.table(resource):
            raise FieldError([f'Invalid pk "{raw}" - object does not exist.'])
        return pk
    return parse


def _date(raw: Any, ctx: Context) -> str:
    return ctx.store.dates.render(ctx.store.dates.parse(raw))


def _money(raw: Any, ctx: Context) -> str:
    return micros_to_decimal_str(decimal_to_micros(raw))


def _spend_budget(raw: Any, ctx: Context) -> dict[str, Any]:
    # Beeswax: "All fields … are mandatory", so PATCH must send both keys too.
    if not isinstance(raw, dict):
        raise FieldError(["Invalid data. Expected a dictionary."])
    errors: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for key in ("lifetime", "daily"):
        if key not in raw:
            errors[key] = [REQUIRED]
            continue
        if raw[key] is None:
            if key == "lifetime":
                errors[key] = [NOT_NULL]
            else:
                out[key] = None
            continue
        try:
            out[key] = _money(raw[key], ctx)
        except FieldError as exc:
            errors[key] = exc.detail
    if "include_fees" in raw:
        out["include_fees"] = bool(raw["include_fees"])
    if errors:
        raise FieldError(errors)
    return out


BID_STRATEGIES = ("CPM", "CPC", "VCR", "CPA", "CPM_PACED", "CPC_PACED", "VCR_PACED",
                  "CPA_PACED")
PACING = ("daily", "flight", "lifetime", "none")


def _bidding(raw: Any, ctx: Context) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise FieldError(["Invalid data. Expected a dictionary."])
    errors: dict[str, Any] = {}
    out = dict(raw)
    try:
        out["strategy"] = parse_choice(raw.get("strategy"), BID_STRATEGIES)
    except FieldError as exc:
        errors["strategy"] = [REQUIRED] if "strategy" not in raw else exc.detail
    pacing = raw.get("pacing", "lifetime")
    if pacing is not None:
        try:
            out["pacing"] = parse_choice(pacing, PACING)
        except FieldError as exc:
            errors["pacing"] = exc.detail
    values = raw.get("values", {})
    if not isinstance(values, dict):
        errors["values"] = ["Invalid data. Expected a dictionary."]
    else:
        out_values = dict(values)
        for key, val in values.items():
            if key.endswith("_bid") or key.endswith("_goal"):
                try:
                    out_values[key] = _money(val, ctx)
                except FieldError as exc:
                    errors.setdefault("values", {})[key] = exc.detail
        out["values"] = out_values
    if errors:
        raise FieldError(errors)
    return out


def _str_list(raw: Any, ctx: Context) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise FieldError(['Expected a list of items.'])
    return list(raw)


def _weighting(raw: Any, ctx: Context) -> int:
    return parse_int(raw, lo=1, hi=100)


def _modules(raw: Any, ctx: Context) -> dict[str, Any]:
    from campaignd.dsp.sandbox.targeting import validate_modules

    return validate_modules(raw)


COMMON = (
    FieldDef("alternative_id", _s(191)),
    FieldDef("notes", _s(255)),
)
CURRENCY = FieldDef("currency", _choice("USD", "EUR", "GBP", "CAD"), nullable=False,
                    default="USD", immutable=True)
TYPES = ("banner", "video", "native", "audio")
BUDGET_TYPES = ("spend", "impressions", "spend including vendor fees")

RESOURCES: dict[str, tuple[FieldDef, ...]] = {
    "advertisers": (
        FieldDef("name", _s(255, allow_blank=False), required=True, nullable=False),
        FieldDef("active", _b, nullable=False, default=True),
        CURRENCY,
        *COMMON,
    ),
    "campaigns": (
        FieldDef("advertiser_id", _fk("advertisers"), required=True, nullable=False,
                 immutable=True),
        FieldDef("name", _s(255, allow_blank=False), required=True, nullable=False),
        FieldDef("active", _b, nullable=False, default=False),
        FieldDef("budget_type", _choice(*BUDGET_TYPES), nullable=False, default="spend"),
        FieldDef("spend_budget", _spend_budget, required=True),
        FieldDef("start_date", _date, required=True, nullable=False),
        FieldDef("end_date", _date),
        CURRENCY,
        *COMMON,
    ),
    "creatives": (
        FieldDef("advertiser_id", _fk("advertisers"), required=True, nullable=False,
                 immutable=True),
        FieldDef("name", _s(255, allow_blank=False), required=True, nullable=False),
        FieldDef("type", _choice(*TYPES), required=True, nullable=False, immutable=True),
        FieldDef("active", _b, nullable=False, default=True),
        FieldDef("click_url", _s(2048)),
        FieldDef("duration", lambda raw, ctx: parse_int(raw, lo=0)),
        *COMMON,
    ),
    "line-items": (
        FieldDef("campaign_id", _fk("campaigns"), required=True, nullable=False,
                 immutable=True),
        FieldDef("name", _s(255, allow_blank=False), required=True, nullable=False),
        FieldDef("type", _choice(*TYPES), required=True, nullable=False, immutable=True),
        FieldDef("active", _b, nullable=False, default=False),
        FieldDef("budget_type", _choice(*BUDGET_TYPES), nullable=False, default="spend"),
        FieldDef("spend_budget", _spend_budget, required=True),
        FieldDef("bidding", _bidding, required=True, nullable=False),
        FieldDef("start_date", _date, required=True, nullable=False),
        FieldDef("end_date", _date),
        FieldDef("targeting_expression_id", _fk("targeting-expressions")),
        FieldDef("creative_weighting_method", _choice("RANDOM", "WEIGHTED"), nullable=False,
                 default="RANDOM"),
        FieldDef("user_timezones", _str_list),
        FieldDef("guaranteed", _b, nullable=False, default=False),
        CURRENCY,
        *COMMON,
    ),
    "targeting-expressions": (
        FieldDef("name", _s(255)),
        FieldDef("active", _b, nullable=False, default=True),
        FieldDef("modules", _modules, required=True, nullable=False),
        *COMMON,
    ),
    "line-item-creatives": (
        FieldDef("creative_id", _fk("creatives"), required=True, nullable=False,
                 immutable=True),
        FieldDef("weighting", _weighting),
        FieldDef("active", _b, nullable=False, default=True),
        FieldDef("start_date", _date),
        FieldDef("end_date", _date),
    ),
}

READ_ONLY_DEFAULTS: dict[str, dict[str, Any]] = {
    "campaigns": {"spend": "0.00", "impressions": 0},
    "line-items": {"spend": "0.00", "impressions": 0, "advertiser_id": None},
}


class EntityStore:
    """Every object of one sandbox account, as the JSON Beeswax returns."""

    def __init__(self, *, account_id: int = 1, timezone: str = "America/New_York",
                 now: Callable[[], datetime]) -> None:
        self.account_id = account_id
        self.dates = Dates(timezone)
        self._now = now
        self._tables: dict[str, dict[int, dict[str, Any]]] = {r: {} for r in RESOURCES}
        self._next_id: dict[str, int] = dict.fromkeys(RESOURCES, 1)

    def table(self, resource: str) -> dict[int, dict[str, Any]]:
        return self._tables[resource]

    def get(self, resource: str, pk: int) -> dict[str, Any]:
        try:
            return self._tables[resource][pk]
        except KeyError:
            raise ObjectNotFound(resource) from None

    def clean(self, resource: str, data: Any, *, existing: dict[str, Any] | None,
              partial: bool) -> dict[str, Any]:
        """Validate ``data`` field by field; return the cleaned values (raise ValidationFailed)."""
        if not isinstance(data, dict):
            raise ValidationFailed({"non_field_errors": [
                "Invalid data. Expected a dictionary, but got " + type(data).__name__ + "."]})
        ctx = Context(self, existing)
        errors: dict[str, Any] = {}
        out: dict[str, Any] = {}
        for fd in RESOURCES[resource]:
            if fd.name not in data:
                if not partial:
                    if fd.required:
                        errors[fd.name] = [REQUIRED]
                    elif existing is None:
                        out[fd.name] = fd.default
                continue
            raw = data[fd.name]
            if raw is None:
                if not fd.nullable or fd.required:
                    errors[fd.name] = [NOT_NULL]
                else:
                    out[fd.name] = None
                continue
            try:
                value = fd.parse(raw, ctx)
            except FieldError as exc:
                errors[fd.name] = exc.detail
                continue
            if fd.immutable and existing is not None and existing.get(fd.name) != value:
                errors[fd.name] = ["This field cannot be changed once set."]
                continue
            out[fd.name] = value
        if errors:
            raise ValidationFailed(errors)
        return out

    def insert(self, resource: str, values: dict[str, Any],
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        pk = self._next_id[resource]
        self._next_id[resource] = pk + 1
        stamp = self.dates.render(self._now())
        record: dict[str, Any] = {"id": pk, **READ_ONLY_DEFAULTS.get(resource, {}), **values,
                                  **(extra or {}), "account_id": self.account_id,
                                  "create_date": stamp, "update_date": stamp}
        self._tables[resource][pk] = record
        return record

    def update(self, resource: str, pk: int, values: Mapping[str, Any]) -> dict[str, Any]:
        record = self.get(resource, pk)
        record.update(values)
        record["update_date"] = self.dates.render(self._now())
        return record

    def delete(self, resource: str, pk: int) -> dict[str, Any]:
        self.get(resource, pk)
        return self._tables[resource].pop(pk)


# --- list filters and pagination ---------------------------------------------------------------

_RESERVED = {"page", "page_size", "ordering", "all_accounts", "format"}
_OPS = ("in", "gte", "gt", "lte", "lt", "not", "isempty", "range")


def _coerce(record_value: Any, raw: str) -> tuple[Any, Any]:
    """Values to compare: the record's and the query's, in a common type."""
    if isinstance(record_value, bool):
        return record_value, raw.lower() in ("true", "1")
    if isinstance(record_value, int):
        try:
            return record_value, int(raw)
        except ValueError:
            return str(record_value), raw
    if isinstance(record_value, str):
        try:
            return Decimal(record_value), Decimal(raw)
        except (InvalidOperation, ValueError):
            return record_value, raw
    return record_value, raw


def _match(record: Mapping[str, Any], field_name: str, op: str, raw: str) -> bool:
    value = record.get(field_name)
    if op == "isempty":
        empty = value in (None, "", [], {})
        return empty == (raw.lower() in ("true", "1"))
    if op == "in":
        return any(_match(record, field_name, "eq", part) for part in raw.split(",") if part)
    if op == "range":
        lo, _, hi = raw.partition(",")
        return _match(record, field_name, "gte", lo) and _match(record, field_name, "lte", hi)
    if value is None:
        return op == "not" and raw.lower() not in ("null", "none")
    left, right = _coerce(value, raw)
    try:
        if op == "eq":
            return bool(left == right)
        if op == "not":
            return bool(left != right)
        if op == "gte":
            return bool(left >= right)
        if op == "gt":
            return bool(left > right)
        if op == "lte":
            return bool(left <= right)
        if op == "lt":
            return bool(left < right)
    except TypeError:
        return False
    return True


def filter_records(records: list[dict[str, Any]],
                   params: Mapping[str, str]) -> list[dict[str, Any]]:
    """Apply v2 query filters; unknown fields are ignored (as DRF filter sets do)."""
    out = records
    for key, raw in params.items():
        if key in _RESERVED:
            continue
        name, sep, op = key.rpartition("__")
        if not sep or op not in _OPS:
            name, op = key, "eq"
        if out and name not in out[0]:
            continue
        out = [r for r in out if _match(r, name, op, raw)]
    return out


def paginate(records: list[dict[str, Any]], params: Mapping[str, str],
             url_for_page: Callable[[int], str]) -> dict[str, Any]:
    """DRF PageNumberPagination: ``count/next/previous/results`` (page_size default 50)."""
    try:
        page = int(params.get("page", "1"))
        size = int(params.get("page_size", "50"))
    except ValueError:
        raise ObjectNotFound("Invalid page.") from None
    size = max(1, min(size, 1000))
    pages = max(1, -(-len(records) // size))
    if page < 1 or page > pages:
        raise ObjectNotFound("Invalid page.")
    start = (page - 1) * size
    return {
        "count": len(records),
        "next": url_for_page(page + 1) if page < pages else None,
        "previous": url_for_page(page - 1) if page > 1 else None,
        "results": records[start:start + size],
    }
