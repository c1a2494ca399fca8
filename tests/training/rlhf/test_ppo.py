"""PPO pieces against hand-computed values on toy batches."""

from __future__ import annotations

import math

import pytest
import torch

from training.rlhf.ppo import KLController, gae, per_token_rewards, ppo_policy_loss, ppo_value_loss


def test_gae_equals_hand_computed_values() -> None:
    rewards = torch.tensor([[9.0, 0.0, 0.0, 1.0], [0.5, -1.0, 7.0, 7.0]])
    values = torch.tensor([[9.0, 0.5, 0.2, 0.1], [0.3, 0.4, 5.0, 5.0]])
    mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    adv, ret = gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=0.9)
    # Row 0 by hand: deltas 0.2-0.5, 0.1-0.2, 1-0.1; A2 = 0.9, A1 = -0.1 + 0.9 A2, A0 = -0.3 + 0.9 A1.
    assert adv[0].tolist() == pytest.approx([0.0, 0.339, 0.71, 0.9])
    assert ret[0].tolist() == pytest.approx([0.0, 0.839, 0.91, 1.0])
    adv, ret = gae(rewards[1:], values[1:], mask[1:], gamma=0.9, lam=0.5)
    # Row 1: the episode ends after position 1 (the value beyond it is 0, not 5):
    # A1 = -1 - 0.4 = -1.4; A0 = (0.5 + 0.9 * 0.4 - 0.3) + 0.9 * 0.5 * A1 = -0.07.
    assert adv[0].tolist() == pytest.approx([-0.07, -1.4, 0.0, 0.0])
    assert ret[0].tolist() == pytest.approx([0.23, -1.0, 0.0, 0.0])


def test_policy_loss_equals_hand_computed_value() -> None:
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]]))
    adv = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, stats = ppo_policy_loss(new, old, adv, mask, clip_range=0.2)
    # Per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5,
    # max(2.2, 2.2) = 2.2; the masked fourth token does not count.
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3)
    assert stats["clip_frac"].item() == pytest.approx(1 / 3)
    want_kl = 0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 3
    assert stats["approx_kl"].item() == pytest.approx(want_kl)


def test_value_loss_equals_hand_computed_value() -> None:
    values, old = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.1])
    returns, mask = torch.tensor([2.0, 0.0]), torch.tensor([True, True])
    loss, clip_frac = ppo_value_loss(values, old, returns, mask, clip_range=0.2)
    # Row 0: V clipped to 0.7, max((1-2)^2, (0.7-2)^2) = 1.69; row 1: clipped to 0.0, both errors 0.
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.0) / 2)
    assert clip_frac.item() == pytest.approx(0.5)


def test_per_token_rewards_put_the_score_on_the_last_reply_token() -> None:
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    mask = torch.tensor([[False, True, True]])
    rewards, kl = per_token_rewards(torch.tensor([2.0]), lp, ref, mask, last=torch.tensor([3]), kl_coef=0.1)
    assert kl.tolist() == [[0.0, 0.0, -1.0]]
    assert rewards[0].tolist() == pytest.approx([0.0, 0.0, 2.1])


def test_kl_controller_fixed_and_adaptive() -> None:
    fixed = KLController(0.1)
    fixed.update(5.0, 100)
    assert fixed.value == 0.1
    ada = KLController(0.1, target=1.0, horizon=100)
    ada.update(2.0, 10)  # error clipped to +0.2
    assert ada.value == pytest.approx(0.1 * 1.02)
    ada.update(0.5, 50)  # error -0.5 clipped to -0.2
    assert ada.value == pytest.approx(0.1 * 1.02 * 0.9)
