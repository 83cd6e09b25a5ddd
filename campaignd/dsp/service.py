"""The DSP as a daemon component: the adapter (and, in sandbox mode, the in-process sandbox),
campaign sync (spec → advertiser, campaign, creatives, one line item per cell) and
reconciliation (read line items back and compare with what campaignd believes).

Sync is idempotent end to end: every DSP object carries a deterministic ``alternative_id``
(``campaignd:<campaign>``, ``campaignd:<campaign>:<creative>``, ``campaignd:<campaign>:<cell>``)
and the adapter looks objects up by it before creating anything, so a restart — or a crash in
the middle of a sync — never duplicates a line item. A sync that fails on a DSP error is kept
pending and retried by the reconciliation job; the daemon stays up and reports the problem.
Every change the sync makes to an existing line item is in the audit log before it is sent
(``applying``, finished by the DSP's answer, or after a crash by the next sync from what the DSP
holds then).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import TaskStatus

from campaignd.clock import Clock
from campaignd.domain.actions import Action, action_key
from campaignd.domain.campaign import Audience, BidStrategy, CampaignSpec, Cell, Daypart, Platform
from campaignd.dsp.base import (
    Campaign,
    CreativeSpec,
    DSPAdapter,
    LineItem,
    LineItemSpec,
    Targeting,
    committed_lifetime,
    committed_today,
)
from campaignd.dsp.executor import line_item_state
from campaignd.errors import DSPError
from campaignd.logs import get_logger
from campaignd.settings import Settings

log = get_logger("campaignd.dsp")


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


def initial_budgets(spec: CampaignSpec, n_cells: int) -> tuple[int, int]:
    """An equal split of the campaign's budgets (micros, floored: the sum never exceeds the
    campaign's caps). The reallocation agent moves money from there."""
    return spec.lifetime_budget_micros // n_cells, spec.daily_budget_micros // n_cells


@dataclass(slots=True)
class _CampaignState:
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


