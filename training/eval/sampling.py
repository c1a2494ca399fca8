"""Replies of a model to evaluation prompts, as plain-text continuations or as chat replies.

Both models of a comparison get the same prompt ids and the same seeds, so differences come from
the weights, not from sampling luck. A prompt longer than the context keeps its last tokens (the
ones nearest the reply), so evaluation never fails on one long prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from gpt.chat import encode_chat
from gpt.generate import encode_prompt
from gpt.tokenizer import EOT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT

Message = Mapping[str, str]


@dataclass(frozen=True)
class Reply:
    """One sampled reply."""

    text: str
    prompt_ids: list[int]  # what the model saw (after left-truncation to the context)
    ids: list[int]  # generated ids, stop token excluded
    finish_reason: str  # "stop" or "length"


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    stop_ids: tuple[int, ...]
    stop: tuple[str, ...]


def _encode(tokenizer: Tokenizer, prompt: str | Sequence[Message], fmt: Literal["text", "chat"]) -> _Encoded:
    eot = tokenizer.token_to_id(EOT)
    if fmt == "text":
        if not isinstance(prompt, str):
            raise ValueError("prompt_format 'text' takes a string prompt; use 'chat' for message lists")
        return _Encoded(encode_prompt(tokenizer, prompt), (eot,) if eot is not None else (), ())
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    chat = encode_chat(tokenizer, messages)
    return _Encoded(chat.ids, chat.stop_ids, chat.stop)


def sample_replies(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str | Sequence[Message],
    *,
    fmt: Literal["text", "chat"] = "text",
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 0,
) -> list[Reply]:
    """Sample ``n`` replies to one prompt with the KV cache.

    Args:
        model: the GPT (any device; eval mode is used and restored).
        tokenizer: its tokenizer.
        prompt: a string, or for ``fmt="chat"`` also a list of ``{"role", "content"}`` messages.
        fmt: ``"text"`` continues the prompt; ``"chat"`` renders it with the chat template and
            generates the assistant's reply, which ends at the end-of-turn marker.
        n: replies, decoded as one batch.
        max_new_tokens: at most this many new tokens (fewer when the context is nearly full).
        temperature: 0 is greedy.
        top_k: sample from the k most likely tokens.
        seed: the sampling seed (a private generator; the global RNG is untouched).

    Returns:
        ``n`` replies in sample order.
    """
    enc = _encode(tokenizer, prompt, fmt)
    block = model.cfg.block_size
    max_new = max(1, min(max_new_tokens, block // 2))
    ids = enc.ids[-(block - max_new) :]  # the tail: the tokens nearest the reply matter most
    out = model.generate(
        ids,
        max_new,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        stop=[(s,) for s in enc.stop_ids],
        num_samples=n,
    )
    replies = []
    for toks, reason in zip(out.tokens, out.finish_reason, strict=True):
        text = tokenizer.decode(toks, skip_special_tokens=False)
        # The plain-text chat fallback has stop strings (the next turn's header) instead of tokens.
        cuts = [i for s in enc.stop if (i := text.find(s)) >= 0]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        replies.append(Reply(text=text, prompt_ids=ids, ids=list(toks), finish_reason=reason))
    return replies
