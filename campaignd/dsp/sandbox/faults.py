"""Configurable faults for the sandbox server (all off by default; seeded, so reproducible).

HTTP faults are injected by an ASGI middleware in front of the ``/rest`` routes:

- ``rate_429`` — answer 429 with ``Retry-After`` at this probability; ``max_rps`` — answer 429
  when more than this many requests arrived in the last second;
- ``rate_5xx`` — answer 500/502/503 at this probability;
- ``rate_slow`` / ``slow_seconds`` — delay the response;
- ``rate_drop`` — the client sees a transport error: the response is cut mid-body and the
  connection closed (``drop_after_processing`` of them after the request was processed — a
  "lost response" — the rest before it reaches the application);
- ``rate_session_expiry`` — the caller's session expires early (if older than
  ``session_min_age_s``).

Feed faults are applied as events enter the log feed (at-least-once delivery):
``rate_duplicate`` (a message delivered twice), ``rate_reorder`` (swapped with its
predecessor), ``rate_malformed`` (a broken message inserted).

Tests can also script one-shot faults: ``FaultInjector.script(ScriptedFault(...))``.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import msgspec

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class FaultConfig:
    seed: int = 0
    rate_429: float = 0.0
    max_rps: float | None = None
    retry_after_s: float = 1.0
    rate_5xx: float = 0.0
    rate_slow: float = 0.0
    slow_seconds: float = 0.5
    rate_drop: float = 0.0
    drop_after_processing: float = 0.5
    rate_session_expiry: float = 0.0
    session_min_age_s: float = 1.0
    """Sessions younger than this never expire early (a fresh login is not revoked at once)."""
    rate_duplicate: float = 0.0
    rate_reorder: float = 0.0
    rate_malformed: float = 0.0
    exempt_paths: tuple[str, ...] = ()
    """Path prefixes never faulted (e.g. the reporting endpoints in a focused test)."""

    @classmethod
    def moderate(cls, seed: int = 0) -> FaultConfig:
        """A noisy but workable DSP: what the contract tests run against."""
        return cls(seed=seed, rate_429=0.03, rate_5xx=0.03, rate_slow=0.02, slow_seconds=0.05,
                   rate_drop=0.02, rate_session_expiry=0.01, rate_duplicate=0.05,
                   rate_reorder=0.05, rate_malformed=0.02)


FaultKind = Literal["429", "5xx", "status", "drop_before", "drop_after", "slow",
                    "session_expiry"]
"""``status`` answers ``ScriptedFault.status`` (any code) with a DRF ``detail`` body."""


@dataclass(frozen=True, slots=True)
class ScriptedFault:
    """Inject ``kind`` into the next request matching ``method`` and ``path_prefix``."""

    kind: FaultKind
    method: str | None = None
    path_prefix: str = "/rest"
    status: int = 503
    retry_after_s: float | None = None
    scripted: bool = True


@dataclass(slots=True)
class FaultStats:
    injected: dict[str, int]

    def bump(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1


class FaultInjector:
    """Decides, per request, which fault (if any) applies. Shared by the middleware and the
    session layer (for ``session_expiry``)."""

    def __init__(self, config: FaultConfig, monotonic: Callable[[], float]) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._monotonic = monotonic
        self._recent: deque[float] = deque()
        self._script: list[ScriptedFault] = []
        self.stats = FaultStats({})

    def script(self, *faults: ScriptedFault) -> None:
        self._script.extend(faults)

    def _take_scripted(self, method: str, path: str) -> ScriptedFault | None:
        for i, fault in enumerate(self._script):
            if (fault.method is None or fault.method == method) and path.startswith(
                    fault.path_prefix):
                return self._script.pop(i)
        return None

    def roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def choose(self, method: str, path: str) -> ScriptedFault | None:
        scripted = self._take_scripted(method, path)
        if scripted is not None:
            return scripted
        cfg = self.config
        if not path.startswith("/rest") or any(path.startswith(p) for p in cfg.exempt_paths):
            return None
        if cfg.max_rps is not None:
            now = self._monotonic()
            while self._recent and self._recent[0] < now - 1.0:
                self._recent.popleft()
            self._recent.append(now)
            if len(self._recent) > cfg.max_rps:
                return ScriptedFault("429", scripted=False)
        if self.roll(cfg.rate_429):
            return ScriptedFault("429", scripted=False)
        if self.roll(cfg.rate_5xx):
            return ScriptedFault("5xx", status=self.rng.choice((500, 502, 503)),
                                 scripted=False)
        if self.roll(cfg.rate_drop):
            after = self.rng.random() < cfg.drop_after_processing
            return ScriptedFault("drop_after" if after else "drop_before", scripted=False)
        if self.roll(cfg.rate_slow):
            return ScriptedFault("slow", scripted=False)
        if self.roll(cfg.rate_session_expiry):
            return ScriptedFault("session_expiry", scripted=False)
        return None


async def _send_json(send: Send, status: int, body: Any,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = msgspec.json.encode(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


async def _drop(send: Send) -> None:
    """Promise a body, send a fragment, then fail: the server closes the connection and the
    client sees a transport error (``httpx.RemoteProtocolError``)."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", b"4096")]})
    await send({"type": "http.response.body", "body": b'{"id":', "more_body": True})
    raise DroppedConnection


class DroppedConnection(Exception):
    """Raised on purpose after a partial response so the server drops the connection."""


class FaultMiddleware:
    def __init__(self, app: Callable[..., Any], injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = self.injector.choose(scope["method"], scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
            return
        self.injector.stats.bump(fault.kind)
        cfg = self.injector.config
        if fault.kind == "429":
            retry = fault.retry_after_s if fault.retry_after_s is not None else cfg.retry_after_s
            value = str(int(retry)) if float(retry).is_integer() else f"{retry:g}"
            await _send_json(send, 429, {"detail": "Request was throttled. Expected available "
                                                   f"in {math.ceil(retry)} seconds."},
                             [(b"retry-after", value.encode())])
        elif fault.kind in ("5xx", "status"):
            detail = "Not found." if fault.status == 404 else "Service temporarily unavailable."
            await _send_json(send, fault.status, {"detail": detail})
        elif fault.kind == "drop_before":
            await _drop(send)
        elif fault.kind == "drop_after":
            async def swallow(message: dict[str, Any]) -> None:
                return None
            await self.app(scope, receive, swallow)
            await _drop(send)
        elif fault.kind == "slow":
            await anyio.sleep(cfg.slow_seconds)
            await self.app(scope, receive, send)
        elif fault.kind == "session_expiry":
            scope.setdefault("state", {})["expire_session"] = "force" if fault.scripted \
                else "if_old"
            await self.app(scope, receive, send)
