"""The LightningModule that pretrains :class:`gpt.model.GPT` on next-token prediction."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import FSDPStrategy

from core.model_config import ModelConfig
from core.train_config import TrainConfig
from gpt.model import GPT
from training.pretrain.optim import build_adamw, lr_lambda

RNG_KEY = "nightshift_rng"


def rng_state() -> dict[str, Any]:
    """This process's torch, NumPy and Python RNG states as plain data (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py_version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class GPTPretrainModule(L.LightningModule):
    """GPT + AdamW + warmup/cosine LambdaLR; tracks the mean loss of each optimizer step.

    After every optimizer step ``step_loss`` holds the mean micro-batch loss of that step on this
    rank; the metrics callback all-reduces it on logging steps and runs validation (through
    :meth:`forward`) on the fixed val windows.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig):
        super().__init__()
        self.train_cfg = train_cfg
        self.model = GPT(model_cfg)
        if train_cfg.compile:
            # In-place compile keeps the parameter names (no ``_orig_mod.`` prefix) in checkpoints.
            self.model.compile()
        self._loss_sum = torch.zeros(())
        self._loss_n = 0
        self.step_loss: torch.Tensor | None = None
        self.val_loss: float | None = None  # set by the metrics callback's validation pass

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of inputs ``x`` (B, T) against targets ``y`` (B, T)."""
        _, loss = self.model(x, y, return_logits=False)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, y, return_logits=False)
        self._loss_sum = self._loss_sum.to(loss.device) + loss.detach()
        self._loss_n += 1
        if self._loss_n == self.train_cfg.grad_accum:  # the last micro-batch before an optimizer step
            self.step_loss = self._loss_sum / self._loss_n
            self._loss_sum = torch.zeros((), device=loss.device)
            self._loss_n = 0
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        c = self.train_cfg
        # 16-mixed: a fused AdamW unscales inside its step, after clipping would have seen the
        # scaled gradients; the multi-tensor kernel lets Lightning unscale them first.
        fused = False if c.resolved_precision() == "16-mixed" else None
        opt = build_adamw(self.model, c.lr, c.weight_decay, (c.beta1, c.beta2), self.device, fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(c.warmup_steps, c.max_steps, c.lr, c.min_lr))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip the global gradient norm to ``gradient_clip_val`` (``train.grad_clip``).

        Lightning's own clipping refuses both production set-ups: its mixed-precision plugin raises
        for any optimizer that unscales internally (fused AdamW), even under bf16-mixed where nothing
        is scaled, and its FSDP plugin has no norm clipping. Gradients here are true ones: bf16-mixed
        and 32-true have no scaler, and 16-mixed builds an unfused AdamW that Lightning unscales
        before this hook.
        """
        if not gradient_clip_val:
            return

        strategy = self.trainer.strategy
        if isinstance(strategy, FSDPStrategy):
            # The norm over every rank's shards, which the FSDP wrapper computes collectively.
            strategy.model.clip_grad_norm_(gradient_clip_val)  # type: ignore[union-attr,operator]
        else:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

    # --- checkpoint extras: the RNG states of every rank -------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called on every rank before rank 0 writes, so the states can be gathered here.
        states = [rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, rng_state())
        checkpoint[RNG_KEY] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(RNG_KEY) or []
        if len(states) == self.trainer.world_size:
            set_rng_state(states[self.trainer.global_rank])
