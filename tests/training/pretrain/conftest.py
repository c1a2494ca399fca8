"""Generated token shards, tiny configs and a shared local Ray for the pretraining tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from catalog.artifacts import ArtifactRef, publish
from core.config import Config, RayConfig
from core.model_config import ModelConfig
from core.train_config import TrainConfig

VOCAB = 300
EOT = VOCAB - 1


def write_tokens(
    root: Path, train_tokens: int = 20_000, val_tokens: int = 2_000, seed: int = 0, fill: int | None = None
) -> ArtifactRef:
    """Publish a ``tokens`` artifact (the layout of ``training.data.tokenize``) of a learnable stream.

    The stream is a sequence of 24 fixed "words" of 3-6 token ids in random order, each followed
    by a separator: within a word every next token is determined, so the loss can drop far below
    ln(vocab). ``fill``: every token is that id instead (to tell the artifact's windows apart).
    """
    rng = np.random.default_rng(seed)
    words = [rng.integers(0, VOCAB - 1, size=int(rng.integers(3, 7))) for _ in range(24)]

    def stream(n: int) -> np.ndarray:
        if fill is not None:
            return np.full(n, fill, dtype=np.uint16)
        out: list[int] = []
        while len(out) < n:
            out.extend(words[int(rng.integers(len(words)))].tolist())
            out.append(EOT)
        return np.asarray(out[:n], dtype=np.uint16)

    with publish("tokens", root=root) as st:
        splits = {}
        for name, n in (("train", train_tokens), ("val", val_tokens)):
            fname = f"{name}-00000.bin"
            stream(n).tofile(st.path / fname)
            splits[name] = {"tokens": n, "documents": n // 5, "shards": [{"file": fname, "tokens": n}]}
        meta = {
            "format": "nightshift.tokens/1",
            "dtype": "uint16",
            "vocab_size": VOCAB,
            "eot_id": EOT,
            "eot": "<|endoftext|>",
            "splits": splits,
            "tokens": train_tokens + val_tokens,
        }
        (st.path / "meta.json").write_text(json.dumps(meta, indent=2))
    assert st.ref is not None
    return st.ref


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> ArtifactRef:
    """A small learnable ``tokens`` artifact shared by the session."""
    return write_tokens(tmp_path_factory.mktemp("tokens"))


def tiny_config(**train: object) -> Config:
    """A seconds-fast config: 2 layers, 32 dims, context 32, dropout 0, no progress bar."""
    base: dict[str, object] = dict(
        max_steps=12,
        batch_size=8,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=2,
        val_every=6,
        val_batches=2,
        log_every=1,
        checkpoint_every=4,
        keep_checkpoints=2,
        progress_bar=False,
        peak_flops=1e11,
    )
    base.update(train)
    return Config(
        seed=7,
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=VOCAB, dropout=0.0),
        train=TrainConfig(**base),
        ray=RayConfig(address="local", num_cpus=2),
    )
