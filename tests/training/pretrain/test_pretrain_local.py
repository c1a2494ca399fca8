"""Single-process pretraining: input checks, learning, MLflow metrics, resume after corruption or SIGKILL."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from catalog.artifacts import ArtifactRef
from core.config_base import ConfigError
from core.model_config import ModelConfig
from training.pretrain import checkpoint as ckpt
from training.pretrain import pretrain

from .conftest import tiny_config, write_tokens

REPO = Path(__file__).resolve().parents[3]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / ckpt.WEIGHTS))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), f"{k}: max diff {(a[k] - b[k]).abs().max()}"


def test_every_input_problem_is_listed_before_compute(tmp_path: Path) -> None:
    short_val = write_tokens(tmp_path / "art", val_tokens=40)
    cfg = tiny_config(num_workers=3, batch_size=8)
    cfg.ray.placement = "exact"  # a local Ray never grows: 3 x 1 CPU on 2 can never be placed
    cfg.model = ModelConfig(n_layer=1, n_head=4, n_embd=30, block_size=64, vocab_size=260)
    with pytest.raises(ConfigError) as err:
        pretrain(cfg, short_val, workdir=tmp_path / "wd")
    text = str(err.value)
    assert "n_embd: 30 is not divisible by n_head 4" in text
    assert "longer than the val split (40 tokens)" in text
    assert "model.vocab_size: 260 is smaller than the tokenizer's vocabulary 300" in text
    assert "batch_size: 8 (global) is not divisible by num_workers 3" in text
    assert "the local Ray has 2" in text
    assert len(err.value.problems) == 5
    assert not (tmp_path / "wd").exists()  # nothing was started


@pytest.mark.slow
def test_loss_drops_and_metrics_reach_the_mlflow_run(
    tokens: ArtifactRef, tmp_path: Path, mlflow_server: str
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment(f"pretrain-{time.time_ns()}")
    run = client.create_run(exp)
    cfg = tiny_config(max_steps=40, log_every=5, val_every=20, checkpoint_every=20)
    res = pretrain(cfg, tokens, workdir=tmp_path, mlflow_run_id=run.info.run_id, tracking_uri=mlflow_server)

    first, last = res.history[0]["train_loss"], res.metrics["train_loss"]
    assert last < first - 1.0, (first, last)
    assert res.metrics["val_loss"] < 5.0 and res.metrics["steps"] == 40
    assert res.metrics["tokens_seen"] == 40 * 8 * 32
    assert res.metrics["tokens_per_s"] > 0 and 0 < res.metrics["mfu"] < 1
    assert [r["step"] for r in res.history if "val_loss" in r] == [20, 40]
    assert not res.model.training and next(res.model.parameters()).device.type == "cpu"
    assert res.checkpoint_dir.name == "step-000040"

    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert abs(losses[-1].value - last) < 1e-6
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val_loss")} == {20, 40}
    assert client.get_metric_history(run.info.run_id, "mfu")
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the caller closes its run


@pytest.mark.slow
def test_corrupt_checkpoint_is_skipped_and_resume_matches(
    tokens: ArtifactRef, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_config(max_steps=12, checkpoint_every=4, keep_checkpoints=3)
    done = pretrain(cfg, tokens, workdir=tmp_path)
    reference = _weights(done.checkpoint_dir)

    # The newest checkpoint is corrupted: the run resumes from step 8 and redoes steps 9-12.
    target = done.checkpoint_dir / ckpt.LIGHTNING_CKPT
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x55
    target.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        again = pretrain(cfg, tokens, workdir=tmp_path, resume=True)
    assert "skipping checkpoint" in caplog.text and "step-000012" in caplog.text
    assert "resumes from" in caplog.text and "step-000008" in caplog.text
    _assert_same_weights(_weights(again.checkpoint_dir), reference, atol=1e-6)


_KILLABLE = textwrap.dedent(
    """
    import sys, time
    import lightning as L
    from tests.training.pretrain.conftest import tiny_config
    from training.pretrain import pretrain

    class Slow(L.Callback):
        # Slows the steps down so the parent can kill the run between two checkpoints.
        def on_train_batch_end(self, *args, **kwargs):
            time.sleep(0.15)

    # The same intra-op threads as the parent's uninterrupted run: summation order is part of the
    # arithmetic, and "the same weights" is checked to 1e-6.
    import torch
    torch.set_num_threads(int(sys.argv[3]))
    cfg = tiny_config(max_steps=30, checkpoint_every=5, keep_checkpoints=2)
    pretrain(cfg, sys.argv[1], workdir=sys.argv[2], callbacks=[Slow()])
    """
)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights(tokens: ArtifactRef, tmp_path: Path) -> None:
    cfg = tiny_config(max_steps=30, checkpoint_every=5, keep_checkpoints=2)
    uninterrupted = pretrain(cfg, tokens, workdir=tmp_path / "straight")

    workdir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE, str(tokens.path), str(workdir), str(torch.get_num_threads())],
        cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "checkpoints" / "step-000010").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    steps = [s for s, _ in ckpt.list_steps(workdir / "checkpoints")]
    assert steps and max(steps) < 30, steps  # killed mid-run

    resumed = pretrain(cfg, tokens, workdir=workdir, resume=True)
    assert resumed.metrics["steps"] == 30
    _assert_same_weights(_weights(resumed.checkpoint_dir), _weights(uninterrupted.checkpoint_dir), atol=1e-6)
    # The history of the killed run and of the resumed one join into one row per step.
    assert [r["step"] for r in resumed.history] == list(range(1, 31))
    straight = {r["step"]: r["train_loss"] for r in uninterrupted.history}
    assert all(abs(r["train_loss"] - straight[r["step"]]) < 1e-5 for r in resumed.history)


def test_resume_false_sets_earlier_checkpoints_aside(tokens: ArtifactRef, tmp_path: Path) -> None:
    cfg = tiny_config(max_steps=4, checkpoint_every=4, val_every=4)
    pretrain(cfg, tokens, workdir=tmp_path)
    fresh = pretrain(cfg, tokens, workdir=tmp_path, resume=False)
    assert [r["step"] for r in fresh.history] == [1, 2, 3, 4]
    kept = list(tmp_path.glob("previous-*/checkpoints/step-000004"))
    assert len(kept) == 1
    shutil.rmtree(kept[0].parent.parent)
