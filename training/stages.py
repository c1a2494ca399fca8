"""The tracked stage functions: what a Prefect task, the CLI and a test all call.

Each function takes the whole :class:`~core.config.Config` and the :class:`StageRun` it
reports to, runs the library code of its stage, logs params, metrics and text to the stage's
MLflow run, and records the artifacts it read and wrote (with their lineage edges) in the
catalog through the same ``StageRun``. Nothing here knows about Prefect.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.artifacts import ArtifactRef, file_sha256, open_artifact
from catalog.retention import CHECKPOINT_INPUTS
from catalog.tracking import StageRun
from core.config import Config, nightshift_home
from core.config_base import ConfigError
from core.files import write_atomic
from gpt.generate import generate_text
from gpt.model_io import WEIGHTS_FILE, open_model, save_model
from gpt.tokenizer import TOKENIZER_FILE, load_tokenizer
from training.data.ingest import IngestResult, ingest
from training.data.shards import TokenShards
from training.data.tokenize import TokenizeResult, tokenize
from training.mlflow_model import log_model
from training.pretrain.run import pretrain

log = logging.getLogger(__name__)


def numeric_leaves(d: dict, prefix: str = "") -> dict[str, float]:
    """``{"tokens": {"train": 5}}`` → ``{"tokens.train": 5.0}``: every number of a nested dict, as metrics."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(numeric_leaves(v, f"{prefix}{k}."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def source_refs(manifest: dict) -> list[ArtifactRef]:
    """One ``source`` artifact per input item the manifest lists, so lineage starts at the raw data."""
    return [
        ArtifactRef(
            kind="source",
            path=Path(src["item"]),
            sha256=src["sha256"],
            metadata={"source": src["source"], "bytes": src.get("bytes")},
            location=src["item"],
        )
        for src in manifest.get("sources", [])
    ]


def ingest_stage(
    cfg: Config, run: StageRun, *, sources: list[str] | None = None, out: str | Path | None = None
) -> IngestResult:
    """Ingest ``sources`` (default: ``cfg.data.sources``) into a ``corpus`` artifact and track it."""
    run.log_params({"data": cfg.data.model_dump(mode="json"), "seed": cfg.seed})
    result = ingest(
        cfg.data,
        sources=sources,
        out=out,
        artifact_root=None if out is not None else cfg.tracking.artifact_root,
        ray=cfg.ray,
    )
    m = result.manifest
    for ref in source_refs(m):
        run.use(ref, context="source")
    metrics = {
        "documents_in": m["documents_in"],
        "documents_kept": m["documents_kept"],
        "quarantined": len(m["quarantined"]),
        **{f"dropped.{reason}": n for reason, n in m["dropped"].items()},
    }
    for key in ("bytes_in", "bytes_out"):
        if key in m:
            metrics[key] = m[key]
    run.log_metrics(metrics)
    run.log_text(result.datacard, "DATACARD.md")
    run.produce(result.artifact)
    log.info(
        "corpus %s: %d of %d documents kept",
        result.artifact.sha256[:16],
        m["documents_kept"],
        m["documents_in"],
    )
    return result


def tokenize_stage(
    cfg: Config,
    run: StageRun,
    corpus: ArtifactRef | str | Path,
    *,
    out: str | Path | None = None,
    champion: ArtifactRef | None = None,
) -> TokenizeResult:
    """Train the BPE tokenizer on a corpus and write train/val token shards; track both artifacts.

    With ``champion`` (its ``model`` artifact, under ``data.tokenizer: reuse``) the corpus is encoded
    with the champion's tokenizer instead, so tonight's model shares its vocabulary; the lineage
    records that the stage read the champion.
    """
    corpus_ref = corpus if isinstance(corpus, ArtifactRef) else open_artifact(corpus, kind="corpus")
    run.use(corpus_ref, context="training")
    if champion is not None:
        run.use(champion, context="tokenizer")
    source = f"champion model {champion.sha256[:16]}" if champion is not None else "trained on the corpus"
    run.log_params({"data": cfg.data.model_dump(mode="json"), "seed": cfg.seed, "tokenizer_source": source})
    result = tokenize(
        cfg.data,
        corpus_ref,
        artifact_root=None if out is not None else cfg.tracking.artifact_root,
        out=out,
        seed=cfg.seed,
        tokenizer_file=champion.path / TOKENIZER_FILE if champion is not None else None,
    )
    if champion is not None:
        vocab = result.tokenizer.metadata.get("vocab_size")
        log.info("tokenize: reused the tokenizer %s of the champion", result.tokenizer.sha256[:16])
        if vocab != cfg.data.vocab_size:
            log.warning(
                "tokenize: the champion's tokenizer has %s tokens, data.vocab_size asks for %d; kept the "
                "champion's (set data.tokenizer: retrain to train a new one, and pretrain from scratch)",
                vocab,
                cfg.data.vocab_size,
            )
    run.log_metrics(numeric_leaves(result.stats))
    run.produce(result.tokenizer)
    run.produce(result.tokens, log_files=False)
    return result


@dataclass
class PretrainStageResult:
    model: ArtifactRef
    metrics: dict[str, float]
    samples: list[str]
    model_uri: str | None  # the MLflow model logged with the stage run


