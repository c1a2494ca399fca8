"""The ingest stage: sources -> Ray Data (read, clean, filter, fingerprint) -> dedup -> ``corpus`` artifact.

Parallel work runs as a Ray Data transform over read units (a file or an archive each):
``from_items(units) -> flat_map(read_rows)``, where each record is read, cleaned, filtered and
fingerprinted in one pass (:mod:`training.data.transform`). The sequential part — exact and near
dedup (first in source order wins) and writing the shards — runs in the driver while it
iterates the output in order (``preserve_order``), so the result is deterministic and the corpus
is never materialised: the driver holds one block of records, the open shard, and per kept
document a fixed-size fingerprint (see :mod:`training.data.dedup`). On a cluster the same
transform spreads over every node's CPUs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from catalog.artifacts import ArtifactRef, publish
from catalog.redact import redact
from core.config import RayConfig
from core.data_config import DataConfig
from core.ray_setup import init_ray
from training.data.dedup import Deduper, lsh_params
from training.data.report import datacard
from training.data.sources import SourceError, resolve_sources
from training.data.transform import OUT_FIELDS, PII_TYPES, read_rows
from training.placement import WorkerPlan, plan_workers, reserve
from training.progress import Progress

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)

FORMAT = "nightshift.corpus/1"


class EmptyCorpusError(ValueError):
    """Ingestion kept no document, so there is nothing to train a tokenizer on."""


@dataclass
class IngestResult:
    """What :func:`ingest` produced."""

    artifact: ArtifactRef  # kind "corpus"
    manifest: dict[str, Any]  # also the artifact's manifest.json
    datacard: str  # Markdown, also the artifact's DATACARD.md


def plan_readers(ray_cfg: RayConfig) -> WorkerPlan:
    """How many read tasks run at once and the CPUs each reserves (``training.placement``).

    On one machine (``fit``), one task per CPU, the tasks sharing the CPUs left free beside the Serve
    replicas, so ingestion never waits behind a served model. On a cluster (``exact``), tasks of one
    CPU, as many at once as Ray Data finds free; one of them must be placeable in time.
    """
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    plan = plan_workers(
        ray_cfg, stage="ingest", num_workers=cpus, cpus_per_worker=1, use_gpu=False, setting="ray"
    )
    if plan.mode == "exact":
        # A cluster: one read task must be placeable; Ray Data runs as many as there are free CPUs.
        note = "read tasks of 1 CPU each, as many at once as the cluster has free"
        plan = dataclasses.replace(plan, num_workers=1, note=note)
    return plan


def _ordered_chunks(
    units: list[dict[str, Any]], cfg: DataConfig, plan: WorkerPlan
) -> Iterator[dict[str, list[Any]]]:
    """Chunks of processed records of every unit, in unit order, computed by Ray Data.

    One ``flat_map`` over the read units does all per-document work (:func:`read_rows`), at most
    ``plan.num_workers`` tasks at a time of ``plan.cpus`` each; ``preserve_order`` keeps the source
    order that the dedup decisions depend on, and the streaming executor bounds how much waits in
    the object store, so memory stays flat.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items(units, override_num_blocks=len(units))
    concurrency = plan.num_workers if plan.mode == "fit" else None
    ds = ds.flat_map(partial(read_rows, cfg=cfg), num_cpus=plan.cpus, concurrency=concurrency)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        # Column-wise conversion of only what the driver reads; no per-row dicts.
        yield {k: batch.column(k).to_pylist() for k in OUT_FIELDS}


