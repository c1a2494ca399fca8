"""Prompt + reply encoding and right-padded batches with response masks, shared by every algorithm.

A prompt is either chat messages (rendered with the chat template of :mod:`gpt.chat`, the
one serving uses) or plain text (a ``/v1/completions`` prompt: continued as is, the reply ended
by end-of-text). Batches are right-padded: with causal attention a padded tail never changes the
logits of the real tokens before it, so no attention mask is needed.

Positions: for ids ``(B, T)`` the per-token tensors are ``(B, T - 1)``, index ``t`` holding the
prediction of token ``t + 1`` from ``ids[:, : t + 1]``. ``mask[b, t]`` is true when token
``t + 1`` of row ``b`` is a reply token (the closing end marker included: the policy must learn
to stop).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from gpt.chat import encode_chat, encode_turn
from gpt.generate import encode_prompt as encode_text_prompt
from gpt.tokenizer import EOT

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

Prompt = Sequence[Mapping[str, str]] | str  # chat messages, or plain text


def pad_id(tokenizer: Tokenizer) -> int:
    """The id used for padding (end-of-text: it is never a reply token that padding could fake)."""
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"the tokenizer has no {EOT} token; RLHF needs it for padding and raw prompts")
    return eot


def encode_prompt(tokenizer: Tokenizer, prompt: Prompt) -> tuple[list[int], tuple[int, ...]]:
    """Ids to generate a reply from, and the token ids that end the reply."""
    if isinstance(prompt, str):
        return encode_text_prompt(tokenizer, prompt), (pad_id(tokenizer),)
    chat = encode_chat(tokenizer, prompt)
    return chat.ids, chat.stop_ids


def encode_reply(tokenizer: Tokenizer, prompt: Prompt, reply: str) -> tuple[list[int], int]:
    """Ids of prompt + reply + end marker, and the index where the reply starts."""
    if isinstance(prompt, str):
        ids = encode_text_prompt(tokenizer, prompt)
        return ids + tokenizer.encode(reply).ids + [pad_id(tokenizer)], len(ids)
    return encode_turn(tokenizer, prompt, reply)


@dataclass
class SequenceBatch:
    """Right-padded sequences with their reply mask (see the module docstring for positions)."""

    ids: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T-1) bool: position t predicts a reply token
    last: torch.Tensor  # (B,) index in ids of each row's last real token

    def __len__(self) -> int:
        return int(self.ids.size(0))


def collate(
    seqs: Sequence[Sequence[int]], starts: Sequence[int], pad: int, device: str | torch.device = "cpu"
) -> SequenceBatch:
    """Pad ``seqs`` on the right; ``starts[i]`` is where row i's reply begins.

    Raises:
        ValueError: a row with no reply token (``start`` at or past its end, or at 0).
    """
    bad = [i for i, (s, st) in enumerate(zip(seqs, starts, strict=True)) if not 0 < st < len(s)]
    if bad:
        raise ValueError(
            f"rows {bad[:5]} have no reply tokens after their prompt (start must be in 1..len-1)"
        )
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T - 1), dtype=torch.bool)
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, st - 1 : len(s) - 1] = True
    last = torch.as_tensor([len(s) - 1 for s in seqs], dtype=torch.long)
    return SequenceBatch(ids=ids.to(device), mask=mask.to(device), last=last.to(device))
