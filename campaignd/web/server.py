"""Serving the control API: the listening socket (bound before start-up, so a taken port fails
fast) and uvicorn without its own signal handling (the daemon owns SIGTERM/SIGINT)."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

from campaignd.errors import ConfigError, StartupError


def _env(key: str) -> str:
    return "CAMPAIGND_" + key.upper().replace(".", "__")


def bind_socket(host: str, port: int, *, key: str = "http.port") -> socket.socket:
    """A listening socket on ``host``:``port``; ``key`` names the port's setting (its section's
    ``host`` is named when the host is the problem). A host that does not resolve is
    ``ConfigError`` (exit code 2) — unless the resolver failed for now (``EAI_AGAIN``: DNS not
    up yet at boot), which, like a taken port, is ``StartupError`` (exit 1: systemd retries)."""
    host_key = key.rsplit(".", 1)[0] + ".host"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        at = f"cannot listen on {host}:{port}: {exc.strerror}"
        host_fix = (f"Set {host_key} in the config (or {_env(host_key)}) to an address of this "
                    "machine, e.g. 127.0.0.1 (loopback only) or 0.0.0.0 (every interface)")
        if isinstance(exc, socket.gaierror):
            if exc.errno == socket.EAI_AGAIN:
                raise StartupError(f"{at}; {host_key} could not be resolved now (is DNS up?). "
                                   f"{host_fix}") from None
            raise ConfigError(f"{at}; {host_key} {host!r} does not resolve to an address. "
                              f"{host_fix}") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"{at}; {host_key} {host!r} is not an address of this machine. "
                               f"{host_fix}") from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"{at}; ports below 1024 need privileges. Set {key} in the "
                               f"config (or {_env(key)}) to a port from 1024 to 65535") from None
        raise StartupError(
            f"{at}; another process may hold the port. Set {key} in the config (or {_env(key)})"
            " to a free port") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(app: Any, sock: socket.socket, *,
                     task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    server = _Server(config)
    task_status.started()
    await server.serve(sockets=[sock])


__all__ = ["bind_socket", "serve_http"]
