"""The executor: applies the actions in the SQL outbox to the DSP, exactly once in effect.

Every action is absolute (the line item's budgets or state wanted after it), recorded in SQL
before anything is sent (``pending``), marked ``applying`` while its request is in flight, and
``applied`` with the DSP's acknowledgement. A crash at any point therefore neither loses nor
doubles a change: on restart ``pending`` and ``applying`` actions are applied again, and applying
an absolute change a second time changes nothing (an action whose line item already holds its
``after`` is simply marked applied).

**In doubt.** An action whose answer never came (a crash, a timeout, a dropped connection, a
5xx) stays ``applying``: the DSP may hold it. Before anything else, the next drain reads those
line items back from the DSP (``_read_back``): an action the DSP holds is ``applied`` (even if a
newer decision replaces it: the audit log says what happened), one it does not is sent again
(``failed`` after ``max_attempts``), and the caps are counted on what the DSP holds. While
they cannot be read, the campaign's actions wait.

What a drain applies:

- **The mode's.** In ``live`` mode every outbox action; in ``shadow`` and ``approve`` mode only
  what a person asked for (approved actions, undos). An action left in the outbox by a run in
  another mode is ``superseded``, never applied behind the operator's back.
- **The newest per line item.** Older open actions of a line item are ``superseded`` by the
  newest one before anything is sent.
- **Within the caps.** Money checks happen here too, against the DSP's *acknowledged* state
  and today's spend, whatever the decision engine planned: cuts go first; before a raise is
  sent, what the campaign's line items may cost — a budget counts at least what its line item
  spent (today's spend for the daily cap), the raises in flight reserved — must stay within its
  daily and lifetime caps. A raise that does not fit whole is cut to the headroom left when at
  least half of it is left (a plan fills the cap exactly, and the line items it cut may have
  spent a little more by the time it is applied): the cut-down ``after`` is recorded before it
  is sent, the plan's in the evidence (``clipped``). Otherwise it waits (``pending``, a cut it
  depends on may still be retrying) and is ``refused`` once it has waited ``max_wait_s`` (real
  seconds).
- **Still current.** An action whose line item changed since it was decided (its ``before`` is
  no longer the DSP's state) is refused as stale rather than overwriting a newer change; the
  check is made again just before the request goes out.
- **Not expired.** An action not yet applied ``max_age_s`` (real seconds, also in sandbox
  mode) after it was decided -- or, for a person's approval or undo, after the person asked --
  is refused as expired: after a long stop or a long DSP outage the evidence it was decided
  on is out of date (the next cycle decides again from what the DSP holds; a person approves
  or undoes again). One the DSP already holds is recorded applied whatever its age.

The DSP sync's own changes (a removed cell's line item paused, budgets scaled within lowered
caps) are recorded ``applying`` before they are sent too, but never sent from here: the sync
closes the ones a crash interrupted, from what the DSP holds and the caps of then. Only one of
the two writes to the DSP at a time (``DSPService.writing``).

While a campaign is not synced with the DSP (e.g. the DSP was unreachable at start) its actions
wait; they are refused only if the campaign is no longer loaded. Transient DSP errors are
retried (``max_attempts``; rate limits and an open circuit do not count), a refusal (400) marks
the action ``failed``. Acknowledged state updates the DSP service's view of the line item (what
the agents read next) and the cell's stored budgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskStatus

from campaignd.clock import Clock
from campaignd.dsp.base import LineItem, committed_lifetime, committed_today
from campaignd.errors import DSPCircuitOpen, DSPError, DSPRateLimited
from campaignd.logs import Outage, get_logger
from campaignd.metrics import Metrics
from campaignd.stores.sql.actions import ActionRow

log = get_logger("campaignd.executor")

APPLIED_KINDS = ("budget", "pause", "activate")
EXPIRED = "expired"
"""How the error of an action refused for its age starts."""
MIN_CLIPPED_SHARE = 0.5
"""A raise that no longer fits the campaign's caps is sent cut to the headroom left when at
least this share of it is left; otherwise it waits whole."""


def line_item_state(li: LineItem) -> dict[str, Any]:
    """The parts of a line item that actions change (what ``before``/``after`` hold)."""
    return {"daily_budget_micros": int(li.daily_budget_micros or 0),
            "lifetime_budget_micros": int(li.lifetime_budget_micros), "active": bool(li.active)}


@dataclass(slots=True)
class _Sums:
    """One campaign's line-item budgets as acknowledged, plus the raises in flight."""

    daily: int
    lifetime: int
    daily_cap: int
    """The campaign's daily budget left for campaignd's line items (others' taken out)."""
    lifetime_cap: int
    spent: Mapping[str, int] = field(default_factory=dict)
    """Each cell's spend today (micros): a daily budget counts at least that."""
    daily_reserved: int = 0
    lifetime_reserved: int = 0


