"""Link table from a ``preferences`` artifact to the feedback rows it was built from.

Frozen copy of the ``PreferenceFeedback`` model at this revision.

Revision ID: 0002_preference_feedback
Revises: 0001_initial
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_preference_feedback"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "preference_feedback",
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("feedback_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_id"], ["artifacts.id"], name=op.f("fk_preference_feedback_artifact_id_artifacts")
        ),
        sa.ForeignKeyConstraint(
            ["feedback_id"], ["feedback.id"], name=op.f("fk_preference_feedback_feedback_id_feedback")
        ),
        sa.PrimaryKeyConstraint("artifact_id", "feedback_id", name=op.f("pk_preference_feedback")),
    )
    op.create_index(op.f("ix_preference_feedback_feedback_id"), "preference_feedback", ["feedback_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_preference_feedback_feedback_id"), table_name="preference_feedback")
    op.drop_table("preference_feedback")
