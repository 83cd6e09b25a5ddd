"""BeeswaxAdapter: campaignd's production DSP client for the Beeswax ("Buzz") v2 REST API.

Everything Beeswax-shaped stays in the ``beeswax*`` modules: JSON bodies, decimal strings,
account-time-zone dates, DRF pagination and error bodies are turned into ``campaignd.dsp.base``
values and ``campaignd.errors`` DSP errors there, once. This module holds the adapter itself:
its construction, the resource operations (advertisers, campaigns, creatives, line items and
their creative associations, targeting expressions, events, reports), the record ↔ value
mapping (dates in the account time zone) and health. The HTTP session it is built on —
authentication, retries, rate limiting, the circuit breaker, error mapping, pagination and
idempotent creates — is ``BeeswaxSession`` in ``campaignd.dsp.beeswax_session``; wire-format
conversions are in ``campaignd.dsp.beeswax_codec``.

Objects and reads (reference §1, §4):

- creates are idempotent: objects carry the caller's deterministic ``alternative_id`` and the
  adapter looks them up (``GET …?alternative_id=``) before creating and before retrying a create
  whose response was lost. v2 has no documented ``line-items/bulk``, so bulk creation loops with
  bounded concurrency;
- list reads follow DRF pagination (``next``) and batch ``id__in`` by 40.

Targeting expressions are content-addressed: each distinct ``Targeting`` becomes one expression
whose ``alternative_id`` is a hash of its content, shared by every line item with that targeting
and never edited; ``update_targeting`` points the line item at another expression.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import anyio
import httpx
import structlog

from campaignd.clock import Clock, SystemClock
from campaignd.dsp.base import (
    AdapterHealth,
    Advertiser,
    Campaign,
    Creative,
    CreativeSpec,
    DSPAdapter,
    EventBatch,
    LineItem,
    LineItemSpec,
    Targeting,
)
from campaignd.dsp.beeswax_codec import (
    decimal_to_micros,
    micros_to_decimal,
    targeting_from_modules,
    targeting_key,
    targeting_modules,
)
from campaignd.dsp.beeswax_session import BeeswaxSession
from campaignd.dsp.resilience import CircuitBreaker, Sleep, TokenBucket
from campaignd.errors import DSPError, DSPRejected, DSPTransientError

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

ID_BATCH = 40


class BeeswaxAdapter(BeeswaxSession, DSPAdapter):
    """Beeswax v2 over httpx. Give it ``client`` (the transport seam; not closed by
    ``aclose``) or ``base_url`` (e.g. ``https://<buzz_key>.api.beeswax.com``)."""

    def __init__(self, *, email: str, password: Any, base_url: str | None = None,
                 client: httpx.AsyncClient | None = None,
                 rate_limit_per_s: float | None = 20.0, rate_burst: int = 20,
                 max_attempts: int = 6, backoff_base_s: float = 0.5,
                 backoff_cap_s: float = 30.0, breaker_threshold: int = 10,
                 breaker_cooldown_s: float = 30.0, timeout_s: float = 30.0,
                 concurrency: int = 8, page_size: int = 50,
                 report_poll_interval_s: float = 2.0,
                 account_timezone: str = "America/New_York",
                 events_path: str = "/sandbox/log-stream",
                 sleep: Sleep | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        if client is None and base_url is None:
            raise ValueError("BeeswaxAdapter needs base_url or client")
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        base = base_url if base_url is not None else str(self._client.base_url)
        self._root = base.rstrip("/")
        self._api = self._root + "/rest/v2"
        self._email = email
        # pydantic SecretStr or str; the value is only read to build the auth body.
        self._password = password
        self._timeout = timeout_s
        self._clock: Clock = clock or SystemClock()
        self._sleep: Sleep = sleep or anyio.sleep
        self._rng = rng or random.Random()
        self._limiter = TokenBucket(rate_limit_per_s, rate_burst)
        self._breaker = CircuitBreaker(breaker_threshold, breaker_cooldown_s,
                                       self._clock.monotonic)
        self._max_attempts = max(1, max_attempts)
        self._backoff_base = backoff_base_s
        self._backoff_cap = backoff_cap_s
        self._concurrency = max(1, concurrency)
        self._page_size = page_size
        self._poll_interval = report_poll_interval_s
        self._tz = ZoneInfo(account_timezone)
        self._events_path = events_path
        self._auth_lock = anyio.Lock()
        self._auth_generation = 0
        self._authenticated = False
        self._te_ids: dict[str, int] = {}
        self._te_locks: dict[str, anyio.Lock] = {}
        self.requests = 0
        self.retries = 0
        self.rate_limited = 0
        self.reauthentications = 0
        self._last_error: str | None = None
        self._last_success: datetime | None = None

    # --- dates and values -------------------------------------------------------------------

    def _date(self, dt: datetime | None) -> str | None:
        if dt is None:
            return None
        if dt.tzinfo is None:
            raise ValueError("BeeswaxAdapter needs aware datetimes")
        return dt.astimezone(self._tz).strftime("%Y-%m-%d %H:%M:%S")

    def _parse_date(self, raw: str | None) -> datetime | None:
        if not raw:
            return None
        text = raw.replace("Z", "+00:00")
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=self._tz)
        return dt.astimezone(UTC)

    def _line_item(self, r: Mapping[str, Any]) -> LineItem:
        budget = r.get("spend_budget") or {}
        cpm = ((r.get("bidding") or {}).get("values") or {}).get("cpm_bid")
        return LineItem(
            id=int(r["id"]), campaign_id=int(r["campaign_id"]),
            alternative_id=r.get("alternative_id"), name=r.get("name", ""),
            type=r.get("type", ""), active=bool(r.get("active")),
            lifetime_budget_micros=decimal_to_micros(budget.get("lifetime") or 0),
            daily_budget_micros=(None if budget.get("daily") is None
                                 else decimal_to_micros(budget["daily"])),
            cpm_bid_micros=None if cpm is None else decimal_to_micros(cpm),
            spend_micros=decimal_to_micros(r.get("spend") or 0),
            start=self._parse_date(r.get("start_date")), end=self._parse_date(r.get("end_date")),
            targeting_expression_id=r.get("targeting_expression_id"),
            creative_weighting_method=r.get("creative_weighting_method", "RANDOM"),
            updated_at=self._parse_date(r.get("update_date")),
        )

    def _campaign(self, r: Mapping[str, Any]) -> Campaign:
        budget = r.get("spend_budget") or {}
        return Campaign(
            id=int(r["id"]), advertiser_id=int(r["advertiser_id"]), name=r.get("name", ""),
            alternative_id=r.get("alternative_id"),
            lifetime_budget_micros=decimal_to_micros(budget.get("lifetime") or 0),
            daily_budget_micros=(None if budget.get("daily") is None
                                 else decimal_to_micros(budget["daily"])),
            start=self._parse_date(r.get("start_date")), end=self._parse_date(r.get("end_date")),
            active=bool(r.get("active")))

    @staticmethod
    def _creative(r: Mapping[str, Any]) -> Creative:
        return Creative(id=int(r["id"]), advertiser_id=int(r["advertiser_id"]),
                        name=r.get("name", ""), type=r.get("type", ""),
                        alternative_id=r.get("alternative_id"), active=bool(r.get("active")))

    # --- objects ----------------------------------------------------------------------------

    async def ensure_advertiser(self, *, alternative_id: str, name: str) -> Advertiser:
        r = await self._ensure("/advertisers", alternative_id, {"name": name, "active": True})
        return Advertiser(id=int(r["id"]), name=r.get("name", ""),
                          alternative_id=r.get("alternative_id"))

    async def ensure_campaign(
        self, *, advertiser_id: int, alternative_id: str, name: str,
        lifetime_budget_micros: int, daily_budget_micros: int | None,
        start: datetime, end: datetime | None, active: bool = True,
    ) -> Campaign:
        body = {
            "advertiser_id": advertiser_id, "name": name, "active": active,
            "budget_type": "spend",
            "spend_budget": {"lifetime": micros_to_decimal(lifetime_budget_micros),
                             "daily": (None if daily_budget_micros is None
                                       else micros_to_decimal(daily_budget_micros))},
            "start_date": self._date(start), "end_date": self._date(end),
        }
        return self._campaign(await self._ensure("/campaigns", alternative_id, body))

    async def update_campaign_budget(self, campaign_id: int, *, lifetime_micros: int,
                                     daily_micros: int | None) -> Campaign:
        return self._campaign(await self._json("PATCH", f"/campaigns/{campaign_id}", {
            "spend_budget": {"lifetime": micros_to_decimal(lifetime_micros),
                             "daily": (None if daily_micros is None
                                       else micros_to_decimal(daily_micros))}}))

    async def ensure_creatives(self, specs: Sequence[CreativeSpec]) -> list[Creative]:
        existing: dict[str, dict[str, Any]] = {}
        for advertiser_id in sorted({s.advertiser_id for s in specs}):
            for r in await self._list("/creatives", {"advertiser_id": advertiser_id}):
                if r.get("alternative_id"):
                    existing.setdefault(r["alternative_id"], r)
        out = []
        for spec in specs:
            r = existing.get(spec.alternative_id)
            if r is None:
                body: dict[str, Any] = {"advertiser_id": spec.advertiser_id, "name": spec.name,
                                        "type": spec.type, "active": True,
                                        "click_url": spec.click_url or None}
                if spec.duration_s is not None:
                    body["duration"] = spec.duration_s
                r = await self._ensure("/creatives", spec.alternative_id, body)
                existing[spec.alternative_id] = r
            out.append(self._creative(r))
        return out

    async def _ensure_targeting(self, targeting: Targeting) -> int | None:
        if targeting.is_empty():
            return None
        key = targeting_key(targeting)
        if key in self._te_ids:
            return self._te_ids[key]
        lock = self._te_locks.setdefault(key, anyio.Lock())
        async with lock:
            if key not in self._te_ids:
                r = await self._ensure("/targeting-expressions", key, {
                    "name": key, "active": True, "modules": targeting_modules(targeting)})
                self._te_ids[key] = int(r["id"])
        return self._te_ids[key]

    async def create_line_items(self, items: Sequence[LineItemSpec]) -> list[LineItem]:
        existing: dict[str, dict[str, Any]] = {}
        for campaign_id in sorted({i.campaign_id for i in items}):
            for r in await self._list("/line-items", {"campaign_id": campaign_id}):
                if r.get("alternative_id"):
                    existing.setdefault(r["alternative_id"], r)
        results: list[LineItem | None] = [None] * len(items)
        errors: list[tuple[int, DSPError]] = []
        limit = anyio.Semaphore(self._concurrency)

        async def one(index: int, spec: LineItemSpec) -> None:
            async with limit:
                try:
                    results[index] = await self._create_line_item(
                        spec, existing.get(spec.alternative_id))
                except DSPError as exc:
                    errors.append((index, exc))

        async with anyio.create_task_group() as tg:
            for index, spec in enumerate(items):
                tg.start_soon(one, index, spec)
        if errors:
            index, first = min(errors, key=lambda e: e[0])
            log.warning("beeswax.create_line_items_failed", failed=len(errors),
                        first_index=index, first_error=str(first))
            raise first
        return [r for r in results if r is not None]

    def _forget_targeting(self, targeting: Targeting) -> None:
        self._te_ids.pop(targeting_key(targeting), None)

    async def _with_targeting(self, targeting: Targeting,
                              use: Callable[[int | None], Awaitable[_T]]) -> _T:
        """``use(te_id)`` with the targeting expression's id. The ids are cached for the
        adapter's life; one deleted in Beeswax's UI since is refused as an invalid
        ``targeting_expression_id`` (HTTP 400): forget it, make the expression again, retry
        once."""
        te_id = await self._ensure_targeting(targeting)
        try:
            return await use(te_id)
        except DSPRejected as exc:
            if te_id is None or "targeting_expression_id" not in exc.field_errors:
                raise
            log.warning("beeswax.targeting_expression_gone", targeting_expression_id=te_id)
            self._forget_targeting(targeting)
            return await use(await self._ensure_targeting(targeting))

    async def _create_line_item(self, spec: LineItemSpec,
                                found: dict[str, Any] | None) -> LineItem:
        created = found is None

        async def create_or_target(te_id: int | None) -> dict[str, Any]:
            if found is None:
                return await self._create_line_item_record(spec, te_id)
            if found.get("targeting_expression_id") != te_id:
                return await self._json("PATCH", f"/line-items/{found['id']}",
                                        {"targeting_expression_id": te_id})
            return found

        record = await self._with_targeting(spec.targeting, create_or_target)
        if spec.creative_weights:
            await self._sync_associations(int(record["id"]), spec.creative_weights,
                                          deactivate_others=False, fresh=created)
        if spec.active and not record.get("active") and (created or spec.activate_existing):
            record = await self._json("PATCH", f"/line-items/{record['id']}", {"active": True})
        assert record is not None
        return self._line_item(record)

    async def _create_line_item_record(self, spec: LineItemSpec,
                                       te_id: int | None) -> dict[str, Any]:
        body = {
            "campaign_id": spec.campaign_id, "name": spec.name, "type": spec.type,
            "active": False,  # Beeswax: active only once a creative is associated
            "budget_type": "spend",
            "spend_budget": {"lifetime": micros_to_decimal(spec.lifetime_budget_micros),
                             "daily": (None if spec.daily_budget_micros is None
                                       else micros_to_decimal(spec.daily_budget_micros))},
            "bidding": {"strategy": spec.bid_strategy,
                        "values": {"cpm_bid": micros_to_decimal(spec.cpm_bid_micros)},
                        "pacing": "daily" if spec.daily_budget_micros else "lifetime"},
            "start_date": self._date(spec.start), "end_date": self._date(spec.end),
            "targeting_expression_id": te_id, "creative_weighting_method": "WEIGHTED",
            "alternative_id": spec.alternative_id,
        }
        if spec.user_timezones:  # (viewer-local hours: Beeswax paces by these zones)
            body["user_timezones"] = list(spec.user_timezones)

        async def lookup() -> dict[str, Any] | None:
            return await self._find("/line-items", spec.alternative_id,
                                    {"campaign_id": spec.campaign_id})

        return await self._create("/line-items", body, lookup=lookup)

    async def _associations(self, line_item_id: int) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for a in await self._list(f"/line-items/{line_item_id}/creatives"):
            cid = a.get("creative_id") or (a.get("creative") or {}).get("id")
            if cid is not None:
                out[int(cid)] = a
        return out

    async def _sync_associations(self, line_item_id: int, weights: Mapping[int, int], *,
                                 deactivate_others: bool, fresh: bool = False) -> None:
        # A line item this call just created has no associations yet: skip the read.
        current = {} if fresh else await self._associations(line_item_id)
        path = f"/line-items/{line_item_id}/creatives"
        for creative_id, weight in sorted(scale_weights(weights).items()):
            assoc = current.get(creative_id)
            if weight <= 0:
                if assoc is not None and assoc.get("active"):
                    await self._json("PATCH", f"{path}/{assoc['id']}", {"active": False})
                continue
            if assoc is None:
                async def lookup(cid: int = creative_id) -> dict[str, Any] | None:
                    return (await self._associations(line_item_id)).get(cid)

                await self._create(path, {"creative_id": creative_id, "weighting": weight,
                                          "active": True}, lookup=lookup)
            elif assoc.get("weighting") != weight or not assoc.get("active"):
                await self._json("PATCH", f"{path}/{assoc['id']}",
                                 {"weighting": weight, "active": True})
        if deactivate_others:
            for creative_id, assoc in current.items():
                if creative_id not in weights and assoc.get("active"):
                    await self._json("PATCH", f"{path}/{assoc['id']}", {"active": False})

    # --- updates ----------------------------------------------------------------------------

    async def _patch_line_item(self, line_item_id: int, body: dict[str, Any]) -> LineItem:
        return self._line_item(await self._json("PATCH", f"/line-items/{line_item_id}", body))

    async def update_budget(self, line_item_id: int, *, lifetime_micros: int,
                            daily_micros: int | None) -> LineItem:
        return await self._patch_line_item(line_item_id, {"spend_budget": {
            "lifetime": micros_to_decimal(lifetime_micros),
            "daily": None if daily_micros is None else micros_to_decimal(daily_micros)}})

    async def update_bid(self, line_item_id: int, *, cpm_bid_micros: int) -> LineItem:
        current = await self._json("GET", f"/line-items/{line_item_id}")
        bidding = dict(current.get("bidding") or {"strategy": "CPM"})
        bidding["values"] = {**(bidding.get("values") or {}),
                             "cpm_bid": micros_to_decimal(cpm_bid_micros)}
        return await self._patch_line_item(line_item_id, {"bidding": bidding})

    async def update_targeting(self, line_item_id: int, targeting: Targeting) -> LineItem:
        async def patch(te_id: int | None) -> LineItem:
            return await self._patch_line_item(line_item_id, {"targeting_expression_id": te_id})
        return await self._with_targeting(targeting, patch)

    async def set_active(self, line_item_id: int, active: bool) -> LineItem:
        return await self._patch_line_item(line_item_id, {"active": active})

    async def set_creative_weights(self, line_item_id: int, weights: Mapping[int, int]) -> None:
        current = await self._json("GET", f"/line-items/{line_item_id}")
        if current.get("creative_weighting_method") != "WEIGHTED":
            await self._json("PATCH", f"/line-items/{line_item_id}",
                             {"creative_weighting_method": "WEIGHTED"})
        await self._sync_associations(line_item_id, weights, deactivate_others=True)

    # --- reads ------------------------------------------------------------------------------

    async def get_line_items(self, ids: Sequence[int] | None = None, *,
                             campaign_id: int | None = None) -> list[LineItem]:
        extra = {} if campaign_id is None else {"campaign_id": campaign_id}
        if ids is None:
            return [self._line_item(r) for r in await self._list("/line-items", extra)]
        wanted = sorted(set(ids))
        out: list[LineItem] = []
        for i in range(0, len(wanted), ID_BATCH):
            batch = wanted[i:i + ID_BATCH]
            rows = await self._list("/line-items",
                                    {"id__in": ",".join(map(str, batch)), **extra})
            out.extend(self._line_item(r) for r in rows)
        return sorted(out, key=lambda li: li.id)

    async def get_targeting(self, line_item_id: int) -> Targeting:
        record = await self._json("GET", f"/line-items/{line_item_id}")
        te_id = record.get("targeting_expression_id")
        if te_id is None:
            return Targeting()
        te = await self._json("GET", f"/targeting-expressions/{te_id}")
        return targeting_from_modules(te.get("modules"))

    async def get_creative_weights(self, line_item_id: int) -> dict[int, int]:
        return {cid: int(a.get("weighting") or 100)
                for cid, a in (await self._associations(line_item_id)).items()
                if a.get("active")}

    async def read_events(self, cursor: str | None, *, limit: int = 1000) -> EventBatch:
        """Pull from the sandbox's stand-in for Beeswax's streaming log push
        (``events_path``). Real Beeswax pushes over HTTP or Kinesis instead; in production an
        event receiver feeds the pipeline and this call is not used."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        body = await self._json("GET", self._events_path, params=params)
        try:
            messages = [m.encode() if isinstance(m, str) else json.dumps(m).encode()
                        for m in body.get("messages", [])]
            first = body.get("first_seq")
            return EventBatch(messages=messages, next_cursor=str(body["next_cursor"]),
                              skipped=int(body.get("skipped", 0)),
                              first_seq=None if first is None else int(first))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DSPTransientError(f"the event feed answered an unexpected body "
                                    f"({type(exc).__name__}: {exc})") from None

    async def run_report(self, *, view: str = "performance_agg",
                         fields: Sequence[str] = ("campaign_id", "line_item_id", "spend",
                                                  "impression", "clicks"),
                         filters: Mapping[str, str] | None = None,
                         timeout: float = 300.0) -> list[dict[str, str]]:
        body = {"view": view, "fields": list(fields), "filters": dict(filters or {}),
                "limit": 30_000, "result_format": "csv"}
        task = await self._json("POST", "/reporting/run-query", body)
        task_id = task["task_id"]
        polls = max(1, int(timeout / max(self._poll_interval, 1e-3)))
        for _ in range(polls):
            resp = await self._request("GET", f"/reporting/async-results/{task_id}")
            if resp.status_code == 200:
                if resp.headers.get("content-type", "").startswith("application/json"):
                    return [{k: str(v) for k, v in row.items()} for row in resp.json()]
                return list(csv.DictReader(io.StringIO(resp.text)))
            await self._sleep(self._poll_interval)
        raise DSPTransientError(f"Beeswax report {task_id} not ready after {timeout:.0f}s; "
                                "retry later")

    # --- lifecycle --------------------------------------------------------------------------

    def health(self) -> AdapterHealth:
        return AdapterHealth(
            healthy=self._breaker.state == "closed",
            circuit=self._breaker.state, consecutive_failures=self._breaker.failures,
            authenticated=self._authenticated, requests=self.requests, retries=self.retries,
            rate_limited=self.rate_limited, last_error=self._last_error,
            last_success_at=self._last_success,
            details={"reauthentications": self.reauthentications,
                     "targeting_expressions_cached": len(self._te_ids)})

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def scale_weights(weights: Mapping[int, int]) -> dict[int, int]:
    """Creative weights as Beeswax takes them (1–100): scaled down in proportion when one is
    above 100, so that their ratios hold (capping each at 100 would make 300:100 into 1:1); a
    positive weight never rounds to 0 (that would switch its creative off)."""
    top = max((w for w in weights.values() if w > 0), default=0)
    if top <= 100:
        return dict(weights)
    return {cid: 0 if w <= 0 else max(1, round(w * 100 / top)) for cid, w in weights.items()}
