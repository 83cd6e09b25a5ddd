"""Initial schema: campaigns, cells, agent runs, DSP ids, checkpoints, daemon status.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Self-contained on purpose: a migration describes the schema as it was, not as models.py is now.
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("advertiser", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("objective", sa.String(32), nullable=False),
        sa.Column("lifetime_budget_micros", sa.BigInteger(), nullable=False),
        sa.Column("daily_budget_micros", sa.BigInteger(), nullable=False),
        sa.Column("flight_start", UTC_TIME, nullable=False),
        sa.Column("flight_end", UTC_TIME, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
        sa.CheckConstraint("status IN ('active', 'paused', 'archived')",
                           name="ck_campaigns_status"),
    )
    op.create_table(
        "cells",
        sa.Column("cell_id", sa.String(32), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("audience", sa.String(64), nullable=False),
        sa.Column("creative", sa.String(64), nullable=False),
        sa.Column("bid_strategy", sa.String(64), nullable=False),
        sa.Column("daypart", sa.String(64), nullable=False),
        sa.Column("platform", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("budget_micros", sa.BigInteger(), nullable=True),
        sa.Column("daily_budget_micros", sa.BigInteger(), nullable=True),
        sa.Column("spend_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("dsp_line_item_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("cell_id", name="pk_cells"),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name="fk_cells_campaign_id_campaigns"),
        sa.CheckConstraint("status IN ('planned', 'active', 'paused', 'killed', 'graduated')",
                           name="ck_cells_status"),
    )
    op.create_index("ix_cells_campaign_id", "cells", ["campaign_id"])
    op.create_table(
        "agent_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("recommendations", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_agent_runs"),
        sa.CheckConstraint("outcome IN ('ok', 'error', 'timeout', 'skipped')",
                           name="ck_agent_runs_outcome"),
    )
    op.create_index("ix_agent_runs_agent_started_at", "agent_runs", ["agent", "started_at"])
    op.create_table(
        "dsp_objects",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("dsp_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", name="pk_dsp_objects"),
    )
    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_checkpoints"),
    )
    op.create_table(
        "daemon_status",
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=False),
        sa.Column("heartbeat_at", UTC_TIME, nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("instance", name="pk_daemon_status"),
    )


def downgrade() -> None:
    op.drop_table("daemon_status")
    op.drop_table("checkpoints")
    op.drop_table("dsp_objects")
    op.drop_index("ix_agent_runs_agent_started_at", table_name="agent_runs")
    op.drop_table("agent_runs")
    op.drop_index("ix_cells_campaign_id", table_name="cells")
    op.drop_table("cells")
    op.drop_table("campaigns")
