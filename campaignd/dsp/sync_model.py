"""What the campaign sync works on, kept pure (no I/O, no clock reads): the deterministic
``alternative_id`` of every DSP object campaignd creates, the DSP targeting and initial budgets
of a cell's line item, campaignd's view of one campaign on the DSP (``CampaignState``, with the
caps left for campaignd's line items), what the line items campaignd does not manage may cost,
and the audit-log actions that record the sync's own changes. Money in micros.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from campaignd.domain.actions import Action, action_key
from campaignd.domain.campaign import Audience, CampaignSpec, Cell, Daypart, Platform
from campaignd.dsp.base import (
    Campaign,
    LineItem,
    Targeting,
    committed_lifetime,
    committed_today,
)

CAMPAIGN_BUDGET = "campaign_budget"
"""The kind of the sync's change to the DSP campaign's own budgets (an action of no cell)."""


def campaign_alt_id(campaign_id: str) -> str:
    return f"campaignd:{campaign_id}"


def creative_alt_id(campaign_id: str, creative_id: str) -> str:
    return f"campaignd:{campaign_id}:{creative_id}"


def cell_targeting(spec: CampaignSpec, cell: Cell) -> Targeting:
    """The DSP targeting of one cell: its audience's ZIPs and signals, its daypart's hours of
    the week (viewer-local), its platform's app bundles and device types."""
    aud = spec.level("audience", cell.audience)
    dp = spec.level("daypart", cell.daypart)
    pf = spec.level("platform", cell.platform)
    assert isinstance(aud, Audience) and isinstance(dp, Daypart) and isinstance(pf, Platform)
    return Targeting(zips=aud.zips, segments=aud.signals, hours_of_week=dp.hours_of_week(),
                     app_bundles=pf.app_bundles, device_types=pf.device_types)


US_TIMEZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Phoenix",
                "America/Los_Angeles", "America/Anchorage", "Pacific/Honolulu")
"""Where a national (no ZIP) audience's viewers are."""


def cell_timezones(spec: CampaignSpec, cell: Cell) -> tuple[str, ...]:
    """The time zones of a cell's viewers (its audience's ZIPs'), when its daypart restricts
    the viewer-local hours; () when it does not (no hour targeting, nothing to pace by)."""
    from campaignd.domain.geo import zip_timezone

    dp = spec.level("daypart", cell.daypart)
    aud = spec.level("audience", cell.audience)
    assert isinstance(dp, Daypart) and isinstance(aud, Audience)
    if not dp.hours_of_week() or len(set(dp.hours_of_week())) >= 168:
        return ()
    zones = {zip_timezone(z) for z in aud.zips}
    return tuple(sorted(zones)) if zones else US_TIMEZONES


def initial_budgets(spec: CampaignSpec, n_cells: int) -> tuple[int, int]:
    """An equal split of the campaign's budgets (micros, floored: the sum never exceeds the
    campaign's caps). The reallocation agent moves money from there."""
    return spec.lifetime_budget_micros // n_cells, spec.daily_budget_micros // n_cells


@dataclass(slots=True)
class CampaignState:
    spec: CampaignSpec
    cells: list[Cell]
    dsp_campaign_id: int | None = None
    line_items: dict[str, LineItem] = field(default_factory=dict)
    """cell id → line item as last read from the DSP."""
    synced: bool = False
    error: str | None = None
    retired_lifetime_micros: int = 0
    """Lifetime budgets of the campaign's line items whose cells the spec no longer has (paused,
    lowered to what they spent) and of line items campaignd did not create: Beeswax counts them
    against the campaign's budget."""
    other_daily_micros: int = 0
    """What the line items campaignd did not create may cost the campaign's budget day."""

    def daily_cap(self) -> int:
        """The campaign's daily budget left for campaignd's line items."""
        return max(self.spec.daily_budget_micros - self.other_daily_micros, 0)

    def lifetime_cap(self) -> int:
        """The campaign's lifetime budget left for campaignd's line items."""
        return max(self.spec.lifetime_budget_micros - self.retired_lifetime_micros, 0)


def unmanaged_costs(st: CampaignState, held: Sequence[LineItem],
                    spent_today: Mapping[str, int]) -> tuple[int, int]:
    """What the campaign's line items that campaignd does not manage may cost, (lifetime, daily)
    micros: those it did not create (Beeswax counts them against the campaign's budgets) and
    those of cells the spec no longer has (paused: what they spent, today's in the daily cap;
    ``spent_today`` by cell id)."""
    prefix = f"campaignd:{st.spec.id}:"
    wanted = {cell.alternative_id for cell in st.cells}
    lifetime = daily = 0
    for li in held:
        alt = li.alternative_id or ""
        ours = alt.startswith(prefix)
        if ours and alt in wanted:
            continue
        lifetime += committed_lifetime(li)
        today = spent_today.get(alt[len(prefix):], 0) if ours else 0
        daily += committed_today(li, today) if li.active else today
    return lifetime, daily


def campaign_budgets(camp: Campaign) -> dict[str, int | None]:
    return {"lifetime_budget_micros": camp.lifetime_budget_micros,
            "daily_budget_micros": camp.daily_budget_micros}


def line_item_budgets(li: LineItem) -> dict[str, int]:
    return {"daily_budget_micros": int(li.daily_budget_micros or 0),
            "lifetime_budget_micros": int(li.lifetime_budget_micros)}


def sync_decision(now: datetime) -> str:
    """A new decision id for one of the sync's changes: its time to the second and 8 random
    hex digits, within the 32 characters a decision id has (``sync:20261203T210800:1a2b3c4d``;
    the time in full cut the random part off, so changes of the same second shared one)."""
    return f"sync:{now:%Y%m%dT%H%M%S}:{uuid.uuid4().hex[:8]}"


def sync_action(campaign_id: str, cell_id: str, li: LineItem, kind: str,
                before: dict[str, Any], after: dict[str, Any], reason: str, now: datetime,
                *, decision: str | None = None) -> Action:
    """One of the sync's facts or changes about a cell's line item, as an audit-log action."""
    # (one sync's facts share this decision; the same sync recorded again has the same keys)
    decision = decision or f"sync:{now:%Y%m%dT%H%M%S.%f}"
    # a line item is created once, whatever its budgets are when a later sync finds it again
    basis = {"line_item_id": li.id} if kind == "create" else after
    return Action(key=action_key(decision, f"{campaign_id}:{cell_id}:{li.id}", kind, basis),
                  decision_id=decision[:32], campaign_id=campaign_id, cell_id=cell_id,
                  line_item_id=li.id, kind=kind, before=before, after=after, agent="sync",
                  reason=reason, evidence={}, created_at=now)