class DSPService:
    def __init__(self, settings: Settings, sql: Any, *, clock: Clock,
                 on_synced: Callable[[str, dict[str, int]], None] | None = None) -> None:
        self.settings = settings
        self.on_synced = on_synced
        """Called with (campaign id, cell id → line item id) after every successful sync."""
        self.sql = sql
        self.clock = clock
        self.adapter: DSPAdapter | None = None
        self.sandbox: Any = None
        self.sandbox_url: str | None = None
        self.campaigns: dict[str, _CampaignState] = {}
        self.last_reconcile: dict[str, Any] | None = None
        self._advertiser_id: int | None = settings.dsp.beeswax.advertiser_id
        """The configured advertiser (``dsp.beeswax.advertiser_id``): every campaign's."""
        self._advertisers: dict[str, int] = {}
        """Otherwise one per spec ``advertiser`` (alternative id → DSP id)."""
        self.spent_today: Callable[[str], Mapping[str, int]] | None = None
        """Per campaign: cell → what its line item spent today (the account's budget day), as
        the pipeline counted it (set by the daemon). A line item costs its campaign's day the
        most of its daily budget and this (``committed_today``): the caps count that."""
        self.writing = anyio.Lock()
        """Held by whoever changes line items (the sync and its cap enforcement, the executor's
        drain), so the sync's own changes are never picked up by the executor while in flight
        and the two never send conflicting budgets at once."""

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        async with anyio.create_task_group() as tg:
            if s.dsp.adapter == "sandbox":
                self.sandbox_url = await tg.start(self._run_sandbox)
                base_url, email = self.sandbox_url, s.dsp.sandbox.email
                password: Any = s.dsp.sandbox.password
                rps, timeout, retries = 200.0, 10.0, 6
            else:
                b = s.dsp.beeswax
                base_url, email, password = b.base_url, b.email, b.password
                rps, timeout, retries = b.rate_limit_rps, b.timeout_s, b.max_retries + 1
            from campaignd.dsp.beeswax import BeeswaxAdapter
            b = s.dsp.beeswax
            self.adapter = BeeswaxAdapter(
                email=email, password=password, base_url=base_url, rate_limit_per_s=rps,
                rate_burst=max(1, int(rps)), max_attempts=retries, timeout_s=timeout,
                breaker_threshold=b.breaker_failures, breaker_cooldown_s=b.breaker_cooldown_s,
                account_timezone=s.dsp.account_timezone)
            task_status.started()
            # The adapter outlives this task: the daemon closes it (``aclose``) after every
            # component that uses it has stopped.
            await self._probe_open_circuit(b.breaker_cooldown_s)

    async def _probe_open_circuit(self, every_s: float) -> None:
        """An open circuit makes the daemon unhealthy (``/healthz`` 503) until a call gets
        through -- and without a probe the next call could be the next reconciliation
        (``dsp.reconcile_s``, 5 min), so a DSP blip of a few seconds kept the daemon unhealthy
        for minutes after the DSP was back. Once the cooldown has passed, one cheap read (one
        known line item) closes it again or re-opens it."""
        while True:
            await anyio.sleep(every_s)
            adapter = self.adapter
            if adapter is None or adapter.health().circuit == "closed":
                continue
            probe = next((li.id for st in self.campaigns.values()
                          for li in st.line_items.values()), None)
            if probe is None:
                continue  # (nothing synced yet: reconciliation retries the sync)
            with contextlib.suppress(DSPError):
                await adapter.get_line_items([probe])

    async def _run_sandbox(self, *, task_status: TaskStatus[str]) -> None:
        from campaignd.dsp.sandbox.faults import FaultConfig
        from campaignd.dsp.sandbox.market import Market
        from campaignd.dsp.sandbox.scenarios import load_scenario
        from campaignd.dsp.sandbox.service import SandboxService

        sb = self.settings.dsp.sandbox
        scenario = load_scenario(sb.scenario)
        f = sb.faults
        faults = FaultConfig(seed=f.seed, rate_429=f.rate_limit_rate, max_rps=f.max_rps,
                             retry_after_s=f.retry_after_s, rate_5xx=f.server_error_rate,
                             rate_slow=f.slow_rate, slow_seconds=f.slow_s, rate_drop=f.drop_rate,
                             rate_session_expiry=f.session_expiry_rate,
                             rate_duplicate=f.duplicate_rate, rate_reorder=f.reorder_rate,
                             rate_malformed=f.malformed_rate)
        # The market starts at the daemon's "now" (the scaled sandbox clock), so the campaign's
        # flight and the viewers' local dayparts line up with what the daemon sees.
        # It stands in for the user's account: its budget day is dsp.account_timezone's.
        market = Market(scenario, seed=sb.seed, start=self.clock.now(),
                        account_timezone=self.settings.dsp.account_timezone)
        push: dict[str, Any] = {}
        if self.settings.receiver_enabled:
            # The market pushes its log stream to the daemon's receiver, as Beeswax does.
            r = self.settings.receiver
            host = "127.0.0.1" if r.host in ("0.0.0.0", "", "::") else r.host
            host = f"[{host}]" if ":" in host else host
            assert r.token is not None
            push = {"push_url": f"http://{host}:{r.port}{r.path}",
                    "push_token": r.token.get_secret_value()}
        self.sandbox = SandboxService(market, email=sb.email,
                                      password=sb.password.get_secret_value(),
                                      time_scale=sb.time_scale, faults=faults, host=sb.host,
                                      port=sb.port, **push)
        await self.sandbox.run(task_status=task_status)

    async def aclose(self) -> None:
        if self.adapter is not None:
            await self.adapter.aclose()

    # --- sync ----------------------------------------------------------------------------

    async def sync_campaign(self, spec: CampaignSpec, cells: Sequence[Cell]) -> dict[str, int]:
        """Make the DSP hold the campaign and one line item per cell; return cell → line item.

        On a DSP error the campaign stays pending (retried by ``reconcile``) and what was
        synced so far is returned.
        """
        st = self.campaigns.setdefault(spec.id, _CampaignState(spec, list(cells)))
        st.spec, st.cells = spec, list(cells)
        try:
            await self._sync(st)
            st.synced, st.error = True, None
        except DSPError as exc:
            st.error = f"{type(exc).__name__}: {exc}"
            log.error("campaign sync failed; will retry", campaign=spec.id, error=st.error)
        mapping = {cid: li.id for cid, li in st.line_items.items()}
        if st.synced and self.on_synced is not None:
            self.on_synced(spec.id, mapping)
        return mapping

    async def _sync(self, st: _CampaignState) -> None:
        assert self.adapter is not None
        spec = st.spec
        advertiser_id = self._advertiser_id
        if advertiser_id is None:
            alt = f"campaignd:advertiser:{spec.advertiser or spec.id}"
            if alt not in self._advertisers:
                adv = await self.adapter.ensure_advertiser(alternative_id=alt,
                                                           name=spec.advertiser or spec.name)
                self._advertisers[alt] = adv.id
            advertiser_id = self._advertisers[alt]
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
                creative_weights={creative_ids[cell.creative]: 100}, active=True,
                activate_existing=cell.cell_id not in synced_before))
        # Creating (or finding) the line items can take long on a large campaign (requests at
        # the DSP's rate limit) and changes no budget the executor could be changing: the
        # executor's drains for the other campaigns go on meanwhile (this one's actions wait
        # until it is synced). From here on the sync changes budgets: one writer at a time.
        created = await self.adapter.create_line_items(items)
        async with self.writing:
            await self._finish_sync(st, camp, created, creative_ids)

    async def _finish_sync(self, st: _CampaignState, camp: Campaign, created: list[LineItem],
                           creative_ids: dict[str, int]) -> None:
        spec = st.spec
        st.line_items = {cell.cell_id: li for cell, li in zip(st.cells, created, strict=True)}
        await self._record([_sync_action(
            spec.id, cid, li, "create", {}, {**_budgets(li), "active": li.active,
                                             "line_item_id": li.id},
            "sync: the cell's line item on the DSP (created with an equal split of the "
            "campaign's budgets, or found by its alternative id)", self.clock.now(),
            decision="sync:create") for cid, li in st.line_items.items()])
        await self._enforce_caps(st, camp.id, camp=camp)
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
        decision = f"sync:{now.isoformat()}:{uuid.uuid4().hex[:8]}"
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
        await self.sql.finish_actions([(action_id, "applied", None, _campaign_budgets(new))],
                                      now=self.clock.now(), expect=("applying",))
        log.info("campaign budgets set on the DSP to the spec's", dsp_campaign=camp.id,
                 lifetime_before=camp.lifetime_budget_micros,
                 daily_before=camp.daily_budget_micros,
                 lifetime_after=new.lifetime_budget_micros, daily_after=new.daily_budget_micros)
        return new

    async def _enforce_caps(self, st: _CampaignState, dsp_campaign_id: int, *,
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
                # Beeswax counts it against the campaign's budgets: see ``_others``)
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
                    spec.id, cell, li, "budget", _budgets(li),
                    {"daily_budget_micros": 0, "lifetime_budget_micros": floor},
                    "sync: a removed cell's line item keeps only what it spent, so the rest "
                    "of the campaign's budget is free for the others", daily=0)
            final.append(li)
        st.retired_lifetime_micros, st.other_daily_micros = _others(
            st, final, self.spent_today_of(spec.id))
        await self._scale_within_caps(st)

    def spent_today_of(self, campaign_id: str) -> dict[str, int]:
        """Each cell's spend today (micros, >= 0) as the daemon's registry has it (empty when
        no provider is set)."""
        spent = self.spent_today(campaign_id) if self.spent_today is not None else {}
        return {cid: max(int(v), 0) for cid, v in spent.items()}

    def _over_caps(self, st: _CampaignState) -> bool:
        """Whether what the campaign's line items may cost exceeds its caps."""
        today = self.spent_today_of(st.spec.id)
        items = st.line_items.items()
        return (sum(committed_lifetime(li) for _, li in items) > st.lifetime_cap()
                or sum(committed_today(li, today.get(cid, 0)) for cid, li in items)
                > st.daily_cap())

    async def _scale_within_caps(self, st: _CampaignState) -> None:
        """When what the line items may cost adds up to more than the campaign's lifetime or
        daily budget (``committed_lifetime`` / ``committed_today``: a budget counts at least
        what its line item already spent), scale the part of each budget above that spend down
        proportionally (floored, so the sum never exceeds the cap; what was spent stays spent).
        A line item without a daily budget gets one when the daily cap needs it. Budgets within
        the caps are left as they are: moving money between cells is the reallocation agent's
        job."""
        spec = st.spec
        spent = self.spent_today_of(spec.id)
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
                    spec.id, cid, li, "budget", _budgets(li),
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
                state: dict[str, Any] | None = _campaign_budgets(camp)
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
        action = _sync_action(campaign_id, cell_id, li, kind, before, after, reason, now,
                              decision=f"sync:{now.isoformat()}:{uuid.uuid4().hex[:8]}")
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

    # --- reconciliation ------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Retry pending syncs, then read every line item back; return the number of line items
        whose DSP state differs from campaignd's (missing, paused unexpectedly, budget drift)."""
        assert self.adapter is not None
        drift = 0
        details: list[str] = []
        for st in self.campaigns.values():
            if not st.synced:
                await self.sync_campaign(st.spec, st.cells)
                if not st.synced:
                    continue
            known_now = dict(st.line_items)
            changed: dict[str, LineItem] = {}
            more = False  # line items campaignd does not manage take more than they did
            if st.dsp_campaign_id is not None:
                # the campaign's whole list (about as many requests as reading the known ids in
                # batches): line items created in the DSP's UI count against its caps too
                listed = await self.adapter.get_line_items(campaign_id=st.dsp_campaign_id)
                current = {li.id: li for li in listed}
                others = _others(st, listed, self.spent_today_of(st.spec.id))
                if others[0] > st.retired_lifetime_micros or others[1] > st.other_daily_micros:
                    # (taking less, e.g. one without a daily budget spending its lifetime
                    # budget, is only counted)
                    drift += 1
                    details.append(
                        f"{st.spec.id}: line items campaignd does not manage now take "
                        f"{others[1]} micros of the daily budget and {others[0]} of the "
                        f"lifetime one (were {st.other_daily_micros} and "
                        f"{st.retired_lifetime_micros})")
                    more = True
                st.retired_lifetime_micros, st.other_daily_micros = others
            else:
                ids = [li.id for li in known_now.values()]
                current = {li.id: li for li in await self.adapter.get_line_items(ids)}
            for cid, known in known_now.items():
                if st.line_items.get(cid) is not known:
                    continue  # the executor changed it while we read: its ack is newer
                now = current.get(known.id)
                if now is None:
                    drift += 1
                    details.append(f"{cid}: line item {known.id} missing on the DSP")
                    continue
                if (now.active != known.active
                        or now.lifetime_budget_micros != known.lifetime_budget_micros
                        or now.daily_budget_micros != known.daily_budget_micros):
                    drift += 1
                    details.append(f"{cid}: line item {known.id} changed outside campaignd")
                    changed[cid] = now
                st.line_items[cid] = now
            if changed or (more and self._over_caps(st)):
                # budgets changed outside campaignd (or its other line items) are the DSP's
                # truth now, but never above the campaign's caps: scaled back down (and
                # recorded) as at sync
                spec = st.spec
                if st.dsp_campaign_id is not None and self._over_caps(st):
                    try:
                        async with self.writing:
                            await self._enforce_caps(st, st.dsp_campaign_id)
                    except DSPError as exc:
                        # the next reconciliation runs the whole sync again, which closes
                        # what this left open and checks the caps afresh
                        st.synced, st.error = False, f"{type(exc).__name__}: {exc}"
                        log.error("scaling budgets back within the caps failed; will retry",
                                  campaign=spec.id, error=st.error)
                    changed = dict(st.line_items)  # every line item may have been scaled
                changed = {cid: st.line_items[cid] for cid in changed}
                await self.sql.update_cell_budgets({
                    cid: (li.lifetime_budget_micros, li.daily_budget_micros)
                    for cid, li in changed.items()})
        self.last_reconcile = {"at": datetime.now(UTC).isoformat(), "drift": drift,
                               "details": details[:20]}
        if drift:
            log.warning("reconciliation found drift", drift=drift, examples=details[:5])
        return drift

    # --- read model ----------------------------------------------------------------------

    def line_item_cells(self, campaign_id: str) -> dict[int, str]:
        st = self.campaigns.get(campaign_id)
        return {} if st is None else {li.id: cid for cid, li in st.line_items.items()}

    def active_count(self, campaign_id: str) -> int:
        st = self.campaigns.get(campaign_id)
        return 0 if st is None else sum(1 for li in st.line_items.values() if li.active)

    def status(self) -> dict[str, Any]:
        pending = [cid for cid, st in self.campaigns.items() if not st.synced]
        detail = "ok"
        healthy = True
        if self.adapter is None:
            healthy, detail = False, "starting"
        else:
            h = self.adapter.health()
            if not h.healthy:
                healthy, detail = False, f"circuit {h.circuit}; last error: {h.last_error}"
            requests, retries, rate_limited = h.requests, h.retries, h.rate_limited
        if pending:
            healthy = False
            errors = "; ".join(f"{cid}: {self.campaigns[cid].error}" for cid in pending)
            detail = f"campaign sync pending ({errors})"
        out: dict[str, Any] = {
            "adapter": self.settings.dsp.adapter, "healthy": healthy, "detail": detail,
            "line_items": sum(len(st.line_items) for st in self.campaigns.values()),
            "base_url": self.sandbox_url or self.settings.dsp.beeswax.base_url,
            "last_reconcile": self.last_reconcile,
        }
        if self.adapter is not None:
            out.update(requests=requests, retries=retries, rate_limited=rate_limited)
        if self.sandbox is not None:
            out["sandbox"] = self.sandbox_truth()
        return out

    def sandbox_truth(self) -> dict[str, Any]:
        """What the in-process sandbox knows: its market's delivered totals (summed over every
        line item) and its log feed's extent. Read in the same event-loop step as the
        ingestor's cursor, so ``feed.next_seq == cursor`` means every delivered event's message
        has been read."""
        state = self.sandbox.state
        market = state.market
        return {"delivered": state.delivered_totals(),
                "market_now": market.now.isoformat() if market is not None else None,
                "feed": {"first_seq": state.feed.first_seq, "next_seq": state.feed.next_seq},
                "push": state.push}


