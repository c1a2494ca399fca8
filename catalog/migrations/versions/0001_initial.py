"""Initial catalog schema: artifacts, runs, lineage edges, deployments, completions, feedback.

Frozen copy of catalog/models.py at this revision (no import of the models: later model
changes must not rewrite history).

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("kind", "sha256", name=op.f("uq_artifacts_kind_sha256")),
    )
    op.create_index(op.f("ix_artifacts_sha256"), "artifacts", ["sha256"])

    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("stage", sa.String(length=128), nullable=False),
        sa.Column("parent_id", sa.String(length=36), nullable=True),
        sa.Column("mlflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("prefect_flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name=op.f("ck_runs_status")),
        sa.ForeignKeyConstraint(["parent_id"], ["runs.id"], name=op.f("fk_runs_parent_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_mlflow_run_id"), "runs", ["mlflow_run_id"])
    op.create_index(op.f("ix_runs_parent_id"), "runs", ["parent_id"])
    op.create_index(op.f("ix_runs_prefect_flow_run_id"), "runs", ["prefect_flow_run_id"])
    op.create_index(op.f("ix_runs_stage_started_at"), "runs", ["stage", "started_at"])

    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_artifact_id", sa.Integer(), nullable=False),
        sa.Column("registry_name", sa.String(length=255), nullable=True),
        sa.Column("registry_version", sa.String(length=64), nullable=True),
        sa.Column("alias", sa.String(length=64), nullable=True),
        sa.Column("endpoint", sa.String(length=1024), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_artifact_id"], ["artifacts.id"], name=op.f("fk_deployments_model_artifact_id_artifacts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
    )
    op.create_index(op.f("ix_deployments_model_artifact_id"), "deployments", ["model_artifact_id"])
    op.create_index(op.f("ix_deployments_status_created_at"), "deployments", ["status", "created_at"])

    op.create_table(
        "lineage_edges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("artifact_id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("direction IN ('read', 'wrote')", name=op.f("ck_lineage_edges_direction")),
        sa.ForeignKeyConstraint(
            ["artifact_id"], ["artifacts.id"], name=op.f("fk_lineage_edges_artifact_id_artifacts")
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_lineage_edges_run_id_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lineage_edges")),
        sa.UniqueConstraint(
            "run_id", "artifact_id", "direction", name=op.f("uq_lineage_edges_run_id_artifact_id_direction")
        ),
    )
    op.create_index(
        op.f("ix_lineage_edges_artifact_id_direction"), "lineage_edges", ["artifact_id", "direction"]
    )

    op.create_table(
        "completions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.Integer(), nullable=True),
        sa.Column("model_artifact_id", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=16), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("endpoint IN ('completions', 'chat')", name=op.f("ck_completions_endpoint")),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name=op.f("fk_completions_deployment_id_deployments")
        ),
        sa.ForeignKeyConstraint(
            ["model_artifact_id"], ["artifacts.id"], name=op.f("fk_completions_model_artifact_id_artifacts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completions")),
    )
    op.create_index(op.f("ix_completions_created_at"), "completions", ["created_at"])
    op.create_index(op.f("ix_completions_deployment_id"), "completions", ["deployment_id"])
    op.create_index(op.f("ix_completions_model_artifact_id"), "completions", ["model_artifact_id"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("completion_id", sa.String(length=64), nullable=False),
        sa.Column("other_completion_id", sa.String(length=64), nullable=True),
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("preferred", sa.String(length=1), nullable=True),
        sa.Column("unsafe", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("labeller", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('rating', 'preference')", name=op.f("ck_feedback_kind")),
        sa.CheckConstraint(
            "preferred IS NULL OR preferred IN ('a', 'b')", name=op.f("ck_feedback_preferred")
        ),
        sa.CheckConstraint("source IN ('api', 'dashboard')", name=op.f("ck_feedback_source")),
        sa.ForeignKeyConstraint(
            ["completion_id"], ["completions.id"], name=op.f("fk_feedback_completion_id_completions")
        ),
        sa.ForeignKeyConstraint(
            ["other_completion_id"],
            ["completions.id"],
            name=op.f("fk_feedback_other_completion_id_completions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    op.create_index(op.f("ix_feedback_completion_id"), "feedback", ["completion_id"])
    op.create_index(op.f("ix_feedback_kind_created_at"), "feedback", ["kind", "created_at"])
    op.create_index(op.f("ix_feedback_other_completion_id"), "feedback", ["other_completion_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_feedback_other_completion_id"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_kind_created_at"), table_name="feedback")
    op.drop_index(op.f("ix_feedback_completion_id"), table_name="feedback")

    op.drop_table("feedback")
    op.drop_index(op.f("ix_completions_model_artifact_id"), table_name="completions")
    op.drop_index(op.f("ix_completions_deployment_id"), table_name="completions")
    op.drop_index(op.f("ix_completions_created_at"), table_name="completions")

    op.drop_table("completions")
    op.drop_index(op.f("ix_lineage_edges_artifact_id_direction"), table_name="lineage_edges")

    op.drop_table("lineage_edges")
    op.drop_index(op.f("ix_deployments_status_created_at"), table_name="deployments")
    op.drop_index(op.f("ix_deployments_model_artifact_id"), table_name="deployments")

    op.drop_table("deployments")
    op.drop_index(op.f("ix_runs_stage_started_at"), table_name="runs")
    op.drop_index(op.f("ix_runs_prefect_flow_run_id"), table_name="runs")
    op.drop_index(op.f("ix_runs_parent_id"), table_name="runs")
    op.drop_index(op.f("ix_runs_mlflow_run_id"), table_name="runs")

    op.drop_table("runs")
    op.drop_index(op.f("ix_artifacts_sha256"), table_name="artifacts")

    op.drop_table("artifacts")