@dataclass(slots=True)
class DrainResult:
    applied: int = 0
    failed: int = 0
    refused: int = 0
    waiting: int = 0
    superseded: int = 0
    expired: int = 0
    """Of ``refused``: too old to apply (``max_age_s``)."""
    errors: list[str] = field(default_factory=list)


class ActionExecutor:
    """Drains the outbox every ``poll_s`` (or at once when woken); see the module docstring."""

    def __init__(self, *, sql: Any, dsp: Any, clock: Clock, metrics: Metrics | None = None,
                 mode: str = "live", poll_s: float = 2.0, max_attempts: int = 8,
                 max_wait_s: float = 600.0, concurrency: int = 8,
                 max_age_s: float = 3600.0, time_scale: float = 1.0) -> None:
        self.sql = sql
        self.dsp = dsp
        self.clock = clock
        self.metrics = metrics
        self.mode = mode
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.concurrency = concurrency
        self.max_age_s = max_age_s
        """Real seconds after its decision an action may still be applied; 0: no limit."""
        self.time_scale = time_scale
        """The daemon's clock seconds per real second (the sandbox's speed-up): an age on that
        clock is divided by it, so the limit is real time as every other wait here is."""
        self._wake = anyio.Event()
        self._waiting_since: dict[int, float] = {}
        """Action id → when (monotonic seconds) it started waiting for headroom."""
        self.last_drain: dict[str, Any] | None = None
        self.totals = DrainResult()
        self.hold: Callable[[], str | None] | None = None
        """Why changes to the DSP must wait now (the counts the caps are checked on are not
        current), or None; the daemon sets it."""
        self.held: str | None = None
        self._failing = Outage(log, "executor: drain failed; will retry")

    def wake(self) -> None:
        """Drain now (new actions were recorded or approved)."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with anyio.move_on_after(self.poll_s):
                await self._wake.wait()
            self._wake = anyio.Event()
            why = self.hold() if self.hold is not None else None
            if why is not None:
                if self.held is None:
                    log.warning("executor: changes to the DSP wait until the counts are "
                                "current", reason=why)
                self.held = why
                # a raise waiting for headroom waits from when the drains resume: a hold is
                # not time it had to find room in
                self._waiting_since.clear()
                continue
            if self.held is not None:
                log.info("executor: the counts are current again; draining the outbox")
                self.held = None
            try:
                await self.drain()
            except Exception as exc:  # a store outage must not stop the loop
                self._failing.failed(str(exc)[:300])
            else:
                self._failing.ok("executor: drains work again")

    async def drain(self) -> DrainResult:
        """Apply what is in the outbox (see the module docstring). Each phase costs a few
        transactions however many actions it has: superseded, claimed (``applying``), outcomes,
        the cells' stored budgets."""
        out = DrainResult()
        # one writer of line items at a time: the DSP sync's own changes in flight sit in the
        # outbox as "applying" and must not be sent a second time from here
        async with self.dsp.writing:
            rows = await self.sql.outbox()
            if not rows:
                return out
            rows = await self._read_back(rows, out)
            rows = await self._only_current(rows, out)
            for phase in ([r for r in rows if not r.action.is_increase],
                          [r for r in rows if r.action.is_increase]):
                await self._phase(phase, out)
        self.last_drain = {"at": self.clock.now().isoformat(), "applied": out.applied,
                           "failed": out.failed, "refused": out.refused,
                           "waiting": out.waiting, "superseded": out.superseded,
                           "expired": out.expired, "errors": out.errors[:5]}
        for name in ("applied", "failed", "refused", "waiting", "superseded", "expired"):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(out, name))
        if out.expired:  # (after a long stop, thousands: one line for them all)
            log.warning("executor: actions expired before they could be applied (refused; "
                        "see each action's error)", actions=out.expired,
                        max_action_age_s=self.max_age_s)
        if out.applied or out.failed or out.refused or out.superseded:
            log.info("executor: outbox drained", **{k: v for k, v in self.last_drain.items()
                                                    if k not in ("at", "errors")})
        return out

    async def _read_back(self, rows: list[ActionRow], out: DrainResult) -> list[ActionRow]:
        """Actions in doubt (``applying``: sent, and the answer never came -- a crash, a
        timeout, a dropped connection) have their line items read back from the DSP first, so
        that what follows sees what the DSP holds: the change applied (recorded so, even if a
        newer decision replaces it) or not (sent again), and the caps counted on it. A campaign
        whose line items cannot be read now (not synced yet, or the read failed) keeps all its
        actions waiting: nothing of it is decided on a view that may be wrong."""
        blocked: set[str] = set()
        where: dict[int, tuple[str, str]] = {}
        for r in rows:
            if r.status != "applying":
                continue
            a = r.action
            st = self.dsp.campaigns.get(a.campaign_id)
            if st is None:
                continue  # refused by the check: the campaign is not loaded
            if not st.synced:
                blocked.add(a.campaign_id)
                continue
            li = st.line_items.get(a.cell_id)
            if li is not None:
                where[li.id] = (a.campaign_id, a.cell_id)
        if where:
            try:
                fresh = await self.dsp.adapter.get_line_items(list(where))
            except DSPError as exc:
                blocked.update(c for c, _ in where.values())
                log.warning("executor: cannot read back line items in doubt; their campaigns' "
                            "actions wait", line_items=len(where), error=str(exc)[:200])
            else:
                for li in fresh:
                    cid, cell = where[li.id]
                    view = self.dsp.campaigns[cid].line_items
                    if cell in view and view[cell].id == li.id:
                        view[cell] = li
        if not blocked:
            return rows
        kept = [r for r in rows if r.action.campaign_id not in blocked]
        out.waiting += len(rows) - len(kept)
        return kept

    async def _only_current(self, rows: list[ActionRow], out: DrainResult) -> list[ActionRow]:
        """Supersede what this mode must not apply and all but the newest action of each line
        item; return the rest."""
        newest: dict[tuple[str, str], ActionRow] = {}
        dropped: list[tuple[int, str, str | None, dict[str, Any] | None]] = []

        def drop(r: ActionRow, why: str) -> None:
            # An "applying" action was sent before a crash: if the DSP holds what it set, it
            # was applied, and the audit log must say so (and it can be undone).
            if r.status == "applying":
                st = self.dsp.campaigns.get(r.action.campaign_id)
                li = st.line_items.get(r.action.cell_id) if st is not None else None
                if li is not None:
                    now_state = line_item_state(li)
                    if all(now_state.get(k) == v for k, v in r.action.after.items()):
                        dropped.append((r.id, "applied", "applied before an interruption: the "
                                        "DSP holds its budgets", now_state))
                        return
            dropped.append((r.id, "superseded", why, None))

        for r in rows:  # oldest first
            if self.mode != "live" and r.mode != "user" and r.actor is None:
                drop(r, f"not applied: the daemon now runs in {self.mode} mode (decided in "
                        f"{r.mode} mode)")
                continue
            key = (r.action.campaign_id, r.action.cell_id)
            older = newest.get(key)
            if older is not None:
                drop(older, f"superseded by action {r.id} (decision {r.action.decision_id})")
            newest[key] = r
        if dropped:
            await self.sql.finish_actions(dropped, now=self.clock.now())
            out.superseded += sum(1 for d in dropped if d[1] == "superseded")
            out.applied += sum(1 for d in dropped if d[1] == "applied")
        return sorted(newest.values(), key=lambda r: r.id)

    async def _phase(self, rows: list[ActionRow], out: DrainResult) -> None:
        if not rows:
            return
        now = self.clock.now()
        outcomes: dict[int, tuple[str, str | None, dict[str, Any] | None]] = {}
        sums: dict[str, _Sums] = {}
        sends: dict[int, tuple[ActionRow, LineItem, int, int]] = {}
        clipped: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        for row in rows:
            verdict = self._check(row, sums, now)
            if verdict[0] == "send":
                _, li, dd, dl = verdict
                sends[row.id] = (row, li, dd, dl)
            elif verdict[0] == "clip":
                _, li, dd, dl, cut = verdict
                sends[row.id] = (cut, li, dd, dl)
                clipped[row.id] = (cut.action.after, cut.action.evidence)
            else:
                outcomes[row.id] = (verdict[0], verdict[1], verdict[2])
        claimed = set(await self.sql.claim_actions(list(sends), now=now, clipped=clipped))
        for i in claimed & set(clipped):
            a = sends[i][0].action
            log.info("executor: a raise cut to the headroom left under the campaign's caps",
                     action=i, cell=a.cell_id, after=a.after,
                     planned=a.evidence["clipped"]["planned_after"])
        limiter = anyio.Semaphore(self.concurrency)
        acked: dict[str, LineItem] = {}
        uncounted: set[int] = set()

        def release(campaign_id: str, dd: int, dl: int, *, acknowledged: bool) -> None:
            s = sums.get(campaign_id)
            if s is None or (dd == 0 and dl == 0):
                return
            s.daily_reserved -= dd
            s.lifetime_reserved -= dl
            if acknowledged:  # now part of the acknowledged state
                s.daily += dd
                s.lifetime += dl

        async def send(row: ActionRow, li: LineItem, dd: int, dl: int) -> None:
            a = row.action
            async with limiter:
                # the line item may have changed while this waited for the limiter
                st = self.dsp.campaigns.get(a.campaign_id)
                current = st.line_items.get(a.cell_id) if st is not None else None
                if current is None or any(line_item_state(current).get(k) != a.before.get(k)
                                          for k in a.after):
                    release(a.campaign_id, dd, dl, acknowledged=False)
                    outcomes[row.id] = ("refused", "stale: the line item changed just before "
                                                   "this was to be sent", None)
                    return
                try:
                    ack = await self._send(li.id, a.kind, a.after)
                except DSPError as exc:
                    text = f"{type(exc).__name__}: {exc}"[:500]
                    waited = isinstance(exc, DSPCircuitOpen | DSPRateLimited)
                    if waited:  # not a try: the DSP was not asked (or asked us to wait)
                        uncounted.add(row.id)
                        release(a.campaign_id, dd, dl, acknowledged=False)
                        outcomes[row.id] = ("pending", text, None)
                    elif exc.retryable:
                        # a timeout, a dropped answer, a 5xx: the DSP may hold the change. In
                        # doubt ("applying", its raise still counted in this drain) until the
                        # next drain reads the line item back (``_read_back``)
                        outcomes[row.id] = ("applying", text, None)
                    else:  # refused: the DSP did not apply it
                        release(a.campaign_id, dd, dl, acknowledged=False)
                        outcomes[row.id] = ("failed", text, None)
                    return
                except Exception as exc:  # one action's surprise never stops the others
                    log.warning("executor: action failed unexpectedly", action=row.id,
                                error=str(exc)[:300], exc_info=True)
                    out.errors.append(f"{row.id}: {exc}")
                    # (it may have reached the DSP: in doubt, as above)
                    outcomes[row.id] = ("applying", f"{type(exc).__name__}: {exc}"[:500], None)
                    return
            self.dsp.campaigns[a.campaign_id].line_items[a.cell_id] = ack
            release(a.campaign_id, dd, dl, acknowledged=True)
            acked[a.cell_id] = ack
            outcomes[row.id] = ("applied", None, line_item_state(ack))

        async with anyio.create_task_group() as tg:
            for i, (row, li, dd, dl) in sends.items():
                if i in claimed:
                    tg.start_soon(send, row, li, dd, dl)
                else:  # superseded or decided meanwhile: not sent
                    release(row.action.campaign_id, dd, dl, acknowledged=False)
        by_id = {r.id: r for r in rows}
        final = []
        for i, (st, err, result) in outcomes.items():
            if st == "pending" and i not in sends and by_id[i].error == err:
                out.waiting += 1  # still waiting, nothing new to write
                continue
            final.append((i, st, err, result))
        await self.sql.finish_actions(final, now=self.clock.now(), uncounted=uncounted)
        expired = 0
        for i, st, err, _ in final:
            name = "waiting" if st in ("pending", "applying") else st
            setattr(out, name, getattr(out, name) + 1)
            a = by_id[i].action
            if st == "refused" and (err or "").startswith(EXPIRED):
                expired += 1  # (one warning per drain for them all: ``drain``)
            elif st in ("failed", "refused"):
                log.warning(f"executor: action {st}", action=i, kind=a.kind, cell=a.cell_id,
                            error=err)
            elif st == "applying":
                log.warning("executor: no answer from the DSP; the change is in doubt until "
                            "its line item is read back", action=i, kind=a.kind,
                            cell=a.cell_id, error=err)
            if self.metrics is not None and st not in ("pending", "applying"):
                self.metrics.actions.labels(a.kind, st).inc()
        out.expired += expired
        if acked:
            await self._store_cells(acked)

    def _check(self, row: ActionRow, sums: dict[str, _Sums], now: datetime) -> tuple[Any, ...]:
        """What to do with an outbox action now: ``("send", line item, Δdaily, Δlifetime)`` (a
        raise's Δ is reserved in ``sums``), ``("clip", …, row)`` (send the raise of ``row``,
        cut to the headroom left), or an outcome ``(status, error, result)`` —
        ``applied`` (the DSP already holds it), ``refused`` (not appliable, expired, stale, or no
        headroom for longer than ``max_wait_s``) or ``pending`` (waiting)."""
        a = row.action
        if a.kind not in APPLIED_KINDS:
            return ("refused", f"a {a.kind!r} action is recorded by the DSP sync, never applied "
                               "from the outbox", None)
        st = self.dsp.campaigns.get(a.campaign_id)
        if st is None:
            return ("refused", f"campaign {a.campaign_id} is not loaded (removed from "
                               "`campaigns`?)", None)
        if not st.synced:
            return ("pending", "waiting: the campaign is not synced with the DSP yet", None)
        li: LineItem | None = st.line_items.get(a.cell_id)
        if li is None:
            return ("refused", f"cell {a.cell_id} has no line item on the DSP (not in the "
                               "campaign spec any more?)", None)
        current = line_item_state(li)
        keys = list(a.after)
        if all(current.get(k) == a.after[k] for k in keys):
            return ("applied", None, current)
        expired = self._expired(row, now)
        if expired is not None:
            return ("refused", expired, None)
        if row.status == "applying" and row.attempts >= self.max_attempts:
            # (read back this drain: the DSP does not hold it)
            return ("failed", f"gave up after {row.attempts} attempts without an answer; the "
                              "DSP does not hold the change", None)
        if any(current.get(k) != a.before.get(k) for k in keys):
            return ("refused", "stale: the line item changed since this was decided (decided "
                               f"from {_pick(a.before, keys)}, now {_pick(current, keys)})",
                    None)
        if not a.is_increase:
            return ("send", li, 0, 0)
        # what the line items may cost: a budget counts at least what its line item spent
        # (today, for the daily cap), a line item without a daily budget all of its lifetime
        # left
        s = sums.get(a.campaign_id)
        if s is None:  # (once per campaign and phase)
            spent = self.dsp.spent_today_of(a.campaign_id)
            s = sums[a.campaign_id] = _Sums(
                sum(committed_today(x, spent.get(c, 0)) for c, x in st.line_items.items()),
                sum(committed_lifetime(x) for x in st.line_items.values()),
                daily_cap=st.daily_cap(), lifetime_cap=st.lifetime_cap(), spent=spent)
        spent_li = s.spent.get(a.cell_id, 0)
        after = a.after
        dd = max(int(after["daily_budget_micros"]), 0) - committed_today(li, spent_li)
        dl = (max(int(after["lifetime_budget_micros"]), int(li.spend_micros))
              - committed_lifetime(li))
        problem = _headroom_problem(st.spec, s, after, dd, dl)
        clipped = None
        if problem is not None and not _beyond_line_item_cap(st.spec, after):
            # The plan filled the cap and the line items it cut have spent a little more since
            # (or another raise took some): raise by what is left, when that is most of it.
            cut = _clipped(s, a.before, after, dd, dl)
            if cut is not None:
                after = cut
                # (clipped before, in a drain whose answer was lost: the plan is the first's)
                planned = (a.evidence.get("clipped") or {}).get("planned_after", a.after)
                clipped = {**a.evidence, "clipped": {
                    "planned_after": dict(planned),
                    "why": f"{problem}: raised by what the cap leaves"}}
                dd = max(int(after["daily_budget_micros"]), 0) - committed_today(li, spent_li)
                dl = (max(int(after["lifetime_budget_micros"]), int(li.spend_micros))
                      - committed_lifetime(li))
                problem = _headroom_problem(st.spec, s, after, dd, dl)
        if problem is not None:
            since = self._waiting_since.setdefault(row.id, time.monotonic())
            if time.monotonic() - since > self.max_wait_s:
                self._waiting_since.pop(row.id, None)
                return ("refused", f"{problem} (waited {self.max_wait_s:g} s)", None)
            return ("pending", f"waiting: {problem}", None)
        self._waiting_since.pop(row.id, None)
        s.daily_reserved += max(dd, 0)
        s.lifetime_reserved += max(dl, 0)
        if clipped is not None:
            row = replace(row, action=replace(a, after=after, evidence=clipped))
            return ("clip", li, max(dd, 0), max(dl, 0), row)
        return ("send", li, max(dd, 0), max(dl, 0))

    def _expired(self, row: ActionRow, now: datetime) -> str | None:
        """Why ``row`` is too old to apply (see the module docstring), or None."""
        if self.max_age_s <= 0:
            return None
        a = row.action
        person = row.actor is not None and row.decided_at is not None
        since = max(a.created_at, row.decided_at) if person and row.decided_at else a.created_at
        age = (now - since).total_seconds() / self.time_scale
        if age <= self.max_age_s:
            return None
        self._waiting_since.pop(row.id, None)
        limit = f"decision.max_action_age_s ({self.max_age_s:g} s)"
        if person:
            asked = "asked for" if row.undo_of is not None or row.mode == "user" else "approved"
            return (f"{EXPIRED}: {asked} by {row.actor} {_age(age)} ago ({since.isoformat()}), "
                    f"longer than {limit}; the line item may have moved on since -- if the "
                    "change is still wanted, approve a newer proposal or ask again")
        return (f"{EXPIRED}: decided {_age(age)} ago ({since.isoformat()}), longer than "
                f"{limit}; the evidence it was decided on is out of date, and the next cycle "
                "decides again from what the DSP holds")

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


