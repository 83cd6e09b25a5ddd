"""The DSP service's campaign sync over real parts (the sandbox's Beeswax API over loopback, the
Beeswax adapter, SQL): what a restart or a changed spec does to line items already there."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from campaignd.clock import VirtualClock
from campaignd.domain.campaign import CampaignSpec, Cell, atomize
from campaignd.dsp.base import LineItemSpec
from campaignd.dsp.sandbox import SandboxService
from campaignd.dsp.service import DSPService, campaign_alt_id
from campaignd.errors import DSPError
from campaignd.settings import load_settings
from campaignd.stores.sql import SqlStore

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SEED_SPEC_PATH = Path(__file__).parents[2] / "config" / "campaigns" / "madhive_12345.toml"
EMAIL, PASSWORD = "ops@campaignd.test", "pw"
M = 1_000_000


def small(spec: CampaignSpec) -> CampaignSpec:
    return dataclasses.replace(spec, daily_budget=Decimal("60"), lifetime_budget=Decimal("600"))


async def small_campaign(sql: SqlStore, seed_spec: CampaignSpec) -> tuple[CampaignSpec, list[Cell]]:
    """The small campaign of these tests (6 cells, $60/day, $600) as SQL holds it."""
    spec = small(seed_spec)
    cells = atomize(spec)[:6]
    await sql.upsert_campaign(spec, cells, now=NOW)
    return spec, cells


@asynccontextmanager
async def sandbox_url() -> AsyncIterator[str]:
    sandbox = SandboxService(None, email=EMAIL, password=PASSWORD, log_level="critical")
    async with anyio.create_task_group() as tg:
        yield await tg.start(sandbox.run)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def service(sql: SqlStore, url: str) -> AsyncIterator[DSPService]:
    """A DSP service (one daemon's life: a second one is a restart)."""
    settings = load_settings(None, environ={
        "CAMPAIGND_DSP__ADAPTER": "beeswax", "CAMPAIGND_DSP__BEESWAX__BASE_URL": url,
        "CAMPAIGND_DSP__BEESWAX__EMAIL": EMAIL, "CAMPAIGND_DSP__BEESWAX__PASSWORD": PASSWORD,
        "CAMPAIGND_DSP__BEESWAX__RATE_LIMIT_RPS": "1000",
        "CAMPAIGND_DSP__BEESWAX__MAX_RETRIES": "0", "CAMPAIGND_RECEIVER__ENABLED": "false"})
    svc = DSPService(settings, sql, clock=VirtualClock(NOW))
    async with anyio.create_task_group() as tg:
        await tg.start(svc.run)
        try:
            yield svc
        finally:
            await svc.aclose()
            tg.cancel_scope.cancel()


async def test_a_restart_keeps_a_paused_line_item_paused(sql_store: SqlStore,
                                                        seed_spec: CampaignSpec) -> None:
    spec, cells = await small_campaign(sql_store, seed_spec)
    async with sandbox_url() as url:
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, cells)
            li = svc.campaigns[spec.id].line_items[cells[0].cell_id]
            assert li.active
            assert svc.adapter is not None
            await svc.adapter.set_active(li.id, False)  # a person pauses it on the DSP
        async with service(sql_store, url) as svc:  # campaignd restarts
            await svc.sync_campaign(spec, cells)
            assert svc.campaigns[spec.id].synced
            assert svc.adapter is not None
            (now,) = await svc.adapter.get_line_items([li.id])
            assert now.active is False
            others = await svc.adapter.get_line_items(
                [x.id for c, x in svc.campaigns[spec.id].line_items.items()
                 if c != cells[0].cell_id])
            assert all(x.active for x in others)
    status = {c.cell_id: c.status for c in await sql_store.list_cells(spec.id)}
    assert status[cells[0].cell_id] == "paused" and status[cells[1].cell_id] == "active"


