"""The agent contract.

An agent is a small object with a ``name``, a default cadence and
``run(snapshots, now) -> list[Recommendation]``. It reads immutable snapshots of the registry,
makes pure decisions and does no I/O, so the live scheduler and the simulator can run the same
agent and it cannot tell which one does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from datetime import datetime

from campaignd.domain.actions import Recommendation
from campaignd.domain.cells import CellSnapshot


class Agent(ABC):
    name: str = "agent"

    @abstractmethod
    def run(self, snapshots: Mapping[str, CellSnapshot], now: datetime) -> list[Recommendation]:
        """Recommendations for every campaign in ``snapshots`` (campaign id → snapshot)."""
