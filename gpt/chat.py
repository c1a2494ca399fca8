"""The chat template, shared by SFT/RLHF data and by the serving endpoint ``/v1/chat/completions``.

A conversation is rendered as::

    <|system|>You are ...<|end|>
    <|user|>What is 2+3?<|end|>
    <|assistant|>5<|end|>

and generation for the next reply starts after ``<|assistant|>``; ``<|end|>`` (or end-of-text)
ends it. The role markers are special tokens that only this module inserts: message text is
encoded as plain bytes, so a user cannot forge a role by typing ``<|system|>``.

Tokenizers without the markers (an imported GPT-2 one, say) fall back to a plain-text template
with the same shape (``User: ...``); its stop string is the next turn's header.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpt.tokenizer import CHAT_TOKENS, EOT

if TYPE_CHECKING:
    from tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")
SYSTEM, USER, ASSISTANT, END = CHAT_TOKENS
_MARKER = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
_TEXT_HEADER = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation encoded for generation of the assistant's next reply."""

    ids: list[int]  # prompt token ids, ending with the assistant header
    text: str  # the same prompt as text (for storage and display)
    stop_ids: tuple[int, ...]  # tokens that end the reply
    stop: tuple[str, ...]  # strings that end the reply (plain-text fallback only)


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    return all(tokenizer.token_to_id(t) is not None for t in CHAT_TOKENS)


def check_messages(messages: Sequence[Mapping[str, str]]) -> list[str]:
    """Problems of a message list (empty when it is valid), each naming the message index."""
    problems = []
    if not messages:
        problems.append("messages: must hold at least one message")
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            problems.append(f"messages[{i}].role: must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            problems.append(f"messages[{i}].content: must be a string")
    return problems


def encode_chat(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> ChatPrompt:
    """Encode ``messages`` with the chat template.

    Args:
        tokenizer: the model's tokenizer.
        messages: ``{"role": "system"|"user"|"assistant", "content": str}`` in order.
        add_generation_prompt: end with the assistant header, ready for the reply.

    Raises:
        ValueError: listing every malformed message.
    """
    problems = check_messages(messages)
    if problems:
        raise ValueError("; ".join(problems))
    eot = tokenizer.token_to_id(EOT)
    if has_chat_tokens(tokenizer):
        end = tokenizer.token_to_id(END)
        ids: list[int] = []
        parts: list[str] = []
        for m in messages:
            ids.append(tokenizer.token_to_id(_MARKER[m["role"]]))
            ids.extend(tokenizer.encode(m["content"]).ids)
            ids.append(end)
            parts.append(f"{_MARKER[m['role']]}{m['content']}{END}\n")
            ids.extend(tokenizer.encode("\n").ids)
        if add_generation_prompt:
            ids.append(tokenizer.token_to_id(ASSISTANT))
            parts.append(ASSISTANT)
        stop_ids = tuple(i for i in (end, eot) if i is not None)
        return ChatPrompt(ids=ids, text="".join(parts), stop_ids=stop_ids, stop=())
    text = "".join(f"{_TEXT_HEADER[m['role']]}{m['content']}\n\n" for m in messages)
    if add_generation_prompt:
        text += _TEXT_HEADER["assistant"].rstrip()
    return ChatPrompt(
        ids=tokenizer.encode(text).ids,
        text=text,
        stop_ids=(eot,) if eot is not None else (),
        stop=("\n\nUser:", "\n\nSystem:"),
    )


def encode_turn(
    tokenizer: Tokenizer, prompt: Sequence[Mapping[str, str]], reply: str
) -> tuple[list[int], int]:
    """Ids of a whole exchange (prompt + ``reply`` + end marker) and where the reply starts.

    SFT and the preference losses train on ``ids[start:]`` only; serving generates exactly what
    ``ids[start:]`` holds, so training and serving see the same tokens.
    """
    chat = encode_chat(tokenizer, prompt)
    reply_ids = tokenizer.encode(reply).ids
    end = chat.stop_ids[0] if chat.stop_ids else None
    tail = [end] if end is not None else []
    return chat.ids + reply_ids + tail, len(chat.ids)