async def test_an_exclusion_rule_and_a_restart_pause_one_cells_line_item(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """What an undo of a line item's creation tells a person to do instead (there is no
    command that pauses one line item): an [[exclusions]] rule naming the cell's five levels,
    then a restart. The sync pauses that line item alone and lowers its budgets to what it
    spent."""
    from campaignd.domain.campaign import Exclusion

    spec, cells = await small_campaign(sql_store, seed_spec)
    gone = cells[0]
    rule = Exclusion(tuple(sorted((d, getattr(gone, d)) for d in (
        "audience", "creative", "bid_strategy", "daypart", "platform"))))
    excluded = dataclasses.replace(spec, exclusions=(rule,))
    kept = [c for c in cells if c.cell_id in {x.cell_id for x in atomize(excluded)}]
    assert [c.cell_id for c in kept] == [c.cell_id for c in cells[1:]]
    async with sandbox_url() as url:
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, cells)
            li = svc.campaigns[spec.id].line_items[gone.cell_id]
            assert li.active
        async with service(sql_store, url) as svc:  # restarted with the rule
            await svc.sync_campaign(excluded, kept)
            assert svc.campaigns[spec.id].synced, svc.campaigns[spec.id].error
            assert svc.adapter is not None
            (now,) = await svc.adapter.get_line_items([li.id])
            assert now.active is False and now.daily_budget_micros == 0
            assert now.lifetime_budget_micros == now.spend_micros
            others = await svc.adapter.get_line_items(
                [x.id for x in svc.campaigns[spec.id].line_items.values()])
            assert len(others) == 5 and all(x.active for x in others)
            # what it spent today still counts against today's cap (the daemon's registry
            # keeps a removed cell's spend today: ``CellTable.gone_today``)
            assert svc.campaigns[spec.id].daily_cap() == 60 * M
        async with service(sql_store, url) as svc:  # restarted again, $7 spent by it today
            svc.spent_today = lambda campaign_id: {gone.cell_id: 7 * M}
            await svc.sync_campaign(excluded, kept)
            st = svc.campaigns[spec.id]
            assert st.daily_cap() == 53 * M
            assert sum(x.daily_budget_micros or 0 for x in st.line_items.values()) <= 53 * M


async def test_a_cell_added_to_a_running_campaign_starts_from_the_headroom(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    every = atomize(spec)
    async with sandbox_url() as url:
        await sql_store.upsert_campaign(spec, every[:6], now=NOW)
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, every[:6])  # $600 split six ways: no headroom
        await sql_store.upsert_campaign(spec, every[:7], now=NOW)
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, every[:7])
            st = svc.campaigns[spec.id]
            assert st.synced, st.error
            assert len(st.line_items) == 7
            assert sum(li.lifetime_budget_micros for li in st.line_items.values()) <= 600 * M
            assert sum(li.daily_budget_micros or 0 for li in st.line_items.values()) <= 60 * M
            assert st.line_items[every[6].cell_id].lifetime_budget_micros == 0


