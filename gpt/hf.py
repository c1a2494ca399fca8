"""Hugging Face interop: a ``model`` artifact to and from a ``GPT2LMHeadModel`` checkpoint.

Our parameter names mirror GPT-2's, so the mapping is one to one except that GPT-2's ``Conv1D``
layers (``c_attn``, ``c_proj``, ``c_fc``) store their weight as (in, out), the transpose of
``nn.Linear``. GPT-2 always has biases; a ``bias=False`` model is exported with zero biases (the
same function) and ``nightshift_bias: false`` in ``config.json``, so importing it back drops them.
Weights are read and written as safetensors only; ``pytorch_model.bin`` is refused.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from catalog.artifacts import ArtifactRef, replace_dir
from core.model_config import ModelConfig
from gpt.model_io import ModelArtifactError, build_model, check_vocab, load_model, save_model, weights_to_save
from gpt.tokenizer import EOT, TOKENIZER_FILE, load_tokenizer

# transformers is imported inside the functions that use it, not here: it takes a second or more
# to import, and not every user of this module needs it.

if TYPE_CHECKING:
    import torch

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BIASED = ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
# Buffers of older GPT-2 checkpoints (causal mask), not weights.
# Our activation names and transformers' (ACT2FN keys) for the same function.
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
FROM_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class HFFormatError(ValueError):
    """A Hugging Face checkpoint that is not a GPT-2 this model can represent."""


def _is_conv1d(key: str) -> bool:
    return key.startswith("transformer.h.") and key.endswith(CONV1D)


def to_hf_state_dict(model_sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict (without ``lm_head.weight``) as ``GPT2LMHeadModel`` keys and layouts."""
    out = {k: (v.t().contiguous() if _is_conv1d(k) else v) for k, v in model_sd.items()}
    if not cfg.bias:
        # GPT-2 has no bias-free variant; zero biases compute exactly the same function.
        C = cfg.n_embd
        widths = {
            "ln_1": C,
            "ln_2": C,
            "attn.c_attn": 3 * C,
            "attn.c_proj": C,
            "mlp.c_fc": 4 * C,
            "mlp.c_proj": C,
        }
        like = out["transformer.wte.weight"]
        for i in range(cfg.n_layer):
            for name in BIASED:
                out[f"transformer.h.{i}.{name}.bias"] = torch.zeros(widths[name], dtype=like.dtype)
        out["transformer.ln_f.bias"] = torch.zeros(C, dtype=like.dtype)
    return out


def from_hf_state_dict(
    hf_sd: dict[str, torch.Tensor], cfg: ModelConfig, where: str
) -> dict[str, torch.Tensor]:
    """A ``GPT2LMHeadModel`` (or bare ``GPT2Model``) state dict as ours, ready for :func:`build_model`."""
    out: dict[str, torch.Tensor] = {}
    head = None
    for k, v in hf_sd.items():
        if k.endswith(IGNORED_SUFFIXES):
            continue
        if k == "lm_head.weight":
            head = v
            continue
        k = k if k.startswith("transformer.") else f"transformer.{k}"  # the hub's gpt2 has no prefix
        out[k] = v.t().contiguous() if _is_conv1d(k) else v
    if head is not None and not torch.equal(head, out.get("transformer.wte.weight", head)):
        raise HFFormatError(f"{where}: lm_head.weight differs from wte.weight; only tied heads are supported")
    if not cfg.bias:
        for k in [k for k in out if k.endswith(".bias")]:
            if torch.count_nonzero(out.pop(k)):
                raise HFFormatError(f"{where}: config says nightshift_bias false but {k} is not zero")
    return out


def _atomic_dir(out_dir: Path) -> tuple[Path, Path]:
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return out_dir, tmp


