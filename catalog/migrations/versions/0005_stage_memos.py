"""Stage memos: which run already produced the result of a stage identity, so a re-run reuses it.

Revision ID: 0005_stage_memos
Revises: 0004_key_identity
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_stage_memos"
down_revision: str | None = "0004_key_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stage_memos",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("artifacts", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_stage_memos_run_id_runs")),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_stage_memos")),
    )
    op.create_index(op.f("ix_stage_memos_stage_created_at"), "stage_memos", ["stage", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_stage_memos_stage_created_at"), table_name="stage_memos")
    op.drop_table("stage_memos")
