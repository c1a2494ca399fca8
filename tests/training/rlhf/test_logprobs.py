"""Shared pieces: padded batches and reply masks, per-token log-probs, the scalar head's backbone."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from training.rlhf.heads import ScalarModel, hidden_states
from training.rlhf.logprobs import full_kl, masked_mean, masked_whiten, sequence_logprob, token_logprobs
from training.rlhf.sequences import collate, encode_reply


def test_collate_masks_exactly_the_reply_predictions() -> None:
    b = collate([[5, 6, 7, 8], [5, 9]], [2, 1], pad=0)
    assert b.ids.tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    # Position t predicts token t+1: row 0's reply is tokens 2..3, row 1's is token 1.
    assert b.mask.tolist() == [[False, True, True], [True, False, False]]
    assert b.last.tolist() == [3, 1]
    with pytest.raises(ValueError, match="no reply tokens"):
        collate([[1, 2]], [2], pad=0)


@torch.no_grad()
def test_token_logprobs_match_log_softmax_and_ignore_padding(model, tokenizer) -> None:
    ids_a, start_a = encode_reply(tokenizer, [{"role": "user", "content": "Repeat: cat dog"}], "cat dog")
    ids_b, start_b = encode_reply(tokenizer, [{"role": "user", "content": "What is 3 plus 4?"}], "7")
    b = collate([ids_a, ids_b], [start_a, start_b], pad=0)
    lp, ent = token_logprobs(model, b.ids, with_entropy=True)
    logits, _ = model(torch.tensor([ids_b[:-1]]))
    want = F.log_softmax(logits[0], -1).gather(-1, torch.tensor(ids_b[1:]).unsqueeze(-1)).squeeze(-1)
    n = len(ids_b) - 1
    # Right padding never changes the real tokens' log-probs (causal attention).
    assert torch.allclose(lp[1, :n], want, atol=1e-5)
    assert ent is not None and bool((ent > 0).all())
    seq = sequence_logprob(lp, b.mask)
    assert seq[1] == pytest.approx(float(want[start_b - 1 :].sum()), abs=1e-5)


def test_masked_statistics() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert float(masked_mean(x, m)) == pytest.approx(2.0)
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 3.0]
    w = masked_whiten(x, m)
    assert float(masked_mean(w, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(w[m].std()) == pytest.approx(1.0, abs=1e-4)
    assert float(w[~m].abs().sum()) == 0.0


@torch.no_grad()
def test_hidden_states_are_the_lm_head_input(model) -> None:
    x = torch.randint(0, 300, (2, 11))
    assert torch.allclose(model.lm_head(hidden_states(model, x)), model(x)[0], atol=1e-5)
    head = ScalarModel(model)
    assert head(x).shape == (2, 11)
    assert head.score(x, torch.tensor([3, 10])).tolist() == [0.0, 0.0]  # zero-initialised head


@torch.no_grad()
def test_full_kl_is_zero_against_itself_and_positive_otherwise(model) -> None:
    import copy

    x = torch.randint(0, 300, (2, 9))
    assert float(full_kl(model, model, x).abs().max()) < 1e-6
    other = copy.deepcopy(model)
    other.lm_head.weight.add_(0.05 * torch.randn_like(other.lm_head.weight))
    assert bool((full_kl(model, other, x) > 0).all())
