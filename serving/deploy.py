"""Roll a model out on the running Serve application and record it.

The deploy stage of ``pretrain/nightly``, ``nightshift serve`` and the rollouts of
``release/promotion.py`` (promote, roll back, redeploy) all come here. A rollout replaces the
application's replicas with a surge (new replicas healthy before the old ones stop, see
:func:`serving.options.deployment_options`), then checks that the endpoint answers with the new model
before it marks the catalog ``deployment`` row active and retires the previous one. A rollout that
fails leaves the previous deployment serving and active.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve
from ray.serve.schema import ApplicationStatus, DeploymentStatus
from sqlalchemy import select

from catalog.artifacts import ArtifactRef, open_artifact
from catalog.db import migrate, session_scope
from catalog.lineage import open_recorded, record_artifact
from catalog.models import Artifact, Deployment, utcnow
from core.ray_setup import init_ray
from core.serve_config import HEADER_TIMEOUT_ENV
from serving.app import build_app
from serving.loader import fetch
from serving.options import http_options

# httpx is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

if TYPE_CHECKING:
    from catalog.artifacts import ArtifactRef
    from core.config import Config

log = logging.getLogger(__name__)


# How long a rollout may show no sign of starting before the update is sent to Serve again.
ROLLOUT_STALL_S = 30.0


class DeployError(RuntimeError):
    """A rollout or rollback that could not be done; the message says why and what to do."""


@dataclass(frozen=True)
class DeployResult:
    deployment_id: int
    endpoint: str
    model_sha256: str
    model_source: str
    previous_id: int | None
    seconds: float


def endpoint_url(cfg: Config) -> str:
    return f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}"


def _start_serve(cfg: Config) -> None:
    # Read by the proxy when a local Ray starts here (a running Ray keeps what it started with).
    os.environ.setdefault(HEADER_TIMEOUT_ENV, f"{cfg.serve.header_timeout_s:g}")
    init_ray(cfg.ray)
    if cfg.ray.address == "local":
        log.warning(
            "ray.address is 'local': the served model lives only as long as this process; "
            "run `nightshift up` and deploy through the stack for a lasting endpoint"
        )
    serve.start(http_options=http_options(cfg.serve))


def _wait_for(url: str, sha256: str, timeout: float) -> None:
    """Wait until the endpoint's /health names the new model (old replicas may drain meanwhile)."""
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            last = f"{r.status_code} {r.headers.get('x-nightshift-model')}"
            if r.status_code == 200 and r.headers.get("x-nightshift-model") == f"model:{sha256}":
                return
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    raise DeployError(
        f"{url}/health did not report model {sha256[:16]} within {timeout:.0f} s (last: {last})"
    )


def _app_settled(name: str) -> bool:
    """Serve reports the application RUNNING with every deployment HEALTHY (no rollout under way)."""

    app = serve.status().applications.get(name)
    if app is None or app.status != ApplicationStatus.RUNNING:
        return False
    return all(d.status == DeploymentStatus.HEALTHY for d in app.deployments.values())


def _roll_out(
    build_app: Any, args: dict[str, Any], cfg: Config, url: str, sha256: str, timeout: float
) -> None:
    """``serve.run`` the new application and wait until the endpoint serves ``sha256``.

    Now and then Serve's controller answers ``serve.run`` of an update to a running application
    without starting a rollout (seen with Ray 2.60 in a process that deployed before): the app stays
    RUNNING and HEALTHY on the old replicas. When the endpoint still names the old model after
    ``ROLLOUT_STALL_S`` and Serve reports nothing under way, the update is sent again; a rollout
    that is under way (replicas starting) is never interrupted.
    """
    deadline = time.monotonic() + timeout
    name, prefix = cfg.serve.app_name, cfg.serve.route_prefix
    serve.run(build_app(args), name=name, route_prefix=prefix)
    while True:
        left = deadline - time.monotonic()
        try:
            _wait_for(url, sha256, min(ROLLOUT_STALL_S, max(left, 1.0)))
            return
        except DeployError:
            if time.monotonic() >= deadline:
                raise
            if _app_settled(name):
                log.warning("Serve did not start the rollout of %s; sending the update again", sha256[:16])
                serve.run(build_app(args), name=name, route_prefix=prefix)


