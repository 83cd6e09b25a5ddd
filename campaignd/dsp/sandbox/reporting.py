"""Report Builder in the sandbox: ``POST /rest/v2/reporting/run-query`` →
``{"task_id"}``; ``GET /rest/v2/reporting/async-results/{task_id}`` → 204 while "running" (a
configurable number of polls), then 200 with the CSV (reference §5).

Only the ``performance_agg`` view is served, from the market's lifetime totals. Field names
``campaign_id, campaign_name, line_item_id, line_item_name, spend, impression, clicks`` are
Beeswax's; ``conversions, conversion_value, video_completes, viewable_impressions,
measurable_impressions, line_item_alt_id`` are [INFER].
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from campaignd.dsp.sandbox.entities import ValidationFailed, micros_to_decimal_str

VIEWS = ("performance_agg",)
DIMENSIONS = ("account_id", "advertiser_id", "campaign_id", "campaign_name", "line_item_id",
              "line_item_name", "line_item_alt_id")
METRICS: dict[str, tuple[str, bool]] = {
    # report field → (market total, is money)
    "spend": ("spend_micros", True),
    "impression": ("impressions", False),
    "clicks": ("clicks", False),
    "conversions": ("conversions", False),
    "conversion_value": ("conversion_value_micros", True),
    "video_completes": ("completes", False),
    "viewable_impressions": ("viewable", False),
    "measurable_impressions": ("measurable", False),
}
FILTERABLE = ("account_id", "advertiser_id", "campaign_id", "line_item_id")
MAX_LIMIT = 30_000


@dataclass(slots=True)
class ReportTask:
    polls_left: int
    body: str
    media_type: str


def validate_query(body: Any) -> tuple[list[str], dict[str, set[str]], int, str]:
    if not isinstance(body, dict):
        raise ValidationFailed({"non_field_errors": ["Invalid data. Expected a dictionary."]})
    errors: dict[str, Any] = {}
    view = body.get("view")
    if view is None:
        errors["view"] = ["This field is required."]
    elif view not in VIEWS:
        errors["view"] = [f'"{view}" is not a valid choice.']
    fields = body.get("fields")
    if not isinstance(fields, list) or not fields:
        errors["fields"] = ["This field is required."]
    else:
        bad = [f for f in fields if f not in DIMENSIONS and f not in METRICS]
        if bad:
            errors["fields"] = [f'"{f}" is not a valid field of this view.' for f in bad]
    filters: dict[str, set[str]] = {}
    raw_filters = body.get("filters") or {}
    if not isinstance(raw_filters, dict):
        errors["filters"] = ["Invalid data. Expected a dictionary."]
    else:
        for key, value in raw_filters.items():
            if key in ("bid_day", "bid_hour", "account_id_filter"):
                continue  # the sandbox's totals are lifetime: date filters are accepted, unused
            if key not in FILTERABLE:
                errors.setdefault("filters", {})[key] = [f'"{key}" is not a valid filter.']
                continue
            filters[key] = {part.strip() for part in str(value).split(",") if part.strip()}
    limit = body.get("limit", MAX_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        errors["limit"] = [f"Ensure this value is between 1 and {MAX_LIMIT}."]
    fmt = body.get("result_format", "csv")
    if fmt not in ("csv", "json"):
        errors["result_format"] = [f'"{fmt}" is not a valid choice.']
    if errors:
        raise ValidationFailed(errors)
    return [str(f) for f in fields or ()], filters, int(limit), str(fmt)


def build_rows(fields: list[str], filters: Mapping[str, set[str]], limit: int,
               line_items: list[dict[str, Any]], campaigns: Mapping[int, dict[str, Any]],
               delivered: Mapping[int, Mapping[str, int]]) -> list[dict[str, str]]:
    dims = [f for f in fields if f in DIMENSIONS]
    groups: dict[tuple[str, ...], dict[str, int]] = {}
    for li in line_items:
        campaign = campaigns.get(li["campaign_id"], {})
        values = {
            "account_id": str(li["account_id"]),
            "advertiser_id": str(li.get("advertiser_id")),
            "campaign_id": str(li["campaign_id"]),
            "campaign_name": str(campaign.get("name", "")),
            "line_item_id": str(li["id"]),
            "line_item_name": li["name"],
            "line_item_alt_id": li.get("alternative_id") or "",
        }
        if any(values[k] not in allowed for k, allowed in filters.items()):
            continue
        key = tuple(values[d] for d in dims)
        totals = groups.setdefault(key, dict.fromkeys(METRICS, 0))
        got = delivered.get(li["id"], {})
        for name, (total, _) in METRICS.items():
            totals[name] += int(got.get(total, 0))
    rows = []
    for key, totals in groups.items():
        row: dict[str, str] = dict(zip(dims, key, strict=True))
        for f in fields:
            if f in METRICS:
                row[f] = (micros_to_decimal_str(totals[f]) if METRICS[f][1]
                          else str(totals[f]))
        rows.append({f: row[f] for f in fields})
    return rows[:limit]


def render(rows: list[dict[str, str]], fields: list[str], fmt: str) -> tuple[str, str]:
    if fmt == "json":
        import json

        return json.dumps(rows), "application/json"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue(), "text/csv"


def new_task_id() -> str:
    return uuid.uuid4().hex
