"""Retention: what gc keeps, and the removal of everything else.

Night after night the stack accumulates corpora, token shards, models, reward models, preference
snapshots, evaluation reports, pretraining checkpoints, cached copies of served and evaluated models,
and MLflow's logged models. :func:`collect` keeps what something still points at:

- every artifact that one of the newest ``keep_nights`` pipeline runs (and any still running) read
  or wrote, by the catalog's lineage edges;
- the model artifact of every registry version with an alias (``champion``, ``challenger``), of the
  newest ``keep_versions`` versions, and of the active and the previous deployment (the rollback
  target);
- anything younger than ``min_age_s``.

Everything else of ours is removed: an artifact's files under the artifact root (a directory is
renamed aside before it is deleted, an object store prefix loses its index first, so nothing half
removed is ever read as an artifact), checkpoints of pretraining runs whose tokens are no longer
kept, serve- and registry-cache entries of versions no longer kept, registry versions beyond the
rule and the logged models of nights no longer kept, and the MLflow runs (metrics, params, reports)
of nights past ``keep_history_nights`` (soft-deleted in MLflow, then purged by ``mlflow gc`` when
the caller names MLflow's stores). The catalog keeps every row and edge: a removed
artifact is marked ``deleted_at``/``deleted_by``, so lineage still reads and the dashboard can say
"deleted by gc on …". Artifacts written elsewhere (an explicit ``--out``) are the user's and never
touched.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from catalog import storage
from catalog.artifacts import INDEX
from catalog.db import migrate, session_scope
from catalog.models import Artifact, Deployment, LineageEdge, Run, utcnow

# MLflow is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)

# Pretraining writes this into its checkpoint directory: the tokens it trains on (the stage's input).
CHECKPOINT_INPUTS = "inputs.json"
TRASH = ".gc-trash"


@dataclass(frozen=True)
class Retention:
    """The rules (the ``gc`` config section)."""

    keep_nights: int = 7
    keep_versions: int = 5
    min_age_s: float = 3600.0
    keep_history_nights: int = 90  # MLflow runs (metrics, params, reports) of the newest N pipeline runs


@dataclass(frozen=True)
class Places:
    """Where the stack keeps what gc looks at."""

    artifact_root: str  # directory or object store URL
    checkpoints: Path | None = None  # $NIGHTSHIFT_HOME/runs
    caches: tuple[Path, ...] = ()  # serve-cache, registry-cache
    mlflow_stores: tuple[str, str] | None = None  # (backend store URI, artifacts destination) to purge


@dataclass
class GCResult:
    """What one gc did (or, with ``dry_run``, would do)."""

    dry_run: bool
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # kind, sha256, uri, bytes
    paths: list[dict[str, Any]] = field(default_factory=list)  # checkpoints and cache entries: path, bytes
    versions: list[str] = field(default_factory=list)  # registry versions deleted
    logged_models: list[str] = field(default_factory=list)  # MLflow logged models deleted
    mlflow_runs: list[str] = field(default_factory=list)  # MLflow runs of nights past the history rule
    kept_artifacts: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(a["bytes"] for a in self.artifacts) + sum(p["bytes"] for p in self.paths)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        by_kind: dict[str, int] = {}
        for a in self.artifacts:
            by_kind[a["kind"]] = by_kind.get(a["kind"], 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())) or "no artifacts"
        return (
            f"gc {verb} {kinds}, {len(self.paths)} checkpoint/cache dir(s), "
            f"{len(self.versions)} registry version(s), {len(self.logged_models)} logged model(s), "
            f"{len(self.mlflow_runs)} MLflow run(s): "
            f"{self.freed_bytes / 1e6:.1f} MB; kept {self.kept_artifacts} artifact(s)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "artifacts": self.artifacts,
            "paths": self.paths,
            "versions": self.versions,
            "logged_models": self.logged_models,
            "mlflow_runs": self.mlflow_runs,
            "kept_artifacts": self.kept_artifacts,
            "freed_bytes": self.freed_bytes,
            "notes": self.notes,
        }


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is gone)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:  # removed meanwhile
            pass
    return total


def _kept_runs(session: Any, keep_nights: int) -> set[str]:
    pipelines = session.execute(
        select(Run.id, Run.status).where(Run.parent_id.is_(None)).order_by(Run.started_at.desc())
    ).all()
    kept = {row.id for row in pipelines[:keep_nights]} | {
        row.id for row in pipelines if row.status == "running"
    }
    children = session.scalars(select(Run.id).where(Run.parent_id.in_(kept))).all() if kept else []
    return kept | set(children)


def _kept_deployments(session: Any) -> list[Deployment]:
    rows = session.scalars(select(Deployment).order_by(Deployment.created_at.desc())).all()
    active = [d for d in rows if d.status == "active"]
    # The newest two: what serves now and what a rollback serves again.
    return active + [d for d in rows[:2] if d not in active]


def _kept_versions(registry: Any, retention: Retention, deployed: set[str]) -> tuple[list[Any], list[Any]]:
    versions = sorted(registry.versions(), key=lambda v: int(v.version), reverse=True)
    keep = [
        v for i, v in enumerate(versions) if v.aliases or i < retention.keep_versions or v.version in deployed
    ]
    return keep, [v for v in versions if v not in keep]


def _under(uri: str, root: str) -> bool:
    if storage.is_url(root):
        return uri.rstrip("/").startswith(root.rstrip("/") + "/")
    path = Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(uri)
    try:
        path.resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def _remove_local(path: Path) -> None:
    """Rename ``path`` out of its content address first, then delete it."""
    if not path.exists():
        return
    trash = path.parent.parent / TRASH
    trash.mkdir(parents=True, exist_ok=True)
    aside = trash / f"{path.name}-{uuid.uuid4().hex[:8]}"
    path.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _remove_artifact(row: Artifact) -> int:
    """Delete one artifact's files; returns the bytes freed."""
    if storage.is_url(row.uri):
        store = storage.ObjectStore(row.uri)
        freed = sum(store.sizes().values())
        store.delete(first=INDEX)
        try:
            cached = storage.cache_dir(row.uri)
        except ValueError:
            cached = None
        if cached is not None and cached.exists():
            freed += dir_bytes(cached)
            _remove_local(cached)
        return freed
    path = Path(row.uri.removeprefix("file://"))
    freed = dir_bytes(path)
    _remove_local(path)
    return freed


