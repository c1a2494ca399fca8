"""Pretraining on Ray Train workers (DDP, gloo on CPU): the single-process curve.

A lost worker (its whole node) restarting from the last checkpoint to the same weights is tested
on a multi-node cluster in ``tests/cluster/test_multinode.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.artifacts import ArtifactRef
from training.pretrain import PretrainResult, pretrain

from .conftest import tiny_config

pytestmark = pytest.mark.slow


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
