"""Public test helpers: a real ``campaignd run`` process in sandbox mode, and builders of
Beeswax streaming log messages. campaignd's own tests use them first.

Example::

    from campaignd.testing import DaemonProcess

    with DaemonProcess(tmp_path) as d:
        st = d.wait_running()
        assert st["dsp"]["line_items"] == 432
    assert d.returncode == 0
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from campaignd.pipeline import schema as s

ROOT = Path(__file__).resolve().parents[1]
SEED_SPEC = ROOT / "config" / "campaigns" / "madhive_12345.toml"
SEED_SCENARIO = ROOT / "config" / "scenarios" / "seed.toml"

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CAMPAIGND_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")}
    env.update(extra)
    return env


def write_sandbox_config(directory: Path, port: int, *, time_scale: float = 120.0,
                         monitor_s: float = 1.0, reallocation_s: float = 120.0,
                         mode: str = "live", policy: str = "thompson",
                         extra: str = "") -> Path:
    """A settings file for a sandbox-mode daemon whose state lives in ``directory``."""
    cfg = directory / "campaignd.toml"
    cfg.write_text(f"""
state_dir = "{directory / 'state'}"
campaigns = ["{SEED_SPEC}"]
[database]
url = "sqlite+aiosqlite:///{directory / 'campaignd.db'}"
[dsp]
adapter = "sandbox"
events_poll_s = 0.2
[dsp.sandbox]
scenario = "{SEED_SCENARIO}"
time_scale = {time_scale}
[agents]
monitor_s = {monitor_s}
reallocation_s = {reallocation_s}
[decision]
mode = "{mode}"
policy = "{policy}"
[http]
host = "127.0.0.1"
port = {port}
[log]
format = "json"
file = "{directory / 'campaignd.log'}"
{extra}
""")
    return cfg


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``campaignd ARGS`` as a real process (no CAMPAIGND_* from the caller's env, plus
    ``env``), output captured as text."""
    return subprocess.run([sys.executable, "-m", "campaignd", *args], capture_output=True,
                          text=True, env=clean_env(**(env or {})), cwd=cwd or ROOT,
                          timeout=timeout)


class DaemonProcess:
    """``campaignd run`` in sandbox mode as a child process (a context manager)."""

    def __init__(self, directory: Path, *, env: dict[str, str] | None = None,
                 port: int | None = None, **config: Any) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.config = write_sandbox_config(directory, self.port, **config)
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.returncode: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.directory / "state" / "api-token").read_text().strip()

    def start(self) -> DaemonProcess:
        # Output goes to a file: an unread pipe would fill up and block the daemon's logging.
        self.output = self.directory / "daemon-output.log"
        with open(self.output, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "campaignd", "run", "--config", str(self.config)],
                stdout=out, stderr=subprocess.STDOUT, text=True, env=clean_env(**self.env))
        return self

    def status(self) -> tuple[int, dict[str, Any]]:
        r = cli("status", "--config", str(self.config), "--json", env=self.env, timeout=30)
        return r.returncode, json.loads(r.stdout)

    def wait_running(self, timeout: float = 120) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited early ({self.proc.returncode}):\n"
                                     f"{self.output.read_text()[-5000:]}")
            code, st = self.status()
            return st if code == 0 else None

        return wait_for(running, timeout, "campaignd status to report running")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the daemon dumps every thread's stack
            time.sleep(1)
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout} s; its output:\n"
                                 f"{self.output.read_text()[-8000:]}") from None
        return self.returncode

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if exc_type is None:
                self.stop()
            else:
                self.proc.kill()
                self.returncode = self.proc.wait()


# --- Beeswax streaming log messages ------------------------------------------------------------


def adgroup(line_item: int, campaign: int = 7, account: int = 1) -> s.AdGroupId:
    return s.AdGroupId(buzz_key="sandbox", accountid=str(account), campaignid=str(campaign),
                       lineitemid=str(line_item))