def _beyond_line_item_cap(spec: Any, after: Mapping[str, Any]) -> bool:
    return (int(after["daily_budget_micros"]) > spec.daily_budget_micros
            or int(after["lifetime_budget_micros"]) > spec.lifetime_budget_micros)


def _clipped(s: _Sums, before: Mapping[str, Any], after: Mapping[str, Any], dd: int,
             dl: int) -> dict[str, Any] | None:
    """``after`` with its raise cut to the headroom left under the campaign's caps (the sums
    and the raises in flight), or None when less than ``MIN_CLIPPED_SHARE`` of the raise is left
    on either budget (the raise then waits whole)."""
    room_d = s.daily_cap - s.daily - s.daily_reserved
    room_l = s.lifetime_cap - s.lifetime - s.lifetime_reserved
    daily, life = int(after["daily_budget_micros"]), int(after["lifetime_budget_micros"])
    new_life = life - max(dl - room_l, 0)
    new_daily = min(daily - max(dd - room_d, 0), new_life)
    out = {**after, "daily_budget_micros": new_daily, "lifetime_budget_micros": new_life}
    for key, new, planned in (("daily_budget_micros", new_daily, daily),
                              ("lifetime_budget_micros", new_life, life)):
        was = int(before.get(key, 0))
        if new < was:
            return None  # it would become a cut
        if planned > was and (new - was) < MIN_CLIPPED_SHARE * (planned - was):
            return None
    if out == dict(after):
        return None
    return out


