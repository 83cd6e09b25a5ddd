"""What the sandbox's Beeswax-compatible server holds (``SandboxState``): the objects, the
sessions, the fault injector, the log feed and the market, and how a line item's objects are
translated into the ``LineItemConfig`` the market delivers against. The HTTP side is
``server.py``."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from campaignd.clock import Clock, SystemClock
from campaignd.dsp.sandbox import reporting
from campaignd.dsp.sandbox.entities import EntityStore, decimal_to_micros
from campaignd.dsp.sandbox.faults import FaultConfig, FaultInjector
from campaignd.dsp.sandbox.feed import Ids, LogFeed, MessageEncoder
from campaignd.dsp.sandbox.model import LineItemConfig, MarketProtocol
from campaignd.dsp.sandbox.targeting import included_values

SESSION_TTL_S = 15 * 60
ROTATION_GRACE_S = 30.0
KEEP_TTL_S = 30 * 24 * 3600


@dataclass(slots=True)
class Session:
    email: str
    created: float
    expires: float
    keep: bool
    csrftoken: str


def creative_key(creative: dict[str, Any]) -> str:
    """The market's key for a creative: the last ``:``-separated part of its alternative_id
    (campaignd writes ``campaignd:<campaign>:<creative level>``; a bare level id works too),
    or its numeric id when it has none."""
    alt = creative.get("alternative_id")
    return alt.rsplit(":", 1)[-1] if alt else str(creative["id"])


class SandboxState:
    """Everything the sandbox server holds: objects, sessions, faults, the feed, the market."""

    def __init__(self, market: MarketProtocol | None = None, *,
                 email: str = "sandbox@campaignd.local", password: str = "sandbox",
                 buzz_key: str = "sandbox", account_id: int = 1,
                 timezone: str = "America/New_York", faults: FaultConfig | None = None,
                 clock: Clock | None = None, session_ttl_s: float = SESSION_TTL_S,
                 keep_ttl_s: float = KEEP_TTL_S, auth_burst: tuple[int, float] = (30, 10.0),
                 report_polls: int = 2, feed_capacity: int = 500_000,
                 require_csrf: bool = False) -> None:
        self.market = market
        self.email = email
        self._password = password
        self.buzz_key = buzz_key
        self.account_id = account_id
        self.clock: Clock = clock or SystemClock()
        self.store = EntityStore(account_id=account_id, timezone=timezone, now=self.clock.now)
        self.faults = faults or FaultConfig()
        self.injector = FaultInjector(self.faults, time.monotonic)
        self.feed = LogFeed(capacity=feed_capacity, faults=self.faults,
                            stats=self.injector.stats)
        self.encoder = MessageEncoder(buzz_key)
        self.push: dict[str, Any] | None = None
        """The log push's progress, when the service pushes (``SandboxService(push_url=…)``)."""
        self.sessions: dict[str, Session] = {}
        self.session_ttl_s = session_ttl_s
        self.keep_ttl_s = keep_ttl_s
        self.auth_burst = auth_burst
        self._auth_times: deque[float] = deque()
        self.report_polls = report_polls
        self.reports: dict[str, reporting.ReportTask] = {}
        self.require_csrf = require_csrf
        """Refuse unsafe methods whose ``X-CSRFToken`` does not match the session (Django's
        rule; whether Beeswax enforces it for API clients is unknown, so it is optional)."""
        self.requests = 0
        self.unknown_creative_events = 0

    @property
    def cookie_name(self) -> str:
        return f"{self.buzz_key}_buzz_cookie"

    def check_password(self, email: Any, password: Any) -> bool:
        return (isinstance(email, str) and isinstance(password, str)
                and secrets.compare_digest(email.encode(), self.email.encode())
                and secrets.compare_digest(password.encode(), self._password.encode()))

    def expire_sessions(self) -> int:
        """Expire every session now (tests: force re-authentication). Returns how many."""
        n = len(self.sessions)
        self.sessions.clear()
        return n

    # --- market -----------------------------------------------------------------------------

    def line_item_config(self, li: dict[str, Any]) -> LineItemConfig:
        store = self.store
        campaign = store.table("campaigns").get(li["campaign_id"], {})
        creatives = store.table("creatives")
        weights: dict[str, int] = {}
        for assoc in store.table("line-item-creatives").values():
            if assoc["line_item_id"] != li["id"] or not assoc["active"]:
                continue
            creative = creatives.get(assoc["creative_id"])
            if creative is None or not creative["active"]:
                continue
            key = creative_key(creative)
            weighted = li["creative_weighting_method"] == "WEIGHTED"
            weights[key] = (assoc.get("weighting") or 100) if weighted else 1
        te = None
        if li.get("targeting_expression_id") is not None:
            te = store.table("targeting-expressions").get(li["targeting_expression_id"])
        modules = te["modules"] if te is not None and te.get("active", True) else None
        budget = li.get("spend_budget") or {}
        cpm = (li.get("bidding") or {}).get("values", {}).get("cpm_bid")
        hours = included_values(modules, "time", "user_time_of_week")
        return LineItemConfig(
            line_item_id=li["id"], campaign_id=li["campaign_id"],
            active=bool(li["active"] and campaign.get("active", False)),
            lifetime_budget_micros=decimal_to_micros(budget.get("lifetime") or 0),
            daily_budget_micros=(None if budget.get("daily") is None
                                 else decimal_to_micros(budget["daily"])),
            cpm_bid_micros=decimal_to_micros(cpm) if cpm is not None else 0,
            creatives=weights,
            zips=included_values(modules, "geo", "zip"),
            segments=included_values(modules, "user", "segment"),
            hours_of_week=None if hours is None else frozenset(int(h) for h in hours),
            app_bundles=included_values(modules, "app_site", "app_bundle"),
            start=store.dates.from_record(li.get("start_date")),
            end=store.dates.from_record(li.get("end_date")),
            alternative_id=li.get("alternative_id"),
            campaign_daily_budget_micros=(
                None if (campaign.get("spend_budget") or {}).get("daily") is None
                else decimal_to_micros(campaign["spend_budget"]["daily"])),
        )

    def sync_line_item(self, line_item_id: int) -> None:
        if self.market is None:
            return
        li = self.store.table("line-items").get(line_item_id)
        if li is None:
            self.market.remove(line_item_id)
        else:
            self.market.configure(self.line_item_config(li))

    def sync_where(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        for li in list(self.store.table("line-items").values()):
            if predicate(li):
                self.sync_line_item(li["id"])

    def delivered(self, ids: Iterable[int] | None = None) -> dict[int, dict[str, int]]:
        """Lifetime delivery per line item (of ``ids`` only, when given)."""
        if self.market is None:
            return {}
        return {int(k): dict(v) for k, v in self.market.delivered(ids).items()}

    def delivered_totals(self) -> dict[str, int]:
        """The market's lifetime delivery summed over every line item (``impressions``,
        ``spend_micros``, ``clicks``, ``conversions``, …); empty without a market."""
        totals: dict[str, int] = {}
        if self.market is not None:
            for per in self.market.delivered().values():
                for k, v in per.items():
                    totals[k] = totals.get(k, 0) + int(v)
        return totals

    def advance_market(self, until: datetime) -> int:
        """Move the market to ``until`` and append its events to the feed; returns how many."""
        if self.market is None or until <= self.market.now:
            return 0
        _, events = self.market.advance(until, emit_events=True)
        store = self.store
        line_items = store.table("line-items")
        by_key: dict[tuple[int, str], int] = {}
        for assoc in store.table("line-item-creatives").values():
            creative = store.table("creatives").get(assoc["creative_id"])
            if creative is not None:
                key = creative_key(creative)
                by_key[(assoc["line_item_id"], key)] = creative["id"]
        out = []
        for ev in events:
            li = line_items.get(ev.line_item_id)
            creative_id = by_key.get((ev.line_item_id, ev.creative_key))
            if creative_id is None:
                self.unknown_creative_events += 1
            ids = Ids(account_id=self.account_id,
                      advertiser_id=int(li["advertiser_id"]) if li else 0,
                      campaign_id=ev.campaign_id, line_item_id=ev.line_item_id,
                      creative_id=creative_id)
            out.append(self.encoder.encode(ev, ids))
        self.feed.extend(out)
        return len(out)
