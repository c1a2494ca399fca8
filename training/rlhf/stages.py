"""The tracked RLHF stage functions: what a Prefect task, the CLI and a test all call.

Same shape as :mod:`training.stages`: each takes the whole :class:`~core.config.Config` and
the :class:`~catalog.tracking.StageRun` it reports to, reads artifacts (``run.use``), trains,
logs step metrics to the stage's MLflow run, and publishes what it made (``run.produce``):

* :func:`preferences_stage`: the preference set → ``preferences`` snapshot (linked to feedback rows)
* :func:`sft_stage`: ``model`` → ``model`` (supervised on the task replies)
* :func:`reward_stage`: ``model`` (+ ``preferences``) → ``reward_model``
* :func:`ppo_stage`: ``model`` + ``reward_model`` → ``model``
* :func:`dpo_stage`: ``model`` (+ ``preferences``) → ``model``
* :func:`grpo_stage`: ``model`` (+ ``reward_model``) → ``model``

Every policy stage ends with :func:`~training.rlhf.evaluate.evaluate_policy` of the new policy and
of the one it started from on the held-out prompts (``eval_*`` and ``baseline_*`` metrics, KL to
the starting policy), so the run shows whether RLHF helped. Nothing is published when a stage
fails: an empty preference set raises before any model is written.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from catalog.artifacts import ArtifactRef, open_artifact
from core.config import Config
from gpt.model_io import load_model, save_model
from training.data.shards import TokenShards
from training.eval.evaluate import heldout_text
from training.eval.gates import StageScores, check_stage
from training.eval.scoring import score_heldout
from training.mlflow_model import log_model
from training.progress import Progress
from training.rlhf.distributed import run_training
from training.rlhf.dpo import train_dpo
from training.rlhf.evaluate import score_policy
from training.rlhf.grpo import train_grpo
from training.rlhf.heads import KIND, load_reward_model, save_reward_model, scalar_model_from
from training.rlhf.onpolicy import policy_pairs
from training.rlhf.optim import resolve_device
from training.rlhf.pairs import pair_problem
from training.rlhf.ppo import train_ppo
from training.rlhf.preferences import KIND as PREFERENCES_KIND
from training.rlhf.preferences import (
    EmptyPreferencesError,
    build_preference_set,
    load_preferences,
    snapshot_preferences,
)
from training.rlhf.reward import train_reward
from training.rlhf.sequences import encode_reply
from training.rlhf.sft import train_sft
from training.rlhf.tasks import TaskSplits, tasks_from_config

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from catalog.tracking import StageRun
    from catalog.verdict import Verdict
    from gpt.model import GPT
    from training.rlhf.heads import ScalarModel
    from training.rlhf.optim import LogFn

log = logging.getLogger(__name__)
# Per-stage seed offsets from cfg.seed, so stages draw different batches and samples.
SEEDS = {"sft": 11, "reward": 12, "ppo": 13, "dpo": 14, "grpo": 15, "eval": 16, "preferences": 17}

ArtifactArg = ArtifactRef | str | Path


@dataclass
class RLHFStageResult:
    """What a stage produced: the artifact, its metrics, and the preference snapshot it used."""

    model: ArtifactRef  # a ``model`` (policy) or a ``reward_model``
    metrics: dict[str, float]
    preferences: ArtifactRef | None = None
    model_uri: str | None = None  # the MLflow model logged with the stage run (policies only)
    verdict: Verdict | None = None  # the stage rules against its input (policies; None when off)


def _ref(x: ArtifactArg, kind: str) -> ArtifactRef:
    return x if isinstance(x, ArtifactRef) else open_artifact(x, kind=kind)


# The figures of an RLHF step that its progress line shows (those it logs).
_PROGRESS_FIGURES = ("loss", "reward", "kl", "accuracy", "margin")


@contextmanager
def _progress(run: StageRun, stage: str, total: int) -> Iterator[LogFn]:
    """The stage's ``log_metrics``: each row to its MLflow run, and its step to a progress bar (a log
    line every 10 steps off a terminal). A stage trained on Ray Train workers logs its rows when they
    come back, so its progress shows at the end."""
    with Progress(stage, total, every=10) as bar:

        def log_metrics(metrics: Any, step: int) -> None:
            run.log_metrics(dict(metrics), step=step)
            bar.update(step, **{k: float(metrics[k]) for k in _PROGRESS_FIGURES if k in metrics})

        yield log_metrics


def _load_policy(cfg: Config, run: StageRun, model: ArtifactArg) -> tuple[GPT, Tokenizer, ArtifactRef]:
    ref = _ref(model, "model")
    run.use(ref, context="training")
    gpt, tok, ref = load_model(ref, device=str(resolve_device(cfg.rlhf.device)))
    return gpt, tok, ref


def _load_reward(cfg: Config, run: StageRun, reward_model: ArtifactArg) -> tuple[ScalarModel, ArtifactRef]:
    ref = _ref(reward_model, KIND)
    run.use(ref, context="reward")
    rm, _, ref = load_reward_model(ref, device=str(resolve_device(cfg.rlhf.device)))
    return rm, ref


def _base_model(cfg: Config, run: StageRun, base: ArtifactArg | None) -> GPT | None:
    """The pretrained model a policy's held-out bits per byte are held against (None: not given)."""
    if base is None or not cfg.eval.stage_rules:
        return None
    ref = _ref(base, "model")
    run.use(ref, context="base")
    gpt, _, _ = load_model(ref)
    return gpt


