"""Text-level generation shared by the CLI, the MLflow model and serving.

:meth:`training.model.GPT.generate` works on token ids; this module adds the text layer: prompt
encoding, the end-of-text token, and stop strings honoured on the decoded text (a stop string may
span several tokens, or end inside one), with OpenAI-style finish reasons and token counts.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from training.data.tokenizer import EOT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from training.model import GPT


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
    import torch

    from training.model import sample_next

    ids = encode_prompt(tokenizer, prompt)
    _check_args(len(ids), model.cfg.block_size, max_new_tokens, temperature, top_k, top_p, n)
    eot = tokenizer.token_to_id(EOT)
    stop = [s for s in stop if s]
    device = model.transformer.wte.weight.device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else secrets.randbits(63))

    out: list[list[int]] = [[] for _ in range(n)]
    cut_text: list[str | None] = [None] * n  # the text of a completion a stop string ended
    sampled = [0] * n
    reason = ["length"] * n
    done = [False] * n
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            cache = model.new_cache(n, len(ids) + max_new_tokens)
            prompt_ids = torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(0).expand(n, -1)
            logits, _ = model(prompt_ids, cache=cache)
            for step in range(max_new_tokens):
                nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, gen)  # (n,)
                for b, t in enumerate(nxt.tolist()):
                    if done[b]:
                        continue
                    sampled[b] += 1
                    if t == eot:
                        done[b], reason[b] = True, "stop"
                        continue
                    out[b].append(t)
                    if stop:
                        # Decode the whole completion: a stop string can span tokens, and a token can
                        # end in the middle of a UTF-8 character that only the next one completes.
                        text = tokenizer.decode(out[b], skip_special_tokens=False)
                        cut = _first_stop(text, stop)
                        if cut >= 0:
                            cut_text[b], done[b], reason[b] = text[:cut], True, "stop"
                if all(done) or step == max_new_tokens - 1:
                    break
                logits, _ = model(nxt.unsqueeze(1), cache=cache)
    finally:
        model.train(was_training)
    decoded = [
        c if c is not None else tokenizer.decode(o, skip_special_tokens=False)
        for c, o in zip(cut_text, out, strict=True)
    ]
    return [
        Completion(
            text=decoded[b],
            finish_reason=reason[b],
            prompt_tokens=len(ids),
            completion_tokens=sampled[b],
        )
        for b in range(n)
    ]
