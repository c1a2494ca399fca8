"""The MLflow conventions, as one small API every stage uses; each call also records to the catalog.

Conventions:
    * One MLflow experiment for the whole platform.
    * One parent MLflow run per pipeline run, tagged ``nightshift.prefect_flow_run_id`` and
      ``nightshift.catalog_run_id``; a catalog ``runs`` row with no parent mirrors it.
    * One nested child run per stage (tag ``mlflow.parentRunId``, which is how the MLflow UI
      nests runs), mirrored by a catalog run whose ``parent_id`` is the pipeline's.
    * ``use(ref)`` → catalog 'read' edge + an MLflow run input dataset (name = kind, digest =
      sha256 prefix, source = the artifact's URI). ``produce(ref)`` → catalog 'wrote' edge + tag
      ``nightshift.output.<kind>=<sha256>`` + the artifact's files under ``<kind>/``.

Only :class:`~mlflow.MlflowClient` calls with explicit run ids are used, never the fluent
active-run stack, so stages may run in worker threads (Prefect tasks) at the same time.

Example::

    tracker = Tracker(tracking_uri=uri, experiment="nightshift", catalog_url=catalog_url)
    with tracker.pipeline("nightly", config=cfg, prefect_flow_run_id=flow_run_id) as pipe:
        with pipe.stage("tokenize", config=cfg["tokenizer"]) as st:
            st.use(corpus_ref)
            ...
            st.log_metrics({"vocab_size": 512})
            st.produce(tokens_ref)
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from catalog import lineage
from catalog.artifacts import INDEX, ArtifactRef
from catalog.db import migrate, session_scope
from catalog.models import Run
from catalog.redact import redact, redact_text

# MLflow is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TAG_PREFIX = "nightshift."
TAG_FLOW_RUN = "nightshift.prefect_flow_run_id"
TAG_CATALOG_RUN = "nightshift.catalog_run_id"
TAG_PARENT = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID
TAG_NIGHT = "nightshift.night"
TAG_ARTIFACT = "nightshift.artifact_sha256"  # on a LoggedModel: the model artifact it holds
TAG_STAGE = "nightshift.stage"
# MLflow's server-side limits (mlflow/utils/validation.py); exceeding them fails the whole batch.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ERROR_CHARS = 20_000

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings to dotted keys and stringify values within MLflow's limits.

    Lists and other non-scalar values become JSON; values longer than MLflow's 6000-character
    limit are cut and end in ``...[truncated]`` so logging never fails on a big config. Secrets
    (URL passwords, keys named like ``password`` or ``token``) are masked (:mod:`catalog.redact`).

    Args:
        params: Possibly nested parameters.
        prefix: Key prefix (used in recursion).

    Returns:
        A flat ``{dotted.key: value}`` mapping.
    """
    flat: dict[str, str] = {}
    for key, value in redact(params).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        if value is None or isinstance(value, str | int | float | bool):
            text = str(value)
        else:
            try:
                text = json.dumps(value, default=str, sort_keys=True)
            except (TypeError, ValueError):
                text = str(value)
        flat[name[:MAX_KEY]] = _truncate(text, MAX_PARAM_VALUE)
    return flat


def _truncate(text: str, limit: int) -> str:
    marker = "...[truncated]"
    return text if len(text) <= limit else text[: limit - len(marker)] + marker


def _now_ms() -> int:
    return int(time.time() * 1000)


def _describe(exc: BaseException) -> str:
    return _truncate(redact_text("".join(traceback.format_exception(exc)).strip()), MAX_ERROR_CHARS)


