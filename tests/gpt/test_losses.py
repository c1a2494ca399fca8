"""The CPU token cross-entropy, and the head fused with it, equal F.cross_entropy in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt.losses import linear_cross_entropy, token_cross_entropy


def _pair(n: int = 64, v: int = 50, ignored: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g) * 3
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.randperm(n, generator=g)[:ignored]] = -100
    return logits, targets


@pytest.mark.parametrize("ignored", [0, 5, 63])
def test_value_and_gradient_equal_torch(ignored: int) -> None:
    logits, targets = _pair(ignored=ignored)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    want = F.cross_entropy(a, targets, ignore_index=-100)
    got = token_cross_entropy(b, targets)
    (want * 2.5).backward()
    (got * 2.5).backward()  # an upstream gradient other than 1
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)
    assert (b.grad[targets == -100] == 0).all()


def test_all_targets_ignored_is_nan_as_in_torch() -> None:
    logits, targets = _pair(ignored=64)
    x = logits.clone().requires_grad_()
    loss = token_cross_entropy(x, targets)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(logits, targets, ignore_index=-100))
    loss.backward()
    assert (x.grad == 0).all()


def test_a_second_backward_through_the_same_graph_is_refused() -> None:
    logits, targets = _pair()
    x = logits.clone().requires_grad_()
    loss = token_cross_entropy(x, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        loss.backward()


def _tiny_model_batch():
    from core.model_config import ModelConfig
    from gpt.model import GPT

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=300, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, 300, (3, 16))
    targets = idx.roll(-1, 1)
    targets[:, :4] = -100  # SFT-style: no loss on the prompt
    return model, idx, targets


def test_the_model_loss_trains_like_torch() -> None:
    model, idx, targets = _tiny_model_batch()
    logits, loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    want = F.cross_entropy(model(idx)[0].view(-1, 300), targets.view(-1), ignore_index=-100)
    want.backward()
    torch.testing.assert_close(loss, want)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize(("n", "ignored"), [(64, 0), (300, 7), (300, 300)])
def test_the_fused_head_equals_logits_then_cross_entropy(n: int, ignored: int) -> None:
    # 300 rows over a vocab of 2,000: chunks of 262 rows, the last one short.
    g = torch.Generator().manual_seed(1)
    h = torch.randn(n, 24, generator=g)
    w = torch.randn(2000, 24, generator=g) * 0.3
    targets = torch.randint(0, 2000, (n,), generator=g)
    targets[torch.randperm(n, generator=g)[:ignored]] = -100
    h1, w1, h2, w2 = (t.clone().requires_grad_() for t in (h, w, h, w))
    want = F.cross_entropy(h1 @ w1.t(), targets, ignore_index=-100)
    got = linear_cross_entropy(h2, w2, targets)
    if ignored == n:
        assert torch.isnan(got) and torch.isnan(want)
        got.backward()
        assert (h2.grad == 0).all() and (w2.grad == 0).all()
        return
    (want * 0.7).backward()
    (got * 0.7).backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2.grad, h1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # no gradient wanted: the plain path, same value
        torch.testing.assert_close(linear_cross_entropy(h, w, targets), want.detach())


def test_the_model_without_logits_trains_like_with_them() -> None:
    model, idx, targets = _tiny_model_batch()
    logits, loss = model(idx, targets, return_logits=False)
    assert logits is None
    (loss * 3).backward()  # the tied embedding gets the head's gradient and the input's
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _, want = model(idx, targets)
    (want * 3).backward()
    torch.testing.assert_close(loss, want)
    for n, p in model.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)