def _seed(cfg: Config, stage: str) -> int:
    seed = cfg.seed + SEEDS[stage]
    torch.manual_seed(seed)
    return seed


def _publish_policy(
    cfg: Config, run: StageRun, policy: GPT, tok: Tokenizer, out: str | Path | None, metadata: dict[str, Any]
) -> tuple[ArtifactRef, str | None]:
    ref = save_model(
        policy,
        tok,
        root=cfg.tracking.artifact_root if out is None else None,
        dest=out,
        metadata={**metadata, "rlhf": cfg.rlhf.model_dump(mode="json")},
    )
    run.produce(ref)
    uri = None
    if run.mlflow_run_id:
        uri = log_model(ref, run_id=run.mlflow_run_id, tracking_uri=cfg.tracking.mlflow_uri)
    return ref, uri


def _evaluate(
    cfg: Config,
    run: StageRun,
    policy: GPT,
    baseline: GPT,
    tok: Tokenizer,
    splits: TaskSplits,
    reward_model: ScalarModel | None = None,
    *,
    stage: str,
    baseline_name: str,
    tokens: ArtifactArg | None = None,
    base: GPT | None = None,
) -> tuple[dict[str, float], Verdict | None]:
    """eval_* of the new policy (KL to ``baseline``) and baseline_* of the policy it started from, and
    with ``eval.stage_rules`` the stage's verdict against ``baseline`` (``training.eval.gates``):
    held-out task accuracy (and for a policy the task reward and KL budget), and, with held-out
    ``tokens``, bits per byte within tolerance of the pretrained ``base`` (default: ``baseline``)."""
    seed = cfg.seed + SEEDS["eval"]
    new = score_policy(policy, tok, splits.eval, baseline, reward_model, cfg=cfg.rlhf.eval, seed=seed)
    old = score_policy(baseline, tok, splits.eval, None, reward_model, cfg=cfg.rlhf.eval, seed=seed)
    metrics = {f"eval_{k}": v for k, v in new.metrics.items()} | {
        f"baseline_{k}": v for k, v in old.metrics.items()
    }
    verdict = None
    if cfg.eval.stage_rules:
        nll: dict[str, list[float]] = {"policy": [], "base": []}
        if tokens is not None:
            text = heldout_text(_ref(tokens, "tokens"), tok, cfg.eval)
            for name, m in (("policy", policy), ("base", base or baseline)):
                nll[name] = score_heldout(m, tok, text, batch_size=cfg.eval.batch_size).window_nll
        verdict = check_stage(
            stage,
            StageScores(new.correct, new.reward, nll["policy"], new.kl),
            StageScores(old.correct, old.reward),
            cfg.eval,
            reference_name=baseline_name,
            base=StageScores((), (), nll["base"]),
            policy=stage != "sft",
            seed=seed,
        )
        metrics |= {"stage.passed": float(verdict.passed), "stage.failed_rules": float(len(verdict.failed))}
        if nll["policy"]:
            metrics |= {
                "eval_heldout_nll": sum(nll["policy"]) / len(nll["policy"]),
                "base_heldout_nll": sum(nll["base"]) / len(nll["base"]),
            }
        run.log_text(verdict.to_markdown(), "STAGE_RULES.md")
        run.set_tag("nightshift.stage_rules", "passed" if verdict.passed else "failed")
        log.info("%s stage rules: %s", stage, verdict.summary())
    run.log_metrics(metrics)
    log.info(
        "held-out: accuracy %.3f (was %.3f), reward %.3f (was %.3f), KL %.3f",
        new.metrics["accuracy"],
        old.metrics["accuracy"],
        new.metrics["reward"],
        old.metrics["reward"],
        new.metrics.get("kl", 0.0),
    )
    return metrics, verdict