def _old(path: Path, min_age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime >= min_age_s
    except OSError:
        return False


def _stale_checkpoints(root: Path, kept_tokens: set[str], min_age_s: float) -> list[Path]:
    out = []
    for workdir in sorted(root.glob("pretrain-*")):
        if not workdir.is_dir() or not _old(workdir, min_age_s):
            continue
        try:
            tokens = json.loads((workdir / CHECKPOINT_INPUTS).read_text()).get("tokens")
        except (OSError, ValueError):
            tokens = None  # written before inputs.json existed: old enough is enough
        if tokens not in kept_tokens:
            out.append(workdir)
    return out


def _stale_cache_entries(
    caches: Iterable[Path],
    registry_name: str | None,
    kept_versions: set[str],
    kept_shas: set[str],
    min_age: float,
) -> list[Path]:
    """Entries of the serve cache (``<name>-v<version>``) and registry cache (``<sha256[:16]>``)."""
    out = []
    prefixes = {sha[:16] for sha in kept_shas}
    for cache in caches:
        if not cache.is_dir():
            continue
        for entry in sorted(cache.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir() or not _old(entry, min_age):
                continue
            if registry_name and entry.name.startswith(f"{registry_name}-v"):
                if entry.name.removeprefix(f"{registry_name}-v") not in kept_versions:
                    out.append(entry)
            elif len(entry.name) == 16 and entry.name not in prefixes:
                out.append(entry)
    return out


def collect(
    catalog_url: str,
    places: Places,
    retention: Retention,
    *,
    registry: Any = None,
    who: str = "gc",
    dry_run: bool = False,
) -> GCResult:
    """Remove what the rules do not keep (see the module docstring); ``dry_run`` only reports it.

    Args:
        catalog_url: the catalog (lineage, deployments, artifact rows).
        places: the artifact root, checkpoint directory, caches and (optionally) MLflow's stores.
        retention: the rules.
        registry: a :class:`catalog.registry.Registry` (None: no registry versions are kept or pruned).
        who: recorded in ``artifacts.deleted_by``.
        dry_run: report without removing anything.

    Returns:
        What was removed (or would be).
    """
    migrate(catalog_url)
    result = GCResult(dry_run=dry_run)
    now = utcnow()
    young = now - timedelta(seconds=retention.min_age_s)
    with session_scope(catalog_url) as s:
        kept_runs = _kept_runs(s, retention.keep_nights)
        kept_ids = set(
            s.scalars(select(LineageEdge.artifact_id).where(LineageEdge.run_id.in_(kept_runs))).all()
            if kept_runs
            else []
        )
        deployments = _kept_deployments(s)
        kept_ids |= {d.model_artifact_id for d in deployments}
        deployed_versions = {d.registry_version for d in deployments if d.registry_version}
        kept_versions, old_versions = ([], [])
        if registry is not None:
            kept_versions, old_versions = _kept_versions(registry, retention, deployed_versions)
        kept_model_shas = {v.artifact_sha256 for v in kept_versions if v.artifact_sha256}
        if kept_model_shas:
            kept_ids |= set(
                s.scalars(
                    select(Artifact.id).where(Artifact.kind == "model", Artifact.sha256.in_(kept_model_shas))
                ).all()
            )
        rows = s.scalars(select(Artifact).where(Artifact.deleted_at.is_(None))).all()
        live = [r for r in rows if r.kind != "source"]
        doomed = [
            r
            for r in live
            if r.id not in kept_ids and r.created_at < young and _under(r.uri, places.artifact_root)
        ]
        result.kept_artifacts = len(live) - len(doomed)
        doomed_ids = {r.id for r in doomed}
        kept_tokens = {r.sha256 for r in live if r.kind == "tokens" and r.id not in doomed_ids}
        kept_shas = {r.sha256 for r in live if r.id not in doomed_ids}
        old_run_ids = set(s.scalars(select(Run.mlflow_run_id).where(Run.id.not_in(kept_runs))).all()) - {None}
        history = _kept_runs(s, retention.keep_history_nights)
        past_history = set(s.scalars(select(Run.mlflow_run_id).where(Run.id.not_in(history))).all()) - {None}
        for row in doomed:
            freed = row.size_bytes if dry_run else _remove_artifact(row)
            result.artifacts.append({"kind": row.kind, "sha256": row.sha256, "uri": row.uri, "bytes": freed})
            if not dry_run:
                row.deleted_at, row.deleted_by = now, who
                s.flush()
    stale = []
    if places.checkpoints is not None and places.checkpoints.is_dir():
        stale += _stale_checkpoints(places.checkpoints, kept_tokens, retention.min_age_s)
    registry_name = registry.name if registry is not None else None
    stale += _stale_cache_entries(
        places.caches,
        registry_name,
        {v.version for v in kept_versions},
        kept_shas | kept_model_shas,
        retention.min_age_s,
    )
    for path in stale:
        result.paths.append({"path": str(path), "bytes": dir_bytes(path)})
        if not dry_run:
            _remove_local(path)
    if registry is not None:
        _prune_mlflow(registry, kept_versions, old_versions, old_run_ids, past_history, places, result)
    log.info("%s", result.summary())
    return result


def _prune_mlflow(
    registry: Any,
    kept_versions: list[Any],
    old_versions: list[Any],
    old_run_ids: set[str],
    past_history: set[str],
    places: Places,
    result: GCResult,
) -> None:
    """Delete registry versions beyond the rule, the logged models no kept version or night uses, and
    the runs of nights past ``keep_history_nights`` (but a kept version's run); purge them."""
    client = registry.client
    kept_models = {v.model_id for v in kept_versions if v.model_id}
    kept_version_runs = {v.run_id for v in kept_versions if v.run_id}
    for v in old_versions:
        result.versions.append(v.version)
        if not result.dry_run:
            client.delete_model_version(registry.name, v.version)
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    old_version_models = {v.model_id for v in old_versions}
    for model in _logged_models(client, experiment_ids):
        if model.model_id in kept_models:
            continue
        if model.source_run_id in old_run_ids or model.model_id in old_version_models:
            result.logged_models.append(model.model_id)
    runs = sorted(past_history - kept_version_runs)
    for run_id in runs:
        try:
            if client.get_run(run_id).info.lifecycle_stage == "active":
                result.mlflow_runs.append(run_id)
        except Exception:  # deleted by hand, or never reached MLflow: nothing to do
            continue
    if result.dry_run:
        return
    for model_id in result.logged_models:
        client.delete_logged_model(model_id)
    for run_id in result.mlflow_runs:
        client.delete_run(run_id)
    if not result.logged_models and not result.mlflow_runs:
        return
    if places.mlflow_stores is None:
        result.notes.append(
            "logged models and runs were soft-deleted in MLflow; their files go when `mlflow gc` runs on "
            "its stores"
        )
        return
    backend, artifacts = places.mlflow_stores
    _mlflow_gc(backend, artifacts, registry.tracking_uri, result)


def _logged_models(client: Any, experiment_ids: list[str]) -> list[Any]:
    out: list[Any] = []
    token = None
    while experiment_ids:
        page = client.search_logged_models(experiment_ids=experiment_ids, max_results=100, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            break
    return out


def _mlflow_gc(backend: str, artifacts: str, tracking_uri: str, result: GCResult) -> None:
    """Purge the soft-deleted logged models and runs with MLflow's own ``mlflow gc`` (files and rows).

    Run in this process (``standalone_mode=False``), so a backend URI with a password never shows in
    a process list.
    """
    from mlflow.cli import gc as mlflow_gc

    args = [
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--tracking-uri",
        tracking_uri,
    ]
    if result.logged_models:
        args += ["--logged-model-ids", ",".join(result.logged_models)]
    if result.mlflow_runs:
        args += ["--run-ids", ",".join(result.mlflow_runs)]
    try:
        mlflow_gc.main(args=args, standalone_mode=False)
    except Exception as e:  # the soft deletion stands; say what is left for a later run
        result.notes.append(f"mlflow gc failed ({type(e).__name__}: {str(e)[:300]}); they stay soft-deleted")
        log.warning("mlflow gc failed: %s", e)


def deleted_note(row: Artifact) -> str | None:
    """ "deleted by gc on 2026-12-06 02:30 UTC" for a removed artifact, else None (for the dashboard)."""
    if row.deleted_at is None:
        return None
    when = row.deleted_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"deleted by {row.deleted_by or 'gc'} on {when}"
