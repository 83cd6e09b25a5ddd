"""The composition root: builds every component from settings and runs them in one task group.

Start-up order (each step fails fast with a clear ``StartupError``, exit code 1):
bind the HTTP port → open and upgrade the database → open the hot store → load campaigns →
start the DSP (the in-process sandbox when ``dsp.adapter = "sandbox"``) → sync campaigns to the
DSP → start event ingestion, the job supervisor, the status publisher and the HTTP server →
sd_notify READY.

SIGTERM/SIGINT: sd_notify STOPPING, cancel the task group (running agents finish or are
cancelled at their next await), publish a final ``stopped`` status, close the stores, exit 0 —
all within 10 s.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus

from campaignd import __version__
from campaignd import logs as logmod
from campaignd.agents.monitor import PerformanceMonitor
from campaignd.agents.reallocation import BudgetReallocationAgent
from campaignd.alarms import LevelAlarm
from campaignd.clock import Clock, ScaledClock, SystemClock
from campaignd.control import DaemonPlane
from campaignd.credentials import load_or_create_token, warn_about_secret_files
from campaignd.daemon_control import DaemonControl
from campaignd.daemon_jobs import DaemonJobs
from campaignd.decisions import DecisionService
from campaignd.domain.budget_day import BudgetDay
from campaignd.domain.campaign import CampaignSpec, Cell, atomize, load_spec
from campaignd.domain.cells import CellTable
from campaignd.errors import (
    BadInput,
    CampaigndError,
    StartupError,
    StorageError,
    leaves,
)
from campaignd.metrics import Metrics
from campaignd.pipeline.registry import Registry
from campaignd.scheduling import RunRecord, Supervisor
from campaignd.settings import Settings, secret_values
from campaignd.stores.base import HotStore
from campaignd.stores.daemon_lock import DaemonLock
from campaignd.stores.opening import (
    database_url,
    masked_database_url,
    open_hot_store,
    short_error,
)
from campaignd.stores.sql.repository import AgentRun, SqlStore
from campaignd.systemd import Notifier
from campaignd.web.app import allowed_hosts, create_app
from campaignd.web.server import bind_socket, serve_http

log = logmod.get_logger("campaignd.daemon")

STATUS_INTERVAL_S = 5.0
STATUS_STALE_S = 30.0


@dataclass(slots=True)
class CampaignRuntime:
    spec: CampaignSpec
    cells: list[Cell]
    table: CellTable
    line_items: dict[str, int]
    """cell id → DSP line item id (filled by the DSP sync)."""


class Daemon(DaemonControl, DaemonJobs):
    """One running campaignd: the composition root and the control plane the web layer reads."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.wall = SystemClock()
        if clock is not None:
            self.clock: Clock = clock
        elif settings.dsp.adapter == "sandbox":
            # The daemon lives in the sandbox market's (sped-up) time; see ScaledClock.
            self.clock = ScaledClock(self.wall.now(), settings.dsp.sandbox.time_scale)
        else:
            self.clock = self.wall
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.started_at = self.wall.now()
        self.t0 = time.monotonic()
        self.campaigns: dict[str, CampaignRuntime] = {}
        self.registry = Registry(BudgetDay(settings.dsp.account_timezone))
        self.sql: SqlStore | None = None
        self.hot: HotStore | None = None
        self.supervisor: Supervisor | None = None
        self.dsp: Any = None  # DSPService, built in _start_dsp
        self.ingest: Any = None  # EventIngestor
        self.spool: Any = None  # Spool, when the receiver is on
        self.monitor = PerformanceMonitor(rule=settings.agents.monitor_rule)
        d = settings.decision
        self.reallocation = BudgetReallocationAgent(
            policy=d.policy, seed=settings.dsp.sandbox.seed,
            decision_seconds=int(settings.agents.reallocation_s),
            policy_options=d.thompson_options() if d.policy == "thompson" else None,
            budget_day=self.registry.budget_day)
        self.decisions: DecisionService | None = None
        self.executor: Any = None  # ActionExecutor, built in _start_dsp
        self._token = ""
        self._lock = DaemonLock(state_dir=settings.state_dir,
                                database_url=database_url(settings),
                                shown_url=masked_database_url(settings))
        self._problems: list[str] = []
        self.database_id: str | None = None
        """The database's identity (``SqlStore.database_id``): the CLI checks it before it
        sends this daemon a change."""
        self._spool_alarm = LevelAlarm(raise_above=0.9, clear_below=0.75)
        """The receiver's spool nearly full (a problem above 90 %, until below 75 %)."""
        self._status_outage = logmod.Outage(log, "could not publish status")
        self._ready = False
        self._stopping = False
        self._stopped = False

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the process exit code."""
        s = self.settings
        logmod.register_secrets(secret_values(s))
        warn_about_secret_files(s)
        sock = bind_socket(s.http.host, s.http.port)
        try:
            rsock = (bind_socket(s.receiver.host, s.receiver.port, key="receiver.port")
                     if s.receiver_enabled else None)
        except BaseException:
            sock.close()
            raise
        try:
            async with anyio.create_task_group() as tg:
                # Signals are handled from the first moment: a Ctrl-C during start-up (the
                # database upgrade, the DSP sync) stops the daemon cleanly too.
                await tg.start(self._watch_signals, tg.cancel_scope, name="signals")
                # one daemon per state directory and database, before anything is touched
                await self._lock.acquire()
                # (a PostgreSQL restart drops the advisory lock: taken again, or stop)
                tg.start_soon(self._lock.watch, name="lock")
                await self._open_stores()
                self._token = load_or_create_token(s)
                logmod.register_secrets([self._token])
                await self._load_campaigns()
                self.metrics.up.set(1)
                await self._start_dsp(tg, rsock)
                self.supervisor = Supervisor(self._jobs(), clock=self.wall,
                                             on_record=self._record_run)
                await tg.start(self.supervisor.run, name="supervisor")
                app = create_app(DaemonPlane(self), port=s.http.port,
                                 hosts=allowed_hosts(s.http.host, s.http.allowed_hosts))
                await tg.start(serve_http, app, sock, name="http")
                self._ready = True
                await self._publish_status()
                tg.start_soon(self._status_loop, name="status")
                self.notifier.ready(f"running {len(self.campaigns)} campaign(s)")
                log.info("campaignd ready", control_url=s.control_url,
                         campaigns=len(self.campaigns), dsp=s.dsp.adapter,
                         mode=s.decision.mode)
        finally:
            self._stopping = True
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            sock.close()
            if rsock is not None:
                rsock.close()
        return 0

    async def _watch_signals(self, scope: anyio.CancelScope, *,
                             task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("shutting down", signal=signal.Signals(signum).name)
                self._stopping = True
                self.notifier.stopping()
                self._arm_stop_deadline()
                scope.cancel()
                # A second signal during the (bounded) shutdown gets the default action: a
                # second Ctrl-C force-quits, as people expect.
                return

    def _arm_stop_deadline(self, seconds: float = 12.0) -> None:
        """Last resort: if the process is still alive ``seconds`` after a stop signal (a
        library task that ignores cancellation), exit anyway — a service must not hang on
        stop. Exit 0 when the orderly shutdown had finished, 1 otherwise."""

        def force() -> None:
            log.error("shutdown overran its deadline; exiting now", deadline_s=seconds,
                      shutdown_finished=self._stopped)
            sys.stderr.flush()
            os._exit(0 if self._stopped else 1)

        timer = threading.Timer(seconds, force)
        timer.daemon = True
        timer.start()

    async def _open_stores(self) -> None:
        s = self.settings
        url = database_url(s)
        if s.database.upgrade_on_start:
            from campaignd.stores.sql.migrate import upgrade
            try:
                rev = await upgrade(url)
            except Exception as exc:
                raise StartupError(f"cannot upgrade the database at {masked_database_url(s)}: "
                                   f"{short_error(exc)}; check database.url and that the server "
                                   "is running") from None
            log.info("database ready", url=masked_database_url(s), revision=rev)
        try:
            self.sql = await SqlStore.connect(url)
            self.database_id = await self.sql.database_id()
        except StorageError as exc:
            raise StartupError(str(exc)) from None
        self.hot = await open_hot_store(s, self.clock)

    async def _load_campaigns(self) -> None:
        assert self.sql is not None
        for path in self.settings.campaigns:
            try:
                spec = load_spec(path)
                cells = atomize(spec)
            except BadInput as exc:
                # A bad spec is a user error: report it, keep the daemon (and other campaigns).
                self._problems.append(f"campaign spec {path}: {exc}")
                log.error("campaign spec rejected", path=str(path), error=str(exc))
                continue
            result = await self.sql.upsert_campaign(spec, cells)
            table = self.registry.add_campaign(spec, cells)
            self.reallocation.add_campaign(spec, cells)
            self.monitor.objectives[spec.id] = spec.objective
            self.campaigns[spec.id] = CampaignRuntime(spec, cells, table, {})
            self.metrics.cells.labels(spec.id, "total").set(len(cells))
            log.info("campaign loaded", campaign=spec.id, cells=len(cells),
                     cells_added=result.cells_added)

    async def _start_dsp(self, tg: anyio.abc.TaskGroup, rsock: Any = None) -> None:
        from campaignd.dsp.service import DSPService
        from campaignd.pipeline.ingest import DEDUPE_NAMESPACE, Pipeline
        from campaignd.pipeline.ingestor import EventIngestor

        assert self.sql is not None and self.hot is not None
        s = self.settings
        sandbox = s.dsp.adapter == "sandbox"
        self.dsp = DSPService(s, self.sql, clock=self.clock, on_synced=self._on_synced)
        self.dsp.spent_today = self._spent_today
        await tg.start(self.dsp.run, name="dsp")
        # The in-process sandbox is a new DSP on every start: its feed cursor must not be
        # resumed from an earlier run's (that would skip the new market's backlog), its ids may
        # repeat an earlier market's (so its dedupe marks live in a namespace of their own),
        # and counts of an earlier market are not this one's.
        checkpoint = (f"events:sandbox:{self.dsp.sandbox_url}" if sandbox
                      else f"events:beeswax:{s.dsp.beeswax.base_url}")
        feed: Any = self.dsp.adapter
        if rsock is not None:
            # Beeswax pushes: the receiver spools, the feed reads the spool.
            # (the spool's own stream: its cursor does not depend on the DSP's REST URL)
            checkpoint = (f"events:receiver:sandbox:{self.dsp.sandbox_url}" if sandbox
                          else "events:receiver")
            feed = await self._start_receiver(tg, rsock, checkpoint, fresh=sandbox)
        p = s.pipeline
        pipeline = Pipeline(
            self.registry, self.hot, clock=self.clock, metrics=self.metrics,
            dedupe_window_s=p.dedupe_window_s, max_future_s=p.max_future_s,
            time_scale=s.dsp.sandbox.time_scale if sandbox else 1.0,
            context_capacity=p.context_capacity,
            namespace=f"{DEDUPE_NAMESPACE}:{checkpoint}" if sandbox else DEDUPE_NAMESPACE,
            unknown_samples=p.unknown_line_item_samples)
        self.metrics.add_lag_histogram(lambda: pipeline.stats.lag)
        await self._restore_counts(pipeline, fresh_market=sandbox)
        self.ingest = EventIngestor(
            adapter=feed, sql=self.sql, pipeline=pipeline, clock=self.clock,
            metrics=self.metrics, poll_s=s.dsp.events_poll_s, batch=p.batch,
            checkpoint=checkpoint, flush_s=p.flush_s, max_backlog=p.max_backlog,
            on_commit=self._release_spool if self.spool is not None else None)
        if sandbox:
            # (a new market: an earlier run's batch counted half-way is not this feed's)
            await self.sql.set_checkpoint(self.ingest.progress_checkpoint, "0")
        if not sandbox:  # (the sandbox is a new DSP every start: its ids are new too)
            await self._route_known_line_items()
        # Sync changes a crash left open are closed by their campaign's next sync, from what
        # the DSP holds -- except a removed campaign's (no sync of its will run) and, in
        # sandbox mode, every one (the sandbox is a new DSP: its line items are not those)
        await self.sql.close_sync_actions_except([] if sandbox else list(self.campaigns),
                                                 now=self.clock.now())
        if sandbox:
            # An earlier sandbox market's open actions are about another DSP's line items and
            # budgets, and stamped with its sped-up clock, ahead of this market's (which starts
            # at the wall clock): left open, its proposals would "await review" for as long as
            # that run was ahead (no re-plan of this market could be proposed meanwhile), and
            # its approved changes and undos would be applied to this market's line items.
            n = await self.sql.supersede_open_actions(
                now=self.clock.now(), error="an earlier sandbox market's action (the sandbox "
                                            "is a new DSP on every start)")
            if n:
                log.info("sandbox: an earlier market's open actions superseded", actions=n)
        for rt in self.campaigns.values():
            await self.dsp.sync_campaign(rt.spec, rt.cells)  # registers through _on_synced
        await tg.start(self.ingest.run, name="ingest")
        from campaignd.dsp.executor import ActionExecutor
        d = s.decision
        self.decisions = DecisionService(settings=s, sql=self.sql, metrics=self.metrics)
        self.executor = ActionExecutor(sql=self.sql, dsp=self.dsp, clock=self.clock,
                                       metrics=self.metrics, mode=d.mode,
                                       poll_s=d.executor_poll_s, max_attempts=d.max_attempts,
                                       max_age_s=d.max_action_age_s,
                                       time_scale=s.dsp.sandbox.time_scale if sandbox else 1.0)
        self.decisions.executor = self.executor
        self.executor.hold = self._view_problem
        await tg.start(self.executor.run, name="executor")

    async def _start_receiver(self, tg: anyio.abc.TaskGroup, rsock: Any, checkpoint: str, *,
                              fresh: bool) -> Any:
        """Open the spool (numbering after the committed cursor) and serve the receiver on
        ``rsock``; returns the spool's feed for the ingestor. A new sandbox market starts with
        an empty spool (an earlier market's events are not this one's)."""
        from campaignd.pipeline.spool import Spool, SpoolFeed
        from campaignd.web.receiver import create_receiver_app

        assert self.sql is not None
        s = self.settings
        r = s.receiver
        directory = s.spool_dir
        if fresh and directory.exists():
            for old in directory.glob("*.spool"):
                old.unlink()
        self.spool = Spool(directory, segment_bytes=r.segment_mb << 20,
                           max_bytes=r.max_spool_mb << 20)
        committed = await self.sql.get_checkpoint(checkpoint)
        try:
            start = int(committed) if committed is not None else 0
        except ValueError:
            raise StartupError(f"the feed checkpoint {checkpoint!r} holds {committed!r}, not a "
                               "spool position") from None
        spool = self.spool

        def open_spool() -> None:
            spool.open(min_next_seq=start)
            spool.release(start)  # what was committed before a crash between commit and release

        try:
            await anyio.to_thread.run_sync(open_spool)
        except OSError as exc:
            raise StartupError(f"cannot open the receiver's spool at {directory}: "
                               f"{exc.strerror or exc}; set receiver.spool_dir to a writable "
                               "directory") from None
        assert r.token is not None
        app = create_receiver_app(
            self.spool, token=r.token.get_secret_value(), path=r.path,
            previous_token=(r.previous_token.get_secret_value()
                            if r.previous_token is not None else None),
            max_body_bytes=r.max_body_mb << 20, on_accepted=self.metrics.receiver_messages.inc,
            on_refused=lambda reason: self.metrics.receiver_refused.labels(reason).inc())
        await tg.start(serve_http, app, rsock, name="receiver")
        host, port = rsock.getsockname()[:2]
        log.info("receiver ready", url=f"http://{host}:{port}{r.path}",
                 spool=str(directory), next_seq=self.spool.next_seq)
        return SpoolFeed(self.spool)

    async def _close_spool(self) -> None:
        spool = self.spool
        if spool is not None:
            await self._release_spool()  # what the final commit covered
            await anyio.to_thread.run_sync(spool.close)

    async def _release_spool(self) -> None:
        """After a commit: drop the spool segments the committed cursor has passed (file
        deletions, and waiting for an append's fsync: on a worker thread)."""
        cursor = self.ingest.committed_cursor if self.ingest is not None else None
        spool = self.spool
        if spool is not None and cursor is not None:
            try:
                await anyio.to_thread.run_sync(spool.release, int(cursor))
            except OSError as exc:
                log.warning("could not release spool segments", error=str(exc))

    async def _restore_counts(self, pipeline: Any, *, fresh_market: bool) -> None:
        """Put the committed counts back into the registry; a new sandbox market starts from
        zero instead."""
        from campaignd.pipeline.ingest import restore

        assert self.sql is not None
        if fresh_market:
            from campaignd.pipeline.rollup import forget_exported

            for cid, rt in self.campaigns.items():
                await self.sql.reset_counts(cid)
                rt.table.reset()
                log.info("sandbox: a new simulated market; counts start from zero",
                         campaign=cid)
            # (the last market's day files would stand as this one's, never rewritten)
            files = await forget_exported(self.sql, self.settings.parquet_dir,
                                          list(self.campaigns))
            if files:
                log.info("sandbox: the last market's day files deleted", files=files)
            return
        for cid, impressions in (await restore(pipeline, self.sql,
                                               now=self.clock.now())).items():
            log.info("counts restored", campaign=cid, impressions=impressions)

    async def _route_known_line_items(self) -> None:
        """Route the events of line items an earlier run synced (their ids are in SQL) before
        this start's sync: if the DSP cannot be reached now, the events it pushes or serves
        meanwhile are counted rather than dead-lettered as unknown line items."""
        assert self.sql is not None
        for cid, rt in self.campaigns.items():
            wanted = {c.cell_id for c in rt.cells}
            known: dict[int | str, str] = {
                int(c.dsp_line_item_id): c.cell_id for c in await self.sql.list_cells(cid)
                if c.dsp_line_item_id is not None and c.cell_id in wanted}
            if known:
                self.registry.register(cid, known)
                log.info("routing events of line items synced before", campaign=cid,
                         line_items=len(known))
        # (removed cells' and unloaded campaigns' too: their refused events are kept whole)
        self.registry.know(await self.sql.known_line_item_ids())

    def _on_synced(self, campaign_id: str, line_items: dict[str, int]) -> None:
        """A campaign's line items are known (at start, or when reconciliation retried a
        failed sync): route their events to the campaign's cells."""
        rt = self.campaigns[campaign_id]
        rt.line_items = dict(line_items)
        self.registry.register(campaign_id, {li: cell for cell, li in line_items.items()})

    def _view_problem(self) -> str | None:
        """Why the counts are not current now (a store or the feed failing), or None."""
        return self.ingest.view_problem() if self.ingest is not None else None

    async def _record_run(self, rec: RunRecord) -> None:
        self.metrics.agent_runs.labels(rec.agent, rec.outcome).inc()
        self.metrics.agent_duration.labels(rec.agent).observe(rec.duration_s)
        if self.sql is not None:
            await self.sql.record_agent_run(AgentRun(
                agent=rec.agent, started_at=rec.started_at, finished_at=rec.finished_at,
                duration_s=rec.duration_s, outcome=rec.outcome, error=rec.error,
                recommendations=rec.recommendations))

    async def _status_loop(self) -> None:
        interval = STATUS_INTERVAL_S
        wd = self.notifier.watchdog_interval_s()
        if wd is not None:
            interval = min(interval, wd)
        while True:
            await anyio.sleep(interval)
            await self._publish_status()
            st = self.status()
            # The watchdog proves the event loop is alive; health is reported in STATUS (a
            # DSP outage must not make systemd restart the daemon in a loop).
            self.notifier.watchdog()
            problems = "; ".join(st["problems"])
            self.notifier.status(f"{st['state']}: {st['events']['ingested']} events, "
                                 f"{len(st['campaigns'])} campaign(s)"
                                 + (f"; {problems}" if problems else ""))

    async def _publish_status(self) -> None:
        st = self.status()
        m = self.metrics
        m.dsp_healthy.set(1 if st["dsp"]["healthy"] else 0)
        # what an alerting rule needs: the health `campaignd status` shows, and why
        m.healthy.set(1 if st["healthy"] else 0)
        m.problems.set(len(st["problems"]))
        for job in st["agents"]:
            m.job_failing.labels(job["name"]).set(1 if job["failing"] else 0)
        m.decisions_held.set(1 if self._view_problem() is not None else 0)
        if self.ingest is not None:
            m.feed_refused_share.set(round(self.ingest.refusals.share, 4))
        if self.spool is not None:
            self.metrics.spool_bytes.set(self.spool.bytes)
        for c in st["campaigns"]:
            self.metrics.spend_micros.labels(c["id"]).set(
                int(self.campaigns[c["id"]].table.counts["spend_micros"].sum()))
        try:
            if self.sql is not None:
                await self.sql.write_status(self.settings.instance, os.getpid(), __version__,
                                            self.started_at, st, now=self.wall.now())
            if self.hot is not None:
                await self.hot.set_json(f"status:{self.settings.instance}", st,
                                        ttl_s=STATUS_STALE_S)
        except Exception as exc:
            self._status_outage.failed(short_error(exc))
        else:
            self._status_outage.ok("status published again")

    async def _shutdown(self) -> None:
        """Flush and close everything, each step on its own time budget (≤ 9 s in all)."""
        self.metrics.up.set(0)
        sql, hot, dsp, ingest = self.sql, self.hot, self.dsp, self.ingest

        async def final_status() -> None:
            if sql is not None:
                await sql.write_status(self.settings.instance, os.getpid(), __version__,
                                       self.started_at, self.status(), now=self.wall.now())

        steps: list[tuple[str, float, Any]] = [
            ("commit the ingested events and the cursor", 3.0, ingest.flush if ingest else None),
            ("write the final spend and status", 2.0, final_status),
            ("close the DSP adapter", 1.0, dsp.aclose if dsp else None),
            ("close the receiver's spool", 1.0, self._close_spool if self.spool else None),
            ("close the hot store", 1.0, hot.close if hot else None),
            ("close the database", 2.0, sql.close if sql else None),
        ]
        for what, budget, step in steps:
            if step is None:
                continue
            with anyio.move_on_after(budget) as scope:
                try:
                    await step()
                except Exception as exc:
                    log.warning("shutdown step failed", step=what, error=short_error(exc))
            if scope.cancelled_caught:
                log.warning("shutdown step timed out", step=what, budget_s=budget)
        with anyio.move_on_after(1.0):
            await self._lock.release()
        self.notifier.close()
        self._stopped = True
        log.info("campaignd stopped")


def run_daemon(settings: Settings) -> int:
    """Entry point used by ``campaignd run``: configure logs, run, map errors to exit codes
    (2 bad input, 1 runtime failure) with a one-line message — never a traceback."""
    try:
        logmod.configure(settings.log.level, settings.log.format, settings.log.file)
    except OSError as exc:
        sys.stderr.write(f"error: log.file: cannot open {settings.log.file}: {exc.strerror}; "
                         "set log.file to a writable path (or remove it to log to stderr)\n")
        return 2  # a setting to fix, like a state_dir campaignd cannot use
    # `kill -USR1 <pid>` prints every thread's stack to stderr: how to see where a hung
    # daemon is stuck without a debugger.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        code = anyio.run(Daemon(settings).run)
    except Exception as exc:
        errors = list(leaves(exc))
        ours = [e for e in errors if isinstance(e, CampaigndError)]
        if not ours or len(ours) < len(errors):
            raise
        for e in ours:
            log.error("campaignd cannot start" if isinstance(e, StartupError | BadInput)
                      else "campaignd failed", error=str(e))
        code = 2 if all(isinstance(e, BadInput) for e in ours) else 1
    return exit_promptly(code)


def exit_promptly(code: int, grace_s: float = 2.0) -> int:
    """Return ``code`` once every non-daemon thread has ended; if one is still running after
    ``grace_s`` (e.g. a database driver's worker stuck on a lock), log it and exit now — a
    service must not hang on stop."""
    deadline = time.monotonic() + grace_s
    for t in threading.enumerate():
        if t is threading.main_thread() or t.daemon:
            continue
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        log.warning("exiting with threads still running", threads=stuck)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
