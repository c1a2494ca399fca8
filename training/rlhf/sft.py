"""Supervised fine-tuning: next-token loss on the reply tokens only.

The prompt is context, not a target: its positions get the ignore label, so the model is never
pushed to write user messages (and a test checks that their gradient is exactly zero).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from core.rlhf_config import SFTConfig
from training.rlhf.distributed import LOCAL, Dist
from training.rlhf.optim import LogFn, Optimizer, TrainResult, batch_order, no_log
from training.rlhf.sequences import Prompt, SequenceBatch, collate, encode_reply, pad_id

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT

log = logging.getLogger(__name__)
IGNORE = -100  # the ignore index of GPT.forward's cross-entropy


def sft_targets(batch: SequenceBatch) -> torch.Tensor:
    """Targets (B, T-1): the next token at reply positions, ``IGNORE`` at prompt and padding."""
    return batch.ids[:, 1:].masked_fill(~batch.mask, IGNORE)


def sft_loss(model: GPT, batch: SequenceBatch) -> torch.Tensor:
    """Mean cross-entropy over the reply tokens of ``batch`` (prompt tokens contribute nothing)."""
    _, loss = model(batch.ids[:, :-1], targets=sft_targets(batch), return_logits=False)
    assert loss is not None
    return loss


def encode_sft(
    tokenizer: Tokenizer, examples: Sequence[tuple[Prompt, str]], block_size: int
) -> tuple[list[list[int]], list[int]]:
    """Encode (prompt, reply) examples; raises naming every example longer than the context."""
    seqs, starts, too_long = [], [], []
    for i, (prompt, reply) in enumerate(examples):
        ids, start = encode_reply(tokenizer, prompt, reply)
        if len(ids) > block_size:
            too_long.append((i, len(ids)))
        seqs.append(ids)
        starts.append(start)
    if too_long:
        raise ValueError(
            f"SFT examples {too_long[:5]} (index, tokens) are longer than the context ({block_size}); "
            "shorten the tasks or use a model with a longer context"
        )
    return seqs, starts


def _global_row(
    row: dict[str, float],
    reply_loss: torch.Tensor,
    n_reply: torch.Tensor,
    ptx: torch.Tensor | None,
    ptx_coef: float,
    dist: Dist,
) -> dict[str, float]:
    """The logged row of the global batch: token-mean reply loss, mean ptx loss, summed throughput."""
    total = float(dist.sum(n_reply.double()))
    loss = float(dist.sum(reply_loss.detach().double() * n_reply)) / max(total, 1.0)
    out = dist.mean_metrics(row, summed=("tokens_per_s",))
    if ptx is not None:
        loss += ptx_coef * out["ptx_loss"]
    return out | {"loss": loss}


def train_sft(
    model: GPT,
    tokenizer: Tokenizer,
    examples: Sequence[tuple[Prompt, str]],
    cfg: SFTConfig,
    *,
    seed: int = 0,
    log_metrics: LogFn = no_log,
    log_every: int = 10,
    pretrain_tokens: torch.Tensor | None = None,
    dist: Dist = LOCAL,
) -> TrainResult:
    """Fine-tune ``model`` in place on (prompt, reply) examples.

    Args:
        model: the GPT (trained in place; left in eval mode).
        tokenizer: its tokenizer.
        examples: (prompt messages or text, reply) pairs.
        cfg: steps, batch size, learning rate.
        seed: batch order.
        log_metrics: called with ``{"loss", "lr", "grad_norm", "tokens_per_s"}`` every ``log_every`` steps.
        log_every: steps between logged metrics (the last step is always logged).
        pretrain_tokens: a 1-D tensor of pretraining token ids; with ``cfg.ptx_coef > 0`` each step
            adds ``ptx_coef`` times the next-token loss on ``cfg.ptx_batch`` random windows of it.
        dist: this worker's share of each batch (default: one worker, the whole batch).

    Raises:
        ValueError: no examples, or one longer than the context.
    """
    if not examples:
        raise ValueError("SFT needs at least one (prompt, reply) example; check rlhf.tasks")
    dev = next(model.parameters()).device
    seqs, starts = encode_sft(tokenizer, examples, model.cfg.block_size)
    pad = pad_id(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    opt = Optimizer(
        model,
        lr=cfg.lr,
        steps=cfg.steps,
        warmup=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )
    model.train()
    train_model = dist.wrap(model)
    history: list[dict[str, float]] = []
    order = batch_order(len(seqs), cfg.batch_size, gen)
    t0, tokens = time.perf_counter(), 0
    for step in range(1, cfg.steps + 1):
        idx = dist.shard(next(order))
        batch = collate([seqs[i] for i in idx], [starts[i] for i in idx], pad, dev)
        n_reply = batch.mask.sum()
        reply_loss = sft_loss(train_model, batch)
        # With several workers the loss is a mean over every worker's reply tokens, as with one.
        loss = reply_loss * dist.token_share(n_reply) if dist.world > 1 else reply_loss
        ptx = None
        if cfg.ptx_coef > 0 and pretrain_tokens is not None:
            T = model.cfg.block_size
            starts_ = torch.randint(len(pretrain_tokens) - T - 1, (cfg.ptx_batch,), generator=gen)
            win = torch.stack([pretrain_tokens[s : s + T + 1] for s in dist.shard(starts_.tolist())]).to(dev)
            x, y = win[:, :-1].contiguous(), win[:, 1:].contiguous()
            _, ptx = train_model(x, targets=y, return_logits=False)
            loss = loss + cfg.ptx_coef * ptx
        lr = opt.lr
        norm = opt.step(loss)
        tokens += int(n_reply)
        if step % log_every == 0 or step == cfg.steps:
            row = {
                "loss": loss.item(),
                "lr": lr,
                "grad_norm": norm,
                **({"ptx_loss": ptx.item()} if ptx is not None else {}),
                "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9),
            }
            if dist.world > 1:
                row = _global_row(row, reply_loss, n_reply, ptx, cfg.ptx_coef, dist)
            history.append({"step": step, **row})
            log_metrics(row, step)
    model.eval()
    log.info("SFT: %d steps, final loss %.3f", cfg.steps, history[-1]["loss"])
    return TrainResult(metrics={"loss": history[-1]["loss"], "steps": cfg.steps}, history=history)
