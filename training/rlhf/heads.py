"""A GPT backbone with a scalar head (reward model and PPO value model), and the ``reward_model`` artifact.

The ``reward_model`` artifact mirrors the ``model`` one (gpt/model_io.py): ``model.safetensors``
holds the GPT's weights (tied head stored once) plus ``score_head.weight`` / ``score_head.bias``,
``config.json`` the :class:`ModelConfig` under the format ``nightshift.reward/1``, and
``tokenizer.json``; loading is strict and hash-verified.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from catalog.artifacts import ArtifactRef, open_artifact, publish
from core.model_config import ModelConfig, stored_model_config
from gpt.model_io import (
    CONFIG_FILE,
    TIED_KEY,
    WEIGHTS_FILE,
    ModelArtifactError,
    as_tokenizer,
    build_model,
    check_vocab,
    weights_to_save,
)
from gpt.tokenizer import TOKENIZER_FILE, load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT

KIND = "reward_model"
FORMAT = "nightshift.reward/1"
HEAD = "score_head."


def hidden_states(gpt: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The final-LayerNorm hidden states of ``idx`` (B, T) → (B, T, C), without the vocabulary head.

    The same computation as :meth:`GPT.forward` up to ``lm_head`` (a test pins
    ``gpt.lm_head(hidden_states(gpt, x)) == gpt(x)[0]``), minus the (T x vocab) projection a
    scalar head does not need.
    """
    t = gpt.transformer
    pos = torch.arange(idx.size(1), dtype=torch.long, device=idx.device)
    x = t.drop(t.wte(idx) + t.wpe(pos))
    for block in t.h:
        x = block(x)
    return t.ln_f(x)


class ScalarModel(nn.Module):
    """GPT backbone + a linear head giving one number per position.

    As a reward model it is read at a reply's last token (:meth:`score`); as a PPO value model
    at every position (:meth:`forward`).
    """

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt
        self.score_head = nn.Linear(gpt.cfg.n_embd, 1)
        # Zero init: every sequence starts at score 0, so early training is driven by the backbone's
        # features rather than by a random offset (as trl's and lm-human-preferences' value heads).
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)
        self.score_head.to(next(gpt.parameters()).device)

    @property
    def cfg(self) -> ModelConfig:
        return self.gpt.cfg

    def forward(self, idx: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """One scalar per position, (B, T); with ``last`` (B,), :meth:`score` (B,).

        ``score`` is reachable through ``forward`` because DistributedDataParallel synchronises
        the gradients of ``forward`` calls only (reward-model training on several workers).
        """
        if last is not None:
            return self.score(idx, last)
        return self.score_head(hidden_states(self.gpt, idx)).squeeze(-1).float()

    def score(self, idx: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The scalar at each row's last real token ``last`` (B,): the reward of a whole sequence."""
        h = hidden_states(self.gpt, idx[:, : int(last.max()) + 1])
        h_last = h[torch.arange(idx.size(0), device=idx.device), last]  # (B, C)
        return self.score_head(h_last).squeeze(-1).float()


def scalar_model_from(gpt: GPT) -> ScalarModel:
    """A scalar model whose backbone is a copy of ``gpt`` (``gpt`` itself is left untouched)."""
    return ScalarModel(copy.deepcopy(gpt))


def save_reward_model(
    model: ScalarModel,
    tokenizer_path_or_obj: Any,
    *,
    root: str | Path | None = None,
    dest: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> ArtifactRef:
    """Publish a ``reward_model`` artifact (exactly one of ``root`` and ``dest``).

    Args:
        model: the scalar model.
        tokenizer_path_or_obj: a ``tokenizers.Tokenizer`` or a tokenizer artifact / path.
        root: publish under ``root/reward_model/<sha256[:16]>``.
        dest: publish at exactly this path.
        metadata: run facts for the index (accuracy, steps); not part of the hash.
    """
    tok = as_tokenizer(tokenizer_path_or_obj)
    check_vocab(model.cfg, tok, "save_reward_model")
    weights = weights_to_save(model.gpt)
    for k, v in model.score_head.state_dict().items():
        weights[HEAD + k] = v.detach().cpu().contiguous()
    with publish(KIND, root=root, dest=dest) as staging:
        save_file(weights, str(staging.path / WEIGHTS_FILE), metadata={"format": "pt"})
        cfg = {"format": FORMAT, **model.cfg.model_dump()}
        (staging.path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
        tok.save(str(staging.path / TOKENIZER_FILE))
        staging.metadata.update(metadata or {})
    assert staging.ref is not None
    return staging.ref


def load_reward_model(
    path_or_ref: str | Path | ArtifactRef, *, device: str = "cpu", verify: bool = True
) -> tuple[ScalarModel, Tokenizer, ArtifactRef]:
    """Load a ``reward_model`` artifact: the scalar model (eval mode), its tokenizer and the ref.

    Raises:
        catalog.artifacts.ArtifactError: not a reward model artifact, or a file is missing or changed.
        ModelArtifactError: config, tokenizer and weights do not fit together.
    """
    path = path_or_ref.path if isinstance(path_or_ref, ArtifactRef) else Path(path_or_ref)
    ref = open_artifact(path, kind=KIND, verify=verify)
    raw = json.loads((ref.path / CONFIG_FILE).read_text())
    if raw.pop("format", None) != FORMAT:
        raise ModelArtifactError(f"{ref.path}: config.json is not a {FORMAT} config")
    cfg = stored_model_config(raw)
    tok = load_tokenizer(ref.path / TOKENIZER_FILE)
    check_vocab(cfg, tok, str(ref.path))
    weights = load_file(str(ref.path / WEIGHTS_FILE), device="cpu")
    head = {k.removeprefix(HEAD): weights.pop(k) for k in list(weights) if k.startswith(HEAD)}
    weights.pop(TIED_KEY, None)
    gpt = build_model(cfg, weights, device=device, where=str(ref.path))
    model = ScalarModel(gpt)
    try:
        model.score_head.load_state_dict(head)
    except RuntimeError as e:
        raise ModelArtifactError(f"{ref.path}: score head does not match the config: {e}") from e
    return model.to(device).eval(), tok, ref
