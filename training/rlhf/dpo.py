"""Direct Preference Optimisation (Rafailov et al. 2023) against the frozen SFT reference.

With the implicit reward ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))`` the loss is
``-log sigmoid(r(chosen) - r(rejected))``; with label smoothing ``eps`` (conservative DPO) it is
``-(1-eps) log sigmoid(m) - eps log sigmoid(-m)`` for the margin ``m``. The reference log-probs
are computed once, before training.

With ``nll_coef > 0`` the loss adds that much of the chosen replies' per-token negative log-likelihood
(as RPO, Pang et al. 2024, does): plain DPO only widens the margin, and on small models it gets
there by lowering the chosen replies too, which took the demo policy's held-out task accuracy below
its SFT reference's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from core.rlhf_config import DPOConfig
from training.rlhf.distributed import LOCAL, Dist
from training.rlhf.logprobs import sequence_logprob, token_logprobs
from training.rlhf.optim import LogFn, Optimizer, TrainResult, batch_order, freeze, no_log
from training.rlhf.pairs import PreferencePair
from training.rlhf.reward import EncodedPairs, encode_pairs
from training.rlhf.sequences import pad_id

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT

log = logging.getLogger(__name__)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss (mean over pairs) and the implicit rewards of chosen and rejected, each (B,).

    Args:
        policy_chosen, policy_rejected: log pi(reply | prompt) summed over reply tokens, (B,).
        ref_chosen, ref_rejected: the same under the reference.
        beta: inverse temperature of the implicit reward.
        label_smoothing: assumed share of flipped preference labels.
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    margin = chosen - rejected
    losses = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return losses.mean(), chosen.detach(), rejected.detach()


def _pair_logprobs(
    model: GPT | torch.nn.Module, enc: EncodedPairs, idx: Sequence[int], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log pi of the chosen and the rejected replies of pairs ``idx``, and the chosen replies' lengths."""
    dev = next(model.parameters()).device
    b = enc.batch(idx, pad, dev)
    lp, _ = token_logprobs(model, b.ids)
    seq = sequence_logprob(lp, b.mask)
    n = len(idx)
    return seq[:n], seq[n:], b.mask[:n].sum(-1).clamp(min=1).to(seq.dtype)


@torch.no_grad()
def reference_logprobs(
    reference: GPT, enc: EncodedPairs, pad: int, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi_ref of every chosen and rejected reply, each (N,), on the reference's device."""
    c, r = [], []
    for i in range(0, len(enc), batch_size):
        sc, sr, _ = _pair_logprobs(reference, enc, range(i, min(i + batch_size, len(enc))), pad)
        c.append(sc)
        r.append(sr)
    return torch.cat(c), torch.cat(r)


def train_dpo(
    policy: GPT,
    reference: GPT,
    tokenizer: Tokenizer,
    pairs: Sequence[PreferencePair],
    cfg: DPOConfig,
    *,
    heldout: Sequence[PreferencePair] = (),
    seed: int = 0,
    log_metrics: LogFn = no_log,
    log_every: int = 10,
    dist: Dist = LOCAL,
) -> TrainResult:
    """Optimise ``policy`` in place with DPO on preference pairs.

    Args:
        policy: initialised from the SFT model; trained in place (left in eval mode).
        reference: the frozen SFT model.
        tokenizer: the policy's tokenizer.
        pairs: training pairs.
        cfg: steps, batch size, beta, learning rate.
        heldout: pairs whose preference accuracy (implicit reward of chosen > rejected) is reported.
        seed: batch order.
        log_metrics: every ``log_every`` steps: loss, reward_chosen, reward_rejected, margin,
            accuracy, lr.
        dist: this worker's share of each batch (default: one worker, the whole batch); the
            held-out accuracy is measured by rank 0 only.
    """
    if not pairs:
        raise ValueError("DPO needs at least one preference pair")
    freeze(reference)
    policy.eval()  # dropout off: the policy and the reference must be compared as the same function
    enc = encode_pairs(tokenizer, pairs, policy.cfg.block_size)
    pad = pad_id(tokenizer)
    ref_c, ref_r = reference_logprobs(reference, enc, pad)
    ref_c, ref_r = ref_c.to(next(policy.parameters()).device), ref_r.to(next(policy.parameters()).device)
    gen = torch.Generator().manual_seed(seed)
    opt = Optimizer(policy, lr=cfg.lr, steps=cfg.steps, warmup=cfg.warmup_steps, grad_clip=cfg.grad_clip)
    order = batch_order(len(enc), cfg.batch_size, gen)
    train_policy = dist.wrap(policy)
    history: list[dict[str, float]] = []
    for step in range(1, cfg.steps + 1):
        idx = dist.shard(next(order))
        pc, pr, n_chosen = _pair_logprobs(train_policy, enc, idx, pad)
        loss, rc, rr = dpo_loss(pc, pr, ref_c[idx], ref_r[idx], cfg.beta, cfg.label_smoothing)
        nll = -(pc / n_chosen).mean()
        if cfg.nll_coef > 0:
            loss = loss + cfg.nll_coef * nll
        lr = opt.lr
        opt.step(loss)
        if step % log_every == 0 or step == cfg.steps:
            row = {
                "loss": loss.item(),
                "reward_chosen": float(rc.mean()),
                "reward_rejected": float(rr.mean()),
                "margin": float((rc - rr).mean()),
                "accuracy": float((rc > rr).float().mean()),
                "chosen_nll": float(nll),
                "lr": lr,
            }
            row = dist.mean_metrics(row)  # equal shares: the mean of the means is the batch's
            history.append({"step": step, **row})
            log_metrics(row, step)
    metrics = {k: v for k, v in history[-1].items() if k != "step"}
    if heldout and dist.is_main:
        metrics.update(
            {
                f"heldout_{k}": v
                for k, v in dpo_accuracy(policy, reference, tokenizer, heldout, cfg.beta).items()
            }
        )
    log.info("DPO: %d steps, margin %.3f", cfg.steps, metrics["margin"])
    return TrainResult(metrics=metrics, history=history)


@torch.no_grad()
def dpo_accuracy(
    policy: GPT, reference: GPT, tokenizer: Tokenizer, pairs: Sequence[PreferencePair], beta: float
) -> dict[str, float]:
    """Share of pairs whose implicit reward ranks chosen above rejected, and the mean margin."""
    enc = encode_pairs(tokenizer, pairs, policy.cfg.block_size)
    pad = pad_id(tokenizer)
    pc, pr = reference_logprobs(policy, enc, pad)
    rc, rr = reference_logprobs(reference, enc, pad)
    margin = beta * ((pc - rc) - (pr - rr))
    return {"accuracy": float((margin > 0).float().mean()), "margin": float(margin.mean())}
