"""The per-document work of ingestion, run in parallel inside Ray Data tasks.

:func:`read_batch` turns read units (files, archives) into records; :func:`process_batch`
cleans each document, applies the filters and computes what the driver needs to deduplicate
(the text hash and the MinHash signature). Both take and return column batches with the same
fixed schema so Ray Data can keep them in Arrow blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from training.data.clean import clean_whitespace, normalize, scrub_pii, strip_gutenberg
from training.data.config import DataConfig
from training.data.dedup import minhash_signature, text_hash
from training.data.filters import quality_reason, toxicity_reason
from training.data.sources import RECORD_FIELDS, read_unit

PII_TYPES = ("email", "phone", "ipv4", "ipv6")
OUT_FIELDS = (*RECORD_FIELDS, "thash", "sig", "gutenberg", *(f"pii_{t}" for t in PII_TYPES))


def read_rows(unit: dict[str, Any], cfg: DataConfig) -> Iterator[dict[str, Any]]:
    """Ray ``flat_map`` body: the records of one read unit."""
    yield from read_unit(unit, cfg)


def clean_text(text: str, cfg: DataConfig) -> tuple[str, bool, dict[str, int]]:
    """Apply the enabled cleaning steps; returns ``(text, gutenberg_stripped, pii_counts)``."""
    text = normalize(text, cfg.normalize)
    stripped = False
    if cfg.strip_gutenberg:
        text, stripped = strip_gutenberg(text)
    if cfg.clean_whitespace:
        text = clean_whitespace(text)
    pii: dict[str, int] = {}
    if cfg.scrub_pii:
        text, counts = scrub_pii(text)
        pii = dict(counts)
    return text, stripped, pii


def process_batch(batch: Any, cfg: DataConfig) -> Any:
    """Ray ``map_batches`` body: clean, filter and fingerprint the ``doc`` records of a batch.

    A document dropped by a filter keeps ``kind="doc"`` with ``reason`` set and its text
    emptied (the driver only counts it). Kept candidates carry ``thash`` and ``sig``.
    """
    import pyarrow as pa

    cols = batch.to_pydict() if isinstance(batch, pa.Table) else batch
    n = len(cols["kind"])
    out: dict[str, list[Any]] = {k: list(cols[k]) for k in RECORD_FIELDS}
    out["thash"] = [b""] * n
    out["sig"] = [b""] * n
    out["gutenberg"] = [False] * n
    for t in PII_TYPES:
        out[f"pii_{t}"] = [0] * n
    for i in range(n):
        if out["kind"][i] != "doc":
            continue
        text, stripped, pii = clean_text(out["text"][i], cfg)
        reason = quality_reason(text, cfg) or toxicity_reason(text, cfg)
        if reason:
            out["reason"][i] = reason
            out["text"][i] = ""
            continue
        out["text"][i] = text
        out["gutenberg"][i] = stripped
        for t, c in pii.items():
            out[f"pii_{t}"][i] = c
        out["thash"][i] = text_hash(text)
        if cfg.near_dedup:
            out["sig"][i] = minhash_signature(text, cfg.minhash_num_perm, cfg.shingle_words).tobytes()
    schema = pa.schema(
        [(k, pa.large_string()) for k in ("kind", "source", "item", "text", "reason", "sha256")]
        + [("nbytes", pa.int64()), ("thash", pa.binary()), ("sig", pa.binary()), ("gutenberg", pa.bool_())]
        + [(f"pii_{t}", pa.int64()) for t in PII_TYPES]
    )
    return pa.Table.from_pydict({k: out[k] for k in schema.names}, schema=schema)
