"""Group Relative Policy Optimisation (Shao et al. 2024, DeepSeekMath): PPO's clipped loss, no critic.

Each prompt is sampled ``group_size`` times; a reply's advantage is its reward minus the group
mean, divided by the group's standard deviation (``scale_rewards``; off gives the unbiased form
of Liu et al. 2025, "Dr. GRPO"), and applies to every token of the reply. The KL to the reference
is a loss term (the k3 estimator ``exp(q - p) - (q - p) - 1``, unbiased and non-negative)
rather than a reward penalty. Verifiable task scores make a reward model unnecessary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from core.rlhf_config import GRPOConfig, SamplingConfig
from training.rlhf.distributed import LOCAL, Dist
from training.rlhf.logprobs import masked_mean, token_logprobs
from training.rlhf.optim import LogFn, Optimizer, TrainResult, batch_order, freeze, minibatches, no_log
from training.rlhf.rollout import Rollout
from training.rlhf.scoring import PromptSampler, iteration_metrics
from training.rlhf.tasks import TaskExample

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT
    from training.rlhf.heads import ScalarModel

log = logging.getLogger(__name__)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """(r - mean of its group) [/ (std of its group + eps)] for rewards (N,) in groups of adjacent rows."""
    g = rewards.view(-1, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate plus ``kl_coef`` x k3 KL, averaged per reply then over replies.

    Args:
        logprobs, old_logprobs, ref_logprobs: (B, T-1) token log-probs under the current policy,
            the policy that sampled, and the reference.
        advantages: (B,) one advantage per reply.
        mask: (B, T-1) reply positions.
        clip_range: ratio clip epsilon.
        kl_coef: weight of the KL term.

    Returns:
        The loss and ``{"clip_frac", "kl"}`` (mean per-token k3 KL).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    a = advantages.unsqueeze(1)
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_range, 1 + clip_range) * a)
    d = ref_logprobs - logprobs
    kl = torch.exp(d) - d - 1  # k3: E_pi[.] = KL(pi || ref), each sample >= 0
    per_token = -(surrogate - kl_coef * kl)
    loss = masked_mean(per_token, mask, dim=1).mean()  # each reply weighs the same, as in the paper
    clipped = (ratio < 1 - clip_range) & (a < 0) | (ratio > 1 + clip_range) & (a > 0)
    return loss, {
        "clip_frac": masked_mean(clipped.float(), mask).detach(),
        "kl": masked_mean(kl, mask).detach(),
    }


def train_grpo(
    policy: GPT,
    reference: GPT,
    tokenizer: Tokenizer,
    examples: Sequence[TaskExample],
    cfg: GRPOConfig,
    sampling: SamplingConfig,
    *,
    reward_model: ScalarModel | None = None,
    seed: int = 0,
    log_metrics: LogFn = no_log,
    dist: Dist = LOCAL,
) -> TrainResult:
    """Optimise ``policy`` in place with GRPO on the prompts of ``examples``.

    Args:
        policy: initialised from the SFT model; trained in place.
        reference: the frozen SFT model.
        tokenizer: the policy's tokenizer.
        examples: the prompts with their checkable answers.
        cfg: group size, clip, KL weight; ``cfg.reward`` picks the task score or the reward model.
        sampling: rollout length, temperature, missing-EOS penalty.
        reward_model: needed when ``cfg.reward`` is ``reward_model``.
        seed: prompt order and sampling.
        log_metrics: per iteration: reward, reward_std, task_reward, accuracy, kl, entropy,
            clip_frac, loss, reply_len, eos_frac, rollout_tokens_per_s.
        dist: this worker's share of each rollout batch's prompts (whole groups) and minibatches
            (default: one worker, all of them); the reward normaliser is fitted on the global batch.
    """
    if not examples:
        raise ValueError("GRPO needs prompts; check rlhf.tasks")
    if cfg.reward == "reward_model" and reward_model is None:
        raise ValueError(
            "rlhf.grpo.reward is 'reward_model' but no reward model was given; run the reward stage"
        )
    freeze(reference)
    if reward_model is not None:
        freeze(reward_model)
    policy.eval()
    gen = torch.Generator().manual_seed(seed)  # the same on every worker: same batches, same order
    n_rows = cfg.prompts_per_step * cfg.group_size
    updates = cfg.iterations * cfg.epochs * -(-n_rows // cfg.minibatch)
    opt = Optimizer(policy, lr=cfg.lr, steps=updates, grad_clip=cfg.grad_clip)
    order = batch_order(len(examples), cfg.prompts_per_step, gen)
    temp = sampling.temperature
    sample = PromptSampler(
        tokenizer, examples, sampling, cfg, reward_model=reward_model, seed=seed, dist=dist
    )
    train_policy = dist.wrap(policy)
    history: list[dict[str, float]] = []
    for it in range(1, cfg.iterations + 1):
        idx = dist.shard(next(order))
        ro, sc, rollout_s = sample(policy, idx, num_samples=cfg.group_size)
        adv = group_advantages(sc.reward, cfg.group_size, cfg.scale_rewards)
        with torch.no_grad():
            old_lp, _ = token_logprobs(policy, ro.ids, temperature=temp)
            ref_lp, _ = token_logprobs(reference, ro.ids, temperature=temp)
        stats = _optimise(ro, old_lp, ref_lp, adv, (train_policy, opt), cfg, temp, gen, dist)
        seq_kl = float(((old_lp - ref_lp) * ro.mask).sum(-1).mean())
        row = iteration_metrics(
            ro,
            sc,
            rollout_s,
            stats,
            dist,
            kl=seq_kl,
            reward_std=float(sc.reward.view(-1, cfg.group_size).std(dim=1).mean()),
        )
        history.append({"step": it, **row})
        log_metrics(row, it)
    last = history[-1]
    log.info("GRPO: %d iterations, reward %.3f, kl %.3f", cfg.iterations, last["reward"], last["kl"])
    return TrainResult(metrics={k: v for k, v in last.items() if k != "step"}, history=history)


def _optimise(
    ro: Rollout,
    old_lp: torch.Tensor,
    ref_lp: torch.Tensor,
    adv: torch.Tensor,
    policy: tuple[torch.nn.Module, Optimizer],
    cfg: GRPOConfig,
    temp: float,
    gen: torch.Generator,
    dist: Dist,
) -> dict[str, list[float]]:
    """``cfg.epochs`` passes of clipped updates with the KL penalty over minibatches of the group rows."""
    train_policy, opt = policy
    stats: dict[str, list[float]] = {"loss": [], "clip_frac": [], "token_kl": [], "entropy": []}
    for _ in range(cfg.epochs):
        # Each reply weighs the same in the loss, so equal shares average to the global loss.
        for mb in minibatches(len(ro), cfg.minibatch // dist.world, gen):
            mb = mb.to(ro.ids.device)
            lp, ent = token_logprobs(train_policy, ro.ids[mb], temperature=temp, with_entropy=True)
            assert ent is not None
            loss, st = grpo_loss(
                lp, old_lp[mb], ref_lp[mb], adv[mb], ro.mask[mb], cfg.clip_range, cfg.kl_coef
            )
            opt.step(loss)
            stats["loss"].append(loss.item())
            stats["clip_frac"].append(float(st["clip_frac"]))
            stats["token_kl"].append(float(st["kl"]))
            stats["entropy"].append(float(masked_mean(ent.detach(), ro.mask[mb])))
    return stats
