"""Artifacts removed by gc keep their row (and so their lineage), marked with when and by what.

Revision ID: 0003_artifact_deleted
Revises: 0002_preference_feedback
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_artifact_deleted"
down_revision: str | None = "0002_preference_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable columns: a plain ADD COLUMN on SQLite and Postgres alike, no table rebuild.
    op.add_column("artifacts", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("artifacts", sa.Column("deleted_by", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("deleted_by")
        batch.drop_column("deleted_at")
