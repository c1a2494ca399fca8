"""Response bodies and stream chunks in the OpenAI wire format.

The engine produces :class:`serving.engine.Delta` events; these functions turn them into the
``text_completion`` / ``chat.completion`` objects and their streaming chunks.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from serving.engine import Delta


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def choice_id(response_id: str, index: int) -> str:
    """The catalog id of one choice: the response id for choice 0, ``<id>.<i>`` for the others."""
    return response_id if index == 0 else f"{response_id}.{index}"


@dataclass
class Choice:
    """One choice accumulated from its deltas."""

    index: int
    prompt_index: int
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[str, float]] = field(default_factory=list)

    def add(self, d: Delta) -> None:
        self.text += d.text
        for tok, lp, top in d.logprobs:
            self.tokens.append(tok)
            self.token_logprobs.append(lp)
            self.top_logprobs.append(top)
        self.completion_tokens = d.completion_tokens
        if d.finish_reason:
            self.finish_reason = d.finish_reason


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_logprobs(c: Choice, offset0: int = 0) -> dict[str, Any]:
    offsets, pos = [], offset0
    for t in c.tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": c.tokens,
        "token_logprobs": c.token_logprobs,
        "top_logprobs": c.top_logprobs,
        "text_offset": offsets,
    }


def chat_logprobs(c: Choice) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t,
                "logprob": lp,
                "bytes": list(t.encode()),
                "top_logprobs": [
                    {"token": k, "logprob": v, "bytes": list(k.encode())} for k, v in top.items()
                ],
            }
            for t, lp, top in zip(c.tokens, c.token_logprobs, c.top_logprobs, strict=True)
        ]
    }


def completion_body(
    rid: str, model: str, choices: list[Choice], prompt_tokens: int, want_lp: bool
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": completion_logprobs(c) if want_lp else None,
                "finish_reason": c.finish_reason,
                "completion_id": choice_id(rid, c.index),
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def chat_body(
    rid: str, model: str, choices: list[Choice], prompt_tokens: int, want_lp: bool
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c) if want_lp else None,
                "finish_reason": c.finish_reason,
                "completion_id": choice_id(rid, c.index),
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices)),
    }


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"


def completion_chunk(
    rid: str, model: str, created: int, index: int, d: Delta, want_lp: bool
) -> dict[str, Any]:
    lp = None
    if want_lp and d.logprobs:
        c = Choice(index, 0)
        c.add(d)
        lp = completion_logprobs(c)
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}],
    }


def chat_chunk(
    rid: str, model: str, created: int, index: int, delta: dict[str, Any], finish: str | None, lp: Any = None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
    }
