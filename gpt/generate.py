"""The one generation loop, and text generation on top of it.

:func:`sample` decodes a batch of rows with the KV cache and the one sampler
(:mod:`gpt.sampling`): :meth:`gpt.model.GPT.generate`, :func:`generate_text` (the CLI, the MLflow
model), RLHF rollouts and evaluation samples all call it. The serving engine keeps its own
scheduler (slots that sequences join and leave between steps) over the same forward
(:meth:`gpt.model.GPT.forward` with a cache) and the same sampler.

:func:`generate_text` adds the text layer: prompt encoding, the end-of-text token, and stop
strings honoured on the decoded text (a stop string may span several tokens, or end inside one),
with OpenAI-style finish reasons and token counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from gpt.sampling import MIN_TEMPERATURE, SamplingParams, choice_generators, sample_rows
from gpt.tokenizer import EOT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT  # gpt.model calls sample(): the type only, no import at run time


@dataclass
class Sampled:
    """What :func:`sample` drew, per row (row ``r`` samples prompt ``r // n``)."""

    tokens: list[list[int]]  # sampled tokens; the one that ended the row (a stop) included
    finished: list[bool]  # ended by a stop token or ``stop_when`` (else by max_tokens or the context)
    logprobs: torch.Tensor | None  # (rows, steps): each token's log-prob when sampled (0 after the end)


@torch.no_grad()
def sample(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    n: int = 1,
    stop_ids: Sequence[int] = (),
    stop_when: Callable[[list[int]], object] | None = None,
    generators: Sequence[torch.Generator] | None = None,
    logprobs: bool = False,
    use_cache: bool = True,
) -> Sampled:
    """Sample ``n`` continuations of each prompt, all rows decoded as one batch.

    Args:
        model: the GPT (put in eval mode for the call; its mode is restored).
        prompts: token ids; all of the same length (the rows share the cache's positions).
        params: temperature / top-k / top-p / max_tokens (capped by the context) / seed.
        n: rows per prompt; rows of one prompt are adjacent.
        stop_ids: tokens that end a row (kept as its last token).
        stop_when: called with a row's tokens after each new one; true ends the row.
        generators: one per row; default one per row from ``params.seed``
            (:func:`~gpt.sampling.choice_generators`), so a row's tokens depend only on the seed
            and its index.
        logprobs: also return each sampled token's log-prob under the tempered distribution
            (temperature 1 when greedy), the one PPO's ratios are taken against.
        use_cache: decode with the KV cache (off: the whole sequence again at every step, the
            baseline the cache is measured against).
    """
    if not prompts or len({len(p) for p in prompts}) != 1 or not prompts[0]:
        raise ValueError("sample: give one or more non-empty prompts of the same length")
    B = len(prompts) * n
    dev = model.transformer.wte.weight.device
    gens = list(generators) if generators is not None else choice_generators(params.seed, B)
    if len(gens) != B:
        raise ValueError(f"sample: {len(gens)} generators for {B} rows")
    ids = torch.tensor([list(p) for p in prompts], dtype=torch.long, device=dev).repeat_interleave(n, dim=0)
    L = ids.size(1)
    max_new = min(params.max_tokens, model.cfg.block_size - L)
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    lps = torch.zeros((B, max(max_new, 0)), device=dev) if logprobs else None
    if max_new <= 0:
        return Sampled(out, done, lps)
    per_row = [params] * B
    stop = set(stop_ids)
    temp = params.temperature if params.temperature >= MIN_TEMPERATURE else 1.0
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(B, L + max_new) if use_cache else None
        seq = ids
        logits, _ = model(ids, cache=cache, last_only=True)
        for step in range(max_new):
            last = logits[:, -1, :]
            nxt = sample_rows(per_row, gens, last)  # (B,)
            if lps is not None:
                lp = F.log_softmax(last.float() / temp, dim=-1).gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
                live = torch.tensor([not d for d in done], device=dev)
                lps[:, step] = torch.where(live, lp, 0.0)
            for b, t in enumerate(nxt.tolist()):
                if done[b]:
                    continue
                out[b].append(t)
                if t in stop or (stop_when is not None and stop_when(out[b])):
                    done[b] = True
            # No forward pass after the last sampled token: its logits would never be used.
            if all(done) or step == max_new - 1:
                break
            if cache is not None:
                logits, _ = model(nxt.unsqueeze(1), cache=cache)
            else:
                seq = torch.cat([seq, nxt.unsqueeze(1)], dim=1)
                logits, _ = model(seq, last_only=True)
    finally:
        model.train(was_training)
    return Sampled(out, done, lps)


@dataclass(frozen=True)
class Completion:
    """One generated continuation.

    ``completion_tokens`` counts every token the model sampled for it, including an end-of-text
    token or the tokens of a stop string, which are not part of ``text``.
    """

    text: str
    finish_reason: str  # "stop" (end-of-text or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts from the end-of-text token (a document boundary)."""
    ids = tokenizer.encode(prompt).ids
    if not ids:
        eot = tokenizer.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"prompt is empty and the tokenizer has no {EOT} token to start from")
        ids = [eot]
    return ids


