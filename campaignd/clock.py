"""Clocks: the only way campaignd code learns the time.

Two drivers run the same agents: the live daemon on ``SystemClock`` and the simulator on
``VirtualClock``. All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class VirtualClock:
    """A clock that moves only when told to (``advance``); ``sleep`` advances it instantly."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("VirtualClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._origin = self._now

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return (self._now - self._origin).total_seconds()

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        when = when.astimezone(UTC)
        if when < self._now:
            raise ValueError("a clock never goes backwards")
        self._now = when

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await anyio.sleep(0)


def utc(dt: datetime) -> datetime:
    """Return ``dt`` as aware UTC; naive datetimes are taken to be UTC."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


class ScaledClock:
    """Wall time sped up ``scale`` times from ``start`` (the sandbox's market time).

    In sandbox mode the daemon lives in the market's world: event timestamps, dayparts and
    budgets' days are market time, while agent cadences stay in real seconds so that a demo shows
    decisions within minutes.
    """

    def __init__(self, start: datetime, scale: float) -> None:
        if scale <= 0:
            raise ValueError("scale must be > 0")
        self.start = start.astimezone(UTC)
        self.scale = scale
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.scale)

    def monotonic(self) -> float:
        return (time.monotonic() - self._t0) * self.scale

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds / self.scale)
