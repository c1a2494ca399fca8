"""A local Ray (``ray.address: local``, as stage commands and tests start it) listens on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# Starts a local Ray in a fresh interpreter, runs a task (so a worker exists), lists the listening
# sockets of the driver and of the Ray processes it started.
PROBE = """
import json, psutil, ray
from core.config import RayConfig
from core.ray_setup import init_ray
init_ray(RayConfig(address="local", num_cpus=1))
ray.get(ray.remote(lambda: 1).remote())
me = psutil.Process()
ours = {me.pid} | {p.pid for p in me.children(recursive=True)}  # GCS, raylet, agents, workers
found = [c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in ours]
print(json.dumps(found))
ray.shutdown()
"""


def test_local_ray_listens_on_loopback_only() -> None:
    unset = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    addresses = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(addresses) >= 5  # GCS, raylet, agents, worker, driver
    assert set(addresses) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses


def test_local_trainer_leaves_out_cluster_only_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a local Ray the trainer starts no dataset manager, placement-group cleaner, preemption
    watcher or Train metrics; on a cluster address it is Ray Train's own, with every default."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.metrics import ControllerMetricsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from core.config import RayConfig
    from training.ray_train import LOCAL_TRAIN_ENV, torch_trainer

    for key in LOCAL_TRAIN_ENV:
        monkeypatch.delenv(key, raising=False)
    kwargs = {"scaling_config": ScalingConfig(num_workers=2), "run_config": RunConfig(name="t")}
    cluster = torch_trainer(lambda: None, RayConfig(address="ray://head:10001"), **kwargs)
    kinds = {type(c) for c in cluster._create_default_callbacks()}
    assert {DatasetsCallback, PlacementGroupCleanerCallback, ControllerMetricsCallback} <= kinds
    assert all(key not in os.environ for key in LOCAL_TRAIN_ENV)

    local = torch_trainer(lambda: None, RayConfig(address="local"), **kwargs)
    kinds = {type(c) for c in local._create_default_callbacks()}
    assert not kinds & {DatasetsCallback, PlacementGroupCleanerCallback, ControllerMetricsCallback}
    assert all(os.environ[key] == value for key, value in LOCAL_TRAIN_ENV.items())


def test_local_scaling_policy_asks_no_autoscaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a local Ray the fixed scaling policy decides the same worker group without starting Ray
    Data's autoscaling coordinator or sending it a request."""
    import cloudpickle
    from ray.train import ScalingConfig
    from ray.train.v2._internal.execution.scaling_policy import (
        FixedScalingPolicy,
        ResizeDecision,
        autoscaling_coordinator_client,
    )

    from training.ray_train import _without_autoscaler_requests

    asked: list[int] = []

    def no_coordinator() -> None:
        asked.append(1)
        raise RuntimeError("no autoscaling coordinator in this test")

    monkeypatch.setattr(
        autoscaling_coordinator_client, "get_or_create_autoscaling_coordinator", no_coordinator
    )
    policy = _without_autoscaler_requests(FixedScalingPolicy(ScalingConfig(num_workers=2)))
    policy = cloudpickle.loads(cloudpickle.dumps(policy))  # as it travels to the controller actor
    assert isinstance(policy, FixedScalingPolicy)

    class Run:
        run_id = "r1"

    policy.after_controller_start(Run())
    decision = policy.make_decision_for_non_running_worker_group()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    policy.before_controller_abort()
    assert policy._coordinator_client is None
    assert asked == []

    # Ray Train's own policy asks for it at start (and logs the failed request, carrying on).
    FixedScalingPolicy(ScalingConfig(num_workers=2)).after_controller_start(Run())
    assert asked == [1]
