"""Generated corpora for the data tests (never a downloaded package) and a shared Ray session."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from catalog.artifacts import ArtifactRef, publish
from core.data_config import DataConfig

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she there been one all we their has would when if so no will more can said who "
    "river mountain garden letter morning window kitchen harbour village engine silver winter market "
    "lantern meadow bridge forest candle station orchard library pebble thunder compass ribbon saddle "
    "quietly slowly bright ancient gentle hollow golden narrow distant crooked patient restless humble "
    "walked carried opened watched followed gathered painted whispered counted borrowed folded wandered"
).split()


def make_text(seed: int, n_words: int = 300) -> str:
    """English-like text: sentences of random words, a paragraph break every few sentences."""
    rng = random.Random(seed)
    out, sentence, para = [], [], []
    for _ in range(n_words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(8, 16):
            para.append(" ".join(sentence).capitalize() + ".")
            sentence = []
            if len(para) >= 4:
                out.append(" ".join(para))
                para = []
    if sentence:
        para.append(" ".join(sentence).capitalize() + ".")
    if para:
        out.append(" ".join(para))
    return "\n\n".join(out)


def perturb(text: str, n_changes: int, seed: int = 0) -> str:
    """The same text with ``n_changes`` words replaced (a near duplicate)."""
    rng = random.Random(seed)
    words = text.split(" ")
    for i in rng.sample(range(len(words)), n_changes):
        words[i] = "zebra"
    return " ".join(words)


@pytest.fixture
def data_cfg() -> DataConfig:
    """A tiny, fast data config."""
    return DataConfig(
        min_chars=50,
        vocab_size=300,
        min_frequency=2,
        tokenizer_train_bytes=2**16,
        val_fraction=0.2,
        shard_bytes=2**16,
        minhash_num_perm=64,
        max_doc_bytes=2**20,
        token_shard_tokens=2**12,
    )


def write_docs(root: Path, texts: dict[str, str]) -> Path:
    """Write ``{relative name: text}`` under ``root``; returns ``root``."""
    for name, text in texts.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def make_corpus(root: Path, texts: list[str]) -> ArtifactRef:
    """Publish a ``corpus`` artifact directly (no Ray), for tokenizer tests."""
    with publish("corpus", root=root) as st:
        (st.path / "shards").mkdir()
        shard = st.path / "shards" / "docs-00000.jsonl"
        with open(shard, "w", encoding="utf-8") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"id": f"doc-{i:05d}", "source": f"gen:{i}", "text": t}) + "\n")
        manifest = {"shards": [{"path": "shards/docs-00000.jsonl", "documents": len(texts)}]}
        (st.path / "manifest.json").write_text(json.dumps(manifest))
    assert st.ref is not None
    return st.ref
