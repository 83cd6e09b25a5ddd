"""Problems that do not flap: a level alarm with hysteresis."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class LevelAlarm:
    """A problem raised when a level goes above ``raise_above`` and cleared only once it is
    back at or below ``clear_below``: a level hovering at the line does not flap the daemon's
    health (and page someone) on every status read."""

    raise_above: float
    clear_below: float
    on: bool = False

    def update(self, level: float) -> bool:
        self.on = level > (self.clear_below if self.on else self.raise_above)
        return self.on


__all__ = ["LevelAlarm"]
