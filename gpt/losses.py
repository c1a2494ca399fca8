"""Token cross-entropy for the language-model loss, with a cheaper backward on CPU, and the output
head fused with it for training on CPU.

PyTorch's ``F.cross_entropy`` backward on CPU fills a (tokens x vocab) zero tensor, scatters the
loss gradient into it and then runs log-softmax's general backward over both: three passes over
the largest activation of a small GPT. With the loss's own gradient known in closed form,
``softmax(logits) - onehot(target)`` scaled per row, the backward is one ``exp`` in place over the
saved log-probabilities, one scale and a scatter. On the bench config (4 layers, 256 dims, vocab
4096, 16 x 256 tokens) this halves the loss's share of a training step (about 65 ms to 34 ms of a
~520 ms step on 2 cores; ``bench/train_throughput.py``). No library we use offers it for CPU, so it
is written here. On GPU the fused kernels of ``F.cross_entropy`` are used as they are.

:func:`linear_cross_entropy` goes further for a training step on CPU: it never builds the
(tokens x vocab) logits. Rows are taken a cache-sized chunk at a time; for each, the logits, the
loss and the gradient of the loss with respect to those logits (known in closed form) are computed
while the chunk is in cache, and the chunk's gradients for the hidden states and the head weight
follow at once (the idea of fused linear cross-entropy kernels such as Liger's on GPU). The backward
then only scales the saved gradients. Same matmul FLOPs; on the bench config the output head and
loss of a step go from about 140 to 115 ms, and the 64 MB logits and log-probabilities are not kept.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class _TokenCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
        logp = torch.log_softmax(logits, dim=-1)
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        picked = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        count = valid.sum()
        ctx.save_for_backward(logp, safe, valid, count)
        # As F.cross_entropy: NaN when every target is ignored.
        return -(picked * valid).sum() / count

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logp, safe, valid, count = ctx.saved_tensors
        scale = (grad / count.clamp_min(1)) * valid.to(logp.dtype)  # (N,): 0 on ignored rows
        # The saved log-probabilities become the gradient in place (softmax, then scaled): a second
        # backward through the same graph would find them changed, and autograd refuses it.
        out = logp.exp_()
        out.mul_(scale.unsqueeze(1))
        out.scatter_add_(1, safe.unsqueeze(1), -scale.unsqueeze(1))
        return out, None, None


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (N, V) against ``targets`` (N,), skipping ``ignore_index``.

    The same value and gradient as ``F.cross_entropy(logits, targets, ignore_index=...)``.
    """
    if logits.device.type != "cpu":
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)
    return _TokenCrossEntropy.apply(logits, targets, ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int, chunk: int
    ) -> torch.Tensor:
        valid = targets != ignore_index
        count = valid.sum()
        inv = 1.0 / count.clamp_min(1)
        safe = torch.where(valid, targets, 0)
        dh = torch.empty_like(h)
        dw = torch.zeros_like(weight)
        total = torch.zeros((), dtype=h.dtype)
        for s in range(0, h.size(0), chunk):
            hc, tc, vc = h[s : s + chunk], safe[s : s + chunk].unsqueeze(1), valid[s : s + chunk]
            logp = torch.log_softmax(hc @ weight.t(), dim=-1)
            total -= (logp.gather(1, tc).squeeze(1) * vc).sum()
            # d(mean loss)/d(logits) = (softmax - onehot) / count on counted rows, 0 on ignored ones.
            scale = (vc.to(h.dtype) * inv).unsqueeze(1)
            g = logp.exp_().mul_(scale)
            g.scatter_add_(1, tc, -scale)
            torch.mm(g, weight, out=dh[s : s + chunk])
            dw.addmm_(g.t(), hc)
        ctx.save_for_backward(dh, dw)
        # As F.cross_entropy: NaN when every target is ignored.
        return total / count

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:
        dh, dw = ctx.saved_tensors
        return dh.mul_(grad), dw.mul_(grad), None, None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """``token_cross_entropy(h @ weight.T, targets)`` for hidden states ``h`` (N, C) and an output
    head ``weight`` (V, C), without the (N, V) logits when it is computed for a backward on CPU.

    The fused path computes the gradients during the forward, so it is taken only when a gradient
    is wanted; otherwise (and on GPU) the logits are formed and :func:`token_cross_entropy` used.
    """
    wants_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    plain_fp32 = h.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    if h.device.type != "cpu" or not wants_grad or not plain_fp32:
        return token_cross_entropy((h @ weight.t()).float(), targets, ignore_index)
    # About 2 MB of logits per chunk (an L2 cache), and no fewer rows than keep the matmuls efficient.
    chunk = max(64, (1 << 19) // max(1, weight.size(0)))
    return _LinearCrossEntropy.apply(h, weight, targets, ignore_index, chunk)
