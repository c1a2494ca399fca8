"""What every RLHF training loop shares: device choice, AdamW with its schedule, batch order, logging.

The optimizer and the warmup + cosine schedule are pretraining's own (training/pretrain/optim.py),
so fine-tuning and pretraining decay the same parameters the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from training.pretrain.optim import build_adamw, lr_lambda

LogFn = Callable[[Mapping[str, float], int], None]  # log_metrics(metrics, step), e.g. StageRun.log_metrics


@dataclass
class TrainResult:
    """What a training loop returns (SFT, the reward model, PPO, DPO, GRPO): its last metrics and
    the logged history."""

    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def no_log(metrics: Mapping[str, float], step: int) -> None:
    """The default ``log_metrics``: drop them."""


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Optimizer:
    """AdamW over a model's parameters with warmup + cosine decay to lr/10 and gradient clipping."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        steps: int,
        warmup: int = 0,
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.95),
    ):
        self.model = model
        self.grad_clip = grad_clip
        device = next(model.parameters()).device
        self.opt = build_adamw(model, lr, weight_decay, betas, device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda(warmup, max(steps, 1), lr, lr / 10)
        )

    def step(self, loss: torch.Tensor) -> float:
        """Backward, clip, step, schedule; returns the gradient norm before clipping."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        self.opt.step()
        self.sched.step()
        return norm

    @property
    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])


def batch_order(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless mini-batches of indices into ``n`` items: shuffled epochs, each item once per epoch."""
    if n == 0:
        raise ValueError("no training examples to draw batches from")
    buf: list[int] = []
    while True:
        while len(buf) < batch_size:
            buf += torch.randperm(n, generator=generator).tolist()
        yield buf[:batch_size]
        buf = buf[batch_size:]


def minibatches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One shuffled pass over ``n`` rows in chunks of ``size`` (the last may be smaller)."""
    perm = torch.randperm(n, generator=generator)
    return [perm[i : i + size] for i in range(0, n, size)]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a reference model or a reward model during RL."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
