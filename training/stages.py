"""The tracked stage functions: what a Prefect task, the CLI and a test all call.

Each function takes the whole :class:`~training.config.Config` and the :class:`StageRun` it
reports to, runs the library code of its stage, logs params, metrics and text to the stage's
MLflow run, and records the artifacts it read and wrote (with their lineage edges) in the
catalog through the same ``StageRun``. Nothing here knows about Prefect.
"""

from __future__ import annotations

import logging
from pathlib import Path

from catalog.artifacts import ArtifactRef, open_artifact
from catalog.tracking import StageRun
from training.config import Config
from training.data.ingest import IngestResult, ingest
from training.data.tokenize import TokenizeResult, tokenize

log = logging.getLogger(__name__)


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
    cfg: Config, run: StageRun, corpus: ArtifactRef | str | Path, *, out: str | Path | None = None
) -> TokenizeResult:
    """Train the BPE tokenizer on a corpus and write train/val token shards; track both artifacts."""
    corpus_ref = corpus if isinstance(corpus, ArtifactRef) else open_artifact(corpus, kind="corpus")
    run.use(corpus_ref, context="training")
    run.log_params({"data": cfg.data.model_dump(mode="json"), "seed": cfg.seed})
    result = tokenize(
        cfg.data,
        corpus_ref,
        artifact_root=None if out is not None else cfg.tracking.artifact_root,
        out=out,
        seed=cfg.seed,
    )
    run.log_metrics({k: float(v) for k, v in result.stats.items() if isinstance(v, int | float)})
    run.produce(result.tokenizer)
    run.produce(result.tokens, log_files=False)
    return result