# --- preferences ---------------------------------------------------------------------------------


def preferences_stage(
    cfg: Config, run: StageRun, model: ArtifactArg, *, out: str | Path | None = None
) -> ArtifactRef:
    """Build this run's preference set and publish it as a ``preferences`` artifact.

    Sources (``cfg.rlhf.preferences``): the task pairs, pairs from the policy's own samples labelled
    by the task checker, JSONL files, and the catalog's feedback (``cfg.tracking.catalog_url``).
    The snapshot is linked to each feedback row it used.

    Args:
        cfg: the pipeline config.
        run: the stage run.
        model: the ``model`` artifact (the starting policy): its samples, tokenizer and context length.
        out: publish at exactly this path (default: under ``cfg.tracking.artifact_root``).

    Raises:
        EmptyPreferencesError: no usable pair; nothing is published.
    """
    pc = cfg.rlhf.preferences
    policy, tok, ref = _load_policy(cfg, run, model)
    block = policy.cfg.block_size
    splits = tasks_from_config(cfg.rlhf, cfg.seed)
    generated = splits.preference_pairs() if pc.use_tasks else []
    generated += policy_pairs(
        policy,
        tok,
        splits.train,
        samples=pc.policy_samples,
        max_new_tokens=cfg.rlhf.sampling.max_new_tokens,
        seed=cfg.seed + SEEDS["preferences"],
    )
    run.log_params(
        {"rlhf.preferences": pc.model_dump(mode="json"), "rlhf.tasks": cfg.rlhf.tasks.model_dump(mode="json")}
    )
    pset = build_preference_set(
        tok,
        block,
        generated=generated,
        files=pc.files,
        catalog_url=cfg.tracking.catalog_url if pc.use_feedback else None,
        max_feedback=pc.max_feedback,
        min_rating_gap=pc.min_rating_gap,
        refusal=pc.refusal,
        max_disagreement=pc.max_disagreement,
        min_overlap=pc.min_overlap,
    )
    # Held-out pairs meet the training pairs' rule too: one that does not fit the context cannot be
    # scored (a small context and a long task item, e.g. the tiny preset's 64 tokens).
    candidates = splits.eval_pairs()
    heldout = [p for p in candidates if pair_problem(tok, block, p.prompt, p.chosen, p.rejected) is None]
    if dropped := len(candidates) - len(heldout):
        log.info(
            "preferences: %d held-out task pair(s) longer than the context (%d) left out", dropped, block
        )
    snap = snapshot_preferences(
        pset,
        heldout,
        root=cfg.tracking.artifact_root if out is None else None,
        dest=out,
        catalog_url=cfg.tracking.catalog_url if pset.feedback_ids() else None,
    )
    m = pset.manifest()
    run.log_metrics(
        {
            "pairs": m["pairs"],
            "quarantined": m["quarantined"],
            "skipped": m["skipped"],
            "heldout_pairs": len(heldout),
            **{f"rows_in.{k}": v for k, v in m["rows_in"].items()},
            **{f"pairs.{k}": v for k, v in m["pairs_by_source"].items()},
            **{f"quarantined.{k}": v for k, v in m["quarantined_by_reason"].items()},
        }
    )
    run.log_metrics({"labellers": m["labellers"], "left_out_labellers": len(m["left_out_labellers"])})
    run.produce(snap)
    return snap


