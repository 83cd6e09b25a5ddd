"""The SQL store: schema (``models``), migrations (``migrate``) and the repository."""

from __future__ import annotations

from campaignd.stores.sql.migrate import current_revision, head_revision, upgrade
from campaignd.stores.sql.repository import (
    DEFAULT_URL,
    AgentRun,
    CampaignDetail,
    CampaignSummary,
    CellRow,
    SqlStore,
    StatusRecord,
    UpsertResult,
    spec_to_dict,
)

__all__ = [
    "DEFAULT_URL", "AgentRun", "CampaignDetail", "CampaignSummary", "CellRow", "SqlStore",
    "StatusRecord", "UpsertResult", "current_revision", "head_revision", "spec_to_dict",
    "upgrade",
]
