"""Recommendations (what an agent proposes), actions (what the decision engine will do to one line
item) and the line-item state both are judged against. Pure values.

Money is integer micros. An ``Action`` is absolute, not relative: it names the line item's state
before and the state wanted after (e.g. ``{"daily_budget_micros": …, "lifetime_budget_micros":
…}``), so applying it twice is the same as applying it once, and undoing it is applying
``before`` again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

ACTION_KINDS: tuple[str, ...] = ("budget", "pause", "activate", "create")
"""What an action changes on a line item: its budgets (daily and lifetime together, as Beeswax
needs both) or its state; ``create`` records the DSP sync making a cell's line item (recorded
as applied: the sync itself is idempotent)."""

ACTION_STATUSES: tuple[str, ...] = (
    "proposed",    # approve mode: waiting for a person
    "pending",     # in the outbox: to be applied
    "applying",    # being applied (a crash here re-applies it: actions are idempotent)
    "applied",     # the DSP acknowledged it
    "failed",      # the DSP refused it (or it kept failing); see ``error``
    "refused",     # the executor would not apply it (caps, stale state); see ``error``
    "rejected",    # a person rejected it
    "superseded",  # a newer decision for the same line item replaced it before it was applied
    "shadow",      # shadow mode: decided and recorded, never applied
)
OPEN_STATUSES: tuple[str, ...] = ("proposed", "pending", "applying")

MAX_NOTE_CHARS = 1_000
"""The longest note a person may give with a verdict (it is stored in the action's ``error``
and returned with every listing): a longer one is refused, never cut."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One proposed change (or finding), with the evidence behind it.

    ``kind`` names the change: ``budget_rebalance`` (``change["daily_budgets_micros"]``: cell id
    → new daily budget, for the cells that change), ``pause_cell`` / ``activate_cell`` (the
    cell ``target``), or a finding that changes nothing (``flag_underperformer``). ``target`` is
    a cell id or the campaign id; ``score`` the agent's confidence in [0, 1]; ``impact`` the
    expected gain on the campaign's objective (objective units per day; 0 for a finding);
    ``risk`` the posterior probability that applying it hurts the objective, in [0, 1].
    """

    agent: str
    kind: str
    campaign_id: str
    target: str
    created_at: datetime
    change: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0
    impact: float = 0.0
    risk: float = 0.0

    @property
    def priority(self) -> float:
        """priority = score × impact × (1 − risk)."""
        return self.score * self.impact * (1.0 - self.risk)

    def __post_init__(self) -> None:
        for name in ("score", "risk"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"Recommendation.{name} must be in [0, 1], got {v!r}")
        if not (isinstance(self.impact, int | float) and math.isfinite(self.impact)):
            raise ValueError(f"Recommendation.impact must be a finite number, got "
                             f"{self.impact!r}")

    _id: str | None = field(init=False, repr=False, compare=False, default=None)

    @property
    def decision_id(self) -> str:
        """A stable id of this recommendation: its agent, kind, campaign, target and time (an
        agent makes one recommendation of a kind for a target per run). Computed when first
        read (most findings never need one)."""
        if self._id is None:
            object.__setattr__(self, "_id", stable_hash(
                self.agent, self.kind, self.campaign_id, self.target,
                self.created_at.isoformat())[:20])
        assert self._id is not None
        return self._id

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "kind": self.kind, "campaign_id": self.campaign_id,
                "target": self.target, "created_at": self.created_at.isoformat(),
                "change": {k: dict(v) if isinstance(v, Mapping) else v
                           for k, v in self.change.items()},
                "evidence": {k: dict(v) if isinstance(v, Mapping) else v
                             for k, v in self.evidence.items()}, "score": self.score,
                "impact": self.impact, "risk": self.risk, "priority": self.priority}


class CellValues(Mapping[str, int]):
    """cell id → integer (e.g. a rebalance's new daily budgets), backed by arrays: a campaign's
    cell ids, the positions that have a value and the values (``amounts``). Reads like a dict;
    the decision engine takes the arrays directly when the campaign's cells are the same, so a
    100,000-cell rebalance is never a 100,000-entry dict."""

    def __init__(self, cell_ids: tuple[str, ...], positions: np.ndarray,
                 values: np.ndarray) -> None:
        self.cell_ids = cell_ids
        self.positions = np.asarray(positions, dtype=np.int64)
        self.amounts = np.asarray(values, dtype=np.int64)
        self._index: dict[str, int] | None = None

    def __len__(self) -> int:
        return int(self.positions.size)

    def __iter__(self) -> Iterator[str]:
        ids = self.cell_ids
        return (ids[p] for p in self.positions.tolist())

    def __getitem__(self, cell_id: str) -> int:
        if self._index is None:
            self._index = {self.cell_ids[p]: j for j, p in enumerate(self.positions.tolist())}
        return int(self.amounts[self._index[cell_id]])


@dataclass(frozen=True, slots=True)
class LineItemState:
    """What campaignd knows of one cell's line item: the DSP's budgets as last acknowledged and
    the cell's spend as counted (lifetime, and today's in the DSP's budget day)."""

    cell_id: str
    line_item_id: int | None
    daily_budget_micros: int
    lifetime_budget_micros: int
    spent_micros: int = 0
    spent_today_micros: int = 0
    active: bool = True

    def budgets(self) -> dict[str, int]:
        return {"daily_budget_micros": self.daily_budget_micros,
                "lifetime_budget_micros": self.lifetime_budget_micros}


@dataclass(frozen=True, slots=True, eq=False)
class CampaignState:
    """One campaign as the decision engine sees it: its caps, how much flight is left, and its
    line items as arrays aligned with ``cell_ids`` (money in micros; a line item id of -1 means
    the cell has none yet)."""

    campaign_id: str
    daily_cap_micros: int
    lifetime_cap_micros: int
    days_left: float
    """Days of flight left, today included (e.g. 6.4 on the morning of day 2 of 7)."""
    cell_ids: tuple[str, ...]
    line_item_ids: np.ndarray
    daily: np.ndarray
    lifetime: np.ndarray
    spent: np.ndarray
    spent_today: np.ndarray
    active: np.ndarray
    held: np.ndarray | None = None
    """Per cell: a person changed the line item recently (an undo), so agents leave it alone."""
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {c: i for i, c in enumerate(self.cell_ids)})

    @classmethod
    def of(cls, campaign_id: str, daily_cap_micros: int, lifetime_cap_micros: int,
           days_left: float, line_items: Mapping[str, LineItemState]) -> CampaignState:
        """From one ``LineItemState`` per cell (in the mapping's order)."""
        items = list(line_items.values())

        def col(name: str, dtype: Any = np.int64) -> np.ndarray:
            return np.array([getattr(li, name) for li in items], dtype=dtype)

        return cls(campaign_id, daily_cap_micros, lifetime_cap_micros, days_left,
                   tuple(line_items),
                   np.array([-1 if li.line_item_id is None else li.line_item_id
                             for li in items], dtype=np.int64),
                   col("daily_budget_micros"), col("lifetime_budget_micros"),
                   col("spent_micros"), col("spent_today_micros"), col("active", bool))

    def line_item(self, i: int) -> LineItemState:
        li = int(self.line_item_ids[i])
        return LineItemState(self.cell_ids[i], None if li < 0 else li, int(self.daily[i]),
                             int(self.lifetime[i]), int(self.spent[i]),
                             int(self.spent_today[i]), bool(self.active[i]))