class _ShardWriter:
    """Writes ``shards/docs-NNNNN.jsonl`` files of about ``shard_bytes`` each."""

    def __init__(self, root: Path, shard_bytes: int):
        self.dir = root / "shards"
        self.dir.mkdir(parents=True)
        self.shard_bytes = shard_bytes
        self.shards: list[dict[str, Any]] = []
        self._f: IO[bytes] | None = None
        self.bytes = 0

    def write(self, line: bytes) -> None:
        """Append one finished JSONL line (see :func:`training.data.transform.corpus_line`)."""
        if (
            self._f is None
            or self.shards[-1]["bytes"] + len(line) > self.shard_bytes
            and self.shards[-1]["documents"]
        ):
            self._open()
        assert self._f is not None
        self._f.write(line)
        self.shards[-1]["bytes"] += len(line)
        self.shards[-1]["documents"] += 1
        self.bytes += len(line)

    def _open(self) -> None:
        self.close()
        name = f"shards/docs-{len(self.shards):05d}.jsonl"
        self.shards.append({"path": name, "documents": 0, "bytes": 0})
        self._f = open(self.dir.parent / name, "wb")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


@dataclass
class _Tally:
    """What the deduplicating writer saw: every document read is kept, dropped or quarantined."""

    deduper: Deduper
    writer: _ShardWriter
    quarantined: list[dict[str, Any]]
    dropped: Counter[str] = dataclasses.field(default_factory=Counter)
    pii: Counter[str] = dataclasses.field(default_factory=Counter)
    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    kept: int = 0
    gutenberg: int = 0
    docs_read: int = 0
    bytes_in: int = 0

    def take(self, col: dict[str, Any]) -> None:
        """One chunk of the Ray Data pipeline's rows: documents, input files and quarantined items."""
        for i, kind in enumerate(col["kind"]):
            if kind == "doc":
                self._doc(col, i)
            elif kind == "input":
                nbytes = col["nbytes"][i]
                self.inputs.append(
                    {
                        "source": col["source"][i],
                        "item": col["item"][i],
                        "sha256": col["sha256"][i],
                        "bytes": nbytes,
                    }
                )
                self.bytes_in += nbytes
            elif kind == "quarantine":
                self.quarantined.append(
                    {"source": col["source"][i], "item": col["item"][i], "reason": col["reason"][i]}
                )

    def _doc(self, col: dict[str, Any], i: int) -> None:
        self.docs_read += 1
        reason = col["reason"][i]
        if not reason:  # the cleaning filters passed it; deduplication is global, so it happens here
            sig = col["sig"][i]
            reason = self.deduper.check(
                col["item"][i], col["thash"][i], np.frombuffer(sig, dtype=np.uint32) if sig else None
            )
        if reason:
            self.dropped[reason] += 1
            return
        self.kept += 1
        self.writer.write(col["line"][i])
        self.gutenberg += col["gutenberg"][i]
        for t in PII_TYPES:
            self.pii[t] += col[f"pii_{t}"][i]

    def manifest(self, cfg: DataConfig, card_config: dict[str, Any]) -> dict[str, Any]:
        """The corpus manifest: counts that add up, what was changed, the dedup settings, the inputs."""
        bands, rows = lsh_params(cfg.minhash_threshold, cfg.minhash_num_perm) if cfg.near_dedup else (0, 0)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "documents_in": self.docs_read + len(self.quarantined),
            "documents_kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "quarantined": self.quarantined,
            "modifications": {
                "pii_replaced": {t: self.pii[t] for t in PII_TYPES},
                "gutenberg_stripped": self.gutenberg,
            },
            "dedup": {
                "exact_removed": self.deduper.stats.exact,
                "near_removed": self.deduper.stats.near,
                "minhash": {
                    "num_perm": cfg.minhash_num_perm,
                    "threshold": cfg.minhash_threshold,
                    "shingle_words": cfg.shingle_words,
                    "bands": bands,
                    "rows": rows,
                },
                "near_examples": self.deduper.stats.examples,
            },
            "bytes_in": self.bytes_in,
            "bytes_out": self.writer.bytes,
            "shards": self.writer.shards,
            "sources": self.inputs,
            "config": card_config,
        }
        assert manifest["documents_in"] == self.kept + sum(self.dropped.values()) + len(self.quarantined)
        return manifest


