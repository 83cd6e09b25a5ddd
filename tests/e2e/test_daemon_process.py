"""End to end: `campaignd run` as a real process in sandbox mode, read through the CLI and the
control API, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, port: int, **extra: str) -> Path:
    cfg = tmp / "campaignd.toml"
    lines = [
        f'state_dir = "{tmp / "state"}"',
        f'campaigns = ["{ROOT / "config" / "campaigns" / "madhive_12345.toml"}"]',
        "[database]", f'url = "sqlite+aiosqlite:///{tmp / "campaignd.db"}"',
        "[dsp]", 'adapter = "sandbox"', "events_poll_s = 0.2",
        "[dsp.sandbox]", f'scenario = "{ROOT / "config" / "scenarios" / "seed.toml"}"',
        "time_scale = 600.0",
        "[agents]", "monitor_s = 1.0",
        "[decision]", 'mode = "live"',
        "[http]", 'host = "127.0.0.1"', f"port = {port}",
        "[log]", 'format = "json"', f'file = "{tmp / "campaignd.log"}"',
    ]
    for k, v in extra.items():
        lines.append(f"{k} = {v}")
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def env_without_campaignd(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")}
    env.update(extra)
    return env


def status(cfg: Path, **env: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "campaignd", "status", "--config", str(cfg),
                        "--json"], capture_output=True, text=True, timeout=30,
                       env=env_without_campaignd(**env))
    return r.returncode, json.loads(r.stdout)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


@pytest.fixture
def notify_socket(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.1)
    yield path, sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            return out


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
    port = free_port()
    cfg = write_config(tmp_path, port)
    sock_path, nsock = notify_socket
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignd", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env_without_campaignd(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000",
                                  **backend_env))
    try:
        def running() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited early: {proc.returncode}\n"
                                     f"{proc.stderr.read() if proc.stderr else ''}")
            code, st = status(cfg)
            return st if code == 0 else None

        st = wait_for(running, 120, "campaignd status to report running")
        assert st["state"] == "running" and st["healthy"] is True
        assert st["pid"] == proc.pid
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
            _, s = status(cfg)
            return s if s["events"]["ingested"] > 0 and s["campaigns"][0]["spend"] != "0.00" \
                else None

        st = wait_for(ingested, 90, "events to be ingested")
        # The monitor ran on its cadence and its runs are recorded.
        st = wait_for(lambda: next((a for a in status(cfg)[1]["agents"]
                                    if a["name"] == "monitor" and a["runs"] >= 2), None),
                      30, "monitor runs")
        assert st["last_outcome"] == "ok"

        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
            assert client.get("/healthz").status_code == 200
            assert "campaignd_events_ingested_total" in client.get("/metrics").text
            assert client.get("/").status_code == 200
            r = client.post("/api/v1/agents/monitor/run")
            assert r.status_code == 401 and r.json()["field"] == "Authorization"
            r = client.post("/api/v1/agents/monitor/run",
                            headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 403
            token = (tmp_path / "state" / "api-token").read_text().strip()
            assert oct((tmp_path / "state" / "api-token").stat().st_mode & 0o777) == "0o600"
            r = client.post("/api/v1/agents/monitor/run",
                            headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 202
            r = client.post("/api/v1/agents/nope/run",
                            headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 404 and "monitor" in r.json()["fix"]
            assert client.get("/api/v1/campaigns/nope").status_code == 404

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        assert code == 0
        assert time.monotonic() - t0 < 10
        messages = "\n".join(drain(nsock))
        assert "READY=1" in messages and "STOPPING=1" in messages and "STATUS=" in messages
        assert "WATCHDOG=1" in messages  # pinged every WatchdogSec/2 while healthy
        code, st = status(cfg, **backend_env)
        assert code == 1 and st["state"] == "stopped" and st["source"] == "database"
        log_text = (tmp_path / "campaignd.log").read_text()
        assert token not in log_text
        assert '"campaignd ready"' in log_text or "campaignd ready" in log_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        cfg = write_config(tmp_path, port)
        r = subprocess.run([sys.executable, "-m", "campaignd", "run", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60,
                           env=env_without_campaignd())
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "http.port" in r.stderr


def test_database_unavailable_exits_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port())
    dead = free_port()
    r = subprocess.run([sys.executable, "-m", "campaignd", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60,
                       env=env_without_campaignd(
                           CAMPAIGND_DATABASE__URL=f"postgresql+asyncpg://postgres@127.0.0.1:"
                                                   f"{dead}/nothing"))
    assert r.returncode == 1
    assert "database" in r.stderr and f"127.0.0.1:{dead}" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_exits_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, free_port())
    r = subprocess.run([sys.executable, "-m", "campaignd", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60,
                       env=env_without_campaignd(CAMPAIGND_AGENTS__MONITOR_S="soon"))
    assert r.returncode == 2
    assert "agents.monitor_s" in r.stderr
