"""The executor over real parts: the sandbox's Beeswax API over loopback HTTP, the Beeswax
adapter, the DSP service's campaign sync, and SQL (SQLite and PostgreSQL).

Decided actions are applied exactly once in effect: a replayed outbox entry (a crash after the
DSP acknowledged, or before anything was sent) changes nothing more; cuts go before raises and a
raise never takes the campaign over its caps, whatever failed before it; stale actions, DSP
refusals, approvals, rejections and undo all end where they should."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from campaignd.agents.decision import DecisionEngine
from campaignd.clock import VirtualClock
from campaignd.domain.actions import Action, CampaignState, LineItemState, Recommendation
from campaignd.domain.campaign import CampaignSpec, atomize
from campaignd.dsp.executor import ActionExecutor, line_item_state
from campaignd.dsp.sandbox import SandboxService
from campaignd.dsp.service import DSPService
from campaignd.metrics import Metrics
from campaignd.settings import load_settings
from campaignd.stores.sql import SqlStore

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EMAIL, PASSWORD = "ops@campaignd.test", "pw"
M = 1_000_000


@asynccontextmanager
async def dsp_service(sql: SqlStore, spec: CampaignSpec,
                      n_cells: int = 6) -> AsyncIterator[DSPService]:
    """A synced campaign of ``n_cells`` line items on a sandbox over loopback."""
    async with dsp_and_sandbox(sql, spec, n_cells) as (svc, _):
        yield svc


@asynccontextmanager
async def dsp_and_sandbox(sql: SqlStore, spec: CampaignSpec, n_cells: int = 6
                          ) -> AsyncIterator[tuple[DSPService, SandboxService]]:
    """``dsp_service`` and the sandbox behind it (to script its faults)."""
    sandbox = SandboxService(None, email=EMAIL, password=PASSWORD, log_level="critical")
    async with anyio.create_task_group() as tg:
        url = await tg.start(sandbox.run)
        settings = load_settings(None, environ={
            "CAMPAIGND_DSP__ADAPTER": "beeswax", "CAMPAIGND_DSP__BEESWAX__BASE_URL": url,
            "CAMPAIGND_DSP__BEESWAX__EMAIL": EMAIL,
            "CAMPAIGND_DSP__BEESWAX__PASSWORD": PASSWORD,
            "CAMPAIGND_DSP__BEESWAX__RATE_LIMIT_RPS": "1000",
            "CAMPAIGND_DSP__BEESWAX__MAX_RETRIES": "0", "CAMPAIGND_RECEIVER__ENABLED": "false"})
        svc = DSPService(settings, sql, clock=VirtualClock(NOW))
        await tg.start(svc.run)
        cells = atomize(spec)[:n_cells]
        await sql.upsert_campaign(spec, cells, now=NOW)
        await svc.sync_campaign(spec, cells)
        try:
            yield svc, sandbox
        finally:
            await svc.aclose()
            tg.cancel_scope.cancel()


def campaign_state(svc: DSPService, spec: CampaignSpec) -> CampaignState:
    st = svc.campaigns[spec.id]
    return CampaignState.of(spec.id, spec.daily_budget_micros, spec.lifetime_budget_micros, 7.0, {
        c: LineItemState(c, li.id, li.daily_budget_micros or 0, li.lifetime_budget_micros)
        for c, li in st.line_items.items()})


def plan(svc: DSPService, spec: CampaignSpec, budgets: dict[str, int],
         at: datetime = NOW) -> list[Action]:
    rec = Recommendation(agent="reallocation", kind="budget_rebalance", campaign_id=spec.id,
                         target=spec.id, created_at=at,
                         change={"daily_budgets_micros": budgets}, score=0.9, impact=5.0,
                         risk=0.05)
    return DecisionEngine().decide([rec], {spec.id: campaign_state(svc, spec)}, at).actions


async def dsp_budgets(svc: DSPService, spec: CampaignSpec) -> dict[str, tuple[int, int]]:
    """What the DSP holds, read back over HTTP."""
    st = svc.campaigns[spec.id]
    assert svc.adapter is not None
    by_id = {li.id: li for li in await svc.adapter.get_line_items([li.id for li in
                                                                   st.line_items.values()])}
    return {c: (by_id[li.id].daily_budget_micros or 0, by_id[li.id].lifetime_budget_micros)
            for c, li in st.line_items.items()}


def executor(sql: SqlStore, svc: DSPService, **kw: Any) -> ActionExecutor:
    return ActionExecutor(sql=sql, dsp=svc, clock=VirtualClock(NOW), metrics=Metrics(), **kw)


def small(spec: CampaignSpec) -> CampaignSpec:
    # 6 line items splitting $60/day: $10 each; lifetime $600
    return dataclasses.replace(spec, daily_budget=spec.daily_budget.__class__("60"),
                               lifetime_budget=spec.lifetime_budget.__class__("600"))


async def test_a_plan_is_applied_cuts_first_within_the_caps(sql_store: SqlStore,
                                                            seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        actions = plan(svc, spec, {cells[0]: 2 * M, cells[1]: 4 * M, cells[2]: 24 * M})
        assert [a.is_increase for a in actions] == [False, False, True]
        await sql_store.record_actions(actions, mode="live", now=NOW)
        ex = executor(sql_store, svc)
        res = await ex.drain()
        assert (res.applied, res.failed, res.refused) == (3, 0, 0)
        held = await dsp_budgets(svc, spec)
        assert held[cells[0]][0] == 2 * M and held[cells[2]][0] == 24 * M
        assert sum(d for d, _ in held.values()) <= spec.daily_budget_micros
        assert sum(lf for _, lf in held.values()) <= spec.lifetime_budget_micros
        rows = await ours(sql_store)
        assert {r.status for r in rows} == {"applied"}
        assert all(r.result == line_item_state(svc.campaigns[spec.id].line_items[
            r.action.cell_id]) for r in rows)
        stored = {c.cell_id: c.daily_budget_micros for c in
                  await sql_store.list_cells(spec.id)}
        assert stored[cells[2]] == 24 * M


async def test_replaying_an_outbox_entry_is_a_no_op(sql_store: SqlStore,
                                                    seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        actions = plan(svc, spec, {cells[0]: 3 * M, cells[1]: 17 * M})
        await sql_store.record_actions(actions, mode="live", now=NOW)
        assert await sql_store.record_actions(actions, mode="live", now=NOW) == 0
        ex = executor(sql_store, svc)
        assert (await ex.drain()).applied == 2
        assert svc.adapter is not None
        before = await dsp_budgets(svc, spec)
        sent = svc.adapter.health().requests
        # a crash after the DSP acknowledged but before "applied" was recorded
        for r in await ours(sql_store):
            await sql_store.set_action_status(r.id, "applying", now=NOW, expect=("applied",))
        res = await ex.drain()
        assert res.applied == 2
        # one read of the line items in doubt, nothing sent again
        assert svc.adapter.health().requests == sent + 1
        assert await dsp_budgets(svc, spec) == before


async def test_an_interrupted_action_is_applied_once(sql_store: SqlStore,
                                                     seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        (cut,) = plan(svc, spec, {cells[0]: 5 * M})
        await sql_store.record_actions([cut], mode="live", now=NOW)
        (row,) = await ours(sql_store)
        # a crash after "applying" was recorded, before the request went out
        await sql_store.set_action_status(row.id, "applying", now=NOW, expect=("pending",),
                                          attempt=True)
        assert (await executor(sql_store, svc).drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[0]][0] == 5 * M


async def test_a_raise_without_headroom_waits_then_is_refused(sql_store: SqlStore,
                                                              seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        cut, raise_ = plan(svc, spec, {cells[0]: 2 * M, cells[1]: 18 * M})
        # only the raise reaches the outbox (its cut was lost): it must not exceed the cap
        await sql_store.record_actions([raise_], mode="live", now=NOW)
        ex = executor(sql_store, svc, max_wait_s=0.2)
        assert (await ex.drain()).waiting == 1
        (row,) = await ours(sql_store)
        assert row.status == "pending" and "daily cap" in (row.error or "")
        await anyio.sleep(0.3)
        assert (await ex.drain()).refused == 1
        held = await dsp_budgets(svc, spec)
        assert held[cells[1]][0] == 10 * M
        assert sum(d for d, _ in held.values()) <= spec.daily_budget_micros
        # with the cut in place, the same change goes through
        await sql_store.record_actions([cut], mode="live", now=NOW)
        assert (await ex.drain()).applied == 1
        again = dataclasses.replace(raise_, key=raise_.key + "b")
        await sql_store.record_actions([again], mode="live", now=NOW)
        assert (await ex.drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[1]][0] == 18 * M


async def test_an_action_too_old_to_apply_expires_unless_a_person_asked_recently(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """After a long stop, what was decided before it is not applied on stale evidence: the
    age counts from the decision, or from a person's approval or undo."""
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        old = NOW - timedelta(hours=3)
        stale, = plan(svc, spec, {cells[0]: 5 * M}, at=old)
        approved, = plan(svc, spec, {cells[1]: 6 * M}, at=old)
        approved_long_ago, = plan(svc, spec, {cells[2]: 7 * M}, at=old)
        await sql_store.record_actions([stale], mode="live", now=old)
        await sql_store.record_actions([approved, approved_long_ago], mode="approve", now=old)
        by_cell = {r.action.cell_id: r for r in await ours(sql_store)}
        await sql_store.decide_action(by_cell[cells[1]].id, approve=True, actor="alice",
                                      now=NOW - timedelta(minutes=10))
        await sql_store.decide_action(by_cell[cells[2]].id, approve=True, actor="bob",
                                      now=NOW - timedelta(hours=2))
        ex = executor(sql_store, svc, mode="approve")
        res = await ex.drain()
        assert (res.applied, res.refused, res.expired) == (1, 1, 1)
        rows = {r.action.cell_id: r for r in await ours(sql_store)}
        # (approve mode: the live action is superseded, not expired -- the mode's rule first)
        assert rows[cells[0]].status == "superseded"
        assert rows[cells[1]].status == "applied"
        late = rows[cells[2]]
        assert late.status == "refused"
        assert (late.error or "").startswith("expired: approved by bob 2 h 0 min ago")
        assert "decision.max_action_age_s (3600 s)" in (late.error or "")
        held = await dsp_budgets(svc, spec)
        assert held[cells[1]][0] == 6 * M and held[cells[2]][0] == 10 * M
        # live mode: the engine's own decision expires; its line item keeps what it held
        live = executor(sql_store, svc)
        again = dataclasses.replace(stale, key=stale.key + "b")
        await sql_store.record_actions([again], mode="live", now=old)
        res = await live.drain()
        assert (res.refused, res.expired) == (1, 1)
        row = next(r for r in await ours(sql_store) if r.action.key == again.key)
        assert row.status == "refused"
        assert (row.error or "").startswith("expired: decided 3 h 0 min ago")
        assert (await dsp_budgets(svc, spec))[cells[0]][0] == 10 * M
        # an undo asked long ago expires too, and may be asked again
        undo = await sql_store.undo_action(rows[cells[1]].id, actor="alice",
                                           now=NOW - timedelta(hours=2))
        assert (await live.drain()).expired == 1
        done = await sql_store.get_action(undo.id)
        assert done is not None and (done.error or "").startswith(
            "expired: asked for by alice 2 h 0 min ago")
        await sql_store.undo_action(rows[cells[1]].id, actor="alice", now=NOW)
        assert (await live.drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[1]][0] == 10 * M
        # a sandbox at 3,600x: three market hours are three real seconds, young enough
        sped_up = executor(sql_store, svc, time_scale=3600.0)
        third = dataclasses.replace(stale, key=stale.key + "c")
        await sql_store.record_actions([third], mode="live", now=old)
        assert (await sped_up.drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[0]][0] == 5 * M
        # no limit: an old decision applies (its line item still holds its `before`)
        (back,) = plan(svc, spec, {cells[0]: 10 * M}, at=old - timedelta(days=30))
        await sql_store.record_actions([back], mode="live", now=old)
        assert (await executor(sql_store, svc, max_age_s=0).drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[0]][0] == 10 * M


