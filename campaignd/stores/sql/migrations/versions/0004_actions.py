"""Actions: the decision engine's outbox and audit log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)
STATUSES = ("proposed", "pending", "applying", "applied", "failed", "refused", "rejected",
            "superseded", "shadow")
MODES = ("live", "shadow", "approve", "user")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("decision_id", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("cell_id", sa.String(32), nullable=False),
        sa.Column("line_item_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("before_json", sa.Text(), nullable=False),
        sa.Column("after_json", sa.Text(), nullable=False),
        sa.Column("evidence_json", sa.Text(), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("impact", sa.Float(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("undo_of", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.Column("decided_at", UTC_TIME, nullable=True),
        sa.Column("applied_at", UTC_TIME, nullable=True),
        sa.CheckConstraint(_in("status", STATUSES), name="ck_actions_status"),
        sa.CheckConstraint(_in("mode", MODES), name="ck_actions_mode"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name="fk_actions_campaign_id_campaigns"),
        sa.ForeignKeyConstraint(["undo_of"], ["actions.id"], name="fk_actions_undo_of_actions"),
        sa.PrimaryKeyConstraint("id", name="pk_actions"),
        sa.UniqueConstraint("key", name="uq_actions_key"),
    )
    op.create_index("ix_actions_decision_id", "actions", ["decision_id"])
    op.create_index("ix_actions_status_id", "actions", ["status", "id"])
    op.create_index("ix_actions_campaign_id_cell_id", "actions", ["campaign_id", "cell_id"])


def downgrade() -> None:
    op.drop_index("ix_actions_campaign_id_cell_id", table_name="actions")
    op.drop_index("ix_actions_status_id", table_name="actions")
    op.drop_index("ix_actions_decision_id", table_name="actions")
    op.drop_table("actions")
