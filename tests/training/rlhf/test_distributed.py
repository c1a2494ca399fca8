"""RLHF on Ray Train workers (DDP, gloo on CPU): DPO follows the 1-process curve; GRPO publishes a policy."""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import torch

from catalog.untracked import NullStageRun
from core.config import Config, RayConfig, TrackingConfig
from core.rlhf_config import DPOConfig, GRPOConfig, RLHFConfig, SamplingConfig, TaskConfig
from gpt.model import GPT
from gpt.model_io import load_model, save_model
from training.rlhf.distributed import Dist, run_training
from training.rlhf.dpo import train_dpo
from training.rlhf.stages import grpo_stage

from .conftest import tiny_model_config


class RecordingRun(NullStageRun):
    """An untracked stage run that keeps the step metrics it is given (what MLflow would receive)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def ray_two_cpus() -> Iterator[None]:
    """One local Ray (2 CPUs) for this module; left running if the session had already started one."""
    import ray

    from core.ray_setup import init_ray

    started = not ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:
        # A fresh local Ray even when a `ray start` head of another process runs on this machine
        # (ray.init would join the head named in /tmp/ray/ray_current_cluster otherwise).
        mp.setenv("RAY_ADDRESS", "local")
        init_ray(RayConfig(address="local", num_cpus=2))
    yield
    if started:
        ray.shutdown()


def _config(tmp_path: Path, num_workers: int) -> Config:
    rlhf = RLHFConfig(
        num_workers=num_workers,
        device="cpu",
        tasks=TaskConfig(families=["copy", "max"], train_size=64, eval_size=8),
        sampling=SamplingConfig(max_new_tokens=8),
        grpo=GRPOConfig(iterations=3, prompts_per_step=2, group_size=4, minibatch=8, lr=3e-3),
    )
    tracking = TrackingConfig(
        mlflow_uri="unused",
        experiment=f"rlhf-{uuid.uuid4().hex[:8]}",
        catalog_url=f"sqlite:///{tmp_path}/catalog.db",
        artifact_root=str(tmp_path / "artifacts"),
    )
    ray = RayConfig(address="local", num_cpus=2)
    return Config(seed=3, model=tiny_model_config(), rlhf=rlhf, tracking=tracking, ray=ray)


def test_uneven_batches_are_named_before_anything_starts() -> None:
    problems = RLHFConfig(num_workers=2, dpo=DPOConfig(batch_size=5), grpo=GRPOConfig(minibatch=9)).problems()
    assert any(p.startswith("dpo.batch_size: 5 is not divisible by num_workers 2") for p in problems)
    assert any(p.startswith("grpo.minibatch: 9 is not divisible") for p in problems)
    assert RLHFConfig(num_workers=2).problems() == []  # the defaults split over 2 workers
    with pytest.raises(ValueError, match="does not split evenly over 2 workers"):
        Dist(rank=0, world=2).shard([1, 2, 3])


@pytest.mark.slow
def test_two_workers_follow_the_one_process_dpo_curve(
    ray_two_cpus: None, model: GPT, tokenizer, splits, tmp_path: Path
) -> None:
    pairs = splits.preference_pairs()[:32]
    dpo = DPOConfig(steps=8, batch_size=8, lr=1e-3, warmup_steps=2)
    runs = {}
    for workers in (1, 2):
        policy, reference = copy.deepcopy(model), copy.deepcopy(model)
        run = RecordingRun()
        res = run_training(
            _config(tmp_path, workers), train_dpo, {"policy": policy, "reference": reference},
            trained=("policy",), log_metrics=run.log_metrics,
            tokenizer=tokenizer, pairs=pairs, cfg=dpo, seed=5, log_every=1,
        )  # fmt: skip
        runs[workers] = (res, run.rows, policy)
    (one, one_logged, one_policy), (two, two_logged, two_policy) = runs[1], runs[2]
    assert [s for s, _ in two_logged] == [s for s, _ in one_logged] == list(range(1, 9))
    for (step, a), (_, b) in zip(two_logged, one_logged, strict=True):
        for key in ("loss", "margin", "accuracy", "reward_chosen"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (step, key, a[key], b[key])
    assert two_logged[-1][1]["loss"] < math.log(2) - 0.01  # it learnt: below the starting log 2
    # The driver's policy holds rank 0's trained weights, which equal the one-process run's.
    for (k, a), b in zip(two_policy.state_dict().items(), one_policy.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), k
    assert not torch.equal(two_policy.transformer.wte.weight, model.transformer.wte.weight)
    assert two.metrics["loss"] == pytest.approx(one.metrics["loss"], rel=1e-4)


@pytest.mark.slow
def test_grpo_on_two_workers_logs_rewards_and_publishes_a_loadable_policy(
    ray_two_cpus: None, sft_model: GPT, tokenizer, tmp_path: Path
) -> None:
    base = save_model(sft_model, tokenizer, root=tmp_path / "base")
    run = RecordingRun()
    res = grpo_stage(_config(tmp_path, 2), run, base)

    steps = [(s, m) for s, m in run.rows if s is not None and "reward" in m]
    assert [s for s, _ in steps] == [1, 2, 3]
    for _, m in steps:
        assert all(math.isfinite(m[k]) for k in ("reward", "task_reward", "kl", "loss", "entropy")), m
        assert m["rollout_tokens_per_s"] > 0
    policy, _, ref = load_model(res.model)
    assert ref.metadata["stage"] == "grpo" and ref.metadata["base"] == base.sha256
    assert res.model.sha256 != base.sha256  # the workers' update reached the published weights
    assert math.isfinite(res.metrics["eval_accuracy"]) and res.metrics["eval_kl"] > 0
    assert policy.cfg == sft_model.cfg