def export_hf(model_dir_or_ref: str | Path | ArtifactRef, out_dir: str | Path) -> Path:
    """Write a ``model`` artifact as a ``GPT2LMHeadModel`` checkpoint with tokenizer files.

    The directory loads with ``GPT2LMHeadModel.from_pretrained`` and ``AutoTokenizer.from_pretrained``.
    It is staged in a sibling temporary directory and renamed into place; an existing ``out_dir``
    is replaced only once the new one is complete.

    Args:
        model_dir_or_ref: the ``model`` artifact (verified on read).
        out_dir: the checkpoint directory to write.

    Returns:
        ``out_dir``, resolved.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    model, tok, ref = load_model(model_dir_or_ref)
    cfg = model.cfg
    eot = tok.token_to_id(EOT)
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        activation_function=HF_ACTIVATION[cfg.activation],
        layer_norm_epsilon=1e-5,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
        nightshift_bias=cfg.bias,
        nightshift_artifact=ref.sha256,
    )
    hf_model = GPT2LMHeadModel(hf_cfg)
    missing, unexpected = hf_model.load_state_dict(
        to_hf_state_dict(weights_to_save(model), cfg), strict=False
    )
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise HFFormatError(f"GPT-2 mapping incomplete: missing {missing}, unexpected {unexpected}")
    hf_model.tie_weights()
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOT,
        bos_token=EOT,
        unk_token=EOT,
        model_max_length=cfg.block_size,
        # Ours encodes a literal "<|endoftext|>" in text as bytes; keep that behaviour in HF.
        split_special_tokens=True,
    )
    out_dir, tmp = _atomic_dir(Path(out_dir))
    try:
        hf_model.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _read_hf_config(hf_dir: Path) -> ModelConfig:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise HFFormatError(f"{hf_dir}: no config.json; is it a Hugging Face checkpoint directory?")
    c: dict[str, Any] = json.loads(path.read_text())
    problems = []
    if c.get("model_type") != "gpt2":
        problems.append(f"model_type is {c.get('model_type')!r}, only 'gpt2' is supported")
    activation = FROM_HF_ACTIVATION.get(c.get("activation_function", "gelu_new"))
    if activation is None:
        problems.append(
            f"activation_function {c.get('activation_function')!r} (need one of {sorted(FROM_HF_ACTIVATION)})"
        )
    if abs(c.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon {c.get('layer_norm_epsilon')} (need 1e-5)")
    if c.get("n_inner") not in (None, 4 * c.get("n_embd", 0)):
        problems.append(f"n_inner {c.get('n_inner')} (need 4 * n_embd)")
    for flag, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                       ("add_cross_attention", False), ("tie_word_embeddings", True)):  # fmt: skip
        if c.get(flag, want) != want:
            problems.append(f"{flag} {c.get(flag)} (need {want})")
    if problems:
        raise HFFormatError(f"{path}: cannot import: " + "; ".join(problems))
    try:
        return ModelConfig(
            n_layer=c["n_layer"],
            n_head=c["n_head"],
            n_embd=c["n_embd"],
            block_size=c["n_positions"],
            vocab_size=c["vocab_size"],
            dropout=c.get("resid_pdrop", 0.0),
            bias=c.get("nightshift_bias", True),
            activation=activation,
        )
    except (KeyError, ValueError) as e:
        raise HFFormatError(f"{path}: cannot build a model config: {e}") from e


def _read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_file(str(hf_dir / shard)))
        return out
    hint = " (pytorch_model.bin is pickle and is not loaded; convert it to safetensors first)"
    raise HFFormatError(
        f"{hf_dir}: no model.safetensors{hint if (hf_dir / 'pytorch_model.bin').exists() else ''}"
    )


def _read_hf_tokenizer(path: Path) -> Any:
    raw = json.loads(path.read_text())
    post = raw.get("post_processor") or {}
    if (
        post.get("type") == "TemplateProcessing"
        and not post.get("special_tokens")
        and post.get("single") == [{"Sequence": {"id": "A", "type_id": 0}}]
    ):
        # transformers adds this no-op template when it wraps a tokenizer without a post-processor;
        # dropping it makes export -> import reproduce the original tokenizer.json (and artifact hash).
        raw["post_processor"] = None
        tok = Tokenizer.from_str(json.dumps(raw))
        tok.encode_special_tokens = True  # as load_tokenizer does
        return tok
    return load_tokenizer(path)


def import_hf(
    hf_dir: str | Path, *, root: str | Path | None = None, dest: str | Path | None = None
) -> ArtifactRef:
    """Read a GPT-2 checkpoint (ours, or any ``GPT2LMHeadModel`` with ``tokenizer.json``) as a ``model``.

    Args:
        hf_dir: the checkpoint directory (``config.json``, ``model.safetensors`` or its sharded index,
            ``tokenizer.json``).
        root: publish under ``root/model/<sha256[:16]>``.
        dest: publish at exactly this path.

    Returns:
        The published ``model`` artifact, which pretraining or RLHF can continue from.

    Raises:
        HFFormatError: not a GPT-2 this model can represent, or no safetensors weights.
    """
    hf_dir = Path(hf_dir)
    cfg = _read_hf_config(hf_dir)
    if not (hf_dir / TOKENIZER_FILE).is_file():
        raise HFFormatError(f"{hf_dir}: no {TOKENIZER_FILE}; save the tokenizer with a fast tokenizer first")
    tok = _read_hf_tokenizer(hf_dir / TOKENIZER_FILE)
    try:
        check_vocab(cfg, tok, str(hf_dir))
    except ModelArtifactError as e:
        raise HFFormatError(str(e)) from e
    weights = from_hf_state_dict(_read_hf_weights(hf_dir), cfg, str(hf_dir))
    model = build_model(cfg, weights, where=str(hf_dir))
    return save_model(model, tok, root=root, dest=dest, metadata={"imported_from": str(hf_dir.resolve())})
