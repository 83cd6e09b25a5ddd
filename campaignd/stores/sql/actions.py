"""Actions in SQL: the decision engine's outbox and the audit log of every change.

An action is recorded once (its idempotency ``key`` is unique: recording the same decision again
is a no-op) with the status its decision mode gives it — ``pending`` (live: the executor applies
it), ``proposed`` (approve: a person approves or rejects it), ``shadow`` (decided, never
applied). A newer decision about the same line item supersedes the open (proposed or pending)
ones, so an approval queue never applies a stale plan. Status changes are guarded updates
(``WHERE status = …``): two people approving, or a person and the executor racing, can never
apply a change twice or resurrect a rejected one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
from sqlalchemy import and_, case, delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from campaignd.domain.actions import MAX_NOTE_CHARS, OPEN_STATUSES, Action, action_key
from campaignd.errors import BadInput, NotFound, StateConflict
from campaignd.stores.sql.models import ACTION_STATUSES, DECISION_MODES, actions
from campaignd.stores.sql.models import cells as cells_table


@dataclass(frozen=True, slots=True)
class ActionRow:
    """An action as recorded: the decided ``action`` and what happened to it."""

    id: int
    action: Action
    status: str
    mode: str
    actor: str | None
    attempts: int
    error: str | None
    result: dict[str, Any] | None
    undo_of: int | None
    updated_at: datetime
    decided_at: datetime | None
    applied_at: datetime | None
    repeat: bool = False
    """Returned for a request made before (an undo asked again): nothing new was queued."""

    def as_dict(self) -> dict[str, Any]:
        out = {"id": self.id, **self.action.as_dict(), "status": self.status,
               "mode": self.mode, "actor": self.actor, "attempts": self.attempts,
               "error": self.error, "result": self.result, "undo_of": self.undo_of,
               "updated_at": self.updated_at.isoformat(),
               "decided_at": self.decided_at.isoformat() if self.decided_at else None,
               "applied_at": self.applied_at.isoformat() if self.applied_at else None}
        if self.repeat:
            out["repeat"] = True
        return out


def _dumps(value: Any) -> str:
    """Canonical JSON; numpy scalars become numbers and non-finite floats null (the API's JSON
    has no NaN)."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), default=str,
                      allow_nan=False)


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def _row(r: Any) -> ActionRow:
    a = Action(key=r.key, decision_id=r.decision_id, campaign_id=r.campaign_id,
               cell_id=r.cell_id, line_item_id=r.line_item_id, kind=r.kind,
               before=json.loads(r.before_json), after=json.loads(r.after_json), agent=r.agent,
               reason=r.reason, evidence=json.loads(r.evidence_json), created_at=r.created_at,
               score=r.score, impact=r.impact, risk=r.risk, priority=r.priority)
    return ActionRow(id=r.id, action=a, status=r.status, mode=r.mode, actor=r.actor,
                     attempts=r.attempts, error=r.error,
                     result=json.loads(r.result_json) if r.result_json else None,
                     undo_of=r.undo_of, updated_at=r.updated_at, decided_at=r.decided_at,
                     applied_at=r.applied_at)


def action_row(values: Mapping[str, Any]) -> ActionRow:
    """An ``ActionRow`` from the table's columns by name (e.g. a row of the audit archive)."""
    return _row(SimpleNamespace(**values))


MODE_STATUS = {"live": "pending", "approve": "proposed", "shadow": "shadow", "user": "pending"}
"""The status a newly decided action gets in each decision mode."""


def _check_note(note: str | None) -> None:
    """A verdict's note is stored whole (in ``error``, returned with every listing) or not at
    all: one longer than ``MAX_NOTE_CHARS`` is refused."""
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise BadInput(f"is longer than {MAX_NOTE_CHARS} characters", field="note",
                       fix=f"shorten it to at most {MAX_NOTE_CHARS} characters")


