"""Evaluate a candidate against the champion, register it, and let the gates decide.

The one function behind the ``evaluate`` step of ``pretrain/nightly``, ``nightshift evaluate``
and the tests: look up the registry's ``champion``, evaluate the candidate against it
(:func:`training.eval.stages.evaluate_stage`), register the candidate as a new version with alias
``challenger``, attach the verdict and the model card, and move ``champion`` only when every
gate passed. Whether the serving deployment then follows is the caller's decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.artifacts import ArtifactRef
from training.eval.gates import Verdict

if TYPE_CHECKING:
    from collections.abc import Sequence

    from catalog.registry import ModelVersionInfo
    from training.config import Config
    from training.eval.evaluate import RewardFn
    from training.eval.tasks import TaskItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    report: ArtifactRef | None  # the eval_report artifact (None: a stage of the night failed its rules)
    verdict: Verdict
    version: str  # the candidate's registry version
    promoted: bool  # champion now points at it
    champion_before: str | None  # the champion's version before this decision
    model_name: str = "nightshift-gpt"  # the registered model

    def markdown(self) -> str:
        """The verdict as Markdown, headed by the registry decision (for the Prefect UI)."""
        decision = (
            f"**Promoted**: `{self.model_name}` v{self.version} is now `champion`"
            if self.promoted
            else f"**Not promoted**: v{self.version} stays `challenger`; the champion "
            f"(v{self.champion_before or '-'}) and the served model are unchanged"
        )
        if self.report is None:
            return f"# Gate verdict\n\n{decision}\n\n{self.verdict.to_markdown()}"
        report_md = (self.report.path / "REPORT.md").read_text()
        return f"# Gate verdict\n\n{decision}\n\n{self.verdict.to_markdown()}\n\n---\n\n{report_md}"


def registry_for(cfg: Config) -> Any:
    from catalog.registry import Registry

    return Registry(cfg.tracking.mlflow_uri, name=cfg.serve.registered_model)


def version_artifact(registry: Any, version: str) -> Path:
    """A local directory holding a version's ``model`` artifact (cached under registry-cache/)."""
    from training.config import nightshift_home

    return registry.model_artifact_path(version, nightshift_home() / "registry-cache")


def champion_artifact(cfg: Config, registry: Any) -> tuple[ModelVersionInfo | None, Path | None]:
    """The champion version and a local directory holding its ``model`` artifact (or ``None``s)."""
    champ = registry.champion()
    if champ is None:
        return None, None
    return champ, version_artifact(registry, champ.version)


def evaluate_and_gate(
    cfg: Config,
    run: Any,
    candidate: ArtifactRef,
    candidate_uri: str,
    *,
    tokens: ArtifactRef | None = None,
    tasks: Sequence[TaskItem] | None = None,
    reward_fn: RewardFn | None = None,
    reference: ArtifactRef | None = None,
    who: str = "evaluate",
) -> GateResult:
    """Evaluate ``candidate`` against the champion, register it, promote it if the gates pass.

    Args:
        cfg: the pipeline config (``eval`` for the gates, ``serve.registered_model``, tracking).
        run: the evaluate stage's run.
        candidate: the candidate ``model`` artifact.
        candidate_uri: its logged MLflow model (``models:/<model_id>``), registered as a version.
        tokens: held-out tokens for perplexity.
        tasks: verifiable task items; reward_fn: a reward model; reference: for KL.
        who: recorded as the promoter.
    """
    from training.eval.stages import evaluate_stage, record_in_registry

    registry = registry_for(cfg)
    champ, champ_path = champion_artifact(cfg, registry)
    report_ref, verdict = evaluate_stage(
        cfg,
        run,
        candidate,
        champion=champ_path,
        tokens=tokens,
        tasks=tasks,
        reward_fn=reward_fn,
        reference=reference,
    )
    version = registry.register(candidate_uri).version  # linked to the run that logged the model
    promoted = record_in_registry(
        registry, version, candidate, report_ref, catalog_url=cfg.tracking.catalog_url, who=who
    )
    run.log_params({"registry_version": version, "champion_before": champ.version if champ else "-"})
    log.info("v%s: %s (%s)", version, verdict.summary(), "promoted" if promoted else "not promoted")
    return GateResult(
        report_ref, verdict, version, promoted, champ.version if champ else None, cfg.serve.registered_model
    )


def reject_at_stage(cfg: Config, candidate_uri: str | None, verdict: Verdict) -> GateResult:
    """A stage of the night failed its rules (:func:`training.eval.gates.check_stage`): nothing moves.

    Its model is registered as a new version with alias ``challenger`` and the stage verdict attached,
    for anyone who wants to look at it; the champion and the served model stay.
    """
    registry = registry_for(cfg)
    champ = registry.champion()
    version = "-"
    if candidate_uri is not None:
        version = registry.register(candidate_uri).version
        registry.attach_verdict(
            version,
            passed=False,
            summary=f"stage {verdict.stage}: {verdict.summary()}",
            markdown=verdict.to_markdown(),
        )
    log.info("v%s: stage %s failed its rules: %s", version, verdict.stage, verdict.summary())
    return GateResult(
        None, verdict, version, False, champ.version if champ else None, cfg.serve.registered_model
    )
