"""Recording and querying lineage: which runs read and wrote which artifacts.

Writers take the caller's :class:`~sqlalchemy.orm.Session` and only ``flush`` (the caller owns
the transaction, normally through :func:`catalog.db.session_scope`). Queries return ORM rows
(:class:`~catalog.models.Run`, :class:`~catalog.models.Artifact`) or, for graph walks, small
frozen dataclasses holding those rows; every query uses bound parameters.

The graph is bipartite: ``run --wrote--> artifact`` and ``run --read--> artifact``. Walking
upstream from an artifact alternates "who wrote it" and "what did that run read" until the
artifacts nobody in the catalog wrote: the sources.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from catalog.artifacts import ArtifactRef, open_artifact
from catalog.models import (
    DIRECTIONS,
    RUN_STATUSES,
    Artifact,
    Completion,
    Deployment,
    LineageEdge,
    Run,
    utcnow,
)


@dataclass(frozen=True)
class Lineage:
    """Everything upstream of an artifact.

    Attributes:
        root: The artifact the walk started from.
        artifacts: Upstream artifacts (not ``root``), nearest first.
        runs: Runs that wrote ``root`` or any upstream artifact, nearest first.
        edges: The edges walked.
        sources: Upstream artifacts no recorded run wrote (raw data, imported checkpoints).
    """

    root: Artifact
    artifacts: list[Artifact] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    edges: list[LineageEdge] = field(default_factory=list)
    sources: list[Artifact] = field(default_factory=list)


@dataclass(frozen=True)
class CompletionTrace:
    """Which data and which runs made the model that answered one request.

    Attributes:
        completion: The served completion.
        model: The model artifact that produced it.
        deployment: The deployment it was served from, if recorded.
        lineage: The model's upstream (runs, artifacts, sources).
    """

    completion: Completion
    model: Artifact
    deployment: Deployment | None
    lineage: Lineage

    @property
    def sources(self) -> list[Artifact]:
        return self.lineage.sources

    @property
    def runs(self) -> list[Run]:
        return self.lineage.runs

    @property
    def artifacts(self) -> list[Artifact]:
        return self.lineage.artifacts


def record_artifact(session: Session, ref: ArtifactRef) -> Artifact:
    """Get or create the catalog row for a published artifact, keyed by (kind, sha256).

    The first recorded location (``uri``) is kept when the same content shows up again, unless gc
    had removed it: then the row is live again at the new location.

    Args:
        session: An open session; the row is flushed, not committed.
        ref: The published artifact.

    Returns:
        The :class:`Artifact` row (with ``id`` set).
    """
    existing = _find_artifact(session, ref.kind, ref.sha256)
    if existing is not None:
        if existing.deleted_at is not None:
            # gc removed the files; the same content was published again, here.
            existing.deleted_at = existing.deleted_by = None
            existing.uri = ref.uri
        return existing
    row = Artifact(
        kind=ref.kind, sha256=ref.sha256, uri=ref.uri, size_bytes=ref.size_bytes, meta=dict(ref.metadata)
    )
    try:
        # A savepoint, so losing an insert race to another writer does not undo the caller's work.
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        existing = _find_artifact(session, ref.kind, ref.sha256)
        if existing is None:
            raise
        return existing
    return row


def open_recorded(row: Artifact) -> ArtifactRef:
    """Open the artifact a catalog row names, checked against the hash the catalog recorded (not only
    against its own index). Raises ArtifactError naming the address when they differ."""
    return open_artifact(row.uri, kind=row.kind, expected_sha256=row.sha256)


def _find_artifact(session: Session, kind: str, sha256: str) -> Artifact | None:
    return session.scalars(select(Artifact).where(Artifact.kind == kind, Artifact.sha256 == sha256)).first()


def start_run(
    session: Session,
    stage: str,
    *,
    parent_id: str | None = None,
    mlflow_run_id: str | None = None,
    prefect_flow_run_id: str | None = None,
    config: dict[str, Any] | None = None,
) -> Run:
    """Create a run in status 'running'.

    Args:
        session: An open session; the row is flushed, not committed.
        stage: The stage name ('ingest', 'pretrain', …) or, for a pipeline run, the pipeline name.
        parent_id: The pipeline run this stage belongs to.
        mlflow_run_id: The matching MLflow run.
        prefect_flow_run_id: The Prefect flow run that drove it.
        config: The run's configuration (JSON-serialisable).

    Returns:
        The new :class:`Run` (``id`` is a uuid4 string).
    """
    run = Run(
        stage=stage,
        parent_id=parent_id,
        mlflow_run_id=mlflow_run_id,
        prefect_flow_run_id=prefect_flow_run_id,
        config=config,
        status="running",
        started_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def finish_run(session: Session, run_id: str, status: str, error: str | None = None) -> Run:
    """Mark a run 'completed' or 'failed' and stamp ``ended_at``.

    Args:
        session: An open session.
        run_id: The run to finish.
        status: 'completed' or 'failed'.
        error: What went wrong, for a failed run.

    Returns:
        The updated :class:`Run`.

    Raises:
        ValueError: On an unknown status or run id.
    """
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"finish_run status must be 'completed' or 'failed', got {status!r}")
    run = session.get(Run, run_id)
    if run is None:
        raise ValueError(f"no run {run_id!r} in the catalog")
    run.status = status
    run.error = error
    run.ended_at = utcnow()
    session.flush()
    return run


def add_edge(session: Session, run_id: str, artifact_id: int, direction: str) -> LineageEdge:
    """Record that a run read or wrote an artifact; recording the same edge twice is a no-op.

    Args:
        session: An open session.
        run_id: The run.
        artifact_id: The artifact's catalog id.
        direction: 'read' or 'wrote'.

    Returns:
        The (new or existing) :class:`LineageEdge`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"edge direction must be 'read' or 'wrote', got {direction!r}")
    query = select(LineageEdge).where(
        LineageEdge.run_id == run_id,
        LineageEdge.artifact_id == artifact_id,
        LineageEdge.direction == direction,
    )
    existing = session.scalars(query).first()
    if existing is not None:
        return existing
    edge = LineageEdge(run_id=run_id, artifact_id=artifact_id, direction=direction, created_at=utcnow())
    try:
        with session.begin_nested():
            session.add(edge)
    except IntegrityError:
        existing = session.scalars(query).first()
        if existing is None:
            raise
        return existing
    return edge


