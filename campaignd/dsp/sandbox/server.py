"""The sandbox's Beeswax-compatible HTTP server (a faithful subset of the v2 "Buzz" API).

``create_app(state)`` serves, over the objects in ``state`` (a ``SandboxState``):

- ``POST /rest/v2/authenticate`` and ``/rest/authenticate`` (session cookies
  ``<buzz_key>_buzz_cookie``, ``sessionid``, ``csrftoken``; 15-minute sessions, 30 days with
  ``keep_logged_in``, rotated when older than the session TTL; 429 on bursts);
  ``DELETE /rest/authenticate`` logs out;
- v2 CRUD for ``advertisers``, ``campaigns``, ``creatives``, ``line-items``,
  ``targeting-expressions`` and ``line-items/{id}/creatives`` (DRF semantics: see
  ``entities.py``), with Beeswax's business rules;
- Report Builder (``reporting.py``) and the pull stand-in for the streaming log feed
  (``GET /rest/v2/sandbox/log-stream``, see ``feed.py``);
- ``GET /rest/v2/sandbox/status`` (sandbox only): market time, object and fault counts, the
  log feed's extent, the log push's progress (when it pushes) and the market's delivered totals
  (the ground truth a test compares with).

Every change to a line item, its associations, its targeting expression, its campaign or a
creative is translated into a ``LineItemConfig`` and handed to the market.
"""

from __future__ import annotations

import functools
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from campaignd.dsp.sandbox import reporting
from campaignd.dsp.sandbox.entities import (
    ObjectNotFound,
    ValidationFailed,
    decimal_to_micros,
    filter_records,
    micros_to_decimal_str,
    paginate,
)
from campaignd.dsp.sandbox.faults import FaultMiddleware
from campaignd.dsp.sandbox.feed import decode_cursor
from campaignd.dsp.sandbox.state import ROTATION_GRACE_S, SandboxState, Session

CRUD_RESOURCES = ("advertisers", "campaigns", "creatives", "line-items",
                  "targeting-expressions")


# --- HTTP plumbing ------------------------------------------------------------------------------

_stored_micros = functools.lru_cache(maxsize=1 << 16)(decimal_to_micros)
"""``decimal_to_micros`` of a stored budget string: the sum-of-budgets rule reads every line item
of a campaign on each write, and the same strings come back (parsed once)."""

_JSON = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(_JSON.encode(body), status_code=status, headers=headers,
                    media_type="application/json")


def _detail(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"detail": detail}, status, headers)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError as exc:
        raise ValidationFailed({"detail": f"JSON parse error - {exc}"}) from None


Handler = Callable[[Request], Awaitable[Response]]


