"""``pretrain/nightly``: ingest → tokenize → pretrain → [sft → reward → ppo|dpo|grpo] → evaluate
and gate → deploy the champion.

Every RLHF stage must beat its input (SFT the base, the policy SFT: ``eval.stage_rules``); a stage
that does not ends the night there. A candidate that fails a gate, or a stage that fails its rules,
is registered (alias ``challenger``) but not promoted; the champion keeps serving and the flow run
ends in the failed state ``GateFailed`` with the verdict as its message and as a Markdown
artifact, rather than raising. A stage that overruns ``night.stage_limits`` ends the night
``Crashed`` with the reason (``flows/watchdog.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from flows.common import (
    flow_config,
    gate_failed,
    pipeline_run,
    prefect_flow_run_url,
    publish_summary,
    samples_markdown,
    stage_failed,
)
from flows.tasks import (
    deploy_task,
    evaluate_task,
    ingest_task,
    pretrain_task,
    rlhf_chain,
    tokenize_task,
)

if TYPE_CHECKING:
    from catalog.tracking import PipelineRun
    from core.config import Config
    from release.promotion import GateResult
    from serving.deploy import DeployResult
    from training.data.ingest import IngestResult
    from training.data.tokenize import TokenizeResult
    from training.rlhf.stages import RLHFStageResult
    from training.stages import PretrainStageResult


@flow(name="pretrain", log_prints=True)
def pretrain(
    preset: str = "small", overrides: dict[str, Any] | None = None, no_cache: bool = False
) -> dict[str, str] | State:
    """Run the whole chain on a preset.

    A stage whose identity (input hashes, config slice, code version) already published a result
    that verifies is not run again (:mod:`training.stage_cache`): a night re-run after a failure
    resumes at the stage that failed.

    Args:
        preset: a config preset (``tiny``, ``small``, ``gpt2-124m``) or a path to a YAML file.
        overrides: dotted config overrides, e.g. ``{"data.vocab_size": 4096}`` or
            ``{"night.rerun": ["pretrain"]}`` (that stage runs even when cached).
        no_cache: run every stage, reusing nothing (``night.cache: false``).

    Returns:
        The content hashes of the artifacts the run produced, by kind, and the registry version;
        a ``GateFailed`` state when the candidate was not promoted.
    """
    cfg = flow_config(preset, {**(overrides or {}), **({"night.cache": False} if no_cache else {})})
    who = prefect_flow_run_url(cfg) or "pretrain/nightly"
    with pipeline_run(cfg, "pretrain") as pipeline:
        corpus = ingest_task(cfg, pipeline)
        create_markdown_artifact(markdown=corpus.datacard, key="data-card", description="Corpus data card")
        tokens = tokenize_task(cfg, pipeline, corpus)
        model = pretrain_task(cfg, pipeline, tokens)
        create_markdown_artifact(
            markdown=samples_markdown(model.samples), key="pretrain-samples", description="Samples"
        )
        candidate, candidate_uri = model.model, model.model_uri
        reward = reference = policy = None
        if cfg.rlhf.enabled:
            sft, reward, policy, failed = rlhf_chain(cfg, pipeline, model.model, tokens.tokens)
            if failed is not None:
                return stage_failed(cfg, pipeline, failed)
            assert policy is not None
            candidate, candidate_uri, reference = policy.model, policy.model_uri, sft.model
        gate = evaluate_task(
            cfg,
            pipeline,
            candidate,
            candidate_uri,
            tokens.tokens,
            who,
            reward_model=reward.model if reward else None,
            reference=reference,
        )
        create_markdown_artifact(markdown=gate.markdown(), key="gate-verdict", description="Gate verdict")
        deployed = None
        if gate.promoted and cfg.serve.deploy_stage:
            deployed = deploy_task(cfg, pipeline, candidate, created_by=who, version=gate.version)
        rows = _summary_rows(cfg, pipeline, corpus, tokens, model, reward, policy, gate, deployed)
        publish_summary("pretrain-summary", f"pretrain/nightly — preset {cfg.preset}", pipeline, rows)
    if not gate.promoted:
        return gate_failed(cfg, gate)
    return {
        **({"policy": policy.model.sha256, "preferences": reward.preferences.sha256} if policy else {}),
        "corpus": corpus.artifact.sha256,
        "tokenizer": tokens.tokenizer.sha256,
        "tokens": tokens.tokens.sha256,
        "model": model.model.sha256,
        "version": gate.version,
    }


def _summary_rows(
    cfg: Config,
    pipeline: PipelineRun,
    corpus: IngestResult,
    tokens: TokenizeResult,
    model: PretrainStageResult,
    reward: RLHFStageResult | None,
    policy: RLHFStageResult | None,
    gate: GateResult,
    deployed: DeployResult | None,
) -> list[tuple[str, str, str]]:
    """The night's summary for the Prefect UI: one row per stage, with its MLflow run and its outcome."""
    m, mm = corpus.manifest, model.metrics
    rows: list[tuple[str, str, str]] = [
        (
            "ingest",
            pipeline.stage_url("ingest"),
            f"corpus `{corpus.artifact.sha256[:16]}`: {m['documents_kept']} of {m['documents_in']} "
            f"documents kept, {len(m['quarantined'])} quarantined",
        ),
        (
            "tokenize",
            pipeline.stage_url("tokenize"),
            f"tokens `{tokens.tokens.sha256[:16]}`: {tokens.stats['tokens']['train']:,} train / "
            f"{tokens.stats['tokens']['val']:,} val tokens",
        ),
        (
            "pretrain",
            pipeline.stage_url("pretrain"),
            f"model `{model.model.sha256[:16]}`: val loss {mm.get('val_loss', float('nan')):.3f} "
            f"(unigram entropy {mm['unigram_entropy']:.3f}), "
            f"{mm.get('tokens_per_s', 0):,.0f} tokens/s",
        ),
        *(
            [
                (
                    cfg.rlhf.algorithm,
                    pipeline.stage_url(cfg.rlhf.algorithm),
                    f"policy `{policy.model.sha256[:16]}` after SFT and the reward model "
                    f"(held-out accuracy {reward.metrics.get('heldout_accuracy', float('nan')):.3f})",
                )
            ]
            if policy is not None
            else []
        ),
        (
            "evaluate",
            pipeline.stage_url("evaluate"),
            f"v{gate.version}: {gate.verdict.summary()} — "
            + ("promoted to champion" if gate.promoted else "not promoted"),
        ),
    ]
    if deployed is not None:
        rows.append(
            (
                "deploy",
                pipeline.stage_url("deploy"),
                f"deployment {deployed.deployment_id}: {deployed.endpoint}/v1 serves v{gate.version} "
                f"(`{deployed.model_sha256[:16]}`)",
            )
        )
    return rows
