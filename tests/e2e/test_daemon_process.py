"""End to end: `campaignd run` as a real process in sandbox mode, read through the CLI and the
control API, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from campaignd.testing import (
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
            assert "campaignd_events_ingested_total" in client.get("/metrics").text
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
