"""Plain, frozen copies of catalog rows that the dashboard caches and renders.

ORM objects are bound to a session and cannot be cached across script runs; these small
dataclasses can (``st.cache_data`` pickles them). They carry only what a page shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from catalog.models import Artifact, Completion, Deployment, Feedback, LineageEdge, Run


@dataclass(frozen=True)
class RunInfo:
    """A pipeline run (``parent_id`` None) or one of its stages."""

    id: str
    stage: str
    parent_id: str | None
    status: str
    started_at: datetime
    ended_at: datetime | None
    mlflow_run_id: str | None
    prefect_flow_run_id: str | None
    error: str | None
    config: dict[str, Any] | None = None

    @property
    def duration_s(self) -> float | None:
        """Wall time in seconds, or None while the run is still going."""
        return (self.ended_at - self.started_at).total_seconds() if self.ended_at else None

    @classmethod
    def of(cls, row: Run, *, with_config: bool = False) -> RunInfo:
        return cls(
            id=row.id,
            stage=row.stage,
            parent_id=row.parent_id,
            status=row.status,
            started_at=row.started_at,
            ended_at=row.ended_at,
            mlflow_run_id=row.mlflow_run_id,
            prefect_flow_run_id=row.prefect_flow_run_id,
            error=row.error,
            config=row.config if with_config else None,
        )


@dataclass(frozen=True)
class ArtifactInfo:
    """A content-addressed artifact."""

    id: int
    kind: str
    sha256: str
    uri: str
    size_bytes: int
    meta: dict[str, Any]
    created_at: datetime
    deleted_at: datetime | None = None  # gc removed the files; the row and its lineage stay
    deleted_by: str | None = None

    @property
    def short(self) -> str:
        return self.sha256[:12]

    @property
    def deleted_note(self) -> str | None:
        """ "deleted by gc on 2026-12-06 12:00 UTC" when gc removed the files, else None."""
        if self.deleted_at is None:
            return None
        return f"deleted by {self.deleted_by or 'gc'} on {self.deleted_at.strftime('%Y-%m-%d %H:%M')} UTC"

    @property
    def local_path(self) -> Path | None:
        """The artifact's directory when it is on this machine (a ``file://`` URI or a bare path)."""
        if self.deleted_at is not None:
            return None
        parsed = urlparse(self.uri)
        if parsed.scheme == "file":
            return Path(url2pathname(parsed.path))
        if parsed.scheme == "":
            return Path(self.uri)
        return None  # s3://, gs://: not read by the dashboard

    @classmethod
    def of(cls, row: Artifact) -> ArtifactInfo:
        return cls(
            id=row.id,
            kind=row.kind,
            sha256=row.sha256,
            uri=row.uri,
            size_bytes=row.size_bytes,
            meta=dict(row.meta or {}),
            created_at=row.created_at,
            deleted_at=row.deleted_at,
            deleted_by=row.deleted_by,
        )


@dataclass(frozen=True)
class EdgeInfo:
    """``run_id`` read or wrote ``artifact_id``."""

    run_id: str
    artifact_id: int
    direction: str

    @classmethod
    def of(cls, row: LineageEdge) -> EdgeInfo:
        return cls(run_id=row.run_id, artifact_id=row.artifact_id, direction=row.direction)


@dataclass(frozen=True)
class DeploymentInfo:
    """A model served at an endpoint."""

    id: int
    model_artifact_id: int
    registry_name: str | None
    registry_version: str | None
    alias: str | None
    endpoint: str | None
    status: str
    created_by: str | None
    created_at: datetime
    retired_at: datetime | None

    @classmethod
    def of(cls, row: Deployment) -> DeploymentInfo:
        return cls(
            id=row.id,
            model_artifact_id=row.model_artifact_id,
            registry_name=row.registry_name,
            registry_version=row.registry_version,
            alias=row.alias,
            endpoint=row.endpoint,
            status=row.status,
            created_by=row.created_by,
            created_at=row.created_at,
            retired_at=row.retired_at,
        )


@dataclass(frozen=True)
class CompletionInfo:
    """One served request and its answer."""

    id: str
    model_artifact_id: int
    deployment_id: int | None
    endpoint: str
    prompt: str
    response: str
    params: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    user: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Completion) -> CompletionInfo:
        return cls(
            id=row.id,
            model_artifact_id=row.model_artifact_id,
            deployment_id=row.deployment_id,
            endpoint=row.endpoint,
            prompt=row.prompt,
            response=row.response,
            params=dict(row.params) if row.params else None,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            user=row.user,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class FeedbackInfo:
    """A rating or a preference."""

    id: int
    kind: str
    completion_id: str
    other_completion_id: str | None
    rating: int | None
    preferred: str | None
    unsafe: bool
    note: str | None
    labeller: str | None
    source: str
    created_at: datetime

    @classmethod
    def of(cls, row: Feedback) -> FeedbackInfo:
        return cls(
            id=row.id,
            kind=row.kind,
            completion_id=row.completion_id,
            other_completion_id=row.other_completion_id,
            rating=row.rating,
            preferred=row.preferred,
            unsafe=row.unsafe,
            note=row.note,
            labeller=row.labeller,
            source=row.source,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class Usage:
    """How much a model artifact was used: served completions and the feedback on them."""

    completions: int = 0
    ratings: int = 0
    preferences: int = 0
    unsafe: int = 0

    @property
    def feedback(self) -> int:
        return self.ratings + self.preferences


@dataclass(frozen=True)
class LineageSlice:
    """The lineage of a set of pipeline runs: their stages, the artifacts they touched, what served them."""

    pipelines: list[RunInfo]
    stages: list[RunInfo]
    artifacts: dict[int, ArtifactInfo]
    edges: list[EdgeInfo]
    deployments: list[DeploymentInfo]
    usage: dict[int, Usage]


@dataclass(frozen=True)
class Collapsed:
    """Older pipeline runs summarised: runs per (stage, status), artifacts per kind, edges per kind pair."""

    pipelines: list[RunInfo]
    stage_status: dict[tuple[str, str], int]
    kind_counts: dict[str, int]
    # (stage, kind, direction) -> number of distinct artifacts
    flows: dict[tuple[str, str, str], int]


@dataclass(frozen=True)
class Downstream:
    """What one artifact shaped: the runs that read it (transitively), their outputs, serving."""

    root: ArtifactInfo
    runs: list[RunInfo]
    artifacts: list[ArtifactInfo]
    deployments: list[DeploymentInfo]
    usage: Usage
    truncated: bool = False


@dataclass(frozen=True)
class Trace:
    """A completion traced back to the data: the model, the runs and artifacts upstream, the sources."""

    completion: CompletionInfo
    model: ArtifactInfo
    deployment: DeploymentInfo | None
    runs: list[RunInfo]
    artifacts: list[ArtifactInfo]
    edges: list[EdgeInfo]
    sources: list[ArtifactInfo]
    feedback: list[FeedbackInfo] = field(default_factory=list)


@dataclass(frozen=True)
class LabelPair:
    """Two answers to the same prompt, shown as A and B to a labeller."""

    prompt: str
    a: CompletionInfo
    b: CompletionInfo
