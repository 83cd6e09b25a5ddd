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
        """Apply what is in the outbox: cuts, pauses and activations first, then raises. Each
        phase costs three transactions however many actions it has: claim (``applying``),
        outcomes, the cells' stored budgets."""
        rows = await self.sql.outbox()
        out = DrainResult()
        if not rows:
            return out
        reserved: dict[str, _Reserved] = {}
        for phase in ([r for r in rows if not r.action.is_increase],
                      [r for r in rows if r.action.is_increase]):
            await self._phase(phase, reserved, out)
        self.last_drain = {"at": self.clock.now().isoformat(), "applied": out.applied,
                           "failed": out.failed, "refused": out.refused,
                           "waiting": out.waiting, "errors": out.errors[:5]}
        for name in ("applied", "failed", "refused", "waiting"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(out, name))
        if out.applied or out.failed or out.refused:
            log.info("executor: outbox drained", **{k: v for k, v in self.last_drain.items()
                                                    if k not in ("at", "errors")})
        return out

    async def _phase(self, rows: list[ActionRow], reserved: dict[str, _Reserved],
                     out: DrainResult) -> None:
        if not rows:
            return
        outcomes: dict[int, tuple[str, str | None, dict[str, Any] | None]] = {}
        sends: dict[int, tuple[ActionRow, LineItem, _Reserved | None, int, int]] = {}
        for row in rows:
            verdict = self._check(row, reserved)
            if verdict[0] == "send":
                _, li, res, dd, dl = verdict
                sends[row.id] = (row, li, res, dd, dl)
            else:
                outcomes[row.id] = (verdict[0], verdict[1], verdict[2])
        waiting = [i for i, o in outcomes.items() if o[0] == "pending"]
        claimed = set(await self.sql.claim_actions([*sends, *waiting], now=self.clock.now()))
        limiter = anyio.Semaphore(self.concurrency)
        acked: dict[str, LineItem] = {}

        def release(res: _Reserved | None, dd: int, dl: int) -> None:
            if res is not None:
                res.daily -= dd
                res.lifetime -= dl

        async def send(row: ActionRow, li: LineItem, res: _Reserved | None, dd: int,
                       dl: int) -> None:
            a = row.action
            async with limiter:
                try:
                    ack = await self._send(li.id, a.kind, a.after)
                except DSPError as exc:
                    release(res, dd, dl)
                    text = f"{type(exc).__name__}: {exc}"[:500]
                    retry = exc.retryable and (isinstance(exc, DSPCircuitOpen | DSPRateLimited)
                                               or row.attempts + 1 < self.max_attempts)
                    outcomes[row.id] = ("pending" if retry else "failed", text, None)
                    return
                except Exception as exc:  # one action's surprise never stops the others
                    log.warning("executor: action failed unexpectedly", action=row.id,
                                error=str(exc)[:300], exc_info=True)
                    out.errors.append(f"{row.id}: {exc}")
                    release(res, dd, dl)
                    outcomes[row.id] = ("pending", f"{type(exc).__name__}: {exc}"[:500], None)
                    return
            self.dsp.campaigns[a.campaign_id].line_items[a.cell_id] = ack
            release(res, dd, dl)  # acknowledged: now part of the state, not a reservation
            acked[a.cell_id] = ack
            outcomes[row.id] = ("applied", None, line_item_state(ack))

        async with anyio.create_task_group() as tg:
            for i, (row, li, res, dd, dl) in sends.items():
                if i in claimed:
                    tg.start_soon(send, row, li, res, dd, dl)
                else:  # superseded or decided meanwhile: not sent
                    release(res, dd, dl)
        final = [(i, st, err, result) for i, (st, err, result) in outcomes.items()
                 if st != "pending" or i in claimed]
        await self.sql.finish_actions(final, now=self.clock.now())
        kinds = {r.id: r.action for r in rows}
        for i, st, err, _ in final:
            name = "waiting" if st == "pending" else st
            setattr(out, name, getattr(out, name) + 1)
            if st in ("failed", "refused"):
                log.warning(f"executor: action {st}", action=i, kind=kinds[i].kind,
                            cell=kinds[i].cell_id, error=err)
            if self.metrics is not None and st != "pending":
                self.metrics.actions.labels(kinds[i].kind, st).inc()
        if acked:
            await self._store_cells(acked)

    def _check(self, row: ActionRow, reserved: dict[str, _Reserved]) -> tuple[Any, ...]:
        """What to do with an outbox action now: ``("send", line item, reservation, Δdaily,
        Δlifetime)``, or an outcome ``(status, error, result)`` — ``applied`` (the DSP already
        holds it), ``refused`` (unknown line item, stale, or no headroom after
        ``max_attempts``) or ``pending`` (waiting for headroom)."""
        a = row.action
        if a.kind not in ("budget", "pause", "activate"):
            return ("refused", f"a {a.kind!r} action is recorded by the DSP sync, never applied "
                               "from the outbox", None)
        st = self.dsp.campaigns.get(a.campaign_id)
        li: LineItem | None = None if st is None else st.line_items.get(a.cell_id)
        if st is None or li is None:
            return ("refused", f"line item of cell {a.cell_id} is not known to the DSP "
                               "service (not synced)", None)
        current = line_item_state(li)
        keys = list(a.after)
        if all(current.get(k) == a.after[k] for k in keys):
            return ("applied", None, current)
        if any(current.get(k) != a.before.get(k) for k in keys):
            return ("refused", "stale: the line item changed since this was decided (decided "
                               f"from {_pick(a.before, keys)}, now {_pick(current, keys)})",
                    None)
        if not a.is_increase:
            return ("send", li, None, 0, 0)
        problem = self._headroom_problem(st, a.cell_id, a.after, reserved)
        if problem is not None:
            if row.attempts + 1 >= self.max_attempts:
                return ("refused", problem, None)
            return ("pending", f"waiting: {problem}", None)
        res = reserved.setdefault(a.campaign_id, _Reserved())
        dd = int(a.after["daily_budget_micros"]) - current["daily_budget_micros"]
        dl = int(a.after["lifetime_budget_micros"]) - current["lifetime_budget_micros"]
        res.daily += dd
        res.lifetime += dl
        return ("send", li, res, dd, dl)

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


    async def _store_cells(self, acked: Mapping[str, LineItem]) -> None:
        """The cells' stored budgets and status (a read model: a failure is only logged)."""
        try:
            now = self.clock.now()
            await self.sql.update_cell_budgets(
                {c: (li.lifetime_budget_micros, li.daily_budget_micros)
                 for c, li in acked.items()}, now=now)
            for status in ("active", "paused"):
                cells = [c for c, li in acked.items() if li.active == (status == "active")]
                if cells:
                    await self.sql.set_cell_status(cells, status, now=now)
        except Exception as exc:
            log.warning("executor: could not store the cells' budgets", cells=len(acked),
                        error=str(exc)[:200])

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
