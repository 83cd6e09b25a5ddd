"""The seam between the sandbox's Beeswax-compatible server and its ground-truth market.

The server (``server.py``) keeps Beeswax's objects (campaigns, line items, creatives,
associations, targeting expressions) and tells the market, in DSP terms, what each line item may
buy: a ``LineItemConfig``. The market (``market.py``) knows nothing of campaignd's cells: it
decides delivery from targeting (ZIPs, segments, viewer hours, app bundles), bids, budgets and
creatives, exactly as a real DSP would, and reports what happened as ``MarketEvent`` values (one
per impression, activity, click or conversion) or as aggregated ``StepTotals``.

The simulator (``campaignd.sim``) drives the same market in-process with the same
``LineItemConfig`` values, so what is simulated is what the sandbox serves.

Money is integer micros (1 currency unit = 1,000,000); times are aware UTC datetimes or integer
microseconds since the epoch (``*_usecs``), as Beeswax's logs use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

import numpy as np

ACTIVITY_TYPES: tuple[str, ...] = ("START", "Q1", "MID", "Q3", "COMPLETE", "VIEWABILITY")


@dataclass(slots=True)
class LineItemConfig:
    """What the DSP knows about one line item, in the terms the market needs.

    ``None`` for a targeting field means "not restricted". ``creatives`` maps a creative key (the
    Beeswax creative's ``alternative_id``; for campaignd, the creative level id) to its rotation
    weight, for active associations only; a line item with no creative cannot deliver.
    """

    line_item_id: int
    campaign_id: int
    active: bool
    lifetime_budget_micros: int
    daily_budget_micros: int | None
    cpm_bid_micros: int
    creatives: dict[str, int] = field(default_factory=dict)
    zips: frozenset[str] | None = None
    segments: frozenset[str] | None = None
    hours_of_week: frozenset[int] | None = None
    """Hour-of-week buckets in the viewer's local time, 0 = Sunday 00:00–00:59."""
    app_bundles: frozenset[str] | None = None
    start: datetime | None = None
    end: datetime | None = None
    alternative_id: str | None = None
    campaign_daily_budget_micros: int | None = None
    """The campaign's daily budget: its line items together stop buying for the day once they
    spent it (as Beeswax does); None = no campaign-level daily cap."""


@dataclass(slots=True, frozen=True)
class ImpressionEvent:
    ts_usecs: int
    auction_id: str
    campaign_id: int
    line_item_id: int
    creative_key: str
    zip: str
    app_bundle: str
    device_type: int
    user_id: str
    bid_price_micros: int
    """The line item's bid as a CPM (micros per thousand impressions, as line items set it)."""
    win_price_micros: int
    """What this one impression cost (micros)."""
    user_time_of_week: int
    """Minutes since Sunday 00:00 in the viewer's local time (Beeswax's convention)."""
    measurable: bool = True
    """Whether viewability could be measured (the win log's ``is_measurable``)."""
    kind: Literal["impression"] = "impression"


@dataclass(slots=True, frozen=True)
class ActivityEvent:
    ts_usecs: int
    auction_id: str
    campaign_id: int
    line_item_id: int
    creative_key: str
    type: str
    """One of ``ACTIVITY_TYPES``."""
    kind: Literal["activity"] = "activity"


@dataclass(slots=True, frozen=True)
class ClickEvent:
    ts_usecs: int
    auction_id: str
    campaign_id: int
    line_item_id: int
    creative_key: str
    kind: Literal["click"] = "click"


@dataclass(slots=True, frozen=True)
class ConversionEvent:
    ts_usecs: int
    conversion_id: str
    auction_id: str
    """The attributed (last-touch) impression's auction id."""
    campaign_id: int
    line_item_id: int
    creative_key: str
    value_micros: int
    user_id: str
    kind: Literal["conversion"] = "conversion"


MarketEvent = ImpressionEvent | ActivityEvent | ClickEvent | ConversionEvent


@dataclass(slots=True)
class StepTotals:
    """Aggregated delivery for one ``advance`` call, aligned with ``line_item_ids``.

    Every array is int64 (counts and micros) and has one entry per line item.
    """

    line_item_ids: np.ndarray
    impressions: np.ndarray
    spend_micros: np.ndarray
    measurable: np.ndarray
    viewable: np.ndarray
    starts: np.ndarray
    completes: np.ndarray
    clicks: np.ndarray
    conversions: np.ndarray
    conversion_value_micros: np.ndarray


class MarketProtocol(Protocol):
    """A ground-truth market. Deterministic for a given scenario, seed and call sequence."""

    @property
    def now(self) -> datetime:
        """The market's clock (aware UTC); moves only through ``advance``."""
        ...

    def configure(self, config: LineItemConfig) -> None:
        """Create or replace a line item's configuration; its delivered totals are kept."""
        ...

    def remove(self, line_item_id: int) -> None:
        """Stop delivering a line item (deleted on the DSP)."""
        ...

    def advance(self, until: datetime, *, emit_events: bool = True) -> tuple[StepTotals,
                                                                           Sequence[MarketEvent]]:
        """Deliver from ``now`` to ``until``; return the totals and (if asked) the events.

        Enforces what a DSP enforces: no line item spends beyond its lifetime budget or its daily
        budget (paced over the day), inactive or out-of-flight line items and line items without
        an active creative do not deliver, targeting restricts delivery. Conversions may arrive
        later than the impression they are attributed to.
        """
        ...

    def delivered(self, ids: Iterable[int] | None = None) -> Mapping[int, Mapping[str, int]]:
        """Lifetime totals per line item id (of ``ids`` only, when given; unknown ids are left
        out): ``impressions``, ``spend_micros``, ``clicks``, ``conversions``,
        ``conversion_value_micros``, ``completes``, ``viewable``, ``measurable``."""
        ...
