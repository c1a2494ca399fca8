"""Text-level generation: prompt handling, EOT, stop strings, context errors."""

from __future__ import annotations

import pytest
import torch

from core.model_config import ModelConfig
from gpt.generate import generate_text
from gpt.model import GPT
from gpt.tokenizer import EOT, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["the cat sat on the mat, and the dog lay by the door. " * 40], vocab_size=300)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=320)).eval()


def test_greedy_text_matches_token_level_generate(model: GPT, tokenizer) -> None:
    [c] = generate_text(model, tokenizer, "the cat", max_new_tokens=10, temperature=0.0)
    ids = tokenizer.encode("the cat").ids
    out = model.generate(ids, 10, temperature=0.0, eos_id=tokenizer.token_to_id(EOT))
    assert c.text == tokenizer.decode(out.tokens[0], skip_special_tokens=False)
    assert c.prompt_tokens == len(ids) and c.finish_reason == out.finish_reason[0]


def test_seed_reproducible_and_n_samples(model: GPT, tokenizer) -> None:
    a = generate_text(model, tokenizer, "the", max_new_tokens=12, seed=3, n=3)
    b = generate_text(model, tokenizer, "the", max_new_tokens=12, seed=3, n=3)
    assert [c.text for c in a] == [c.text for c in b] and len(a) == 3


def test_empty_prompt_starts_from_eot(model: GPT, tokenizer) -> None:
    [c] = generate_text(model, tokenizer, "", max_new_tokens=4, temperature=0.0)
    assert c.prompt_tokens == 1
    eot = tokenizer.token_to_id(EOT)
    assert c.text == tokenizer.decode(model.generate([eot], 4, temperature=0.0, eos_id=eot).tokens[0])


def test_stop_string_spanning_tokens_cuts_the_text(model: GPT, tokenizer) -> None:
    [full] = generate_text(model, tokenizer, "the cat", max_new_tokens=20, temperature=0.0)
    assert len(full.text) > 6
    stop = full.text[3:6]  # almost surely spans a token boundary of this untrained model
    [c] = generate_text(model, tokenizer, "the cat", max_new_tokens=20, temperature=0.0, stop=["zzzz", stop])
    assert c.finish_reason == "stop" and c.text == full.text[: full.text.index(stop)]
    assert c.completion_tokens <= full.completion_tokens


def test_eot_ends_a_sample(model: GPT, tokenizer) -> None:
    eot = tokenizer.token_to_id(EOT)
    with torch.no_grad():  # the final norm outputs a constant v, and EOT's embedding is a multiple of v
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.normal_()
        model.transformer.wte.weight[eot] = model.transformer.ln_f.bias * 10
    [c] = generate_text(model, tokenizer, "the cat", max_new_tokens=10, temperature=0.0)
    assert c.finish_reason == "stop" and c.text == "" and c.completion_tokens == 1


def test_prompt_too_long_for_the_context_names_the_numbers(model: GPT, tokenizer) -> None:
    prompt = "the cat sat on the mat " * 30
    n = len(tokenizer.encode(prompt).ids)
    with pytest.raises(ValueError, match=rf"{n} tokens and max_new_tokens is 8.*block_size 48"):
        generate_text(model, tokenizer, prompt, max_new_tokens=8)
    with pytest.raises(ValueError, match="top_p"):
        generate_text(model, tokenizer, "the", top_p=0.0)
