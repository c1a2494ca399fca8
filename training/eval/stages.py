"""The tracked evaluate stage: what a Prefect task, the CLI and a test call.

Like :mod:`training.stages`: takes the whole :class:`~core.config.Config` and the
:class:`~catalog.tracking.StageRun` it reports to, records the artifacts it read (candidate,
champion, held-out tokens) and wrote (the ``eval_report``), logs params, metrics and the gate
outcome to the stage's MLflow run. A failed gate is a result, not an exception: the caller
decides what a failed verdict means for the flow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from catalog.artifacts import ArtifactError, ArtifactRef, open_artifact
from catalog.tracking import StageRun
from catalog.verdict import Verdict
from core.config import Config
from training.eval.artifact import REPORT_MD, publish_eval_report, read_eval_report
from training.eval.evaluate import RewardFn, evaluate
from training.eval.gates import check_gates
from training.eval.model_card import model_card
from training.placement import driver_threads

if TYPE_CHECKING:
    from catalog.registry import Registry
    from catalog.untracked import NullStageRun
    from training.eval.tasks import TaskItem

log = logging.getLogger(__name__)

TAG_GATE = "nightshift.gate"  # on the stage's MLflow run: "passed" or "failed"
TAG_GATE_SUMMARY = "nightshift.gate_summary"


class EvalStageResult(NamedTuple):
    """What :func:`evaluate_stage` returns; unpacks as ``report_ref, verdict``."""

    report_ref: ArtifactRef  # the eval_report artifact (REPORT.md, report.json, verdict.json, plots/)
    verdict: Verdict


def _model_ref(x: ArtifactRef | str | Path, what: str) -> ArtifactRef:
    try:
        return x if isinstance(x, ArtifactRef) else open_artifact(x, kind="model")
    except ArtifactError as e:
        raise ArtifactError(f"{what}: {e}") from e


def evaluate_stage(
    cfg: Config,
    run: StageRun | NullStageRun,
    candidate: ArtifactRef | str | Path,
    *,
    champion: ArtifactRef | str | Path | None = None,
    tokens: ArtifactRef | str | Path | None = None,
    tasks: Sequence[TaskItem] | None = None,
    reward_fn: RewardFn | None = None,
    reference: ArtifactRef | str | Path | None = None,
    out: str | Path | None = None,
) -> EvalStageResult:
    """Evaluate ``candidate`` against ``champion``, apply the gates and publish the ``eval_report``.

    Args:
        cfg: the pipeline config (``eval``, ``data`` for the toxicity settings, ``seed``,
            ``tracking.artifact_root``).
        run: the stage run to report to.
        candidate: the ``model`` artifact to judge.
        champion: the serving model's artifact (``Registry.model_artifact_path``); None when there
            is no champion yet, and then only absolute thresholds apply.
        tokens: the ``tokens`` artifact whose ``eval.heldout_split`` is held out (written with the
            candidate's tokenizer); None skips perplexity.
        tasks: verifiable task items (:class:`~training.eval.tasks.TaskItem`); None: built-in ones.
        reward_fn: ``(prompt, reply) -> float`` of a reward model; gives the win rate.
        reference: the model the candidate was fine-tuned from, for KL.
        out: publish the report at exactly this path (default: under ``tracking.artifact_root``).

    Returns:
        ``(report_ref, verdict)``.
    """
    cand = _model_ref(candidate, "candidate")
    champ = _model_ref(champion, "champion") if champion is not None else None
    ref_model = _model_ref(reference, "reference") if reference is not None else None
    tokens_ref = None
    if tokens is not None:
        tokens_ref = tokens if isinstance(tokens, ArtifactRef) else open_artifact(tokens, kind="tokens")
    run.use(cand, context="evaluation")
    if champ is not None:
        run.use(champ, context="champion")
    if ref_model is not None:
        run.use(ref_model, context="reference")
    if tokens_ref is not None:
        run.use(tokens_ref, context="heldout")
    run.log_params({"eval": cfg.eval.model_dump(mode="json")})
    # Evaluation runs in this process, outside Ray: on one machine it takes no more threads than Ray
    # has CPUs free beside the Serve replicas (training/placement.py).
    eval_cfg = cfg.eval
    threads = driver_threads(cfg.ray, eval_cfg.torch_threads)
    if threads != eval_cfg.torch_threads:
        log.info("evaluate: %s torch threads (CPUs free on Ray beside serving)", threads)
        eval_cfg = eval_cfg.model_copy(update={"torch_threads": threads})
    run.log_params({"placement.eval_threads": threads or "default"})

    report = evaluate(
        cand,
        champ,
        cfg=eval_cfg,
        data_cfg=cfg.data,
        heldout=tokens_ref,
        tasks=tasks,
        reward_fn=reward_fn,
        reference=ref_model,
        seed=cfg.seed,
        refusal=cfg.rlhf.preferences.refusal,
    )
    verdict = check_gates(report, cfg.eval, seed=cfg.seed)
    ref = publish_eval_report(
        report, verdict, root=cfg.tracking.artifact_root if out is None else None, dest=out
    )
    # Against the candidate's logged model (when its stage logged one), so they show on that model's
    # page and on the registry version made from it.
    run.log_metrics(
        {
            **report.flat_metrics(),
            "gate.passed": float(verdict.passed),
            "gate.failed_rules": float(len(verdict.failed)),
            **{f"seconds.{k}": v for k, v in report.timings.items()},
        },
        model_id=run.logged_model_id(cand),
        dataset=tokens_ref,
    )
    run.set_tag(TAG_GATE, "passed" if verdict.passed else "failed")
    run.set_tag(TAG_GATE_SUMMARY, verdict.summary())
    run.produce(ref)  # REPORT.md, report.json, verdict.json and plots/*.png under eval_report/
    log.info("evaluate %s: %s", cand.sha256[:12], verdict.summary())
    return EvalStageResult(report_ref=ref, verdict=verdict)


def record_in_registry(
    registry: Registry,
    version: str | int,
    model: ArtifactRef | str | Path,
    report_ref: ArtifactRef | str | Path,
    *,
    catalog_url: str | None = None,
    promote_on_pass: bool = True,
    who: str = "evaluate",
) -> bool:
    """Attach the gate verdict and the model card to a registered version; promote it if it passed.

    On a failed verdict nothing moves: the champion stays, and the version keeps ``challenger``
    with ``nightshift.gate=failed`` for anyone who wants to look at it.

    Args:
        registry: the registry (``catalog.registry.Registry``).
        version: the candidate's version (from ``registry.register``).
        model: the candidate's ``model`` artifact (for the model card).
        report_ref: the ``eval_report`` artifact of :func:`evaluate_stage`.
        catalog_url: the catalog to read the model's lineage from, for the card.
        promote_on_pass: move ``champion`` to the version when every gate passed.
        who: recorded as the promoter.

    Returns:
        Whether the version is now champion.
    """
    path = report_ref.path if isinstance(report_ref, ArtifactRef) else Path(report_ref)
    report, verdict = read_eval_report(path)
    registry.attach_verdict(
        version,
        passed=verdict.passed,
        summary=verdict.summary(),
        markdown=verdict.to_markdown(),
        metrics={k: v for k, v in report.candidate.metrics.items() if v is not None and math.isfinite(v)},
        report_sha256=open_artifact(path, kind="eval_report").sha256,
    )
    promoted = verdict.passed and promote_on_pass
    if promoted:
        reason = "gates passed" if verdict.has_champion else "gates passed (first champion)"
        registry.promote(version, who=who, report=(path / REPORT_MD).read_text(), reason=reason)
    # The card is written last, so it shows the aliases and the previous champion after the decision.
    card = model_card(
        model, catalog_url=catalog_url, version=registry.get(version), report=report, verdict=verdict
    )
    registry.attach_model_card(version, card)
    return promoted
