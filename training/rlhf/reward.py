"""Reward model: a GPT backbone with a scalar head, trained with the Bradley-Terry loss on pairs.

P(chosen > rejected) = sigmoid(r(chosen) - r(rejected)) (Bradley & Terry 1952; Ouyang et al.
2022 for LMs), so the loss is ``-log sigmoid(r_c - r_r)`` and accuracy is the share of pairs
with ``r_c > r_r``. The score of a sequence is the head's output at its last token (the reply's
end marker), where the whole prompt and reply are in view.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from core.rlhf_config import RewardConfig
from training.rlhf.distributed import LOCAL, Dist
from training.rlhf.heads import ScalarModel
from training.rlhf.optim import LogFn, Optimizer, TrainResult, batch_order, no_log
from training.rlhf.pairs import PreferencePair
from training.rlhf.sequences import collate, encode_reply, pad_id

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean ``-log sigmoid(r_chosen - r_rejected)`` over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


@dataclass
class EncodedPairs:
    """Pairs encoded once: chosen rows then rejected rows, with where each reply starts."""

    chosen: list[list[int]]
    chosen_start: list[int]
    rejected: list[list[int]]
    rejected_start: list[int]

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, idx: Sequence[int], pad: int, device: torch.device | str):
        """One batch of 2B rows: the chosen of ``idx`` then their rejected (one forward for both)."""
        seqs = [self.chosen[i] for i in idx] + [self.rejected[i] for i in idx]
        starts = [self.chosen_start[i] for i in idx] + [self.rejected_start[i] for i in idx]
        return collate(seqs, starts, pad, device)


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[PreferencePair], block_size: int) -> EncodedPairs:
    """Encode pairs with the chat template; raises naming pairs longer than the context."""
    out = EncodedPairs([], [], [], [])
    too_long = []
    for i, p in enumerate(pairs):
        c, cs = encode_reply(tokenizer, p.prompt, p.chosen)
        r, rs = encode_reply(tokenizer, p.prompt, p.rejected)
        if max(len(c), len(r)) > block_size:
            too_long.append(i)
        out.chosen.append(c)
        out.chosen_start.append(cs)
        out.rejected.append(r)
        out.rejected_start.append(rs)
    if too_long:
        raise ValueError(
            f"preference pairs {too_long[:5]} are longer than the context ({block_size}); "
            "build the set with build_preference_set, which quarantines them"
        )
    return out


def pair_scores(
    model: ScalarModel | torch.nn.Module, enc: EncodedPairs, idx: Sequence[int], pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward of the chosen and the rejected reply of pairs ``idx``, each (B,).

    ``model`` is a :class:`ScalarModel` or its DistributedDataParallel wrapper.
    """
    dev = next(model.parameters()).device
    b = enc.batch(idx, pad, dev)
    s = model(b.ids, b.last)
    return s[: len(idx)], s[len(idx) :]


@torch.no_grad()
def reward_accuracy(
    model: ScalarModel, tokenizer: Tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 64
) -> dict[str, float]:
    """Share of pairs the model ranks right, mean margin and loss (the model's mode is restored)."""
    if not pairs:
        return {}
    enc = encode_pairs(tokenizer, pairs, model.cfg.block_size)
    pad = pad_id(tokenizer)
    was = model.training
    model.eval()
    c, r = [], []
    for i in range(0, len(enc), batch_size):
        sc, sr = pair_scores(model, enc, range(i, min(i + batch_size, len(enc))), pad)
        c.append(sc)
        r.append(sr)
    model.train(was)
    ch, rj = torch.cat(c), torch.cat(r)
    return {
        "accuracy": float((ch > rj).float().mean()),
        "margin": float((ch - rj).mean()),
        "loss": float(bradley_terry_loss(ch, rj)),
    }


def train_reward(
    model: ScalarModel,
    tokenizer: Tokenizer,
    pairs: Sequence[PreferencePair],
    cfg: RewardConfig,
    *,
    heldout: Sequence[PreferencePair] = (),
    seed: int = 0,
    log_metrics: LogFn = no_log,
    log_every: int = 10,
    dist: Dist = LOCAL,
) -> TrainResult:
    """Train the reward model in place on preference pairs.

    Args:
        model: backbone + scalar head (trained in place; left in eval mode).
        tokenizer: its tokenizer.
        pairs: training pairs.
        cfg: steps, batch size, learning rate, held-out evaluation interval.
        heldout: pairs never trained on; their accuracy is ``heldout_accuracy``.
        seed: batch order.
        log_metrics: receives ``loss``, ``accuracy`` (batch), ``margin``, ``lr`` every ``log_every``
            steps and ``heldout_accuracy`` every ``cfg.eval_every`` steps.
        log_every: steps between logged training metrics.
        dist: this worker's share of each batch (default: one worker, the whole batch); held-out
            and final accuracies are measured by rank 0 only.

    Raises:
        ValueError: no pairs, or a pair longer than the context.
    """
    if not pairs:
        raise ValueError("the reward model needs at least one preference pair")
    enc = encode_pairs(tokenizer, pairs, model.cfg.block_size)
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
    history: list[dict[str, float]] = []
    order = batch_order(len(enc), cfg.batch_size, gen)
    model.train()
    train_model = dist.wrap(model)
    for step in range(1, cfg.steps + 1):
        idx = dist.shard(next(order))
        ch, rj = pair_scores(train_model, enc, idx, pad)
        loss = bradley_terry_loss(ch, rj)
        lr = opt.lr
        opt.step(loss)
        row: dict[str, float] = {}
        if step % log_every == 0 or step == cfg.steps:
            row.update(
                loss=loss.item(),
                accuracy=float((ch > rj).float().mean()),
                margin=(ch - rj).mean().item(),
                lr=lr,
            )
            row = dist.mean_metrics(row)  # equal shares: the mean of the means is the batch's
        if heldout and dist.is_main and (step % cfg.eval_every == 0 or step == cfg.steps):
            row["heldout_accuracy"] = reward_accuracy(model, tokenizer, heldout)["accuracy"]
        if row:
            history.append({"step": step, **row})
            log_metrics(row, step)
    model.eval()
    metrics = {"loss": history[-1]["loss"], "steps": cfg.steps}
    if not dist.is_main:
        return TrainResult(metrics=metrics, history=history)
    metrics.update({f"train_{k}": v for k, v in reward_accuracy(model, tokenizer, pairs[:512]).items()})
    if heldout:
        metrics.update({f"heldout_{k}": v for k, v in reward_accuracy(model, tokenizer, heldout).items()})
    log.info("reward model: held-out accuracy %s", metrics.get("heldout_accuracy"))
    return TrainResult(metrics=metrics, history=history)
