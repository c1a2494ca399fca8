"""DPO: the loss equals its formula; training separates chosen from rejected."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core.rlhf_config import DPOConfig
from training.rlhf.dpo import dpo_accuracy, dpo_loss, train_dpo


def test_dpo_loss_equals_its_formula() -> None:
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -3.0]), torch.tensor([-2.0, -2.5])
    beta = 0.5
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)
    # Pair 0: margin 0.5 * ((-1 + 2) - (-3 + 2)) = 1; pair 1: 0.5 * ((-4 + 3) - (-2 + 2.5)) = -0.75.
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.75))) / 2
    assert loss.item() == pytest.approx(want)
    assert chosen.tolist() == pytest.approx([0.5, -0.5]) and rejected.tolist() == pytest.approx([-0.5, 0.25])
    smoothed, _, _ = dpo_loss(pc[:1], pr[:1], rc[:1], rr[:1], beta, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1)))
    # At the start (policy = reference) every pair costs log 2.
    same, _, _ = dpo_loss(rc, rr, rc, rr, beta)
    assert same.item() == pytest.approx(math.log(2))


def test_dpo_separates_chosen_from_rejected(sft_model, tokenizer, splits) -> None:
    reference = copy.deepcopy(sft_model)
    pairs = splits.preference_pairs()[:64]
    before = dpo_accuracy(sft_model, reference, tokenizer, pairs, beta=0.1)
    assert before["margin"] == pytest.approx(0.0, abs=1e-5)
    res = train_dpo(sft_model, reference, tokenizer, pairs, DPOConfig(steps=60, batch_size=16, lr=1e-3))
    after = dpo_accuracy(sft_model, reference, tokenizer, pairs, beta=0.1)
    assert after["accuracy"] > 0.9 and after["margin"] > 0.5
    assert {"loss", "reward_chosen", "reward_rejected", "margin", "accuracy"} <= res.metrics.keys()
    assert all(p.grad is None or not p.requires_grad for p in reference.parameters())


def test_the_nll_term_keeps_the_chosen_replies_likely(sft_model, tokenizer, splits) -> None:
    """Plain DPO may widen the margin by lowering both replies; with nll_coef the chosen ones stay likely."""
    pairs = splits.preference_pairs()[:64]
    nll = {}
    for coef in (0.0, 1.0):
        policy, reference = copy.deepcopy(sft_model), copy.deepcopy(sft_model)
        cfg = DPOConfig(steps=60, batch_size=16, lr=1e-3, nll_coef=coef)
        train_dpo(policy, reference, tokenizer, pairs, cfg)
        assert dpo_accuracy(policy, reference, tokenizer, pairs, beta=0.1)["accuracy"] > 0.8  # separates
        res = train_dpo(copy.deepcopy(policy), policy, tokenizer, pairs, cfg.model_copy(update={"steps": 1}))
        nll[coef] = res.metrics["chosen_nll"]  # of the trained policy, on the same pairs
    assert nll[1.0] < nll[0.0], nll
