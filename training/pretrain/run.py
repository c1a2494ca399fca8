"""The pretrain stage: check the inputs, train (here or on Ray Train), return the trained GPT."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from catalog.artifacts import ArtifactRef
from core.config import Config
from core.config_base import ConfigError
from gpt.model import GPT
from training.data.shards import TokenShards
from training.pretrain import checkpoint as ckpt
from training.pretrain.data import ValWindows
from training.pretrain.launch import fit_with_ray, fit_worker, local_cpus, threads_per_worker
from training.progress import Progress, relayed

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns."""

    model: GPT  # trained weights on CPU, eval mode
    metrics: dict[str, float]  # final train_loss, val_loss, val_ppl, tokens_per_s, mfu, steps, tokens_seen
    history: list[dict[str, float]] = field(
        default_factory=list
    )  # per logged step: step, train_loss, lr, ...
    checkpoint_dir: Path = Path()  # the final checkpoint (model.safetensors, lightning.ckpt, manifest.json)
    placement: dict[str, Any] = field(default_factory=dict)  # the Ray workers' plan (placement.* params)


def _section_problems(cfg: Config) -> list[str]:
    # The model and train sections only: the data section's target vocabulary is superseded by the
    # real one of the shards, checked below.
    return [f"model.{p}" for p in cfg.model.problems()] + [f"train.{p}" for p in cfg.train.problems()]


def check_inputs(cfg: Config, shards: TokenShards) -> list[str]:
    """Every problem of ``cfg`` against the token shards and the machine, before any compute."""
    problems = _section_problems(cfg)
    window = cfg.model.block_size + 1
    for split in ("train", "val"):
        try:
            n = len(shards.split(split))
        except KeyError:
            problems.append(f"tokens: {shards.ref.path} has no '{split}' split")
            continue
        if n < window:
            problems.append(
                f"model.block_size: a context of {window} tokens (block_size + 1) is longer than the "
                f"{split} split ({n} tokens); lower block_size or tokenize more text"
            )
    if cfg.model.vocab_size < shards.vocab_size:
        problems.append(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's vocabulary "
            f"{shards.vocab_size} ({shards.ref.path}); set model.vocab_size >= {shards.vocab_size}"
        )
    tc = cfg.train
    # A local Ray never grows: with placement 'exact' a request beyond its CPUs could never be placed.
    # ('fit' and 'auto' size the workers to what is free; see training/placement.py.)
    if tc.num_workers > 1 and cfg.ray.address == "local" and cfg.ray.placement == "exact":
        cpus = local_cpus(cfg.ray)
        need = tc.num_workers * (tc.cpus_per_worker or 1)
        if not tc.use_gpu and need > cpus:
            problems.append(
                f"train.num_workers: {tc.num_workers} workers x {tc.cpus_per_worker or 1} CPU(s) need "
                f"{need} CPUs; the local Ray has {cpus} (ray.placement 'exact'; 'fit' shares them)"
            )
    return problems


def replay_problems(cfg: Config, shards: TokenShards, replay: TokenShards) -> list[str]:
    """Problems of mixing ``replay``'s train split into batches of ``shards``."""
    out = []
    if replay.vocab_size != shards.vocab_size:
        out.append(
            f"replay tokens: {replay.ref.path} has a vocabulary of {replay.vocab_size}, tonight's tokens "
            f"{shards.vocab_size}; they were made with different tokenizers (set train.replay: 0)"
        )
    if len(replay.split("train")) < cfg.model.block_size + 1:
        out.append(f"replay tokens: the train split of {replay.ref.path} is shorter than one window")
    return out


def _prepare_workdir(workdir: Path, resume: bool) -> None:
    root = workdir / "checkpoints"
    if not resume and (ckpt.list_steps(root) or (workdir / "history.jsonl").exists()):
        # Nothing written is lost: an earlier run's checkpoints are set aside, not deleted.
        aside = workdir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True)
        for name in ("checkpoints", "history.jsonl", "summary.json"):
            if (workdir / name).exists():
                shutil.move(str(workdir / name), str(aside / name))
        log.info("resume=False: moved the previous run's checkpoints to %s", aside)
    (workdir / "summary.json").unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            # A resumed run repeats the steps after its checkpoint; the later row wins.
            rows.setdefault(int(row["step"]), {}).update(row)
    steps = sorted(rows)
    return [rows[s] for s in steps]


@torch.no_grad()
def evaluate_val(model: GPT, shards: TokenShards, cfg: Config) -> float:
    """Mean loss of ``model`` over the same fixed validation windows the training loop uses."""
    ds = ValWindows(
        shards.split("val"), cfg.model.block_size, cfg.train.batch_size, cfg.train.val_batches, 0, 1
    )
    losses = [float(model(x, y)[1]) for x, y in (ds[i] for i in range(len(ds)))]
    return sum(losses) / len(losses)


