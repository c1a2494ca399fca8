"""What a deployment is given: its arguments, its replica settings and the Serve proxy's HTTP options.

Kept apart from :mod:`serving.app` so that writing a Serve config file or a KubeRay manifest needs
neither FastAPI nor the model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, Field, field_validator

from catalog.redact import redact_url
from core.serve_config import ServeConfig, proxy_env

if TYPE_CHECKING:
    from core.config import Config


class ServeArgs(BaseModel):
    """What one deployment serves and where it records; ``build_app`` validates these."""

    model: str = Field(description="A `model` artifact directory or a models:/ registry URI.")
    serve: ServeConfig = Field(default_factory=ServeConfig)
    catalog_url: str | None = Field(None, description="Catalog to record completions in (None: don't).")
    tracking_uri: str | None = Field(None, description="MLflow server, for models:/ URIs.")
    deployment_id: int | None = Field(None, description="The catalog deployment row this rollout is.")
    registry_version: str | None = Field(None, description="Registry version of a local artifact.")

    @field_validator("catalog_url")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        # Serve keeps an application's args in its config (the Ray dashboard and GCS show them).
        if v is not None and redact_url(v) != v:
            raise ValueError(
                f"catalog_url {redact_url(v)!r} holds a password, which Serve would keep in the app's "
                "config; give the URL without it and the password through PGPASSFILE (or PGPASSWORD) in the "
                "environment of the Ray nodes (`nightshift up` does)"
            )
        return v


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """Replica settings from config: autoscaling, per-replica resources, and a surge rollout.

    ``max_surge_percent=100`` makes Serve start the new replicas of a rollout and wait until they
    are healthy before it stops the old ones, so a model update has no downtime.
    """
    return {
        "autoscaling_config": {
            "min_replicas": cfg.min_replicas,
            "max_replicas": cfg.max_replicas,
            "initial_replicas": max(cfg.min_replicas, 1),
            "target_ongoing_requests": cfg.target_ongoing_requests,
        },
        "ray_actor_options": {"num_cpus": cfg.replica_cpus},
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_surge_percent": 100,
        "health_check_period_s": 2,
    }


def http_options(cfg: ServeConfig) -> dict[str, Any]:
    """``serve.start(http_options=...)`` (and a Serve config file's ``http_options``) from config.

    Serve runs one HTTP proxy per cluster and applies these only when it first starts: a proxy that
    is already up keeps the options it started with.

    ``request_timeout_s`` bounds a request end to end in the proxy, so a client that stops reading a
    stream cannot hold it for longer; ``keep_alive_timeout_s`` closes idle keep-alive connections
    (Ray's default of 90 s lets an idle client hold a connection, and its file descriptor, longer).
    """
    return {
        "host": cfg.host,
        "port": cfg.port,
        "request_timeout_s": cfg.request_timeout_s,
        "keep_alive_timeout_s": cfg.keep_alive_timeout_s,
    }


def serve_app_args(cfg: Config, model: str) -> dict[str, Any]:
    """The ``build_app`` args of a Serve config file (also the RayService's, see nightshift.manifests)."""
    return {
        "model": model,
        "serve": cfg.serve.model_dump(mode="json"),
        "catalog_url": cfg.tracking.catalog_url,
        "tracking_uri": cfg.tracking.mlflow_uri,
    }


def serve_config_yaml(args: dict[str, Any], cfg: Config) -> str:
    """A Serve config file for `serve deploy` (the same application `nightshift serve` runs)."""
    doc = {
        "proxy_location": "EveryNode",
        "http_options": http_options(cfg.serve),
        "applications": [
            {
                "name": cfg.serve.app_name,
                "route_prefix": cfg.serve.route_prefix,
                "import_path": "serving.app:build_app",
                "args": args,
            }
        ],
    }

    env = " ".join(f"{k}={v}" for k, v in proxy_env(cfg.serve.header_timeout_s).items())
    note = (
        "# The proxy's request-header timeout (serve.header_timeout_s) needs these in the environment\n"
        f"# of `ray start` on every node: {env}\n"
    )
    return note + yaml.safe_dump(doc, sort_keys=False)
