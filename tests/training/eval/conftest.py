"""A generated corpus through the real tokenize stage, and GPTs trained on it for 0 to 80 steps.

The models are trained by a plain AdamW loop over the token shards (pretraining itself is tested
in tests/training/pretrain): a "strong" one of 80 steps, a "weak" one of 2 steps and the random
initialisation, so a worse candidate is worse by a wide, seed-independent margin.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from catalog.artifacts import ArtifactRef
from core.data_config import DataConfig
from core.eval_config import EvalConfig
from core.model_config import ModelConfig
from gpt.model import GPT
from gpt.model_io import save_model
from tests.training.data.conftest import make_corpus, make_text
from training.data.shards import TokenShards
from training.data.tokenize import tokenize

MODEL = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=320, dropout=0.0)


@dataclass(frozen=True)
class LMData:
    corpus: ArtifactRef
    tokenizer: ArtifactRef
    tokens: ArtifactRef


@dataclass(frozen=True)
class Models:
    random: ArtifactRef  # untrained
    weak: ArtifactRef  # 2 steps
    strong: ArtifactRef  # 80 steps


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Models this small gain nothing from threads, and on a shared 2-core machine a second thread
    per op makes them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def data_config() -> DataConfig:
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


def eval_config(**overrides: object) -> EvalConfig:
    """Seconds-fast evaluation settings."""
    base: dict[str, object] = dict(
        heldout_max_tokens=2048,
        prompts=["", "The", "The river", "She walked"],
        samples_per_prompt=2,
        max_new_tokens=16,
        max_task_items=6,
        task_max_new_tokens=6,
        sample_rows=4,
        device="cpu",
        # Probes: two prompts of each category, short replies; too few items for an interval to decide,
        # so the estimates decide (these tests are about wiring, tests/training/eval/test_gates.py
        # about the intervals).
        probe_limit=2,
        probe_max_new_tokens=8,
        provocation_samples=1,
        max_half_width=1.0,
        max_degenerate_rate=None,
    )
    base.update(overrides)
    return EvalConfig(**base)


def train(tokens: ArtifactRef, steps: int, seed: int = 0) -> GPT:
    """``steps`` AdamW steps of batch 16 on random windows of the train split."""
    torch.manual_seed(seed)
    model = GPT(MODEL)
    if steps == 0:
        return model.eval()
    train_split = TokenShards.open(tokens).split("train").to_numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    T = MODEL.block_size
    for _ in range(steps):
        starts = rng.integers(0, len(train_split) - T - 1, size=16)
        batch = torch.tensor(np.stack([train_split[s : s + T + 1] for s in starts]))
        _, loss = model(batch[:, :-1].contiguous(), batch[:, 1:].contiguous())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def lm_data(tmp_path_factory: pytest.TempPathFactory) -> LMData:
    root = tmp_path_factory.mktemp("lm-data")
    corpus = make_corpus(root / "arts", [make_text(900 + i, 200) for i in range(40)])
    result = tokenize(data_config(), corpus, artifact_root=root / "arts")
    return LMData(corpus=corpus, tokenizer=result.tokenizer, tokens=result.tokens)


@pytest.fixture(scope="session")
def models(lm_data: LMData, tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    tok = lm_data.tokenizer.path / "tokenizer.json"
    out = {
        name: save_model(train(lm_data.tokens, steps), tok, root=root, metadata={"steps": steps})
        for name, steps in (("random", 0), ("weak", 2), ("strong", 80))
    }
    return Models(**out)