def unigram_entropy(tokens: ArtifactRef | str | Path, split: str = "train") -> float:
    """Entropy (nats/token) of the unigram distribution of a split: the loss of a model that
    ignores context, the bar a trained model's validation loss must clear."""
    shards = TokenShards.open(tokens)
    counts = np.zeros(shards.vocab_size, dtype=np.int64)
    for part in shards.split(split):
        counts += np.bincount(np.asarray(part), minlength=shards.vocab_size)[: shards.vocab_size]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def check_parent(cfg: Config, parent: ArtifactRef, tokenizer: ArtifactRef) -> None:
    """Raise unless ``parent`` can be continued with tonight's model shape and tokenizer.

    The tokenizers are compared by the hash of their ``tokenizer.json``: the same vocabulary and
    merges, byte for byte, as ``data.tokenizer: reuse`` copies them.
    """
    problems = []
    shape, _, _ = open_model(parent, verify=False)  # open_artifact verified it when it was resolved
    theirs, ours = shape.model_dump(exclude={"dropout"}), cfg.model.model_dump(exclude={"dropout"})
    if theirs != ours:
        diff = {k: (theirs[k], ours[k]) for k in ours if theirs.get(k) != ours[k]}
        problems.append(
            f"model: tonight's shape differs from the parent model {parent.sha256[:16]} (parent, tonight: "
            f"{diff}); set train.init: scratch to train the new shape, or restore the parent's"
        )
    a, b = file_sha256(parent.path / TOKENIZER_FILE), file_sha256(tokenizer.path / TOKENIZER_FILE)
    if a != b:
        problems.append(
            f"data.tokenizer: the parent model {parent.sha256[:16]} uses tokenizer {a}, tonight's tokens "
            f"were made with tokenizer {b}; set data.tokenizer: reuse (the champion's) or train.init: scratch"
        )
    if problems:
        raise ConfigError(problems, source=f"train.init {cfg.train.init!r}")


def pretrain_stage(
    cfg: Config,
    run: StageRun,
    tokens: ArtifactRef | str | Path,
    tokenizer: ArtifactRef | str | Path,
    *,
    out: str | Path | None = None,
    workdir: str | Path | None = None,
    parent: ArtifactRef | None = None,
    replay: ArtifactRef | None = None,
) -> PretrainStageResult:
    """Pretrain the GPT on token shards; publish the ``model`` artifact and log it as an MLflow model.

    Checkpoints live in ``workdir`` (default: ``$NIGHTSHIFT_HOME/runs/pretrain-<inputs+config hash>``),
    so a retried task or a re-run of the same config resumes from the newest good checkpoint.

    With ``parent`` (a ``model`` artifact, ``train.init``) training starts from its weights instead
    of random ones, and the lineage records it; ``replay`` (the parent's tokens) supplies
    ``train.replay`` of every batch.

    Raises:
        ConfigError: the parent's shape or tokenizer differs from tonight's (both named).
    """
    tokens_ref = tokens if isinstance(tokens, ArtifactRef) else open_artifact(tokens, kind="tokens")
    tok_ref = tokenizer if isinstance(tokenizer, ArtifactRef) else open_artifact(tokenizer, kind="tokenizer")
    if parent is not None:
        check_parent(cfg, parent, tok_ref)
    run.use(tokens_ref, context="training")
    run.use(tok_ref, context="training")
    if parent is not None:
        run.use(parent, context="parent")
    if replay is not None:
        run.use(replay, context="replay")
    run.log_params({"model": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")})
    run.log_params(
        {
            "parent_model": parent.sha256 if parent is not None else "scratch",
            "replay_tokens": replay.sha256 if replay is not None else "none",
        }
    )
    if workdir is None:
        key = hashlib.sha256(
            json.dumps(
                [
                    tokens_ref.sha256,
                    cfg.model.model_dump(mode="json"),
                    cfg.train.model_dump(mode="json"),
                    cfg.seed,
                    parent.sha256 if parent is not None else None,
                    replay.sha256 if replay is not None else None,
                ],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        workdir = nightshift_home() / "runs" / f"pretrain-{key}"
    # gc keeps these checkpoints while the tokens they train on are kept (catalog/retention.py).
    Path(workdir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(workdir) / CHECKPOINT_INPUTS, json.dumps({"tokens": tokens_ref.sha256}))
    entropy = unigram_entropy(tokens_ref)
    result = pretrain(
        cfg,
        tokens_ref,
        workdir=workdir,
        mlflow_run_id=run.mlflow_run_id,
        tracking_uri=cfg.tracking.mlflow_uri if run.mlflow_run_id else None,
        init_weights=parent.path / WEIGHTS_FILE if parent is not None else None,
        replay=replay,
    )
    metrics = {**result.metrics, "unigram_entropy": entropy}
    run.log_metrics({"unigram_entropy": entropy})
    if result.placement:
        run.log_params(result.placement)

    tokenizer_obj = load_tokenizer(tok_ref)
    samples = []
    for i, prompt in enumerate(cfg.train.sample_prompts):
        (c,) = generate_text(
            result.model,
            tokenizer_obj,
            prompt,
            max_new_tokens=min(96, cfg.model.block_size // 2),
            temperature=0.8,
            top_k=50,
            seed=cfg.seed + i,
        )
        samples.append(prompt + c.text)
    run.log_text("\n\n---\n\n".join(samples), "samples.md")

    ref = save_model(
        result.model,
        tok_ref.path / "tokenizer.json",
        root=cfg.tracking.artifact_root if out is None else None,
        dest=out,
        metadata={
            "metrics": metrics,
            "tokens": tokens_ref.sha256,
            "tokenizer": tok_ref.sha256,
            "parent": parent.sha256 if parent is not None else None,
        },
    )
    run.produce(ref)
    model_uri = None
    if run.mlflow_run_id:
        model_uri = log_model(ref, run_id=run.mlflow_run_id, tracking_uri=cfg.tracking.mlflow_uri)
    log.info(
        "model %s: val_loss %.3f (unigram entropy %.3f)",
        ref.sha256[:16],
        metrics.get("val_loss", -1),
        entropy,
    )
    return PretrainStageResult(model=ref, metrics=metrics, samples=samples, model_uri=model_uri)
