"""The ``model`` artifact: ``model.safetensors`` + ``config.json`` + ``tokenizer.json``.

Weights are stored with safetensors only (nothing is ever unpickled). The output head is tied to
the token embedding, so ``lm_head.weight`` is stored once (as ``transformer.wte.weight``) and
re-tied on load. ``config.json`` is the :class:`ModelConfig` plus a ``format`` marker; run facts
(steps, metrics) go into the artifact index metadata, which is not part of the hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from catalog.artifacts import ArtifactRef, open_artifact, publish
from core.model_config import ModelConfig, stored_model_config
from gpt.model import GPT
from gpt.tokenizer import EOT, TOKENIZER_FILE, load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT

KIND = "model"
FORMAT = "nightshift.gpt/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TIED_KEY = "lm_head.weight"  # the same tensor as transformer.wte.weight


class ModelArtifactError(ValueError):
    """A ``model`` artifact whose config, tokenizer and weights do not fit together."""


def as_tokenizer(tokenizer_path_or_obj: Any) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` from itself, a tokenizer artifact, a directory or a ``tokenizer.json``."""
    if isinstance(tokenizer_path_or_obj, Tokenizer):
        return tokenizer_path_or_obj
    return load_tokenizer(tokenizer_path_or_obj)


def check_vocab(cfg: ModelConfig, tokenizer: Tokenizer, where: str) -> None:
    """Raise when the tokenizer can produce ids the embedding has no row for, or lacks ``EOT``."""
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n > cfg.vocab_size:
        raise ModelArtifactError(
            f"{where}: the tokenizer has {n} tokens but model.vocab_size is {cfg.vocab_size}; "
            f"use a tokenizer of at most {cfg.vocab_size} tokens or set model.vocab_size >= {n}"
        )
    if tokenizer.token_to_id(EOT) is None:
        raise ModelArtifactError(f"{where}: the tokenizer has no {EOT} token; generation needs it")


def config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` content for a model config."""
    return {"format": FORMAT, **cfg.model_dump()}


def read_config(path: Path) -> ModelConfig:
    """Parse a ``config.json`` written by :func:`config_dict`."""
    raw = json.loads(path.read_text())
    fmt = raw.pop("format", None)
    if fmt != FORMAT:
        raise ModelArtifactError(
            f"{path}: format is {fmt!r}, expected {FORMAT!r}; not a nightshift GPT config"
        )
    return stored_model_config(raw)


def weights_to_save(model: GPT) -> dict[str, Any]:
    """The state dict as safetensors wants it: CPU, contiguous, the tied head left out."""
    sd = model.state_dict()
    if sd[TIED_KEY].data_ptr() != sd["transformer.wte.weight"].data_ptr():
        raise ModelArtifactError("lm_head.weight is not tied to transformer.wte.weight; cannot store it once")
    return {k: v.detach().cpu().contiguous() for k, v in sd.items() if k != TIED_KEY}


def build_model(cfg: ModelConfig, weights: dict[str, Any], *, device: str = "cpu", where: str) -> GPT:
    """A GPT with exactly ``weights`` (strict: no missing or extra key, no shape mismatch), head re-tied."""
    # Build on the meta device and assign the loaded tensors: no random init of weights we replace.
    with torch.device("meta"):
        model = GPT(cfg)
    expected = {k for k in model.state_dict() if k != TIED_KEY}
    missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or extra:
        raise ModelArtifactError(
            f"{where}: weights do not match the config (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    try:
        model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise ModelArtifactError(f"{where}: weights do not match the config: {e}") from e
    model.lm_head.weight = model.transformer.wte.weight
    return model.to(device).eval()


def save_model(
    model: GPT,
    tokenizer_path_or_obj: Any,
    *,
    root: str | Path | None = None,
    dest: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
) -> ArtifactRef:
    """Publish a ``model`` artifact (exactly one of ``root`` and ``dest``).

    Args:
        model: the GPT to store (its current weights, in their current dtype).
        tokenizer_path_or_obj: a ``tokenizers.Tokenizer``, a tokenizer artifact (ref or directory) or a
            ``tokenizer.json`` path.
        root: publish under ``root/model/<sha256[:16]>``.
        dest: publish at exactly this path.
        metadata: run facts (steps, metrics, source artifacts) for the index; not part of the hash.

    Returns:
        The published artifact.

    Raises:
        ModelArtifactError: the tokenizer does not fit the model's vocabulary.
    """
    tok = as_tokenizer(tokenizer_path_or_obj)
    check_vocab(model.cfg, tok, "save_model")
    weights = weights_to_save(model)
    with publish(KIND, root=root, dest=dest) as staging:
        save_file(weights, str(staging.path / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging.path / CONFIG_FILE).write_text(json.dumps(config_dict(model.cfg), indent=2, sort_keys=True))
        tok.save(str(staging.path / TOKENIZER_FILE))
        staging.metadata.update(
            {
                "num_params": model.num_params(non_embedding=False),
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                **(metadata or {}),
            }
        )
    assert staging.ref is not None
    return staging.ref


def load_model(
    path_or_ref: str | Path | ArtifactRef, *, device: str = "cpu", verify: bool = True
) -> tuple[GPT, Tokenizer, ArtifactRef]:
    """Load a ``model`` artifact: the GPT (eval mode, on ``device``), its tokenizer and the ref.

    Args:
        path_or_ref: the artifact directory or its ref.
        device: where to put the weights.
        verify: re-hash every file against the index first (on by default).

    Raises:
        catalog.artifacts.ArtifactError: not a model artifact, or a file is missing or changed.
        ModelArtifactError: config, tokenizer and weights do not fit together.
    """
    cfg, tok, ref = open_model(path_or_ref, verify=verify)
    weights = load_file(str(ref.path / WEIGHTS_FILE), device="cpu")
    model = build_model(cfg, weights, device=device, where=str(ref.path))
    return model, tok, ref


def open_model(
    path_or_ref: str | Path | ArtifactRef, *, verify: bool = True
) -> tuple[ModelConfig, Tokenizer, ArtifactRef]:
    """A ``model`` artifact's config, tokenizer and ref, without its weights (see :func:`load_model`)."""
    path = path_or_ref.path if isinstance(path_or_ref, ArtifactRef) else Path(path_or_ref)
    ref = open_artifact(path, kind=KIND, verify=verify)
    cfg = read_config(ref.path / CONFIG_FILE)
    tok = load_tokenizer(ref.path / TOKENIZER_FILE)
    check_vocab(cfg, tok, str(ref.path))
    return cfg, tok, ref