def deploy_model(
    cfg: Config,
    model: str | ArtifactRef,
    *,
    created_by: str = "nightshift",
    alias: str | None = None,
    registry: dict[str, str] | None = None,
    timeout: float | None = None,
) -> DeployResult:
    """Serve ``model`` as the application ``cfg.serve.app_name`` and record the deployment.

    Args:
        cfg: the pipeline config (``serve``, ``ray`` and ``tracking`` sections).
        model: a ``model`` artifact (ref or directory) or a ``models:/`` registry URI.
        created_by: who asked (a flow run, a user), stored on the deployment row.
        alias: the registry alias this rollout follows (e.g. ``champion``), for the record.
        registry: ``{"name", "version"}`` of a local artifact that is also a registry version.
        timeout: how long the new replicas may take to answer (default ``serve.rollout_timeout_s``).

    Raises:
        DeployError: the new model did not come up; the previous deployment stays active.
    """

    source = str(model.path) if isinstance(model, ArtifactRef) else str(model)
    path, fetched = fetch(source, tracking_uri=cfg.tracking.mlflow_uri)
    registry = {**(registry or {}), **fetched}
    ref = open_artifact(path, kind="model")
    url = endpoint_url(cfg)
    catalog_url = cfg.tracking.catalog_url
    migrate(catalog_url)
    with session_scope(catalog_url) as s:
        art = record_artifact(s, ref)
        previous = s.scalars(
            select(Deployment).where(Deployment.endpoint == url, Deployment.status == "active")
        ).all()
        row = Deployment(
            model_artifact_id=art.id,
            registry_name=registry.get("name"),
            registry_version=registry.get("version"),
            alias=alias or registry.get("alias"),
            endpoint=url,
            status="deploying",
            created_by=created_by,
        )
        s.add(row)
        s.flush()
        dep_id, prev_ids = row.id, [p.id for p in previous]
    t0 = time.perf_counter()
    try:
        _start_serve(cfg)
        args: dict[str, Any] = {
            "model": source,
            "serve": cfg.serve.model_dump(mode="json"),
            "catalog_url": catalog_url,
            "tracking_uri": cfg.tracking.mlflow_uri,
            "deployment_id": dep_id,
            "registry_version": registry.get("version"),
        }
        _roll_out(build_app, args, cfg, url, ref.sha256, timeout or cfg.serve.rollout_timeout_s)
    except Exception as e:
        with session_scope(catalog_url) as s:
            s.get(Deployment, dep_id).status = "failed"
        if isinstance(e, DeployError):
            raise
        raise DeployError(f"rollout of {source} failed: {e!r}; the previous deployment keeps serving") from e
    with session_scope(catalog_url) as s:
        s.get(Deployment, dep_id).status = "active"
        for pid in prev_ids:
            old = s.get(Deployment, pid)
            old.status, old.retired_at = "retired", utcnow()
    seconds = time.perf_counter() - t0
    log.info("deployment %d: %s serves model %s (%.1f s)", dep_id, url, ref.sha256[:16], seconds)
    return DeployResult(dep_id, url, ref.sha256, source, prev_ids[0] if prev_ids else None, seconds)


def active_deployment(cfg: Config) -> dict[str, Any] | None:
    """The active deployment of this config's endpoint, as a plain dict (or None)."""
    migrate(cfg.tracking.catalog_url)
    with session_scope(cfg.tracking.catalog_url) as s:
        row = s.scalars(
            select(Deployment)
            .where(Deployment.endpoint == endpoint_url(cfg), Deployment.status == "active")
            .order_by(Deployment.id.desc())
        ).first()
        if row is None:
            return None
        art = s.get(Artifact, row.model_artifact_id)
        return {
            "id": row.id,
            "model_sha256": art.sha256,
            "model_uri": art.uri,
            "registry_version": row.registry_version,
            "alias": row.alias,
            "created_at": row.created_at.isoformat(),
            "created_by": row.created_by,
        }


def _source_of(art: Artifact, row: Deployment) -> str:
    local = Path(art.uri.removeprefix("file://"))
    if local.is_dir():
        return str(open_recorded(art).path)  # the hash the catalog recorded, not only the copy's own
    if row.registry_name and row.registry_version:
        return f"models:/{row.registry_name}/{row.registry_version}"
    raise DeployError(f"model {art.sha256[:16]} of deployment {row.id} is no longer at {art.uri}")


def deployment_source(cfg: Config, deployment_id: int) -> tuple[str, dict[str, str] | None]:
    """Where the model of a recorded deployment loads from, and its registry version when it had one.

    The source is the recorded ``model`` artifact (its checksums checked) or, when that copy is gone,
    the registry version it was served as.

    Raises:
        DeployError: the model is in neither place any more.
    """
    with session_scope(cfg.tracking.catalog_url) as s:
        row = s.get(Deployment, deployment_id)
        source = _source_of(s.get(Artifact, row.model_artifact_id), row)
        registry = None
        if row.registry_name and row.registry_version:
            registry = {"name": row.registry_name, "version": str(row.registry_version)}
        return source, registry


def earlier_deployment(cfg: Config, deployment_id: int) -> int | None:
    """The latest retired deployment before ``deployment_id`` at its endpoint that served another model."""
    with session_scope(cfg.tracking.catalog_url) as s:
        current = s.get(Deployment, deployment_id)
        return s.scalars(
            select(Deployment.id)
            .where(
                Deployment.endpoint == current.endpoint,
                Deployment.status == "retired",
                Deployment.id < current.id,
                Deployment.model_artifact_id != current.model_artifact_id,
            )
            .order_by(Deployment.id.desc())
        ).first()


def deploy_stage(
    cfg: Config, run: Any, model: ArtifactRef, *, created_by: str, version: str | None = None
) -> DeployResult:
    """The tracked deploy stage: roll ``model`` out and log the rollout to the stage's MLflow run.

    ``version`` is the model's registry version when it is served as the ``champion``.
    """
    run.use(model, context="serving")
    reg = {"name": cfg.serve.registered_model, "version": version} if version else None
    res = deploy_model(cfg, model, created_by=created_by, alias="champion" if version else None, registry=reg)
    run.log_params({"endpoint": res.endpoint, "deployment_id": res.deployment_id, "model": res.model_sha256})
    run.log_metrics({"rollout_seconds": res.seconds})
    return res
