"""What keeps the local stack healthy for months: gc by the config's rules, log rotation, disk use.

``nightshift gc`` and the ``maintenance/gc`` deployment call :func:`run_gc`; ``nightshift up`` and gc
rotate the services' logs (:func:`rotate_logs`); ``nightshift status`` prints :func:`disk_usage`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import make_url

from catalog.registry import Registry
from catalog.retention import GCResult, Places, Retention, collect, dir_bytes
from catalog.storage import is_url
from core.config import Config, nightshift_home
from nightshift.services import rotate_logs

log = logging.getLogger(__name__)

# The stack's own stores under $NIGHTSHIFT_HOME (infra/local/*.sh), by what a person calls them.
HOME_PARTS = {
    "checkpoints": "runs",
    "serve cache": "serve-cache",
    "registry cache": "registry-cache",
    "remote artifact cache": "cache",
    "mlflow artifacts": "mlflow/artifacts",
    "mlflow database": "mlflow/mlflow.db",
    "prefect database": "prefect",
    "logs": "logs",
    "ray sessions": "ray",
    "postgres": "postgres",
}


def _mlflow_stores(cfg: Config, home: Path) -> tuple[str, str] | None:
    """MLflow's backend store and artifact destination when MLflow is the local stack's, else None.

    The stack's MLflow keeps SQLite and files under ``$NIGHTSHIFT_HOME/mlflow`` (backend ``embedded``)
    or a database ``mlflow`` beside the catalog's and ``s3://<bucket>/mlflow`` (backend ``postgres``).
    """
    if urlsplit(cfg.tracking.mlflow_uri).hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    if cfg.stack.backend == "postgres":
        url = make_url(cfg.tracking.catalog_url)
        if url.database != "catalog":
            return None
        return url.set(database="mlflow").render_as_string(
            hide_password=False
        ), f"s3://{cfg.stack.s3_bucket}/mlflow"
    db = home / "mlflow" / "mlflow.db"
    return (f"sqlite:///{db}", str(home / "mlflow" / "artifacts")) if db.is_file() else None


def retention(cfg: Config) -> Retention:
    g = cfg.gc
    return Retention(
        keep_nights=g.keep_nights,
        keep_versions=g.keep_versions,
        min_age_s=g.min_age_s,
        keep_history_nights=g.keep_history_nights,
    )


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
    n_logs, log_bytes = finished_ray_logs(home, cfg.gc.min_age_s, remove=not dry_run)
    if n_logs:
        where = home / "ray" / "session_latest" / "logs"
        result.paths.append(
            {"path": f"{where} ({n_logs} logs of finished Ray processes and runs)", "bytes": log_bytes}
        )
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


# Log files Ray writes per worker or driver process, named for the process: worker-<id>-<job>-<pid>.out,
# python-core-worker-<id>_<pid>.log, python-core-driver-<id>_<pid>.log.
_PROCESS_LOG = re.compile(r"^(?:worker-.*-|python-core-(?:worker|driver)-.*_)(\d+)\.(?:out|err|log)$")
# Per-run log directories of Ray libraries (a Train controller per run, a Ray Data execution per dataset).
_RUN_LOG_DIRS = ("train", "ray-data")


def finished_ray_logs(home: Path, min_age_s: float, *, remove: bool) -> tuple[int, int]:
    """Logs of the running Ray session that belong to processes and runs that are over.

    Ray keeps one log file (or three) per worker and driver process and per Train or Data run for the
    whole session, and rotates each but never removes one: a stack that runs a night a day gains a few
    hundred files a night. A process log goes once its pid is gone; a run's log once it is older than
    ``min_age_s``. Returns (files, bytes).
    """
    logs = home / "ray" / "session_latest" / "logs"
    if not logs.is_dir():
        return 0, 0
    now = time.time()
    files = n_bytes = 0
    candidates = [
        p
        for p in logs.iterdir()
        if p.is_file() and (m := _PROCESS_LOG.match(p.name)) and not _alive(int(m.group(1)))
    ]
    for sub in _RUN_LOG_DIRS:
        if (logs / sub).is_dir():
            candidates += [p for p in (logs / sub).rglob("*") if p.is_file()]
    for path in candidates:
        try:
            stat = path.stat()
        except OSError:
            continue
        if now - stat.st_mtime < min_age_s:
            continue
        files += 1
        n_bytes += stat.st_size
        if remove:
            path.unlink(missing_ok=True)
    return files, n_bytes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the pid
        return True
    return True


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
