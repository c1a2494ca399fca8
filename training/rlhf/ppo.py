"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022), in the shape of trl's PPO trainer.

Each iteration samples one reply per prompt from the policy with the KV cache, scores it with
the reward model at its final token, and turns that into per-token rewards: ``-kl_coef * (log
pi - log pi_ref)`` at every reply token, plus the score at the last one. GAE (Schulman et al.
2016) over the value model's estimates gives advantages, whitened over the batch; then several
epochs of minibatch updates of the clipped policy loss and the clipped value loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.rlhf_config import PPOConfig, SamplingConfig
from training.rlhf.distributed import LOCAL, Dist
from training.rlhf.heads import ScalarModel
from training.rlhf.logprobs import masked_mean, masked_whiten, token_logprobs
from training.rlhf.optim import LogFn, Optimizer, TrainResult, batch_order, freeze, minibatches, no_log
from training.rlhf.scoring import PromptSampler, iteration_metrics
from training.rlhf.tasks import TaskExample

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT

log = logging.getLogger(__name__)


# --- the pieces, each checked against hand-computed values in tests -----------------------------


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the reply positions of each row.

    Args:
        rewards: (B, T) per-token rewards.
        values: (B, T) value estimates of the state before each token.
        mask: (B, T) true at reply positions (contiguous per row); the value after the last reply
            token is 0 (the episode ends there).
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, (B, T), zero outside the mask; returns = advantages + values.
    """
    m = mask.to(rewards.dtype)
    rewards, values = rewards * m, values * m
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    T = rewards.size(1)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        adv[:, t] = running
    return adv, (adv + values) * m


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``mean(max(-A r, -A clip(r, 1-eps, 1+eps)))`` over reply tokens.

    Returns:
        The loss and ``{"clip_frac", "approx_kl"}`` (share of tokens where the clip was active;
        ``mean((log r)^2 / 2)``, the estimate of KL(old || new) trl logs).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {
        "clip_frac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask),
    }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 mean(max((V-R)^2, (clip(V, V_old +- eps) - R)^2))`` and its clip fraction."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    return loss, masked_mean((err_clipped > err).float(), mask).detach()


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    last: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``-kl_coef * (log pi - log pi_ref)`` at each reply token, plus ``scores`` at the last one.

    Args:
        scores: (B,) sequence scores.
        logprobs, ref_logprobs: (B, T-1) token log-probs under the policy and the reference.
        mask: (B, T-1) reply positions.
        last: (B,) index in the ids of each row's last token (its reward sits at position last-1).
        kl_coef: the KL penalty coefficient.

    Returns:
        ``(rewards, kl)``, both (B, T-1); ``kl`` is the per-token log-ratio (0 outside the mask).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.size(0), device=scores.device)
    rewards[rows, last - 1] += scores
    return rewards, kl


@dataclass
class KLController:
    """The KL coefficient: fixed, or adapted towards a target KL (Ziegler et al. 2019, eq. 2).

    ``value *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon`` after each batch of ``n`` sequences.
    """

    value: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon


# --- the loop -----------------------------------------------------------------------------------


def train_ppo(
    policy: GPT,
    reference: GPT,
    value_model: ScalarModel,
    tokenizer: Tokenizer,
    examples: Sequence[TaskExample],
    cfg: PPOConfig,
    sampling: SamplingConfig,
    *,
    reward_model: ScalarModel | None = None,
    seed: int = 0,
    log_metrics: LogFn = no_log,
    dist: Dist = LOCAL,
) -> TrainResult:
    """Optimise ``policy`` in place with PPO on the prompts of ``examples``.

    Args:
        policy: initialised from the SFT model; trained in place.
        reference: the frozen SFT model the KL penalty is measured against.
        value_model: the critic (trained in place), usually initialised from the reward model.
        tokenizer: the policy's tokenizer.
        examples: the prompts (their answers give the logged task score and accuracy).
        cfg: PPO hyper-parameters; ``cfg.reward`` picks the reward model or the task score.
        sampling: rollout length, temperature, missing-EOS penalty.
        reward_model: the frozen reward model (needed when ``cfg.reward`` is ``reward_model``).
        seed: prompt order and sampling.
        log_metrics: per iteration: reward, task_reward, accuracy, kl, kl_coef, entropy, clip_frac,
            approx_kl, policy_loss, value_loss, value_clip_frac, reply_len, eos_frac, rollout_tokens_per_s.
        dist: this worker's share of each rollout batch and minibatch (default: one worker, all of
            them); whitening, the reward normaliser and the KL controller use the global batch.
    """
    if not examples:
        raise ValueError("PPO needs prompts; check rlhf.tasks")
    if cfg.reward == "reward_model" and reward_model is None:
        raise ValueError(
            "rlhf.ppo.reward is 'reward_model' but no reward model was given; run the reward stage"
        )
    freeze(reference)
    if reward_model is not None:
        freeze(reward_model)
    # Dropout off everywhere: the ratio of new to old log-probs must compare the same function.
    policy.eval()
    value_model.eval()
    gen = torch.Generator().manual_seed(seed)  # the same on every worker: same batches, same order
    updates = cfg.iterations * cfg.epochs * -(-cfg.rollout_batch // cfg.minibatch)
    p_opt = Optimizer(policy, lr=cfg.lr, steps=updates, grad_clip=cfg.grad_clip)
    v_opt = Optimizer(value_model, lr=cfg.value_lr, steps=updates, grad_clip=cfg.grad_clip)
    kl_ctl = KLController(cfg.kl_coef, cfg.kl_target if cfg.adaptive_kl else None, cfg.kl_horizon)
    order = batch_order(len(examples), cfg.rollout_batch, gen)
    history: list[dict[str, float]] = []
    temp = sampling.temperature
    sample = PromptSampler(
        tokenizer, examples, sampling, cfg, reward_model=reward_model, seed=seed, dist=dist
    )
    train_policy, train_value = dist.wrap(policy), dist.wrap(value_model)
    for it in range(1, cfg.iterations + 1):
        idx = dist.shard(next(order))
        ro, sc, rollout_s = sample(policy, idx)
        with torch.no_grad():
            old_lp, _ = token_logprobs(policy, ro.ids, temperature=temp)
            ref_lp, _ = token_logprobs(reference, ro.ids, temperature=temp)
            old_values = value_model(ro.ids)[:, :-1] * ro.mask
            rewards, kl = per_token_rewards(sc.reward, old_lp, ref_lp, ro.mask, ro.last, kl_ctl.value)
            adv, returns = gae(rewards, old_values, ro.mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = dist.whiten(adv, ro.mask) if dist.world > 1 else masked_whiten(adv, ro.mask)
        batch = _Batch(ro.ids, ro.mask, old_lp, old_values, adv, returns)
        stats = _optimise(batch, (train_policy, p_opt), (train_value, v_opt), cfg, temp, gen, dist)
        seq_kl = dist.mean_metrics({"kl": float(kl.sum(-1).mean())})["kl"]
        row = iteration_metrics(ro, sc, rollout_s, stats, dist, kl=seq_kl, kl_coef=kl_ctl.value)
        kl_ctl.update(seq_kl, len(ro) * dist.world)
        history.append({"step": it, **row})
        log_metrics(row, it)
    last = history[-1]
    log.info("PPO: %d iterations, reward %.3f, kl %.3f", cfg.iterations, last["reward"], last["kl"])
    return TrainResult(metrics={k: v for k, v in last.items() if k != "step"}, history=history)


@dataclass(frozen=True)
class _Batch:
    """One rollout batch as the PPO epochs see it: fixed before the first update."""

    ids: torch.Tensor
    mask: torch.Tensor
    old_lp: torch.Tensor
    old_values: torch.Tensor
    adv: torch.Tensor
    returns: torch.Tensor


def _optimise(
    batch: _Batch,
    policy: tuple[torch.nn.Module, Optimizer],
    value: tuple[torch.nn.Module, Optimizer],
    cfg: PPOConfig,
    temp: float,
    gen: torch.Generator,
    dist: Dist,
) -> dict[str, list[float]]:
    """``cfg.epochs`` passes of clipped policy and value updates over minibatches; their losses and stats."""
    (train_policy, p_opt), (train_value, v_opt) = policy, value
    dev = batch.ids.device
    stats: dict[str, list[float]] = {
        k: [] for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl", "value_clip_frac", "entropy")
    }
    for _ in range(cfg.epochs):
        for mb in minibatches(len(batch.ids), cfg.minibatch // dist.world, gen):
            mb = mb.to(dev)
            m = batch.mask[mb]
            # Token means over every worker's minibatch rows, as with one worker.
            share = dist.token_share(m.sum())
            lp, ent = token_logprobs(train_policy, batch.ids[mb], temperature=temp, with_entropy=True)
            assert ent is not None
            pg_loss, pg_stats = ppo_policy_loss(lp, batch.old_lp[mb], batch.adv[mb], m, cfg.clip_range)
            entropy = masked_mean(ent, m)
            p_opt.step((pg_loss - cfg.entropy_coef * entropy) * share)
            values = train_value(batch.ids[mb])[:, :-1]
            vf_loss, vf_clip = ppo_value_loss(
                values, batch.old_values[mb], batch.returns[mb], m, cfg.value_clip
            )
            v_opt.step(cfg.vf_coef * vf_loss * share)
            for k, v in (
                ("policy_loss", pg_loss),
                ("value_loss", vf_loss),
                ("clip_frac", pg_stats["clip_frac"]),
                ("approx_kl", pg_stats["approx_kl"]),
                ("value_clip_frac", vf_clip),
                ("entropy", entropy),
            ):
                stats[k].append(v.item())
    return stats
