"""Event aggregates: running totals per cell, warm minute rows and cold day rows.

The cells' ``spend_micros`` column moves to ``cell_totals`` (with every other counter), where it
is committed together with the event cursor.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)
COUNTERS = ("impressions", "measurable", "viewable", "starts", "q1", "mid", "q3", "completes",
            "clicks", "conversions", "conversion_value_micros", "spend_micros")


def _counters() -> list[sa.Column[int]]:
    return [sa.Column(c, sa.BigInteger(), server_default="0", nullable=False) for c in COUNTERS]


def upgrade() -> None:
    op.create_table(
        "cell_totals",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("cell_id", sa.String(32), nullable=False),
        *_counters(),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name="fk_cell_totals_campaign_id_campaigns"),
        sa.PrimaryKeyConstraint("campaign_id", "cell_id", name="pk_cell_totals"),
    )
    op.create_table(
        "cell_minutes",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("cell_id", sa.String(32), nullable=False),
        sa.Column("minute", UTC_TIME, nullable=False),
        *_counters(),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name="fk_cell_minutes_campaign_id_campaigns"),
        sa.PrimaryKeyConstraint("campaign_id", "cell_id", "minute", name="pk_cell_minutes"),
    )
    op.create_index("ix_cell_minutes_minute", "cell_minutes", ["minute"])
    op.create_table(
        "cell_days",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("cell_id", sa.String(32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        *_counters(),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"],
                                name="fk_cell_days_campaign_id_campaigns"),
        sa.PrimaryKeyConstraint("campaign_id", "cell_id", "day", name="pk_cell_days"),
    )
    # Spend recorded so far becomes the first running totals.
    op.execute(
        "INSERT INTO cell_totals (campaign_id, cell_id, spend_micros, updated_at) "
        "SELECT campaign_id, cell_id, spend_micros, updated_at FROM cells WHERE spend_micros > 0")
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("spend_micros")


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("spend_micros", sa.BigInteger(), server_default="0",
                                   nullable=False))
    op.execute("UPDATE cells SET spend_micros = COALESCE((SELECT t.spend_micros FROM cell_totals t "
               "WHERE t.cell_id = cells.cell_id AND t.campaign_id = cells.campaign_id), 0)")
    op.drop_table("cell_days")
    op.drop_index("ix_cell_minutes_minute", table_name="cell_minutes")
    op.drop_table("cell_minutes")
    op.drop_table("cell_totals")
