"""The hot store interface: per-cell aggregates, short-lived buckets, dedupe marks, status records.

Two implementations keep the same contract (``tests/contract/test_hot_store.py`` runs against
both): ``InMemoryHotStore`` (the reference, and the embedded default) and ``RedisHotStore``
(production, shared by processes). Everything here is short-lived or rebuildable; durable state
lives in the SQL store.

Units and conventions shared by every method:

- Times are integer epoch seconds (UTC) for buckets, float seconds for TTLs.
- Counts are ``int`` (money as micros); metrics are free-form names (``impressions``,
  ``spend_micros``, …) chosen by the caller.
- A TTL counts from the moment of the write that set it; writing to a bucket again restarts it
  (Redis ``EXPIRE`` semantics).
- Failures of the backend raise ``campaignd.errors.StorageError``; programming errors (a bad
  argument) raise ``ValueError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

BUCKET_TTL_S = 86_400
"""Default lifetime of per-minute buckets: 24 hours."""

SECOND_BUCKET_TTL_S = 1_800
"""Lifetime of per-second buckets: 30 minutes — they only serve windows of at most 15 minutes
that start less than 29 minutes before the query's "now" (a day of them for 432 busy cells
would be 37 million buckets)."""

SECOND_WINDOW_MAX_S = 900
"""Windows up to this many seconds (15 min) are summed from per-second buckets when they are
recent enough; the others from per-minute buckets (see ``HotStore.cell_window``)."""


def check_window(since_epoch_s: int, until_epoch_s: int) -> None:
    if until_epoch_s < since_epoch_s:
        raise ValueError(f"window ends ({until_epoch_s}) before it starts ({since_epoch_s})")


def check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be greater than 0 (got {ttl_s!r})")


def window_buckets(since_epoch_s: int, until_epoch_s: int,
                   now_epoch_s: int | None = None) -> tuple[str, range]:
    """Which buckets ``cell_window`` sums: ``("s", seconds)`` or ``("m", minutes)``.

    Seconds — every second in ``[since, until)`` — when the window is at most
    ``SECOND_WINDOW_MAX_S`` long and starts after ``now - SECOND_BUCKET_TTL_S + 60`` (``now``
    defaults to ``until``: the window is taken to be recent). Otherwise minutes: every minute
    that overlaps ``[since, until)``, i.e. the window widened outwards to whole minutes.
    """
    check_window(since_epoch_s, until_epoch_s)
    if until_epoch_s == since_epoch_s:
        return "s", range(0)
    now = until_epoch_s if now_epoch_s is None else now_epoch_s
    if until_epoch_s - since_epoch_s <= SECOND_WINDOW_MAX_S and \
            since_epoch_s > now - SECOND_BUCKET_TTL_S + 60:
        return "s", range(since_epoch_s, until_epoch_s)
    return "m", range(since_epoch_s // 60, (until_epoch_s - 1) // 60 + 1)


class HotStore(ABC):
    """Fast, expiring state shared by the pipeline, the registry and the status command."""

    remote: bool = False
    """True when calls are round trips to a server (worth overlapping with other work)."""

    @abstractmethod
    async def ping(self) -> None:
        """Return when the store answers; raise ``StorageError`` (naming where) when it does not."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent; the store is not used afterwards."""

    # --- JSON records (status, heartbeat) -------------------------------------------------

    @abstractmethod
    async def set_json(self, key: str, value: Mapping[str, Any],
                       ttl_s: float | None = None) -> None:
        """Store ``value`` (JSON-serializable) under ``key``, replacing any previous value.

        With ``ttl_s`` the record disappears ``ttl_s`` seconds after this write (a heartbeat that
        stops being refreshed expires); ``None`` keeps it until replaced. ``get_json`` returns a
        JSON round-trip of ``value`` (tuples come back as lists), never the same object.
        """

    @abstractmethod
    async def get_json(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key``, or ``None`` if it was never set or has expired."""

    # --- dedupe ---------------------------------------------------------------------------

    @abstractmethod
    async def mark_seen(self, namespace: str, ids: Sequence[str], ttl_s: float, *,
                        positions: Sequence[int] | None = None,
                        hours: Sequence[int] | None = None) -> list[bool]:
        """Mark ``ids`` as seen in ``namespace``; say which ones are new.

        Returns one bool per id, in order: ``True`` if the id had not been seen (within its TTL)
        before this call, ``False`` for a duplicate, including the second and later occurrences
        of an id within ``ids`` itself. Each id's check-and-set is atomic, so two concurrent
        callers never both get ``True`` for the same id. A mark lasts ``ttl_s`` seconds from the
        call that created it; seeing a duplicate does not extend it. Implementations may forget
        marks early to bound memory (see each one); they never report a new id as a duplicate.

        ``positions`` (one non-negative int per id: where the event sits in its stream, unique
        across streams) are remembered with the marks: an id already marked *at the same
        position* is reported as new again. That is the same delivery processed a second time —
        a restart re-reading from the last committed cursor the events whose counts were lost —
        not a duplicate delivery, which always sits at another position.

        ``hours`` (one int per id: the event's hour, epoch seconds // 3600) let a store keep an
        hour's marks together (Redis: one hash per namespace and hour, two commands a batch
        instead of one per id). Every delivery of one event must then carry the same hour — a
        redelivery is the same message — and a namespace must be used with hours always or
        never. Marks kept by hour last at least ``ttl_s`` (until ``ttl_s`` after the hour's last
        new mark). Stores without such a layout ignore ``hours``.
        """

    async def sync(self) -> None:
        """Make the marks made so far durable, before the counts they guard are committed
        (raise ``StorageError`` if they cannot be). Default: nothing -- a server's marks are as
        durable as its own persistence."""
        return None

    # --- per-cell counters and buckets ----------------------------------------------------

    @abstractmethod
    async def add_counts(self, campaign_id: str, counts: Mapping[str, Mapping[str, int]], *,
                         at_epoch_s: int, ttl_s: int = BUCKET_TTL_S) -> None:
        """Add ``counts`` (``{cell_id: {metric: n}}``) observed at second ``at_epoch_s``.

        Each count is added to (a) the cell's running totals, which never expire, (b) the
        cell's bucket for second ``at_epoch_s`` and (c) its bucket for minute
        ``at_epoch_s // 60``. Minute buckets expire ``ttl_s`` seconds after their latest write,
        second buckets ``min(ttl_s, SECOND_BUCKET_TTL_S)`` after it. Every metric passed
        appears in the totals afterwards, even when its count is 0.
        """

    @abstractmethod
    async def add_buckets(self, campaign_id: str,
                          by_second: Mapping[int, Mapping[str, Mapping[str, int]]], *,
                          ttl_s: int = BUCKET_TTL_S) -> None:
        """Add ``by_second`` (``{epoch_s: {cell_id: {metric: n}}}``) to the per-second and
        per-minute buckets only — not to the running totals (see ``set_totals``); TTLs as for
        ``add_counts``. One round trip for the whole batch."""

    @abstractmethod
    async def set_totals(self, campaign_id: str,
                         totals: Mapping[str, Mapping[str, int]]) -> None:
        """Replace the running totals of the cells in ``totals`` (``{cell_id: {metric: n}}``,
        absolute values; other cells and metrics not named keep theirs). Idempotent: the
        pipeline publishes the registry's exact totals this way after each commit."""

    @abstractmethod
    async def cell_totals(self, campaign_id: str, cell_id: str) -> dict[str, int]:
        """Running totals of one cell (``{}`` if nothing was added)."""

    @abstractmethod
    async def cell_window(self, campaign_id: str, cell_id: str, *, since_epoch_s: int,
                          until_epoch_s: int, now_epoch_s: int | None = None) -> dict[str, int]:
        """Sum of one cell's counts in the window ``[since_epoch_s, until_epoch_s)``.

        Recent windows of at most ``SECOND_WINDOW_MAX_S`` (15 min) are exact: the per-second
        buckets in the window. Other windows sum the per-minute buckets of every minute that
        overlaps the window (the window widened outwards to whole minutes); see
        ``window_buckets`` for the rule and ``now_epoch_s`` (default: the window's end).
        Expired buckets count as empty, so a window older than the TTL sums to ``{}``. Metrics
        whose sum is 0 but which appear in a bucket are kept. ``until < since`` raises
        ``ValueError``.
        """

    @abstractmethod
    async def campaign_totals(self, campaign_id: str) -> dict[str, dict[str, int]]:
        """Running totals of every cell of the campaign that has any: ``{cell_id: {metric: n}}``."""
