"""The executor: applies the actions in the SQL outbox to the DSP, exactly once in effect.

Every action is absolute (the line item's budgets or state wanted after it), recorded in SQL
before anything is sent (``pending``), marked ``applying`` while its request is in flight, and
``applied`` with the DSP's acknowledgement. A crash at any point therefore neither loses nor
doubles a change: on restart ``pending`` and ``applying`` actions are applied again, and applying
an absolute change a second time changes nothing (an action whose line item already holds its
``after`` is simply marked applied).

Money checks happen here too, against the DSP's *acknowledged* state, whatever the decision
engine planned: before a raise is sent, the campaign's line items — with the in-flight raises
reserved — must stay within the campaign's daily and lifetime caps. Within one drain the cuts go
first; a raise that does not fit waits for a later drain (a cut it depends on may still be
retrying) and is refused after ``max_attempts``. An action whose line item changed since it was
decided (its ``before`` is no longer the DSP's state) is refused as stale instead of overwriting
a newer change. Acknowledged state updates the DSP service's view of the line item (what the
agents read next) and the cell's stored budgets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus

from campaignd.clock import Clock
from campaignd.dsp.base import LineItem
from campaignd.errors import DSPCircuitOpen, DSPError, DSPRateLimited
from campaignd.logs import get_logger
from campaignd.metrics import Metrics
from campaignd.stores.sql.actions import ActionRow

log = get_logger("campaignd.executor")


def line_item_state(li: LineItem) -> dict[str, Any]:
    """The parts of a line item that actions change (what ``before``/``after`` hold)."""
    return {"daily_budget_micros": int(li.daily_budget_micros or 0),
            "lifetime_budget_micros": int(li.lifetime_budget_micros), "active": bool(li.active)}


@dataclass(slots=True)
class _Reserved:
    daily: int = 0
    lifetime: int = 0


@dataclass(slots=True)
class DrainResult:
    applied: int = 0
    failed: int = 0
    refused: int = 0
    waiting: int = 0
    errors: list[str] = field(default_factory=list)


class ActionExecutor:
    """Drains the outbox every ``poll_s`` (or at once when woken)."""

    def __init__(self, *, sql: Any, dsp: Any, clock: Clock, metrics: Metrics | None = None,
                 poll_s: float = 2.0, max_attempts: int = 8, concurrency: int = 8) -> None:
        self.sql = sql
        self.dsp = dsp
        self.clock = clock
        self.metrics = metrics
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self._wake = anyio.Event()
        self.last_drain: dict[str, Any] | None = None
        self.totals = DrainResult()

    def wake(self) -> None:
        """Drain now (new actions were recorded or approved)."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with anyio.move_on_after(self.poll_s):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.drain()
            except Exception as exc:  # a store outage must not stop the loop
                log.warning("executor: drain failed; will retry", error=str(exc)[:300])

    async def drain(self) -> DrainResult:
        """Apply what is in the outbox: cuts, pauses and activations first, then raises."""
        rows = await self.sql.outbox()
        out = DrainResult()
        if not rows:
            return out
        first = [r for r in rows if not r.action.is_increase]
        second = [r for r in rows if r.action.is_increase]
        reserved: dict[str, _Reserved] = {}
        for phase in (first, second):
            limiter = anyio.Semaphore(self.concurrency)
            async with anyio.create_task_group() as tg:
                for row in phase:
                    tg.start_soon(self._guarded, row, reserved, limiter, out)
        self.last_drain = {"at": self.clock.now().isoformat(), "applied": out.applied,
                           "failed": out.failed, "refused": out.refused,
                           "waiting": out.waiting, "errors": out.errors[:5]}
        for name in ("applied", "failed", "refused", "waiting"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(out, name))
        if out.applied or out.failed or out.refused:
            log.info("executor: outbox drained", **{k: v for k, v in self.last_drain.items()
                                                    if k not in ("at", "errors")})
        return out

    async def _guarded(self, row: ActionRow, reserved: dict[str, _Reserved],
                       limiter: anyio.Semaphore, out: DrainResult) -> None:
        async with limiter:
            try:
                outcome = await self._apply(row, reserved)
            except Exception as exc:  # one action's surprise never stops the others
                log.warning("executor: action failed unexpectedly", action=row.id,
                            error=str(exc)[:300], exc_info=True)
                out.errors.append(f"{row.id}: {exc}")
                return
        if outcome in ("applied", "failed", "refused", "waiting"):
            setattr(out, outcome, getattr(out, outcome) + 1)
        if self.metrics is not None and outcome != "waiting":
            self.metrics.actions.labels(row.action.kind, outcome).inc()

    # --- one action ----------------------------------------------------------------------

    async def _apply(self, row: ActionRow, reserved: dict[str, _Reserved]) -> str:
        a = row.action
        now = self.clock.now
        st = self.dsp.campaigns.get(a.campaign_id)
        li: LineItem | None = None if st is None else st.line_items.get(a.cell_id)
        if st is None or li is None:
            return await self._finish(row, "refused", f"line item of cell {a.cell_id} is not "
                                                      "known to the DSP service (not synced)")
        current = line_item_state(li)
        keys = list(a.after)
        if all(current.get(k) == a.after[k] for k in keys):
            return await self._finish(row, "applied", None, result=current)
        if any(current.get(k) != a.before.get(k) for k in keys):
            return await self._finish(
                row, "refused", "stale: the line item changed since this was decided "
                                f"(decided from {_pick(a.before, keys)}, now "
                                f"{_pick(current, keys)})")
        res: _Reserved | None = None
        d_daily = d_life = 0
        if a.is_increase:
            problem = self._headroom_problem(st, a.cell_id, a.after, reserved)
            if problem is not None:
                if row.attempts + 1 >= self.max_attempts:
                    return await self._finish(row, "refused", problem, attempt=True)
                await self.sql.set_action_status(row.id, "pending", now=now(),
                                                 expect=("pending", "applying"),
                                                 error=f"waiting: {problem}", attempt=True)
                return "waiting"
            res = reserved.setdefault(a.campaign_id, _Reserved())
            d_daily = int(a.after["daily_budget_micros"]) - current["daily_budget_micros"]
            d_life = int(a.after["lifetime_budget_micros"]) - current["lifetime_budget_micros"]
            res.daily += d_daily
            res.lifetime += d_life
        if not await self.sql.set_action_status(row.id, "applying", now=now(),
                                                expect=("pending", "applying"), attempt=True):
            return "skipped"  # someone else moved it (superseded, rejected) meanwhile
        try:
            ack = await self._send(li.id, a.kind, a.after)
        except DSPError as exc:
            if res is not None:
                res.daily -= d_daily
                res.lifetime -= d_life
            text = f"{type(exc).__name__}: {exc}"[:500]
            transient = exc.retryable
            if transient and (isinstance(exc, DSPCircuitOpen | DSPRateLimited)
                              or row.attempts + 1 < self.max_attempts):
                await self.sql.set_action_status(row.id, "pending", now=now(),
                                                 expect=("applying",), error=text)
                return "waiting"
            return await self._finish(row, "failed", text, expect=("applying",))
        st.line_items[a.cell_id] = ack
        if res is not None:  # acknowledged: now part of the state, no longer a reservation
            res.daily -= d_daily
            res.lifetime -= d_life
        state = line_item_state(ack)
        await self._store_cell(a.cell_id, ack)
        return await self._finish(row, "applied", None, result=state, expect=("applying",))

    async def _send(self, line_item_id: int, kind: str, after: Mapping[str, Any]) -> LineItem:
        adapter = self.dsp.adapter
        if kind == "budget":
            out: LineItem = await adapter.update_budget(
                line_item_id, lifetime_micros=int(after["lifetime_budget_micros"]),
                daily_micros=int(after["daily_budget_micros"]))
            return out
        if kind in ("pause", "activate"):
            out = await adapter.set_active(line_item_id, bool(after["active"]))
            return out
        raise ValueError(f"unknown action kind {kind!r}")

    async def _store_cell(self, cell_id: str, li: LineItem) -> None:
        try:
            await self.sql.update_cell_budgets(
                {cell_id: (li.lifetime_budget_micros, li.daily_budget_micros)},
                now=self.clock.now())
            await self.sql.set_cell_status([cell_id], "active" if li.active else "paused",
                                           now=self.clock.now())
        except Exception as exc:  # the action is applied; the cells table is a read model
            log.warning("executor: could not store the cell's budgets", cell=cell_id,
                        error=str(exc)[:200])

    async def _finish(self, row: ActionRow, status: str, error: str | None, *,
                      result: dict[str, Any] | None = None,
                      expect: tuple[str, ...] = ("pending", "applying"),
                      attempt: bool = False) -> str:
        ok = await self.sql.set_action_status(row.id, status, now=self.clock.now(),
                                              expect=expect, error=error, result=result,
                                              attempt=attempt)
        if status in ("failed", "refused"):
            log.warning(f"executor: action {status}", action=row.id, kind=row.action.kind,
                        cell=row.action.cell_id, error=error)
        return status if ok else "skipped"

    def _headroom_problem(self, st: Any, cell_id: str, after: Mapping[str, Any],
                          reserved: dict[str, _Reserved]) -> str | None:
        """Why raising ``cell_id`` to ``after`` would break a campaign cap now, or None."""
        spec = st.spec
        res = reserved.get(spec.id, _Reserved())
        daily = int(after["daily_budget_micros"])
        life = int(after["lifetime_budget_micros"])
        D, L = spec.daily_budget_micros, spec.lifetime_budget_micros
        if daily > D or life > L:
            return (f"a line item may not exceed the campaign's caps (daily {daily} > {D} or "
                    f"lifetime {life} > {L} micros)")
        others_d = sum(int(li.daily_budget_micros or 0) for c, li in st.line_items.items()
                       if c != cell_id)
        others_l = sum(int(li.lifetime_budget_micros) for c, li in st.line_items.items()
                       if c != cell_id)
        if others_d + res.daily + daily > D:
            return (f"the campaign's daily budgets would sum to {others_d + res.daily + daily}"
                    f" > its daily cap {D} micros")
        if others_l + res.lifetime + life > L:
            return (f"the campaign's lifetime budgets would sum to "
                    f"{others_l + res.lifetime + life} > its lifetime cap {L} micros")
        return None


def _pick(d: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: d.get(k) for k in keys}


__all__ = ["ActionExecutor", "DrainResult", "line_item_state"]
