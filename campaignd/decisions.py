"""The daemon's decision loop: agents' recommendations → the decision engine → the outbox.

``DecisionService`` keeps the latest recommendations of every agent (an agent's new run replaces
its previous ones: they are opinions about the current state, not a queue), and on every
decision cycle (after each reallocation run) builds what the engine needs — each campaign's caps,
the days of flight left, and each line item's budgets as the DSP acknowledged them with the
cell's counted spend (lifetime, and today's) — asks the engine for a plan and records its
actions in SQL with the status of ``decision.mode``:

- ``live``: ``pending`` — the executor applies them (and is woken at once);
- ``approve``: ``proposed`` — a person approves (→ pending) or rejects them;
- ``shadow``: ``shadow`` — recorded with their evidence, never applied.

What the engine skipped is counted by reason (``/metrics``, ``campaignd status``), not stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from campaignd.agents.decision import DecisionEngine, DecisionPlan, DecisionRules
from campaignd.domain.actions import CampaignState, Recommendation
from campaignd.domain.campaign import to_micros
from campaignd.domain.cells import CellSnapshot
from campaignd.logs import get_logger
from campaignd.metrics import Metrics

log = get_logger("campaignd.decisions")


class DecisionService:
    def __init__(self, *, settings: Any, sql: Any, metrics: Metrics) -> None:
        self.settings = settings
        self.sql = sql
        self.metrics = metrics
        self.inbox: dict[str, list[Recommendation]] = {}
        self.executor: Any = None
        self.last: dict[str, Any] | None = None
        self.cycles = 0
        self.skipped_total: dict[str, int] = {}
        """What the engine skipped since start, by reason (e.g. why an approval queue stays
        empty: ``risk budget``, ``no expected gain``)."""
        self.last_recorded_at: str | None = None
        """When a cycle last recorded a new action (ISO time), if one has since start."""
        self.held: str | None = None
        """Why the last cycle was skipped (the counts were not current), if it was."""

    @property
    def mode(self) -> str:
        return str(self.settings.decision.mode)

    def rules(self) -> DecisionRules:
        d = self.settings.decision
        rps = (200.0 if self.settings.dsp.adapter == "sandbox"
               else float(self.settings.dsp.beeswax.rate_limit_rps))
        requests = int(rps * self.settings.agents.reallocation_s * d.request_share)
        return DecisionRules(risk_budget=d.risk_budget, min_change_fraction=d.min_change_fraction,
                             min_change_micros=to_micros(d.min_change),
                             max_requests=max(1, requests))

    def collect(self, agent: str, recommendations: Sequence[Recommendation]) -> None:
        """An agent's latest recommendations (replacing its earlier ones)."""
        self.inbox[agent] = list(recommendations)

    @staticmethod
    def with_budgets(snap: CellSnapshot, dsp: Any) -> CellSnapshot:
        """The snapshot with the daily budgets the DSP acknowledged (None when a cell's line
        item is not known yet: nothing can be decided for that campaign)."""
        st = dsp.campaigns.get(snap.campaign_id) if dsp is not None else None
        if st is None or not st.synced:
            return snap
        lis = st.line_items
        if any(c not in lis for c in snap.cell_ids):
            return snap
        budgets = np.fromiter((int(lis[c].daily_budget_micros or 0) for c in snap.cell_ids),
                              dtype=np.int64, count=len(snap))
        return replace(snap, daily_budgets_micros=budgets)

    def states(self, snapshots: Mapping[str, CellSnapshot], dsp: Any, now: datetime,
               held: Mapping[str, set[str]] | None = None) -> dict[str, CampaignState]:
        """Each synced campaign's caps and line items: budgets as the DSP acknowledged them,
        spend as counted or as the DSP last reported it, whichever is more (lifetime), today's
        as counted; ``held``: per campaign, the cells agents must leave alone."""
        out: dict[str, CampaignState] = {}
        for cid, snap in snapshots.items():
            st = dsp.campaigns.get(cid) if dsp is not None else None
            if st is None or not st.synced:
                continue
            spec = st.spec
            n = len(snap)
            lis = [st.line_items.get(c) for c in snap.cell_ids]
            today = snap.today.get("spend_micros") if snap.today else None
            days_left = max(0.0, (spec.flight_end - now).total_seconds() / 86400)
            out[cid] = CampaignState(
                cid, st.daily_cap(), st.lifetime_cap(),
                days_left,
                snap.cell_ids,
                np.array([-1 if li is None else li.id for li in lis], dtype=np.int64),
                np.array([0 if li is None else int(li.daily_budget_micros or 0) for li in lis],
                         dtype=np.int64),
                np.array([0 if li is None else int(li.lifetime_budget_micros) for li in lis],
                         dtype=np.int64),
                np.maximum(np.asarray(snap.counts["spend_micros"], dtype=np.int64),
                           np.array([0 if li is None else int(li.spend_micros) for li in lis],
                                    dtype=np.int64)),
                (np.zeros(n, dtype=np.int64) if today is None
                 else np.asarray(today, dtype=np.int64).copy()),
                np.array([li is not None and bool(li.active) for li in lis], dtype=bool),
                np.array([c in (held or {}).get(cid, ()) for c in snap.cell_ids], dtype=bool)
                if held and held.get(cid) else None)
        return out

    def hold(self, reason: str, now: datetime) -> None:
        """No cycle now: the counts are not current (``reason``: a store or the feed is
        failing), and no money decision is made on them. The recommendations made on them are
        dropped; the next cycle decides on fresh ones."""
        self.inbox.clear()
        why = "counts not current"
        self.skipped_total[why] = self.skipped_total.get(why, 0) + 1
        self.metrics.decisions_skipped.labels(why).inc()
        if self.held is None:  # once a hold (the status shows it while it lasts)
            log.warning("decision cycles skipped until the counts are current", reason=reason)
        self.held = reason
        self.last = {"at": now.isoformat(), "mode": self.mode, "held": reason}

    async def cycle(self, snapshots: Mapping[str, CellSnapshot], dsp: Any,
                    now: datetime) -> DecisionPlan:
        """Decide on everything in the inbox and record the actions (see the module
        docstring)."""
        t0 = time.perf_counter()
        recs = [r for rs in self.inbox.values() for r in rs]
        self.inbox.clear()
        engine = DecisionEngine(self.rules())
        hold = timedelta(seconds=self.settings.decision.manual_hold_s)
        held = {cid: await self.sql.held_cells(cid, since=now - hold, until=now)
                for cid in snapshots}
        plan = engine.decide(recs, self.states(snapshots, dsp, now, held), now)
        mode = self.mode
        waiting: dict[str, int] = {}
        if mode == "approve" and plan.actions:
            # a proposal stands for decision.proposal_ttl_s, so that a person can review it
            # before a newer re-plan of the same campaign replaces it
            ttl = timedelta(seconds=self.settings.decision.proposal_ttl_s)
            standing = await self.sql.standing_proposals(
                {a.campaign_id for a in plan.actions}, since=now - ttl)
            if standing:
                for a in plan.actions:
                    if a.campaign_id in standing and standing[a.campaign_id] != a.decision_id:
                        waiting[a.campaign_id] = waiting.get(a.campaign_id, 0) + 1
                plan.actions = [a for a in plan.actions if a.campaign_id not in waiting]
        new = await self.sql.record_actions(plan.actions, mode=mode, now=now)
        if new:
            self.metrics.actions_decided.labels(mode).inc(new)
        for s in plan.skipped:
            self.metrics.decisions_skipped.labels(s.reason.split(":", 1)[0]).inc(s.count)
        if mode == "live" and new and self.executor is not None:
            self.executor.wake()
        self.cycles += 1
        if self.held is not None:
            log.info("decision cycles resume: the counts are current again")
        self.held = None
        summary = plan.summary()
        if waiting:
            why = "an earlier proposal awaits review (decision.proposal_ttl_s)"
            summary["skipped"][why] = summary["skipped"].get(why, 0) + sum(waiting.values())
        for reason, n in summary["skipped"].items():
            self.skipped_total[reason] = self.skipped_total.get(reason, 0) + n
        if new:
            self.last_recorded_at = now.isoformat()
        self.last = {"at": now.isoformat(), "mode": mode, "recommendations": len(recs),
                     "recorded": new, "seconds": round(time.perf_counter() - t0, 4),
                     **summary}
        if plan.actions or any(r.kind != "flag_underperformer" for r in recs):
            log.info("decision cycle", **{k: v for k, v in self.last.items() if k != "at"})
        return plan

    def status(self) -> dict[str, Any]:
        d = self.settings.decision
        out: dict[str, Any] = {"mode": d.mode, "risk_budget": d.risk_budget,
                               "cycles": self.cycles, "last_cycle": self.last,
                               "skipped_since_start": dict(self.skipped_total),
                               "last_recorded_at": self.last_recorded_at, "held": self.held}
        if self.executor is not None:
            t = self.executor.totals
            out["executor"] = {"applied": t.applied, "failed": t.failed, "refused": t.refused,
                               "expired": t.expired, "last_drain": self.executor.last_drain,
                               "held": self.executor.held}
        return out


__all__ = ["DecisionService"]
