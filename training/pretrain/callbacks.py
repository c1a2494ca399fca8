"""Lightning callbacks of the pretraining loop: metrics (loss, lr, throughput, MFU, validation) and
periodic atomic checkpoints reported to Ray Train.

Both act once per optimizer step (``trainer.global_step`` advanced), not per micro-batch, and run
on every rank: the reductions and checkpoint barriers they issue are collective. Only rank 0
writes files and logs.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy

from training.pretrain import checkpoint as ckpt
from training.pretrain.module import GPTPretrainModule

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)


class _StepHook(L.Callback, abc.ABC):
    """Calls :meth:`on_step` once after each optimizer step."""

    def __init__(self) -> None:
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.on_step(trainer, pl_module, trainer.global_step)

    @abc.abstractmethod
    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Runs once per optimizer step (``step`` = steps done so far)."""


class StepMetrics(_StepHook):
    """Train loss, lr, tokens/s and MFU every ``log_every`` steps; validation every ``val_every``.

    Rows go to the Lightning loggers (MLflow) and are appended to ``history_path`` (JSON lines, so
    a resumed run adds to the rows of the run it continues). At the end ``summary_path`` gets the
    steady-state throughput, measured after ``skip_steps`` warm-up steps.

    Args:
        tokens_per_step: tokens of one optimizer step over all workers.
        flops_per_token: training FLOPs per token of the model.
        peak_flops: peak FLOP/s of one worker's device.
        world: number of workers.
    """

    def __init__(
        self,
        *,
        history_path: Path,
        summary_path: Path,
        log_every: int,
        val_every: int,
        max_steps: int,
        tokens_per_step: int,
        flops_per_token: float,
        peak_flops: float,
        world: int,
        skip_steps: int = 2,
    ):
        super().__init__()
        self.history_path, self.summary_path = history_path, summary_path
        self.log_every, self.val_every, self.max_steps = log_every, val_every, max_steps
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.world, self.skip_steps = peak_flops, world, skip_steps
        self._lr = 0.0
        self._window: tuple[int, float] | None = None  # (step, time) at the start of the log window
        self._steady: tuple[int, float] | None = None  # (step, time) after the warm-up steps
        self._first_step = 0
        self._final_tps: float | None = None
        self.last: dict[str, float] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._first_step = trainer.global_step
        self._window = (trainer.global_step, time.perf_counter())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self._lr = float(optimizer.param_groups[0]["lr"])  # the lr this step uses

    def mfu(self, tokens_per_s: float) -> float:
        return self.flops_per_token * tokens_per_s / (self.peak_flops * self.world)

    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        assert isinstance(pl_module, GPTPretrainModule)
        timed = step in (self._first_step + self.skip_steps, self.max_steps) or step % self.log_every == 0
        if timed and pl_module.device.type == "cuda":
            # CUDA runs behind the host: wait for this step's kernels before reading the clock.
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        if step == self._first_step + self.skip_steps:
            self._steady = (step, now)
        if step == self.max_steps and self._steady is not None and step > self._steady[0]:
            # Steady-state throughput up to the last step, before its validation and checkpoint.
            self._final_tps = (
                self.tokens_per_step * (step - self._steady[0]) / max(now - self._steady[1], 1e-9)
            )
        row: dict[str, float] = {}
        if step % self.log_every == 0 or step == self.max_steps:
            assert pl_module.step_loss is not None
            loss = trainer.strategy.reduce(pl_module.step_loss.float(), reduce_op="mean")
            row.update(train_loss=float(loss), lr=self._lr)
            assert self._window is not None
            w_step, w_time = self._window
            if step > w_step:
                tps = self.tokens_per_step * (step - w_step) / max(now - w_time, 1e-9)
                row.update(tokens_per_s=tps, mfu=self.mfu(tps))
            self._window = (step, now)
        if step % self.val_every == 0 or step == self.max_steps:
            val = validate(trainer, pl_module)
            row.update(val_loss=val, val_ppl=math.exp(min(val, 50.0)))
            self._window = (self._window[0], self._window[1] + time.perf_counter() - now)
            if self._steady is not None:
                self._steady = (self._steady[0], self._steady[1] + time.perf_counter() - now)
        if not row:
            return
        row["tokens_seen"] = float(step * self.tokens_per_step)
        self.last.update(row)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(row, step=step)
            with open(self.history_path, "a") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        summary = {k: v for k, v in self.last.items() if k not in ("tokens_per_s", "mfu")}
        if self._final_tps is not None:
            summary.update(tokens_per_s=self._final_tps, mfu=self.mfu(self._final_tps))
        elif "tokens_per_s" in self.last:
            summary.update(tokens_per_s=self.last["tokens_per_s"], mfu=self.last["mfu"])
        summary.update(
            steps=float(trainer.global_step), tokens_seen=float(trainer.global_step * self.tokens_per_step)
        )
        summary["peak_flops"] = self.peak_flops
        self.summary_path.write_text(json.dumps(summary, indent=2))
        for logger in trainer.loggers:
            logger.log_metrics(
                {k: summary[k] for k in ("tokens_per_s", "mfu") if k in summary}, trainer.global_step
            )