class _TrackedRun:
    """What pipeline and stage runs share: ids, URL, params, metrics, tags, text artifacts."""

    def __init__(self, tracker: Tracker, mlflow_run_id: str, catalog_run_id: str) -> None:
        self.tracker = tracker
        self.mlflow_run_id = mlflow_run_id
        self.catalog_run_id = catalog_run_id

    @property
    def url(self) -> str | None:
        """Link to this run in the MLflow UI (None unless the tracking URI is http(s))."""
        return self.tracker.run_url(self.mlflow_run_id)

    def set_tag(self, key: str, value: Any) -> None:
        """Set an MLflow tag on this run (value stringified, secrets masked, truncated to MLflow's limit)."""
        value = _truncate(redact_text(str(value)), MAX_TAG_VALUE)
        self.tracker.client.set_tag(self.mlflow_run_id, key, value)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; nested dicts become dotted keys, long values are truncated.

        MLflow refuses to change a logged param's value, so log each key once per run.
        """
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.tracker.client.log_batch(self.mlflow_run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        *,
        model_id: str | None = None,
        dataset: ArtifactRef | None = None,
    ) -> None:
        """Log metrics (anything ``float()`` accepts, e.g. 0-d tensors) at ``step`` (default 0).

        Args:
            model_id: the MLflow LoggedModel they measure (:meth:`logged_model_id`): they show on
                that model's page and in the registry version made from it.
            dataset: the artifact they were measured on, as logged by :meth:`StageRun.use`.
        """
        from mlflow.entities import Metric

        ts = _now_ms()
        on = {"model_id": model_id}
        if dataset is not None:
            on |= {"dataset_name": dataset.kind, "dataset_digest": dataset.sha256[:16]}
        items = [Metric(k[:MAX_KEY], float(v), ts, step or 0, **on) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.tracker.client.log_batch(self.mlflow_run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])

    def logged_model_id(self, ref: ArtifactRef) -> str | None:
        """The newest MLflow LoggedModel of the experiment that holds artifact ``ref``, or None."""
        found = self.tracker.client.search_logged_models(
            experiment_ids=[self.tracker.experiment_id],
            filter_string=f"tags.`{TAG_ARTIFACT}` = '{ref.sha256}'",
            order_by=[{"field_name": "creation_time", "ascending": False}],
            max_results=1,
        )
        return found[0].model_id if found else None

    def log_text(self, text: str, artifact_file: str) -> None:
        """Save ``text`` as the run artifact ``artifact_file`` (e.g. ``"DATACARD.md"``)."""
        self.tracker.client.log_text(self.mlflow_run_id, text, artifact_file)

    def log_dict(self, d: Mapping[str, Any], artifact_file: str) -> None:
        """Save a dict (secrets masked) as a JSON or YAML run artifact, by ``artifact_file``'s extension."""
        self.tracker.client.log_dict(self.mlflow_run_id, redact(dict(d)), artifact_file)


class StageRun(_TrackedRun):
    """One stage of a pipeline: a nested MLflow run plus a catalog run."""

    def use(self, ref: ArtifactRef, *, context: str = "training") -> None:
        """Record that this stage read ``ref``.

        Catalog: the artifact row and a 'read' edge. MLflow: a run input dataset (name = kind,
        digest = first 16 hex digits of the sha256, source = the artifact's URI) with the input
        tag ``mlflow.data.context = context``.
        """
        from mlflow.entities import DatasetInput, InputTag

        with session_scope(self.tracker.catalog_url) as s:
            row = lineage.record_artifact(s, ref)
            lineage.add_edge(s, self.catalog_run_id, row.id, "read")
        dataset = _meta_dataset(ref)
        tags = [InputTag("mlflow.data.context", context), InputTag("nightshift.sha256", ref.sha256)]
        self.tracker.client.log_inputs(
            self.mlflow_run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)]
        )

    def produce(self, ref: ArtifactRef, *, log_files: bool = True, max_file_bytes: int = 8 * 2**20) -> None:
        """Record that this stage wrote ``ref``.

        Catalog: the artifact row and a 'wrote' edge. MLflow: tag ``nightshift.output.<kind>`` =
        sha256, ``<kind>/artifact.json`` and (with ``log_files``) every file of at most
        ``max_file_bytes`` under ``<kind>/``; bigger ones stay only in the artifact store and
        are still listed, with hashes and sizes, in ``artifact.json``.
        """
        with session_scope(self.tracker.catalog_url) as s:
            row = lineage.record_artifact(s, ref)
            lineage.add_edge(s, self.catalog_run_id, row.id, "wrote")
        client = self.tracker.client
        client.set_tag(self.mlflow_run_id, f"{TAG_PREFIX}output.{ref.kind}", ref.sha256)
        if (ref.path / INDEX).is_file():
            client.log_artifact(self.mlflow_run_id, str(ref.path / INDEX), ref.kind)
        if not log_files:
            return
        skipped = []
        for rel, info in sorted(ref.files.items()):
            if info["size"] > max_file_bytes:
                skipped.append(rel)
                continue
            parent = rel.rpartition("/")[0]
            client.log_artifact(self.mlflow_run_id, str(ref.path / rel), f"{ref.kind}/{parent}".rstrip("/"))
        if skipped:
            log.info(
                "not uploading %d %s file(s) over %d bytes to MLflow", len(skipped), ref.kind, max_file_bytes
            )


def _meta_dataset(ref: ArtifactRef) -> Any:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # MLflow 3.17 registers the local source twice and warns that the URI is ambiguous.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(ref.uri)
    return MetaDataset(source=source, name=ref.kind, digest=ref.sha256[:16])


