"""The DSP as a daemon component: the adapter (and, in sandbox mode, the in-process sandbox),
the probe that closes an open circuit once the DSP answers again, campaign sync (delegated to
``campaignd.dsp.sync``), reconciliation (read line items back and compare with what campaignd
believes) and the read model of line items (cell ↔ line item, active count, status).

A sync that fails on a DSP error is kept pending and retried by the reconciliation job; the
daemon stays up and reports the problem. Budgets that reconciliation finds changed outside
campaignd are the DSP's truth from then on, but never above the campaign's caps: they are scaled
back down (and recorded) as at sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import TaskStatus

from campaignd.clock import Clock
from campaignd.domain.campaign import CampaignSpec, Cell
from campaignd.dsp.base import DSPAdapter, LineItem
from campaignd.dsp.sync import CampaignSync
from campaignd.dsp.sync_model import (
    CAMPAIGN_BUDGET,
    CampaignState,
    campaign_alt_id,
    cell_targeting,
    creative_alt_id,
    initial_budgets,
    unmanaged_costs,
)
from campaignd.errors import DSPError, DSPNotFound, DSPRejected
from campaignd.logs import get_logger
from campaignd.settings import Settings, mask_url_password

__all__ = [
    "CAMPAIGN_BUDGET",
    "DSPService",
    "campaign_alt_id",
    "cell_targeting",
    "close_quietly",
    "creative_alt_id",
    "initial_budgets",
]

log = get_logger("campaignd.dsp")


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
        self.campaigns: dict[str, CampaignState] = {}
        self.last_reconcile: dict[str, Any] | None = None
        self._campaign_sync = CampaignSync(self, advertiser_id=settings.dsp.beeswax.advertiser_id)
        """Creates and updates each campaign's objects on the DSP, within its caps."""
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
        st = self.campaigns.setdefault(spec.id, CampaignState(spec, list(cells)))
        st.spec, st.cells = spec, list(cells)
        try:
            await self._campaign_sync.sync(st)
            st.synced, st.error = True, None
        except DSPError as exc:
            st.error = f"{type(exc).__name__}: {exc}"
            log.error("campaign sync failed; will retry", campaign=spec.id, error=st.error)
        mapping = {cid: li.id for cid, li in st.line_items.items()}
        if st.synced and self.on_synced is not None:
            self.on_synced(spec.id, mapping)
        return mapping

    def spent_today_of(self, campaign_id: str) -> dict[str, int]:
        """Each cell's spend today (micros, >= 0) as the daemon's registry has it (empty when
        no provider is set)."""
        spent = self.spent_today(campaign_id) if self.spent_today is not None else {}
        return {cid: max(int(v), 0) for cid, v in spent.items()}

    # --- reconciliation ------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Retry pending syncs, then read every line item back; return the number of line items
        whose DSP state differs from campaignd's (missing, paused unexpectedly, budget drift)."""
        assert self.adapter is not None
        drift = 0
        details: list[str] = []
        unread: list[str] = []
        for st in self.campaigns.values():
            if not st.synced:
                await self.sync_campaign(st.spec, st.cells)
                if not st.synced:
                    continue
            try:
                drift += await self._reconcile_one(st, details)
            except (DSPNotFound, DSPRejected) as exc:
                # one campaign the DSP will not show (say, archived in its UI) does not keep
                # the others from being read back; an error of the whole account (a timeout,
                # a rate limit, an open circuit, credentials) stops the run at once
                unread.append(f"{st.spec.id}: {type(exc).__name__}: {exc}"[:300])
        self.last_reconcile = {"at": datetime.now(UTC).isoformat(), "drift": drift,
                               "details": details[:20], "unread": unread[:20]}
        if drift:
            log.warning("reconciliation found drift", drift=drift, examples=details[:5])
        if unread:  # the job fails (and alerts after three runs), the others done
            raise DSPError(f"could not read back {len(unread)} campaign(s)' line items: "
                           + "; ".join(unread[:3]))
        return drift

    async def _reconcile_one(self, st: CampaignState, details: list[str]) -> int:
        """Read one synced campaign's line items back (see ``reconcile``); returns its
        drift."""
        assert self.adapter is not None
        drift = 0
        known_now = dict(st.line_items)
        changed: dict[str, LineItem] = {}
        more = False  # line items campaignd does not manage take more than they did
        if st.dsp_campaign_id is not None:
            # the campaign's whole list (about as many requests as reading the known ids in
            # batches): line items created in the DSP's UI count against its caps too
            listed = await self.adapter.get_line_items(campaign_id=st.dsp_campaign_id)
            current = {li.id: li for li in listed}
            others = unmanaged_costs(st, listed, self.spent_today_of(st.spec.id))
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
        if changed or (more and self._campaign_sync.over_caps(st)):
            # budgets changed outside campaignd (or its other line items) are the DSP's
            # truth now, but never above the campaign's caps: scaled back down (and
            # recorded) as at sync
            spec = st.spec
            if st.dsp_campaign_id is not None and self._campaign_sync.over_caps(st):
                try:
                    async with self.writing:
                        await self._campaign_sync.enforce_caps(st, st.dsp_campaign_id)
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
            # (a password in the URL is a secret: status is read without a token)
            "base_url": self.sandbox_url or mask_url_password(self.settings.dsp.beeswax.base_url),
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


async def close_quietly(adapter: DSPAdapter | None) -> None:
    if adapter is not None:
        with contextlib.suppress(Exception):
            await adapter.aclose()
