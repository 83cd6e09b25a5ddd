"""Run the sandbox server: uvicorn on a loopback socket plus the market ticker, in one task
group (started in-process by the daemon, or standalone by ``campaignd sandbox serve``)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import structlog
import uvicorn
from anyio.abc import TaskStatus

from campaignd.clock import Clock, SystemClock
from campaignd.dsp.sandbox.faults import FaultConfig
from campaignd.dsp.sandbox.feed import decode_cursor, encode_cursor
from campaignd.dsp.sandbox.model import MarketProtocol
from campaignd.dsp.sandbox.server import create_app
from campaignd.dsp.sandbox.state import SandboxState
from campaignd.errors import StartupError

log = structlog.get_logger(__name__)

MAX_CHUNK = timedelta(minutes=5)
"""The most market time one ``advance`` call of the ticker covers."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The host process (daemon or CLI) owns the signals; uvicorn must not take them.
        yield


class SandboxService:
    """The sandbox as a component: ``await service.run(task_status=...)`` in a task group.

    ``task_status.started(base_url)`` reports e.g. ``http://127.0.0.1:53122`` once the socket is
    bound and uvicorn accepts connections. The market (if any) advances on a ticker to
    ``market start + time_scale * elapsed time`` (``clock``), and its events feed the log
    stream. Cancellation shuts uvicorn down cleanly.
    """

    def __init__(self, market: MarketProtocol | None = None, *,
                 email: str = "sandbox@campaignd.local", password: str = "sandbox",
                 buzz_key: str = "sandbox", time_scale: float = 1.0,
                 faults: FaultConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                 clock: Clock | None = None, tick_interval_s: float = 0.5,
                 log_level: str = "warning", push_url: str | None = None,
                 push_token: str | None = None, push_batch: int = 2000,
                 **state_options: Any) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.clock: Clock = clock or SystemClock()
        state_options.setdefault("clock", self.clock)
        # the API's dates are in the account's time zone, the one the market's days follow
        tz = getattr(market, "account_timezone", None)
        if tz is not None:
            state_options.setdefault("timezone", tz)
        self.state = SandboxState(market, email=email, password=password, buzz_key=buzz_key,
                                  faults=faults, **state_options)
        self.time_scale = time_scale
        self.host = host
        self.port = port
        self.tick_interval_s = tick_interval_s
        self.log_level = log_level
        self.base_url: str | None = None
        self.push_url = push_url
        self.push_token = push_token
        self.push_batch = push_batch
        self.push_cursor: str | None = None
        if push_url:
            self.state.push = {"url": push_url, "cursor_seq": 0, "pushed": 0, "lost": 0,
                               "retries": 0, "last_error": None}

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it uvicorn's separate header and body writes
        # meet Nagle + delayed ACK (~40 ms per response on loopback).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def tick(self) -> int:
        """Advance the market to the scaled wall time once; returns the events appended."""
        market = self.state.market
        if market is None:
            return 0
        elapsed = self.clock.monotonic() - self._t0
        until = self._market_start + timedelta(seconds=elapsed * self.time_scale)
        # Advance in chunks of at most one market step, yielding between them: a ticker that
        # fell behind (a busy machine, a high time_scale) catches up without blocking the event
        # loop, and a shutdown is never stuck behind hours of market time.
        total = 0
        while market.now < until:
            before = market.now
            total += self.state.advance_market(min(until, before + MAX_CHUNK))
            if market.now <= before:
                break
            await anyio.sleep(0)
        return total

    async def _ticker(self) -> None:
        while True:
            await self.clock.sleep(self.tick_interval_s)
            try:
                await self.tick()
            except Exception:  # a market bug must not take the DSP endpoint down
                log.exception("sandbox.market_tick_failed")

    async def _pusher(self) -> None:
        """Beeswax's streaming log push: POST the feed's messages (newline-delimited JSON,
        ``Authorization: Bearer``) to ``push_url`` in order, moving on only when a batch is
        acknowledged with a 2xx; anything else is retried with backoff (at least once: a batch
        whose answer was lost is sent again, and the receiver's side deduplicates)."""
        import httpx

        feed = self.state.feed
        progress = self.state.push
        assert progress is not None
        headers = {"content-type": "application/x-ndjson"}
        if self.push_token:
            headers["authorization"] = f"Bearer {self.push_token}"
        backoff = 0.2
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            while True:
                messages, nxt, skipped = feed.read(self.push_cursor, self.push_batch)
                if skipped:  # the feed evicted them before they could be pushed (counted once)
                    progress["lost"] += skipped
                    log.warning("sandbox.push_lost", messages=skipped)
                    self.push_cursor = encode_cursor((decode_cursor(nxt) or 0) - len(messages))
                    progress["cursor_seq"] = decode_cursor(self.push_cursor)
                if not messages:
                    await anyio.sleep(0.1)
                    continue
                try:
                    resp = await client.post(self.push_url,  # type: ignore[arg-type]
                                             content=b"\n".join(messages), headers=headers)
                    ok = resp.is_success
                    detail = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                if ok:
                    self.push_cursor = nxt
                    progress["pushed"] += len(messages)
                    progress["cursor_seq"] = decode_cursor(nxt)
                    progress["last_error"] = None
                    backoff = 0.2
                    continue
                progress["retries"] += 1
                progress["last_error"] = detail
                log.info("sandbox.push_retry", error=detail, retry_in_s=backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def run(self, *, task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            sock = self._bind()
        except OSError as exc:
            raise StartupError(f"the sandbox cannot listen on {self.host}:{self.port} ({exc}); "
                               "pick another port or stop the process using it") from exc
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{port}"
        config = uvicorn.Config(create_app(self.state), log_level=self.log_level,
                                lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2, log_config=None)
        server = _Server(config)
        self._t0 = self.clock.monotonic()
        if self.state.market is not None:
            self._market_start = self.state.market.now
        done = anyio.Event()

        async def serve() -> None:
            try:
                with anyio.CancelScope(shield=True):
                    await server.serve(sockets=[sock])
            finally:
                done.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                # Whatever ends this block — cancellation during start-up included — must tell
                # the (shielded) server to exit, or the task group would wait for it forever.
                try:
                    with anyio.fail_after(10):
                        while not server.started:
                            if done.is_set():
                                raise RuntimeError(f"sandbox server failed to start on "
                                                   f"{shown}:{port}")
                            await anyio.sleep(0.005)
                    if self.state.market is not None:
                        tg.start_soon(self._ticker)
                    if self.push_url:
                        tg.start_soon(self._pusher)
                    log.info("sandbox.started", url=self.base_url, time_scale=self.time_scale)
                    task_status.started(self.base_url)
                    await anyio.sleep_forever()
                finally:
                    server.should_exit = True
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await done.wait()
                    tg.cancel_scope.cancel()
        finally:
            sock.close()


async def serve_standalone(scenario_path: str | Path, *, port: int, host: str = "127.0.0.1",
                           seed: int = 0, time_scale: float = 1.0,
                           start: datetime | None = None,
                           faults: FaultConfig | None = None, buzz_key: str = "sandbox",
                           account_timezone: str = "America/New_York",
                           task_status: TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
                           **options: Any) -> None:
    """Build the scenario's market and serve it until cancelled (``campaignd sandbox serve``).

    ``start`` is the market's start time (default: the scenario's); ``account_timezone`` the
    account's time zone (its API dates, budget day and pacing; Beeswax's default, as the
    daemon's ``dsp.account_timezone``).
    ``options`` go to ``SandboxService`` (``email``, ``password``, ``tick_interval_s``,
    ``log_level``, and ``SandboxState`` options such as ``report_polls``). Raises
    ``SpecError`` for a bad scenario and ``StartupError`` when the port cannot be bound.
    """
    from campaignd.dsp.sandbox.market import Market
    from campaignd.dsp.sandbox.scenarios import load_scenario

    scenario = load_scenario(scenario_path)
    market = Market(scenario, seed=seed, start=start or scenario.default_start,
                    buzz_key=buzz_key, account_timezone=account_timezone)
    service = SandboxService(market, host=host, port=port, time_scale=time_scale,
                             faults=faults, buzz_key=buzz_key, **options)
    await service.run(task_status=task_status)
