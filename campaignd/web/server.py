"""Serving the control API: the listening socket (bound before start-up, so a taken port fails
fast) and uvicorn without its own signal handling (the daemon owns SIGTERM/SIGINT)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus

from campaignd.errors import StartupError


def bind_socket(host: str, port: int, *, key: str = "http.port") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot listen on {host}:{port}: {exc.strerror}; another process may hold the port."
            f" Set {key} in the config (or CAMPAIGND_{key.upper().replace('.', '__')}) to a free"
            " port") from None
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