async def test_line_items_created_again_on_a_fresh_dsp_are_switched_on(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """SQL remembers a sync, the DSP does not (a sandbox started afresh, another account): the
    line items are created again, and created line items are switched on."""
    spec = small(seed_spec)
    cells = atomize(spec)[:4]
    await sql_store.upsert_campaign(spec, cells, now=NOW)
    async with sandbox_url() as url, service(sql_store, url) as svc:
        await svc.sync_campaign(spec, cells)
    async with sandbox_url() as url, service(sql_store, url) as svc:
        await svc.sync_campaign(spec, cells)
        assert svc.adapter is not None
        items = await svc.adapter.get_line_items(
            [li.id for li in svc.campaigns[spec.id].line_items.values()])
        assert len(items) == 4 and all(li.active for li in items)


async def test_each_campaign_goes_under_its_own_advertiser(sql_store: SqlStore,
                                                           seed_spec: CampaignSpec) -> None:
    a = dataclasses.replace(small(seed_spec), advertiser="Acme")
    b = dataclasses.replace(small(seed_spec), id="other_campaign", advertiser="Globex",
                            name="Globex CTV")
    async with sandbox_url() as url, service(sql_store, url) as svc:
        for spec in (a, b):
            cells = atomize(spec)[:2]
            await sql_store.upsert_campaign(spec, cells, now=NOW)
            await svc.sync_campaign(spec, cells)
            assert svc.campaigns[spec.id].synced
        assert svc.adapter is not None
        acme = await svc.adapter.ensure_advertiser(alternative_id="campaignd:advertiser:Acme",
                                                   name="Acme")
        globex = await svc.adapter.ensure_advertiser(
            alternative_id="campaignd:advertiser:Globex", name="Globex")
        assert acme.id != globex.id
        by_campaign = {}
        for spec in (a, b):
            dsp_id = svc.campaigns[spec.id].dsp_campaign_id
            assert dsp_id is not None
            camp = await svc.adapter.ensure_campaign(
                advertiser_id=0, alternative_id=campaign_alt_id(spec.id), name=spec.name,
                lifetime_budget_micros=spec.lifetime_budget_micros,
                daily_budget_micros=spec.daily_budget_micros, start=spec.flight_start,
                end=spec.flight_end)
            by_campaign[spec.id] = camp.advertiser_id
        assert by_campaign == {a.id: acme.id, b.id: globex.id}


async def test_reconciliation_scales_budgets_changed_outside_campaignd_back_within_the_caps(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec, cells = await small_campaign(sql_store, seed_spec)
    async with sandbox_url() as url, service(sql_store, url) as svc:
        await svc.sync_campaign(spec, cells)
        st = svc.campaigns[spec.id]
        li = st.line_items[cells[0].cell_id]
        assert svc.adapter is not None
        # someone raises one line item's daily budget on the DSP to the campaign's whole cap
        await svc.adapter.update_budget(li.id, lifetime_micros=li.lifetime_budget_micros,
                                        daily_micros=60 * M)
        assert await svc.reconcile() == 1
        held = await svc.adapter.get_line_items([x.id for x in st.line_items.values()])
        assert sum(x.daily_budget_micros or 0 for x in held) <= 60 * M
        assert sum(x.daily_budget_micros or 0 for x in st.line_items.values()) <= 60 * M
        # the drifted line item's budgets are what SQL holds for the cell now
        stored = {c.cell_id: c.daily_budget_micros for c in await sql_store.list_cells(spec.id)}
        assert stored[cells[0].cell_id] == st.line_items[cells[0].cell_id].daily_budget_micros
        assert stored[cells[0].cell_id] > 10 * M  # the person's raise stands, scaled
        assert await svc.reconcile() == 0


async def test_one_campaign_the_dsp_will_not_show_does_not_stop_the_others_reconciling(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """A campaign whose line items the DSP will not list (say, archived in its UI) fails the
    reconciliation -- an alert after three runs -- but the other campaigns are read back."""
    from campaignd.errors import DSPNotFound, DSPTransientError

    a = small(seed_spec)
    b = dataclasses.replace(small(seed_spec), id="other_campaign", name="Other CTV")
    async with sandbox_url() as url, service(sql_store, url) as svc:
        for spec in (a, b):
            cells = atomize(spec)[:2]
            await sql_store.upsert_campaign(spec, cells, now=NOW)
            await svc.sync_campaign(spec, cells)
        assert svc.adapter is not None
        adapter = svc.adapter
        li = next(iter(svc.campaigns[b.id].line_items.values()))
        await adapter.update_budget(li.id, lifetime_micros=li.lifetime_budget_micros,
                                    daily_micros=(li.daily_budget_micros or 0) - M)
        hidden = svc.campaigns[a.id].dsp_campaign_id
        real = adapter.get_line_items

        async def get_line_items(*args: Any, **kw: Any) -> Any:  # the DSP's answer for a
            if kw.get("campaign_id") == hidden:
                raise failure
            return await real(*args, **kw)

        adapter.get_line_items = get_line_items  # type: ignore[method-assign]
        failure: Exception = DSPNotFound("HTTP 404 campaign not found")
        with pytest.raises(DSPError, match="could not read back 1 campaign"):
            await svc.reconcile()
        assert svc.last_reconcile is not None
        assert svc.last_reconcile["drift"] == 1 and "404" in svc.last_reconcile["unread"][0]
        held = svc.campaigns[b.id].line_items[next(iter(svc.campaigns[b.id].line_items))]
        assert held.daily_budget_micros == (li.daily_budget_micros or 0) - M  # b was read
        # an error of the whole account (a rate limit, a timeout) stops the run at once
        failure = DSPTransientError("HTTP 429 too many requests")
        with pytest.raises(DSPTransientError):
            await svc.reconcile()


async def test_reconciliation_counts_a_line_item_created_in_the_dsps_ui(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec, cells = await small_campaign(sql_store, seed_spec)
    async with sandbox_url() as url, service(sql_store, url) as svc:
        await svc.sync_campaign(spec, cells)
        st = svc.campaigns[spec.id]
        assert svc.adapter is not None and st.dsp_campaign_id is not None
        assert await svc.reconcile() == 0
        # a person makes room on the DSP and adds a line item of their own, $12 a day
        mine = st.line_items[cells[0].cell_id]
        await svc.adapter.update_budget(mine.id, lifetime_micros=40 * M, daily_micros=4 * M)
        first = st.line_items[cells[1].cell_id]
        (theirs,) = await svc.adapter.create_line_items([LineItemSpec(
            alternative_id="made-in-the-ui", campaign_id=st.dsp_campaign_id, name="by hand",
            lifetime_budget_micros=60 * M, daily_budget_micros=12 * M,
            cpm_bid_micros=first.cpm_bid_micros or 25 * M, start=first.start or NOW, end=first.end,
            creative_weights=await svc.adapter.get_creative_weights(first.id))])
        # reconciliation sees it (not only the known ids) and keeps campaignd's line items
        # within what it leaves of the caps
        assert await svc.reconcile() == 2  # the budget changed outside, and the new one
        assert svc.last_reconcile is not None
        assert any("does not manage now take 12000000 micros of the daily budget" in d
                   for d in svc.last_reconcile["details"])
        assert st.daily_cap() == 48 * M and st.lifetime_cap() == 540 * M
        ours = [li for li in await svc.adapter.get_line_items(campaign_id=st.dsp_campaign_id)
                if li.id != theirs.id]
        assert sum(li.daily_budget_micros or 0 for li in ours) <= 48 * M
        assert sum(li.lifetime_budget_micros for li in ours) <= 540 * M
        assert await svc.reconcile() == 0


async def test_the_specs_caps_reach_the_dsp_campaign_up_and_down(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec, cells = await small_campaign(sql_store, seed_spec)
    async with sandbox_url() as url:
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, cells)
        more = dataclasses.replace(spec, daily_budget=Decimal("80"),
                                   lifetime_budget=Decimal("800"))
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(more, cells)
            assert svc.adapter is not None
            camp = await svc.adapter.update_campaign_budget(
                svc.campaigns[spec.id].dsp_campaign_id or 0, lifetime_micros=800 * M,
                daily_micros=80 * M)  # (what it holds now: setting it again is a no-op)
            assert (camp.lifetime_budget_micros, camp.daily_budget_micros) == (800 * M, 80 * M)
            li = svc.campaigns[spec.id].line_items[cells[0].cell_id]
            # a raise within the new caps is accepted by the DSP
            raised = await svc.adapter.update_budget(li.id, lifetime_micros=300 * M,
                                                     daily_micros=30 * M)
            assert raised.lifetime_budget_micros == 300 * M
        less = dataclasses.replace(spec, daily_budget=Decimal("50"),
                                   lifetime_budget=Decimal("500"))
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(less, cells)
            st = svc.campaigns[spec.id]
            assert st.synced, st.error
            assert sum(x.lifetime_budget_micros for x in st.line_items.values()) <= 500 * M
            assert sum(x.daily_budget_micros or 0 for x in st.line_items.values()) <= 50 * M
            assert svc.adapter is not None
            camp = await svc.adapter.ensure_campaign(
                advertiser_id=0, alternative_id=campaign_alt_id(spec.id), name=spec.name,
                lifetime_budget_micros=1, daily_budget_micros=1, start=spec.flight_start,
                end=spec.flight_end)
            assert (camp.lifetime_budget_micros, camp.daily_budget_micros) == (500 * M, 50 * M)
    # each change to the campaign's own budgets is in the audit log, like a line item's
    changes = [r for r in reversed(await sql_store.list_actions())
               if r.action.kind == "campaign_budget"]
    assert [(r.status, r.action.cell_id, r.action.before["lifetime_budget_micros"],
             r.action.after["lifetime_budget_micros"]) for r in changes] == [
        ("applied", "", 600 * M, 800 * M), ("applied", "", 800 * M, 500 * M)]
    assert changes[1].result is not None and changes[1].result["daily_budget_micros"] == 50 * M
    from campaignd.errors import StateConflict
    with pytest.raises(StateConflict, match="follow the campaign spec"):
        await sql_store.undo_action(changes[1].id, actor="ana", now=NOW)


async def test_a_crash_while_the_sync_scales_budgets_loses_no_change(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """The sync's own changes are recorded before they are sent. A DSP refusal marks one
    failed; a crash before the request, or an answer lost after it, leaves it ``applying``, and
    the next sync closes it from what the DSP holds (``superseded`` / ``applied``) before
    checking the caps again -- it is never replayed blindly (the caps may have changed back)."""
    from campaignd.dsp.executor import ActionExecutor
    from campaignd.errors import DSPRejected, DSPTransientError

    spec, cells = await small_campaign(sql_store, seed_spec)
    less = dataclasses.replace(spec, daily_budget=Decimal("30"), lifetime_budget=Decimal("300"))

    def failing(svc: DSPService, exc: BaseException, *, after_sending: bool = False
                ) -> list[int]:
        """Make the adapter's next budget update fail with ``exc`` (before the request, or
        once the DSP has applied it)."""
        assert svc.adapter is not None
        real = svc.adapter.update_budget
        calls: list[int] = []

        async def update_budget(line_item_id: int, **kw: int) -> None:
            calls.append(line_item_id)
            if after_sending:
                await real(line_item_id, **kw)
            raise exc

        svc.adapter.update_budget = update_budget  # type: ignore[method-assign,assignment]
        return calls

    async def sync_rows(status: str) -> list[Any]:
        return [r for r in await sql_store.list_actions(status=status) if r.action.agent == "sync"]

    async def daily_held(svc: DSPService) -> list[int]:
        assert svc.adapter is not None
        return [x.daily_budget_micros or 0 for x in await svc.adapter.get_line_items(ids)]

    async with sandbox_url() as url:
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, cells)
            ids = [li.id for li in svc.campaigns[spec.id].line_items.values()]
        async with service(sql_store, url) as svc:  # the caps are halved; the DSP refuses
            calls = failing(svc, DSPRejected("400: budget below spend"))
            await svc.sync_campaign(less, cells)
            assert calls and not svc.campaigns[spec.id].synced
            assert "400" in (svc.campaigns[spec.id].error or "")
        (failed,) = await sync_rows("failed")
        assert "400" in (failed.error or "")
        async with service(sql_store, url) as svc:  # again, and the daemon dies mid-request
            calls = failing(svc, RuntimeError("killed"))
            try:
                await svc.sync_campaign(less, cells)
            except RuntimeError:
                pass
            else:
                raise AssertionError("the sync should have died with the adapter")
            assert sum(await daily_held(svc)) == 60 * M  # nothing was sent
        (started,) = await sync_rows("applying")
        assert started.action.line_item_id == calls[0]
        assert started.action.after["daily_budget_micros"] == 5 * M
        async with service(sql_store, url) as svc:  # the person restores the caps; restart
            await svc.sync_campaign(spec, cells)
            assert svc.campaigns[spec.id].synced
            # the executor never sends the sync's rows: nothing is cut that the caps of now
            # do not ask for
            res = await ActionExecutor(sql=sql_store, dsp=svc, clock=VirtualClock(NOW)).drain()
            assert (res.applied, res.refused, res.superseded) == (0, 0, 0)
            assert await daily_held(svc) == [10 * M] * 6
        row = await sql_store.get_action(started.id)
        assert row is not None and row.status == "superseded"
        assert "interrupted" in (row.error or "")
        async with service(sql_store, url) as svc:  # halved again; the answer is lost
            calls = failing(svc, DSPTransientError("read timeout"), after_sending=True)
            await svc.sync_campaign(less, cells)
            assert not svc.campaigns[spec.id].synced
        (lost,) = await sync_rows("applying")
        async with service(sql_store, url) as svc:  # the retry finds the DSP holding it
            await svc.sync_campaign(less, cells)
            assert svc.campaigns[spec.id].synced
            # (then scaled with the others: the caps hold on what the DSP holds now)
            assert sum(await daily_held(svc)) <= 30 * M
        row = await sql_store.get_action(lost.id)
        assert row is not None and row.status == "applied"
        assert row.result is not None and row.result["daily_budget_micros"] == 5 * M
        assert await sync_rows("applying") == []
        assert await sql_store.list_actions(status="pending") == []


async def test_a_restart_routes_events_of_known_line_items_before_the_dsp_answers(
        sql_url: str, tmp_path: Path) -> None:
    """Line items an earlier run synced (ids in SQL) are routed at start, before this start's
    sync: a DSP that cannot be reached does not send their events to the dead letters."""
    from campaignd.daemon import Daemon

    cfg = tmp_path / "campaignd.toml"
    cfg.write_text(f'campaigns = ["{SEED_SPEC_PATH}"]\n'
                   f'[database]\nurl = "{sql_url}"\n'
                   '[dsp]\nadapter = "beeswax"\n'
                   '[dsp.beeswax]\nbase_url = "http://127.0.0.1:9/rest"\n'
                   f'email = "{EMAIL}"\n')
    d = Daemon(load_settings(cfg, environ={"CAMPAIGND_DSP__BEESWAX__PASSWORD": PASSWORD,
                                           "CAMPAIGND_RECEIVER__TOKEN": "t" * 32}))
    await d._open_stores()
    try:
        await d._load_campaigns()
        assert d.sql is not None
        ((cid, rt),) = d.campaigns.items()
        earlier = {c.cell_id: 5000 + i for i, c in enumerate(rt.cells[:3])}
        await d.sql.set_cell_line_items(earlier, status="active")
        await d._route_known_line_items()
        assert {li: d.registry.routes[str(li)].slot for li in earlier.values()} == {
            li: d.registry.slot_of(cid, cell) for cell, li in earlier.items()}
    finally:
        if d.sql is not None:
            await d.sql.close()


async def test_a_failed_scale_down_in_reconciliation_is_retried_by_a_full_sync(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """Reconciliation that cannot scale budgets back within the caps (a transient DSP error)
    neither raises nor leaves the change open for good: the campaign goes back to pending, and
    the next reconciliation's sync closes the change and holds the caps. A line item without a
    daily budget could spend all of its lifetime budget in one day: it gets one within the
    daily cap."""
    from campaignd.errors import DSPTransientError

    spec, cells = await small_campaign(sql_store, seed_spec)
    async with sandbox_url() as url:
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, cells)
            st = svc.campaigns[spec.id]
            assert svc.adapter is not None
            li = st.line_items[cells[0].cell_id]
            # someone raises one line item's daily budget to the campaign's whole cap
            await svc.adapter.update_budget(li.id, lifetime_micros=li.lifetime_budget_micros,
                                            daily_micros=60 * M)
            real = svc.adapter.update_budget

            async def timeout(line_item_id: int, **kw: Any) -> None:
                raise DSPTransientError("read timeout")

            svc.adapter.update_budget = timeout  # type: ignore[method-assign,assignment]
            assert await svc.reconcile() == 1  # no exception
            assert not st.synced and "timeout" in (st.error or "")
            assert [r.action.agent for r in await sql_store.list_actions(status="applying")] \
                == ["sync"]
            svc.adapter.update_budget = real  # type: ignore[method-assign]
            await svc.reconcile()
            assert st.synced, st.error
            assert await sql_store.list_actions(status="applying") == []
            ids = [x.id for x in st.line_items.values()]
            held = await svc.adapter.get_line_items(ids)
            assert sum(x.daily_budget_micros or 0 for x in held) <= 60 * M
            # and now it has no daily budget at all
            await svc.adapter.update_budget(li.id, lifetime_micros=li.lifetime_budget_micros,
                                            daily_micros=None)
        less = dataclasses.replace(spec, daily_budget=Decimal("30"),
                                   lifetime_budget=Decimal("300"))
        async with service(sql_store, url) as svc:  # the caps are lowered: lifetimes scaled
            await svc.sync_campaign(less, cells)
            assert svc.campaigns[spec.id].synced
            assert svc.adapter is not None
            held = await svc.adapter.get_line_items(ids)
            assert sum(x.lifetime_budget_micros for x in held) <= 300 * M
            (first,) = [x for x in held if x.id == li.id]
            assert first.daily_budget_micros is not None
            assert sum(x.daily_budget_micros or 0 for x in held) <= 30 * M
            assert first.lifetime_budget_micros < li.lifetime_budget_micros


async def test_sync_changes_of_a_removed_campaign_are_closed(sql_store: SqlStore,
                                                            seed_spec: CampaignSpec) -> None:
    from campaignd.domain.actions import Action, action_key

    for cid in ("kept", "gone"):
        spec = dataclasses.replace(seed_spec, id=cid)
        await sql_store.upsert_campaign(spec, atomize(spec)[:1], now=NOW)

    def started(campaign: str) -> Action:
        after = {"active": False}
        return Action(key=action_key(f"sync:{campaign}", "c1", "pause", after),
                      decision_id="sync:x", campaign_id=campaign, cell_id="c1",
                      line_item_id=7, kind="pause", before={"active": True}, after=after,
                      agent="sync", reason="test", evidence={}, created_at=NOW)

    ids = await sql_store.begin_actions([started("kept"), started("gone")], now=NOW)
    assert await sql_store.close_sync_actions_except(["kept"], now=NOW) == 1
    gone = await sql_store.get_action(ids[started("gone").key])
    kept = await sql_store.get_action(ids[started("kept").key])
    assert gone is not None and gone.status == "superseded"
    assert kept is not None and kept.status == "applying"
    assert await sql_store.outbox() == []  # the executor never sends the sync's rows
    # a sandbox start closes every one (a new DSP)
    assert await sql_store.close_sync_actions_except([], now=NOW) == 1
    kept = await sql_store.get_action(ids[started("kept").key])
    assert kept is not None and kept.status == "superseded"


async def test_lowered_caps_never_scale_a_budget_below_what_was_spent(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """The spec's caps are lowered between restarts after the line items spent unevenly. Each
    budget keeps what its line item spent (lifetime; today's for the daily budget) and only the
    rest is scaled, so what the line items may still spend stays within the new caps. (Scaling
    whole budgets stopped the line item that had spent most, while the others could still spend
    past the cap.)"""
    from campaignd.dsp.sandbox.market import Market
    from campaignd.dsp.sandbox.scenarios import load_scenario

    spec, cells = await small_campaign(sql_store, seed_spec)
    market = Market(load_scenario(SEED_SPEC_PATH.parents[1] / "scenarios" / "seed.toml"),
                    seed=1, start=NOW)
    sandbox = SandboxService(market, email=EMAIL, password=PASSWORD, log_level="critical",
                             clock=VirtualClock(NOW))
    big = cells[0].cell_id
    async with anyio.create_task_group() as tg:
        url = await tg.start(sandbox.run)
        async with service(sql_store, url) as svc:
            await svc.sync_campaign(spec, cells)
            assert svc.adapter is not None
            ids = {cid: li.id for cid, li in svc.campaigns[spec.id].line_items.items()}
            for cid, li_id in sorted(ids.items(), key=lambda kv: kv[0] == big):
                # one line item gets most of the money (the others' cut first) ...
                await svc.adapter.update_budget(
                    li_id, lifetime_micros=(350 if cid == big else 50) * M,
                    daily_micros=(40 if cid == big else 4) * M)
            sandbox.state.advance_market(NOW + timedelta(hours=10))  # ... and spends it
            cell_of = {li_id: cid for cid, li_id in ids.items()}
            spent = {cell_of[li.id]: li.spend_micros
                     for li in await svc.adapter.get_line_items(list(ids.values()))}
        total = sum(spent.values())
        cap = (total // 10_000 + 1) * 10_000 + 3 * M  # a little more than was spent
        assert spent[big] > cap // 2, spent  # (what makes whole budgets scale below spend)
        less = dataclasses.replace(spec, daily_budget=Decimal(cap) / M,
                                   lifetime_budget=Decimal(cap) / M)
        async with service(sql_store, url) as svc:
            svc.spent_today = lambda campaign_id: dict(spent)  # all of it today (New York)
            await svc.sync_campaign(less, cells)
            assert svc.campaigns[spec.id].synced, svc.campaigns[spec.id].error
            assert svc.adapter is not None
            held = {cell_of[li.id]: li
                    for li in await svc.adapter.get_line_items(list(ids.values()))}
        tg.cancel_scope.cancel()
    for cid, li in held.items():
        assert li.lifetime_budget_micros >= spent[cid]
    assert sum(max(li.lifetime_budget_micros, li.spend_micros) for li in held.values()) <= cap
    assert sum(max(li.daily_budget_micros or 0, spent[c]) for c, li in held.items()) <= cap
    assert held[big].lifetime_budget_micros < 350 * M  # scaled, not left alone


async def test_a_dsp_blip_does_not_leave_the_daemon_unhealthy_until_the_next_reconciliation(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """A few seconds of 5xx open the circuit breaker (the DSP is unhealthy, ``/healthz``
    answers 503); once the DSP answers again the service's own probe closes it within about
    a cooldown, rather than at the next call that happens to come (reconciliation: 5 min)."""
    from campaignd.dsp.sandbox.faults import FaultConfig

    spec, cells = await small_campaign(sql_store, seed_spec)
    sandbox = SandboxService(None, email=EMAIL, password=PASSWORD, log_level="critical")
    async with anyio.create_task_group() as tg:
        url = await tg.start(sandbox.run)
        settings = load_settings(None, environ={
            "CAMPAIGND_DSP__ADAPTER": "beeswax", "CAMPAIGND_DSP__BEESWAX__BASE_URL": url,
            "CAMPAIGND_DSP__BEESWAX__EMAIL": EMAIL,
            "CAMPAIGND_DSP__BEESWAX__PASSWORD": PASSWORD,
            "CAMPAIGND_DSP__BEESWAX__RATE_LIMIT_RPS": "1000",
            "CAMPAIGND_DSP__BEESWAX__MAX_RETRIES": "0",
            "CAMPAIGND_DSP__BEESWAX__BREAKER_FAILURES": "2",
            "CAMPAIGND_DSP__BEESWAX__BREAKER_COOLDOWN_S": "0.5",
            "CAMPAIGND_RECEIVER__ENABLED": "false"})
        svc = DSPService(settings, sql_store, clock=VirtualClock(NOW))
        await tg.start(svc.run)
        await svc.sync_campaign(spec, cells)
        assert svc.status()["healthy"]
        li = next(iter(svc.campaigns[spec.id].line_items.values()))
        sandbox.state.injector.config = FaultConfig(rate_5xx=1.0)  # the blip
        for _ in range(2):
            with pytest.raises(DSPError):
                await svc.adapter.get_line_items([li.id])
        assert not svc.status()["healthy"]
        sandbox.state.injector.config = FaultConfig()  # the DSP is back; nothing calls it
        with anyio.fail_after(5):
            while not svc.status()["healthy"]:
                await anyio.sleep(0.05)
        await svc.aclose()
        tg.cancel_scope.cancel()


async def test_line_items_with_viewer_local_dayparts_name_their_viewers_time_zones(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """Beeswax paces a line item targeting ``user_time_of_week`` by the ``user_timezones`` it
    lists ("if not set properly, pacing will be uneven"): its audience's ZIPs' zones."""
    from campaignd.domain.geo import zip_timezone
    from campaignd.dsp.beeswax import BeeswaxAdapter

    spec, cells = await small_campaign(sql_store, seed_spec)
    async with sandbox_url() as url, service(sql_store, url) as svc:
        await svc.sync_campaign(spec, cells)
        adapter = svc.adapter
        assert isinstance(adapter, BeeswaxAdapter)
        for cell in cells:
            li = svc.campaigns[spec.id].line_items[cell.cell_id]
            record = await adapter._json("GET", f"/line-items/{li.id}")
            aud = spec.level("audience", cell.audience)
            want = sorted({zip_timezone(z) for z in aud.zips})  # type: ignore[union-attr]
            assert record["user_timezones"] == want, (cell.cell_id, record["user_timezones"])
            assert want and all(z.startswith(("America/", "Pacific/")) for z in want)
