"""Warm-start pretraining: a parent's weights, replayed parent tokens, and the checks that come first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catalog.artifacts import ArtifactRef, file_sha256, publish
from core.config import Config
from core.config_base import ConfigError
from core.model_config import ModelConfig
from core.train_config import TrainConfig
from gpt.model import GPT
from gpt.model_io import save_model
from gpt.tokenizer import TOKENIZER_FILE, train_tokenizer
from training.data.shards import TokenShards
from training.pretrain import checkpoint as ckpt
from training.pretrain import pretrain
from training.pretrain.data import TrainWindows, replay_rows
from training.stages import check_parent

from .conftest import tiny_config, write_tokens

FILL = 7


def test_replay_rows_come_from_the_replay_split_on_every_rank(tokens: ArtifactRef, tmp_path: Path) -> None:
    split = TokenShards.open(tokens).split("train")
    old = TokenShards.open(write_tokens(tmp_path, fill=FILL)).split("train")
    whole = TrainWindows(split, 16, 8, rank=0, world=1, seed=3, replay=old, replay_share=0.25)
    halves = [
        TrainWindows(split, 16, 8, rank=r, world=2, seed=3, replay=old, replay_share=0.25) for r in range(2)
    ]
    assert replay_rows(8, 0.25) == 2 and replay_rows(8, 0.01) == 1 and replay_rows(8, 0.0) == 0
    for i in (0, 5, 99):
        x, y = whole[i]
        assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])
        replayed = (x == FILL).all(dim=1)
        assert int(replayed.sum()) == 2  # a quarter of the batch, the rest from tonight's tokens
        assert torch.equal(torch.cat([h[i][0] for h in halves]), x)  # ranks split the same batch
    assert torch.equal(whole[5][0], TrainWindows(split, 16, 8, 0, 1, 3, replay=old, replay_share=0.25)[5][0])
    # Without replay the stream is the one a run without a parent has always had.
    plain = TrainWindows(split, 16, 8, 0, 1, seed=3)
    assert torch.equal(plain[5][0], TrainWindows(split, 16, 8, 0, 1, 3, replay=old, replay_share=0.0)[5][0])


def test_a_warm_start_continues_from_the_parent_weights(tokens: ArtifactRef, tmp_path: Path) -> None:
    parent = pretrain(tiny_config(max_steps=40, val_every=40), tokens, workdir=tmp_path / "parent")
    weights = parent.checkpoint_dir / ckpt.WEIGHTS
    short = {"max_steps": 2, "warmup_steps": 1, "val_every": 2}
    scratch = pretrain(tiny_config(**short), tokens, workdir=tmp_path / "scratch")
    warm = pretrain(tiny_config(**short), tokens, workdir=tmp_path / "warm", init_weights=weights)
    # Two steps from the parent keep what it learned; two steps from random weights do not.
    assert warm.metrics["val_loss"] < parent.metrics["val_loss"] + 0.3
    assert warm.metrics["val_loss"] < scratch.metrics["val_loss"] - 1.0
    assert warm.history[0]["train_loss"] < scratch.history[0]["train_loss"] - 1.0
    # The schedule starts again: step 0 runs at the warmup's first learning rate, not the parent's last.
    assert warm.history[0]["lr"] == pytest.approx(scratch.history[0]["lr"])

    old = write_tokens(tmp_path / "old", seed=1)
    mixed = pretrain(
        tiny_config(**short), tokens, workdir=tmp_path / "mixed", init_weights=weights, replay=old
    )
    assert mixed.metrics["steps"] == 2.0


def test_replay_tokens_of_another_vocabulary_are_refused(tokens: ArtifactRef, tmp_path: Path) -> None:
    other = write_tokens(tmp_path / "other")
    meta = other.path / "meta.json"
    bigger = tmp_path / "bigger"
    # Same layout, a larger vocabulary: tokens of another tokenizer.
    with publish("tokens", root=bigger) as st:
        for f in other.path.glob("*.bin"):
            (st.path / f.name).write_bytes(f.read_bytes())
        (st.path / "meta.json").write_text(meta.read_text().replace('"vocab_size": 300', '"vocab_size": 400'))
    with pytest.raises(ConfigError, match="vocabulary of 400, tonight's tokens 300"):
        pretrain(tiny_config(), tokens, workdir=tmp_path / "wd", replay=st.ref)
    with pytest.raises(ConfigError, match="the parent's weights .* are missing"):
        pretrain(tiny_config(), tokens, workdir=tmp_path / "wd", init_weights=tmp_path / "nope.safetensors")


def _tokenizer(root: Path, text: str) -> ArtifactRef:
    tok = train_tokenizer([text * 20], vocab_size=300)
    with publish("tokenizer", root=root) as st:
        tok.save(str(st.path / TOKENIZER_FILE))
    assert st.ref is not None
    return st.ref


def test_a_parent_of_another_shape_or_tokenizer_is_refused_naming_both(tmp_path: Path) -> None:
    shape = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=320)
    ours = _tokenizer(tmp_path / "a", "the quick brown fox jumps over the lazy dog. ")
    theirs = _tokenizer(tmp_path / "b", "now is the winter of our discontent, made glorious summer. ")
    parent = save_model(GPT(shape), ours.path / TOKENIZER_FILE, root=tmp_path / "models")
    cfg = Config(model=shape, train=TrainConfig(init=str(parent.path)))
    check_parent(cfg, parent, ours)  # the same shape and tokenizer: a warm start

    with pytest.raises(ConfigError) as err:
        check_parent(cfg, parent, theirs)
    text = str(err.value)
    for tok in (ours, theirs):
        assert file_sha256(tok.path / TOKENIZER_FILE) in text
    assert "data.tokenizer: reuse" in text and "train.init: scratch" in text

    wider = Config(model=shape.model_copy(update={"n_embd": 32}), train=TrainConfig(init="champion"))
    with pytest.raises(ConfigError, match=r"'n_embd': \(16, 32\)"):
        check_parent(wider, parent, ours)


@pytest.mark.parametrize("bad", ["models:/", "models:/nightshift-gpt", "models:/a/1/2", " "])
def test_train_init_names_a_model_or_says_how(bad: str) -> None:
    with pytest.raises(ValueError, match="models:/<name>/<version>"):
        TrainConfig(init=bad)
    good = ("champion", "scratch", "models:/nightshift-gpt/3", "models:/nightshift-gpt@champion", "/tmp/m")
    for ok in good:
        assert TrainConfig(init=ok).init == ok
