"""Stages size their Ray workers to what is free beside the served model, and never wait without end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.artifacts import ArtifactRef
from core.config import RayConfig
from tests.training.pretrain.conftest import tiny_config, write_tokens
from training.placement import PlacementError, plan_workers, reserve, usage

pytestmark = pytest.mark.slow


@pytest.fixture
def holder(ray_local: None) -> Iterator[object]:
    """An actor holding part of the local Ray's CPUs, as a Serve replica does; its share is the param."""
    import ray

    handles: list[object] = []

    def hold(cpus: float) -> object:
        @ray.remote(num_cpus=cpus)
        class Holder:
            def ping(self) -> int:
                return 1

        h = Holder.options(name=f"holder-{len(handles)}").remote()
        ray.get(h.ping.remote())
        handles.append(h)
        return h

    yield hold
    for h in handles:
        ray.kill(h)
    _wait_free(2.0)


def _wait_free(cpus: float, timeout: float = 30.0) -> None:
    import ray

    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0.0) < cpus - 1e-6 and time.monotonic() < deadline:
        time.sleep(0.2)


def _plan(cfg: RayConfig, workers: int = 2, **kw: object):
    return plan_workers(
        cfg, stage="test", num_workers=workers, cpus_per_worker=None, use_gpu=False, setting="train", **kw
    )


def test_fit_splits_the_free_cpus_among_the_configured_workers(holder) -> None:
    _wait_free(2.0)
    holder(0.5)
    plan = _plan(RayConfig(address="local", num_cpus=2))
    assert plan.mode == "fit"
    assert plan.num_workers == 2 and plan.cpus == pytest.approx(0.75)
    assert plan.threads == 1  # one core each, whatever the reservation
    assert "1.5 free" in plan.note and "0.5 CPU by actor" in plan.note
    reserve(RayConfig(address="local", placement_timeout_s=10), plan, setting="train")  # places at once


def test_fit_takes_fewer_workers_when_the_share_would_be_too_small(holder) -> None:
    _wait_free(2.0)
    holder(1.5)
    cfg = RayConfig(address="local", min_worker_cpus=0.3)
    plan = _plan(cfg, workers=4, allowed=lambda w: 8 % w == 0)
    # 0.5 free: 4 x 0.125 and 2 x 0.25 are below 0.3; 3 does not divide the batch; 1 x 0.5 fits.
    assert (plan.num_workers, plan.cpus, plan.threads) == (1, 0.5, 2)
    assert "instead of 4" in plan.note and "4 workers need at least 1.2 free" in plan.note


def test_nothing_fits_fails_within_the_timeout_naming_the_holder(holder) -> None:
    _wait_free(2.0)
    holder(1.9)
    cfg = RayConfig(address="local", placement_timeout_s=2)
    t0 = time.monotonic()
    with pytest.raises(PlacementError) as err:
        _plan(cfg)
    assert time.monotonic() - t0 < 10
    text = str(err.value)
    assert "within 2 s" in text and "0.1 free" in text
    assert "1.9 CPU by actor" in text
    assert "train.num_workers" in text and "serve.replica_cpus" in text and "ray.placement_timeout_s" in text


def test_exact_asks_for_the_config_and_fails_in_time(holder) -> None:
    _wait_free(2.0)
    holder(0.5)
    cfg = RayConfig(address="local", placement="exact", placement_timeout_s=2)
    plan = plan_workers(
        cfg, stage="pretrain", num_workers=2, cpus_per_worker=1, use_gpu=False, setting="train"
    )
    assert (plan.num_workers, plan.cpus, plan.mode) == (2, 1.0, "exact")
    t0 = time.monotonic()
    with pytest.raises(PlacementError, match=r"pretrain: could not place 2 worker\(s\) x \{1 CPU\}"):
        reserve(cfg, plan, setting="train")
    assert time.monotonic() - t0 < 10
    assert usage().free.get("CPU") == pytest.approx(1.5)  # the check's placement group is gone


def test_pretraining_on_two_workers_trains_beside_a_replica(holder, tmp_path: Path) -> None:
    """The bug of a served champion: 2 workers x 1 CPU never fit beside a 0.5-CPU replica."""
    from training.pretrain import pretrain

    _wait_free(2.0)
    holder(0.5)
    tokens: ArtifactRef = write_tokens(tmp_path / "tokens")
    cfg = tiny_config(num_workers=2, max_steps=4, checkpoint_every=4, val_every=4)
    result = pretrain(cfg, tokens, workdir=tmp_path / "wd")
    assert result.metrics["steps"] == 4
    assert result.placement["placement.num_workers"] == 2
    assert result.placement["placement.cpus_per_worker"] == pytest.approx(0.75)


def test_pretraining_that_cannot_be_placed_fails_with_the_message(holder, tmp_path: Path) -> None:
    from training.pretrain import pretrain

    _wait_free(2.0)
    holder(0.5)
    tokens = write_tokens(tmp_path / "tokens")
    cfg = tiny_config(num_workers=2, cpus_per_worker=1, max_steps=4, checkpoint_every=4)
    cfg.ray.placement = "exact"
    cfg.ray.placement_timeout_s = 2
    cfg.ray.num_cpus = None  # the session's Ray is already up; the check only applies to a new one
    t0 = time.monotonic()
    with pytest.raises(PlacementError) as err:
        pretrain(cfg, tokens, workdir=tmp_path / "wd")
    assert time.monotonic() - t0 < 60
    text = str(err.value)
    assert "could not place 2 worker(s) x {1 CPU}" in text and "0.5 CPU by actor holder-0" in text


def test_ingestion_reads_beside_the_replica_and_asks_one_cpu_a_task_on_a_cluster(holder) -> None:
    from training.data.ingest import plan_readers

    _wait_free(2.0)
    holder(0.5)
    local = plan_readers(RayConfig(address="local"))
    assert (local.mode, local.num_workers, local.cpus) == ("fit", 2, 0.75)
    cluster = plan_readers(RayConfig(address="local", placement="exact"))
    assert (cluster.mode, cluster.num_workers, cluster.cpus) == ("exact", 1, 1.0)
