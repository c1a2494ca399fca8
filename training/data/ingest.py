"""The ingest stage: sources -> Ray Data (read, clean, filter, fingerprint) -> dedup -> ``corpus`` artifact.

Parallel work runs as Ray Data transforms over read units (a file or an archive each):
``from_items(units) -> flat_map(read) -> map_batches(clean, filter, MinHash)``. The sequential
part — exact and near dedup (first in source order wins) and writing the shards — runs in the
driver while it iterates the output in order (``preserve_order``), so the result is
deterministic and the corpus is never materialised: the driver holds one batch of documents,
the open shard, and per kept document a fixed-size fingerprint (see :mod:`training.data.dedup`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from catalog.artifacts import ArtifactRef, publish
from training.config import RayConfig
from training.data.config import DataConfig
from training.data.dedup import Deduper, lsh_params
from training.data.report import datacard
from training.data.sources import SourceError, resolve_sources
from training.data.transform import PII_TYPES, process_batch, read_rows

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


class _ShardWriter:
    """Writes ``shards/docs-NNNNN.jsonl`` files of about ``shard_bytes`` each."""

    def __init__(self, root: Path, shard_bytes: int):
        self.dir = root / "shards"
        self.dir.mkdir(parents=True)
        self.shard_bytes = shard_bytes
        self.shards: list[dict[str, Any]] = []
        self._f: IO[bytes] | None = None
        self.bytes = 0

    def write(self, doc: dict[str, str]) -> None:
        line = (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")
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


def _doc_id(item: str, thash: bytes) -> str:
    import xxhash

    return xxhash.xxh3_64_hexdigest(item.encode("utf-8", "surrogatepass") + b"\0" + thash)


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

    import ray as ray_mod

    from training.ray_setup import init_ray

    init_ray(ray or RayConfig(num_cpus=2))
    ctx = ray_mod.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    t_ray = time.perf_counter()

    deduper = Deduper(
        exact=cfg.exact_dedup,
        near=cfg.near_dedup,
        num_perm=cfg.minhash_num_perm,
        threshold=cfg.minhash_threshold,
    )
    dropped: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    inputs: list[dict[str, Any]] = []
    kept = gutenberg = docs_read = 0
    bytes_in = 0
    card_config = cfg.model_dump(mode="json") | {"sources": source_list}

    ctx_publish = publish("corpus", dest=out) if out is not None else publish("corpus", root=artifact_root)
    with ctx_publish as staging:
        writer = _ShardWriter(staging.path, cfg.shard_bytes)
        try:
            if units:
                ds = ray_mod.data.from_items(units, override_num_blocks=len(units))
                ds = ds.flat_map(partial(read_rows, cfg=cfg))
                ds = ds.map_batches(
                    partial(process_batch, cfg=cfg), batch_size=cfg.batch_docs, batch_format="pyarrow"
                )
                for batch in ds.iter_batches(
                    batch_size=cfg.batch_docs, batch_format="pyarrow", prefetch_batches=2
                ):
                    cols = batch.to_pydict()
                    for i, kind in enumerate(cols["kind"]):
                        source, item = cols["source"][i], cols["item"][i]
                        if kind == "input":
                            inputs.append(
                                {
                                    "source": source,
                                    "item": item,
                                    "sha256": cols["sha256"][i],
                                    "bytes": cols["nbytes"][i],
                                }
                            )
                            bytes_in += cols["nbytes"][i]
                            continue
                        if kind == "quarantine":
                            quarantined.append({"source": source, "item": item, "reason": cols["reason"][i]})
                            continue
                        docs_read += 1
                        reason = cols["reason"][i]
                        if not reason:
                            sig = np.frombuffer(cols["sig"][i], dtype=np.uint32) if cols["sig"][i] else None
                            reason = deduper.check(item, cols["thash"][i], sig)
                        if reason:
                            dropped[reason] += 1
                            continue
                        kept += 1
                        gutenberg += bool(cols["gutenberg"][i])
                        for t in PII_TYPES:
                            pii[t] += cols[f"pii_{t}"][i]
                        writer.write(
                            {"id": _doc_id(item, cols["thash"][i]), "source": item, "text": cols["text"][i]}
                        )
        finally:
            writer.close()
        t_done = time.perf_counter()
        if kept == 0:
            reasons = dict(dropped) | {"quarantined": len(quarantined)}
            raise EmptyCorpusError(
                f"ingest kept no document from {source_list} (dropped/quarantined: {reasons}); "
                "check the sources and the filters (data.min_chars, data.max_symbol_ratio, ...)"
            )
        bands, rows = lsh_params(cfg.minhash_threshold, cfg.minhash_num_perm) if cfg.near_dedup else (0, 0)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "documents_in": docs_read + len(quarantined),
            "documents_kept": kept,
            "dropped": dict(sorted(dropped.items())),
            "quarantined": quarantined,
            "modifications": {
                "pii_replaced": {t: pii[t] for t in PII_TYPES},
                "gutenberg_stripped": gutenberg,
            },
            "dedup": {
                "exact_removed": deduper.stats.exact,
                "near_removed": deduper.stats.near,
                "minhash": {
                    "num_perm": cfg.minhash_num_perm,
                    "threshold": cfg.minhash_threshold,
                    "shingle_words": cfg.shingle_words,
                    "bands": bands,
                    "rows": rows,
                },
                "near_examples": deduper.stats.examples,
            },
            "bytes_in": bytes_in,
            "bytes_out": writer.bytes,
            "shards": writer.shards,
            "sources": inputs,
            "config": card_config,
        }
        assert manifest["documents_in"] == kept + sum(dropped.values()) + len(quarantined)
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
                "documents_kept": kept,
                "bytes_in": bytes_in,
                "bytes_out": writer.bytes,
                "seconds": seconds,
                "mb_per_s": round(bytes_in / 1e6 / max(seconds["total"], 1e-9), 3),
            }
        )
    assert staging.ref is not None
    log.info("ingest: kept %d of %d documents -> %s", kept, manifest["documents_in"], staging.ref.path)
    return IngestResult(artifact=staging.ref, manifest=manifest, datacard=card)


__all__ = ["EmptyCorpusError", "IngestResult", "SourceError", "ingest"]
