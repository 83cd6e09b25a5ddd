"""`campaignd sandbox serve` as a real process: a Beeswax-compatible API on loopback."""

from __future__ import annotations

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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sandbox_serve_speaks_beeswax(sig: signal.Signals) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignd", "sandbox", "serve", "--scenario",
         str(ROOT / "config" / "scenarios" / "seed.toml"), "--port", str(port),
         "--time-scale", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=5, trust_env=False) as c:
            while True:
                try:
                    r = c.get("/rest/v2/line-items")
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    assert time.monotonic() < deadline, "sandbox did not start"
                    time.sleep(0.2)
            assert r.status_code == 401 and "detail" in r.json()
            r = c.post("/rest/v2/authenticate", json={
                "email": "sandbox@campaignd.local", "password": "sandbox",
                "keep_logged_in": True})
            assert r.status_code == 200 and r.json()["success"] == "true"
            r = c.get("/rest/v2/line-items")
            assert r.status_code == 200
            assert set(r.json()) >= {"count", "next", "previous", "results"}
        proc.send_signal(sig)
        try:
            _out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
            raise AssertionError(f"no exit 15 s after {sig.name}; stderr:\n{err[-4000:]}") from None
        # a clean stop: cancelled by its own signal handler, not killed by the signal
        assert proc.returncode == 0, err[-4000:]
        assert "shutting down" in err and sig.name in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sandbox_serve_rejects_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 3\n")
    r = subprocess.run([sys.executable, "-m", "campaignd", "sandbox", "serve", "--scenario",
                        str(bad), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_sandbox_serve_rejects_an_unknown_account_time_zone() -> None:
    r = subprocess.run([sys.executable, "-m", "campaignd", "sandbox", "serve", "--scenario",
                        str(ROOT / "config" / "scenarios" / "seed.toml"), "--port", "0",
                        "--account-timezone", "Eastern"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--account-timezone" in r.stderr and "America/New_York" in r.stderr
    assert "Traceback" not in r.stderr


def test_sandbox_serve_on_a_busy_port_exits_1_naming_it() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "campaignd", "sandbox", "serve", "--scenario",
                            str(ROOT / "config" / "scenarios" / "seed.toml"), "--port",
                            str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr[-4000:]
    assert f"127.0.0.1:{port}" in r.stderr and "pick another port" in r.stderr
    assert "Traceback" not in r.stderr and "ExceptionGroup" not in r.stderr


def test_a_second_ctrl_c_during_the_shutdown_quits_at_once() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignd", "sandbox", "serve", "--scenario",
         str(ROOT / "config" / "scenarios" / "seed.toml"), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/rest/v2/line-items", timeout=5,
                          trust_env=False)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=15)
        # the second Ctrl-C ends the process at once (exit 130, or killed by SIGINT once the
        # shutdown is over and Python's default handler is back), or finds it already done.
        # (A second Ctrl-C that lands just as the signal handler is being removed can make
        # asyncio log the KeyboardInterrupt: what matters is that the process ends promptly.)
        assert proc.returncode in (0, 130, -signal.SIGINT), err[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_sandbox_serve_refuses_a_port_out_of_range(port: str) -> None:
    """It was bind()'s OverflowError: a traceback and exit 1."""
    r = subprocess.run([sys.executable, "-m", "campaignd", "sandbox", "serve", "--scenario",
                        str(ROOT / "config" / "scenarios" / "seed.toml"), "--port", port],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-4000:]
    assert "--port: must be from 0 to 65535" in r.stderr
    assert "Traceback" not in r.stderr