CAMPAIGN_BUDGET = "campaign_budget"
"""The kind of the sync's change to the DSP campaign's own budgets (an action of no cell)."""


def _others(st: _CampaignState, held: Sequence[LineItem],
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


def _campaign_budgets(camp: Campaign) -> dict[str, int | None]:
    return {"lifetime_budget_micros": camp.lifetime_budget_micros,
            "daily_budget_micros": camp.daily_budget_micros}


def _budgets(li: LineItem) -> dict[str, int]:
    return {"daily_budget_micros": int(li.daily_budget_micros or 0),
            "lifetime_budget_micros": int(li.lifetime_budget_micros)}


def _sync_action(campaign_id: str, cell_id: str, li: LineItem, kind: str,
                 before: dict[str, Any], after: dict[str, Any], reason: str, now: datetime,
                 *, decision: str | None = None) -> Action:
    decision = decision or f"sync:{now.isoformat()}"
    # a line item is created once, whatever its budgets are when a later sync finds it again
    basis = {"line_item_id": li.id} if kind == "create" else after
    return Action(key=action_key(decision, f"{campaign_id}:{cell_id}:{li.id}", kind, basis),
                  decision_id=decision[:32], campaign_id=campaign_id, cell_id=cell_id,
                  line_item_id=li.id, kind=kind, before=before, after=after, agent="sync",
                  reason=reason, evidence={}, created_at=now)


async def close_quietly(adapter: DSPAdapter | None) -> None:
    if adapter is not None:
        with contextlib.suppress(Exception):
            await adapter.aclose()
