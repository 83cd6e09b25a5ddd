"""The daemon's control plane: what the web layer, ``campaignd status`` and the decision cycle
read from a running daemon (its status with the problems that make it unhealthy, campaign
summaries, today's spend per cell, the cells' snapshots). Mixed into ``Daemon``, which owns the
components read here.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any

from campaignd import __version__
from campaignd.alarms import LevelAlarm
from campaignd.clock import Clock
from campaignd.decisions import DecisionService
from campaignd.domain.budget_day import flight_days_left, paced_budget_today
from campaignd.domain.campaign import from_micros
from campaignd.domain.cells import METRIC_INDEX, CellSnapshot
from campaignd.settings import Settings
from campaignd.stores.opening import masked_database_url
from campaignd.web.app import tokens_equal


class DaemonControl:
    """The control plane (see the module docstring); ``Daemon`` provides what is declared here."""

    settings: Settings
    wall: Clock
    clock: Clock
    started_at: datetime
    t0: float
    campaigns: dict[str, Any]
    supervisor: Any
    dsp: Any
    ingest: Any
    spool: Any
    monitor: Any
    reallocation: Any
    decisions: DecisionService | None
    database_id: str | None
    _token: str
    _problems: list[str]
    _spool_alarm: LevelAlarm
    _ready: bool
    _stopping: bool

    def status(self) -> dict[str, Any]:
        agents = self.supervisor.status() if self.supervisor else []
        problems = list(self._problems)
        if self.supervisor and not self.supervisor.healthy():
            problems.append(f"failing: {', '.join(self.supervisor.failing())} (three runs in "
                            "a row failed; healthy again after two good runs in a row)")
        dsp = self.dsp.status() if self.dsp is not None else {
            "adapter": self.settings.dsp.adapter, "healthy": False, "line_items": 0,
            "detail": "starting"}
        if self._ready and not dsp["healthy"]:
            problems.append(f"DSP adapter unhealthy: {dsp.get('detail')}")
        events = self.ingest.status() if self.ingest is not None else {
            "ingested": 0, "dead_lettered": 0, "duplicates": 0, "lag_s": None, "cursor": None}
        if self.spool is not None:
            sp = self.spool.status()
            r = self.settings.receiver
            events = {**events, "receiver": {
                "url": f"http://{r.host}:{r.port}{r.path}", "accepted": self.spool.appended,
                "spool_next_seq": sp.next_seq, "spool_first_seq": sp.first_seq,
                "spool_bytes": sp.bytes, "spool_segments": sp.segments,
                "spool_max_bytes": self.spool.max_bytes}}
            if self._spool_alarm.update(sp.bytes / self.spool.max_bytes):
                problems.append(f"the receiver's spool is {sp.bytes / self.spool.max_bytes:.0%} "
                                "full: the event feed is behind (pushes get 503 when full)")
        if self.ingest is not None:
            problems += self.ingest.problems()
        healthy = self._ready and not self._stopping and not problems
        state = "stopped" if self._stopping else ("running" if healthy else "unhealthy")
        return {
            "state": state, "healthy": healthy, "pid": os.getpid(),
            "instance": self.settings.instance, "version": __version__,
            "started_at": self.started_at.isoformat(), "uptime_s": round(
                time.monotonic() - self.t0, 3), "heartbeat_at": self.wall.now().isoformat(),
            "market_time": self.clock.now().isoformat(),
            "control_url": self.settings.control_url,
            "database": masked_database_url(self.settings), "database_id": self.database_id,
            "campaigns": self._campaign_status(), "agents": agents, "events": events,
            "dsp": dsp, "decision": (self.decisions.status() if self.decisions else {
                "mode": self.settings.decision.mode,
                "risk_budget": self.settings.decision.risk_budget}),
            "problems": problems,
        }

    def _campaign_status(self) -> list[dict[str, Any]]:
        out = []
        now = self.clock.now()
        for cid, rt in self.campaigns.items():
            spend = int(rt.table.counts["spend_micros"].sum())
            spec, day = rt.spec, rt.table.budget_day
            today = paced_budget_today(
                lifetime_micros=spec.lifetime_budget_micros,
                daily_micros=spec.daily_budget_micros, spent_total_micros=spend,
                spent_today_micros=sum(self._spent_today(cid).values()),
                days_left=flight_days_left(day, now, spec.flight_start, spec.flight_end))
            out.append({
                "id": cid, "name": rt.spec.name, "currency": rt.spec.currency,
                "cells_total": len(rt.cells),
                "cells_active": (self.dsp.active_count(cid) if self.dsp is not None else 0),
                "lifetime_budget": str(rt.spec.lifetime_budget),
                "daily_budget": str(rt.spec.daily_budget),
                # the lifetime budget paced over the flight: what the policy spends today
                "budget_today": str(from_micros(today)), "spend": str(from_micros(spend)),
                "impressions": int(rt.table.counts["impressions"].sum()),
                "conversions": int(rt.table.counts["conversions"].sum()),
            })
        return out

    async def campaigns_list(self) -> list[dict[str, Any]]:
        return self._campaign_status()

    async def campaign(self, campaign_id: str) -> dict[str, Any] | None:
        rt = self.campaigns.get(campaign_id)
        if rt is None:
            return None
        summary = next(c for c in self._campaign_status() if c["id"] == campaign_id)
        return {**summary, "dimensions": rt.spec.dimension_counts(),
                "totals": rt.table.totals(), "objective": rt.spec.objective,
                "flight": {"start": rt.spec.flight_start.isoformat(),
                           "end": rt.spec.flight_end.isoformat()},
                "monitor": self.monitor.last_metrics.get(campaign_id),
                "reallocation": self.reallocation.last.get(campaign_id)}

    def trigger(self, job: str) -> bool:
        return self.supervisor.trigger(job) if self.supervisor else False

    def check_token(self, token: str) -> bool:
        return bool(self._token) and tokens_equal(token, self._token)

    def _spent_today(self, campaign_id: str) -> dict[str, int]:
        """Cell → what its line item spent today (the account's budget day), as counted."""
        rt = self.campaigns.get(campaign_id)
        if rt is None:
            return {}
        table = rt.table
        table.roll_day(table.budget_day.index(self.clock.now().timestamp()))
        spend = table.today[METRIC_INDEX["spend_micros"]]
        # (cells removed from the spec today too: their line items' spend still counts)
        return {**table.gone_today,
                **{cid: int(spend[i]) for i, cid in enumerate(table.cell_ids)}}

    def snapshots(self) -> dict[str, CellSnapshot]:
        """Every campaign's counters now (in market time), with the daily budgets in force."""
        at_s = int(self.clock.now().timestamp())
        return {cid: DecisionService.with_budgets(rt.table.snapshot(at_s=at_s), self.dsp)
                for cid, rt in self.campaigns.items()}
