"""End to end: `campaignd run` as a real process in sandbox mode, read through the CLI and the
control API, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from campaignd.domain.campaign import from_micros
from campaignd.pipeline.archive import read_archive
from campaignd.testing import (
    SEED_SCENARIO,
    DaemonProcess,
    clean_env,
    cli,
    free_port,
    wait_for,
    write_sandbox_config,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify_socket(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A stand-in for systemd's notification socket that reads continuously, as systemd does."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    received: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                received.append(sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                continue

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    yield path, received
    stop.set()
    t.join(2)
    sock.close()


@pytest.fixture(params=["embedded", "postgres+redis"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The embedded defaults (SQLite, in-memory hot store), and the production pair."""
    if request.param == "embedded":
        return {}
    return {"CAMPAIGND_DATABASE__URL": request.getfixturevalue("postgres_url"),
            "CAMPAIGND_REDIS__URL": request.getfixturevalue("redis_url"),
            "CAMPAIGND_REDIS__KEY_PREFIX": request.getfixturevalue("redis_prefix")}


def test_daemon_runs_reports_and_stops_cleanly(tmp_path: Path, notify_socket,  # type: ignore[no-untyped-def]
                                              backend_env: dict[str, str]) -> None:
    sock_path, received = notify_socket
    d = DaemonProcess(tmp_path, env={"NOTIFY_SOCKET": str(sock_path),
                                     "WATCHDOG_USEC": "2000000", **backend_env})
    with d:
        assert d.proc is not None
        st = d.wait_running()
        assert st["state"] == "running" and st["healthy"] is True
        assert st["pid"] == d.proc.pid
        assert st["source"] == "api"
        camp = st["campaigns"][0]
        assert camp["id"] == "madhive_12345" and camp["cells_total"] == 432
        assert camp["cells_active"] == 432
        # the lifetime budget paced over the flight's days left, under the daily cap
        from decimal import Decimal
        assert Decimal("0") < Decimal(camp["budget_today"]) <= Decimal(camp["daily_budget"])
        assert st["dsp"]["adapter"] == "sandbox" and st["dsp"]["line_items"] == 432
        assert {a["name"] for a in st["agents"]} >= {"monitor"}
        for key in ("ingested", "dead_lettered", "duplicates", "lag_s"):
            assert key in st["events"]

        # Events flow from the sandbox market into the registry.
        def ingested() -> dict | None:
            _, s = d.status()
            return s if s["events"]["ingested"] > 0 and s["campaigns"][0]["spend"] != "0.00" \
                else None

        wait_for(ingested, 90, "events to be ingested")
        # The monitor ran on its cadence and its runs are recorded.
        mon = wait_for(lambda: next((a for a in d.status()[1]["agents"]
                                     if a["name"] == "monitor" and a["runs"] >= 2), None),
                       30, "monitor runs")
        assert mon["last_outcome"] == "ok"

        with httpx.Client(base_url=d.base_url, timeout=10, trust_env=False) as client:
            assert client.get("/healthz").status_code == 200
            metrics = client.get("/metrics").text
            assert "campaignd_events_ingested_total" in metrics
            # (published with the status every few seconds, as healthy as status says)
            for line in ("campaignd_healthy 1.0", "campaignd_problems 0.0",
                         "campaignd_decisions_held 0.0",
                         'campaignd_job_failing{job="monitor"} 0.0'):
                assert line in metrics, line
            assert client.get("/").status_code == 200
            r = client.post("/api/v1/agents/monitor/run")
            assert r.status_code == 401 and r.json()["field"] == "Authorization"
            r = client.post("/api/v1/agents/monitor/run",
                            headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 403
            token = d.token
            assert oct((tmp_path / "state" / "api-token").stat().st_mode & 0o777) == "0o600"
            r = client.post("/api/v1/agents/monitor/run",
                            headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 202
            r = client.post("/api/v1/agents/nope/run",
                            headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 404 and "monitor" in r.json()["fix"]
            assert client.get("/api/v1/campaigns/nope").status_code == 404

            # The archive job moves what is past its retention to the audit archive.
            url = backend_env.get("CAMPAIGND_DATABASE__URL",
                                  f"sqlite+aiosqlite:///{tmp_path / 'campaignd.db'}")
            asyncio.run(_add_old_dead_letter(url))
            r = client.post("/api/v1/agents/archive/run",
                            headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 202
            audit = tmp_path / "state" / "parquet" / "audit" / "dead_letters"
            wait_for(lambda: list(audit.glob("archived=*/part-*.parquet")), 30,
                     "the audit archive")
            old = read_archive(tmp_path / "state" / "parquet", "dead_letters").to_pylist()
            assert [(x["reason"], x["raw"]) for x in old] == [("bad_money", OLD_LETTER)]

        # A second daemon on the same database (its own state directory and port: another
        # host, say) is refused before it touches anything: two would both send changes.
        other = tmp_path / "second"
        other.mkdir()
        r = run_once(write_sandbox_config(other, free_port()), CAMPAIGND_DATABASE__URL=url,
                     **{k: v for k, v in backend_env.items() if k != "CAMPAIGND_DATABASE__URL"})
        assert r.returncode == 1, r.stderr
        assert "another campaignd" in r.stderr and "Traceback" not in r.stderr
        assert not (other / "state" / "api-token").exists()
        # ... and so is one on the same state directory
        r = run_once(d.config, CAMPAIGND_HTTP__PORT=str(free_port()), **backend_env)
        assert r.returncode == 1 and f"pid {d.proc.pid}" in r.stderr, r.stderr
        assert d.proc.poll() is None  # the first one runs on

        t0 = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - t0 < 10
    time.sleep(0.3)
    messages = "\n".join(received)
    assert "READY=1" in messages and "STOPPING=1" in messages and "STATUS=" in messages
    assert "WATCHDOG=1" in messages  # pinged every WatchdogSec/2 while healthy
    code, st = d.status()
    assert code == 1 and st["state"] == "stopped" and st["source"] == "database"
    # The spend ingested is in the database for `campaign list` after the daemon is gone.
    r = cli("campaign", "list", "--config", str(d.config), "--json", env=backend_env)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)["campaigns"][0]
    assert listed["spend"] != "0.00" and listed["cells_active"] == 432
    log_text = (tmp_path / "campaignd.log").read_text()
    assert token not in log_text
    assert "campaignd ready" in log_text


OLD_LETTER = b'{"impression": {"win_price_micros_usd": "-5"}, "e2e": "archive"}'


async def _add_old_dead_letter(url: str) -> None:
    """A dead letter last seen 60 days ago (past the 30-day retention)."""
    from campaignd.stores.sql import SqlStore

    store = await SqlStore.connect(url)
    try:
        await store.add_dead_letters([("bad_money", OLD_LETTER)], source="e2e",
                                     now=datetime.now(UTC) - timedelta(days=60))
    finally:
        await store.close()


def run_once(cfg: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "campaignd", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, env=clean_env(**env))


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        r = run_once(write_sandbox_config(tmp_path, port))
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "http.port" in r.stderr


def test_database_unavailable_exits_1(tmp_path: Path) -> None:
    dead = free_port()
    r = run_once(write_sandbox_config(tmp_path, free_port()),
                 CAMPAIGND_DATABASE__URL=f"postgresql+asyncpg://postgres@127.0.0.1:{dead}/x")
    assert r.returncode == 1
    assert "database" in r.stderr and f"127.0.0.1:{dead}" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_exits_2(tmp_path: Path) -> None:
    r = run_once(write_sandbox_config(tmp_path, free_port()),
                 CAMPAIGND_AGENTS__MONITOR_S="soon")
    assert r.returncode == 2
    assert "agents.monitor_s" in r.stderr


def test_ctrl_c_during_start_up_stops_cleanly(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path).start()
    # In the middle of start-up: the database is ready, the DSP sync has not finished.
    wait_for(lambda: "database ready" in d.output.read_text(), 60, "start-up to begin", 0.05)
    t0 = time.monotonic()
    assert d.stop(signal.SIGINT) == 0
    assert time.monotonic() - t0 < 10
    assert "shutting down" in d.output.read_text()


FEED_FAULTS = """
[dsp.sandbox.faults]
duplicate_rate = 0.05
reorder_rate = 0.05
malformed_rate = 0.01
seed = 7
"""


@pytest.mark.parametrize("feed", ["pull", "push"])
def test_counts_equal_what_the_sandbox_delivered(tmp_path: Path, backend_env: dict[str, str],
                                                 feed: str) -> None:
    """With at-least-once duplicates, reordering and malformed messages in the feed, the
    daemon's counts equal the sandbox market's delivered totals whenever it has read the whole
    feed — pulled from the sandbox, or pushed by it to the daemon's receiver and spooled, as
    Beeswax delivers; after a restart the committed counts come back (a new sandbox market is a
    new DSP, so they start from zero again there)."""
    extra = FEED_FAULTS
    if feed == "push":
        extra += (f"[receiver]\nenabled = true\nport = {free_port()}\n"
                  'token = "receiver-token-e2e"\n')
    d = DaemonProcess(tmp_path, env=backend_env, time_scale=300.0, extra=extra)
    with d:
        d.wait_running()
        with httpx.Client(base_url=d.base_url, timeout=10, trust_env=False) as client:
            def caught_up() -> dict | None:
                st = client.get("/api/v1/status").json()
                truth = st["dsp"].get("sandbox") or {}
                cursor = st["events"].get("cursor") or ""
                n = truth.get("feed", {}).get("next_seq")
                if feed == "push":
                    pushed = (truth.get("push") or {}).get("cursor_seq")
                    spooled = st["events"]["receiver"]["spool_next_seq"]
                    read_all = pushed == n and cursor == str(spooled)
                else:
                    read_all = cursor == f"seq-{n}"
                delivered = truth.get("delivered", {}).get("impressions", 0)
                return st if read_all and delivered >= 500 else None

            st = wait_for(caught_up, 120, "the daemon to read a busy feed to its end", 0.05)
        truth = st["dsp"]["sandbox"]["delivered"]
        camp = st["campaigns"][0]
        assert camp["impressions"] == truth["impressions"]
        assert camp["conversions"] == truth["conversions"]
        assert camp["spend"] == str(from_micros(truth["spend_micros"]))
        ev = st["events"]
        assert ev["duplicates"] > 0 and ev["dead_by_reason"].get("malformed_json", 0) + \
            ev["dead_by_reason"].get("invalid_field", 0) > 0
        assert ev["ingested_by_kind"]["impression"] == truth["impressions"]
        assert ev["outside_targeting"] == {}  # the market delivers only what was targeted
        assert ev["lag_p99_s"] is not None
        if feed == "push":
            assert ev["receiver"]["accepted"] == truth_push(st) > 0
            metrics = httpx.get(f"{d.base_url}/metrics", timeout=10).text
            assert f"campaignd_receiver_messages_total {float(truth_push(st))}" in metrics
            assert "campaignd_spool_bytes" in metrics
        assert d.stop() == 0
    # everything ingested was committed at shutdown: SQL has the same totals
    r = cli("campaign", "list", "--config", str(d.config), "--json", env=backend_env)
    listed = json.loads(r.stdout)["campaigns"][0]
    assert from_micros_str(listed["spend"]) >= from_micros_str(camp["spend"])
    r = cli("deadletter", "list", "--config", str(d.config), "--json", env=backend_env)
    assert sum(json.loads(r.stdout)["counts"].values()) >= 1


def truth_push(st: dict) -> int:
    """Messages the in-process sandbox pushed and had acknowledged."""
    return int(st["dsp"]["sandbox"]["push"]["pushed"])


def from_micros_str(value: str) -> int:
    from decimal import Decimal
    return int(Decimal(value) * 1_000_000)


def test_a_killed_daemon_restarts_without_losing_or_double_counting(
        tmp_path: Path, backend_env: dict[str, str]) -> None:
    """Production's event path: `campaignd sandbox serve` as Beeswax (it outlives the daemon)
    pushes its log stream over HTTP to the daemon's receiver, which spools it; the daemon on
    the real Beeswax adapter counts the spool. SIGKILL mid-stream (pushes fail while it is
    down, and are retried), start again, and the counts equal the sandbox's delivered totals
    once everything pushed has been counted: nothing acknowledged was lost, nothing counted
    twice."""
    port, rport = free_port(), free_port()
    token = "push-token-0123456789"
    # The market starts at the last 01:00 UTC (US prime time: plenty of supply whatever the
    # hour the test runs at; within the daemon's at-least-once window of the wall clock).
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    while start.hour != 1:
        start -= timedelta(hours=1)
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "campaignd", "sandbox", "serve", "--scenario",
         str(SEED_SCENARIO), "--port", str(port), "--time-scale", "10", "--seed", "3",
         "--start", start.isoformat(), "--push-url", f"http://127.0.0.1:{rport}/beeswax/events"],
        stdout=(tmp_path / "sandbox.log").open("w"), stderr=subprocess.STDOUT,
        env=clean_env(CAMPAIGND_SANDBOX_PUSH_TOKEN=token))
    base = f"http://127.0.0.1:{port}"
    # 1 MB segments: the run spools several, and the counted ones must be released
    extra = "[pipeline]\nflush_s = 0.5\n[receiver]\nsegment_mb = 1\n"
    env = {**backend_env, "CAMPAIGND_DSP__ADAPTER": "beeswax",
           "CAMPAIGND_DSP__BEESWAX__BASE_URL": base, "CAMPAIGND_DSP__BEESWAX__BUZZ_KEY": "sandbox",
           "CAMPAIGND_DSP__BEESWAX__EMAIL": "sandbox@campaignd.local",
           "CAMPAIGND_DSP__BEESWAX__PASSWORD": "sandbox",
           "CAMPAIGND_DSP__BEESWAX__RATE_LIMIT_RPS": "1000",
           "CAMPAIGND_RECEIVER__PORT": str(rport), "CAMPAIGND_RECEIVER__TOKEN": token}
    try:
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as dsp:
            wait_for(lambda: _login(dsp), 60, "the sandbox to serve")
            first = DaemonProcess(tmp_path, env=env, extra=extra)
            with first:
                st = first.wait_running(180)
                assert st["events"]["receiver"]["url"].endswith(f":{rport}/beeswax/events")
                committed = wait_for(lambda: _committed(first), 120, "events to be committed")
                assert first.proc is not None
                first.proc.kill()  # no shutdown, no final commit
                first.proc.wait(10)
            # the receiver is gone: the sandbox's pushes fail and are retried
            wait_for(lambda: dsp.get("/rest/v2/sandbox/status").json()["push"]["retries"] > 0,
                     30, "a push to fail while the daemon is down")
            assert token not in (tmp_path / "daemon-output.log").read_text()
            second = DaemonProcess(tmp_path, env=env, extra=extra, port=first.port)
            with second:
                st = second.wait_running(180)
                # what was committed came back from SQL (more may have been read since)
                assert st["campaigns"][0]["impressions"] >= committed

                def consistent() -> tuple[dict, dict] | None:
                    before = dsp.get("/rest/v2/sandbox/status").json()
                    mine = httpx.get(f"{second.base_url}/api/v1/status", timeout=10).json()
                    after = dsp.get("/rest/v2/sandbox/status").json()
                    n = before["feed"]["next_cursor_seq"]
                    spooled = mine["events"]["receiver"]["spool_next_seq"]
                    if before["push"]["cursor_seq"] == n and after["feed"]["next_cursor_seq"] == n \
                            and after["push"]["cursor_seq"] == n \
                            and mine["events"]["cursor"] == str(spooled):
                        return mine, before["delivered"]
                    return None

                mine, truth = wait_for(consistent, 120, "the daemon to catch up", 0.02)
                camp = mine["campaigns"][0]
                assert camp["impressions"] == truth["impressions"]
                assert camp["conversions"] == truth["conversions"]
                assert camp["spend"] == str(from_micros(truth["spend_micros"]))
                pushed = dsp.get("/rest/v2/sandbox/status").json()["push"]
                assert pushed["lost"] == 0
                shown = cli("status", "--config", str(second.config), env=env, timeout=30)
                assert shown.returncode == 0
                assert f"receiver http://127.0.0.1:{rport}/beeswax/events:" in shown.stdout
                # what was counted is released from the spool (each commit releases what it
                # passed): the 1 MB segments of the run do not pile up. The sandbox keeps
                # pushing, so the one being written and one awaiting its commit may remain.
                def released() -> bool:
                    rcv = httpx.get(f"{second.base_url}/api/v1/status",
                                    timeout=10).json()["events"]["receiver"]
                    return rcv["spool_segments"] <= 2 and rcv["spool_first_seq"] > 0
                wait_for(released, 30, "counted spool segments to be released", 0.2)
                assert mine["events"]["receiver"]["spool_next_seq"] > 5_000  # several MB spooled
                assert second.stop() == 0
    finally:
        sandbox.send_signal(signal.SIGINT)
        try:
            sandbox.wait(15)
        except subprocess.TimeoutExpired:
            sandbox.kill()


def _committed(d: DaemonProcess) -> int | None:
    """Impressions counted once a commit happened after the first 300 events."""
    _, st = d.status()
    ev = st.get("events") or {}
    if ev.get("ingested", 0) >= 300 and ev.get("flushes", 0) >= 2:
        time.sleep(1.0)  # at least one more commit (flush_s = 0.5) covers these
        return int(st["campaigns"][0]["impressions"]) or None
    return None


def _login(c: httpx.Client) -> bool:
    try:
        return c.post("/rest/v2/authenticate", json={
            "email": "sandbox@campaignd.local", "password": "sandbox",
            "keep_logged_in": True}).status_code == 200
    except httpx.TransportError:
        return False
