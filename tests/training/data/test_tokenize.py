"""Tokenizer training, the tokenize stage and the token-shard reader."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from catalog.artifacts import ArtifactError
from core.config import RayConfig
from gpt.tokenizer import EOT, load_tokenizer, train_tokenizer
from tests.training.data.conftest import make_corpus, make_text, write_docs
from training.data.ingest import ingest
from training.data.shards import TokenShards
from training.data.tokenize import iter_corpus, tokenize


def _random_unicode(rng: random.Random, n: int) -> str:
    pools = [
        (0x00, 0x7F),  # ASCII incl. NUL, \t, \r, \n and other controls
        (0x80, 0x24F),  # Latin-1 and extended Latin
        (0x300, 0x36F),  # combining marks
        (0x4E00, 0x4FFF),  # CJK
        (0x1F300, 0x1F64F),  # emoji
    ]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def test_roundtrip_any_text(tmp_path):
    tok = train_tokenizer([make_text(i) for i in range(20)], vocab_size=300)
    tok.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    rng = random.Random(0)
    samples = [_random_unicode(rng, rng.randint(0, 200)) for _ in range(200)]
    samples += ["\x00\r\n\t", "👩‍👩‍👧 e\u0301", f"text with {EOT} inside", " leading  spaces  "]
    for s in samples:
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s
    assert tok.token_to_id(EOT) == 0 and EOT not in [tok.id_to_token(i) for i in tok.encode(EOT).ids]


def test_tokenize_split_shards_and_rerun(tmp_path, data_cfg):
    texts = [make_text(500 + i, 150) for i in range(30)]
    corpus = make_corpus(tmp_path / "arts", texts)
    a = tokenize(data_cfg, corpus, out=tmp_path / "a")
    b = tokenize(data_cfg, corpus.path, artifact_root=tmp_path / "arts")
    assert a.tokens.sha256 == b.tokens.sha256 and a.tokenizer.sha256 == b.tokenizer.sha256

    shards = TokenShards.open(a.tokens)
    meta = shards.meta
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 300 and meta["corpus_sha256"] == corpus.sha256
    assert meta["tokenizer_sha256"] == a.tokenizer.sha256
    assert a.stats["documents"]["val"] >= 1 and sum(a.stats["documents"].values()) == 30
    tok = load_tokenizer(a.tokenizer)
    eot = shards.eot_id
    train, val = shards.split("train"), shards.split("val")
    assert len(train.shards) > 1  # token_shard_tokens is small: the split spans several shards

    # Decode each split back into documents: every doc lands in exactly one split, unchanged.
    def docs_of(split):
        arr = split.to_numpy()
        ends = np.flatnonzero(arr == eot)
        starts = np.concatenate([[0], ends[:-1] + 1])
        return [tok.decode(arr[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]

    train_docs, val_docs = docs_of(train), docs_of(val)
    assert not set(train_docs) & set(val_docs)
    assert sorted(train_docs + val_docs) == sorted(texts)
    expected = sum(len(tok.encode(t).ids) + 1 for t in texts)
    assert len(train) + len(val) == expected == meta["tokens"]
    assert train[len(train) - 1] == eot and np.array_equal(train[5:10], train.to_numpy()[5:10])


def test_corrupt_corpus_names_the_file(tmp_path, data_cfg):
    corpus = make_corpus(tmp_path / "arts", [make_text(i) for i in range(5)])
    with open(corpus.path / "shards" / "docs-00000.jsonl", "a") as f:
        f.write(json.dumps({"id": "x", "source": "evil", "text": "injected"}) + "\n")
    with pytest.raises(ArtifactError, match="docs-00000.jsonl"):
        tokenize(data_cfg, corpus, out=tmp_path / "t")


@pytest.mark.slow
def test_ingest_then_tokenize_deterministic(tmp_path, data_cfg, ray_local):
    write_docs(tmp_path / "c", {f"{i}.txt": make_text(600 + i) for i in range(10)})
    hashes = []
    for run in ("r1", "r2"):
        res = ingest(
            data_cfg,
            sources=[str(tmp_path / "c")],
            out=tmp_path / run / "corpus",
            ray=RayConfig(address="local", num_cpus=2),
        )
        tk = tokenize(data_cfg, res.artifact, out=tmp_path / run)
        hashes.append((res.artifact.sha256, tk.tokenizer.sha256, tk.tokens.sha256))
        assert len(list(iter_corpus(res.artifact))) == 10
    assert hashes[0] == hashes[1]
