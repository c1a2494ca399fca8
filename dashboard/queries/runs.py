"""Catalog reads about runs, artifacts and lineage: pipelines, stages, slices, traces.

SQLAlchemy 2 ``select()`` with bound parameters only; filters become ``where()`` clauses and
``IN`` lists of bound values, so the same code runs on SQLite and Postgres.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from catalog.db import current_revision, head_revision, session_scope
from catalog.lineage import trace_completion
from catalog.models import Artifact, Deployment, Feedback, LineageEdge, Run
from dashboard.queries.cache import cached
from dashboard.queries.served import model_usage
from dashboard.records import (
    ArtifactInfo,
    Collapsed,
    CompletionInfo,
    DeploymentInfo,
    Downstream,
    EdgeInfo,
    FeedbackInfo,
    LineageSlice,
    RunInfo,
    Trace,
    Usage,
)

# A forward walk from a popular corpus can reach every later night; stop somewhere readable.
MAX_DOWNSTREAM_RUNS = 500


@cached
def catalog_problem(url: str) -> str | None:
    """Why the catalog cannot be read, in words, or None when it is ready."""
    try:
        revision = current_revision(url)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes a message on the page
        return f"cannot open the catalog at {url}: {type(exc).__name__}: {exc}"
    if revision is None:
        return (
            f"the catalog at {url} is empty (no tables): run a pipeline first, e.g. "
            "`nightshift pretrain --preset tiny` or `prefect deployment run pretrain/nightly`"
        )
    if revision != head_revision():
        return f"the catalog at {url} is at schema {revision}, this dashboard expects {head_revision()}"
    return None


def _day_bounds(since: date | None, until: date | None) -> tuple[datetime | None, datetime | None]:
    lo = datetime.combine(since, time.min, tzinfo=UTC) if since else None
    hi = datetime.combine(until, time.min, tzinfo=UTC) + timedelta(days=1) if until else None
    return lo, hi


@cached
def pipeline_runs(
    url: str,
    since: date | None = None,
    until: date | None = None,
    names: tuple[str, ...] = (),
    limit: int = 1000,
) -> list[RunInfo]:
    """Top-level (pipeline) runs, newest first, optionally within [since, until] and by name."""
    lo, hi = _day_bounds(since, until)
    query = select(Run).where(Run.parent_id.is_(None))
    if lo is not None:
        query = query.where(Run.started_at >= lo)
    if hi is not None:
        query = query.where(Run.started_at < hi)
    if names:
        query = query.where(Run.stage.in_(names))
    query = query.order_by(Run.started_at.desc(), Run.id).limit(limit)
    with session_scope(url) as s:
        return [RunInfo.of(r, with_config=False) for r in s.scalars(query)]


@cached
def pipeline_names(url: str) -> list[str]:
    """The distinct pipeline names ('pretrain', 'ingest', …)."""
    query = select(Run.stage).where(Run.parent_id.is_(None)).distinct().order_by(Run.stage)
    with session_scope(url) as s:
        return list(s.scalars(query))


@cached
def stage_names(url: str) -> list[str]:
    """The distinct stage names of every pipeline."""
    query = select(Run.stage).where(Run.parent_id.is_not(None)).distinct().order_by(Run.stage)
    with session_scope(url) as s:
        return list(s.scalars(query))


@cached
def stage_runs(url: str, pipeline_ids: tuple[str, ...]) -> list[RunInfo]:
    """The stages of the given pipeline runs, in start order."""
    if not pipeline_ids:
        return []
    query = select(Run).where(Run.parent_id.in_(pipeline_ids)).order_by(Run.started_at, Run.id)
    with session_scope(url) as s:
        return [RunInfo.of(r) for r in s.scalars(query)]


@cached
def run_info(url: str, run_id: str) -> RunInfo | None:
    """One run with its config."""
    with session_scope(url) as s:
        row = s.get(Run, run_id)
        return RunInfo.of(row, with_config=True) if row else None


@cached
def lineage_slice(url: str, pipeline_ids: tuple[str, ...]) -> LineageSlice:
    """The stages of some pipeline runs, every artifact they read or wrote, and how models were served."""
    with session_scope(url) as s:
        pipelines = [RunInfo.of(r) for r in s.scalars(select(Run).where(Run.id.in_(pipeline_ids)))]
        stages = [
            RunInfo.of(r)
            for r in s.scalars(
                select(Run).where(Run.parent_id.in_(pipeline_ids)).order_by(Run.started_at, Run.id)
            )
        ]
        run_ids = [r.id for r in stages] + list(pipeline_ids)
        edges = (
            [
                EdgeInfo.of(e)
                for e in s.scalars(
                    select(LineageEdge).where(LineageEdge.run_id.in_(run_ids)).order_by(LineageEdge.id)
                )
            ]
            if run_ids
            else []
        )
        artifact_ids = sorted({e.artifact_id for e in edges})
        artifacts = {
            a.id: ArtifactInfo.of(a)
            for a in (
                s.scalars(select(Artifact).where(Artifact.id.in_(artifact_ids))) if artifact_ids else []
            )
        }
        model_ids = [a.id for a in artifacts.values() if a.kind == "model"]
        deployments = (
            [
                DeploymentInfo.of(d)
                for d in s.scalars(
                    select(Deployment)
                    .where(Deployment.model_artifact_id.in_(model_ids))
                    .order_by(Deployment.id)
                )
            ]
            if model_ids
            else []
        )
        return LineageSlice(
            pipelines=sorted(pipelines, key=lambda r: r.started_at, reverse=True),
            stages=stages,
            artifacts=artifacts,
            edges=edges,
            deployments=deployments,
            usage=model_usage(s, model_ids),
        )


@cached
def collapsed(url: str, pipeline_ids: tuple[str, ...]) -> Collapsed:
    """Summarise many pipeline runs with grouped counts instead of one node per run."""
    if not pipeline_ids:
        return Collapsed(pipelines=[], stage_status={}, kind_counts={}, flows={})
    with session_scope(url) as s:
        pipelines = [RunInfo.of(r) for r in s.scalars(select(Run).where(Run.id.in_(pipeline_ids)))]
        stage_status = {
            (stage, status): n
            for stage, status, n in s.execute(
                select(Run.stage, Run.status, func.count(Run.id))
                .where(Run.parent_id.in_(pipeline_ids))
                .group_by(Run.stage, Run.status)
            )
        }
        rows = s.execute(
            select(Run.stage, Artifact.kind, LineageEdge.direction, func.count(func.distinct(Artifact.id)))
            .join(LineageEdge, LineageEdge.run_id == Run.id)
            .join(Artifact, Artifact.id == LineageEdge.artifact_id)
            .where(Run.parent_id.in_(pipeline_ids))
            .group_by(Run.stage, Artifact.kind, LineageEdge.direction)
        ).all()
        kinds = s.execute(
            select(Artifact.kind, func.count(func.distinct(Artifact.id)))
            .join(LineageEdge, LineageEdge.artifact_id == Artifact.id)
            .join(Run, Run.id == LineageEdge.run_id)
            .where(Run.parent_id.in_(pipeline_ids))
            .group_by(Artifact.kind)
        ).all()
    return Collapsed(
        pipelines=sorted(pipelines, key=lambda r: r.started_at, reverse=True),
        stage_status=stage_status,
        kind_counts=dict(kinds),
        flows={(stage, kind, direction): n for stage, kind, direction, n in rows},
    )


@cached
def artifact_runs(url: str, artifact_id: int) -> tuple[list[RunInfo], list[RunInfo]]:
    """(runs that wrote the artifact, runs that read it), oldest first."""
    with session_scope(url) as s:
        out: dict[str, list[RunInfo]] = {"wrote": [], "read": []}
        query = (
            select(Run, LineageEdge.direction)
            .join(LineageEdge, LineageEdge.run_id == Run.id)
            .where(LineageEdge.artifact_id == artifact_id)
            .order_by(Run.started_at, Run.id)
        )
        for run, direction in s.execute(query):
            out[direction].append(RunInfo.of(run))
        return out["wrote"], out["read"]


@cached
def downstream(url: str, artifact_id: int) -> Downstream | None:
    """Walk forward: the runs that read the artifact, what they wrote, and so on; then serving."""
    with session_scope(url) as s:
        root = s.get(Artifact, artifact_id)
        if root is None:
            return None
        runs: dict[str, RunInfo] = {}
        artifacts: dict[int, ArtifactInfo] = {}
        frontier = {artifact_id}
        truncated = False
        while frontier:
            readers = s.scalars(
                select(Run)
                .join(LineageEdge, LineageEdge.run_id == Run.id)
                .where(LineageEdge.artifact_id.in_(sorted(frontier)), LineageEdge.direction == "read")
            ).unique()
            new = [r for r in readers if r.id not in runs]
            if len(runs) + len(new) > MAX_DOWNSTREAM_RUNS:
                new, truncated = new[: MAX_DOWNSTREAM_RUNS - len(runs)], True
            for r in new:
                runs[r.id] = RunInfo.of(r)
            if not new:
                break
            written = s.scalars(
                select(Artifact)
                .join(LineageEdge, LineageEdge.artifact_id == Artifact.id)
                .where(LineageEdge.run_id.in_([r.id for r in new]), LineageEdge.direction == "wrote")
            ).unique()
            frontier = set()
            for a in written:
                if a.id not in artifacts and a.id != artifact_id:
                    artifacts[a.id] = ArtifactInfo.of(a)
                    frontier.add(a.id)
            if truncated:
                break
        model_ids = [a.id for a in artifacts.values() if a.kind == "model"]
        if root.kind == "model":
            model_ids.append(root.id)
        deployments = (
            [
                DeploymentInfo.of(d)
                for d in s.scalars(select(Deployment).where(Deployment.model_artifact_id.in_(model_ids)))
            ]
            if model_ids
            else []
        )
        usage = model_usage(s, model_ids)
    total = Usage(
        completions=sum(u.completions for u in usage.values()),
        ratings=sum(u.ratings for u in usage.values()),
        preferences=sum(u.preferences for u in usage.values()),
        unsafe=sum(u.unsafe for u in usage.values()),
    )
    return Downstream(
        root=ArtifactInfo.of(root),
        runs=sorted(runs.values(), key=lambda r: r.started_at),
        artifacts=sorted(artifacts.values(), key=lambda a: a.created_at),
        deployments=deployments,
        usage=total,
        truncated=truncated,
    )


@cached
def trace(url: str, completion_id: str) -> Trace | None:
    """A served completion traced back to its source data (None for an unknown id)."""
    with session_scope(url) as s:
        try:
            t = trace_completion(s, completion_id)
        except ValueError:
            return None
        feedback = s.scalars(
            select(Feedback)
            .where(
                (Feedback.completion_id == completion_id) | (Feedback.other_completion_id == completion_id)
            )
            .order_by(Feedback.created_at)
        )
        return Trace(
            completion=CompletionInfo.of(t.completion),
            model=ArtifactInfo.of(t.model),
            deployment=DeploymentInfo.of(t.deployment) if t.deployment else None,
            runs=[RunInfo.of(r) for r in t.runs],
            artifacts=[ArtifactInfo.of(a) for a in t.artifacts],
            edges=[EdgeInfo.of(e) for e in t.lineage.edges],
            sources=[ArtifactInfo.of(a) for a in t.sources],
            feedback=[FeedbackInfo.of(f) for f in feedback],
        )


@cached
def artifacts_by_sha(url: str, kind: str, shas: tuple[str, ...]) -> dict[str, ArtifactInfo]:
    """Artifacts of one kind by content hash (links registry versions to catalog models)."""
    if not shas:
        return {}
    query = select(Artifact).where(Artifact.kind == kind, Artifact.sha256.in_(shas))
    with session_scope(url) as s:
        return {a.sha256: ArtifactInfo.of(a) for a in s.scalars(query)}


@cached
def artifacts_by_id(url: str, ids: tuple[int, ...]) -> dict[int, ArtifactInfo]:
    """Artifacts by catalog id (unknown ids are absent)."""
    if not ids:
        return {}
    with session_scope(url) as s:
        return {a.id: ArtifactInfo.of(a) for a in s.scalars(select(Artifact).where(Artifact.id.in_(ids)))}


@cached
def model_written_by(url: str, mlflow_run_ids: tuple[str, ...]) -> dict[str, ArtifactInfo]:
    """The model artifact each MLflow run wrote, for registry versions that carry only a run id."""
    if not mlflow_run_ids:
        return {}
    query = (
        select(Run.mlflow_run_id, Artifact)
        .join(LineageEdge, LineageEdge.run_id == Run.id)
        .join(Artifact, Artifact.id == LineageEdge.artifact_id)
        .where(
            Run.mlflow_run_id.in_(mlflow_run_ids), LineageEdge.direction == "wrote", Artifact.kind == "model"
        )
    )
    with session_scope(url) as s:
        return {rid: ArtifactInfo.of(a) for rid, a in s.execute(query)}


@cached
def reports_for_model(url: str, model_artifact_id: int) -> list[tuple[RunInfo, ArtifactInfo]]:
    """Evaluation outputs (``eval_report`` artifacts) of the runs that read this model."""
    reader = aliased(LineageEdge)
    writer = aliased(LineageEdge)
    query = (
        select(Run, Artifact)
        .join(reader, reader.run_id == Run.id)
        .join(writer, writer.run_id == Run.id)
        .join(Artifact, Artifact.id == writer.artifact_id)
        .where(
            reader.artifact_id == model_artifact_id,
            reader.direction == "read",
            writer.direction == "wrote",
            Artifact.kind.in_(("eval_report", "gate_report", "eval")),
        )
        .order_by(Run.started_at.desc())
    )
    with session_scope(url) as s:
        return [(RunInfo.of(r), ArtifactInfo.of(a)) for r, a in s.execute(query)]
