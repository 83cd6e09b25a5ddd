"""sd_notify never blocks the daemon, even when nobody reads the socket."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from campaignd.systemd import Notifier


def test_notify_does_not_block_when_the_reader_is_stuck(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    try:
        n = Notifier(str(path))
        t0 = time.monotonic()
        sent = [n.watchdog() for _ in range(500)]  # far more than the receive queue holds
        assert time.monotonic() - t0 < 1.0
        assert sent[0] is True and sent[-1] is False  # dropped once the queue is full
        assert rx.recv(100) == b"WATCHDOG=1"
        n.close()
    finally:
        rx.close()


def test_disabled_without_notify_socket(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and n.ready() is False