def _preferences(
    cfg: Config, run: StageRun, model: ArtifactRef, preferences: ArtifactArg | None
) -> tuple[ArtifactRef, list, list]:
    ref = preferences_stage(cfg, run, model) if preferences is None else _ref(preferences, PREFERENCES_KIND)
    run.use(ref, context="training")
    pairs, heldout = load_preferences(ref)
    if not pairs:
        raise EmptyPreferencesError(f"{ref.path}: the preferences artifact holds no pairs; rebuild it")
    return ref, pairs, heldout


# --- the stages ------------------------------------------------------------------------------------


def sft_stage(
    cfg: Config,
    run: StageRun,
    model: ArtifactArg,
    *,
    tokens: ArtifactArg | None = None,
    out: str | Path | None = None,
) -> RLHFStageResult:
    """Supervised fine-tuning of a ``model`` on the task replies; publishes the SFT ``model``.

    With ``rlhf.sft.ptx_coef > 0`` and a ``tokens`` artifact, pretraining windows are mixed in.
    """
    seed = _seed(cfg, "sft")
    policy, tok, ref = _load_policy(cfg, run, model)
    run.log_params(
        {
            "rlhf.sft": cfg.rlhf.sft.model_dump(mode="json"),
            "rlhf.tasks": cfg.rlhf.tasks.model_dump(mode="json"),
        }
    )
    splits = tasks_from_config(cfg.rlhf, cfg.seed)
    base = copy.deepcopy(policy)
    demos, too_long = _fitting_demos(
        tok, policy.cfg.block_size, splits.sft_pairs()[: cfg.rlhf.sft.max_examples]
    )
    ptx = None
    if tokens is not None and cfg.rlhf.sft.ptx_coef > 0:
        import torch

        tok_ref = _ref(tokens, "tokens")
        run.use(tok_ref, context="ptx")
        ptx = torch.from_numpy(TokenShards.open(tok_ref).split("train").to_numpy().astype("int64"))
    with _progress(run, "sft", cfg.rlhf.sft.steps) as log_metrics:
        res = run_training(
            cfg, train_sft, {"model": policy}, trained=("model",), log_metrics=log_metrics,
            tokenizer=tok, examples=demos, cfg=cfg.rlhf.sft, seed=seed, pretrain_tokens=ptx,
        )  # fmt: skip
    scores, verdict = _evaluate(
        cfg, run, policy, base, tok, splits, stage="sft", baseline_name="base", tokens=tokens
    )
    metrics = res.metrics | scores | {"sft_examples_too_long": float(too_long)}
    run.log_metrics({"sft_examples_too_long": float(too_long)}, step=cfg.rlhf.sft.steps)
    out_ref, uri = _publish_policy(
        cfg, run, policy, tok, out, {"stage": "sft", "base": ref.sha256, "metrics": metrics}
    )
    return RLHFStageResult(out_ref, metrics, None, uri, verdict)


def _fitting_demos(
    tok: Tokenizer, block: int, demos: list[tuple[list[dict[str, str]], str]]
) -> tuple[list[tuple[list[dict[str, str]], str]], int]:
    """The generated task demonstrations that fit the context; the rest are left out, counted and logged.

    The task families are the product's own (not a user's rows), and a small context (the tiny
    preset's 64 tokens) cannot hold the longer ones; the night trains on what fits and says how many
    it left out (``sft_examples_too_long``). None fitting is an error naming the fix.
    """
    kept = [d for d in demos if len(encode_reply(tok, d[0], d[1])[0]) <= block]
    dropped = len(demos) - len(kept)
    if dropped:
        log.warning(
            "sft: %d of %d task example(s) longer than the context (%d) left out", dropped, len(demos), block
        )
    if not kept:
        raise ValueError(
            f"rlhf.tasks: none of the {len(demos)} SFT examples fits the context ({block} tokens); "
            "use a model with a longer context (model.block_size) or shorter task families "
            "(rlhf.tasks.families)"
        )
    return kept, dropped


