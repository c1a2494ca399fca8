"""Data-parallel RLHF: each training loop in this process, or on N Ray Train workers like pretraining.

A training loop (``train_sft``, ``train_reward``, ``train_dpo``, ``train_ppo``, ``train_grpo``)
takes a :class:`Dist`: its rank among the workers and the few collectives it needs. ``Dist()``
(one worker) makes each of them the identity, so a loop called directly runs as it always did.
With N workers every rank draws the same global batch from the same seeded generator and keeps
its N-th (:meth:`Dist.shard`); the model being trained is wrapped in ``DistributedDataParallel``
for its gradient forwards (:meth:`Dist.wrap`), which averages the gradients during backward;
metrics and the statistics that span the batch (the token count of a token-mean loss, advantage
whitening, the reward normaliser's fit) are reduced across ranks. N workers therefore follow
the 1-worker run's loss curve. PPO and GRPO ranks sample their share of the rollouts (KV cache)
and score them on their own copies of the reference, value and reward models.

:func:`run_training` is what the stages call. With ``rlhf.num_workers > 1`` it ships the models
(CPU copies, once, through the object store) to a Ray Train ``TorchTrainer`` on the Ray of
``ray.address`` (``ScalingConfig(num_workers, use_gpu)``, gloo on CPU, nccl on GPU); rank 0
reports the trained weights and the metric history as a checkpoint, which the driver loads back
into its own models before it evaluates, publishes and logs as with one worker.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as tdist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core.ray_setup import init_ray
from training.placement import plan_workers, reserve
from training.pretrain.launch import match_driver_niceness, own_niceness
from training.ray_train import fit_or_raise, torch_trainer
from training.rlhf.logprobs import masked_whiten
from training.rlhf.optim import LogFn, TrainResult

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

if TYPE_CHECKING:
    from core.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")
OUTCOME_FILE = "outcome.json"  # in rank 0's checkpoint, next to one <model>.pt per trained model


class Dist:
    """This process's place among the data-parallel workers of one training loop.

    Args:
        rank: this worker's rank (0 reports).
        world: the number of workers; 1 makes every method the identity.
        device: where collectives put their tensors (the model's device: nccl needs cuda).
    """

    def __init__(self, rank: int = 0, world: int = 1, device: str | torch.device = "cpu") -> None:
        self.rank, self.world, self.device = rank, world, torch.device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of a global batch (all of it with one worker).

        Raises:
            ValueError: the batch does not split evenly over the workers.
        """
        items = list(items)
        if self.world == 1:
            return items
        if len(items) % self.world:
            raise ValueError(
                f"a global batch of {len(items)} does not split evenly over {self.world} workers; "
                "make the batch sizes multiples of rlhf.num_workers"
            )
        k = len(items) // self.world
        return items[self.rank * k : (self.rank + 1) * k]

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` for the forwards whose backward updates it: DDP-wrapped with several workers.

        Forwards without a gradient (rollouts, old and reference log-probs, evaluation) take the
        bare model: they need no synchronisation, and the KV-cache decode is no ``forward`` DDP knows.
        """
        if self.world == 1:
            return model

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over the workers (a new tensor on :attr:`device`; ``x`` itself with one)."""
        if self.world == 1:
            return x

        out = x.detach().to(self.device, copy=True)
        tdist.all_reduce(out)
        return out

    def token_share(self, count: torch.Tensor) -> float:
        """The factor that turns this rank's token-mean loss into its part of the global token mean.

        DDP averages gradients over ranks, weighing every rank's mean equally, so a rank with fewer
        reply tokens would count more per token than in the 1-worker run. Scaled by
        ``world * count / total``, the average over ranks is the mean over every token of the batch.
        """
        if self.world == 1:
            return 1.0
        total = float(self.sum(count.to(torch.float64)))
        return self.world * float(count) / max(total, 1.0)

    def mean_metrics(self, row: Mapping[str, float], summed: Collection[str] = ()) -> dict[str, float]:
        """``row`` averaged over the workers (the keys in ``summed``, throughputs, added up)."""
        if self.world == 1:
            return dict(row)
        keys = list(row)
        total = self.sum(torch.tensor([float(row[k]) for k in keys], dtype=torch.float64)).tolist()
        return {k: v if k in summed else v / self.world for k, v in zip(keys, total, strict=True)}

    def moments(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, float]:
        """Mean and unbiased variance of the (masked) entries of ``x`` over every worker's rows."""
        m = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        n = float(self.sum(m.sum()))
        mean = float(self.sum((x * m).sum())) / max(n, 1.0)
        var = float(self.sum((((x - mean) * m) ** 2).sum())) / max(n - 1, 1.0)
        return mean, var

    def whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:func:`~training.rlhf.logprobs.masked_whiten` with the statistics of the global batch."""
        if self.world == 1:
            return masked_whiten(x, mask)
        mean, var = self.moments(x, mask)
        return (x - mean) * (var + 1e-8) ** -0.5 * mask


LOCAL = Dist()  # the one-process default of every training loop


# --- the driver -----------------------------------------------------------------------------------


def use_gpu(cfg: Config) -> bool:
    """Whether the workers train on GPUs: ``rlhf.device`` cuda, or auto on a driver that has one."""
    device = cfg.rlhf.device
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def run_training(
    cfg: Config,
    train_fn: Callable[..., Any],
    models: Mapping[str, nn.Module],
    /,
    *,
    trained: Sequence[str],
    log_metrics: LogFn,
    **kwargs: Any,
) -> Any:
    """Run ``train_fn(**models, **kwargs)`` here (one worker) or on ``rlhf.num_workers`` Ray Train workers.

    Args:
        cfg: the pipeline config (``rlhf.num_workers``, ``rlhf.device``, ``ray.*``).
        train_fn: a module-level training loop taking ``dist`` and ``log_metrics`` keywords.
        models: its model arguments by parameter name (``policy``, ``reference``, ...).
        trained: the names of the models it trains; they hold the trained weights afterwards.
        log_metrics: receives every step's metrics (after the run, in order, from Ray workers).
        kwargs: its other arguments (tokenizer, data, its ``cfg`` section, seed); picklable.

    Returns:
        The loop's result (``metrics`` and ``history``).
    """
    if cfg.rlhf.num_workers == 1:
        return train_fn(**models, **kwargs, log_metrics=log_metrics)
    res = fit_on_ray(cfg, train_fn, models, trained=trained, **kwargs)
    for row in res.history:
        log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))
    return res


def _cpu(model: nn.Module) -> nn.Module:
    # Shipped on CPU: a worker's GPU is whichever Ray assigns it, not the driver's.
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return model if on_cpu else copy.deepcopy(model).cpu()


def fit_on_ray(
    cfg: Config,
    train_fn: Callable[..., Any],
    models: Mapping[str, nn.Module],
    /,
    *,
    trained: Sequence[str],
    **kwargs: Any,
) -> TrainResult:
    """Train on ``rlhf.num_workers`` Ray Train workers; load rank 0's weights into ``models[trained]``.

    Raises:
        ValueError: ``trained`` names a model not in ``models``.
        RuntimeError: the workers failed more often than ``rlhf.max_failures`` allows, or rank 0
            reported no checkpoint.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    missing = sorted(set(trained) - set(models))
    if missing:
        raise ValueError(f"trained names {missing}, which are not among the models {sorted(models)}")
    rc = cfg.rlhf
    gpu = use_gpu(cfg)
    init_ray(cfg.ray)
    stage = f"rlhf {train_fn.__name__}"
    plan = plan_workers(
        cfg.ray,
        stage=stage,
        num_workers=rc.num_workers,
        cpus_per_worker=rc.cpus_per_worker,
        use_gpu=gpu,
        # Every batch of every loop divides by the worker count (RLHFConfig's own rule).
        allowed=lambda w: not rc.model_copy(update={"num_workers": w})._worker_problems(),
        setting="rlhf",
    )
    log.info("%s on Ray Train: %s", stage, plan.note)
    reserve(cfg.ray, plan, setting="rlhf")
    payload = ray.put({"fn": train_fn, "models": {k: _cpu(m) for k, m in models.items()}, "kwargs": kwargs})
    name = f"rlhf-{train_fn.__name__}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    temporary = rc.storage_path is None
    storage = tempfile.mkdtemp(prefix="nightshift-rlhf-") if temporary else str(rc.storage_path)
    trainer = torch_trainer(
        _worker,
        cfg.ray,
        train_loop_config={
            "payload": payload,
            "trained": list(trained),
            "threads": plan.threads,
            "use_gpu": gpu,
            "niceness": own_niceness(),
        },
        scaling_config=ScalingConfig(
            num_workers=plan.num_workers, use_gpu=gpu, resources_per_worker=plan.bundle
        ),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            # A worker group that cannot start within ray.placement_timeout_s ends the run (after one
            # retry) instead of waiting for ever.
            failure_config=FailureConfig(max_failures=rc.max_failures, controller_failure_limit=1),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        result = fit_or_raise(trainer, name, placement=(cfg.ray, plan, "rlhf"))
        if result.checkpoint is None:
            raise RuntimeError(f"{name}: rank 0 reported no checkpoint; see the Ray worker logs")
        with result.checkpoint.as_directory() as d:
            return _load_outcome(Path(d), models, trained)
    finally:
        if temporary:
            shutil.rmtree(storage, ignore_errors=True)


# --- the workers ----------------------------------------------------------------------------------


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the loop on this rank's shards; rank 0 reports weights and history."""
    import ray
    import ray.train
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
        torch.set_num_threads(int(config["threads"]))
    if config.get("niceness") is not None:
        match_driver_niceness(int(config["niceness"]))  # after set_num_threads: its pool too
    payload = ray.get(config["payload"])
    models = {k: m.to(device) for k, m in payload["models"].items()}
    kwargs = payload["kwargs"]
    # Batch order and sampling are seeded by the loop; this makes anything else (dropout) differ per rank.
    torch.manual_seed(int(kwargs.get("seed", 0)) + 1000 * (rank + 1))
    res = payload["fn"](**models, **kwargs, dist=Dist(rank, world, device))
    metrics = {k: float(v) for k, v in res.metrics.items()}
    with tempfile.TemporaryDirectory(prefix="rlhf-outcome-") as tmp:
        checkpoint = None
        if rank == 0:
            _save_outcome(Path(tmp), res, models, config["trained"])
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)  # every rank reports; rank 0's carries the weights


def _save_outcome(path: Path, res: Any, models: Mapping[str, nn.Module], trained: Sequence[str]) -> None:
    for name in trained:
        state = {k: v.detach().cpu() for k, v in models[name].state_dict().items()}
        torch.save(state, path / f"{name}.pt")
    (path / OUTCOME_FILE).write_text(json.dumps({"metrics": res.metrics, "history": res.history}))


def _load_outcome(path: Path, models: Mapping[str, nn.Module], trained: Sequence[str]) -> TrainResult:

    for name in trained:
        models[name].load_state_dict(torch.load(path / f"{name}.pt", map_location="cpu", weights_only=True))
    outcome = json.loads((path / OUTCOME_FILE).read_text())
    return TrainResult(metrics=outcome["metrics"], history=outcome["history"])
