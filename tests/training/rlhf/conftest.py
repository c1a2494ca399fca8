"""Tiny tokenizer, models and task splits shared by the RLHF tests.

Torch runs single-threaded here: these models are so small that a second OpenMP thread only adds
synchronisation, and on a loaded 2-core machine a spinning second thread makes each step ~100x
slower.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from core.model_config import ModelConfig
from core.rlhf_config import SFTConfig
from gpt.model import GPT
from gpt.tokenizer import train_tokenizer
from training.rlhf.sft import train_sft
from training.rlhf.tasks import TaskSplits, build_tasks

VOCAB = 320
FAMILIES = ("copy", "max")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model_config(block_size: int = 64) -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=VOCAB)


def make_splits(families: tuple[str, ...] = FAMILIES, train_size: int = 256, seed: int = 0) -> TaskSplits:
    return build_tasks(families, train_size=train_size, eval_size=32, seed=seed)


@pytest.fixture(scope="session")
def splits() -> TaskSplits:
    return make_splits()


@pytest.fixture(scope="session")
def tokenizer(splits: TaskSplits):
    # Trained on every family's texts, so any task prompt encodes compactly.
    texts = [
        f"{ex.prompt} {ex.answer} {' '.join(ex.wrong)}"
        for ex in make_splits(("copy", "reverse", "max", "add", "refuse"), train_size=500).train
    ]
    return train_tokenizer(texts * 4, vocab_size=300)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_model_config()).eval()


@pytest.fixture(scope="session")
def _sft_model(splits: TaskSplits, tokenizer) -> GPT:
    torch.manual_seed(0)
    m = GPT(tiny_model_config())
    train_sft(m, tokenizer, splits.sft_pairs(), SFTConfig(steps=100, batch_size=32, lr=1e-2, warmup_steps=10))
    return m.eval()


@pytest.fixture
def sft_model(_sft_model: GPT) -> GPT:
    """A briefly supervised policy (a fresh copy per test): knows the format, often wrong."""
    return copy.deepcopy(_sft_model)