def reward_stage(
    cfg: Config,
    run: StageRun,
    model: ArtifactArg,
    *,
    preferences: ArtifactArg | None = None,
    out: str | Path | None = None,
) -> RLHFStageResult:
    """Train a reward model (backbone initialised from ``model``, usually the SFT policy).

    Without ``preferences`` the preference set is built and snapshotted first (:func:`preferences_stage`).
    Logs ``heldout_accuracy`` (goal: at least 0.9) and publishes a ``reward_model`` artifact.
    """
    seed = _seed(cfg, "reward")
    gpt, tok, ref = _load_policy(cfg, run, model)
    pref, pairs, heldout = _preferences(cfg, run, ref, preferences)
    run.log_params({"rlhf.reward": cfg.rlhf.reward.model_dump(mode="json")})
    rm = scalar_model_from(gpt)
    with _progress(run, "reward", cfg.rlhf.reward.steps) as log_metrics:
        res = run_training(
            cfg, train_reward, {"model": rm}, trained=("model",), log_metrics=log_metrics,
            tokenizer=tok, pairs=pairs, cfg=cfg.rlhf.reward, heldout=heldout, seed=seed,
        )  # fmt: skip
    out_ref = save_reward_model(
        rm,
        tok,
        root=cfg.tracking.artifact_root if out is None else None,
        dest=out,
        metadata={"stage": "reward", "base": ref.sha256, "preferences": pref.sha256, "metrics": res.metrics},
    )
    summary = {k: v for k, v in res.metrics.items() if k.startswith(("heldout_", "train_"))}
    summary.pop("heldout_accuracy", None)  # already in the step history, at the last step
    run.log_metrics(summary, step=cfg.rlhf.reward.steps)
    run.produce(out_ref)
    return RLHFStageResult(out_ref, res.metrics, pref)


def ppo_stage(
    cfg: Config,
    run: StageRun,
    policy: ArtifactArg,
    reward_model: ArtifactArg,
    *,
    tokens: ArtifactArg | None = None,
    base: ArtifactArg | None = None,
    out: str | Path | None = None,
) -> RLHFStageResult:
    """PPO from the SFT ``policy`` against its frozen copy, scored by ``reward_model``."""
    seed = _seed(cfg, "ppo")
    pi, tok, ref = _load_policy(cfg, run, policy)
    rm, rm_ref = _load_reward(cfg, run, reward_model)
    run.log_params(
        {
            "rlhf.ppo": cfg.rlhf.ppo.model_dump(mode="json"),
            "rlhf.sampling": cfg.rlhf.sampling.model_dump(mode="json"),
        }
    )
    splits = tasks_from_config(cfg.rlhf, cfg.seed)
    reference = copy.deepcopy(pi)
    value = copy.deepcopy(rm) if cfg.rlhf.ppo.value_init == "reward_model" else scalar_model_from(pi)
    for p in value.parameters():
        p.requires_grad_(True)
    if cfg.rlhf.ppo.normalize_reward or cfg.rlhf.ppo.reward == "task":
        # The reward model's head predicts raw scores; the returns are on another scale. Keep its
        # features, restart the head at 0 (what ScalarModel does for a fresh head).
        torch.nn.init.zeros_(value.score_head.weight)
        torch.nn.init.zeros_(value.score_head.bias)
    models = {"policy": pi, "reference": reference, "value_model": value, "reward_model": rm}
    with _progress(run, "ppo", cfg.rlhf.ppo.iterations) as log_metrics:
        res = run_training(
            cfg, train_ppo, models, trained=("policy", "value_model"), log_metrics=log_metrics,
            tokenizer=tok, examples=splits.train, cfg=cfg.rlhf.ppo, sampling=cfg.rlhf.sampling, seed=seed,
        )  # fmt: skip
    scores, verdict = _evaluate(
        cfg, run, pi, reference, tok, splits, rm, stage="ppo", baseline_name="sft", tokens=tokens,
        base=_base_model(cfg, run, base),
    )  # fmt: skip
    metrics = res.metrics | scores
    meta = {"stage": "ppo", "base": ref.sha256, "reward_model": rm_ref.sha256, "metrics": metrics}
    out_ref, uri = _publish_policy(cfg, run, pi, tok, out, meta)
    return RLHFStageResult(out_ref, metrics, None, uri, verdict)