def pretrain(
    cfg: Config,
    tokens: str | Path | ArtifactRef,
    *,
    workdir: str | Path,
    mlflow_run_id: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = True,
    peak_flops: float | None = None,
    callbacks: Sequence[Any] = (),
    init_weights: str | Path | None = None,
    replay: str | Path | ArtifactRef | None = None,
) -> PretrainResult:
    """Pretrain a GPT on a ``tokens`` artifact; one process or Ray Train workers by ``train.num_workers``.

    Args:
        cfg: the pipeline config (``model``, ``train``, ``ray``, ``seed`` are used).
        tokens: a ``tokens`` artifact (path or ref); verified before training.
        workdir: holds ``checkpoints/step-NNNNNN/``, ``history.jsonl``, ``summary.json`` and Ray
            Train's storage (``ray/``).
        mlflow_run_id: an existing MLflow run (the stage's child run) that receives the metrics
            through Lightning's ``MLFlowLogger``, from rank 0; the run is left open.
        tracking_uri: MLflow tracking URI of that run.
        resume: continue from the newest good checkpoint in ``workdir``; ``False`` sets earlier
            checkpoints aside (``workdir/previous-*``) and starts afresh.
        peak_flops: peak FLOP/s of one worker's device for MFU (default: ``train.peak_flops``, else
            measured with a matmul at start).
        callbacks: extra Lightning callbacks (picklable: they travel to Ray workers).
        init_weights: a ``model.safetensors`` of the same shape to start from (a warm start) instead of
            random weights; a resumed run starts from its checkpoint instead.
        replay: a ``tokens`` artifact of the same vocabulary whose train split supplies
            ``train.replay`` of every batch (the parent model's data, against forgetting it).

    Returns:
        The trained model on CPU in eval mode, final metrics, the logged history and the final
        checkpoint directory.

    Raises:
        ConfigError: listing every problem of the config against the data and the machine, before
            any training.
        RuntimeError: when training fails (beyond ``train.max_failures`` restarts on Ray) or ends
            short of ``train.max_steps``.
    """
    problems = _section_problems(cfg)
    try:
        shards = TokenShards.open(tokens)
    except Exception as e:  # a missing or corrupt artifact is one more problem to list
        raise ConfigError([*problems, f"tokens: {e}"], source="pretrain inputs") from e
    problems = check_inputs(cfg, shards)
    replay_shards = None
    if replay is not None and cfg.train.replay > 0:
        try:
            replay_shards = TokenShards.open(replay)
        except Exception as e:
            problems.append(f"replay tokens: {e}")
        else:
            problems += replay_problems(cfg, shards, replay_shards)
    if init_weights is not None and not Path(init_weights).is_file():
        problems.append(f"train.init: the parent's weights {init_weights} are missing")
    if problems:
        raise ConfigError(problems, source="pretrain inputs")

    workdir = Path(workdir).resolve()
    _prepare_workdir(workdir, resume)
    tc = cfg.train
    threads = threads_per_worker(cfg) if tc.num_workers > 1 or tc.cpus_per_worker else 0
    payload: dict[str, Any] = {
        "cfg": cfg.model_dump(mode="json"),
        "tokens": str(shards.ref.path),
        "workdir": str(workdir),
        "threads": threads,
        "mlflow_run_id": mlflow_run_id,
        "tracking_uri": tracking_uri,
        "peak_flops": peak_flops,
        "callbacks": list(callbacks),
        "init_weights": str(init_weights) if init_weights is not None else None,
        "replay": str(replay_shards.ref.path) if replay_shards is not None else None,
    }
    t0 = time.perf_counter()
    log.info(
        "pretrain: %d steps x %d sequences x %d tokens on %d worker(s)%s",
        tc.max_steps, tc.batch_size * tc.grad_accum, cfg.model.block_size, tc.num_workers,
        " (Ray Train)" if tc.num_workers > 1 else "",
    )  # fmt: skip
    placement: dict[str, Any] = {}
    # Steps, loss, tokens/s and ETA: a live bar on a terminal, a log line every log_every steps.
    with Progress(
        "pretrain", tc.max_steps, every=tc.log_every, live=None if tc.progress_bar else False
    ) as bar:
        if tc.num_workers > 1:
            with relayed(bar) as sink:  # from the Ray Train workers through a Ray queue
                placement = fit_with_ray({**payload, "progress": sink}, cfg).params()
        else:
            fit_worker({**payload, "progress": lambda step, figures: bar.update(step, **figures)})

    final = ckpt.find_latest(workdir / "checkpoints")
    if final is None or final.step != tc.max_steps:
        got = "none" if final is None else f"step {final.step}"
        raise RuntimeError(
            f"pretraining ended without a checkpoint of step {tc.max_steps} (newest good: {got})"
        )
    model = GPT(cfg.model)
    ckpt.load_weights(model, final.weights)
    model.eval()
    history = _read_history(workdir / "history.jsonl")
    summary = (
        json.loads((workdir / "summary.json").read_text()) if (workdir / "summary.json").exists() else {}
    )
    val = evaluate_val(model, shards, cfg)
    train_losses = [r["train_loss"] for r in history if "train_loss" in r]
    metrics = {
        "train_loss": float(train_losses[-1]) if train_losses else float("nan"),
        "val_loss": val,
        "val_ppl": math.exp(min(val, 50.0)),
        "tokens_per_s": float(summary.get("tokens_per_s", float("nan"))),
        "mfu": float(summary.get("mfu", float("nan"))),
        "steps": float(tc.max_steps),
        "tokens_seen": float(tc.max_steps * tc.batch_size * tc.grad_accum * cfg.model.block_size),
        "seconds": time.perf_counter() - t0,
    }
    log.info("pretrain: done, %s", {k: round(v, 4) for k, v in metrics.items()})
    return PretrainResult(
        model=model, metrics=metrics, history=history, checkpoint_dir=final.path, placement=placement
    )