class ActionMethods:
    """Mixed into ``SqlStore`` (which provides ``engine`` and ``_tx``)."""

    engine: AsyncEngine

    def _tx(self, doing: str) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    async def record_actions(self, items: Sequence[Action], *, mode: str, now: datetime,
                             actor: str | None = None, undo_of: int | None = None,
                             applied: bool = False) -> int:
        """Record decided actions (idempotent by key) with the status of ``mode`` (or, with
        ``applied``, as changes already made — the DSP sync's). A decided action that repeats
        the latest still-open one of its line item (same change, e.g. a proposal a person has
        not looked at yet, or the same shadow decision cycle after cycle) is not recorded
        again; open actions of the same line items from other decisions become
        ``superseded`` — unless a person approved them. A proposal (approve mode) is recorded
        whole, and every older proposal of its campaign becomes ``superseded``: a decision is
        approved or rejected as one. Returns how many were new."""
        if mode not in DECISION_MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(DECISION_MODES)}")
        if not items:
            return 0
        status = "applied" if applied else MODE_STATUS[mode]
        async with self._tx("recording actions") as conn:
            keys = [a.key for a in items]
            known: set[str] = set()
            for i in range(0, len(keys), 1000):
                known.update((await conn.execute(
                    select(actions.c.key).where(actions.c.key.in_(keys[i:i + 1000])))).scalars())
            new = [a for a in items if a.key not in known]
            new = list({a.key: a for a in new}.values())
            if new and not applied and actor is None:
                fresh = await self._not_repeated(conn, new)
                if status != "proposed" or not fresh:
                    # (a proposal repeating only what is open -- proposed, or approved and not
                    # applied yet -- is nothing new for a person)
                    new = fresh
                # (otherwise a proposal is recorded whole, repeats and all: a person approves
                # or rejects a decision as one, and those it replaces are superseded below)
            if not new:
                return 0
            if status == "proposed" and actor is None:
                # a newer re-plan of a campaign replaces every proposal of its older ones, not
                # only those of the line items it changes: approving an older decision later
                # would apply a plan the newer one replaced (its cuts and raises apart)
                # (the same agent's budget re-plans only: another agent's proposal stands)
                newest: dict[tuple[str, str], tuple[datetime, set[str]]] = {}
                for a in new:
                    if a.kind != "budget":
                        continue
                    at, ids = newest.setdefault((a.campaign_id, a.agent), (a.created_at, set()))
                    ids.add(a.decision_id)
                for (campaign, agent), (at, ids) in newest.items():
                    await conn.execute(
                        update(actions)
                        .where(and_(actions.c.campaign_id == campaign,
                                    actions.c.agent == agent, actions.c.kind == "budget",
                                    actions.c.status == "proposed",
                                    actions.c.actor.is_(None),
                                    actions.c.decision_id.not_in(sorted(ids)),
                                    actions.c.created_at < at))
                        .values(status="superseded", updated_at=now,
                                error=f"superseded by decision {sorted(ids)[0]}"))
            if status in ("pending", "proposed"):
                by_decision: dict[tuple[str, str], list[str]] = {}
                for a in new:
                    by_decision.setdefault((a.decision_id, a.campaign_id), []).append(a.cell_id)
                for (decision, campaign), cells in by_decision.items():
                    for i in range(0, len(cells), 1000):
                        await conn.execute(
                            update(actions)
                            .where(and_(actions.c.campaign_id == campaign,
                                        actions.c.cell_id.in_(cells[i:i + 1000]),
                                        actions.c.status.in_(("proposed", "pending")),
                                        actions.c.actor.is_(None),
                                        actions.c.decision_id != decision))
                            .values(status="superseded", updated_at=now,
                                    error=f"superseded by decision {decision}"))
            await conn.execute(insert(actions), [{
                "key": a.key, "decision_id": a.decision_id, "campaign_id": a.campaign_id,
                "cell_id": a.cell_id, "line_item_id": a.line_item_id, "kind": a.kind,
                "status": status, "mode": mode, "agent": a.agent, "actor": actor,
                "reason": a.reason, "before_json": _dumps(a.before),
                "after_json": _dumps(a.after), "evidence_json": _dumps(a.evidence),
                "result_json": None, "score": float(a.score), "impact": float(a.impact),
                "risk": float(a.risk), "priority": float(a.priority), "attempts": 0,
                "error": None, "undo_of": undo_of, "created_at": a.created_at,
                "updated_at": now, "decided_at": now if actor else None,
                "applied_at": now if applied else None,
            } for a in new])
            return len(new)

    async def begin_actions(self, items: Sequence[Action], *, now: datetime) -> dict[str, int]:
        """Record changes about to be sent by a component other than the executor (the DSP
        sync's own cap enforcement) as ``applying``, before the request goes out; return key →
        action id, to finish them with ``finish_actions(..., expect=("applying",))``. A key
        recorded before keeps its row (its id is returned). Should the daemon stop between
        this and the DSP's answer, the row stays ``applying`` until the sync next enforces the
        caps and closes it (``interrupted_sync_actions``): ``applied`` if the DSP holds it, else
        ``superseded`` (the sync decides again from the caps of then). The executor never
        sends these rows. A change the sync started is never lost from the audit log."""
        if not items:
            return {}
        items = list({a.key: a for a in items}.values())
        keys = [a.key for a in items]
        async with self._tx("recording changes before sending them") as conn:
            known: set[str] = set()
            for i in range(0, len(keys), 1000):
                known.update((await conn.execute(
                    select(actions.c.key).where(actions.c.key.in_(keys[i:i + 1000])))).scalars())
            new = [a for a in items if a.key not in known]
            if new:
                await conn.execute(insert(actions), [{
                    "key": a.key, "decision_id": a.decision_id, "campaign_id": a.campaign_id,
                    "cell_id": a.cell_id, "line_item_id": a.line_item_id, "kind": a.kind,
                    "status": "applying", "mode": "live", "agent": a.agent, "actor": None,
                    "reason": a.reason, "before_json": _dumps(a.before),
                    "after_json": _dumps(a.after), "evidence_json": _dumps(a.evidence),
                    "result_json": None, "score": float(a.score), "impact": float(a.impact),
                    "risk": float(a.risk), "priority": float(a.priority), "attempts": 1,
                    "error": None, "undo_of": None, "created_at": a.created_at,
                    "updated_at": now, "decided_at": None, "applied_at": None,
                } for a in new])
            ids: dict[str, int] = {}
            for i in range(0, len(keys), 1000):
                ids.update({k: int(v) for k, v in (await conn.execute(
                    select(actions.c.key, actions.c.id)
                    .where(actions.c.key.in_(keys[i:i + 1000])))).all()})
        return ids

    async def _not_repeated(self, conn: AsyncConnection, items: list[Action]) -> list[Action]:
        """``items`` without those whose line item's latest action is still open (proposed,
        pending, applying) or a shadow decision, with the same kind, before and after."""
        by_campaign: dict[str, list[str]] = {}
        for a in items:
            by_campaign.setdefault(a.campaign_id, []).append(a.cell_id)
        latest: dict[tuple[str, str], tuple[str, str, str]] = {}
        for campaign, cells in by_campaign.items():
            for i in range(0, len(cells), 1000):
                newest = (select(func.max(actions.c.id))
                          .where(and_(actions.c.campaign_id == campaign,
                                      actions.c.cell_id.in_(cells[i:i + 1000])))
                          .group_by(actions.c.cell_id))
                rows = (await conn.execute(
                    select(actions.c.cell_id, actions.c.kind, actions.c.before_json,
                           actions.c.after_json)
                    .where(and_(actions.c.id.in_(newest),
                                actions.c.status.in_(("proposed", "pending", "applying",
                                                      "shadow")))))).all()
                for cell, kind, before, after in rows:
                    latest[(campaign, cell)] = (kind, before, after)
        return [a for a in items if latest.get((a.campaign_id, a.cell_id))
                != (a.kind, _dumps(a.before), _dumps(a.after))]

    async def outbox(self, *, limit: int = 500) -> list[ActionRow]:
        """Actions to apply, oldest first: ``pending`` and ``applying`` (an ``applying`` action
        was interrupted by a crash: applying it again is safe, actions are absolute). Not the
        DSP sync's own changes (``agent`` = ``sync``): the sync closes those itself
        (``interrupted_sync_actions``), after checking the caps again."""
        async with self._tx("reading the outbox") as conn:
            rows = (await conn.execute(
                select(actions).where(and_(actions.c.status.in_(("pending", "applying")),
                                           actions.c.agent != "sync"))
                .order_by(actions.c.id).limit(limit))).all()
        return [_row(r) for r in rows]

    async def close_sync_actions_except(self, campaign_ids: Collection[str], *,
                                        now: datetime) -> int:
        """Supersede the sync changes still ``applying`` of campaigns not in ``campaign_ids``
        (removed from the configuration: no sync of theirs will close them). Returns how
        many."""
        async with self._tx("closing sync changes of removed campaigns") as conn:
            res = await conn.execute(
                update(actions)
                .where(and_(actions.c.status == "applying", actions.c.agent == "sync",
                            actions.c.campaign_id.not_in(list(campaign_ids))))
                .values(status="superseded", updated_at=now,
                        error="interrupted; the campaign is no longer configured"))
            return int(res.rowcount or 0)

    async def supersede_open_actions(self, *, now: datetime, error: str) -> int:
        """Supersede every action still open -- proposed, pending (approved, or a person's
        undo) or applying -- with ``error`` as the reason (for a DSP whose line items are not
        those any more: a new sandbox market). Returns how many."""
        async with self._tx("superseding open actions") as conn:
            res = await conn.execute(
                update(actions).where(actions.c.status.in_(OPEN_STATUSES))
                .values(status="superseded", updated_at=now, error=error))
            return int(res.rowcount or 0)

    async def interrupted_sync_actions(self, campaign_id: str) -> list[ActionRow]:
        """The DSP sync's own changes for a campaign still ``applying``: sent (or about to be)
        when the daemon stopped, or when the DSP's answer was lost."""
        async with self._tx("reading interrupted sync changes") as conn:
            rows = (await conn.execute(
                select(actions).where(and_(actions.c.status == "applying",
                                           actions.c.agent == "sync",
                                           actions.c.campaign_id == campaign_id))
                .order_by(actions.c.id))).all()
        return [_row(r) for r in rows]

    async def set_action_status(self, action_id: int, status: str, *, now: datetime,
                                expect: Sequence[str], error: str | None = None,
                                result: dict[str, Any] | None = None,
                                attempt: bool = False, actor: str | None = None) -> bool:
        """Move an action to ``status`` if it is in one of ``expect`` (a guarded update).
        Returns False when it was not (someone else moved it first)."""
        if status not in ACTION_STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(ACTION_STATUSES)}")
        values: dict[str, Any] = {"status": status, "updated_at": now, "error": error}
        if result is not None:
            values["result_json"] = _dumps(result)
        if attempt:
            values["attempts"] = actions.c.attempts + 1
        if status == "applied":
            values["applied_at"] = now
        if actor is not None:
            values["actor"] = actor
            values["decided_at"] = now
        async with self._tx(f"updating action {action_id}") as conn:
            res = await conn.execute(update(actions).where(
                and_(actions.c.id == action_id, actions.c.status.in_(tuple(expect))))
                .values(**values))
            return bool(res.rowcount)

    async def claim_actions(self, ids: Sequence[int], *, now: datetime,
                            clipped: Mapping[int, tuple[Mapping[str, Any], Mapping[str, Any]]]
                            | None = None) -> list[int]:
        """Mark these outbox actions ``applying`` (one more attempt each) in one transaction;
        returns the ids that were still ``pending`` or ``applying`` (others were superseded or
        decided meanwhile and must not be sent). ``clipped``: id → (``after``, ``evidence``) of
        the raises the executor cut down to the headroom left: what is sent is what is
        recorded, before it is sent (the evidence keeps the plan's ``after``)."""
        if not ids:
            return []
        out: list[int] = []
        clipped = clipped or {}
        async with self._tx("claiming actions") as conn:
            for action_id in [i for i in ids if i in clipped]:
                after, evidence = clipped[action_id]
                res = await conn.execute(
                    update(actions)
                    .where(and_(actions.c.id == action_id,
                                actions.c.status.in_(("pending", "applying"))))
                    .values(status="applying", updated_at=now,
                            attempts=actions.c.attempts + 1, after_json=_dumps(after),
                            evidence_json=_dumps(evidence))
                    .returning(actions.c.id))
                out.extend(res.scalars())
            ids = [i for i in ids if i not in clipped]
            for i in range(0, len(ids), 1000):
                chunk = list(ids[i:i + 1000])
                # one statement: what it returns is exactly what it moved (a SELECT then an
                # UPDATE could return an action superseded in between, on PostgreSQL)
                res = await conn.execute(
                    update(actions)
                    .where(and_(actions.c.id.in_(chunk),
                                actions.c.status.in_(("pending", "applying"))))
                    .values(status="applying", updated_at=now,
                            attempts=actions.c.attempts + 1)
                    .returning(actions.c.id))
                out.extend(res.scalars())
        return sorted(out)

    async def finish_actions(self, outcomes: Sequence[tuple[int, str, str | None,
                                                            dict[str, Any] | None]], *,
                             now: datetime, expect: Sequence[str] = ("pending", "applying"),
                             uncounted: Collection[int] = ()) -> int:
        """Record many outcomes — ``(id, status, error, result)`` — in one transaction, each a
        guarded update (only from ``expect``). ``uncounted``: actions whose claim was not a try
        (a rate limit, an open circuit): their attempt is taken back. Returns how many rows
        changed."""
        changed = 0
        if not outcomes:
            return 0
        async with self._tx("recording action outcomes") as conn:
            for action_id, status, error, result in outcomes:
                if status not in ACTION_STATUSES:
                    raise ValueError(f"status {status!r} is not one of "
                                     f"{', '.join(ACTION_STATUSES)}")
                values: dict[str, Any] = {"status": status, "updated_at": now, "error": error}
                if result is not None:
                    values["result_json"] = _dumps(result)
                if status == "applied":
                    values["applied_at"] = now
                if action_id in uncounted:
                    values["attempts"] = case((actions.c.attempts > 0, actions.c.attempts - 1),
                                              else_=0)
                res = await conn.execute(update(actions).where(
                    and_(actions.c.id == action_id, actions.c.status.in_(tuple(expect))))
                    .values(**values))
                changed += int(res.rowcount or 0)
        return changed

    async def held_cells(self, campaign_id: str, *, since: datetime,
                         until: datetime | None = None) -> set[str]:
        """Cells a person changed (undo) since ``since`` (and, with ``until``, not after it)
        that are not failed or refused: the agents leave their line items alone for a while.
        (``until`` = now: an action stamped later -- by an earlier sandbox market's sped-up
        clock -- holds nothing.)"""
        when = actions.c.updated_at >= since
        if until is not None:
            when = and_(when, actions.c.updated_at <= until)
        async with self._tx("reading held cells") as conn:
            rows = (await conn.execute(
                select(actions.c.cell_id).distinct()
                .where(and_(actions.c.campaign_id == campaign_id, actions.c.mode == "user",
                            actions.c.status.in_(("pending", "applying", "applied")),
                            when)))).scalars()
            return set(rows)

    async def archivable_actions(self, *, before: datetime,
                                 limit: int = 10_000) -> list[dict[str, Any]]:
        """Up to ``limit`` finished actions (not proposed, pending or applying) last updated
        before ``before``, oldest first, as plain column dicts — except those an action still
        in SQL undoes (they follow once their undo has gone)."""
        undo = actions.alias("undo")
        q = (select(actions)
             .where(actions.c.status.not_in(OPEN_STATUSES), actions.c.updated_at < before,
                    ~exists().where(undo.c.undo_of == actions.c.id))
             .order_by(actions.c.id).limit(limit))
        async with self._tx("reading actions to archive") as conn:
            rows = (await conn.execute(q)).mappings().all()
        return [dict(r) for r in rows]

    async def delete_actions(self, ids: Sequence[int], *, updated_before: datetime) -> int:
        """Delete finished actions not updated since ``updated_before`` (open ones, any changed
        since they were read and any an action undoes — an undo asked for meanwhile — are never
        deleted); returns rows deleted."""
        if not ids:
            return 0
        undo = actions.alias("undo")
        async with self._tx("deleting archived actions") as conn:
            result = await conn.execute(delete(actions).where(
                actions.c.id.in_(list(ids)), actions.c.status.not_in(OPEN_STATUSES),
                actions.c.updated_at < updated_before,
                ~exists().where(undo.c.undo_of == actions.c.id)))
        return int(result.rowcount or 0)

    async def get_action(self, action_id: int) -> ActionRow | None:
        async with self._tx(f"reading action {action_id}") as conn:
            r = (await conn.execute(select(actions).where(actions.c.id == action_id))).first()
        return None if r is None else _row(r)

    async def list_actions(self, *, status: str | None = None, campaign_id: str | None = None,
                           cell_id: str | None = None, decision_id: str | None = None,
                           limit: int = 100) -> list[ActionRow]:
        """Newest first."""
        if status is not None and status not in ACTION_STATUSES:
            raise BadInput("is not an action status", field="status", value=status,
                           fix=f"use one of {', '.join(ACTION_STATUSES)}")
        q = select(actions).order_by(actions.c.id.desc()).limit(limit)
        for col, value in ((actions.c.status, status), (actions.c.campaign_id, campaign_id),
                           (actions.c.cell_id, cell_id), (actions.c.decision_id, decision_id)):
            if value is not None:
                q = q.where(col == value)
        async with self._tx("listing actions") as conn:
            rows = (await conn.execute(q)).all()
        return [_row(r) for r in rows]

    async def count_actions(self) -> dict[str, int]:
        """Actions by status (every status, 0 when none)."""
        async with self._tx("counting actions") as conn:
            rows = (await conn.execute(select(actions.c.status, func.count())
                                       .group_by(actions.c.status))).all()
        out = dict.fromkeys(ACTION_STATUSES, 0)
        out.update({s: int(n) for s, n in rows})
        return out

    async def decide_action(self, action_id: int, *, approve: bool, actor: str,
                            now: datetime, note: str | None = None) -> ActionRow:
        """A person's verdict on a ``proposed`` action: approved → ``pending`` (the executor
        applies it), rejected → ``rejected``. Raises ``NotFound`` or ``BadInput`` (not
        proposed: already decided, superseded, or not from approve mode; a note longer than
        ``MAX_NOTE_CHARS``)."""
        _check_note(note)
        row = await self.get_action(action_id)
        if row is None:
            raise NotFound(f"no action {action_id}; list them with `campaignd actions list`",
                           field="action_id")
        verb = "approve" if approve else "reject"
        ok = await self.set_action_status(
            action_id, "pending" if approve else "rejected", now=now, expect=("proposed",),
            actor=actor, error=None if approve else (note or f"rejected by {actor}"))
        if not ok:
            current = await self.get_action(action_id)
            state = current.status if current else "gone"
            raise StateConflict(f"cannot {verb} action {action_id}: it is {state}, not proposed",
                           field="action_id", value=action_id,
                           fix="only proposed actions (decision.mode = \"approve\") can be "
                               "approved or rejected; see `campaignd actions list --status "
                               "proposed`")
        out = await self.get_action(action_id)
        assert out is not None
        return out

    async def decide_decision(self, decision_id: str, *, approve: bool, actor: str,
                              now: datetime, note: str | None = None) -> list[ActionRow]:
        """A person's verdict on every ``proposed`` action of one decision at once (a campaign's
        re-plan: its cuts and the raises they pay for), in one transaction. Raises ``NotFound``
        (no such decision), ``StateConflict`` (nothing of it is proposed any more) or
        ``BadInput`` (a note longer than ``MAX_NOTE_CHARS``)."""
        _check_note(note)
        verb = "approve" if approve else "reject"
        async with self._tx(f"{verb[:-1]}ing a decision") as conn:
            known = (await conn.execute(
                select(actions.c.status, func.count()).where(actions.c.decision_id == decision_id)
                .group_by(actions.c.status))).all()
            if not known:
                raise NotFound(f"no decision {decision_id!r}; list them with `campaignd actions "
                               "list --status proposed`", field="decision_id")
            res = await conn.execute(
                update(actions)
                .where(and_(actions.c.decision_id == decision_id,
                            actions.c.status == "proposed"))
                .values(status="pending" if approve else "rejected", updated_at=now,
                        actor=actor, decided_at=now,
                        error=None if approve else (note or f"rejected by {actor}"))
                .returning(actions.c.id))
            ids = sorted(int(i) for i in res.scalars())
        if not ids:
            states = ", ".join(f"{n} {st}" for st, n in sorted(known))
            raise StateConflict(f"cannot {verb} decision {decision_id}: none of its actions is "
                                f"proposed ({states})", field="decision_id", value=decision_id,
                                fix="only proposed actions (decision.mode = \"approve\") can be "
                                    "approved or rejected; see `campaignd actions list --status "
                                    "proposed`")
        out = [await self.get_action(i) for i in ids]
        return [r for r in out if r is not None]

    async def standing_proposals(self, campaign_ids: Collection[str], *,
                                 since: datetime) -> dict[str, str]:
        """Campaign → the decision whose actions are still ``proposed`` and were decided at or
        after ``since`` (approve mode: a proposal stands for a while before a newer decision
        may replace it)."""
        if not campaign_ids:
            return {}
        async with self._tx("reading standing proposals") as conn:
            rows = (await conn.execute(
                select(actions.c.campaign_id, func.max(actions.c.decision_id))
                .where(and_(actions.c.campaign_id.in_(list(campaign_ids)),
                            actions.c.status == "proposed", actions.c.created_at >= since))
                .group_by(actions.c.campaign_id))).all()
        return {str(c): str(d) for c, d in rows}

    async def _stop_cell_fix(self, row: ActionRow) -> str:
        """What a person can do instead of undoing a line item's creation: campaignd has no
        command to pause one line item; the DSP sync pauses the line items of cells the spec
        no longer has, and keeps a line item paused in the DSP as the DSP holds it."""
        a = row.action
        c = cells_table.c
        async with self._tx(f"reading cell {a.cell_id}") as conn:
            levels = (await conn.execute(
                select(c.audience, c.creative, c.bid_strategy, c.daypart, c.platform)
                .where(c.campaign_id == a.campaign_id, c.cell_id == a.cell_id))).mappings().first()
        rule = ("an [[exclusions]] rule matching this cell ("
                + ", ".join(f'{k} = "{v}"' for k, v in levels.items()) + ")"
                if levels else "an [[exclusions]] rule matching this cell's levels")
        li = f"line item {a.line_item_id}" if a.line_item_id else "the cell's line item"
        return (f"campaignd has no command that pauses one line item. To stop {li}, add {rule} "
                f"to campaign {a.campaign_id}'s spec and restart the daemon (its DSP sync "
                "pauses the line item of a cell the spec no longer has and lowers its budgets "
                f"to what it spent), or pause {li} in the DSP's own UI (campaignd keeps the "
                "state the DSP holds)")

    async def undo_action(self, action_id: int, *, actor: str, now: datetime) -> ActionRow:
        """Queue the reverse of an applied action: a new ``pending`` action whose ``after`` is the
        original's ``before`` (the executor applies it with the same cap checks, and the line
        item is then held from agents for ``decision.manual_hold_s``). Asking twice returns the
        same undo, unless it failed or was refused: then it is tried again."""
        row = await self.get_action(action_id)
        if row is None:
            raise NotFound(f"no action {action_id}; list them with `campaignd actions list`",
                           field="action_id")
        if row.action.kind == "create":
            raise StateConflict(f"cannot undo action {action_id}: a line item's creation is not "
                                "undone", field="action_id", value=action_id,
                                fix=await self._stop_cell_fix(row))
        if row.action.kind == "campaign_budget":
            raise StateConflict(f"cannot undo action {action_id}: the DSP campaign's budgets "
                                "follow the campaign spec's", field="action_id", value=action_id,
                                fix="change budget.lifetime / budget.daily in the campaign "
                                    "spec and restart (the sync sets them on the DSP)")
        if row.status != "applied":
            raise StateConflict(f"cannot undo action {action_id}: it is {row.status}, not applied",
                           field="action_id", value=action_id,
                           fix="only applied actions change the DSP; a proposed one can be "
                               "rejected instead")
        a = row.action
        after = dict(a.before)
        async with self._tx(f"reading the undos of action {action_id}") as conn:
            earlier = (await conn.execute(
                select(actions.c.id, actions.c.status).where(actions.c.undo_of == row.id)
                .order_by(actions.c.id.desc()))).all()
        if earlier and earlier[0].status not in ("failed", "refused", "superseded"):
            found = await self.get_action(int(earlier[0].id))
            assert found is not None
            return replace(found, repeat=True)  # asked again: the same undo
        decision = f"undo:{row.id}" + (f":{len(earlier)}" if earlier else "")
        undo = Action(key=action_key(decision, a.cell_id, a.kind, after),
                      decision_id=decision, campaign_id=a.campaign_id,
                      cell_id=a.cell_id, line_item_id=a.line_item_id, kind=a.kind,
                      before=dict(a.after), after=after, agent="undo",
                      reason=f"undo of action {row.id} requested by {actor}",
                      evidence={"undo_of": row.id, "original_reason": a.reason},
                      created_at=now)
        await self.record_actions([undo], mode="user", now=now, actor=actor, undo_of=row.id)
        made = await self.list_actions(decision_id=undo.decision_id, limit=1)
        return made[0]


__all__ = ["MODE_STATUS", "ActionMethods", "ActionRow", "action_row"]