@dataclass(frozen=True, slots=True)
class Action:
    """One change to one line item, decided by the engine from one recommendation.

    ``key`` is the idempotency key: the same decision about the same line item always has the
    same key, so recording it twice records it once and applying it twice changes nothing more.
    """

    key: str
    decision_id: str
    campaign_id: str
    cell_id: str
    line_item_id: int | None
    kind: str
    before: dict[str, Any]
    after: dict[str, Any]
    agent: str
    reason: str
    evidence: dict[str, Any]
    created_at: datetime
    score: float = 0.0
    impact: float = 0.0
    risk: float = 0.0
    priority: float = 0.0

    @property
    def is_increase(self) -> bool:
        """True when the action raises a budget (it needs headroom under the campaign's caps)."""
        if self.kind != "budget":
            return False
        return any(int(self.after.get(k, 0)) > int(self.before.get(k, 0))
                   for k in ("daily_budget_micros", "lifetime_budget_micros"))

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "decision_id": self.decision_id,
                "campaign_id": self.campaign_id, "cell_id": self.cell_id,
                "line_item_id": self.line_item_id, "kind": self.kind, "before": self.before,
                "after": self.after, "agent": self.agent, "reason": self.reason,
                "evidence": self.evidence, "created_at": self.created_at.isoformat(),
                "score": self.score, "impact": self.impact, "risk": self.risk,
                "priority": self.priority}


def stable_hash(*parts: Any) -> str:
    """SHA-256 (hex) of the parts as canonical JSON: the same values give the same hash."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def action_key(decision_id: str, cell_id: str, kind: str, after: Mapping[str, Any]) -> str:
    """The idempotency key of an action: the decision, the cell, the kind and the state wanted
    (sorted ``key=value`` pairs; values are ints, bools or strings)."""
    text = "\x1f".join((decision_id, cell_id, kind,
                        ",".join(f"{k}={after[k]!r}" for k in sorted(after))))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


__all__ = ["ACTION_KINDS", "ACTION_STATUSES", "OPEN_STATUSES", "Action", "CampaignState",
           "CellValues",
           "LineItemState", "Recommendation", "action_key", "stable_hash"]