def ingest(
    cfg: DataConfig,
    *,
    sources: list[str] | None = None,
    out: str | Path | None = None,
    artifact_root: str | Path | None = None,
    ray: RayConfig | None = None,
) -> IngestResult:
    """Read, clean, filter and deduplicate sources into a published ``corpus`` artifact.

    Args:
        cfg: the data config (every step can be switched there).
        sources: paths, globs, archives, ``tar://member-glob::archive`` and fsspec URLs;
            default ``cfg.sources``.
        out: publish exactly at this directory. Exactly one of ``out`` and ``artifact_root``.
        artifact_root: publish at ``artifact_root/corpus/<sha256[:16]>``.
        ray: where Ray runs (default: local).

    Returns:
        The artifact, its manifest and its data card.

    Raises:
        SourceError: a source is missing or matches no files (raised before Ray starts).
        EmptyCorpusError: every document was dropped or quarantined.
        ValueError: both or neither of ``out`` and ``artifact_root``.
    """
    if (out is None) == (artifact_root is None):
        raise ValueError("ingest() takes exactly one of out= and artifact_root=")
    problems = cfg.problems()
    if problems:
        raise ValueError("data config: " + "; ".join(problems))
    source_list = list(sources if sources is not None else cfg.sources)
    t0 = time.perf_counter()
    units, quarantined = resolve_sources(source_list, cfg)
    log.info("ingest: %d sources -> %d read units", len(source_list), len(units))

    ray_cfg = ray or RayConfig(num_cpus=2)
    init_ray(ray_cfg)
    plan = plan_readers(ray_cfg)
    log.info("ingest on Ray Data: %s", plan.note)
    reserve(ray_cfg, plan, setting="ray")
    t_ray = time.perf_counter()

    deduper = Deduper(
        exact=cfg.exact_dedup,
        near=cfg.near_dedup,
        num_perm=cfg.minhash_num_perm,
        threshold=cfg.minhash_threshold,
    )
    # The manifest and data card are read by anyone: a source URL's credentials are masked.
    card_config = redact(cfg.model_dump(mode="json") | {"sources": source_list})

    ctx_publish = publish("corpus", dest=out) if out is not None else publish("corpus", root=artifact_root)
    # Documents read, kept and dropped: a live bar on a terminal, a log line every 1,000.
    with ctx_publish as staging, Progress("ingest", None, unit="docs", every=1000) as bar:
        tally = _Tally(deduper, _ShardWriter(staging.path, cfg.shard_bytes), quarantined)
        try:
            for col in _ordered_chunks(units, cfg, plan) if units else ():
                bar.update(tally.docs_read, kept=tally.kept, dropped=sum(tally.dropped.values()))
                tally.take(col)
            bar.update(tally.docs_read, kept=tally.kept, dropped=sum(tally.dropped.values()))
        finally:
            tally.writer.close()
        t_done = time.perf_counter()
        if tally.kept == 0:
            reasons = dict(tally.dropped) | {"quarantined": len(quarantined)}
            raise EmptyCorpusError(
                f"ingest kept no document from {source_list} (dropped/quarantined: {reasons}); "
                "check the sources and the filters (data.min_chars, data.max_symbol_ratio, ...)"
            )
        manifest = tally.manifest(cfg, card_config)
        card = datacard(manifest)
        (staging.path / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        (staging.path / "DATACARD.md").write_text(card)
        seconds = {
            "resolve": round(t_ray - t0, 3),
            "pipeline": round(t_done - t_ray, 3),
            "total": round(time.perf_counter() - t0, 3),
        }
        staging.metadata.update(
            {
                "documents_in": manifest["documents_in"],
                "documents_kept": tally.kept,
                "bytes_in": tally.bytes_in,
                "bytes_out": tally.writer.bytes,
                "seconds": seconds,
                "mb_per_s": round(tally.bytes_in / 1e6 / max(seconds["total"], 1e-9), 3),
            }
        )
    assert staging.ref is not None
    log.info("ingest: kept %d of %d documents -> %s", tally.kept, manifest["documents_in"], staging.ref.path)
    return IngestResult(artifact=staging.ref, manifest=manifest, datacard=card)


__all__ = ["EmptyCorpusError", "IngestResult", "SourceError", "ingest"]
