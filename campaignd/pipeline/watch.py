"""Watching what share of the feed is refused: a problem, and a hold on decisions, when most
events are dead-lettered.

Each refused event is kept (the dead letter), so nothing is lost; but when most of the feed is
refused — this host's clock is off by more than an hour, or the DSP changed its log format — the
counts the agents decide on miss most of the delivery, and a dead-letter count growing in a
corner of ``campaignd status`` is easy to miss. ``RefusalWatch`` compares the events refused for
what they are (malformed, out of the time window, bad money, a bug of campaignd's) with those
counted over the last ``window_s`` seconds (real time), and raises a problem above
``raise_above`` of them, cleared below ``clear_below`` (``LevelAlarm``). The events of line items
campaignd does not manage (an account-wide log push carries every campaign's) and gaps in the
feed are not judged here: neither says anything about the events that were counted.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from campaignd.alarms import LevelAlarm
from campaignd.pipeline.ingest import PipelineStats

NOT_JUDGED: tuple[str, ...] = ("unknown_line_item", "unknown_line_item_counted",
                               "lost_before_read")
"""Refusals that say nothing about the events campaignd counts."""

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
    "unattributed_conversion": "conversions name neither a line item nor a recent impression: "
                               "is the conversion feed for this account?",
}
FORMAT_HINT = ("the DSP's log format may have changed: look at one with `campaignd deadletter "
               "list --reason {reason}` and `campaignd deadletter show ID`")


class RefusalWatch:
    """See the module docstring. ``check`` is cheap: call it from every status read."""

    def __init__(self, stats: PipelineStats, *, window_s: float = 300.0,
                 min_events: int = 1000, raise_above: float = 0.5, clear_below: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.window_s = window_s
        self.min_events = min_events
        self.alarm = LevelAlarm(raise_above=raise_above, clear_below=clear_below)
        self.clock = clock
        self._snaps: deque[tuple[float, int, Counter[str]]] = deque()
        self.problem: str | None = None
        """The problem while the alarm is raised (as of the last ``check``), else None."""

    def check(self) -> str | None:
        """Update the window and the alarm; return the problem, or None."""
        now = self.clock()
        counted = sum(self.stats.ingested.values()) + self.stats.duplicates
        refused = Counter({r: n for r, n in self.stats.dead.items() if r not in NOT_JUDGED})
        snaps = self._snaps
        if not snaps or now - snaps[-1][0] >= SNAPSHOT_EVERY_S:
            snaps.append((now, counted, refused))
        # the oldest snapshot kept is the newest at least a window old (or the first)
        while len(snaps) >= 2 and now - snaps[1][0] >= self.window_s:
            snaps.popleft()
        t0, counted0, refused0 = snaps[0]
        delta = refused - refused0
        n_refused = sum(delta.values())
        n = counted - counted0 + n_refused
        share = n_refused / n if n >= self.min_events else 0.0
        if not self.alarm.update(share):
            self.problem = None
            return None
        minutes = max(1, round((now - t0) / 60))
        top = delta.most_common(3)
        reasons = ", ".join(f"{r} {k / n:.0%}" for r, k in top)
        first = top[0][0]
        hint = HINTS.get(first) or FORMAT_HINT.format(reason=first)
        self.problem = (
            f"{share:.0%} of the events of the last {minutes} min were refused ({reasons}; "
            f"{n_refused} of {n}): {hint}. They are kept as dead letters, but the counts miss "
            f"them, so decisions and changes to the DSP wait until fewer than "
            f"{self.alarm.clear_below:.0%} are refused")
        return self.problem


__all__ = ["NOT_JUDGED", "RefusalWatch"]
