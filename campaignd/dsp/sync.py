"""Campaign sync (spec → advertiser, campaign, creatives, one line item per cell) and the caps
it enforces, for the DSP service (``campaignd.dsp.service``) to delegate to.

Sync is idempotent end to end: every DSP object carries a deterministic ``alternative_id``
(``campaignd:<campaign>``, ``campaignd:<campaign>:<creative>``, ``campaignd:<campaign>:<cell>``)
and the adapter looks objects up by it before creating anything, so a restart — or a crash in
the middle of a sync — never duplicates a line item. The sync keeps the DSP within the spec's
caps: it pauses the line items of cells the spec no longer has (lowered to what they spent) and
scales budgets down proportionally when what the line items may cost adds up to more than the
campaign's lifetime or daily budget. Every change the sync makes to an existing line item (or to
the DSP campaign's budgets) is in the audit log before it is sent (``applying``, finished by the
DSP's answer, or after a crash by the next sync from what the DSP holds then). DSP errors are
raised to the caller: the service keeps the campaign pending and retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import anyio

from campaignd.clock import Clock
from campaignd.domain.actions import Action, action_key
from campaignd.domain.campaign import BidStrategy
from campaignd.dsp.base import (
    Campaign,
    CreativeSpec,
    DSPAdapter,
    LineItem,
    LineItemSpec,
    committed_lifetime,
    committed_today,
)
from campaignd.dsp.executor import line_item_state
from campaignd.dsp.sync_model import (
    CAMPAIGN_BUDGET,
    CampaignState,
    campaign_alt_id,
    campaign_budgets,
    cell_targeting,
    cell_timezones,
    creative_alt_id,
    initial_budgets,
    line_item_budgets,
    sync_action,
    sync_decision,
    unmanaged_costs,
)
from campaignd.errors import DSPError
from campaignd.logs import get_logger

log = get_logger("campaignd.dsp")


class SyncHost(Protocol):
    """What the sync needs of the DSP service that owns it (read at every call: the adapter
    exists only once the service runs)."""

    adapter: DSPAdapter | None
    sql: Any
    clock: Clock
    writing: anyio.Lock
    """Held by whoever changes line items (see ``DSPService.writing``)."""

    def spent_today_of(self, campaign_id: str) -> dict[str, int]: ...


class CampaignSync:
    """Syncs one campaign at a time to the DSP through its host's adapter, recording its own
    changes in its host's SQL store."""

    def __init__(self, host: SyncHost, *, advertiser_id: int | None) -> None:
        self._host = host
        self.advertiser_id = advertiser_id
        """The configured advertiser (``dsp.beeswax.advertiser_id``): every campaign's."""
        self.advertisers: dict[str, int] = {}
        """Otherwise one per spec ``advertiser`` (alternative id → DSP id)."""

    @property
    def adapter(self) -> DSPAdapter | None:
        return self._host.adapter

    @property
    def sql(self) -> Any:
        return self._host.sql

    @property
    def clock(self) -> Clock:
        return self._host.clock

    @property
    def writing(self) -> anyio.Lock:
        return self._host.writing

    async def sync(self, st: CampaignState) -> None:
        assert self.adapter is not None
        spec = st.spec
        advertiser_id = self.advertiser_id
        if advertiser_id is None:
            alt = f"campaignd:advertiser:{spec.advertiser or spec.id}"
            if alt not in self.advertisers:
                adv = await self.adapter.ensure_advertiser(alternative_id=alt,
                                                           name=spec.advertiser or spec.name)
                self.advertisers[alt] = adv.id
            advertiser_id = self.advertisers[alt]
        camp = await self.adapter.ensure_campaign(
            advertiser_id=advertiser_id, alternative_id=campaign_alt_id(spec.id),
            name=spec.name, lifetime_budget_micros=spec.lifetime_budget_micros,
            daily_budget_micros=spec.daily_budget_micros, start=spec.flight_start,
            end=spec.flight_end)
        st.dsp_campaign_id = camp.id
        # the spec's caps reach the DSP campaign: raised now (before any line item needs the
        # room), lowered once the line items are within them (the DSP refuses a campaign
        # budget below its line items')
        raised = (max(camp.lifetime_budget_micros, spec.lifetime_budget_micros),
                  None if camp.daily_budget_micros is None
                  else max(camp.daily_budget_micros, spec.daily_budget_micros))
        if raised != (camp.lifetime_budget_micros, camp.daily_budget_micros):
            camp = await self._set_campaign_budget(spec.id, camp, *raised)
        creatives = await self.adapter.ensure_creatives([
            CreativeSpec(alternative_id=creative_alt_id(spec.id, c.id),
                         advertiser_id=advertiser_id, name=c.name or c.id,
                         type=c.type,  # type: ignore[arg-type]
                         click_url=c.click_url, duration_s=c.duration_s)
            for c in spec.creatives])
        creative_ids = {c.id: cr.id for c, cr in zip(spec.creatives, creatives, strict=True)}
        lifetime, daily = initial_budgets(spec, len(st.cells))
        # Cells added to a campaign that already has line items: Beeswax refuses line items
        # whose lifetime budgets add up to more than the campaign's, so the new ones start
        # with what the others leave (possibly nothing: the reallocation funds them later).
        present = await self.adapter.get_line_items(campaign_id=camp.id)
        known = {li.alternative_id for li in present}
        added = [c for c in st.cells if c.alternative_id not in known]
        if present and added:
            free_life = spec.lifetime_budget_micros - sum(
                li.lifetime_budget_micros for li in present)
            free_daily = spec.daily_budget_micros - sum(
                li.daily_budget_micros or 0 for li in present)
            lifetime = max(0, min(lifetime, free_life // len(added)))
            daily = max(0, min(daily, free_daily // len(added), lifetime))
        # A line item created now is switched on; an existing one only if its cell was never
        # fully synced ("planned"): one synced before keeps its DSP state (paused by a person
        # or by campaignd: a restart must not undo that).
        synced_before = {c.cell_id for c in await self.sql.list_cells(spec.id)
                         if c.status != "planned"}
        items = []
        for cell in st.cells:
            bid = spec.level("bid_strategy", cell.bid_strategy)
            cre = spec.level("creative", cell.creative)
            assert isinstance(bid, BidStrategy)
            items.append(LineItemSpec(
                alternative_id=cell.alternative_id, campaign_id=camp.id, name=cell.name(),
                lifetime_budget_micros=lifetime, daily_budget_micros=daily,
                cpm_bid_micros=int(bid.cpm_bid * 1_000_000), start=spec.flight_start,
                end=spec.flight_end, type=cre.type,  # type: ignore[union-attr,arg-type]
                bid_strategy=bid.strategy, targeting=cell_targeting(spec, cell),
                user_timezones=cell_timezones(spec, cell),
                creative_weights={creative_ids[cell.creative]: 100}, active=True,
                activate_existing=cell.cell_id not in synced_before))
        # Creating (or finding) the line items can take long on a large campaign (requests at
        # the DSP's rate limit) and changes no budget the executor could be changing: the
        # executor's drains for the other campaigns go on meanwhile (this one's actions wait
        # until it is synced). From here on the sync changes budgets: one writer at a time.
        created = await self.adapter.create_line_items(items)
        async with self.writing:
            await self._finish_sync(st, camp, created, creative_ids)

    async def _finish_sync(self, st: CampaignState, camp: Campaign, created: list[LineItem],
                           creative_ids: dict[str, int]) -> None:
        spec = st.spec
        st.line_items = {cell.cell_id: li for cell, li in zip(st.cells, created, strict=True)}
        await self._record([sync_action(
            spec.id, cid, li, "create", {}, {**line_item_budgets(li), "active": li.active,
                                             "line_item_id": li.id},
            "sync: the cell's line item on the DSP (created with an equal split of the "
            "campaign's budgets, or found by its alternative id)", self.clock.now(),
            decision="sync:create") for cid, li in st.line_items.items()])
        await self.enforce_caps(st, camp.id, camp=camp)
        wanted = (spec.lifetime_budget_micros, spec.daily_budget_micros)
        if wanted != (camp.lifetime_budget_micros, camp.daily_budget_micros):
            camp = await self._set_campaign_budget(spec.id, camp, *wanted)
        await self.sql.put_dsp_ids("campaign", {spec.id: camp.id})
        await self.sql.put_dsp_ids("creative", {f"{spec.id}:{k}": v
                                                for k, v in creative_ids.items()})
        for active in (True, False):  # the DSP's state: a paused line item stays paused
            await self.sql.set_cell_line_items(
                {cid: li.id for cid, li in st.line_items.items() if bool(li.active) == active},
                status="active" if active else "paused")
        await self.sql.update_cell_budgets({cid: (li.lifetime_budget_micros,
                                                  li.daily_budget_micros)
                                            for cid, li in st.line_items.items()})
        log.info("campaign synced to the DSP", campaign=spec.id, dsp_campaign=camp.id,
                 line_items=len(created), active=sum(li.active for li in created))

    async def _set_campaign_budget(self, campaign_id: str, camp: Campaign, lifetime: int,
                                   daily: int | None) -> Campaign:
        """The DSP campaign's budgets set to the spec's: recorded in the audit log as a sync
        change (``campaign_budget``, no cell), ``applying`` before the request, like
        ``_change``; one interrupted is closed by the next sync from what the DSP holds."""
        assert self.adapter is not None
        now = self.clock.now()
        before = {"lifetime_budget_micros": camp.lifetime_budget_micros,
                  "daily_budget_micros": camp.daily_budget_micros}
        after = {"lifetime_budget_micros": lifetime, "daily_budget_micros": daily}
        decision = sync_decision(now)
        action = Action(
            key=action_key(decision, f"{campaign_id}:campaign:{camp.id}", CAMPAIGN_BUDGET,
                           after),
            decision_id=decision[:32], campaign_id=campaign_id, cell_id="", line_item_id=None,
            kind=CAMPAIGN_BUDGET, before=before, after=after, agent="sync",
            reason="sync: the DSP campaign's budgets follow the spec's (raised before line items "
                   "need the room, lowered once they are within it)", evidence={},
            created_at=now)
        action_id = (await self.sql.begin_actions([action], now=now))[action.key]
        try:
            new = await self.adapter.update_campaign_budget(camp.id, lifetime_micros=lifetime,
                                                            daily_micros=daily)
        except DSPError as exc:
            if not exc.retryable:
                await self.sql.finish_actions(
                    [(action_id, "failed", f"{type(exc).__name__}: {exc}"[:500], None)],
                    now=self.clock.now(), expect=("applying",))
            raise
        await self.sql.finish_actions([(action_id, "applied", None, campaign_budgets(new))],
                                      now=self.clock.now(), expect=("applying",))
        log.info("campaign budgets set on the DSP to the spec's", dsp_campaign=camp.id,
                 lifetime_before=camp.lifetime_budget_micros,
                 daily_before=camp.daily_budget_micros,
                 lifetime_after=new.lifetime_budget_micros, daily_after=new.daily_budget_micros)
        return new

    async def enforce_caps(self, st: CampaignState, dsp_campaign_id: int, *,
                            camp: Campaign | None = None) -> None:
        """Keep the DSP within the spec's (possibly lowered) caps: pause line items of cells
        the spec no longer has, and when the line items' budgets add up to more than the
        campaign's lifetime or daily budget, scale them down proportionally (floored, so the
        sum never exceeds the cap). Budgets within the caps are left as they are: moving money
        between cells is the reallocation agent's job."""
        assert self.adapter is not None
        spec = st.spec
        wanted = {cell.alternative_id for cell in st.cells}
        prefix = f"campaignd:{spec.id}:"
        held = await self.adapter.get_line_items(campaign_id=dsp_campaign_id)
        # what the DSP holds now is what the caps are checked against (and what the agents see)
        by_id = {li.id: li for li in held}
        for cid, li in list(st.line_items.items()):
            fresh = by_id.get(li.id)
            if fresh is not None:
                st.line_items[cid] = fresh
        await self._close_interrupted(spec.id, held, camp)
        final: list[LineItem] = []
        for li in held:
            alt = li.alternative_id or ""
            if not alt.startswith(prefix) or alt in wanted:
                # (one not campaignd's -- created in the DSP's UI, say -- is left alone, but
                # Beeswax counts it against the campaign's budgets: see ``unmanaged_costs``)
                final.append(li)
                continue
            cell = alt[len(prefix):]
            if li.active:
                li = await self._change(
                    spec.id, cell, li, "pause", {"active": True}, {"active": False},
                    "sync: the campaign spec no longer has this cell")
                log.info("paused the line item of a removed cell", line_item=li.id, cell=alt)
            floor = max(int(li.spend_micros), 0)
            if li.lifetime_budget_micros > floor or (li.daily_budget_micros or 0) > 0:
                # its unspent budget would still count against the campaign's on Beeswax
                li = await self._change(
                    spec.id, cell, li, "budget", line_item_budgets(li),
                    {"daily_budget_micros": 0, "lifetime_budget_micros": floor},
                    "sync: a removed cell's line item keeps only what it spent, so the rest "
                    "of the campaign's budget is free for the others", daily=0)
            final.append(li)
        st.retired_lifetime_micros, st.other_daily_micros = unmanaged_costs(
            st, final, self._host.spent_today_of(spec.id))
        await self._scale_within_caps(st)

    def over_caps(self, st: CampaignState) -> bool:
        """Whether what the campaign's line items may cost exceeds its caps."""
        today = self._host.spent_today_of(st.spec.id)
        items = st.line_items.items()
        return (sum(committed_lifetime(li) for _, li in items) > st.lifetime_cap()
                or sum(committed_today(li, today.get(cid, 0)) for cid, li in items)
                > st.daily_cap())

    async def _scale_within_caps(self, st: CampaignState) -> None:
        """When what the line items may cost adds up to more than the campaign's lifetime or
        daily budget (``committed_lifetime`` / ``committed_today``: a budget counts at least
        what its line item already spent), scale the part of each budget above that spend down
        proportionally (floored, so the sum never exceeds the cap; what was spent stays spent).
        A line item without a daily budget gets one when the daily cap needs it. Budgets within
        the caps are left as they are: moving money between cells is the reallocation agent's
        job."""
        spec = st.spec
        spent = self._host.spent_today_of(spec.id)
        items = list(st.line_items.items())
        life_cap, daily_cap = st.lifetime_cap(), st.daily_cap()
        today = {cid: spent.get(cid, 0) for cid, _ in items}
        life_total = sum(committed_lifetime(li) for _, li in items)
        daily_total = sum(committed_today(li, today[cid]) for cid, li in items)
        if life_total <= life_cap and daily_total <= daily_cap:
            return
        life_floor = sum(max(int(li.spend_micros), 0) for _, li in items)
        life_room = max(life_cap - life_floor, 0)
        life_extra = life_total - life_floor
        day_room = max(daily_cap - sum(today.values()), 0)
        day_extra = daily_total - sum(today.values())
        for cid, li in items:
            life, daily = li.lifetime_budget_micros, li.daily_budget_micros
            if life_total > life_cap:
                floor = max(int(li.spend_micros), 0)
                extra = committed_lifetime(li) - floor
                life = min(life, floor + (extra * life_room // life_extra if life_extra else 0))
            if daily_total > daily_cap:
                s = today[cid]
                extra = committed_today(li, s) - s
                new_daily = s + (extra * day_room // day_extra if day_extra else 0)
                daily = new_daily if daily is None else min(daily, new_daily)
            if (life, daily) != (li.lifetime_budget_micros, li.daily_budget_micros):
                st.line_items[cid] = await self._change(
                    spec.id, cid, li, "budget", line_item_budgets(li),
                    {"daily_budget_micros": int(daily or 0), "lifetime_budget_micros": life},
                    "sync: what the line items may spend added up to more than the campaign's "
                    "caps; the budgets above what each has spent scaled down proportionally",
                    daily=daily)
        log.warning("line-item budgets exceeded the campaign's caps; scaled down",
                    campaign=spec.id, lifetime_total=life_total, lifetime_cap=life_cap,
                    daily_total=daily_total, daily_cap=daily_cap)

    async def _record(self, actions: list[Action]) -> None:
        """Facts the sync found or made (line items created or found by their alternative id),
        in the audit log as applied (idempotent by key)."""
        if actions:
            await self.sql.record_actions(actions, mode="live", now=self.clock.now(),
                                          applied=True)

    async def _close_interrupted(self, campaign_id: str, held: Sequence[LineItem],
                                 camp: Campaign | None = None) -> None:
        """Close this campaign's sync changes still ``applying`` (the daemon stopped, or the
        DSP's answer was lost, between recording and acknowledgement), from what the DSP holds
        now (``held``, every line item of the campaign): ``applied`` when it holds the change,
        else ``superseded`` -- never sent again: the caps are checked afresh right after (they
        may have changed since)."""
        rows = await self.sql.interrupted_sync_actions(campaign_id)
        if not rows:
            return
        by_id = {li.id: li for li in held}
        outcomes: list[tuple[int, str, str | None, dict[str, Any] | None]] = []
        for r in rows:
            if r.action.kind == CAMPAIGN_BUDGET:
                if camp is None:
                    continue  # (closed by the next full sync, which reads the campaign)
                state: dict[str, Any] | None = campaign_budgets(camp)
            else:
                li = by_id.get(r.action.line_item_id or -1)
                state = line_item_state(li) if li is not None else None
            if state is not None and all(state.get(k) == v for k, v in r.action.after.items()):
                outcomes.append((r.id, "applied", "interrupted; the DSP holds the change",
                                 state))
            else:
                outcomes.append((r.id, "superseded", "interrupted; the DSP does not hold it (never "
                                 "applied, or changed again since): the sync checked the caps "
                                 "again", None))
        await self.sql.finish_actions(outcomes, now=self.clock.now(), expect=("applying",))
        log.info("closed interrupted sync changes", campaign=campaign_id,
                 applied=sum(1 for o in outcomes if o[1] == "applied"),
                 superseded=sum(1 for o in outcomes if o[1] == "superseded"))

    async def _change(self, campaign_id: str, cell_id: str, li: LineItem, kind: str,
                      before: dict[str, Any], after: dict[str, Any], reason: str, *,
                      daily: int | None = None) -> LineItem:
        """One change the sync makes itself (a removed cell's line item paused or emptied, a
        budget scaled within the caps): recorded as ``applying`` before the request goes out,
        ``applied`` with the DSP's answer, ``failed`` on a DSP error (re-raised: the sync stays
        pending and is retried). A crash in between, or a transient error, leaves the row
        ``applying`` until the sync next enforces the caps (``_close_interrupted``), so no
        change reaches the DSP unrecorded. ``daily``: a budget change's daily budget as sent
        (``None``: the line item has none and keeps none; ``after`` records it as 0)."""
        assert self.adapter is not None
        now = self.clock.now()
        action = sync_action(campaign_id, cell_id, li, kind, before, after, reason, now,
                             decision=sync_decision(now))
        action_id = (await self.sql.begin_actions([action], now=now))[action.key]
        try:
            if kind == "pause":
                new = await self.adapter.set_active(li.id, False)
            else:
                new = await self.adapter.update_budget(
                    li.id, lifetime_micros=int(after["lifetime_budget_micros"]),
                    daily_micros=daily)
        except DSPError as exc:
            if not exc.retryable:  # refused: the DSP did not apply it
                await self.sql.finish_actions(
                    [(action_id, "failed", f"{type(exc).__name__}: {exc}"[:500], None)],
                    now=self.clock.now(), expect=("applying",))
            # else (a timeout, a lost answer) the DSP may hold it: the row stays "applying"
            # until the sync's retry closes it from what the DSP holds then
            raise
        await self.sql.finish_actions(
            [(action_id, "applied", None, line_item_state(new))],
            now=self.clock.now(), expect=("applying",))
        return new
