"""Pretraining on Ray Train workers (DDP, gloo on CPU): the single-process curve, worker-loss recovery."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from catalog.artifacts import ArtifactRef
from training.pretrain import PretrainResult, pretrain
from training.pretrain import checkpoint as ckpt

from .conftest import tiny_config

pytestmark = pytest.mark.slow


class KillRankOnce(L.Callback):
    """Ends rank ``rank``'s process abruptly after optimizer step ``step``, once (a marker file)."""

    def __init__(self, marker: Path, rank: int, step: int):
        self.marker, self.rank, self.step = marker, rank, step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(str(self.step))
            os._exit(1)


@pytest.fixture(scope="module")
def ray_run(tokens: ArtifactRef, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> PretrainResult:
    cfg = tiny_config(max_steps=12, num_workers=2, checkpoint_every=4)
    return pretrain(cfg, tokens, workdir=tmp_path_factory.mktemp("ray2"))


def test_two_workers_follow_the_single_process_curve(
    ray_run: PretrainResult, tokens: ArtifactRef, tmp_path: Path
) -> None:
    single = pretrain(tiny_config(max_steps=12, checkpoint_every=4), tokens, workdir=tmp_path)
    ray_losses = [r["train_loss"] for r in ray_run.history]
    one_losses = [r["train_loss"] for r in single.history]
    assert len(ray_losses) == len(one_losses) == 12
    for step, (a, b) in enumerate(zip(ray_losses, one_losses, strict=True), start=1):
        assert abs(a - b) <= 1e-4 * abs(b), (step, a, b)
    assert abs(ray_run.metrics["val_loss"] - single.metrics["val_loss"]) <= 1e-4 * single.metrics["val_loss"]
    assert ray_run.metrics["tokens_per_s"] > 0
    # Ray Train received the checkpoints too (its storage under the workdir).
    assert list((ray_run.checkpoint_dir.parent.parent / "ray").rglob("step-000012/manifest.json"))


def test_lost_worker_restarts_from_the_last_checkpoint(
    ray_run: PretrainResult, tokens: ArtifactRef, tmp_path: Path
) -> None:
    marker = tmp_path / "killed-once"
    cfg = tiny_config(max_steps=12, num_workers=2, checkpoint_every=4, max_failures=1)
    res = pretrain(cfg, tokens, workdir=tmp_path / "wd", callbacks=[KillRankOnce(marker, rank=1, step=6)])
    assert marker.read_text() == "6"  # the failure did happen
    assert res.metrics["steps"] == 12 and res.checkpoint_dir.name == "step-000012"
    # Steps 5-6 were redone from the step-4 checkpoint; the result is the uninterrupted run's.
    got_sd, ref_sd = _load(res.checkpoint_dir), _load(ray_run.checkpoint_dir)
    for k in ref_sd:
        assert torch.allclose(got_sd[k], ref_sd[k], rtol=0, atol=1e-5), k
    assert [r["step"] for r in res.history] == list(range(1, 13))


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / ckpt.WEIGHTS))
