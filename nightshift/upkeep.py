"""What keeps the local stack healthy for months: gc by the config's rules, log rotation, disk use.

``nightshift gc`` and the ``maintenance/gc`` deployment call :func:`run_gc`; ``nightshift up`` and gc
rotate the services' logs (:func:`rotate_logs`); ``nightshift status`` prints :func:`disk_usage`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from catalog.registry import Registry
from catalog.retention import GCResult, Places, Retention, collect, dir_bytes
from catalog.storage import is_url
from nightshift import backends
from nightshift.services import rotate_logs
from training.config import Config, nightshift_home

log = logging.getLogger(__name__)

# The stack's own stores under $NIGHTSHIFT_HOME (infra/local/*.sh), by what a person calls them.
HOME_PARTS = {
    "checkpoints": "runs",
    "serve cache": "serve-cache",
    "registry cache": "registry-cache",
    "remote artifact cache": "cache",
    "mlflow": "mlflow",
    "prefect": "prefect",
    "logs": "logs",
    "ray sessions": "ray",
    "postgres": "postgres",
}


def _mlflow_stores(cfg: Config, home: Path) -> tuple[str, str] | None:
    """MLflow's backend store and artifact destination when it is the stack's own server, else None."""
    s = cfg.stack
    if cfg.tracking.mlflow_uri.rstrip("/") != f"http://{s.host}:{s.mlflow_port}":
        return None
    stores = backends.resolve(cfg, home)
    backend = stores.mlflow_store_uri or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    artifacts = stores.mlflow_artifacts or str(home / "mlflow" / "artifacts")
    return backend, artifacts


def retention(cfg: Config) -> Retention:
    g = cfg.gc
    return Retention(keep_nights=g.keep_nights, keep_versions=g.keep_versions, min_age_s=g.min_age_s)


class GCError(RuntimeError):
    """gc cannot decide what to keep (the registry is not reachable)."""


def run_gc(cfg: Config, *, dry_run: bool = False, who: str = "gc") -> GCResult:
    """Apply the ``gc`` rules to this stack (see :mod:`catalog.retention`), then rotate the logs.

    Raises:
        GCError: MLflow's registry is not reachable, so which model artifacts its versions hold is
            unknown; nothing is removed.
    """
    home = nightshift_home()
    places = Places(
        artifact_root=cfg.tracking.artifact_root,
        checkpoints=home / "runs",
        caches=(home / "serve-cache", home / "registry-cache"),
        mlflow_stores=_mlflow_stores(cfg, home),
    )
    registry = Registry(cfg.tracking.mlflow_uri, name=cfg.serve.registered_model)
    try:
        registry.versions()
    except Exception as e:
        raise GCError(
            f"the registry at {cfg.tracking.mlflow_uri} is not reachable ({type(e).__name__}); gc needs it "
            "to know which models its versions hold. Start the stack (`nightshift up`) or point "
            "--tracking.mlflow_uri at it; nothing was removed"
        ) from e
    result = collect(
        cfg.tracking.catalog_url, places, retention(cfg), registry=registry, who=who, dry_run=dry_run
    )
    sessions = stale_ray_sessions(home, remove=not dry_run)
    result.paths += [{"path": str(p), "bytes": b} for p, b in sessions]
    if not dry_run:
        rotated = rotate_logs(home, cfg.gc.log_max_bytes, cfg.gc.log_backups)
        result.notes += [f"rotated {p.name}" for p in rotated]
    return result


def stale_ray_sessions(home: Path, *, remove: bool) -> list[tuple[Path, int]]:
    """Ray session directories of earlier ``up``s (logs, spilled objects); the running one is kept."""
    root = home / "ray"
    latest = root / "session_latest"
    if not latest.is_symlink():
        return []
    current = latest.resolve()
    out = []
    for session in sorted(root.glob("session_2*")):
        if session.resolve() == current or not session.is_dir():
            continue
        out.append((session, dir_bytes(session)))
        if remove:
            shutil.rmtree(session, ignore_errors=True)
    return out


def disk_usage(cfg: Config) -> dict[str, int]:
    """Bytes on disk by kind: artifacts by kind, checkpoints, caches, MLflow, Prefect, catalog, logs, Ray."""
    home = nightshift_home()
    out: dict[str, int] = {}
    root = cfg.tracking.artifact_root
    if not is_url(root) and Path(root).is_dir():
        for kind in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            out[f"artifacts/{kind.name}"] = dir_bytes(kind)
    for name, part in HOME_PARTS.items():
        path = home / part
        if path.exists() and not (name == "ray sessions" and path.is_symlink()):
            out[name] = dir_bytes(path)
    catalog = home / "catalog.db"
    if catalog.exists():
        out["catalog"] = sum(dir_bytes(p) for p in home.glob("catalog.db*"))
    return {k: v for k, v in out.items() if v}