def _check_args(
    n_prompt: int, block_size: int, max_new_tokens: int, temperature: float,
    top_k: int | None, top_p: float | None, n: int,
) -> None:  # fmt: skip
    problems = []
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        problems.append(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        problems.append(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {top_p}")
    if n < 1:
        problems.append(f"n must be at least 1, got {n}")
    if n_prompt + max(max_new_tokens, 0) > block_size:
        problems.append(
            f"the prompt has {n_prompt} tokens and max_new_tokens is {max_new_tokens}, together more than "
            f"the model's context (block_size {block_size}); shorten the prompt or lower max_new_tokens"
        )
    if problems:
        raise ValueError("generation request: " + "; ".join(problems))


def _first_stop(text: str, stop: Sequence[str]) -> int:
    """Index of the earliest occurrence of any stop string in ``text``, or -1."""
    hits = [i for s in stop if s and (i := text.find(s)) >= 0]
    return min(hits) if hits else -1


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    n: int = 1,
) -> list[Completion]:
    """Sample ``n`` continuations of ``prompt`` with the KV cache.

    Args:
        model: the GPT (its device is used; train/eval mode is restored afterwards).
        tokenizer: the model's tokenizer.
        prompt: the text to continue; empty starts from the end-of-text token.
        max_new_tokens: at most this many sampled tokens per completion.
        temperature: 0 is greedy; otherwise logits are divided by it.
        top_k: keep only the k most likely tokens.
        top_p: nucleus sampling (smallest set of tokens with cumulative probability >= top_p).
        seed: makes the samples reproducible (a private generator; the global RNG is untouched).
        stop: strings that end a completion; the text is cut before the first one.
        n: completions of the same prompt, decoded as one batch.

    Returns:
        ``n`` completions, in sample order.

    Raises:
        ValueError: a bad argument, or the prompt plus ``max_new_tokens`` exceeds the context; the
            message names the prompt's token count, ``max_new_tokens`` and ``block_size``.
    """
    ids = encode_prompt(tokenizer, prompt)
    _check_args(len(ids), model.cfg.block_size, max_new_tokens, temperature, top_k, top_p, n)
    eot = tokenizer.token_to_id(EOT)
    stop = [s for s in stop if s]

    def text_of(row: list[int]) -> str:
        return tokenizer.decode(row, skip_special_tokens=False)

    def hits_stop(row: list[int]) -> bool:
        # Decode the whole completion: a stop string can span tokens, and a token can end in the
        # middle of a UTF-8 character that only the next one completes.
        return _first_stop(text_of(row), stop) >= 0

    params = SamplingParams(
        max_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k or 0,
        top_p=top_p if top_p is not None else 1.0,
        seed=seed,
    )
    got = sample(
        model,
        [ids],
        params,
        n=n,
        stop_ids=() if eot is None else (eot,),
        stop_when=hits_stop if stop else None,
    )
    decoded, reason = [], []
    for row, finished in zip(got.tokens, got.finished, strict=True):
        text = text_of(row[:-1] if finished and row[-1] == eot else row)
        cut = _first_stop(text, stop) if finished else -1
        decoded.append(text[:cut] if cut >= 0 else text)
        reason.append("stop" if finished else "length")
    sampled = [len(row) for row in got.tokens]
    return [
        Completion(
            text=decoded[b],
            finish_reason=reason[b],
            prompt_tokens=len(ids),
            completion_tokens=sampled[b],
        )
        for b in range(n)
    ]
