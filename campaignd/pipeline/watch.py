"""Watching what share of the feed is refused: a problem, and a hold on decisions, when most
events are dead-lettered.

Each refused event is kept (the dead letter), so nothing is lost; but when most of the feed is
refused — this host's clock is off by more than an hour, or the DSP changed its log format — the
counts the agents decide on miss most of the delivery, and a dead-letter count growing in a
corner of ``campaignd status`` is easy to miss. ``RefusalWatch`` compares the events refused for
what they are (malformed, out of the time window, bad money, a bug of campaignd's) with every
event read, over the last ``window_s`` seconds (real time) — widened, up to ``max_window_s``,
until it holds ``min_events`` — and raises a problem above ``raise_above`` of them, cleared below
``clear_below`` (``LevelAlarm``). With fewer events than that in the widest window the share is
of ``min_events``: a quiet feed raises only on that many refusals, keeps a raised alarm while
what it reads is refused, and clears it once what it reads is good (or it reads nothing).

An account-wide log push carries every campaign's events, and the classifier refuses a bad
event before it looks at its line item: the other campaigns' events are in both the refused
and the read counts, so the share is the account's. Not judged: events of line items campaignd
does not manage (``unknown_line_item``, counted as read), conversions naming neither a line
item nor an impression of campaignd's (every other campaign's conversion is one), and gaps in
the feed.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from campaignd.alarms import LevelAlarm
from campaignd.pipeline.ingest import PipelineStats

NOT_JUDGED: tuple[str, ...] = ("unknown_line_item", "unknown_line_item_counted",
                               "unattributed_conversion")
"""Refusals that say nothing about the feed's health (counted as events read)."""
NOT_READ: tuple[str, ...] = ("lost_before_read",)
"""Refusals that are not events read (a gap's count)."""

SNAPSHOT_EVERY_S = 5.0

HINTS: dict[str, str] = {
    "timestamp_in_future": "check this host's clock (`timedatectl`): events more than "
                           "pipeline.max_future_s ahead of it are refused",
    "timestamp_too_old": "check this host's clock (`timedatectl`), or whether the feed replays "
                         "old logs: events older than pipeline.dedupe_window_s are refused",
    "internal_error": "a campaignd bug: the events are kept whole; report it with the log's "
                      "traceback, and `campaignd deadletter retry --reason internal_error` "
                      "once fixed",
    "bad_money": "prices or values out of range: look at them with `campaignd deadletter list "
                 "--reason bad_money`",
}
FORMAT_HINT = ("the DSP's log format may have changed: look at one with `campaignd deadletter "
               "list --reason {reason}` and `campaignd deadletter show ID`")


class RefusalWatch:
    """See the module docstring. ``check`` is cheap: call it from every status read."""

    def __init__(self, stats: PipelineStats, *, window_s: float = 300.0,
                 max_window_s: float = 3600.0, min_events: int = 1000,
                 raise_above: float = 0.5, clear_below: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.window_s = window_s
        self.max_window_s = max_window_s
        self.min_events = min_events
        self.alarm = LevelAlarm(raise_above=raise_above, clear_below=clear_below)
        self.clock = clock
        self._snaps: deque[tuple[float, int, Counter[str]]] = deque()
        self.problem: str | None = None
        """The problem while the alarm is raised (as of the last ``check``), else None."""
        self.share = 0.0
        """The share judged at the last ``check`` (refused out of at least ``min_events``)."""

    def check(self) -> str | None:
        """Update the window and the alarm; return the problem, or None."""
        now = self.clock()
        st = self.stats
        refused = Counter({r: n for r, n in st.dead.items()
                           if r not in NOT_JUDGED and r not in NOT_READ})
        read = (sum(st.ingested.values()) + st.duplicates
                + sum(n for r, n in st.dead.items() if r not in NOT_READ))
        snaps = self._snaps
        if not snaps or now - snaps[-1][0] >= SNAPSHOT_EVERY_S:
            snaps.append((now, read, refused))
        # keep the newest snapshot at least the widest window old (or the first)
        while len(snaps) >= 2 and now - snaps[1][0] >= self.max_window_s:
            snaps.popleft()
        # the shortest window of at least window_s that holds min_events (else the widest)
        t0, read0, refused0 = snaps[0]
        for t, r, f in reversed(snaps):
            if now - t >= self.window_s and read - r >= self.min_events:
                t0, read0, refused0 = t, r, f
                break
        n = read - read0
        delta = refused - refused0
        n_refused = sum(delta.values())
        # Out of at least min_events: a quiet feed raises only with that many refused (half
        # of them), keeps a raised alarm while most of what it reads is refused, and clears
        # once what it reads is good -- or once it reads nothing.
        share = self.share = n_refused / max(n, self.min_events)
        if not self.alarm.update(share):
            self.problem = None
            return None
        n = max(n, 1)
        minutes = max(1, round((now - t0) / 60))
        top = delta.most_common(3)
        reasons = ", ".join(f"{r} {k / n:.0%}" for r, k in top)
        first = top[0][0] if top else "malformed_json"
        hint = HINTS.get(first) or FORMAT_HINT.format(reason=first)
        self.problem = (
            f"{n_refused / n:.0%} of the events of the last {minutes} min were refused "
            f"({reasons}; "
            f"{n_refused} of {n}): {hint}. They are kept as dead letters, but the counts miss "
            f"them, so decisions and changes to the DSP wait until fewer than "
            f"{self.alarm.clear_below:.0%} are refused")
        return self.problem


__all__ = ["NOT_JUDGED", "NOT_READ", "RefusalWatch"]
