"""The GPT in ``gpt/model.py``: KV cache, sampling, initialisation, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from core.model_config import ModelConfig
from gpt.model import GPT
from gpt.sampling import SamplingParams, sample_rows

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=300)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


def test_cached_incremental_logits_equal_full_forward(model: GPT) -> None:
    idx = torch.randint(0, TINY.vocab_size, (2, 20))
    full, _ = model(idx)
    cache = model.new_cache(2)
    pieces = [model(idx[:, :1], cache=cache)[0]]  # one token from an empty cache
    pieces.append(model(idx[:, 1:8], cache=cache)[0])  # a multi-token chunk after a prefix
    pieces += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(8, 15)]  # token by token
    pieces.append(model(idx[:, 15:], cache=cache)[0])  # another chunk
    assert cache.lengths == [20, 20]
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() <= 1e-5


def test_rows_of_the_cache_continue_from_their_own_positions(model: GPT) -> None:
    """The serving engine's decode step: rows at different lengths each add one token."""
    seqs = [torch.randint(0, TINY.vocab_size, (1, n)) for n in (5, 11, 8)]
    cache = model.new_cache(3)
    for b, seq in enumerate(seqs):  # a prefill per row, into its own slot
        model(seq[:, :-1], cache=cache, rows=slice(b, b + 1))
    assert cache.lengths == [4, 10, 7]
    last = torch.cat([seq[:, -1:] for seq in seqs])  # (3, 1)
    step, _ = model(last, cache=cache)
    for b, seq in enumerate(seqs):
        full, _ = model(seq)
        assert (step[b, 0] - full[0, -1]).abs().max().item() <= 1e-5
    assert cache.lengths == [5, 11, 8]
    cache.copy_row(1, slice(0, 1), 11)  # a row moved to another slot continues the same way
    nxt = torch.randint(0, TINY.vocab_size, (1, 1))
    moved, _ = model(nxt, cache=cache, rows=slice(0, 1))
    full, _ = model(torch.cat([seqs[1], nxt], dim=1))
    assert (moved[0, 0] - full[0, -1]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="one token each"):
        model(torch.zeros(3, 2, dtype=torch.long), cache=cache)


def test_greedy_generate_equals_argmax_decoding_without_cache(model: GPT) -> None:
    prompt = [5, 17, 42]
    out = model.generate(prompt, 10, temperature=0.0)
    ids = list(prompt)
    for _ in range(10):
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    assert out.tokens == [ids[len(prompt) :]]
    assert out.finish_reason == ["length"]


def test_top_k_1_equals_greedy(model: GPT) -> None:
    greedy = model.generate([1, 2, 3], 12, temperature=0.0).tokens
    assert model.generate([1, 2, 3], 12, temperature=1.5, top_k=1, seed=7).tokens == greedy


def test_seed_makes_samples_reproducible_and_different_seeds_differ(model: GPT) -> None:
    a = model.generate([1, 2, 3], 16, seed=1, num_samples=3).tokens
    b = model.generate([1, 2, 3], 16, seed=1, num_samples=3).tokens
    c = model.generate([1, 2, 3], 16, seed=2, num_samples=3).tokens
    assert a == b
    assert a != c
    assert len({tuple(row) for row in a}) > 1  # rows of one batch are independent samples


def test_generate_leaves_global_rng_and_train_mode_alone(model: GPT) -> None:
    model.train()
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    model.generate([1, 2], 5, seed=3)
    assert torch.rand(1) == expected
    assert model.training


def _draws(logits: torch.Tensor, n: int, **params) -> set[int]:
    gen = torch.Generator().manual_seed(0)
    p = SamplingParams(max_tokens=1, **params)
    return {int(sample_rows([p], [gen], logits)) for _ in range(n)}


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # 0.5 < 0.7 so the second token is needed; 0.5 + 0.3 >= 0.7, so the third and fourth never come.
    assert _draws(logits, 300, top_p=0.7) == {0, 1}
    # top_p below the largest probability keeps only the argmax.
    assert _draws(logits, 50, top_p=0.4) == {0}
    # exactly reaching top_p with the first two tokens does not add a third.
    assert _draws(logits, 300, top_p=0.8) == {0, 1}


def test_top_k_and_temperature_zero() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert _draws(logits, 200, top_k=2) == {1, 2}
    assert _draws(logits, 5, temperature=0.0) == {1}


def test_eos_and_stop_sequences_end_a_sample(model: GPT) -> None:
    greedy = model.generate([1, 2, 3], 10, temperature=0.0).tokens[0]
    eos = greedy[4]
    first = greedy.index(eos)
    out = model.generate([1, 2, 3], 10, temperature=0.0, eos_id=eos)
    assert out.tokens == [greedy[:first]] and out.finish_reason == ["stop"]
    stop = greedy[2:4]
    cut = next(i for i in range(len(greedy)) if greedy[i : i + 2] == stop)  # its first occurrence
    out = model.generate([1, 2, 3], 10, temperature=0.0, stop=[[999], stop])
    assert out.tokens == [greedy[:cut]] and out.finish_reason == ["stop"]


def test_prompt_longer_than_the_context_is_an_error(model: GPT) -> None:
    with pytest.raises(ValueError, match="block_size 32"):
        model.generate(list(range(40)), 5)
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        model.generate([], 5)


def test_output_head_is_tied_to_token_embedding(model: GPT) -> None:
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(1 for _ in model.parameters()) == len(model.state_dict()) - 1  # counted once


def test_gpt2_init_scales_residual_projections() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=4096)
    m = GPT(cfg)
    resid = 0.02 / math.sqrt(2 * cfg.n_layer)
    for block in m.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(resid, rel=0.05)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    assert m.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)


def _meta_gpt(**kw: int) -> GPT:
    with torch.device("meta"):
        return GPT(ModelConfig(**kw))


def test_gpt2_small_parameter_count() -> None:
    m = _meta_gpt(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
    assert m.num_params(non_embedding=False) == 124_439_808  # GPT-2 small, tied head, with wpe
    assert m.num_params() == 124_439_808 - 1024 * 768


def test_gpt2_medium_builds_on_meta_with_its_parameter_count() -> None:
    from core.config import load_config

    m = _meta_gpt(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257)
    assert m.transformer.wte.weight.is_meta
    assert m.num_params(non_embedding=False) == 354_823_168  # GPT-2 medium
    cfg = load_config("gpt2-350m").model
    with torch.device("meta"):
        padded = GPT(cfg)
    assert padded.num_params(non_embedding=False) == 354_823_168 + (50304 - 50257) * 1024


def test_flops_per_token_formula(model: GPT) -> None:
    n, L, C, T = model.num_params(), TINY.n_layer, TINY.n_embd, TINY.block_size
    assert model.flops_per_token() == 6 * n + 12 * L * C * T
    assert model.flops_per_token(8) == 6 * n + 12 * L * C * 8


def test_loss_ignores_minus_100(model: GPT) -> None:
    idx = torch.randint(0, TINY.vocab_size, (1, 6))
    targets = idx.clone()
    targets[0, :3] = -100
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, 3:], idx[0, 3:])
    assert loss is not None and torch.allclose(loss, expected)