def producers_of(session: Session, artifact_id: int) -> list[Run]:
    """The runs that wrote an artifact, oldest first (content-addressing lets several runs write it)."""
    query = (
        select(Run)
        .join(LineageEdge, LineageEdge.run_id == Run.id)
        .where(LineageEdge.artifact_id == artifact_id, LineageEdge.direction == "wrote")
        .order_by(Run.started_at, Run.id)
    )
    return list(session.scalars(query).unique())


def inputs_of(session: Session, run_id: str) -> list[Artifact]:
    """The artifacts a run read, in the order it recorded them."""
    return _edge_artifacts(session, run_id, "read")


def outputs_of(session: Session, run_id: str) -> list[Artifact]:
    """The artifacts a run wrote, in the order it recorded them."""
    return _edge_artifacts(session, run_id, "wrote")


def _edge_artifacts(session: Session, run_id: str, direction: str) -> list[Artifact]:
    query = (
        select(Artifact)
        .join(LineageEdge, LineageEdge.artifact_id == Artifact.id)
        .where(LineageEdge.run_id == run_id, LineageEdge.direction == direction)
        .order_by(LineageEdge.id)
    )
    return list(session.scalars(query))


def upstream_graph(session: Session, artifact_id: int) -> Lineage:
    """Walk back from an artifact through the runs that wrote it and the artifacts they read.

    Breadth-first, two queries per hop; every node is visited once, so cycles (a run that reads
    what an earlier run of it wrote) terminate.

    Args:
        session: An open session.
        artifact_id: Where to start.

    Returns:
        A :class:`Lineage`.

    Raises:
        ValueError: If the artifact does not exist.
    """
    root = session.get(Artifact, artifact_id)
    if root is None:
        raise ValueError(f"no artifact with id {artifact_id} in the catalog")
    seen_artifacts: dict[int, Artifact] = {root.id: root}
    seen_runs: dict[str, Run] = {}
    edges: list[LineageEdge] = []
    produced: set[int] = set()
    frontier: set[int] = {root.id}
    while frontier:
        wrote = _edges(session, LineageEdge.artifact_id, frontier, "wrote")
        edges += wrote
        produced.update(e.artifact_id for e in wrote)
        new_runs = {e.run_id for e in wrote} - seen_runs.keys()
        for run in _by_ids(session, Run, new_runs):
            seen_runs[run.id] = run
        if not new_runs:
            break
        read = _edges(session, LineageEdge.run_id, new_runs, "read")
        edges += read
        frontier = {e.artifact_id for e in read} - seen_artifacts.keys()
        for artifact in _by_ids(session, Artifact, frontier):
            seen_artifacts[artifact.id] = artifact
    artifacts = [a for a in seen_artifacts.values() if a.id != root.id]
    return Lineage(
        root=root,
        artifacts=artifacts,
        runs=list(seen_runs.values()),
        edges=edges,
        sources=[a for a in artifacts if a.id not in produced],
    )


def upstream(session: Session, artifact_id: int) -> list[Artifact]:
    """Every artifact upstream of ``artifact_id`` (not itself), nearest first.

    See :func:`upstream_graph` for the runs, edges and sources as well.
    """
    return upstream_graph(session, artifact_id).artifacts


def trace_completion(session: Session, completion_id: str) -> CompletionTrace:
    """Which data and which runs made the model that answered request ``completion_id``.

    Args:
        session: An open session.
        completion_id: The served completion's id ('cmpl-…').

    Returns:
        A :class:`CompletionTrace`: the completion, its model artifact, deployment and the
        model's whole upstream.

    Raises:
        ValueError: If the completion does not exist.
    """
    completion = session.get(Completion, completion_id)
    if completion is None:
        raise ValueError(f"no completion {completion_id!r} in the catalog")
    return CompletionTrace(
        completion=completion,
        model=completion.model_artifact,
        deployment=completion.deployment,
        lineage=upstream_graph(session, completion.model_artifact_id),
    )


def _edges(session: Session, column: Any, ids: Iterable[Any], direction: str) -> list[LineageEdge]:
    query = (
        select(LineageEdge)
        .where(column.in_(sorted(ids)), LineageEdge.direction == direction)
        .order_by(LineageEdge.id)
    )
    return list(session.scalars(query))


def _by_ids(session: Session, model: type[Any], ids: set[Any]) -> list[Any]:
    if not ids:
        return []
    rows = session.scalars(select(model).where(model.id.in_(sorted(ids))))
    return sorted(rows, key=lambda r: (r.started_at, r.id) if isinstance(r, Run) else (r.id,))
