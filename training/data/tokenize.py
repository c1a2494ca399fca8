"""The tokenize stage: ``corpus`` -> ``tokenizer`` (byte-level BPE) + ``tokens`` (memmap shards).

The corpus is streamed three times, never loaded: once for the document ids (to fix the
train/val split), once (a prefix, up to ``tokenizer_train_bytes`` of training documents) to train
the tokenizer, once to encode with ``encode_batch`` in batches of about 1 MB and append to the
split's current shard. Each document is followed by ``<|endoftext|>``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import xxhash

from catalog.artifacts import ArtifactRef, open_artifact, publish
from core.data_config import DataConfig
from gpt.tokenizer import EOT, TOKENIZER_FILE, load_tokenizer, train_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

FORMAT = "nightshift.tokens/1"
_ENCODE_BATCH_BYTES = 1 << 20


@dataclass
class TokenizeResult:
    """What :func:`tokenize` produced."""

    tokenizer: ArtifactRef  # kind "tokenizer": tokenizer.json
    tokens: ArtifactRef  # kind "tokens": train/val memmap shards + meta.json
    stats: dict[str, Any]  # tokens/docs per split, bytes per token, seconds


def iter_corpus(corpus: ArtifactRef) -> Iterator[dict[str, str]]:
    """Documents of a corpus artifact, in order (``{"id", "source", "text"}``)."""
    import orjson  # installed with Prefect; parses these lines several times faster than json

    manifest = json.loads((corpus.path / "manifest.json").read_text())
    for shard in manifest["shards"]:
        with open(corpus.path / shard["path"], "rb") as f:
            for line in f:
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:  # lone surrogates, which only json accepts
                    yield json.loads(line)


def val_fraction_of(doc_id: str) -> float:
    """A document's position in [0, 1) for the split: deterministic, independent of order."""
    return xxhash.xxh3_64_intdigest(doc_id.encode()) / 2**64


def split_documents(ids: list[str], val_fraction: float) -> list[bool]:
    """Which documents are validation documents (``True``), by hash of their id.

    At least one validation document when ``val_fraction > 0`` and there are two or more
    documents, and at least one training document.
    """
    pos = [val_fraction_of(i) for i in ids]
    is_val = [p < val_fraction for p in pos]
    if val_fraction > 0 and len(ids) >= 2 and not any(is_val):
        is_val[int(np.argmin(pos))] = True
    if is_val and all(is_val):
        is_val[int(np.argmax(pos))] = False
    return is_val


