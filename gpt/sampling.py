"""The one sampler: per-request parameters, one generator per choice, one token per row of logits.

Every decoder samples here: :meth:`gpt.model.GPT.generate`, text generation, RLHF rollouts,
evaluation samples and the serving engine.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import torch

# Below this a temperature samples greedily: logits / 1e-300 overflow float32 to inf, and the
# softmax of inf is NaN (a request with such a temperature got arbitrary tokens).
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] = ()  # tokens that end a sequence without being part of its text
    logprobs: int | None = None  # top-n alternatives per token (0 .. MAX_LOGPROBS)


def choice_seed(seed: int, choice: int) -> int:
    """The seed of choice ``choice`` of a request seeded with ``seed`` (63 bits, well mixed).

    Each choice draws from a generator of its own, so its tokens depend only on the request's
    seed and its index, never on the rows that shared its batches or on their order.
    """
    h = hashlib.blake2b(f"{seed}:{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def choice_generators(seed: int | None, n: int, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per choice of a request (``seed`` None: unpredictable ones)."""
    gens = []
    for j in range(n):
        g = torch.Generator(device=device)
        g.manual_seed(choice_seed(seed, j) if seed is not None else secrets.randbits(63))
        gens.append(g)
    return gens


def sample_rows(
    params: list[SamplingParams], generators: list[torch.Generator], logits: torch.Tensor
) -> torch.Tensor:
    """One token per row, each row with its own temperature / top-k / top-p and generator.

    Batched inverse-CDF sampling: each row draws one uniform from its request's generator, and
    how a row is sampled depends only on its own parameters, so a seeded request gets the same
    tokens whatever else shares the batch.
    """
    out = logits.argmax(dim=-1)
    plain, filtered = [], []
    for i, p in enumerate(params):
        if p.temperature >= MIN_TEMPERATURE:
            (plain if p.top_p >= 1.0 and not p.top_k else filtered).append(i)
    if not plain and not filtered:
        return out
    V = logits.size(-1)
    dev = logits.device
    u = {i: torch.rand(1, generator=generators[i]) for i in plain + filtered}
    for rows, needs_sort in ((plain, False), (filtered, True)):
        if not rows:
            continue
        idx = torch.tensor(rows, device=dev)
        temp = torch.tensor([params[i].temperature for i in rows], device=dev)
        z = logits[idx].float() / temp[:, None]
        uu = torch.cat([u[i] for i in rows]).to(dev)
        if not needs_sort:
            # Plain temperature sampling needs no sorted order: the inverse CDF works on any
            # order, and skipping the (B, vocab) sort is most of the sampling cost.
            cdf = z.softmax(dim=-1).cumsum(dim=-1)
            pick = torch.searchsorted(cdf, (uu * cdf[:, -1]).unsqueeze(1)).clamp_(max=V - 1)
            out[idx] = pick.squeeze(1)
            continue
        sorted_z, order = z.sort(dim=-1, descending=True)
        probs = sorted_z.softmax(dim=-1)
        top_k = torch.tensor([params[i].top_k or V for i in rows], device=dev)
        top_p = torch.tensor([params[i].top_p for i in rows], device=dev)
        # Keep a token when it is within the top k and the tokens before it have not reached top_p.
        keep = (torch.arange(V, device=dev)[None, :] < top_k[:, None]) & (
            probs.cumsum(dim=-1) - probs < top_p[:, None]
        )
        cdf = (probs * keep).cumsum(dim=-1)
        pick = torch.searchsorted(cdf, (uu * cdf[:, -1]).unsqueeze(1)).clamp_(max=V - 1)
        out[idx] = order.gather(1, pick).squeeze(1)
    return out