async def test_a_raise_is_cut_to_what_todays_spend_leaves_under_the_daily_cap(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        cut, raise_ = plan(svc, spec, {cells[0]: 2 * M, cells[1]: 18 * M})
        # the plan fills the $60 cap; by the time it is applied, the cut line item has spent
        # $5 today: its budget counts as $5, so $3 of the $8 raise no longer fits
        spent = {cells[0]: 5 * M}
        svc.spent_today = lambda campaign_id: spent
        await sql_store.record_actions([cut, raise_], mode="live", now=NOW)
        ex = executor(sql_store, svc)
        assert (await ex.drain()).applied == 2
        held = await dsp_budgets(svc, spec)
        assert held[cells[0]][0] == 2 * M and held[cells[1]][0] == 15 * M
        assert 5 * M + sum(d for c, (d, _) in held.items() if c != cells[0]) \
            == spec.daily_budget_micros
        row = next(r for r in await ours(sql_store) if r.action.cell_id == cells[1])
        # what was sent is what the audit log holds; the plan is in the evidence
        assert row.status == "applied" and row.action.after["daily_budget_micros"] == 15 * M
        assert row.result is not None and row.result["daily_budget_micros"] == 15 * M
        assert row.action.evidence["clipped"]["planned_after"]["daily_budget_micros"] == 18 * M
        # its undo puts back what it changed
        undo = await sql_store.undo_action(row.id, actor="ops", now=NOW)
        assert undo.action.before["daily_budget_micros"] == 15 * M
        assert (await ex.drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[1]][0] == 10 * M

        # half of a raise left is sent; less waits whole (then is refused), nothing is sent
        (raise2,) = plan(svc, spec, {cells[2]: 18 * M})
        spent[cells[0]] = 2 * M
        spent[cells[1]] = 14 * M  # $4 of the $8 raise left under the cap
        await sql_store.record_actions([raise2], mode="live", now=NOW)
        assert (await ex.drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[2]][0] == 14 * M
        (raise3,) = plan(svc, spec, {cells[3]: 18 * M})
        await sql_store.record_actions([raise3], mode="live", now=NOW)
        res = await ex.drain()
        assert (res.applied, res.waiting) == (0, 1)
        assert (await dsp_budgets(svc, spec))[cells[3]][0] == 10 * M


async def test_stale_actions_and_dsp_refusals_are_not_applied(sql_store: SqlStore,
                                                              seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        assert svc.adapter is not None
        cells = list(svc.campaigns[spec.id].line_items)
        (cut,) = plan(svc, spec, {cells[0]: 5 * M})
        # someone changes the line item on the DSP; reconciliation reads it back
        li = svc.campaigns[spec.id].line_items[cells[0]]
        await svc.adapter.update_budget(li.id, lifetime_micros=90 * M, daily_micros=9 * M)
        await svc.reconcile()
        await sql_store.record_actions([cut], mode="live", now=NOW)
        assert (await executor(sql_store, svc).drain()).refused == 1
        (row,) = await ours(sql_store)
        assert row.status == "refused" and (row.error or "").startswith("stale")
        assert (await dsp_budgets(svc, spec))[cells[0]] == (9 * M, 90 * M)


async def test_approve_reject_and_undo_end_to_end(sql_store: SqlStore,
                                                  seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        actions = plan(svc, spec, {cells[0]: 4 * M, cells[1]: 6 * M})
        await sql_store.record_actions(actions, mode="approve", now=NOW)
        ex = executor(sql_store, svc)
        assert (await ex.drain()).applied == 0  # nothing applies before a person decides
        rows = sorted(await ours(sql_store), key=lambda r: r.id)
        await sql_store.decide_action(rows[0].id, approve=True, actor="alice", now=NOW)
        await sql_store.decide_action(rows[1].id, approve=False, actor="bob", now=NOW)
        assert (await ex.drain()).applied == 1
        held = await dsp_budgets(svc, spec)
        assert held[cells[0]][0] == 4 * M and held[cells[1]][0] == 10 * M
        undo = await sql_store.undo_action(rows[0].id, actor="alice", now=NOW)
        assert (await ex.drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[0]] == (10 * M, 100 * M)
        done = await sql_store.get_action(undo.id)
        assert done is not None and done.status == "applied" and done.undo_of == rows[0].id


async def test_shadow_mode_applies_nothing(sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        before = await dsp_budgets(svc, spec)
        await sql_store.record_actions(plan(svc, spec, {cells[0]: 1 * M, cells[1]: 19 * M}),
                                       mode="shadow", now=NOW)
        assert (await executor(sql_store, svc).drain()).applied == 0
        assert {r.status for r in await ours(sql_store)} == {"shadow"}
        creates = [r for r in await sql_store.list_actions() if r.action.kind == "create"]
        assert len(creates) == 6 and {r.status for r in creates} == {"applied"}
        assert creates[0].action.agent == "sync" and creates[0].action.after["active"]
        # a restart's sync finds the same line items: nothing new is recorded
        st = svc.campaigns[spec.id]
        await svc.sync_campaign(spec, st.cells)
        assert len([r for r in await sql_store.list_actions() if r.action.kind == "create"]) == 6
        assert await dsp_budgets(svc, spec) == before


async def test_a_dsp_refusal_fails_the_action(sql_store: SqlStore,
                                              seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        li = svc.campaigns[spec.id].line_items[cells[0]]
        # campaignd believes in a larger lifetime budget than the DSP's campaign has (e.g. the
        # spec was raised but the DSP campaign was not): the DSP refuses the raise with a 400
        svc.campaigns[spec.id].spec = dataclasses.replace(
            spec, lifetime_budget=spec.lifetime_budget * 100)
        raise_ = Action(key="raise-1", decision_id="d", campaign_id=spec.id, cell_id=cells[0],
                        line_item_id=li.id, kind="budget", before=li_budgets(li),
                        after={"daily_budget_micros": 10 * M,
                               "lifetime_budget_micros": 500 * M},
                        agent="test", reason="r", evidence={}, created_at=NOW)
        assert raise_.is_increase
        await sql_store.record_actions([raise_], mode="live", now=NOW)
        res = await executor(sql_store, svc).drain()
        assert (res.applied, res.failed, res.errors) == (0, 1, [])
        (row,) = await ours(sql_store)
        assert row.status == "failed" and "DSPRejected" in (row.error or "")
        assert "campaign budget" in (row.error or "")
        assert (await dsp_budgets(svc, spec))[cells[0]] == (10 * M, 100 * M)


async def ours(sql: SqlStore) -> list[Any]:
    """The decided actions (not the sync's records of the line items it created)."""
    return [r for r in await sql.list_actions() if r.action.agent != "sync"]


def li_budgets(li: Any) -> dict[str, int]:
    return {"daily_budget_micros": li.daily_budget_micros or 0,
            "lifetime_budget_micros": li.lifetime_budget_micros}


async def test_in_shadow_or_approve_mode_only_what_a_person_asked_for_is_applied(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        # left in the outbox by a live run, then the daemon restarts in approve mode
        await sql_store.record_actions(plan(svc, spec, {cells[0]: 4 * M}), mode="live",
                                       now=NOW)
        approved = plan(svc, spec, {cells[1]: 6 * M}, at=NOW.replace(minute=5))
        await sql_store.record_actions(approved, mode="approve", now=NOW)
        (proposal,) = [r for r in await ours(sql_store) if r.status == "proposed"]
        await sql_store.decide_action(proposal.id, approve=True, actor="alice", now=NOW)
        res = await executor(sql_store, svc, mode="approve").drain()
        assert (res.applied, res.superseded) == (1, 1)
        held = await dsp_budgets(svc, spec)
        assert held[cells[1]][0] == 6 * M and held[cells[0]][0] == 10 * M
        left = next(r for r in await ours(sql_store) if r.action.cell_id == cells[0])
        assert left.status == "superseded" and "approve mode" in (left.error or "")


async def test_only_the_newest_action_of_a_line_item_is_applied(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        first = plan(svc, spec, {cells[0]: 4 * M})
        second = plan(svc, spec, {cells[0]: 3 * M}, at=NOW.replace(minute=2))
        # the first was being sent when the daemon died; the next decision is recorded (it
        # supersedes only what is not in flight) before the executor runs again
        await sql_store.record_actions(first, mode="live", now=NOW)
        (row,) = await ours(sql_store)
        await sql_store.set_action_status(row.id, "applying", now=NOW, expect=("pending",))
        await sql_store.record_actions(second, mode="live", now=NOW)
        res = await executor(sql_store, svc).drain()
        assert (res.applied, res.superseded) == (1, 1)
        assert (await dsp_budgets(svc, spec))[cells[0]][0] == 3 * M
        statuses = [r.status for r in sorted(await ours(sql_store), key=lambda r: r.id)]
        assert statuses == ["superseded", "applied"]


async def test_an_action_the_dsp_applied_before_a_crash_is_recorded_as_applied(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        first = plan(svc, spec, {cells[0]: 4 * M})
        await sql_store.record_actions(first, mode="live", now=NOW)
        assert (await executor(sql_store, svc).drain()).applied == 1
        (row,) = await ours(sql_store)
        # the DSP acknowledged it, then the daemon died before recording that: "applying"
        assert await sql_store.set_action_status(row.id, "applying", now=NOW,
                                                 expect=("applied",))
        # it restarts in approve mode (or a newer action for the line item comes): the change
        # the DSP holds is recorded as applied -- not "superseded" -- and can be undone
        res = await executor(sql_store, svc, mode="approve").drain()
        assert (res.applied, res.superseded) == (1, 0)
        (row,) = await ours(sql_store)
        assert row.status == "applied" and "before an interruption" in (row.error or "")
        assert (await dsp_budgets(svc, spec))[cells[0]][0] == 4 * M
        # one that never reached the DSP is superseded as before
        second = plan(svc, spec, {cells[1]: 3 * M}, at=NOW.replace(minute=2))
        await sql_store.record_actions(second, mode="live", now=NOW)
        row2 = next(r for r in await ours(sql_store) if r.action.cell_id == cells[1])
        await sql_store.set_action_status(row2.id, "applying", now=NOW, expect=("pending",))
        res = await executor(sql_store, svc, mode="approve").drain()
        assert (res.applied, res.superseded) == (0, 1)
        assert (await dsp_budgets(svc, spec))[cells[1]][0] == 10 * M


async def test_rate_limits_do_not_use_up_an_actions_attempts(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    from campaignd.dsp.sandbox.faults import ScriptedFault

    spec = small(seed_spec)
    async with dsp_and_sandbox(sql_store, spec) as (svc, sandbox):
        cells = list(svc.campaigns[spec.id].line_items)
        await sql_store.record_actions(plan(svc, spec, {cells[0]: 4 * M}), mode="live",
                                       now=NOW)
        ex = executor(sql_store, svc, max_attempts=2)
        for _ in range(4):  # the DSP says "wait" four times, more than max_attempts
            sandbox.state.injector.script(ScriptedFault("429", method="PATCH",
                                                        retry_after_s=1))
            res = await ex.drain()
            assert res.applied == 0 and res.failed == 0
            (row,) = await ours(sql_store)
            assert row.status == "pending" and row.attempts == 0, row
        # then one ordinary transient error: a try (in doubt: a 5xx may have applied it), not
        # yet the last one; read back, the DSP does not hold it: sent again
        sandbox.state.injector.script(ScriptedFault("5xx", method="PATCH", status=503))
        res = await ex.drain()
        (row,) = await ours(sql_store)
        assert res.failed == 0 and row.status == "applying" and row.attempts == 1
        assert (await ex.drain()).applied == 1
        assert (await dsp_budgets(svc, spec))[cells[0]][0] == 4 * M


async def test_a_campaign_not_synced_yet_keeps_its_actions_waiting(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        await sql_store.record_actions(plan(svc, spec, {cells[0]: 4 * M}), mode="live",
                                       now=NOW)
        st = svc.campaigns[spec.id]
        st.synced = False  # as after a start while the DSP was unreachable
        res = await executor(sql_store, svc).drain()
        assert (res.applied, res.refused, res.waiting) == (0, 0, 1)
        (row,) = await ours(sql_store)
        assert row.status == "pending" and "not synced" in (row.error or "")
        st.synced = True
        assert (await executor(sql_store, svc).drain()).applied == 1


async def test_reconciliation_never_undoes_an_acknowledgement_it_raced_with(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        assert svc.adapter is not None
        cells = list(svc.campaigns[spec.id].line_items)
        await sql_store.record_actions(plan(svc, spec, {cells[0]: 2 * M, cells[1]: 18 * M}),
                                       mode="live", now=NOW)
        ex = executor(sql_store, svc)
        adapter = svc.adapter
        read = adapter.get_line_items

        async def read_then_drain(*args: Any, **kwargs: Any) -> Any:
            items = await read(*args, **kwargs)  # the DSP's state before the drain ...
            assert (await ex.drain()).applied == 2  # ... and acknowledgements meanwhile
            return items

        adapter.get_line_items = read_then_drain  # type: ignore[method-assign]
        try:
            assert await svc.reconcile() == 0  # no false "changed outside campaignd"
        finally:
            adapter.get_line_items = read  # type: ignore[method-assign]
        view = svc.campaigns[spec.id].line_items
        assert view[cells[1]].daily_budget_micros == 18 * M
        assert sum(li.daily_budget_micros or 0 for li in view.values()) == \
            sum(d for d, _ in (await dsp_budgets(svc, spec)).values())


async def test_a_long_sync_of_one_campaign_does_not_hold_back_another_campaigns_changes(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """Creating a large campaign's line items can take an hour at the DSP's rate limit (e.g. a
    campaign whose sync failed at start, synced again by reconciliation): the executor applies
    the other campaigns' changes meanwhile, and the sync's budget changes still wait for it."""
    spec = small(seed_spec)
    other = dataclasses.replace(spec, id="other_campaign", name="Other CTV")
    async with dsp_service(sql_store, spec) as svc:
        assert svc.adapter is not None
        cells = list(svc.campaigns[spec.id].line_items)
        await sql_store.record_actions(plan(svc, spec, {cells[0]: 4 * M, cells[1]: 16 * M}),
                                       mode="live", now=NOW)
        ex = executor(sql_store, svc)
        adapter = svc.adapter
        create = adapter.create_line_items
        drained: list[Any] = []

        async def create_while_draining(*args: Any, **kwargs: Any) -> Any:
            created = await create(*args, **kwargs)
            with anyio.fail_after(10):  # the drain must not wait for this sync
                drained.append(await ex.drain())
            return created

        adapter.create_line_items = create_while_draining  # type: ignore[method-assign]
        other_cells = atomize(other)[:3]
        await sql_store.upsert_campaign(other, other_cells, now=NOW)
        try:
            await svc.sync_campaign(other, other_cells)
        finally:
            adapter.create_line_items = create  # type: ignore[method-assign]
        assert svc.campaigns[other.id].synced, svc.campaigns[other.id].error
        (res,) = drained
        assert res.applied == 2
        assert (await dsp_budgets(svc, spec))[cells[1]][0] == 16 * M
        assert all(r.status == "applied" for r in await ours(sql_store))


async def test_a_change_whose_answer_was_lost_is_read_back_before_anything_else(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """The DSP applies a raise but its answer is lost. The action stays in doubt and the next
    drain reads the line item back first: the raise is recorded as applied, and a raise decided
    meanwhile on the old view waits instead of taking the campaign over its daily cap."""
    from campaignd.dsp.sandbox.faults import ScriptedFault

    spec = small(seed_spec)  # six line items of $10 a day, $60 a day in all
    async with dsp_and_sandbox(sql_store, spec) as (svc, sandbox):
        cells = list(svc.campaigns[spec.id].line_items)
        cut, raise_ = plan(svc, spec, {cells[0]: 2 * M, cells[1]: 18 * M})
        await sql_store.record_actions([cut], mode="live", now=NOW)
        ex = executor(sql_store, svc, max_wait_s=0)
        first = await ex.drain()  # the cut goes through ...
        assert first.applied == 1
        await sql_store.record_actions([raise_], mode="live", now=NOW)
        sandbox.state.injector.script(ScriptedFault("drop_after", method="PATCH"))
        second = await ex.drain()  # ... the raise is applied by the DSP, its answer lost
        assert second.applied == 0
        raised = next(r for r in await ours(sql_store) if r.action.cell_id == cells[1])
        assert raised.status == "applying" and raised.attempts == 1
        assert (await dsp_budgets(svc, spec))[cells[1]][0] == 18 * M
        # the agents still see $10 there and spend the "free" $8 on another line item
        await sql_store.record_actions(plan(svc, spec, {cells[2]: 18 * M}), mode="live",
                                       now=NOW)
        res = await ex.drain()
        rows = {r.action.cell_id: r for r in await ours(sql_store)}
        assert rows[cells[1]].status == "applied"  # read back: the DSP holds it
        assert rows[cells[2]].status == "refused"  # no headroom once counted right
        held = await dsp_budgets(svc, spec)
        assert sum(d for d, _ in held.values()) <= 60 * M
        assert (res.applied, res.refused) == (1, 1)


async def test_a_change_in_doubt_waits_for_its_campaigns_sync_whatever_the_mode(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """A change sent just before a crash, the daemon restarted in approve mode while the DSP is
    unreachable (the campaign not synced): the change waits for the sync, then is read back and
    recorded as applied -- not superseded as "not applied" while the DSP holds it."""
    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        assert svc.adapter is not None
        st = svc.campaigns[spec.id]
        cells = list(st.line_items)
        await sql_store.record_actions(plan(svc, spec, {cells[0]: 4 * M}), mode="live",
                                       now=NOW)
        (row,) = await ours(sql_store)
        await sql_store.claim_actions([row.id], now=NOW)  # sent ...
        li = st.line_items[cells[0]]
        await svc.adapter.update_budget(li.id, lifetime_micros=row.action.after[
            "lifetime_budget_micros"], daily_micros=4 * M)  # ... and applied; then a crash
        st.synced = False
        ex = executor(sql_store, svc, mode="approve")
        res = await ex.drain()
        assert res.waiting == 1 and res.superseded == 0
        assert (await ours(sql_store))[0].status == "applying"
        st.synced = True
        res = await ex.drain()
        (row,) = await ours(sql_store)
        assert row.status == "applied" and res.applied == 1


async def test_in_approve_mode_a_proposal_stands_for_a_person_to_review_it(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """A campaign's proposed re-plan is not replaced by the next cycle's (thompson's draws
    differ every cycle): it stands for decision.proposal_ttl_s, then a newer one replaces it.
    Approved whole, its cut and the raise it pays for are applied together."""
    from campaignd.decisions import DecisionService
    from campaignd.domain.cells import CellTable

    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        settings = load_settings(None, environ={"CAMPAIGND_DECISION__MODE": "approve",
                                                "CAMPAIGND_DECISION__PROPOSAL_TTL_S": "600"})
        ds = DecisionService(settings=settings, sql=sql_store, metrics=Metrics())
        cells = list(svc.campaigns[spec.id].line_items)
        snaps = {spec.id: CellTable(spec.id, atomize(spec)[:6]).snapshot()}

        def rec(budgets: dict[str, int], at: datetime) -> Recommendation:
            return Recommendation(agent="reallocation", kind="budget_rebalance",
                                  campaign_id=spec.id, target=spec.id, created_at=at,
                                  change={"daily_budgets_micros": budgets}, score=0.9,
                                  impact=5.0, risk=0.05)

        first = rec({cells[0]: 4 * M, cells[1]: 16 * M}, NOW)
        ds.collect("reallocation", [first])
        await ds.cycle(snaps, svc, NOW)
        later = NOW + timedelta(minutes=5)
        ds.collect("reallocation", [rec({cells[0]: 6 * M, cells[1]: 14 * M}, later)])
        await ds.cycle(snaps, svc, later)
        rows = await ours(sql_store)
        assert {(r.action.decision_id, r.status) for r in rows} == {
            (first.decision_id, "proposed")}
        assert ds.status()["skipped_since_start"] == {
            "an earlier proposal awaits review (decision.proposal_ttl_s)": 2}
        # approved whole: the cut and the raise it pays for
        approved = await sql_store.decide_decision(first.decision_id, approve=True,
                                                   actor="ana", now=later)
        assert len(approved) == 2
        res = await executor(sql_store, svc, mode="approve").drain()
        assert res.applied == 2
        assert (await dsp_budgets(svc, spec))[cells[1]][0] == 16 * M
        # once a proposal is older than the TTL, a newer re-plan replaces it
        second = rec({cells[2]: 5 * M}, later + timedelta(seconds=1))
        ds.collect("reallocation", [second])
        await ds.cycle(snaps, svc, second.created_at)
        much_later = later + timedelta(minutes=11)
        third = rec({cells[2]: 7 * M}, much_later)
        ds.collect("reallocation", [third])
        await ds.cycle(snaps, svc, much_later)
        by_decision = {r.action.decision_id: r.status for r in await ours(sql_store)}
        assert by_decision[second.decision_id] == "superseded"
        assert by_decision[third.decision_id] == "proposed"


async def test_a_lifetime_top_up_is_not_held_by_a_day_over_its_cap(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """A top-up raises a line item's lifetime budget only: it cannot break the daily cap, yet it
    waited (then was refused, re-planned, superseded, every cycle) while another line item's
    overdelivery kept the day's total $1 over the cap -- and its line item, out of lifetime
    budget, stopped delivering (review finding)."""
    import numpy as np

    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        spent_life = {cells[1]: 95 * M, cells[2]: 12 * M}
        spent_today = {cells[1]: 5 * M, cells[2]: 12 * M}  # cells[2] overdelivered by $2
        svc.spent_today = lambda campaign_id: spent_today
        base = campaign_state(svc, spec)
        state = dataclasses.replace(
            base, spent=np.array([spent_life.get(c, 0) for c in base.cell_ids]),
            spent_today=np.array([spent_today.get(c, 0) for c in base.cell_ids]))
        rec = Recommendation(agent="reallocation", kind="budget_rebalance",
                             campaign_id=spec.id, target=spec.id, created_at=NOW,
                             change={"daily_budgets_micros": {cells[0]: 9 * M}}, score=0.9,
                             impact=5.0, risk=0.05)
        actions = DecisionEngine().decide([rec], {spec.id: state}, NOW).actions
        top_up = next(a for a in actions if a.cell_id == cells[1])
        assert top_up.after["daily_budget_micros"] == top_up.before["daily_budget_micros"]
        assert top_up.after["lifetime_budget_micros"] > top_up.before["lifetime_budget_micros"]
        await sql_store.record_actions(actions, mode="live", now=NOW)
        assert (await executor(sql_store, svc).drain()).applied == 2
        held = await dsp_budgets(svc, spec)
        assert held[cells[1]] == (10 * M, top_up.after["lifetime_budget_micros"])


async def test_a_raise_clipped_twice_keeps_the_plans_budget_in_its_evidence(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """A clipped raise whose answer was lost is read back and clipped again at the next drain:
    the evidence said the plan wanted the first clip's budget, losing the plan's from SQL."""
    from campaignd.errors import DSPTransientError

    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        cut, raise_ = plan(svc, spec, {cells[0]: 2 * M, cells[1]: 18 * M})
        spent = {cells[0]: 4 * M}  # $2 of the $8 raise no longer fits
        svc.spent_today = lambda campaign_id: spent
        await sql_store.record_actions([cut, raise_], mode="live", now=NOW)
        ex = executor(sql_store, svc)
        send = ex._send
        lost = {"n": 0}

        async def flaky(line_item_id: int, kind: str, after: dict[str, Any]) -> Any:
            if kind == "budget" and after["daily_budget_micros"] > 10 * M and not lost["n"]:
                lost["n"] += 1
                raise DSPTransientError("timeout: the answer was lost")
            return await send(line_item_id, kind, after)

        ex._send = flaky  # type: ignore[method-assign]
        await ex.drain()
        spent[cells[0]] = 5 * M  # a little more spent before the next drain
        await ex.drain()
        row = next(r for r in await ours(sql_store) if r.action.cell_id == cells[1])
        assert row.status == "applied" and row.action.after["daily_budget_micros"] == 15 * M
        assert row.action.evidence["clipped"]["planned_after"]["daily_budget_micros"] == 18 * M


async def test_a_newer_proposal_replaces_the_older_decision_whole(
        sql_store: SqlStore, seed_spec: CampaignSpec) -> None:
    """approve mode: a newer re-plan was recorded without the changes it repeated (they stayed
    under the older decision) and superseded only the line items it changed, so approving the
    newer decision "whole" approved its raise without the cut paying for it, and the older
    decision's remnant stayed approvable hours later (review finding)."""
    from campaignd.errors import StateConflict

    spec = small(seed_spec)
    async with dsp_service(sql_store, spec) as svc:
        cells = list(svc.campaigns[spec.id].line_items)
        older_at = NOW - timedelta(hours=2)
        older = plan(svc, spec, {cells[0]: 2 * M, cells[1]: 18 * M}, at=older_at)
        newer = plan(svc, spec, {cells[0]: 2 * M, cells[2]: 18 * M})
        assert await sql_store.record_actions(older, mode="approve", now=older_at) == 2
        assert await sql_store.record_actions(newer, mode="approve", now=NOW) == 2
        by_decision = {r.action.decision_id: [] for r in await ours(sql_store)}
        for r in await ours(sql_store):
            by_decision[r.action.decision_id].append(r.status)
        assert by_decision == {older[0].decision_id: ["superseded"] * 2,
                               newer[0].decision_id: ["proposed"] * 2}
        got = await sql_store.decide_decision(newer[0].decision_id, approve=True, actor="alice",
                                              now=NOW)
        assert sorted(r.action.cell_id for r in got) == sorted([cells[0], cells[2]])
        try:
            await sql_store.decide_decision(older[0].decision_id, approve=True, actor="bob",
                                            now=NOW)
            raise AssertionError("the replaced decision was approved")
        except StateConflict:
            pass
        assert (await executor(sql_store, svc, mode="approve").drain()).applied == 2
        held = await dsp_budgets(svc, spec)
        assert (held[cells[0]][0], held[cells[1]][0], held[cells[2]][0]) == (
            2 * M, 10 * M, 18 * M)