def dpo_stage(
    cfg: Config,
    run: StageRun,
    policy: ArtifactArg,
    *,
    preferences: ArtifactArg | None = None,
    tokens: ArtifactArg | None = None,
    base: ArtifactArg | None = None,
    out: str | Path | None = None,
) -> RLHFStageResult:
    """DPO from the SFT ``policy`` against its frozen copy on the preference set; publishes the policy."""
    seed = _seed(cfg, "dpo")
    pi, tok, ref = _load_policy(cfg, run, policy)
    pref, pairs, heldout = _preferences(cfg, run, ref, preferences)
    run.log_params({"rlhf.dpo": cfg.rlhf.dpo.model_dump(mode="json")})
    splits = tasks_from_config(cfg.rlhf, cfg.seed)
    reference = copy.deepcopy(pi)
    with _progress(run, "dpo", cfg.rlhf.dpo.steps) as log_metrics:
        res = run_training(
            cfg, train_dpo, {"policy": pi, "reference": reference}, trained=("policy",),
            log_metrics=log_metrics, tokenizer=tok, pairs=pairs, cfg=cfg.rlhf.dpo, heldout=heldout, seed=seed,
        )  # fmt: skip
    scores, verdict = _evaluate(
        cfg, run, pi, reference, tok, splits, stage="dpo", baseline_name="sft", tokens=tokens,
        base=_base_model(cfg, run, base),
    )  # fmt: skip
    metrics = res.metrics | scores
    meta = {"stage": "dpo", "base": ref.sha256, "preferences": pref.sha256, "metrics": metrics}
    out_ref, uri = _publish_policy(cfg, run, pi, tok, out, meta)
    return RLHFStageResult(out_ref, metrics, pref, uri, verdict)


def grpo_stage(
    cfg: Config,
    run: StageRun,
    policy: ArtifactArg,
    *,
    reward_model: ArtifactArg | None = None,
    tokens: ArtifactArg | None = None,
    base: ArtifactArg | None = None,
    out: str | Path | None = None,
) -> RLHFStageResult:
    """GRPO from the SFT ``policy`` on the task prompts, scored by the task or by ``reward_model``."""
    seed = _seed(cfg, "grpo")
    pi, tok, ref = _load_policy(cfg, run, policy)
    rm, rm_ref = _load_reward(cfg, run, reward_model) if reward_model is not None else (None, None)
    run.log_params(
        {
            "rlhf.grpo": cfg.rlhf.grpo.model_dump(mode="json"),
            "rlhf.sampling": cfg.rlhf.sampling.model_dump(mode="json"),
        }
    )
    splits = tasks_from_config(cfg.rlhf, cfg.seed)
    reference = copy.deepcopy(pi)
    models = {"policy": pi, "reference": reference} | ({"reward_model": rm} if rm is not None else {})
    with _progress(run, "grpo", cfg.rlhf.grpo.iterations) as log_metrics:
        res = run_training(
            cfg, train_grpo, models, trained=("policy",), log_metrics=log_metrics,
            tokenizer=tok, examples=splits.train, cfg=cfg.rlhf.grpo, sampling=cfg.rlhf.sampling, seed=seed,
        )  # fmt: skip
    scores, verdict = _evaluate(
        cfg, run, pi, reference, tok, splits, rm, stage="grpo", baseline_name="sft", tokens=tokens,
        base=_base_model(cfg, run, base),
    )  # fmt: skip
    metrics = res.metrics | scores
    meta = {"stage": "grpo", "base": ref.sha256, "metrics": metrics}
    if rm_ref is not None:
        meta["reward_model"] = rm_ref.sha256
    out_ref, uri = _publish_policy(cfg, run, pi, tok, out, meta)
    return RLHFStageResult(out_ref, metrics, None, uri, verdict)
