"""Evaluation of a policy on held-out task prompts: accuracy, reward and KL to the reference.

Accuracy and task reward come from greedy replies (the policy's best answer, deterministic).
The KL is the sequence KL(pi || ref) on replies *sampled* from the policy at temperature 1, each
position contributing the exact KL between the two next-token distributions (the chain rule makes
their sum an unbiased estimate of the sequence KL, with far less variance than log-ratios).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from core.rlhf_config import PolicyEvalConfig
from training.rlhf.logprobs import full_kl
from training.rlhf.rollout import Rollout, rollout
from training.rlhf.scoring import decode_replies, reward_model_scores
from training.rlhf.sequences import encode_prompt, pad_id
from training.rlhf.tasks import TaskExample, is_correct, score

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT
    from training.rlhf.heads import ScalarModel


def _rollouts(
    model: GPT,
    tokenizer: Tokenizer,
    examples: Sequence[TaskExample],
    cfg: PolicyEvalConfig,
    *,
    temperature: float,
    num_samples: int,
    seed: int,
) -> list[tuple[Rollout, list[TaskExample]]]:
    prompts = [encode_prompt(tokenizer, ex.messages()) for ex in examples]
    out = []
    for i in range(0, len(examples), cfg.batch_size):
        chunk = prompts[i : i + cfg.batch_size]
        ro = rollout(
            model,
            [p for p, _ in chunk],
            max_new_tokens=cfg.max_new_tokens,
            stop_ids=chunk[0][1],
            pad_id=pad_id(tokenizer),
            num_samples=num_samples,
            temperature=temperature,
            seed=seed + i,
        )
        out.append((ro, list(examples[i : i + cfg.batch_size])))
    return out


@dataclass
class PolicyScores:
    """A policy's held-out scores: the metrics, and per item what the stage rules' intervals need."""

    metrics: dict[str, float]
    correct: list[float] = field(default_factory=list)  # per held-out prompt: 1 correct, 0 not
    reward: list[float] = field(default_factory=list)  # per held-out prompt: the task score
    kl: list[float] = field(default_factory=list)  # per sampled reply: KL to the reference (nats)


@torch.no_grad()
def evaluate_policy(
    model: GPT,
    tokenizer: Tokenizer,
    eval_prompts: Sequence[TaskExample],
    reference: GPT | None = None,
    reward_model: ScalarModel | None = None,
    *,
    cfg: PolicyEvalConfig | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Task accuracy, mean reward and KL to ``reference`` of ``model`` on held-out prompts.

    Args:
        model: the policy.
        tokenizer: its tokenizer.
        eval_prompts: held-out task examples (``TaskSplits.eval``).
        reference: the model the KL is measured against (the SFT policy); no ``kl`` without it.
        reward_model: also report its mean score of the greedy replies (``rm_reward``).
        cfg: reply length, KL samples per prompt, batch size (defaults: ``PolicyEvalConfig()``).
        seed: the KL samples' seed.

    Returns:
        ``accuracy``, ``reward`` (mean task score), ``accuracy.<family>``, ``reply_len``, ``eos_frac``,
        and when asked ``rm_reward`` and ``kl`` (nats per reply).

    Raises:
        ValueError: no evaluation prompts.
    """
    if not eval_prompts:
        raise ValueError("evaluate_policy needs at least one held-out prompt; check rlhf.tasks.eval_size")
    cfg = cfg or PolicyEvalConfig()
    models = [m for m in (model, reference, reward_model) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()  # no dropout: the greedy replies and the KL are of the function being served
    try:
        return _evaluate(model, tokenizer, eval_prompts, reference, reward_model, cfg, seed).metrics
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


@torch.no_grad()
def score_policy(
    model: GPT,
    tokenizer: Tokenizer,
    eval_prompts: Sequence[TaskExample],
    reference: GPT | None = None,
    reward_model: ScalarModel | None = None,
    *,
    cfg: PolicyEvalConfig | None = None,
    seed: int = 0,
) -> PolicyScores:
    """:func:`evaluate_policy`'s metrics with the per-item scores behind them (for the stage rules)."""
    if not eval_prompts:
        raise ValueError("score_policy needs at least one held-out prompt; check rlhf.tasks.eval_size")
    cfg = cfg or PolicyEvalConfig()
    models = [m for m in (model, reference, reward_model) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        return _evaluate(model, tokenizer, eval_prompts, reference, reward_model, cfg, seed)
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def _evaluate(
    model: GPT,
    tokenizer: Tokenizer,
    eval_prompts: Sequence[TaskExample],
    reference: GPT | None,
    reward_model: ScalarModel | None,
    cfg: PolicyEvalConfig,
    seed: int,
) -> PolicyScores:
    correct: list[bool] = []
    scores: list[float] = []
    fams: dict[str, list[bool]] = defaultdict(list)
    rm: list[float] = []
    lens: list[float] = []
    eos: list[float] = []
    for ro, exs in _rollouts(model, tokenizer, eval_prompts, cfg, temperature=0.0, num_samples=1, seed=seed):
        texts = decode_replies(ro, tokenizer)
        for ex, text in zip(exs, texts, strict=True):
            ok = is_correct(ex, text)
            correct.append(ok)
            fams[ex.family].append(ok)
            scores.append(score(ex, text))
        lens += ro.reply_lens.float().tolist()
        eos += ro.finished.float().tolist()
        if reward_model is not None:
            rm += reward_model_scores(reward_model, tokenizer, [e.messages() for e in exs], texts).tolist()
    out = {
        "accuracy": sum(correct) / len(correct),
        "reward": sum(scores) / len(scores),
        "reply_len": sum(lens) / len(lens),
        "eos_frac": sum(eos) / len(eos),
        **{f"accuracy.{f}": sum(v) / len(v) for f, v in sorted(fams.items())},
    }
    if rm:
        out["rm_reward"] = sum(rm) / len(rm)
    kls: list[float] = []
    if reference is not None:
        for ro, _ in _rollouts(
            model, tokenizer, eval_prompts, cfg, temperature=1.0, num_samples=cfg.kl_samples, seed=seed + 1
        ):
            per_pos = full_kl(model, reference, ro.ids)
            kls += (per_pos * ro.mask).sum(-1).tolist()
        out["kl"] = sum(kls) / len(kls)
    return PolicyScores(out, [float(c) for c in correct], scores, kls)