def impression_message(n: int, *, line_item: int, ts_usecs: int, price_micros: str = "25000",
                       campaign: int = 7, zip_code: str = "10001",
                       app_bundle: str = "com.hulu.plus") -> bytes:
    """An impression (with its request) as Beeswax's streaming JSON."""
    auction = f"{ts_usecs}.3054.{n}.sandbox"
    return s.encode_message(s.AdLogMessage(
        impression=s.ImpressionLogMessage(
            auctionid_str=auction, adgroupid=adgroup(line_item, campaign),
            win_price_micros_usd=price_micros, rx_timestamp_usecs=str(ts_usecs),
            auction_adgroup_id=f"{auction}.1.{campaign}.{line_item}"),
        request=s.RequestLogMessage(bidrequest=s.BidRequest(
            app=s.App(bundle=app_bundle), device=s.Device(devicetype=3,
                                                          geo=s.Geo(zip=zip_code))))))


def activity_message(n: int, kind: str, *, line_item: int, ts_usecs: int,
                     campaign: int = 7) -> bytes:
    auction = f"{ts_usecs}.3054.{n}.sandbox"
    return s.encode_message(s.AdLogMessage(activity=(s.ActivityLogMessage(
        type=kind, auctionid_str=auction, adgroupid=adgroup(line_item, campaign),
        rx_timestamp_usecs=str(ts_usecs),
        auction_adgroup_id=f"{auction}.1.{campaign}.{line_item}"),)))


def conversion_message(conversion_id: str, *, line_item: int, ts_usecs: int,
                       value: str = "45.00", campaign: int = 7) -> bytes:
    return s.encode_message(s.AdLogMessage(conversion=s.ConversionLogMessage(
        conversion_id=conversion_id, value=value, rx_timestamp=str(ts_usecs),
        auction_adgroup_id=f"{ts_usecs}.3054.1.sandbox.1.{campaign}.{line_item}")))


def counter_totals(rows: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Per-cell SQL totals (``SqlStore.read_cell_totals``) summed per counter column."""
    from campaignd.stores.sql.models import COUNTER_COLUMNS

    out = dict.fromkeys(COUNTER_COLUMNS, 0)
    for counts in rows.values():
        for c, n in zip(COUNTER_COLUMNS, counts, strict=True):
            out[c] += n
    return out


async def stored_campaign(sql: Any, spec: Any, now: Any, *,
                          line_items: int = 1) -> tuple[Any, list[Any]]:
    """A campaign's cells stored in SQL (``upsert_campaign``) and a ``Registry`` that routes
    line items 100, 101, … to its first ``line_items`` cells: ``(registry, cells)``."""
    from campaignd.domain.campaign import atomize
    from campaignd.pipeline.registry import Registry

    cells = atomize(spec)
    await sql.upsert_campaign(spec, cells, now=now)
    registry = Registry()
    registry.add_campaign(spec, cells)
    registry.register(spec.id, {100 + i: cells[i].cell_id for i in range(line_items)})
    return registry, cells


@asynccontextmanager
async def sandbox_feed(email: str = "ops@campaignd.test",
                       password: str = "pw") -> AsyncIterator[tuple[Any, Any]]:
    """An in-process sandbox DSP on a loopback port and a Beeswax adapter logged in to it:
    ``(sandbox state, adapter)`` — its log feed (``state.feed``) read over real HTTP."""
    import anyio
    from pydantic import SecretStr

    from campaignd.dsp.beeswax import BeeswaxAdapter
    from campaignd.dsp.sandbox import SandboxService

    service = SandboxService(None, email=email, password=password, log_level="critical")
    async with anyio.create_task_group() as tg:
        url = await tg.start(service.run)
        adapter = BeeswaxAdapter(base_url=url, email=email, password=SecretStr(password),
                                 rate_limit_per_s=None, timeout_s=10.0)
        try:
            yield service.state, adapter
        finally:
            await adapter.aclose()
            tg.cancel_scope.cancel()