class ProgressReport(_StepHook):
    """Each optimizer step's position and the latest loss and throughput of :class:`StepMetrics`
    (which must run before it), from rank 0 to ``sink(step, figures)``: the driver's
    :class:`training.progress.Progress`, directly or from a Ray Train worker through a Ray queue."""

    FIGURES = ("train_loss", "val_loss", "tokens_per_s")

    def __init__(self, metrics: StepMetrics, sink: Callable[[int, dict[str, float]], None]) -> None:
        super().__init__()
        self.metrics, self.sink = metrics, sink

    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        if trainer.is_global_zero:
            self.sink(step, {k: self.metrics.last[k] for k in self.FIGURES if k in self.metrics.last})


@torch.no_grad()
def validate(trainer: L.Trainer, pl_module: GPTPretrainModule) -> float:
    """Mean loss over the fixed validation windows of every rank (a collective call)."""
    # FSDP must run its wrapper to gather the sharded weights; under DDP the bare module avoids
    # the wrapper's buffer broadcast.
    model = trainer.strategy.model if isinstance(trainer.strategy, FSDPStrategy) else pl_module
    was_training = model.training
    model.eval()
    total, n = torch.zeros((), device=pl_module.device), 0
    for x, y in trainer.datamodule.fixed_val_loader():
        loss = model(x.to(pl_module.device), y.to(pl_module.device))
        total += loss.float()
        n += 1
    model.train(was_training)
    mean = trainer.strategy.reduce(total / max(n, 1), reduce_op="mean")
    pl_module.val_loss = float(mean)
    return float(mean)


class PeriodicCheckpoint(_StepHook):
    """Every ``every`` optimizer steps and at the last one: an atomic checkpoint, keep-last-``keep``.

    With ``report_to_ray`` each checkpoint is also reported with ``ray.train.report`` so Ray Train
    knows it (``ray.train.get_checkpoint()`` after a worker-group restart) and keeps a copy in its
    storage path.
    """

    def __init__(self, root: Path, every: int, keep: int, max_steps: int, report_to_ray: bool = False):
        super().__init__()
        self.root, self.every, self.keep, self.max_steps = root, every, keep, max_steps
        self.report_to_ray = report_to_ray

    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        if step % self.every == 0 or step == self.max_steps:
            self.save(trainer, step)

    def save(self, trainer: L.Trainer, step: int) -> ckpt.CheckpointInfo | None:
        staging = ckpt.staging_dir(self.root, step)
        if trainer.is_global_zero:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        trainer.strategy.barrier("nightshift-ckpt-staging")
        trainer.save_checkpoint(staging / ckpt.LIGHTNING_CKPT, weights_only=False)
        state = trainer.strategy.lightning_module_state_dict()  # collective under FSDP
        info = None
        if trainer.is_global_zero:
            weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            ckpt.save_weights(weights, staging / ckpt.WEIGHTS)
            info = ckpt.finalize(staging, step, keep=self.keep)
            log.info("checkpoint %s", info.path)
        trainer.strategy.barrier("nightshift-ckpt-final")
        if self.report_to_ray:
            self._report(trainer, step, info)
        return info

    def _report(self, trainer: L.Trainer, step: int, info: ckpt.CheckpointInfo | None) -> None:
        import ray.train

        metrics = {
            "step": step,
            **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        }
        checkpoint = ray.train.Checkpoint.from_directory(str(info.path)) if info is not None else None
        # Every worker must call report the same number of times; only rank 0 hands over files. Our
        # own directory stays: it is the keep-last-N copy that resume verifies first.
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=ckpt.step_dir_name(step),
            delete_local_checkpoint_after_upload=False,
        )
