"""Named API keys with roles; completions and feedback record the key that sent them, and one
labeller has one label per target.

Revision ID: 0004_key_identity
Revises: 0003_artifact_deleted
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_key_identity"
down_revision: str | None = "0003_artifact_deleted"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('client', 'labeller', 'admin')", name=op.f("ck_api_keys_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("digest", name=op.f("uq_api_keys_digest")),
        sa.UniqueConstraint("name", name=op.f("uq_api_keys_name")),
    )
    # Nullable columns: a plain ADD COLUMN on SQLite and Postgres alike.
    op.add_column("completions", sa.Column("key_id", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_completions_key_id"), "completions", ["key_id"])
    op.add_column("feedback", sa.Column("key_id", sa.String(length=32), nullable=True))
    op.add_column("feedback", sa.Column("user", sa.String(length=255), nullable=True))
    op.add_column("feedback", sa.Column("target", sa.String(length=136), nullable=True))
    # Rows from before this revision have no target (NULL never conflicts), so they all stay.
    with op.batch_alter_table("feedback") as batch:
        batch.create_unique_constraint(
            op.f("uq_feedback_source_labeller_target"), ["source", "labeller", "target"]
        )


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_constraint(op.f("uq_feedback_source_labeller_target"), type_="unique")
        batch.drop_column("target")
        batch.drop_column("user")
        batch.drop_column("key_id")
    op.drop_index(op.f("ix_completions_key_id"), table_name="completions")
    with op.batch_alter_table("completions") as batch:
        batch.drop_column("key_id")
    op.drop_table("api_keys")
