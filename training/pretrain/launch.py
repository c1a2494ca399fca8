"""Where training runs: in this process (1 worker) or on N Ray Train workers (DDP or FSDP).

Both paths run :func:`fit_worker` with the same plain-dict payload (the config as a
``model_dump``, paths as strings, extra callbacks), so the Ray path differs only in the
strategy, the cluster environment and the checkpoint reports.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger

from core.config import Config, RayConfig
from core.ray_setup import init_ray
from core.train_config import TrainConfig
from training.data.shards import TokenShards
from training.placement import WorkerPlan, plan_workers, reserve
from training.pretrain import checkpoint as ckpt
from training.pretrain.callbacks import PeriodicCheckpoint, ProgressReport, StepMetrics
from training.pretrain.data import TokenDataModule
from training.pretrain.flops import measure_matmul_peak
from training.pretrain.module import GPTPretrainModule
from training.ray_train import fit_or_raise, torch_trainer

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)


class _AttachedMLFlowLogger:
    """Factory of Lightning's ``MLFlowLogger`` bound to the caller's existing MLflow run."""

    @staticmethod
    def make(run_id: str, tracking_uri: str | None) -> Any:
        class AttachedMLFlowLogger(MLFlowLogger):
            # The caller owns the run (it logs the model and closes it); Lightning's finalize would
            # mark it FINISHED as soon as fit returns.
            def finalize(self, status: str = "success") -> None:
                return None

        return AttachedMLFlowLogger(run_id=run_id, tracking_uri=tracking_uri)


def _resume_candidates(root: Path, in_ray: bool) -> list[Path]:
    paths = [p for _, p in ckpt.list_steps(root)]
    if in_ray:
        import ray.train

        reported = ray.train.get_checkpoint()
        if reported is not None:
            local = Path(reported.path)
            # Storage on this filesystem is used in place; remote storage is downloaded.
            paths.append(local if local.is_dir() else Path(reported.to_directory()))
    return paths


def _peak_flops(payload: dict[str, Any], cfg: Config) -> float:
    given = payload.get("peak_flops") or cfg.train.peak_flops
    if given:
        return float(given)
    if cfg.train.use_gpu:
        dtype = torch.bfloat16 if "bf16" in cfg.train.resolved_precision() else torch.float32
        return measure_matmul_peak(n=8192, seconds=1.0, dtype=dtype, device="cuda")
    return measure_matmul_peak(n=1024, seconds=0.3)


def match_driver_niceness(niceness: int) -> None:
    """Give every thread of this Ray worker the driver's CPU priority.

    The raylet starts workers at niceness 15 (``RAY_worker_niceness``), so any niceness-0 process —
    Ray's own GCS, raylet and Train controller, the driver, a neighbour's job — preempts the
    training threads; with one torch thread per core, a preempted thread stalls the others at every
    parallel region (the likeliest cause of Ray Train 1 worker x 2 CPUs running ~20% slower than the
    same run in-process).
    Linux keeps niceness per thread, so each existing thread (torch's pool included) is reniced.
    Raising priority needs ``CAP_SYS_NICE``; without it this logs a hint and carries on.
    """
    if not hasattr(os, "setpriority"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            if os.getpriority(os.PRIO_PROCESS, tid) > niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except PermissionError:
        log.warning(
            "Ray worker runs at niceness %d (driver: %d) and may not raise it; start Ray with "
            "RAY_worker_niceness=%d to train at full speed on a busy machine",
            os.getpriority(os.PRIO_PROCESS, 0), niceness, niceness,
        )  # fmt: skip
    except OSError:  # a thread that ended meanwhile
        pass


def fit_worker(payload: dict[str, Any]) -> None:
    """Train in this process: the whole run (one worker) or this rank's share (a Ray Train worker).

    Resumes from the newest checkpoint that verifies — under ``workdir/checkpoints`` or the one
    Ray Train hands back after a worker-group restart — so a lost worker costs at most
    ``checkpoint_every`` steps.

    Args:
        payload: ``cfg`` (``Config.model_dump``), ``tokens`` and ``workdir`` (paths), ``threads``,
            ``mlflow_run_id``, ``tracking_uri``, ``peak_flops``, ``callbacks`` (extra Lightning
            callbacks), ``progress`` (``sink(step, figures)``, called on rank 0 after each step),
            ``ray`` (whether this is a Ray Train worker), ``niceness`` (the driver's, which a Ray
            worker takes on), ``init_weights`` (a warm start's ``model.safetensors``) and ``replay``
            (a ``tokens`` artifact mixed into the batches by ``train.replay``).
    """
    cfg = Config.model_validate(payload["cfg"])
    tc = cfg.train
    in_ray = bool(payload.get("ray"))
    rank, world = _set_up_process(payload, tc, in_ray)
    workdir = Path(payload["workdir"])
    root = workdir / "checkpoints"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        ckpt.clean_staging(root)

    # Same seed on every rank: identical initial weights (DDP would broadcast rank 0's anyway).
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    shards = TokenShards.open(payload["tokens"], verify=False)  # the driver verified it
    replay = TokenShards.open(payload["replay"], verify=False) if payload.get("replay") else None
    dm = TokenDataModule.for_run(shards, cfg, rank=rank, world=world, replay=replay)
    module = GPTPretrainModule(cfg.model, tc)
    # Different dropout masks per rank from here on (a no-op with dropout 0).
    torch.manual_seed(cfg.seed + 1000 + rank)
    resume = ckpt.latest_good(_resume_candidates(root, in_ray), max_step=tc.max_steps)
    if resume is not None:
        log.info("rank %d resumes from %s (step %d)", rank, resume.path, resume.step)
    elif payload.get("init_weights"):
        # A warm start: the parent's weights, a fresh optimizer and the schedule from step 0 (its
        # warmup re-warms the learning rate). Every rank loads the same file.
        ckpt.load_weights(module.model, Path(payload["init_weights"]))
        log.info("rank %d starts from the weights of %s", rank, payload["init_weights"])

    tokens_per_step = tc.batch_size * tc.grad_accum * cfg.model.block_size
    metrics = StepMetrics(
        history_path=workdir / "history.jsonl",
        summary_path=workdir / "summary.json",
        log_every=tc.log_every,
        val_every=tc.val_every,
        max_steps=tc.max_steps,
        tokens_per_step=tokens_per_step,
        flops_per_token=module.model.flops_per_token(cfg.model.block_size),
        peak_flops=_peak_flops(payload, cfg),
        world=world,
    )
    saver = PeriodicCheckpoint(
        root, tc.checkpoint_every, tc.keep_checkpoints, tc.max_steps, report_to_ray=in_ray
    )
    progress = [ProgressReport(metrics, payload["progress"])] if payload.get("progress") else []
    loggers = []
    if payload.get("mlflow_run_id") and rank == 0:
        loggers.append(_AttachedMLFlowLogger.make(payload["mlflow_run_id"], payload.get("tracking_uri")))

    trainer = _trainer(
        tc,
        workdir,
        distributed=in_ray and world > 1,
        loggers=loggers,
        callbacks=[metrics, *progress, saver, *payload.get("callbacks", [])],
    )
    with warnings.catch_warnings():
        # Our loader is resumable through TokenDataModule.state_dict (the stream position), which
        # Lightning's mid-epoch resume check does not know about.
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(
            module, datamodule=dm, ckpt_path=str(resume.lightning_ckpt) if resume else None, weights_only=True
        )


def _set_up_process(payload: dict[str, Any], tc: TrainConfig, in_ray: bool) -> tuple[int, int]:
    """This worker's (rank, world size), with its torch threads, matmul precision and niceness set."""
    rank, world = 0, 1
    if in_ray:
        import ray.train  # deferred: only a Ray Train worker has a context to read

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if payload.get("threads") and not tc.use_gpu:
        torch.set_num_threads(int(payload["threads"]))
    if tc.use_gpu:
        # TF32 for what stays fp32 under bf16-mixed (and for 32-true runs on a GPU).
        torch.set_float32_matmul_precision("high")
    if in_ray and payload.get("niceness") is not None:
        match_driver_niceness(int(payload["niceness"]))  # after set_num_threads: its pool too
    return rank, world


def _trainer(
    tc: TrainConfig, workdir: Path, *, distributed: bool, loggers: list[Any], callbacks: list[Any]
) -> Any:
    """The Lightning trainer of one worker: DDP or FSDP through Ray Train when it has peers, else plain.

    One Ray Train worker has nobody to synchronise with: it trains like the in-process path (no DDP
    wrapper, whose gloo all-reduce and bucket copies cost about 7% of a CPU step at world size 1),
    and still reports checkpoints to Ray and restarts under FailureConfig.
    """
    import lightning as L  # deferred, as in fit_worker: a Ray worker imports it on its own

    strategy: Any = "auto"
    plugins: list[Any] = []
    devices: Any = 1
    if distributed:
        from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy, RayLightningEnvironment

        if tc.strategy == "fsdp":
            strategy = RayFSDPStrategy(state_dict_type="full")
        else:
            # Every parameter gets a gradient every step and the graph never changes: no unused-
            # parameter search, grads live in the all-reduce buckets (no copy in or out).
            strategy = RayDDPStrategy(
                find_unused_parameters=False, gradient_as_bucket_view=True, static_graph=True
            )
        plugins = [RayLightningEnvironment()]
        devices = "auto"
    trainer = L.Trainer(
        accelerator="gpu" if tc.use_gpu else "cpu",
        devices=devices,
        strategy=strategy,
        plugins=plugins,
        precision=tc.resolved_precision(),
        max_steps=tc.max_steps,
        # One epoch spans the whole run; a data stream that ran out early ends training short,
        # which the caller detects, instead of silently repeating batches.
        max_epochs=1,
        accumulate_grad_batches=tc.grad_accum,
        gradient_clip_val=tc.grad_clip or None,
        gradient_clip_algorithm="norm",
        limit_val_batches=0,  # validation runs from StepMetrics on optimizer-step boundaries
        num_sanity_val_steps=0,
        enable_checkpointing=False,  # PeriodicCheckpoint writes atomic, hash-checked ones
        logger=loggers or False,
        enable_progress_bar=False,  # the driver's training.progress.Progress shows ProgressReport's
        enable_model_summary=False,
        log_every_n_steps=tc.log_every,
        use_distributed_sampler=False,  # TokenDataModule shards the stream itself
        callbacks=callbacks,
        default_root_dir=str(workdir),
    )
    if distributed:
        from ray.train.lightning import prepare_trainer

        trainer = prepare_trainer(trainer)
    return trainer


def local_cpus(ray_cfg: RayConfig) -> int:
    """CPUs training may use: a local Ray's ``num_cpus`` (default all), else the running cluster's."""
    if ray_cfg.address == "local":
        import ray

        if ray.is_initialized():
            return int(ray.cluster_resources().get("CPU", 0))
        return ray_cfg.num_cpus or os.cpu_count() or 1
    return 0  # unknown until joined; Ray Train itself reports an unsatisfiable request


def threads_per_worker(cfg: Config) -> int:
    """torch threads (and Ray CPUs) of each worker."""
    if cfg.train.cpus_per_worker:
        return cfg.train.cpus_per_worker
    return max(1, (local_cpus(cfg.ray) or cfg.train.num_workers) // cfg.train.num_workers)


def own_niceness() -> int | None:
    return os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None


def plan_pretrain_workers(cfg: Config) -> WorkerPlan:
    """The workers pretraining asks Ray for (``training.placement``); Ray must be initialised."""
    tc = cfg.train
    return plan_workers(
        cfg.ray,
        stage="pretrain",
        num_workers=tc.num_workers,
        cpus_per_worker=tc.cpus_per_worker,
        use_gpu=tc.use_gpu,
        # Every rank slices the same global batch; FSDP needs at least two ranks to shard over.
        allowed=lambda w: tc.batch_size % w == 0 and (tc.strategy != "fsdp" or w > 1),
        setting="train",
    )


def fit_with_ray(payload: dict[str, Any], cfg: Config) -> WorkerPlan:
    """Run :func:`fit_worker` on Ray Train workers; restarts follow FailureConfig.

    The workers are sized by :func:`plan_pretrain_workers` (``train.num_workers`` of
    ``train.cpus_per_worker``, or fewer/smaller ones beside the Serve replicas on one machine) and
    placed within ``ray.placement_timeout_s``. Every rank slices the same global batch, so the
    result does not depend on how many workers the plan gave.

    Returns:
        The plan the workers ran with.

    Raises:
        PlacementError: the workers could not be placed in time (the message names what holds Ray).
        RuntimeError: when training fails more often than ``train.max_failures`` allows.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    tc = cfg.train
    init_ray(cfg.ray)
    plan = plan_pretrain_workers(cfg)
    log.info("pretrain on Ray Train: %s", plan.note)
    reserve(cfg.ray, plan, setting="train")
    payload = {**payload, "threads": plan.threads}
    workdir = Path(payload["workdir"])
    trainer = torch_trainer(
        fit_worker,
        cfg.ray,
        train_loop_config={**payload, "ray": True, "niceness": own_niceness()},
        scaling_config=ScalingConfig(
            num_workers=plan.num_workers, use_gpu=tc.use_gpu, resources_per_worker=plan.bundle
        ),
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        run_config=RunConfig(
            # A fresh name per call: resuming across calls goes through workdir/checkpoints, which
            # `resume=False` can set aside; within a call Ray hands back its latest checkpoint.
            name=f"pretrain-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str(workdir / "ray"),
            # A worker group that cannot start within ray.placement_timeout_s is retried once (a
            # race with another placement), then ends the run instead of waiting for ever.
            failure_config=FailureConfig(max_failures=tc.max_failures, controller_failure_limit=1),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
        ),
    )
    fit_or_raise(trainer, "pretraining", placement=(cfg.ray, plan, "train"))
    return plan
