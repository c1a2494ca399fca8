"""The per-document work of ingestion, run in parallel inside a Ray Data ``flat_map``.

:func:`read_rows` turns a read unit (a file, an archive) into records and processes each
document on the spot (:func:`process_doc`): cleaning, the filters, and everything the driver
needs — the text hash and the MinHash signature to deduplicate, and the finished JSONL line of
the corpus shard (id included). The driver then does no per-document Python beyond the dedup
decision and a ``write`` of bytes, and the text crosses the process boundary once, as that line.
Every record has the same columns (:data:`OUT_FIELDS`) so Ray Data keeps them in Arrow blocks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import xxhash

from core.data_config import DataConfig
from training.data.clean import clean_whitespace, normalize, scrub_pii, strip_gutenberg
from training.data.dedup import lower_words, minhash_signature, text_hash
from training.data.filters import quality_reason, toxicity_reason
from training.data.sources import read_unit

PII_TYPES = ("email", "phone", "ipv4", "ipv6")
OUT_FIELDS = (
    *("kind", "source", "item", "reason", "sha256", "nbytes"),
    *("thash", "sig", "line", "gutenberg", *(f"pii_{t}" for t in PII_TYPES)),
)


def doc_id(item: str, thash: bytes) -> str:
    """A document's id: a hash of where it came from and of its cleaned text."""
    return xxhash.xxh3_64_hexdigest(item.encode("utf-8", "surrogatepass") + b"\0" + thash)


def corpus_line(item: str, thash: bytes, text: str) -> bytes:
    """The document's line in a corpus shard (``{"id", "source", "text"}`` JSON, UTF-8)."""
    doc = {"id": doc_id(item, thash), "source": item, "text": text}
    return (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass")


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


def process_doc(record: dict[str, Any], cfg: DataConfig) -> dict[str, Any]:
    """Clean, filter and fingerprint one ``doc`` record; returns it with the :data:`OUT_FIELDS`.

    A document dropped by a filter keeps ``kind="doc"`` with ``reason`` set and no ``line``
    (the driver only counts it). A kept candidate carries ``thash``, ``sig`` and ``line``.
    """
    out = _blank(record)
    text, stripped, pii = clean_text(record["text"], cfg)
    reason = quality_reason(text, cfg)
    # One lower-cased word split serves the toxicity gate and the MinHash shingles.
    words = lower_words(text) if not reason and (cfg.near_dedup or cfg.toxicity_filter) else None
    reason = reason or toxicity_reason(text, cfg, words)
    if reason:
        out["reason"] = reason
        return out
    out["gutenberg"] = stripped
    for t, c in pii.items():
        out[f"pii_{t}"] = c
    out["thash"] = thash = text_hash(text)
    if cfg.near_dedup:
        out["sig"] = minhash_signature(text, cfg.minhash_num_perm, cfg.shingle_words, words).tobytes()
    out["line"] = corpus_line(record["item"], thash, text)
    return out


def _blank(record: dict[str, Any]) -> dict[str, Any]:
    out = {k: record[k] for k in ("kind", "source", "item", "reason", "sha256", "nbytes")}
    out.update(thash=b"", sig=b"", line=b"", gutenberg=False)
    for t in PII_TYPES:
        out[f"pii_{t}"] = 0
    return out


def read_rows(unit: dict[str, Any], cfg: DataConfig) -> Iterator[dict[str, Any]]:
    """Ray ``flat_map`` body: the processed records of one read unit, in order."""
    for record in read_unit(unit, cfg):
        yield process_doc(record, cfg) if record["kind"] == "doc" else _blank(record)