class PipelineRun(_TrackedRun):
    """A pipeline run: the parent MLflow run plus a catalog run; opens nested stage runs."""

    def __init__(
        self,
        tracker: Tracker,
        mlflow_run_id: str,
        catalog_run_id: str,
        prefect_flow_run_id: str | None,
        night: str | None = None,
    ) -> None:
        super().__init__(tracker, mlflow_run_id, catalog_run_id)
        self.prefect_flow_run_id = prefect_flow_run_id
        self.night = night or night_label()

    @contextmanager
    def stage(self, name: str, *, config: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
        """Open a stage: a nested MLflow run and a catalog run under this pipeline.

        ``config`` is logged as params and stored on the catalog run. On an exception the
        stage is marked failed in both places and the exception re-raised.
        """
        tags = {TAG_PARENT: self.mlflow_run_id, TAG_STAGE: name, TAG_NIGHT: self.night}
        with self.tracker._tracked(
            name, config, tags, parent=self, prefect_flow_run_id=self.prefect_flow_run_id, night=self.night
        ) as (mlflow_id, catalog_id):
            yield StageRun(self.tracker, mlflow_id, catalog_id)

    def abandon(self, reason: str) -> None:
        """Mark this pipeline and every stage still running under it failed, with ``reason``.

        For a run that cannot unwind normally: the flow's watchdog ends a stuck night with it before
        the process exits (catalog 'failed' with the reason, MLflow KILLED). Best effort, like a failure.
        """
        query = select(Run.id, Run.mlflow_run_id).where(
            Run.parent_id == self.catalog_run_id, Run.status == "running"
        )
        with session_scope(self.tracker.catalog_url) as s:
            stages = [(row.id, row.mlflow_run_id) for row in s.execute(query)]
        for catalog_id, mlflow_id in [*stages, (self.catalog_run_id, self.mlflow_run_id)]:
            self.tracker.fail_run(mlflow_id, catalog_id, reason)

    def stage_url(self, name: str) -> str | None:
        """MLflow UI link of the latest stage ``name`` of this pipeline (None if none or not http).

        Looked up in the catalog, so it also finds stages opened in other threads or processes.
        """
        query = (
            select(Run.mlflow_run_id)
            .where(Run.parent_id == self.catalog_run_id, Run.stage == name)
            .order_by(Run.started_at.desc())
            .limit(1)
        )
        with session_scope(self.tracker.catalog_url) as s:
            mlflow_id = s.scalars(query).first()
        return self.tracker.run_url(mlflow_id) if mlflow_id else None


class Tracker:
    """Entry point: owns the MLflow client, the experiment and the catalog URL.

    Args:
        tracking_uri: MLflow tracking URI (``http://127.0.0.1:5000`` or a local store URI).
        experiment: The one experiment every run goes to; created if missing.
        catalog_url: Catalog database URL; migrated to head here, once.
    """

    def __init__(self, *, tracking_uri: str, experiment: str, catalog_url: str) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.catalog_url = catalog_url
        migrate(catalog_url)
        self.client: MlflowClient = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment_id(experiment)

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:
                self.client.set_experiment_tag(
                    found.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development"
                )
            return found.experiment_id
        try:
            # MLflow 3's UI opens an experiment on its GenAI (traces) view unless told it holds model
            # training runs; the tag makes the runs table with its nested stages the landing page.
            return self.client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
        except MlflowException:
            # Another process created it between our lookup and create.
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def run_url(self, mlflow_run_id: str) -> str | None:
        """The MLflow UI link for a run, or None when the tracking URI is not http(s)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{mlflow_run_id}"

    @contextmanager
    def pipeline(
        self,
        name: str,
        *,
        config: Mapping[str, Any],
        prefect_flow_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        night: str | None = None,
    ) -> Iterator[PipelineRun]:
        """Open a pipeline run: the parent MLflow run and a top-level catalog run.

        Args:
            name: Pipeline name (the catalog run's ``stage``; the MLflow run is ``"<name> <night>"``).
            config: The pipeline config; logged as params and as ``config.json``.
            prefect_flow_run_id: The driving Prefect flow run, tagged on the MLflow run.
            tags: Extra MLflow tags.
            night: Which night this is, e.g. ``2026-12-07 gentle-heron`` (:func:`night_label`): in
                every MLflow run name of the pipeline and tagged ``nightshift.night``, so the nights'
                runs tell apart in the MLflow UI. Default: today's UTC date.

        Yields:
            The :class:`PipelineRun`. On an exception both runs are marked failed (MLflow
            FAILED, catalog 'failed' with the traceback) and the exception is re-raised.
        """
        night = night or night_label()
        all_tags = {f"{TAG_PREFIX}pipeline": name, TAG_NIGHT: night, **(tags or {})}
        if prefect_flow_run_id:
            all_tags[TAG_FLOW_RUN] = prefect_flow_run_id
        with self._tracked(
            name, config, all_tags, parent=None, prefect_flow_run_id=prefect_flow_run_id, night=night
        ) as (mlflow_id, catalog_id):
            run = PipelineRun(self, mlflow_id, catalog_id, prefect_flow_run_id, night)
            if config:
                run.log_dict(_jsonable(config), "config.json")
            yield run

    @contextmanager
    def standalone_stage(self, name: str, *, config: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
        """A one-stage pipeline for CLI use: a parent run named ``name`` holding stage ``name``."""
        with (
            self.pipeline(name, config=config or {}, tags={f"{TAG_PREFIX}standalone": "true"}) as pipe,
            pipe.stage(name, config=config) as stage,
        ):
            yield stage

    def attach(self, catalog_run_id: str) -> PipelineRun:
        """Reopen a running pipeline from its catalog id, e.g. in another process or task.

        The returned object opens stages under it but does not end the pipeline run.
        """
        with session_scope(self.catalog_url) as s:
            row = s.get(Run, catalog_run_id)
            if row is None or row.mlflow_run_id is None:
                raise ValueError(f"no tracked pipeline run {catalog_run_id!r} in {self.catalog_url}")
            night = self.client.get_run(row.mlflow_run_id).data.tags.get(TAG_NIGHT)
            return PipelineRun(self, row.mlflow_run_id, row.id, row.prefect_flow_run_id, night)

    @contextmanager
    def _tracked(
        self,
        name: str,
        config: Mapping[str, Any] | None,
        tags: dict[str, str],
        *,
        parent: PipelineRun | None,
        prefect_flow_run_id: str | None,
        night: str,
    ) -> Iterator[tuple[str, str]]:
        mlflow_run = self.client.create_run(self.experiment_id, run_name=f"{name} {night}", tags=tags)
        mlflow_id = mlflow_run.info.run_id
        try:
            with session_scope(self.catalog_url) as s:
                catalog_id = lineage.start_run(
                    s,
                    name,
                    parent_id=parent.catalog_run_id if parent else None,
                    mlflow_run_id=mlflow_id,
                    prefect_flow_run_id=prefect_flow_run_id,
                    config=redact(_jsonable(config)) if config is not None else None,
                ).id
            self.client.set_tag(mlflow_id, TAG_CATALOG_RUN, catalog_id)
            if config:
                _TrackedRun(self, mlflow_id, catalog_id).log_params(config)
        except BaseException:
            self.client.set_terminated(mlflow_id, "FAILED")
            raise
        try:
            yield mlflow_id, catalog_id
        except BaseException as exc:
            self._fail(mlflow_id, catalog_id, exc)
            raise
        with session_scope(self.catalog_url) as s:
            lineage.finish_run(s, catalog_id, "completed")
        self.client.set_terminated(mlflow_id, "FINISHED")

    def _fail(self, mlflow_id: str, catalog_id: str, exc: BaseException) -> None:
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"
        self.fail_run(
            mlflow_id, catalog_id, _describe(exc), tag=f"{type(exc).__name__}: {exc}", status=status
        )

    def fail_run(
        self,
        mlflow_id: str | None,
        catalog_id: str,
        error: str,
        *,
        tag: str | None = None,
        status: str = "KILLED",
    ) -> None:
        """Mark one tracked run failed: catalog 'failed' with ``error``, MLflow ``status`` and a tag."""
        # Best effort: a broken tracking server must not hide the error that got us here.
        try:
            with session_scope(self.catalog_url) as s:
                lineage.finish_run(s, catalog_id, "failed", error=redact_text(error))
        except Exception:
            log.exception("could not mark catalog run %s failed", catalog_id)
        if mlflow_id is None:
            return
        try:
            self.client.set_tag(mlflow_id, f"{TAG_PREFIX}error", _truncate(redact_text(tag or error), 5000))
            self.client.set_terminated(mlflow_id, status)
        except Exception:
            log.exception("could not mark MLflow run %s %s", mlflow_id, status)


def night_label(when: datetime | None = None, flow_run_name: str | None = None) -> str:
    """``2026-12-07 gentle-heron``: the UTC date of ``when`` (default now) and the flow run's name."""
    day = (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d")
    return f"{day} {flow_run_name}" if flow_run_name else day


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of a config (paths, enums and the like become strings)."""
    return json.loads(json.dumps(value, default=str))
