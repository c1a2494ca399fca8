"""Rollouts: the KV cache gives the same samples as full recomputation; EOS and truncation."""

from __future__ import annotations

import pytest
import torch

from training.rlhf.logprobs import token_logprobs
from training.rlhf.rollout import rollout
from training.rlhf.sequences import encode_prompt, pad_id


def _prompts(tokenizer, texts):
    enc = [encode_prompt(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    return [ids for ids, _ in enc], enc[0][1]


def test_cache_and_recompute_sample_the_same_and_logprobs_match(sft_model, tokenizer) -> None:
    prompts, stop = _prompts(tokenizer, ["Repeat: cat dog", "Which is larger, 3 or 12?", "Repeat: sun oak"])
    assert len({len(p) for p in prompts}) > 1  # several length groups
    kw = dict(max_new_tokens=10, stop_ids=stop, pad_id=pad_id(tokenizer), num_samples=3, seed=5)
    a = rollout(sft_model, prompts, **kw)
    b = rollout(sft_model, prompts, **kw, use_cache=False)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
    assert a.prompt_index == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i in range(len(a)):
        assert a.ids[i, : a.prompt_lens[i]].tolist() == prompts[a.prompt_index[i]]
    # The log-probs recorded while sampling are the ones a training forward pass computes.
    lp, _ = token_logprobs(sft_model, a.ids)
    assert torch.allclose(lp * a.mask, a.logprobs, atol=1e-4)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_stop_token_ends_and_is_kept_truncation_is_flagged(sft_model, tokenizer) -> None:
    prompts, stop = _prompts(tokenizer, ["Repeat: cat dog"])
    ro = rollout(
        sft_model, prompts, max_new_tokens=12, stop_ids=stop, pad_id=pad_id(tokenizer), temperature=0
    )
    assert bool(ro.finished[0])
    last = int(ro.last[0])
    assert int(ro.ids[0, last]) in stop  # the end marker is the reply's last token...
    assert ro.reply(0, with_stop=True) == [*ro.reply(0), int(ro.ids[0, last])]  # ...not part of its text
    assert not set(ro.reply(0)) & set(stop)
    assert int(ro.mask[0].sum()) == int(ro.reply_lens[0])
    cut = rollout(
        sft_model, prompts, max_new_tokens=2, stop_ids=stop, pad_id=pad_id(tokenizer), temperature=0
    )
    assert not bool(cut.finished[0]) and int(cut.reply_lens[0]) == 2
    assert cut.reply(0) == ro.reply(0)[:2]


def test_context_caps_the_reply_and_too_long_prompts_are_named(sft_model, tokenizer) -> None:
    prompts, stop = _prompts(tokenizer, ["Repeat: cat dog"])
    long_prompt = prompts[0] * 3  # still fits, leaves few tokens of room
    room = sft_model.cfg.block_size - len(long_prompt)
    ro = rollout(sft_model, [long_prompt], max_new_tokens=50, stop_ids=(), pad_id=0, seed=1)
    assert int(ro.reply_lens[0]) == room and ro.ids.size(1) == sft_model.cfg.block_size
    with pytest.raises(ValueError, match=r"prompts \[1\] are empty or leave no room"):
        rollout(sft_model, [prompts[0], prompts[0] * 5], max_new_tokens=4, stop_ids=stop, pad_id=0)
