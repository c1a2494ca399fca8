"""GRPO: group-relative advantages and loss by hand; a tiny SFT → GRPO run raises the task reward."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core.rlhf_config import GRPOConfig, SamplingConfig
from training.rlhf.grpo import group_advantages, grpo_loss, train_grpo
from training.rlhf.rollout import rollout
from training.rlhf.scoring import score_rollout
from training.rlhf.sequences import encode_prompt, pad_id


def test_group_advantages() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    assert group_advantages(r, 4, scale=False).tolist() == pytest.approx(
        [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]
    )
    # Sample std of [1, 0, 0, 0] is 0.5; a group with one reward everywhere gets no signal.
    scaled = group_advantages(r, 4, scale=True)
    assert scaled.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0], abs=1e-3)


def test_grpo_loss_equals_hand_computed_value() -> None:
    old = torch.zeros(2, 3)
    new = torch.tensor([[math.log(1.5), 0.0, 0.0], [0.0, 0.0, 0.0]])
    ref = torch.tensor([[math.log(1.5), math.log(2.0), 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = grpo_loss(new, old, ref, adv, mask, clip_range=0.2, kl_coef=0.1)
    # Row 0: token 0 ratio 1.5 clipped to 1.2, k3 KL 0 → -1.2; token 1 ratio 1, KL 2 - ln 2 - 1 →
    # -(1 - 0.1 (1 - ln 2)). Row 1: -(-1) = 1. Each reply is averaged over its own tokens first.
    row0 = (-1.2 - (1 - 0.1 * (1 - math.log(2)))) / 2
    assert loss.item() == pytest.approx((row0 + 1.0) / 2)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    assert stats["kl"].item() == pytest.approx((1 - math.log(2)) / 3)


def _sampled_reward(model, tokenizer, examples) -> float:
    prompts = [encode_prompt(tokenizer, ex.messages()) for ex in examples]
    ro = rollout(
        model, [p for p, _ in prompts], max_new_tokens=16, stop_ids=prompts[0][1],
        pad_id=pad_id(tokenizer), num_samples=8, seed=123,
    )  # fmt: skip
    return score_rollout(ro, examples, tokenizer, source="task").reward.mean().item()


def test_sft_then_grpo_raises_the_mean_task_reward(sft_model, tokenizer, splits) -> None:
    prompts = splits.train[:16]
    reference = copy.deepcopy(sft_model)
    before = _sampled_reward(sft_model, tokenizer, prompts)
    logged: list[dict[str, float]] = []
    res = train_grpo(
        sft_model,
        reference,
        tokenizer,
        prompts,
        GRPOConfig(iterations=60, prompts_per_step=8, group_size=8, minibatch=32, lr=3e-3),
        SamplingConfig(max_new_tokens=16),
        seed=1,
        log_metrics=lambda m, step: logged.append(dict(m)),
    )
    after = _sampled_reward(sft_model, tokenizer, prompts)
    assert after > before + 0.1, (before, after)
    assert len(logged) == 60
    assert {"reward", "kl", "entropy", "clip_frac", "accuracy", "task_reward"} <= logged[0].keys()
    assert res.metrics["kl"] > 0  # it moved away from the reference, and says how far