def _headroom_problem(spec: Any, s: _Sums, after: Mapping[str, Any], dd: int,
                      dl: int) -> str | None:
    """Why raising a line item by (``dd``, ``dl``) to ``after`` would break a campaign cap,
    given the acknowledged sums and the raises in flight; None when it fits."""
    daily, life = int(after["daily_budget_micros"]), int(after["lifetime_budget_micros"])
    D, L = spec.daily_budget_micros, spec.lifetime_budget_micros
    if daily > D or life > L:
        return (f"a line item may not exceed the campaign's caps (daily {daily} > {D} or "
                f"lifetime {life} > {L} micros)")
    # (only a cap this change raises can it break: a lifetime top-up that leaves the daily
    # budget as it is must not wait for the day's total to come back under its cap)
    total_d = s.daily + s.daily_reserved + max(dd, 0)
    if dd > 0 and total_d > s.daily_cap:
        return (f"the campaign's line items could spend {total_d} today > its daily cap "
                f"{s.daily_cap} micros")
    total_l = s.lifetime + s.lifetime_reserved + max(dl, 0)
    if dl > 0 and total_l > s.lifetime_cap:
        return (f"the campaign's line items could spend {total_l} > its lifetime cap "
                f"{s.lifetime_cap} micros")
    return None


def _age(seconds: float) -> str:
    """``seconds`` for a person: "3 d 4 h", "2 h 5 min", "12 min", "40 s"."""
    s = int(seconds)
    d, rest = divmod(s, 86_400)
    h, rest = divmod(rest, 3_600)
    m, sec = divmod(rest, 60)
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    return f"{m} min" if m else f"{sec} s"


def _pick(d: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: d.get(k) for k in keys}


__all__ = ["ActionExecutor", "DrainResult", "line_item_state"]
