"""The actions table (outbox + audit log) on both SQL backends: idempotent recording, modes,
superseding, guarded status changes, approve / reject / undo."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from campaignd.domain.actions import ACTION_STATUSES, Action, action_key
from campaignd.domain.campaign import CampaignSpec, atomize
from campaignd.errors import BadInput, NotFound, StateConflict
from campaignd.stores.sql import SqlStore
from campaignd.stores.sql.models import ACTION_STATUSES as SQL_STATUSES

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def act(cell: str, daily: int, *, decision: str = "d1", before: int = 10) -> Action:
    after = {"daily_budget_micros": daily, "lifetime_budget_micros": daily * 10}
    return Action(key=action_key(decision, cell, "budget", after), decision_id=decision,
                  campaign_id="madhive_12345", cell_id=cell, line_item_id=7, kind="budget",
                  before={"daily_budget_micros": before, "lifetime_budget_micros": before * 10},
                  after=after, agent="reallocation", reason="test", evidence={"x": [1, 2]},
                  created_at=NOW, score=0.9, impact=3.5, risk=0.1, priority=2.8)


@pytest.fixture
async def store(sql_store: SqlStore, seed_spec: CampaignSpec) -> SqlStore:
    await sql_store.upsert_campaign(seed_spec, atomize(seed_spec), now=NOW)
    return sql_store


def test_statuses_agree_with_the_domain() -> None:
    assert SQL_STATUSES == ACTION_STATUSES


async def test_recording_is_idempotent_and_round_trips(store: SqlStore) -> None:
    a, b = act("c1", 5), act("c2", 20)
    assert await store.record_actions([a, b], mode="live", now=NOW) == 2
    assert await store.record_actions([a, b, a], mode="live", now=NOW) == 0
    rows = await store.list_actions()
    assert [r.action for r in reversed(rows)] == [a, b]
    assert {r.status for r in rows} == {"pending"}
    assert (await store.count_actions())["pending"] == 2
    got = await store.get_action(rows[0].id)
    assert got is not None and got.as_dict()["evidence"] == {"x": [1, 2]}
    assert [r.id for r in await store.outbox()] == sorted(r.id for r in rows)


@pytest.mark.parametrize(("mode", "status"), [("live", "pending"), ("approve", "proposed"),
                                               ("shadow", "shadow")])
async def test_each_mode_records_its_status(store: SqlStore, mode: str, status: str) -> None:
    await store.record_actions([act("c1", 5)], mode=mode, now=NOW)
    (row,) = await store.list_actions()
    assert (row.status, row.mode) == (status, mode)
    assert bool(await store.outbox()) == (mode == "live")


async def test_a_newer_decision_supersedes_open_actions_of_the_same_line_item(
        store: SqlStore) -> None:
    await store.record_actions([act("c1", 5, decision="d1"), act("c2", 6, decision="d1")],
                               mode="approve", now=NOW)
    await store.record_actions([act("c1", 7, decision="d2")], mode="approve",
                               now=NOW + timedelta(minutes=2))
    by_cell = {(r.action.cell_id, r.action.decision_id): r for r in await store.list_actions()}
    assert by_cell[("c1", "d1")].status == "superseded"
    assert "d2" in (by_cell[("c1", "d1")].error or "")
    assert by_cell[("c2", "d1")].status == "proposed"
    assert by_cell[("c1", "d2")].status == "proposed"


async def test_approve_and_reject_are_guarded(store: SqlStore) -> None:
    await store.record_actions([act("c1", 5), act("c2", 6)], mode="approve", now=NOW)
    r1, r2 = sorted(await store.list_actions(), key=lambda r: r.id)
    ok = await store.decide_action(r1.id, approve=True, actor="alice", now=NOW)
    assert (ok.status, ok.actor, ok.decided_at) == ("pending", "alice", NOW)
    no = await store.decide_action(r2.id, approve=False, actor="bob", now=NOW, note="too big")
    assert (no.status, no.error) == ("rejected", "too big")
    with pytest.raises(StateConflict, match="it is pending, not proposed"):
        await store.decide_action(r1.id, approve=True, actor="carol", now=NOW)
    with pytest.raises(StateConflict, match="rejected"):
        await store.decide_action(r2.id, approve=True, actor="carol", now=NOW)
    with pytest.raises(NotFound):
        await store.decide_action(999_999, approve=True, actor="carol", now=NOW)
    assert [r.id for r in await store.outbox()] == [r1.id]


async def test_a_whole_decision_is_approved_or_rejected_at_once(store: SqlStore) -> None:
    await store.record_actions([act("c1", 2), act("c2", 18)], mode="approve", now=NOW)
    await store.record_actions([act("c3", 5, decision="d2")], mode="approve", now=NOW)
    assert await store.standing_proposals(["madhive_12345"], since=NOW) == \
        {"madhive_12345": "d2"}
    assert await store.standing_proposals(["madhive_12345"],
                                          since=NOW + timedelta(seconds=1)) == {}
    rows = await store.decide_decision("d1", approve=True, actor="ana", now=NOW)
    assert sorted(r.action.cell_id for r in rows) == ["c1", "c2"]
    assert {(r.status, r.actor) for r in rows} == {("pending", "ana")}
    assert [r.action.cell_id for r in await store.outbox()] == ["c1", "c2"]  # not d2's
    with pytest.raises(StateConflict, match="2 pending"):
        await store.decide_decision("d1", approve=False, actor="ana", now=NOW)
    with pytest.raises(NotFound):
        await store.decide_decision("nope", approve=True, actor="ana", now=NOW)
    (rejected,) = await store.decide_decision("d2", approve=False, actor="bo", now=NOW,
                                              note="too aggressive")
    assert (rejected.status, rejected.error) == ("rejected", "too aggressive")


async def test_undo_queues_the_reverse_of_an_applied_action_once(store: SqlStore) -> None:
    await store.record_actions([act("c1", 5)], mode="live", now=NOW)
    (row,) = await store.list_actions()
    with pytest.raises(StateConflict, match="not applied"):
        await store.undo_action(row.id, actor="alice", now=NOW)
    assert await store.set_action_status(row.id, "applying", now=NOW, expect=("pending",),
                                         attempt=True)
    assert not await store.set_action_status(row.id, "applied", now=NOW, expect=("pending",))
    assert await store.set_action_status(row.id, "applied", now=NOW, expect=("applying",),
                                         result={"daily_budget_micros": 5})
    undo = await store.undo_action(row.id, actor="alice", now=NOW)
    again = await store.undo_action(row.id, actor="alice", now=NOW)
    assert undo.id == again.id and undo.undo_of == row.id
    assert again.repeat and not undo.repeat and again.as_dict()["repeat"] is True
    assert "repeat" not in undo.as_dict()
    assert (undo.status, undo.mode, undo.actor) == ("pending", "user", "alice")
    assert undo.action.after == row.action.before and undo.action.before == row.action.after
    applied = await store.get_action(row.id)
    assert applied is not None and applied.attempts == 1 and applied.applied_at == NOW
    assert applied.result == {"daily_budget_micros": 5}


async def test_bad_filters_name_the_field(store: SqlStore) -> None:
    with pytest.raises(BadInput, match="status"):
        await store.list_actions(status="done")
    with pytest.raises(ValueError):
        await store.record_actions([act("c1", 1)], mode="yolo", now=NOW)


async def test_an_unchanged_decision_is_not_recorded_again(store: SqlStore) -> None:
    # the same proposal, cycle after cycle, while nobody has looked at it yet
    assert await store.record_actions([act("c1", 5, decision="d1")], mode="approve",
                                      now=NOW) == 1
    assert await store.record_actions([act("c1", 5, decision="d2")], mode="approve",
                                      now=NOW) == 0
    # the same in shadow mode: one row, not one a cycle
    assert await store.record_actions([act("c2", 7, decision="d1")], mode="shadow", now=NOW) == 1
    assert await store.record_actions([act("c2", 7, decision="d2")], mode="shadow", now=NOW) == 0
    # a different change is recorded (and supersedes the open proposal)
    assert await store.record_actions([act("c1", 6, decision="d3")], mode="approve",
                                      now=NOW) == 1
    rows = {r.action.decision_id: r.status for r in await store.list_actions(cell_id="c1")}
    assert rows == {"d1": "superseded", "d3": "proposed"}


async def test_an_approved_action_is_not_superseded_by_the_next_proposal(
        store: SqlStore) -> None:
    await store.record_actions([act("c1", 5, decision="d1")], mode="approve", now=NOW)
    (row,) = await store.list_actions()
    await store.decide_action(row.id, approve=True, actor="alice", now=NOW)
    await store.record_actions([act("c1", 8, decision="d2")], mode="approve", now=NOW)
    statuses = {r.action.decision_id: r.status for r in await store.list_actions()}
    assert statuses == {"d1": "pending", "d2": "proposed"}


async def test_a_refused_undo_can_be_asked_for_again(store: SqlStore) -> None:
    await store.record_actions([act("c1", 5)], mode="live", now=NOW)
    (row,) = await store.list_actions()
    await store.finish_actions([(row.id, "applied", None, None)], now=NOW)
    first = await store.undo_action(row.id, actor="alice", now=NOW)
    await store.finish_actions([(first.id, "refused", "stale", None)], now=NOW)
    second = await store.undo_action(row.id, actor="alice", now=NOW)
    assert second.id != first.id and second.status == "pending"
    again = await store.undo_action(row.id, actor="bob", now=NOW)
    assert again.id == second.id and again.repeat
    assert await store.held_cells("madhive_12345", since=NOW) == {"c1"}


async def test_a_new_sandbox_market_closes_the_earlier_ones_open_actions(
        store: SqlStore) -> None:
    """A sandbox start is a new DSP at the wall clock, behind an earlier run's sped-up time:
    that run's open actions are superseded (never its finished ones), and a person's change it
    stamped in this market's future holds no line item now."""
    later = NOW + timedelta(hours=50)  # the earlier market's clock, ahead of the new one
    await store.record_actions([act("c1", 5, decision="d1")], mode="live", now=later)
    await store.record_actions([act("c2", 6, decision="d2")], mode="approve", now=later)
    await store.record_actions([act("c3", 7, decision="d3")], mode="live", now=later)
    rows = {r.action.cell_id: r for r in await store.list_actions()}
    await store.finish_actions([(rows["c1"].id, "applied", None, None)], now=later)
    undo = await store.undo_action(rows["c1"].id, actor="alice", now=later)
    assert undo.status == "pending"
    # the hold follows the stamp: a change "from the future" holds nothing now
    assert await store.held_cells("madhive_12345", since=NOW - timedelta(hours=1)) == {"c1"}
    assert await store.held_cells("madhive_12345", since=NOW - timedelta(hours=1),
                                  until=NOW) == set()
    assert await store.held_cells("madhive_12345", since=later, until=later) == {"c1"}
    n = await store.supersede_open_actions(now=NOW, error="an earlier sandbox market's action")
    assert n == 3  # the proposal, the pending change and the pending undo
    after = {r.id: r for r in await store.list_actions()}
    assert after[rows["c1"].id].status == "applied"
    for i in (rows["c2"].id, rows["c3"].id, undo.id):
        assert after[i].status == "superseded"
        assert after[i].error == "an earlier sandbox market's action"


