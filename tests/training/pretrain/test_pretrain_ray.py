"""Pretraining on Ray Train workers (DDP, gloo on CPU): the single-process curve.

A lost worker (its whole node) restarting from the last checkpoint to the same weights is tested
on a multi-node cluster in ``tests/cluster/test_multinode.py``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from catalog.artifacts import ArtifactRef
from training.pretrain import PretrainResult, pretrain

from .conftest import tiny_config

pytestmark = pytest.mark.slow


PROGRESS: list[str] = []  # the driver's progress lines of the Ray run


@pytest.fixture(scope="module")
def ray_run(tokens: ArtifactRef, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> PretrainResult:
    cfg = tiny_config(max_steps=12, num_workers=2, checkpoint_every=4)

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            PROGRESS.append(record.getMessage())

    handler, logger = Lines(), logging.getLogger("training.progress")
    # Log lines, not a bar, and a logger on whatever earlier tests' logging set-ups did to it.
    # setLevel, not an assignment to .level: only setLevel clears the loggers' isEnabledFor cache, and
    # an earlier test that logged here under a WARNING root left "INFO: off" in it.
    level = logger.level
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIGHTSHIFT_PROGRESS", "log")
        mp.setattr(logger, "disabled", False)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            return pretrain(cfg, tokens, workdir=tmp_path_factory.mktemp("ray2"))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


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


def test_the_workers_progress_reaches_the_driver_log(ray_run: PretrainResult) -> None:
    """Outside a terminal the driver logs a line every log_every (1) steps, from the Ray Train workers."""
    assert [line.split(" (")[0] for line in PROGRESS] == [f"pretrain: step {s}/12" for s in range(1, 13)]
    assert all("train_loss" in line and "tokens_per_s" in line for line in PROGRESS)
    assert "ETA" in PROGRESS[1] and "(100%)" in PROGRESS[-1]
