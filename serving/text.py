"""Text of a token stream: what may be emitted yet, and the raw bytes behind a token.

A streamed completion must not show text that is not final: bytes of a UTF-8 character that the
next token completes, or the start of what may become a stop string. Logprobs must name tokens
that are only part of a character by their bytes, as the OpenAI API does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def safe_prefix_end(text: str, stop: Sequence[str]) -> int:
    """How much of ``text`` can be emitted: hold back an incomplete character and any tail that
    could still grow into a stop string."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":  # a multi-byte character not yet complete
        end -= 1
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[end - k : end] == s[:k]:
                hold = max(hold, k)
                break
    return end - hold


def _byte_decoder() -> dict[str, int]:
    # The byte-level BPE alphabet (GPT-2): printable bytes stand for themselves, the others are
    # shifted to code points from 256 up. Inverted here to recover a token's raw bytes.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _byte_decoder()


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    """The raw bytes a byte-level BPE token stands for (a special token: its text)."""
    piece = tokenizer.id_to_token(token) or ""
    if all(c in _BYTES for c in piece):
        return bytes(_BYTES[c] for c in piece)
    return piece.encode()
