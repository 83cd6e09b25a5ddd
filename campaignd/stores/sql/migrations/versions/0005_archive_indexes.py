"""Indexes for the audit archive: which actions an undo refers to, dead letters by age.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_actions_undo_of", "actions", ["undo_of"])
    op.create_index("ix_dead_letters_last_seen", "dead_letters", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_last_seen", table_name="dead_letters")
    op.drop_index("ix_actions_undo_of", table_name="actions")