def create_app(state: SandboxState) -> Starlette:
    """The ASGI app (faults middleware included) over ``state``."""
    store = state.store

    def authed(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            state.requests += 1
            token = request.cookies.get(state.cookie_name) or request.cookies.get("sessionid")
            if not token:
                return _detail(401, "Authentication credentials were not provided.")
            session = state.sessions.get(token)
            now = time.monotonic()
            expire = request.scope.get("state", {}).get("expire_session")
            if session is not None and (expire == "force" or (
                    expire and now - session.created >= state.faults.session_min_age_s)):
                state.sessions.pop(token, None)
                session = None
            if session is None or session.expires <= now:
                state.sessions.pop(token, None)
                return _detail(401, "Session expired. Please authenticate again.")
            if (state.require_csrf and request.method not in ("GET", "HEAD", "OPTIONS")
                    and request.headers.get("x-csrftoken") != session.csrftoken):
                return _detail(403, "CSRF Failed: CSRF token missing or incorrect.")
            new_token = None
            if session.keep and now - session.created > state.session_ttl_s:
                # keep_logged_in: "subsequent API requests will create new sessions".
                # The old cookie stays valid for a short grace period, so requests already in
                # flight with it (or a response lost on the way) do not fail.
                new_token = secrets.token_hex(16)
                state.sessions[new_token] = Session(session.email, now, session.expires, True,
                                                    session.csrftoken)
                session.expires = min(session.expires, now + ROTATION_GRACE_S)
                session.keep = False
            try:
                response = await handler(request)
            except ValidationFailed as exc:
                response = json_response(exc.errors, 400)
            except ObjectNotFound as exc:
                msg = str(exc) if str(exc) == "Invalid page." else "Not found."
                response = _detail(404, msg)
            if new_token is not None:
                _set_session_cookies(response, new_token, session.csrftoken,
                                     state.keep_ttl_s)
            return response
        return wrapped

    def _set_session_cookies(response: Response, token: str, csrf: str, ttl: float) -> None:
        # The server enforces the session's lifetime; the cookie only has to outlive it.
        # Clients count Max-Age from a whole-second clock (http.cookiejar: int(now) + max_age),
        # so a 1-second cookie can be dropped by the client at once: never under a minute.
        max_age = max(60, math.ceil(ttl))
        for name in (state.cookie_name, "sessionid"):
            response.set_cookie(name, token, max_age=max_age, httponly=True, samesite="lax")
        response.set_cookie("csrftoken", csrf, max_age=max_age, samesite="lax")

    async def authenticate(request: Request) -> Response:
        now = time.monotonic()
        limit, window = state.auth_burst
        while state._auth_times and state._auth_times[0] < now - window:
            state._auth_times.popleft()
        state._auth_times.append(now)
        if len(state._auth_times) > limit:
            return _detail(429, "Request was throttled.", {"Retry-After": str(int(window))})
        if request.method == "DELETE":
            token = request.cookies.get(state.cookie_name) or request.cookies.get("sessionid")
            state.sessions.pop(token or "", None)
            return json_response({"success": True,
                                  "message": "You have been successfully logged out"})
        try:
            body = await _json_body(request)
        except ValidationFailed as exc:
            return json_response(exc.errors, 400)
        if not isinstance(body, dict) or not state.check_password(body.get("email"),
                                                                  body.get("password")):
            return json_response({"success": "false", "detail": "Invalid email or password.",
                                  "message": "Invalid email or password."}, 401)
        for stale in [t for t, s in state.sessions.items() if s.expires <= now]:
            del state.sessions[stale]
        keep = bool(body.get("keep_logged_in", False))
        ttl = state.keep_ttl_s if keep else state.session_ttl_s
        token, csrf = secrets.token_hex(16), secrets.token_hex(16)
        state.sessions[token] = Session(body["email"], now, now + ttl, keep, csrf)
        response = json_response({"success": "true", "message": "Cookie set successfully",
                                  "payload": "Cookie set successfully"})
        _set_session_cookies(response, token, csrf, ttl)
        return response

    # --- generic CRUD -----------------------------------------------------------------------

    def render(resource: str, record: dict[str, Any],
               delivered: dict[int, dict[str, int]] | None = None) -> dict[str, Any]:
        if resource == "line-items" and delivered:
            got = delivered.get(record["id"])
            if got:
                return {**record, "spend": micros_to_decimal_str(int(got["spend_micros"])),
                        "impressions": int(got["impressions"])}
        return record

    def page_url(request: Request) -> Callable[[int], str]:
        def url(page: int) -> str:
            params = dict(request.query_params)
            params["page"] = str(page)
            return str(request.url.replace(query=urlencode(params)))
        return url

    def list_records(request: Request, resource: str,
                     records: list[dict[str, Any]]) -> Response:
        params = dict(request.query_params)
        found = filter_records(sorted(records, key=lambda r: r["id"]), params)
        page = paginate(found, params, page_url(request))
        delivered = (state.delivered([r["id"] for r in page["results"]])
                     if resource == "line-items" else None)
        page["results"] = [render(resource, r, delivered) for r in page["results"]]
        return json_response(page)

    def rules(resource: str, values: dict[str, Any], existing: dict[str, Any] | None,
              extra: dict[str, Any]) -> None:
        merged = {**(existing or {}), **values}
        if resource == "line-items":
            _line_item_rules(merged, values, existing, extra)
        elif resource == "campaigns":
            _campaign_rules(merged, existing)

    def _campaign_rules(c: dict[str, Any], existing: dict[str, Any] | None) -> None:
        errors: dict[str, Any] = {}
        start = store.dates.from_record(c.get("start_date"))
        end = store.dates.from_record(c.get("end_date"))
        if start is not None and end is not None and end <= start:
            errors["end_date"] = ["End date must be after start date."]
        if existing is not None and c.get("spend_budget"):
            total = sum(decimal_to_micros(li["spend_budget"]["lifetime"])
                        for li in store.table("line-items").values()
                        if li["campaign_id"] == c["id"])
            if decimal_to_micros(c["spend_budget"]["lifetime"]) < total:
                errors["spend_budget"] = {"lifetime": [
                    "Campaign budget cannot be lower than the sum of its line item budgets."]}
            elif c["spend_budget"].get("daily") is not None:
                # (the reference: a campaign's daily budget cannot be lower than any of its
                # line items' daily budgets)
                daily = decimal_to_micros(c["spend_budget"]["daily"])
                if any(li["campaign_id"] == c["id"] and (li.get("spend_budget") or {}).get(
                        "daily") is not None
                       and _stored_micros(li["spend_budget"]["daily"]) > daily
                       for li in store.table("line-items").values()):
                    errors["spend_budget"] = {"daily": [
                        "Campaign daily budget cannot be lower than a line item's daily "
                        "budget."]}
        if errors:
            raise ValidationFailed(errors)

    def _line_item_rules(li: dict[str, Any], values: dict[str, Any],
                         existing: dict[str, Any] | None, extra: dict[str, Any]) -> None:
        errors: dict[str, Any] = {}
        campaign = store.get("campaigns", li["campaign_id"])
        extra["advertiser_id"] = campaign["advertiser_id"]
        budget, cbudget = li.get("spend_budget"), campaign.get("spend_budget") or {}
        if li.get("budget_type", "spend") != "impressions" and not budget:
            errors["spend_budget"] = ["This field may not be null."]
        if budget and cbudget.get("lifetime") is not None:
            others = sum(_stored_micros(o["spend_budget"]["lifetime"])
                         for o in store.table("line-items").values()
                         if o["campaign_id"] == li["campaign_id"] and o["id"] != li.get("id")
                         and o.get("spend_budget"))
            total = others + decimal_to_micros(budget["lifetime"])
            cap = decimal_to_micros(cbudget["lifetime"])
            if total > cap:
                errors["spend_budget"] = {"lifetime": [
                    "The sum of line item budgets "
                    f"({total / 1e6:.2f}) cannot exceed the campaign budget ({cap / 1e6:.2f})."]}
            elif (budget.get("daily") is not None and cbudget.get("daily") is not None
                  and decimal_to_micros(budget["daily"]) > decimal_to_micros(cbudget["daily"])):
                errors["spend_budget"] = {"daily": [
                    "Line item daily budget cannot exceed the campaign daily budget."]}
        dates = store.dates
        start, end = dates.from_record(li["start_date"]), dates.from_record(li.get("end_date"))
        c_start = dates.from_record(campaign["start_date"])
        c_end = dates.from_record(campaign.get("end_date"))
        if start is not None and c_start is not None and start < c_start:
            errors["start_date"] = ["Line item start date must be within the campaign dates."]
        if c_end is not None and (end is None or end > c_end):
            errors["end_date"] = ["Line item end date must be within the campaign dates."]
        if end is not None and start is not None and end <= start:
            errors["end_date"] = ["End date must be after start date."]
        if values.get("active") is True and (
                existing is None or not _has_active_creative(li["id"], li["type"])):
            errors["active"] = [
                "Line item can only be active with at least one active creative of "
                f"type {li['type']}."]
        if errors:
            raise ValidationFailed(errors)

    def _has_active_creative(line_item_id: int, li_type: str) -> bool:
        creatives = store.table("creatives")
        for assoc in store.table("line-item-creatives").values():
            if assoc["line_item_id"] == line_item_id and assoc["active"]:
                creative = creatives.get(assoc["creative_id"])
                if creative and creative["active"] and creative["type"] == li_type:
                    return True
        return False

    def after_change(resource: str, record: dict[str, Any] | None, pk: int) -> None:
        if resource == "line-items":
            if record is None:
                for aid, assoc in list(store.table("line-item-creatives").items()):
                    if assoc["line_item_id"] == pk:
                        store.table("line-item-creatives").pop(aid)
            state.sync_line_item(pk)
        elif resource == "targeting-expressions":
            state.sync_where(lambda li: li.get("targeting_expression_id") == pk)
        elif resource == "campaigns":
            state.sync_where(lambda li: li["campaign_id"] == pk)
        elif resource == "creatives":
            assoc_lis = {a["line_item_id"] for a in store.table("line-item-creatives").values()
                         if a["creative_id"] == pk}
            state.sync_where(lambda li: li["id"] in assoc_lis)

    def collection(resource: str) -> Handler:
        async def handler(request: Request) -> Response:
            if request.method == "GET":
                return list_records(request, resource, list(store.table(resource).values()))
            values = store.clean(resource, await _json_body(request), existing=None,
                                 partial=False)
            extra: dict[str, Any] = {}
            rules(resource, values, None, extra)
            record = store.insert(resource, values, extra)
            after_change(resource, record, record["id"])
            return json_response(render(resource, record), 201)
        return handler

    def detail(resource: str) -> Handler:
        async def handler(request: Request) -> Response:
            pk = int(request.path_params["pk"])
            existing = store.get(resource, pk)
            if request.method == "GET":
                return json_response(render(resource, existing, state.delivered([pk])
                                            if resource == "line-items" else None))
            if request.method == "DELETE":
                store.delete(resource, pk)
                after_change(resource, None, pk)
                return Response(status_code=204)
            values = store.clean(resource, await _json_body(request), existing=existing,
                                 partial=request.method == "PATCH")
            extra: dict[str, Any] = {}
            rules(resource, values, existing, extra)
            record = store.update(resource, pk, {**values, **extra})
            after_change(resource, record, pk)
            return json_response(render(resource, record, state.delivered([pk])
                                        if resource == "line-items" else None))
        return handler

    # --- line item ↔ creative associations --------------------------------------------------

    def assoc_view(assoc: dict[str, Any]) -> dict[str, Any]:
        creative = store.table("creatives").get(assoc["creative_id"], {})
        return {**assoc, "creative": {k: creative.get(k) for k in
                                      ("id", "name", "type", "alternative_id", "active")}}

    def assoc_rules(li: dict[str, Any], values: dict[str, Any],
                    existing: dict[str, Any] | None) -> None:
        if existing is None:
            creative = store.get("creatives", values["creative_id"])
            if creative["type"] != li["type"]:
                raise ValidationFailed({"creative_id": [
                    f"Creative type {creative['type']} does not match line item type "
                    f"{li['type']}."]})
            for other in store.table("line-item-creatives").values():
                if other["line_item_id"] == li["id"] and \
                        other["creative_id"] == values["creative_id"]:
                    raise ValidationFailed({"creative_id": [
                        "This creative is already associated with this line item."]})

    async def assoc_collection(request: Request) -> Response:
        li = store.get("line-items", int(request.path_params["pk"]))
        table = store.table("line-item-creatives")
        if request.method == "GET":
            records = [assoc_view(a) for a in table.values() if a["line_item_id"] == li["id"]]
            return list_records(request, "line-item-creatives", records)
        values = store.clean("line-item-creatives", await _json_body(request), existing=None,
                             partial=False)
        assoc_rules(li, values, None)
        record = store.insert("line-item-creatives", values, {"line_item_id": li["id"]})
        state.sync_line_item(li["id"])
        return json_response(assoc_view(record), 201)

    async def assoc_detail(request: Request) -> Response:
        li = store.get("line-items", int(request.path_params["pk"]))
        aid = int(request.path_params["aid"])
        existing = store.get("line-item-creatives", aid)
        if existing["line_item_id"] != li["id"]:
            raise ObjectNotFound("line-item-creatives")
        if request.method == "GET":
            return json_response(assoc_view(existing))
        if request.method == "DELETE":
            store.delete("line-item-creatives", aid)
            state.sync_line_item(li["id"])
            return Response(status_code=204)
        values = store.clean("line-item-creatives", await _json_body(request),
                             existing=existing, partial=request.method == "PATCH")
        record = store.update("line-item-creatives", aid, values)
        state.sync_line_item(li["id"])
        return json_response(assoc_view(record))

    # --- reporting and the log feed ---------------------------------------------------------

    async def run_query(request: Request) -> Response:
        fields, filters, limit, fmt = reporting.validate_query(await _json_body(request))
        rows = reporting.build_rows(fields, filters, limit,
                                    list(store.table("line-items").values()),
                                    store.table("campaigns"), state.delivered())
        body, media_type = reporting.render(rows, fields, fmt)
        task_id = reporting.new_task_id()
        state.reports[task_id] = reporting.ReportTask(state.report_polls, body, media_type)
        return json_response({"task_id": task_id})

    async def async_results(request: Request) -> Response:
        task = state.reports.get(request.path_params["task_id"])
        if task is None:
            raise ObjectNotFound("report")
        if task.polls_left > 0:
            task.polls_left -= 1
            return Response(status_code=204)
        return Response(task.body, media_type=task.media_type)

    async def log_stream(request: Request) -> Response:
        raw_limit = request.query_params.get("limit", "1000")
        if not (raw_limit.isascii() and raw_limit.isdigit()):  # (int() takes "1_0", " 5")
            raise ValidationFailed({"limit": ["A valid integer is required."]})
        limit = int(raw_limit)
        if not 1 <= limit <= 10_000:
            raise ValidationFailed({"limit": ["Ensure this value is between 1 and 10000."]})
        try:
            messages, next_cursor, skipped = state.feed.read(
                request.query_params.get("cursor"), limit)
        except ValueError:
            raise ValidationFailed({"cursor": ["Invalid cursor."]}) from None
        # first_seq: the stream position of messages[0] (consumers key redeliveries on it).
        first_seq = (decode_cursor(next_cursor) or 0) - len(messages)
        return json_response({"messages": [m.decode("utf-8", "replace") for m in messages],
                              "next_cursor": next_cursor, "skipped": skipped,
                              "first_seq": first_seq})

    async def status(request: Request) -> Response:
        market_now = state.market.now if state.market is not None else None
        return json_response({
            "buzz_key": state.buzz_key,
            "market_now": market_now.isoformat() if market_now else None,
            "objects": {r: len(store.table(r)) for r in (*CRUD_RESOURCES,
                                                         "line-item-creatives")},
            "feed": {"first_cursor_seq": state.feed.first_seq,
                     "next_cursor_seq": state.feed.next_seq},
            "push": state.push,
            "delivered": state.delivered_totals(),
            "faults": state.injector.stats.injected,
            "requests": state.requests,
        })

    v2 = "/rest/v2"
    routes = [
        Route("/rest/authenticate", authenticate, methods=["POST", "DELETE"]),
        Route(f"{v2}/authenticate", authenticate, methods=["POST", "DELETE"]),
        Route(f"{v2}/reporting/run-query", authed(run_query), methods=["POST"]),
        Route(f"{v2}/reporting/async-results/{{task_id}}", authed(async_results),
              methods=["GET"]),
        Route(f"{v2}/sandbox/log-stream", authed(log_stream), methods=["GET"]),
        Route(f"{v2}/sandbox/status", authed(status), methods=["GET"]),
        Route(f"{v2}/line-items/{{pk:int}}/creatives", authed(assoc_collection),
              methods=["GET", "POST"]),
        Route(f"{v2}/line-items/{{pk:int}}/creatives/{{aid:int}}", authed(assoc_detail),
              methods=["GET", "PUT", "PATCH", "DELETE"]),
    ]
    for resource in CRUD_RESOURCES:
        routes.append(Route(f"{v2}/{resource}", authed(collection(resource)),
                            methods=["GET", "POST"]))
        routes.append(Route(f"{v2}/{resource}/{{pk:int}}", authed(detail(resource)),
                            methods=["GET", "PUT", "PATCH", "DELETE"]))
    return Starlette(routes=routes,
                     middleware=[Middleware(FaultMiddleware, injector=state.injector)])
