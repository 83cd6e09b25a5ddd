"""Client-side flow control for DSP adapters: Retry-After parsing, a token-bucket rate limiter
and a circuit breaker. Vendor-neutral; the Beeswax adapter composes them."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal

import anyio
import structlog

from campaignd.errors import DSPCircuitOpen

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

MAX_RETRY_AFTER_S = 300.0
"""A Retry-After longer than this (or infinite) is capped: the caller's backoff takes over."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) → seconds to wait, or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return min(max(0.0, seconds), MAX_RETRY_AFTER_S) if seconds == seconds else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - (now or datetime.now(UTC))).total_seconds()), MAX_RETRY_AFTER_S)


# --- flow control -------------------------------------------------------------------------------


class TokenBucket:
    """Client-side rate limit (GCRA form of a token bucket): at most ``rate`` requests/s on
    average, bursts of ``burst``."""

    def __init__(self, rate: float | None, burst: int = 1,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Sleep = anyio.sleep) -> None:
        self.interval = 0.0 if not rate else 1.0 / rate
        self.tolerance = self.interval * max(0, burst - 1)
        self._tat = 0.0
        self._monotonic = monotonic
        self._sleep = sleep

    async def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        if self.interval == 0.0:
            return 0.0
        now = self._monotonic()
        tat = max(self._tat, now)
        wait = tat - now - self.tolerance
        self._tat = tat + self.interval
        if wait > 0:
            await self._sleep(wait)
            return wait
        return 0.0


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; after ``cooldown_s`` lets one probe
    through (half-open): success closes it, failure re-opens it."""

    def __init__(self, threshold: int, cooldown_s: float,
                 monotonic: Callable[[], float]) -> None:
        self.threshold = max(1, threshold)
        self.cooldown_s = cooldown_s
        self._monotonic = monotonic
        self.state: Literal["closed", "open", "half_open"] = "closed"
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False

    def before_call(self) -> bool:
        """Raise ``DSPCircuitOpen`` or admit the call; True when the call is the probe."""
        if self.state == "open":
            remaining = self.cooldown_s - (self._monotonic() - self._opened_at)
            if remaining > 0:
                raise DSPCircuitOpen(
                    f"DSP circuit open after {self.failures} consecutive failures; "
                    f"next probe in {remaining:.1f}s")
            self.state = "half_open"
        if self.state == "half_open":
            if self._probing:
                raise DSPCircuitOpen("DSP circuit half-open: a probe call is in flight")
            self._probing = True
            return True
        return False

    def release_probe(self) -> None:
        self._probing = False

    def success(self) -> None:
        self.failures = 0
        self.state = "closed"
        self._probing = False

    def failure(self) -> None:
        self.failures += 1
        self._probing = False
        if self.state == "half_open" or self.failures >= self.threshold:
            if self.state != "open":
                log.warning("dsp.circuit_open", failures=self.failures)
            self.state = "open"
            self._opened_at = self._monotonic()
