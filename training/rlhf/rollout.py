"""Batched sampling of replies with the KV cache: the rollouts of PPO and GRPO and the evaluation samples.

Decoding is the model runtime's one loop (:func:`gpt.generate.sample`). Its rows share their
positions, and left-padding prompts of different lengths would shift them and let them attend to
padding, so prompts are grouped by length and each group is decoded as one batch (task prompts
come in a handful of lengths; GRPO's group of samples of one prompt is one batch). Every row
draws from a generator of its own, seeded from the rollout's generator.

A reply ends at the first stop token (the chat template's end marker or end-of-text), which is
kept as the reply's last token: the policy is trained to emit it and the reward model scores
the sequence there. A reply that reaches ``max_new_tokens`` (or the context) without one is
*truncated*; :attr:`Rollout.finished` tells them apart so a penalty can be applied.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gpt.generate import sample
from gpt.model import GPT
from gpt.sampling import SamplingParams


@dataclass
class Rollout:
    """Sampled sequences, right-padded, with positions as in :mod:`training.rlhf.sequences`."""

    ids: torch.Tensor  # (N, T) prompt + reply, padded with the pad id
    mask: torch.Tensor  # (N, T-1) bool: position t predicts a reply token
    logprobs: torch.Tensor  # (N, T-1) log-prob of each sampled token when it was sampled (0 elsewhere)
    prompt_lens: torch.Tensor  # (N,)
    reply_lens: torch.Tensor  # (N,) reply tokens, the stop token included when finished
    finished: torch.Tensor  # (N,) bool: ended with a stop token
    prompt_index: list[int]  # which input prompt each row samples (rows of a prompt are adjacent)

    def __len__(self) -> int:
        return int(self.ids.size(0))

    @property
    def last(self) -> torch.Tensor:
        """Index in ``ids`` of each row's last token (the stop token when finished)."""
        return self.prompt_lens + self.reply_lens - 1

    def reply(self, i: int, *, with_stop: bool = False) -> list[int]:
        """Row ``i``'s reply tokens (without the stop token unless ``with_stop``)."""
        p, n = int(self.prompt_lens[i]), int(self.reply_lens[i])
        if self.finished[i] and not with_stop:
            n -= 1
        return self.ids[i, p : p + n].tolist()

    @property
    def num_reply_tokens(self) -> int:
        return int(self.reply_lens.sum())


@torch.no_grad()
def rollout(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Rollout:
    """Sample ``num_samples`` replies per prompt.

    Args:
        model: the policy (put in eval mode for the call; its mode is restored).
        prompts: token ids of each prompt.
        max_new_tokens: the longest reply; capped per prompt by the context (``block_size``).
        stop_ids: tokens that end a reply (kept as its last token).
        pad_id: fills the tail of short rows.
        num_samples: replies per prompt; rows of one prompt are adjacent in the result.
        temperature: 0 is greedy (log-probs then refer to temperature 1).
        top_k: keep only the k most likely tokens (log-probs still refer to the full distribution).
        seed: seeds a private generator (ignored when ``generator`` is given).
        generator: the random generator to draw from.
        use_cache: decode with the KV cache (off: recompute the whole sequence each step).

    Raises:
        ValueError: no prompts, an empty prompt, or one that leaves no room in the context.
    """
    if not prompts:
        raise ValueError("rollout: no prompts given")
    block = model.cfg.block_size
    too_long = [i for i, p in enumerate(prompts) if not 0 < len(p) < block]
    if too_long:
        raise ValueError(
            f"rollout: prompts {too_long[:5]} are empty or leave no room in the context "
            f"(block_size {block}); shorten them or use a model with a longer context"
        )
    dev = model.transformer.wte.weight.device
    if generator is None:
        generator = torch.Generator()  # on the CPU, as the sampler's own generators
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)

    rows: dict[int, tuple[torch.Tensor, torch.Tensor, int, bool]] = {}  # (prompt idx, sample) → parts
    for L, members in sorted(groups.items()):
        params = SamplingParams(
            max_tokens=min(max_new_tokens, block - L), temperature=max(temperature, 0.0), top_k=top_k or 0
        )
        seeds = torch.randint(0, 2**62, (len(members) * num_samples,), generator=generator).tolist()
        got = sample(
            model,
            [prompts[i] for i in members],
            params,
            n=num_samples,
            stop_ids=stop_ids,
            generators=[torch.Generator().manual_seed(int(x)) for x in seeds],
            logprobs=True,
            use_cache=use_cache,
        )
        assert got.logprobs is not None
        for r, (toks, fin) in enumerate(zip(got.tokens, got.finished, strict=True)):
            key = members[r // num_samples] * num_samples + r % num_samples
            t = torch.tensor(toks, dtype=torch.long, device=dev)
            rows[key] = (t, got.logprobs[r, : len(toks)], L, fin)

    N = len(prompts) * num_samples
    T = max(L + len(t) for t, _, L, _ in rows.values())
    ids = torch.full((N, T), pad_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros((N, T - 1), device=dev)
    mask = torch.zeros((N, T - 1), dtype=torch.bool, device=dev)
    prompt_lens = torch.zeros(N, dtype=torch.long, device=dev)
    reply_lens = torch.zeros(N, dtype=torch.long, device=dev)
    finished = torch.zeros(N, dtype=torch.bool, device=dev)
    for key in range(N):
        toks, lps, L, fin = rows[key]
        n = len(toks)
        ids[key, :L] = torch.as_tensor(list(prompts[key // num_samples]), device=dev)
        ids[key, L : L + n] = toks
        logprobs[key, L - 1 : L - 1 + n] = lps
        mask[key, L - 1 : L - 1 + n] = True
        prompt_lens[key], reply_lens[key], finished[key] = L, n, fin
    return Rollout(
        ids=ids,
        mask=mask,
        logprobs=logprobs,
        prompt_lens=prompt_lens,
        reply_lens=reply_lens,
        finished=finished,
        prompt_index=[k // num_samples for k in range(N)],
    )
