"""Gradient clipping under the production precision and strategies (bf16-mixed, fused AdamW, FSDP).

Lightning's own clipping raises for a fused AdamW under bf16-mixed and has no norm clipping under
FSDP; the module clips itself. The CPU test runs everywhere; the FSDP one needs a CUDA GPU (torch's
FSDP wraps no module without an accelerator) and runs on GPU machines:
``pytest --noconftest tests/training/pretrain/test_clipping.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from core.model_config import ModelConfig
from core.train_config import TrainConfig
from training.pretrain.module import GPTPretrainModule

CLIP = 1e-3  # far below the gradient norm of a fresh model, so every step is clipped


class GradNorms(L.Callback):
    """The global gradient norm each step used (Lightning zeroes gradients at the next step's start)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        grads = [p.grad.detach().float().norm() for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))


def fit(tmp_path: Path, accelerator: str, strategy: Any = "auto") -> tuple[GradNorms, GPTPretrainModule]:
    torch.manual_seed(0)
    mc = ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=288, dropout=0.0)
    tc = TrainConfig(
        max_steps=3, batch_size=4, warmup_steps=1, grad_clip=CLIP, precision="bf16-mixed",
        use_gpu=accelerator == "gpu",
    )  # fmt: skip
    module = GPTPretrainModule(mc, tc)
    batches = [(torch.randint(0, 288, (4, 32)), torch.randint(0, 288, (4, 32))) for _ in range(3)]
    norms = GradNorms()
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, strategy=strategy, precision="bf16-mixed", max_steps=3,
        gradient_clip_val=CLIP, gradient_clip_algorithm="norm", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[norms], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    assert trainer.global_step == 3
    return norms, module


def test_bf16_mixed_with_fused_adamw_clips_the_gradient_norm(tmp_path: Path) -> None:
    norms, module = fit(tmp_path, "cpu")
    opt = module.trainer.optimizers[0]
    assert opt.defaults["fused"] is True  # the fused kernel that Lightning's clipping refuses
    assert len(norms.norms) == 3
    assert all(n <= CLIP * 1.01 for n in norms.norms), norms.norms


def test_16_mixed_builds_an_unfused_adamw() -> None:
    module = GPTPretrainModule(
        ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=288),
        TrainConfig(precision="16-mixed"),
    )
    opt = module.configure_optimizers()["optimizer"]
    assert not opt.defaults["fused"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA GPU; run on a GPU machine")
def test_fsdp_clips_the_global_gradient_norm(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    norms, _ = fit(tmp_path, "gpu", FSDPStrategy(use_orig_params=True))
    assert len(norms.norms) == 3
    assert all(n <= CLIP * 1.01 for n in norms.norms), norms.norms