async def test_finished_actions_and_old_dead_letters_move_to_the_audit_archive(
        store: SqlStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Past their retention, finished actions and dead letters go to Parquet (read back with
    pyarrow, every column) and leave SQL; open ones, recent ones and an action a kept undo
    refers to stay; running it again moves nothing twice."""
    from campaignd.pipeline.archive import archive_old, read_archive

    old = NOW - timedelta(days=200)
    # c1: applied 200 days ago and undone (the undo, applied too, is as old)
    await store.record_actions([act("c1", 5, decision="d0")], mode="live", now=old)
    # c2: refused long ago; c3: still pending from long ago; c4: shadow, recent
    await store.record_actions([act("c2", 6, decision="d0"), act("c3", 7, decision="d0")],
                               mode="live", now=old)
    await store.record_actions([act("c4", 8, decision="d9")], mode="shadow", now=NOW)
    rows = {r.action.cell_id: r for r in await store.list_actions()}
    c1, c2 = rows["c1"].id, rows["c2"].id
    assert await store.set_action_status(c1, "applied", now=old, expect=("pending",),
                                         result={"daily_budget_micros": 5})
    assert await store.finish_actions([(c2, "refused", "over the cap", None)], now=old)
    undo = await store.undo_action(c1, actor="alice", now=old)
    assert await store.set_action_status(undo.id, "applied", now=old, expect=("pending",))
    await store.add_dead_letters([("bad_money", b'{"old": 1}')], source="feed", now=old)
    await store.add_dead_letters([("bad_money", b'{"new": 1}')], source="feed", now=NOW)

    moved = await archive_old(store, tmp_path, now=NOW, action_days=180, dead_letter_days=30)
    # the undo goes first, then (next chunk) the action it undid
    assert moved == {"actions": 3, "dead_letters": 1}
    left = {r.action.cell_id: r.status for r in await store.list_actions()}
    assert left == {"c3": "pending", "c4": "shadow"}
    assert [d.raw for d in await store.list_dead_letters()] == [b'{"new": 1}']

    arch = read_archive(tmp_path, "actions").to_pylist()
    assert [(a["id"], a["status"]) for a in arch] == [(c1, "applied"), (c2, "refused"),
                                                     (undo.id, "applied")]
    assert arch[2]["undo_of"] == c1 and arch[2]["actor"] == "alice"
    assert arch[0]["result_json"] == '{"daily_budget_micros":5}'
    assert arch[1]["error"] == "over the cap"
    assert arch[0]["updated_at"] == old and '"x":[1,2]' in arch[0]["evidence_json"]
    letters = read_archive(tmp_path, "dead_letters").to_pylist()
    assert [(d["reason"], d["raw"], d["count"]) for d in letters] == [
        ("bad_money", b'{"old": 1}', 1)]

    assert await archive_old(store, tmp_path, now=NOW, action_days=180,
                             dead_letter_days=30) == {"actions": 0, "dead_letters": 0}
    assert len(read_archive(tmp_path, "actions")) == 3


async def test_the_archive_respects_undo_and_its_time_budget(
        store: SqlStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from campaignd.pipeline.archive import archive_old

    old = NOW - timedelta(days=200)
    await store.record_actions([act("c1", 5, decision="d0")], mode="live", now=old)
    (row,) = await store.list_actions()
    assert await store.set_action_status(row.id, "applied", now=old, expect=("pending",))
    # a run with no time left starts nothing
    assert await archive_old(store, tmp_path, now=NOW, action_days=180, dead_letter_days=30,
                             time_budget_s=0.0) == {"actions": 0, "dead_letters": 0}
    # read for the archive, then a person asks for its undo before the delete: it stays
    assert [r["id"] for r in await store.archivable_actions(before=NOW)] == [row.id]
    undo = await store.undo_action(row.id, actor="alice", now=NOW)
    assert await store.delete_actions([row.id], updated_before=NOW) == 0
    assert (await store.get_action(row.id)) is not None and undo.undo_of == row.id


def test_archived_rows_are_keyed_by_id_and_creation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite can give an id again once the newest rows have left: both rows are kept; the
    same row archived twice (a crash between file and delete) is one, its newest copy."""
    from campaignd.pipeline.archive import read_archive, write_chunk

    def letter(created: datetime, seen: datetime, count: int) -> dict:  # type: ignore[type-arg]
        return {"id": 1, "fingerprint": "f", "reason": "bad_money", "source": "s",
                "raw": b"x", "first_seen": created, "last_seen": seen, "count": count}

    early, late = NOW - timedelta(days=90), NOW - timedelta(days=40)
    write_chunk(tmp_path, "dead_letters", [letter(early, early, 1)], now=NOW - timedelta(days=50))
    write_chunk(tmp_path, "dead_letters", [letter(early, early + timedelta(days=1), 2)],
                now=NOW - timedelta(days=20))
    write_chunk(tmp_path, "dead_letters", [letter(late, late, 5)], now=NOW)
    got = [(r["first_seen"], r["count"]) for r in
           read_archive(tmp_path, "dead_letters").to_pylist()]
    assert got == [(early, 2), (late, 5)]


async def test_a_note_above_the_limit_is_refused_not_stored(store: SqlStore) -> None:
    from campaignd.domain.actions import MAX_NOTE_CHARS

    await store.record_actions([act("c1", 5)], mode="approve", now=NOW)
    (row,) = await store.list_actions()
    with pytest.raises(BadInput, match="note: is longer than 1000 characters"):
        await store.decide_action(row.id, approve=False, actor="bob", now=NOW,
                                  note="x" * (MAX_NOTE_CHARS + 1))
    with pytest.raises(BadInput, match="note: is longer than 1000 characters"):
        await store.decide_decision(row.action.decision_id, approve=False, actor="bob",
                                    now=NOW, note="x" * (MAX_NOTE_CHARS + 1))
    assert (await store.get_action(row.id)).status == "proposed"  # type: ignore[union-attr]


def _at(a: Action, t: datetime, decision: str) -> Action:
    return dataclasses.replace(a, created_at=t, decision_id=decision,
                               key=action_key(decision, a.cell_id, a.kind, a.after))


async def test_a_newer_proposal_leaves_approved_changes_and_other_agents_alone(
        store: SqlStore) -> None:
    """approve mode (review findings): a re-plan repeating a change a person approved (not
    applied yet) is nothing new; a newer re-plan supersedes only the same agent's older budget
    proposals, not another agent's; and the same proposal again is nothing new whatever else
    is open."""
    from datetime import timedelta

    await store.record_actions([_at(act("c1", 5), NOW, "d1")], mode="approve", now=NOW)
    await store.decide_decision("d1", approve=True, actor="ana", now=NOW)
    later = NOW + timedelta(minutes=2)
    assert await store.record_actions([_at(act("c1", 5), later, "d2")], mode="approve",
                                      now=later) == 0
    pause = dataclasses.replace(_at(act("c9", 0), NOW, "m1"), kind="pause", agent="monitor",
                                before={"active": True}, after={"active": False},
                                key=action_key("m1", "c9", "pause", {"active": False}))
    await store.record_actions([pause], mode="approve", now=NOW)
    await store.record_actions([_at(act("c2", 6), NOW, "d3")], mode="approve", now=NOW)
    hours = NOW + timedelta(hours=2)
    assert await store.record_actions([_at(act("c2", 6), hours, "d4")], mode="approve",
                                      now=hours) == 0  # the same re-plan again
    assert await store.record_actions([_at(act("c3", 4), hours, "d5")], mode="approve",
                                      now=hours) == 1
    status = {r.action.decision_id: r.status for r in await store.list_actions()}
    assert status == {"d1": "pending", "m1": "proposed", "d3": "superseded", "d5": "proposed"}
