"""Reward model: Bradley-Terry loss, learning to rank, the ``reward_model`` artifact round trip."""

from __future__ import annotations

import math

import pytest
import torch

from catalog.artifacts import ArtifactError
from core.rlhf_config import RewardConfig
from training.rlhf.heads import load_reward_model, save_reward_model, scalar_model_from
from training.rlhf.reward import bradley_terry_loss, reward_accuracy, train_reward


def test_bradley_terry_loss_equals_its_formula() -> None:
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.5])
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(want)


def test_reward_model_learns_to_rank_and_round_trips(sft_model, tokenizer, splits, tmp_path) -> None:
    rm = scalar_model_from(sft_model)
    pairs, heldout = splits.preference_pairs(), splits.eval_pairs()
    assert reward_accuracy(rm, tokenizer, heldout)["accuracy"] == 0.0  # zero head: every score ties
    logged: list[dict[str, float]] = []
    res = train_reward(
        rm, tokenizer, pairs, RewardConfig(steps=100, batch_size=32, lr=3e-3, eval_every=50),
        heldout=heldout, log_metrics=lambda m, step: logged.append(dict(m)),
    )  # fmt: skip
    assert res.metrics["train_accuracy"] > 0.7, res.metrics
    assert res.metrics["heldout_accuracy"] > 0.65, res.metrics
    assert sum("heldout_accuracy" in m for m in logged) == 2
    # The backbone is a copy: training the reward model leaves the policy alone.
    assert not torch.equal(rm.gpt.transformer.wte.weight, sft_model.transformer.wte.weight)

    ref = save_reward_model(
        rm, tokenizer, root=tmp_path, metadata={"accuracy": res.metrics["heldout_accuracy"]}
    )
    loaded, tok, ref2 = load_reward_model(ref)
    assert ref2.sha256 == ref.sha256 and tok.get_vocab_size() == tokenizer.get_vocab_size()
    ids = torch.randint(0, 300, (3, 12))
    last = torch.tensor([11, 5, 7])
    with torch.no_grad():
        assert torch.allclose(loaded.score(ids, last), rm.score(ids, last), atol=1e-6)
    (ref.path / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="does not match its recorded sha256"):
        load_reward_model(ref)