class _SplitWriter:
    """Appends token arrays to ``<split>-NNNNN.bin`` shards of at most ``shard_tokens`` tokens."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.split, self.dtype, self.shard_tokens = root, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._f: IO[bytes] | None = None
        self.tokens = 0
        self.documents = 0

    def write(self, arr: np.ndarray) -> None:
        while len(arr):
            if self._f is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open()
            assert self._f is not None
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, arr = arr[:room], arr[room:]
            self._f.write(part.astype(self.dtype, copy=False).tobytes())
            self.shards[-1]["tokens"] += len(part)
            self.tokens += len(part)

    def _open(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.shards.append({"file": name, "tokens": 0})
        self._f = open(self.root / name, "wb")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _open_corpus(corpus: ArtifactRef | str | Path) -> ArtifactRef:
    # Always re-verify: a ref may be stale, and a corrupt corpus must fail here, naming the file.
    return open_artifact(corpus.path if isinstance(corpus, ArtifactRef) else Path(corpus), kind="corpus")


def tokenize(
    cfg: DataConfig,
    corpus: ArtifactRef | str | Path,
    *,
    artifact_root: str | Path | None = None,
    out: str | Path | None = None,
    seed: int = 1337,
    tokenizer_file: Path | None = None,
) -> TokenizeResult:
    """Train a tokenizer on a corpus (or take ``tokenizer_file``) and write its train/val token shards.

    Args:
        cfg: data config (``vocab_size``, ``min_frequency``, ``tokenizer_train_bytes``,
            ``val_fraction``, ``token_shard_tokens``).
        corpus: a ``corpus`` artifact or its path; verified before use.
        artifact_root: publish both artifacts under this root by content hash.
        out: publish the tokenizer at ``out/tokenizer`` and the tokens at ``out/tokens``.
        seed: recorded in ``meta.json``; the split itself is by hash of the document id, so a
            document stays in its split when the corpus grows.
        tokenizer_file: a ``tokenizer.json`` to encode with instead of training one (the champion's,
            under ``data.tokenizer: reuse``); published byte for byte, so its hash stays the same.

    Raises:
        catalog.artifacts.ArtifactError: the corpus does not verify (names the file).
        ValueError: both or neither of ``out`` and ``artifact_root``; an empty corpus.
    """
    if (out is None) == (artifact_root is None):
        raise ValueError("tokenize() takes exactly one of out= and artifact_root=")
    t0 = time.perf_counter()
    ref = _open_corpus(corpus)
    ids = [d["id"] for d in iter_corpus(ref)]
    if not ids:
        raise ValueError(f"{ref.path}: the corpus holds no documents; re-run ingest with other sources")
    is_val = split_documents(ids, cfg.val_fraction)
    del ids

    if tokenizer_file is None:
        tok = train_tokenizer(
            _training_texts(ref, is_val, cfg.tokenizer_train_bytes), cfg.vocab_size, cfg.min_frequency
        )
    else:
        tok = load_tokenizer(tokenizer_file)
    t_train = time.perf_counter()
    tok_dest = {"dest": Path(out) / "tokenizer"} if out is not None else {"root": artifact_root}
    with publish("tokenizer", **tok_dest) as st:
        if tokenizer_file is None:
            tok.save(str(st.path / TOKENIZER_FILE))
            st.metadata.update({"vocab_size": tok.get_vocab_size(), "corpus_sha256": ref.sha256})
        else:
            shutil.copyfile(tokenizer_file, st.path / TOKENIZER_FILE)
            st.metadata.update({"vocab_size": tok.get_vocab_size(), "reused": True})
    assert st.ref is not None
    tok_ref = st.ref

    vocab = tok.get_vocab_size()
    eot = tok.token_to_id(EOT)
    dtype = np.dtype(np.uint16 if vocab <= 65535 else np.uint32)
    tokens_dest = {"dest": Path(out) / "tokens"} if out is not None else {"root": artifact_root}
    with publish("tokens", **tokens_dest) as st:
        writers = {s: _SplitWriter(st.path, s, dtype, cfg.token_shard_tokens) for s in ("train", "val")}
        try:
            text_bytes = _encode_splits(tok, ref, is_val, writers, eot, dtype)
        finally:
            for w in writers.values():
                w.close()
        splits = {
            s: {"tokens": w.tokens, "documents": w.documents, "shards": w.shards} for s, w in writers.items()
        }
        total = sum(w.tokens for w in writers.values())
        meta = {
            "format": FORMAT,
            "dtype": dtype.name,
            "vocab_size": vocab,
            "eot_id": eot,
            "eot": EOT,
            "splits": splits,
            "tokens": total,
            "bytes_per_token": round(text_bytes / max(total, 1), 4),
            "tokenizer_sha256": tok_ref.sha256,
            "corpus_sha256": ref.sha256,
            "val_fraction": cfg.val_fraction,
            "seed": seed,
        }
        (st.path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        seconds = {
            "train_tokenizer": round(t_train - t0, 3),
            "encode": round(time.perf_counter() - t_train, 3),
            "total": round(time.perf_counter() - t0, 3),
        }
        st.metadata.update({"tokens": total, "seconds": seconds, "corpus_sha256": ref.sha256})
    assert st.ref is not None
    stats = {
        "tokens": {s: v["tokens"] for s, v in splits.items()},
        "documents": {s: v["documents"] for s, v in splits.items()},
        "bytes_per_token": meta["bytes_per_token"],
        "text_bytes": text_bytes,
        "seconds": seconds,
    }
    log.info("tokenize: %s tokens (%s) -> %s", total, stats["tokens"], st.ref.path)
    return TokenizeResult(tokenizer=tok_ref, tokens=st.ref, stats=stats)


def _training_texts(ref: ArtifactRef, is_val: Sequence[bool], budget: int) -> Iterator[str]:
    """The train split's documents, in corpus order, until ``budget`` bytes of text were given."""
    for doc, val in zip(iter_corpus(ref), is_val, strict=True):
        if val:
            continue
        yield doc["text"]
        budget -= len(doc["text"].encode("utf-8", "surrogatepass"))
        if budget <= 0:
            return


def _encode_splits(
    tok: Tokenizer,
    ref: ArtifactRef,
    is_val: Sequence[bool],
    writers: dict[str, _SplitWriter],
    eot: int,
    dtype: np.dtype,
) -> int:
    """Encode every document into its split's shards, each followed by ``eot``; the text bytes read.

    Documents are encoded in batches of about ``_ENCODE_BATCH_BYTES`` (the tokenizer's batch encode
    runs on every core), and written in corpus order.
    """
    batch: list[str] = []
    batch_split: list[str] = []
    batch_bytes = text_bytes = 0

    def flush() -> None:
        encs = tok.encode_batch_fast(batch, add_special_tokens=False)
        for split in ("train", "val"):
            ids: list[int] = []
            for enc, s in zip(encs, batch_split, strict=True):
                if s == split:
                    ids.extend(enc.ids)
                    ids.append(eot)
                    writers[split].documents += 1
            if ids:
                writers[split].write(np.asarray(ids, dtype=dtype))
        batch.clear()
        batch_split.clear()

    for doc, val in zip(iter_corpus(ref), is_val, strict=True):
        batch.append(doc["text"])
        batch_split.append("val" if val else "train")
        n = len(doc["text"].encode("utf-8", "surrogatepass"))
        batch_bytes += n
        text_bytes += n
        if batch_bytes >= _ENCODE_BATCH_BYTES:
            flush()
            batch_bytes = 0
    if batch:
        flush()
    return text_bytes
