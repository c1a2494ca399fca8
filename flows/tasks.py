"""Prefect tasks: thin wrappers over the tracked stage functions in :mod:`training.stages`.

Retries are declared here; each retry opens a fresh MLflow child run (the failed attempt stays
visible as FAILED). Each stage is timed by the night's watchdog (``flows/watchdog.py``). Prefect's
caching by inputs is off (inputs are config objects and tracker handles, not data): a stage is
reused by its identity instead, through the catalog's stage memos (:mod:`training.stage_cache`).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from catalog.artifacts import ArtifactRef
from catalog.tracking import PipelineRun
from core.config import Config
from flows.watchdog import watched_stage
from release.promotion import (
    GateResult,
    cached_gate,
    evaluate_and_gate,
    parent_model,
    reject_at_stage,
    replay_tokens,
    tokenizer_source,
)
from serving.deploy import DeployResult, deploy_stage
from training import stage_cache as cache
from training import stages
from training.data.ingest import IngestResult
from training.data.tokenize import TokenizeResult
from training.rlhf import stages as rlhf
from training.rlhf.for_eval import eval_items, reward_fn
from training.rlhf.stages import RLHFStageResult


@task(name="ingest", retries=2, retry_delay_seconds=5, cache_policy=NONE)
def ingest_task(cfg: Config, pipeline: PipelineRun, sources: list[str] | None = None) -> IngestResult:
    with watched_stage(cfg, pipeline, "ingest") as run:
        return cache.ingest(cfg, run, sources=sources)


@task(name="tokenize", retries=2, retry_delay_seconds=5, cache_policy=NONE)
def tokenize_task(cfg: Config, pipeline: PipelineRun, corpus: IngestResult) -> TokenizeResult:
    with watched_stage(cfg, pipeline, "tokenize") as run:
        return cache.tokenize(cfg, run, corpus.artifact, tokenizer_source(cfg))


@task(name="pretrain", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def pretrain_task(cfg: Config, pipeline: PipelineRun, tokens: TokenizeResult) -> stages.PretrainStageResult:
    # A retry resumes from the newest good checkpoint of the same inputs and config.
    with watched_stage(cfg, pipeline, "pretrain") as run:
        # train.init: the champion (default), scratch or a named model; the same for a re-run night.
        parent = cache.parent_of_night(cfg, run, tokens.tokens, tokens.tokenizer, lambda: parent_model(cfg))
        replay = replay_tokens(cfg, parent, tokens.tokens)
        return cache.pretrain(cfg, run, tokens.tokens, tokens.tokenizer, parent, replay)


@task(name="sft", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def sft_task(
    cfg: Config, pipeline: PipelineRun, model: ArtifactRef, tokens: ArtifactRef | None = None
) -> RLHFStageResult:
    # The tokens feed `rlhf.sft.ptx_coef` (pretraining windows mixed in against forgetting).
    with watched_stage(cfg, pipeline, "sft") as run:
        key = cache.sft_key(cfg, model, tokens)
        return cache.rlhf_stage(cfg, run, "sft", key, lambda: rlhf.sft_stage(cfg, run, model, tokens=tokens))


@task(name="reward", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def reward_task(cfg: Config, pipeline: PipelineRun, policy: ArtifactRef) -> RLHFStageResult:
    # Builds this run's preference snapshot (tasks, the policy's own mistakes, JSONL, feedback).
    with watched_stage(cfg, pipeline, "reward") as run:
        key = cache.reward_key(cfg, policy)
        return cache.rlhf_stage(cfg, run, "reward", key, lambda: rlhf.reward_stage(cfg, run, policy))


@task(name="rl", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def policy_task(
    cfg: Config,
    pipeline: PipelineRun,
    sft: ArtifactRef,
    reward: RLHFStageResult,
    tokens: ArtifactRef | None = None,
    base: ArtifactRef | None = None,
) -> RLHFStageResult:
    # tokens and base: the stage rule that holds the policy's held-out bits per byte to the base's.
    algo = cfg.rlhf.algorithm
    with watched_stage(cfg, pipeline, algo) as run:

        def build() -> RLHFStageResult:
            if algo == "ppo":
                return rlhf.ppo_stage(cfg, run, sft, reward.model, tokens=tokens, base=base)
            if algo == "dpo":
                return rlhf.dpo_stage(cfg, run, sft, preferences=reward.preferences, tokens=tokens, base=base)
            return rlhf.grpo_stage(cfg, run, sft, reward_model=reward.model, tokens=tokens, base=base)

        return cache.rlhf_stage(cfg, run, algo, cache.policy_key(cfg, sft, reward, tokens, base), build)


@task(name="stage-gate", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def stage_gate_task(cfg: Config, result: RLHFStageResult) -> GateResult:
    # A stage that did not beat its input: its model is registered as `challenger`, nothing else moves.
    assert result.verdict is not None
    return reject_at_stage(cfg, result.model_uri, result.verdict)


@task(name="evaluate", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def evaluate_task(
    cfg: Config,
    pipeline: PipelineRun,
    candidate: ArtifactRef,
    candidate_uri: str,
    tokens: ArtifactRef | None,
    who: str,
    reward_model: ArtifactRef | None = None,
    reference: ArtifactRef | None = None,
) -> GateResult:
    # Registering the same logged model again returns its version, so a retry adds nothing.
    with watched_stage(cfg, pipeline, "evaluate") as run:

        def build() -> GateResult:
            tasks = eval_items(cfg) if cfg.rlhf.enabled else None
            score = reward_fn(reward_model, chat=cfg.eval.prompt_format == "chat") if reward_model else None
            return evaluate_and_gate(
                cfg,
                run,
                candidate,
                candidate_uri,
                tokens=tokens,
                tasks=tasks,
                reward_fn=score,
                reference=reference,
                who=who,
            )

        return cached_gate(
            cfg, run, cache.evaluate_key(cfg, candidate, tokens, reward_model, reference), build
        )


@task(name="deploy", retries=1, retry_delay_seconds=10, cache_policy=NONE)
def deploy_task(
    cfg: Config, pipeline: PipelineRun, model: ArtifactRef, created_by: str, version: str | None = None
) -> DeployResult:
    # A rollout that fails leaves the previous model serving, so retrying it is safe.
    with watched_stage(cfg, pipeline, "deploy") as run:
        return deploy_stage(cfg, run, model, created_by=created_by, version=version)


def rlhf_chain(
    cfg: Config, pipeline: PipelineRun, base: ArtifactRef, tokens: ArtifactRef | None
) -> tuple[RLHFStageResult, RLHFStageResult | None, RLHFStageResult | None, RLHFStageResult | None]:
    """SFT → reward model → ppo|dpo|grpo from ``base``; stops at the first stage that fails its rules.

    Returns ``(sft, reward, policy, failed)``: ``failed`` is the stage that did not beat its input
    (reward and policy are None when SFT failed).
    """
    sft = sft_task(cfg, pipeline, base, tokens)
    if sft.verdict is not None and not sft.verdict.passed:
        return sft, None, None, sft
    reward = reward_task(cfg, pipeline, sft.model)
    policy = policy_task(cfg, pipeline, sft.model, reward, tokens, base)
    failed = policy if policy.verdict is not None and not policy.verdict.passed else None
    return sft, reward, policy, failed
