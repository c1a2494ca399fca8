"""What every flow does first and last: load the config, open the tracker, publish a summary."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context
from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS
from prefect.states import Failed, State

from catalog.redact import install_log_redaction, secrets_in
from catalog.tracking import PipelineRun, Tracker, night_label
from core.config import Config, load_config
from core.config_base import ConfigError
from core.ray_setup import init_ray
from flows.watchdog import NightWatch
from release.promotion import GateResult
from training.rlhf.stages import RLHFStageResult


def _forwarded_loggers() -> list[str]:
    return list(PREFECT_LOGGING_EXTRA_LOGGERS.value() or ()) + ["prefect.flow_runs", "prefect.task_runs"]


def _info_from_extra_loggers() -> None:
    """Let INFO records of the loggers Prefect forwards (``PREFECT_LOGGING_EXTRA_LOGGERS``, set by
    ``nightshift up``) reach the flow run's log: Prefect gives them its handlers, not a level, and
    the root logger's WARNING would drop them."""
    for name in PREFECT_LOGGING_EXTRA_LOGGERS.value() or ():
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def flow_config(preset: str, overrides: dict[str, Any] | None) -> Config:
    """Load and validate the config before any compute; a bad one fails the flow run with every problem.

    Overrides are Prefect parameters, which Prefect stores and shows in clear: one holding a secret (a
    URL with a password, a key named like ``password`` or ``token``) fails the run, naming where the
    secret belongs instead. Log records of the run have secrets masked (:mod:`catalog.redact`).
    """
    _info_from_extra_loggers()
    install_log_redaction(logging.getLogger(), *(logging.getLogger(n) for n in _forwarded_loggers()))
    if leaks := secrets_in(overrides or {}):
        raise ConfigError(
            [
                f"overrides.{k}: holds a secret, and Prefect keeps flow parameters in clear; give it to the "
                "worker's environment instead (a database password through PGPASSFILE, keys through their "
                "own variables) and pass the value without it"
                for k in leaks
            ],
            source="flow parameters",
        )
    cfg = load_config(preset, overrides or {})
    get_run_logger().info("config: preset %s, %d override(s)", cfg.preset, len(overrides or {}))
    return cfg


def flow_run_id() -> str | None:
    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    return str(flow_run.id) if flow_run is not None else None


def tracker_for(cfg: Config) -> Tracker:
    return Tracker(
        tracking_uri=cfg.tracking.mlflow_uri,
        experiment=cfg.tracking.experiment,
        catalog_url=cfg.tracking.catalog_url,
    )


def night_of_flow_run() -> str | None:
    """``2026-12-07 gentle-heron``: the date the flow run was scheduled for (UTC) and its name."""
    flow_run = getattr(get_run_context(), "flow_run", None)
    if flow_run is None:
        return None
    return night_label(flow_run.expected_start_time or flow_run.start_time, flow_run.name)


@contextmanager
def pipeline_run(cfg: Config, name: str) -> Iterator[PipelineRun]:
    """The flow's tracked pipeline run (MLflow parent run + catalog run, named after the night), its
    stages watched against ``night.stage_limits`` (:class:`flows.watchdog.NightWatch`)."""
    run_id = flow_run_id()
    # Ray starts here, in the flow's main thread, through init_ray, which puts Prefect's SIGTERM
    # handler back after ray.init replaces it with sys.exit. Left to the first stage that needs it, a
    # library call could start Ray implicitly first: when ingest was reused from the stage cache,
    # Ray's handler stayed, and a night cancelled in pretraining ended Crashed, not Cancelled.
    init_ray(cfg.ray)
    with (
        tracker_for(cfg).pipeline(
            name,
            config=cfg.to_dict(),
            prefect_flow_run_id=run_id,
            tags={"preset": cfg.preset},
            night=night_of_flow_run(),
        ) as pipeline,
        NightWatch(cfg.night, pipeline, run_id),
    ):
        yield pipeline


def prefect_flow_run_url(cfg: Config) -> str | None:
    run_id = flow_run_id()
    return f"{cfg.tracking.prefect_ui.rstrip('/')}/runs/flow-run/{run_id}" if run_id else None


def publish_summary(key: str, title: str, pipeline: PipelineRun, rows: list[tuple[str, str, str]]) -> None:
    """A Markdown artifact on the flow run linking the MLflow runs: rows of (stage, MLflow URL, detail)."""
    lines = [
        f"# {title}",
        "",
        f"MLflow pipeline run: [{pipeline.mlflow_run_id}]({pipeline.url})",
        "",
        "| stage | MLflow run | result |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {stage} | [open]({url}) | {detail} |" for stage, url, detail in rows]
    create_markdown_artifact(markdown="\n".join(lines), key=key, description=title)


def samples_markdown(samples: list[str]) -> str:
    """Generated samples as a Markdown artifact (each in a fenced block, so verse keeps its lines)."""
    parts = ["# Samples from the trained model", ""]
    for i, text in enumerate(samples, 1):
        parts += [f"## Sample {i}", "", "~~~text", text.replace("~~~", "---"), "~~~", ""]
    return "\n".join(parts)


def gate_failed(cfg: Config, gate: GateResult) -> State:
    """The flow run's end when nothing was promoted: the state ``GateFailed`` with the reason."""
    where = f"stage {gate.verdict.stage}" if gate.verdict.stage else "gate"
    return Failed(
        name="GateFailed",
        message=f"{where} failed for {cfg.serve.registered_model} v{gate.version}: "
        f"{gate.verdict.summary()}; champion v{gate.champion_before or '-'} keeps serving",
    )


def stage_failed(cfg: Config, pipeline: PipelineRun, failed: RLHFStageResult) -> State:
    """A stage did not beat its input: register its model as ``challenger``, say why, end the night."""
    from flows.tasks import stage_gate_task  # flows.tasks imports this module

    gate = stage_gate_task(cfg, failed)
    create_markdown_artifact(markdown=gate.markdown(), key="gate-verdict", description="Gate verdict")
    stage = gate.verdict.stage or "?"
    publish_summary(
        "pretrain-summary",
        f"stage {stage} did not beat its input",
        pipeline,
        [(stage, pipeline.stage_url(stage) or "", gate.verdict.summary())],
    )
    return gate_failed(cfg, gate)
