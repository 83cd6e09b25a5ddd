"""Recommendations (what an agent proposes) and their evidence. Pure values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Recommendation:
    """One proposed change (or finding), with the evidence behind it.

    ``kind`` names the change (``flag_underperformer``, ``budget_change``, …); ``target`` the
    object (a cell id or campaign id); ``change`` the new values; ``score`` the agent's confidence
    in [0, 1]; ``impact`` the expected gain on the campaign objective (in objective units per
    day); ``risk`` the probability that applying it hurts, in [0, 1].
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

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "kind": self.kind, "campaign_id": self.campaign_id,
                "target": self.target, "created_at": self.created_at.isoformat(),
                "change": self.change, "evidence": self.evidence, "score": self.score,
                "impact": self.impact, "risk": self.risk, "priority": self.priority}
