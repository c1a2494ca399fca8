"""SFT: the prompt gets zero gradient, the reply is learned."""

from __future__ import annotations

import torch

from core.rlhf_config import SFTConfig
from training.rlhf.evaluate import evaluate_policy
from training.rlhf.sequences import collate, encode_reply
from training.rlhf.sft import IGNORE, sft_loss, sft_targets, train_sft


def test_prompt_tokens_give_zero_gradient(model, tokenizer) -> None:
    rows = [
        encode_reply(tokenizer, [{"role": "user", "content": "Repeat: cat dog"}], "cat dog"),
        encode_reply(tokenizer, [{"role": "user", "content": "What is 3 plus 4?"}], "7"),
    ]
    batch = collate([ids for ids, _ in rows], [s for _, s in rows], pad=0)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, out: torch.Tensor) -> None:
        out.retain_grad()
        captured["hidden"] = out

    # The final hidden states: the output head reads them (fused with the loss on CPU), nothing else.
    handle = model.transformer.ln_f.register_forward_hook(keep)
    try:
        sft_loss(model, batch).backward()
    finally:
        handle.remove()
    grad = captured["hidden"].grad  # (B, T-1, C): d loss / d hidden state at every position
    assert grad is not None
    per_position = grad.abs().sum(-1)
    assert float(per_position[~batch.mask].abs().max()) == 0.0  # prompt and padding: exactly zero
    assert bool((per_position[batch.mask] > 0).all())  # every reply token (end marker included) learns
    targets = sft_targets(batch)
    assert bool((targets[~batch.mask] == IGNORE).all())


def test_sft_learns_the_replies(model, tokenizer, splits) -> None:
    seen: list[tuple[int, float]] = []
    res = train_sft(
        model,
        tokenizer,
        splits.sft_pairs(),
        SFTConfig(steps=60, batch_size=32, lr=1e-2, warmup_steps=5),
        log_metrics=lambda m, step: seen.append((step, m["loss"])),
    )
    assert [s for s, _ in seen] == [10, 20, 30, 40, 50, 60]
    assert res.history[-1]["loss"] < res.history[0]["loss"] - 1.0
    assert evaluate_policy(model, tokenizer, splits.train[:32])["eos_frac"] > 0.9  # learnt to stop


def test_ptx_mixes_pretraining_windows_into_each_step(model, tokenizer, splits) -> None:
    """With ptx_coef > 0 each step also fits pretraining text, and that loss goes down too."""
    import copy

    text = " ".join(ex.prompt + " " + ex.answer for ex in splits.train[:200])
    stream = torch.tensor(tokenizer.encode(text).ids * 4)
    m = copy.deepcopy(model)
    cfg = SFTConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=2, ptx_coef=1.0, ptx_batch=4)
    res = train_sft(m, tokenizer, splits.sft_pairs()[:64], cfg, log_every=5, pretrain_tokens=stream)
    ptx = [row["ptx_loss"] for row in res.history]
    assert len(ptx) == 6 and ptx[-1] < ptx[0]
    plain = train_sft(
        copy.deepcopy(model), tokenizer, splits.sft_pairs()[:64], cfg.model_copy(update={"ptx_coef": 0.0})
    )
    assert all("ptx_loss" not in row for row in plain.history)
