"""The DSP adapter interface: what campaignd's agents and executors may ask of a DSP.

One ABC, ``DSPAdapter``, with a contract per operation, and plain frozen dataclasses for values.
Money is integer micros (1 currency unit = 1,000,000 micros); times are aware UTC datetimes.
Failures are raised from ``campaignd.errors``' DSP tree, never as vendor exceptions:

- ``DSPTransientError`` (timeouts, dropped connections, 5xx after retries) — retry later;
- ``DSPRateLimited(retry_after)`` — 429 after retries;
- ``DSPCircuitOpen`` — the adapter refuses calls until its breaker half-opens;
- ``DSPAuthError`` — credentials rejected after one re-authentication;
- ``DSPRejected(field_errors)`` — the DSP refused the request (field path → messages);
- ``DSPNotFound`` — the object does not exist.

Creates are idempotent through ``alternative_id``: callers pass deterministic keys (e.g.
``Cell.alternative_id``) and the adapter looks an object up by that key before creating it and
before retrying a create whose response was lost, so no call ever duplicates an object.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = [
    "AdapterHealth",
    "Advertiser",
    "Campaign",
    "Creative",
    "CreativeSpec",
    "DSPAdapter",
    "EventBatch",
    "LineItem",
    "LineItemSpec",
    "Targeting",
    "committed_lifetime",
    "committed_today",
]


@dataclass(frozen=True, slots=True)
class Targeting:
    """Binary eligibility of a line item. An empty tuple means "not restricted".

    Values within a field are ORed; fields are ANDed (Beeswax targeting-expression semantics).
    """

    zips: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    hours_of_week: tuple[int, ...] = ()
    """Viewer-local hour-of-week buckets, 0 = Sunday 00:00-00:59 … 167 = Saturday 23h."""
    app_bundles: tuple[str, ...] = ()
    device_types: tuple[int, ...] = ()
    """OpenRTB device types (3 = connected TV, 7 = set-top box)."""

    def normalized(self) -> Targeting:
        """Same targeting with every field sorted and deduplicated (a canonical form)."""
        return Targeting(
            zips=tuple(sorted(set(self.zips))),
            segments=tuple(sorted(set(self.segments))),
            hours_of_week=tuple(sorted(set(self.hours_of_week))),
            app_bundles=tuple(sorted(set(self.app_bundles))),
            device_types=tuple(sorted(set(self.device_types))),
        )

    def is_empty(self) -> bool:
        return not (self.zips or self.segments or self.hours_of_week or self.app_bundles
                    or self.device_types)


@dataclass(frozen=True, slots=True)
class Advertiser:
    id: int
    name: str
    alternative_id: str | None


@dataclass(frozen=True, slots=True)
class Campaign:
    id: int
    advertiser_id: int
    name: str
    alternative_id: str | None
    lifetime_budget_micros: int
    daily_budget_micros: int | None
    start: datetime | None
    end: datetime | None
    active: bool


@dataclass(frozen=True, slots=True)
class CreativeSpec:
    """A creative to ensure; ``alternative_id`` is the caller's deterministic key, unique within
    the advertiser (for campaignd, the creative level id, e.g. ``hero_30s``: the sandbox market
    uses it as the creative key)."""

    alternative_id: str
    advertiser_id: int
    name: str
    type: Literal["banner", "video", "native", "audio"] = "video"
    click_url: str = ""
    duration_s: int | None = None


@dataclass(frozen=True, slots=True)
class Creative:
    id: int
    advertiser_id: int
    name: str
    type: str
    alternative_id: str | None
    active: bool


@dataclass(frozen=True, slots=True)
class LineItemSpec:
    """A line item to create (one campaignd cell).

    The adapter creates it inactive, attaches the targeting and the creatives (weights 1-100,
    keyed by DSP creative id), then activates it if ``active`` — Beeswax refuses an active line
    item without an active creative association.
    """

    alternative_id: str
    campaign_id: int
    name: str
    lifetime_budget_micros: int
    daily_budget_micros: int | None
    cpm_bid_micros: int
    start: datetime
    end: datetime | None
    type: Literal["banner", "video", "native", "audio"] = "video"
    bid_strategy: str = "CPM"
    targeting: Targeting = field(default_factory=Targeting)
    creative_weights: Mapping[int, int] = field(default_factory=dict)
    user_timezones: tuple[str, ...] = ()
    """IANA time zones its viewers are in, when its hours of the week are viewer-local
    (Beeswax's ``user_timezones``: "if not set properly, pacing will be uneven")."""
    active: bool = True
    activate_existing: bool = True
    """When the line item exists already (found by its alternative id): switch it on if it is
    off. ``False`` leaves an existing line item's state alone (one synced before may have been
    paused on purpose); a line item created now is switched on per ``active`` either way."""


@dataclass(frozen=True, slots=True)
class LineItem:
    """A line item as the DSP reports it (reconciliation's view)."""

    id: int
    campaign_id: int
    alternative_id: str | None
    name: str
    type: str
    active: bool
    lifetime_budget_micros: int
    daily_budget_micros: int | None
    cpm_bid_micros: int | None
    spend_micros: int
    start: datetime | None
    end: datetime | None
    targeting_expression_id: int | None
    creative_weighting_method: str
    updated_at: datetime | None = None


def committed_today(li: LineItem, spent_today: int = 0) -> int:
    """The most a line item can cost its campaign's budget day (micros): its daily budget, or
    what it spent today if that is more (a daily budget cut below what was spent frees
    nothing); with no daily budget, today's spend plus all of its lifetime budget left."""
    spent = max(int(spent_today), 0)
    if li.daily_budget_micros is None:
        return spent + max(int(li.lifetime_budget_micros) - int(li.spend_micros), 0)
    return max(int(li.daily_budget_micros), spent)


def committed_lifetime(li: LineItem) -> int:
    """The most a line item can cost its campaign over the flight: its lifetime budget, or what
    it spent if that is more (a lifetime budget cut below the spend frees nothing)."""
    return max(int(li.lifetime_budget_micros), int(li.spend_micros))


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Raw log messages (JSON bytes, one ``AdLogMessage`` each — possibly duplicated, out of
    order or malformed: the pipeline validates) and the cursor to resume after them."""

    messages: list[bytes]
    next_cursor: str
    skipped: int = 0
    """Messages the DSP no longer held between the given cursor and this batch (data loss)."""
    first_seq: int | None = None
    """The stream position (sequence number) of ``messages[0]``, the next ones following; None
    when the feed does not say. With it the pipeline can tell a message read again after a
    restart from a duplicate delivery (see ``HotStore.mark_seen``)."""


@dataclass(frozen=True, slots=True)
class AdapterHealth:
    healthy: bool
    circuit: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    authenticated: bool
    requests: int
    retries: int
    rate_limited: int
    last_error: str | None = None
    last_success_at: datetime | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


class DSPAdapter(abc.ABC):
    """A DSP, seen from campaignd. Implementations are safe for concurrent use in one event loop.

    Every method may raise the DSP errors listed in the module docstring; transient failures have
    already been retried (with backoff) when they surface.
    """

    @abc.abstractmethod
    async def ensure_advertiser(self, *, alternative_id: str, name: str) -> Advertiser:
        """Return the advertiser with this ``alternative_id``, creating it if absent."""

    @abc.abstractmethod
    async def ensure_campaign(
        self, *, advertiser_id: int, alternative_id: str, name: str,
        lifetime_budget_micros: int, daily_budget_micros: int | None,
        start: datetime, end: datetime | None, active: bool = True,
    ) -> Campaign:
        """Return the campaign with this ``alternative_id``, creating it if absent. An existing
        campaign is returned as it is (budgets are not overwritten)."""

    @abc.abstractmethod
    async def update_campaign_budget(self, campaign_id: int, *, lifetime_micros: int,
                                     daily_micros: int | None) -> Campaign:
        """Set a campaign's budgets (the DSP refuses a lifetime budget below the sum of its
        line items')."""

    @abc.abstractmethod
    async def ensure_creatives(self, specs: Sequence[CreativeSpec]) -> list[Creative]:
        """Return one creative per spec (same order), creating the absent ones."""

    @abc.abstractmethod
    async def create_line_items(self, items: Sequence[LineItemSpec]) -> list[LineItem]:
        """Create line items (same order as ``items``), idempotently.

        An item whose ``alternative_id`` already exists is not created again; it is completed
        (targeting, creatives, activation) if an earlier run stopped half-way. A create whose
        response was lost is looked up before it is retried. Concurrency is bounded by the
        adapter's rate limiter. Raises the first error after every item has been attempted.
        """

    @abc.abstractmethod
    async def update_budget(self, line_item_id: int, *, lifetime_micros: int,
                            daily_micros: int | None) -> LineItem:
        """Set both budgets (Beeswax needs both keys of ``spend_budget``)."""

    @abc.abstractmethod
    async def update_bid(self, line_item_id: int, *, cpm_bid_micros: int) -> LineItem:
        """Set the line item's CPM bid."""

    @abc.abstractmethod
    async def update_targeting(self, line_item_id: int, targeting: Targeting) -> LineItem:
        """Replace the line item's targeting."""

    @abc.abstractmethod
    async def set_active(self, line_item_id: int, active: bool) -> LineItem:
        """Activate or pause. Activation needs ≥ 1 active creative (else ``DSPRejected``)."""

    @abc.abstractmethod
    async def set_creative_weights(self, line_item_id: int, weights: Mapping[int, int]) -> None:
        """Weighted rotation: creative id → weight 1-100; associations not named are
        deactivated, new ones are created. A weight of 0 deactivates the association."""

    @abc.abstractmethod
    async def get_line_items(self, ids: Sequence[int] | None = None, *,
                             campaign_id: int | None = None) -> list[LineItem]:
        """Line items by ids (batched) and/or campaign; all of the account's when neither."""

    @abc.abstractmethod
    async def get_targeting(self, line_item_id: int) -> Targeting:
        """The line item's current targeting (empty when it has none)."""

    @abc.abstractmethod
    async def get_creative_weights(self, line_item_id: int) -> dict[int, int]:
        """Active creative associations: creative id → weight."""

    @abc.abstractmethod
    async def read_events(self, cursor: str | None, *, limit: int = 1000) -> EventBatch:
        """Up to ``limit`` raw log messages after ``cursor`` (``None`` = from the oldest held).

        Resumable: passing the returned ``next_cursor`` never skips a message the DSP still
        holds; delivery is at least once, so messages may repeat or arrive out of order.
        """

    @abc.abstractmethod
    async def run_report(self, *, view: str = "performance_agg",
                         fields: Sequence[str] = ("campaign_id", "line_item_id", "spend",
                                                  "impression", "clicks"),
                         filters: Mapping[str, str] | None = None,
                         timeout: float = 300.0) -> list[dict[str, str]]:
        """Run an asynchronous report and return its rows (CSV cells as strings)."""

    @abc.abstractmethod
    def health(self) -> AdapterHealth:
        """The adapter's own view of the DSP connection (no I/O)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections (only those the adapter opened itself)."""
