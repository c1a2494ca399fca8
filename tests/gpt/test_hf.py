"""Hugging Face interop: logits equal transformers' GPT-2 on the same weights; export/import round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.model_config import ModelConfig, stored_model_config
from gpt.hf import HFFormatError, export_hf, import_hf
from gpt.model import GPT
from gpt.model_io import load_model, save_model
from gpt.tokenizer import EOT, train_tokenizer

TEXTS = [
    "The river ran past the old mill, and the miller's daughter watched the boats go by. " * 20,
    "Numbers like 3.14 and 2,718 appear too; so do emoji 🙂 and accents: café, naïve. " * 20,
]
SAMPLE = "The café by the river 🙂 sold 3.14 pies <|endoftext|> and more\n\ttabs"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=320)


def _model_artifact(tmp_path: Path, tokenizer, seed: int = 0, **cfg: object):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{"block_size": 64, "vocab_size": 384, **cfg})).eval()
    if not model.cfg.bias:
        return model, save_model(model, tokenizer, root=tmp_path / "artifacts")
    with torch.no_grad():  # non-zero biases and norms, so a mis-mapped one shows in the logits
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model, save_model(model, tokenizer, root=tmp_path / "artifacts")


def _hf_logits(out: Path, idx: torch.Tensor, attn: str) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(out, attn_implementation=attn).eval()
    with torch.no_grad():
        return hf(idx).logits


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize(
    "shape", [dict(n_layer=2, n_head=2, n_embd=32), dict(n_layer=4, n_head=4, n_embd=64)], ids=["2L", "4L"]
)
def test_logits_equal_transformers_gpt2(
    tmp_path: Path, tokenizer, shape: dict[str, int], activation: str
) -> None:
    model, ref = _model_artifact(tmp_path, tokenizer, **shape, activation=activation)
    out = export_hf(ref, tmp_path / "hf")
    idx = torch.randint(0, 384, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
    for attn in ("eager", "sdpa"):
        diff = (_hf_logits(out, idx, attn) - ours).abs().max().item()
        print(f"{shape} {activation} {attn}: max abs logit diff {diff:.3e}")
        assert diff <= 1e-4


def test_hf_config_carries_our_settings(tmp_path: Path, tokenizer) -> None:
    _, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    c = json.loads((export_hf(ref, tmp_path / "hf") / "config.json").read_text())
    eot = tokenizer.token_to_id(EOT)
    assert (c["n_layer"], c["n_head"], c["n_embd"], c["n_positions"], c["vocab_size"]) == (2, 2, 32, 64, 384)
    assert c["activation_function"] == "gelu" and c["layer_norm_epsilon"] == 1e-5
    assert c["resid_pdrop"] == c["embd_pdrop"] == c["attn_pdrop"] == 0.1
    assert c["bos_token_id"] == c["eos_token_id"] == eot


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_round_trip_gives_identical_weights_logits_and_artifact(
    tmp_path: Path, tokenizer, activation: str
) -> None:
    model, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32, activation=activation)
    back = import_hf(export_hf(ref, tmp_path / "hf"), root=tmp_path / "imported")
    assert back.kind == "model" and back.sha256 == ref.sha256  # same content, same identity
    m2, _, _ = load_model(back)
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert m2.lm_head.weight is m2.transformer.wte.weight and m2.cfg.activation == activation
    idx = torch.randint(0, 384, (2, 30))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], m2(idx)[0])


def test_hf_tokenizer_encodes_like_ours(tmp_path: Path, tokenizer) -> None:
    from transformers import AutoTokenizer

    _, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32)
    hf_tok = AutoTokenizer.from_pretrained(export_hf(ref, tmp_path / "hf"))
    ids = hf_tok(SAMPLE)["input_ids"]
    assert ids == tokenizer.encode(SAMPLE).ids  # no BOS added; literal <|endoftext|> stays bytes
    assert hf_tok.decode(ids) == SAMPLE
    assert hf_tok.eos_token == EOT and hf_tok.eos_token_id == tokenizer.token_to_id(EOT)


def test_transformers_greedy_generate_matches_ours(tmp_path: Path, tokenizer) -> None:
    from transformers import GPT2LMHeadModel

    model, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32)
    hf = GPT2LMHeadModel.from_pretrained(export_hf(ref, tmp_path / "hf")).eval()
    prompt = [5, 6, 7, 8]
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    ours = model.generate(prompt, 12, temperature=0.0)
    assert theirs[0, len(prompt) :].tolist() == ours.tokens[0]


def test_bias_free_model_exports_zero_biases_and_comes_back_bias_free(tmp_path: Path, tokenizer) -> None:
    model, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32, bias=False)
    out = export_hf(ref, tmp_path / "hf")
    idx = torch.randint(0, 384, (2, 20))
    with torch.no_grad():
        assert (_hf_logits(out, idx, "eager") - model(idx)[0]).abs().max().item() <= 1e-4
    m2, _, _ = load_model(import_hf(out, root=tmp_path / "imported"))
    assert m2.cfg.bias is False and m2.state_dict().keys() == model.state_dict().keys()


def test_export_replaces_an_existing_directory_atomically(tmp_path: Path, tokenizer) -> None:
    _, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert export_hf(ref, out) == out.resolve()
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_import_refuses_what_it_cannot_represent(tmp_path: Path, tokenizer) -> None:
    _, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32)
    out = export_hf(ref, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "activation_function": "relu"}))
    with pytest.raises(HFFormatError, match="activation_function"):
        import_hf(out, root=tmp_path / "x")
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    with pytest.raises(HFFormatError, match="pickle"):
        import_hf(out, root=tmp_path / "x")
    assert not (tmp_path / "x" / "model").exists() or not any((tmp_path / "x" / "model").iterdir())


def test_a_model_stored_before_the_activation_setting_loads_with_the_tanh_gelu(
    tmp_path: Path, tokenizer
) -> None:
    """Models of earlier nights were trained with GPT-2's tanh GELU and their config.json has no
    ``activation``: they must come back with the function they were trained with."""
    model, ref = _model_artifact(tmp_path, tokenizer, n_layer=2, n_head=2, n_embd=32, activation="gelu_tanh")
    raw = json.loads((ref.path / "config.json").read_text())
    del raw["activation"]
    assert stored_model_config({k: v for k, v in raw.items() if k != "format"}).activation == "gelu_tanh"
    assert ModelConfig().activation == "gelu"
