"""Where the dashboard reads from and what it may do: one frozen :class:`Settings` per script run.

The tracking locations come from the one config system (``core.config.load_config``; the
preset or YAML path in ``NIGHTSHIFT_CONFIG``, default ``tiny``, whose ``tracking`` section reads
``MLFLOW_TRACKING_URI``, ``NIGHTSHIFT_CATALOG_URL`` and ``NIGHTSHIFT_PREFECT_UI``). The settings
that only the dashboard has come from the environment:

=======================================  ===================================================
``NIGHTSHIFT_SERVE_URL``                 OpenAI-compatible base URL (default from ``serve.host``/``port``)
``NIGHTSHIFT_API_KEY``                   Bearer key for it (unset: the local no-auth demo)
``NIGHTSHIFT_REGISTERED_MODEL``          MLflow registered model (default ``serve.registered_model``)
``NIGHTSHIFT_DASHBOARD_READ_ONLY``       ``1``/``true``: no labels, promotions or rollbacks
``NIGHTSHIFT_DASHBOARD_USER``            who is acting, when no proxy tells us
``NIGHTSHIFT_DASHBOARD_IDENTITY_HEADER`` header set by a trusted auth proxy, e.g. ``X-Forwarded-User``
``PREFECT_API_URL``                      where promotions request their rollout (``deploy/promote``)
=======================================  ===================================================

Settings are read on every script run (cheap), so flipping read-only mode needs no restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.config import load_config

DEFAULT_SERVE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_REGISTERED_MODEL = "nightshift-gpt"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Everything a page needs to know about the outside world.

    Attributes:
        catalog_url: SQLAlchemy URL of the lineage catalog.
        mlflow_uri: MLflow tracking URI (an ``http(s)`` server, or a local store URI).
        experiment: The MLflow experiment holding every pipeline run.
        prefect_ui: Base URL of the Prefect UI, for links.
        serve_url: Base URL of the OpenAI-compatible API (ends in ``/v1``).
        api_key: Bearer key for the API, or None.
        registered_model: Name of the MLflow registered model.
        read_only: When true every state-changing action is hidden and refused.
        user: The acting identity configured for this dashboard, or None.
        identity_header: A request header that a trusted proxy sets to the user's name, or None.
        prefect_api: The Prefect API that runs rollouts, or None (then the dashboard only moves aliases).
    """

    catalog_url: str
    mlflow_uri: str
    experiment: str
    prefect_ui: str
    serve_url: str = DEFAULT_SERVE_URL
    api_key: str | None = None
    registered_model: str = DEFAULT_REGISTERED_MODEL
    read_only: bool = False
    user: str | None = None
    identity_header: str | None = None
    prefect_api: str | None = None

    @property
    def mlflow_ui(self) -> str | None:
        """Base URL of the MLflow UI, or None when tracking is a local store with no UI to link to."""
        if self.mlflow_uri.startswith(("http://", "https://")):
            return self.mlflow_uri.rstrip("/")
        return None

    def mlflow_run_link(self, experiment_id: str | None, run_id: str | None) -> str | None:
        """Link to a run in the MLflow UI (None without a UI or ids)."""
        if not (self.mlflow_ui and experiment_id and run_id):
            return None
        return f"{self.mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}"

    def mlflow_version_link(self, version: str) -> str | None:
        """Link to a registered model version in the MLflow UI."""
        if not self.mlflow_ui:
            return None
        return f"{self.mlflow_ui}/#/models/{self.registered_model}/versions/{version}"

    def prefect_flow_run_link(self, flow_run_id: str | None) -> str | None:
        """Link to a flow run in the Prefect UI (the same form ``flows.common`` uses)."""
        if not flow_run_id:
            return None
        return f"{self.prefect_ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _optional(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def load_settings() -> Settings:
    """Read the settings for this script run.

    Raises:
        core.config_base.ConfigError: When ``NIGHTSHIFT_CONFIG`` names a bad preset or file;
            its message lists every problem.
    """
    cfg = load_config(os.environ.get("NIGHTSHIFT_CONFIG", "tiny"))
    tracking = cfg.tracking
    default_url = f"http://{cfg.serve.host}:{cfg.serve.port}/v1"
    return Settings(
        catalog_url=tracking.catalog_url,
        mlflow_uri=tracking.mlflow_uri,
        experiment=tracking.experiment,
        prefect_ui=tracking.prefect_ui,
        serve_url=(_optional("NIGHTSHIFT_SERVE_URL") or default_url).rstrip("/"),
        api_key=_optional("NIGHTSHIFT_API_KEY"),
        registered_model=_optional("NIGHTSHIFT_REGISTERED_MODEL") or cfg.serve.registered_model,
        read_only=_flag("NIGHTSHIFT_DASHBOARD_READ_ONLY"),
        user=_optional("NIGHTSHIFT_DASHBOARD_USER"),
        identity_header=_optional("NIGHTSHIFT_DASHBOARD_IDENTITY_HEADER"),
        prefect_api=_optional("PREFECT_API_URL"),
    )
