"""Per-token log-probabilities, entropies and masked statistics: the arithmetic every algorithm shares.

Shapes follow :mod:`training.rlhf.sequences`: ids ``(B, T)``, per-token tensors ``(B, T - 1)``
where index ``t`` scores token ``t + 1``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

if TYPE_CHECKING:
    from gpt.model import GPT


def token_logprobs(
    model: GPT, ids: torch.Tensor, *, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each next token of ``ids`` under ``model`` (and the entropy at each position).

    Args:
        model: the policy (or reference) GPT.
        ids: (B, T) token ids.
        temperature: logits are divided by it, as when the tokens were sampled.
        with_entropy: also return the entropy of each next-token distribution.

    Returns:
        ``(logprobs, entropy)``, each (B, T-1) float32; ``entropy`` is None unless asked for.
    """
    logits, _ = model(ids[:, :-1])  # (B, T-1, V)
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None
    return lp, entropy


def sequence_logprob(lp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the reply's token log-probs per row: log pi(reply | prompt), (B,)."""
    return (lp * mask).sum(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the true entries of ``mask`` (over everything, or along ``dim``)."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of the masked entries of ``x`` (0 with fewer than two)."""
    n = mask.sum()
    if n < 2:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    mean = masked_mean(x, mask)
    return ((x - mean) ** 2 * mask).sum() / (n - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``x`` normalised to zero mean and unit variance over the masked entries (0 outside the mask)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_to_reference(policy_lp: torch.Tensor, ref_lp: torch.Tensor) -> torch.Tensor:
    """Per-token log-ratio log pi - log pi_ref: on samples from pi its sum estimates KL(pi || ref)."""
    return policy_lp - ref_lp


def full_kl(model: GPT, reference: GPT, ids: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi(.|prefix) || ref(.|prefix)) at every position of ``ids``, (B, T-1).

    Summed over a reply sampled from pi it is an unbiased, low-variance estimate of the sequence
    KL (the chain rule of KL), better than the single-sample log-ratio.
    """
    logp = F.log_softmax(model(ids[:, :-1])[0].float(), dim=-1)
    logq = F.log_softmax(reference(ids[:, :-1])[0].float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)
