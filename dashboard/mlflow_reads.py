"""What the dashboard reads from MLflow, through ``MlflowClient``: registry versions, run metrics, curves.

MLflow's client retries a dead server for minutes; every page first asks :func:`mlflow_problem`
(a 2-second health check) and shows a message instead of hanging when the server is down.
Results are frozen records cached for a short while, like the catalog reads.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from dashboard import queries

# MLflow and httpx are imported inside the functions that use them, not here: each takes a
# second or more to import, and not every user of this module needs them.

if TYPE_CHECKING:
    from mlflow import MlflowClient

SHA_TAG = "nightshift.artifact_sha256"
# Keys shown first wherever a run's metrics are summarised; the rest follow alphabetically.
KEY_METRICS = (
    "val_loss",
    "val_ppl",
    "train_loss",
    "unigram_entropy",
    "win_rate",
    "reward_margin",
    "kl",
    "accuracy",
    "tokens_per_s",
    "mfu",
)
_RUN_BATCH = 100


@dataclass(frozen=True)
class VersionInfo:
    """One version of the registered model."""

    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    model_id: str | None
    source: str
    status: str
    created_at: datetime
    description: str | None
    tags: dict[str, str] = field(default_factory=dict)
    artifact_sha256: str | None = None


@dataclass(frozen=True)
class RunMetrics:
    """An MLflow run's final metrics and the ids needed to link to it."""

    run_id: str
    experiment_id: str
    status: str
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)


@st.cache_resource(show_spinner=False)
def client(uri: str) -> MlflowClient:
    """One ``MlflowClient`` per tracking URI for the whole server process."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


@st.cache_data(ttl=10, show_spinner=False)
def mlflow_problem(uri: str) -> str | None:
    """Why MLflow cannot be read, or None. Only an ``http(s)`` server can be down."""
    if not uri.startswith(("http://", "https://")):
        return None
    import httpx

    try:
        resp = httpx.get(f"{uri.rstrip('/')}/health", timeout=2.0)
    except httpx.HTTPError as exc:
        return f"MLflow at {uri} is not reachable ({type(exc).__name__}); start it with `nightshift up`"
    if resp.status_code != 200:
        return f"MLflow at {uri} answered HTTP {resp.status_code} to /health"
    return None


def _ms(value: int | None) -> datetime:
    return datetime.fromtimestamp((value or 0) / 1000, tz=UTC)


@st.cache_data(ttl=15, show_spinner=False)
def registry_versions(uri: str, name: str) -> list[VersionInfo]:
    """Every version of ``name``, newest first, with aliases and the model artifact's content hash.

    The hash comes from the version's tags or, failing that, from the logged model it was
    registered from (``training.mlflow_model.log_model`` tags it). Empty if the model is not registered.
    """
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        registered = c.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    # The name is our own setting, never user text; quotes are still escaped for MLflow's filter syntax.
    escaped = name.replace("'", "\\'")
    out = []
    for mv in c.search_model_versions(f"name = '{escaped}'", order_by=["version_number DESC"]):
        sha = (mv.tags or {}).get(SHA_TAG)
        # Search results over REST leave model_id empty; a version made from a logged model names it
        # in its source, models:/<model_id>.
        model_id = getattr(mv, "model_id", None) or _logged_model_id(mv.source or "")
        if sha is None and model_id:
            try:
                sha = c.get_logged_model(model_id).tags.get(SHA_TAG)
            except MlflowException:
                sha = None
        out.append(
            VersionInfo(
                version=str(mv.version),
                aliases=tuple(sorted(aliases.get(str(mv.version), []))),
                run_id=mv.run_id or None,
                model_id=model_id,
                source=mv.source or "",
                status=str(mv.status),
                created_at=_ms(mv.creation_timestamp),
                description=mv.description or None,
                tags=dict(mv.tags or {}),
                artifact_sha256=sha,
            )
        )
    out.sort(key=lambda v: int(v.version) if v.version.isdigit() else 0, reverse=True)
    return out


def _logged_model_id(source: str) -> str | None:
    rest = source.removeprefix("models:/")
    return rest if rest != source and rest.startswith("m-") and "/" not in rest else None


def with_catalog_models(versions: list[VersionInfo], catalog_url: str) -> list[VersionInfo]:
    """Fill in missing model hashes from the catalog: the model artifact the version's run wrote."""
    missing = tuple(v.run_id for v in versions if v.artifact_sha256 is None and v.run_id)
    if not missing:
        return versions
    written = queries.model_written_by(catalog_url, missing)
    return [
        replace(v, artifact_sha256=written[v.run_id].sha256)
        if v.artifact_sha256 is None and v.run_id in written
        else v
        for v in versions
    ]


@st.cache_data(ttl=15, show_spinner=False)
def run_metrics(uri: str, experiment: str, run_ids: tuple[str, ...]) -> dict[str, RunMetrics]:
    """Final metrics of many runs: batched searches in the experiment, single lookups for the rest."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    wanted = sorted(set(run_ids))
    found: dict[str, RunMetrics] = {}
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        for i in range(0, len(wanted), _RUN_BATCH):
            # Run ids come from our catalog (uuid hex), and are quoted for MLflow's filter syntax.
            ids = ", ".join(f"'{r}'" for r in wanted[i : i + _RUN_BATCH] if r.isalnum())
            if not ids:
                continue
            for run in c.search_runs([exp.experiment_id], f"attributes.run_id IN ({ids})", max_results=1000):
                found[run.info.run_id] = _run_metrics(run)
    for run_id in wanted:
        if run_id in found:
            continue
        try:
            found[run_id] = _run_metrics(c.get_run(run_id))
        except MlflowException:
            continue  # deleted in MLflow; the catalog still shows the run
    return found


def _run_metrics(run) -> RunMetrics:  # noqa: ANN001 - mlflow.entities.Run
    return RunMetrics(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=run.info.status,
        metrics=dict(run.data.metrics),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log-model")},
    )


@st.cache_data(ttl=30, show_spinner=False)
def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, in step order."""
    history = client(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


@st.cache_data(ttl=60, show_spinner=False)
def attachment(uri: str, model_id: str | None, file_name: str) -> str | None:
    """A Markdown file the registry attached to a version's logged model (``nightshift/<file>``).

    ``catalog.registry`` stores gate verdicts and model cards there; None when there is none.
    """

    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    if not model_id:
        return None
    try:
        location = client(uri).get_logged_model(model_id).artifact_location
        with tempfile.TemporaryDirectory(prefix="nightshift-dashboard-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/nightshift/{file_name}", dst_path=tmp, tracking_uri=uri
            )
            return Path(path).read_text(encoding="utf-8", errors="replace")
    except (MlflowException, OSError):
        return None


@st.cache_data(ttl=15, show_spinner=False)
def champion_history(uri: str, name: str) -> list[dict[str, str]]:
    """Every move of ``champion`` the registry recorded (``nightshift.champion_history``), newest first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client(uri).get_registered_model(name).tags
    except MlflowException:
        return []
    try:
        events = json.loads(tags.get("nightshift.champion_history", "[]"))
    except ValueError:
        return []
    return [{k: str(v) if v is not None else "" for k, v in e.items()} for e in reversed(events)]


def ordered_metrics(metrics: dict[str, float]) -> list[tuple[str, float]]:
    """Metrics with the key ones first, then the rest by name."""
    first = [(k, metrics[k]) for k in KEY_METRICS if k in metrics]
    rest = sorted((k, v) for k, v in metrics.items() if k not in KEY_METRICS)
    return first + rest
