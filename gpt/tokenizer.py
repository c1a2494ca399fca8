"""Byte-level BPE tokenizer (HF ``tokenizers``): train on an iterator of texts, load from an artifact.

Byte-level pre-tokenisation maps every byte to a symbol of a 256-symbol alphabet, so any text —
emoji, combining marks, control characters, NUL — encodes and decodes back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from catalog.artifacts import ArtifactRef, open_artifact

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOT = "<|endoftext|>"
# Role markers of the chat template (gpt/chat.py). They are special tokens, so ordinary text
# (a user's message included) can never produce them: only the template inserts them.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (EOT, *CHAT_TOKENS)
TOKENIZER_FILE = "tokenizer.json"


def _finish(tok: Tokenizer) -> Tokenizer:
    # Text that happens to contain "<|endoftext|>" is encoded as ordinary bytes, never as the
    # special token: only the pipeline inserts document boundaries.
    tok.encode_special_tokens = True
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer; ``<|endoftext|>`` is id 0, the chat role markers ids 1-4.

    Args:
        texts: training texts (consumed once, in order; training is deterministic for the same input).
        vocab_size: vocabulary size including the 256 byte symbols and the special token.
        min_frequency: minimum count of a pair to be merged.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _finish(tok)


def load_tokenizer(path_or_artifact: str | Path | ArtifactRef) -> Tokenizer:
    """Load a tokenizer from a ``tokenizer`` artifact (verified), a directory or a ``tokenizer.json`` file."""
    if isinstance(path_or_artifact, ArtifactRef):
        path = path_or_artifact.path / TOKENIZER_FILE
    else:
        p = Path(path_or_artifact)
        if p.is_dir():
            if (p / "artifact.json").is_file():
                p = open_artifact(p, kind="tokenizer").path
            p = p / TOKENIZER_FILE
        path = p
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer here; run the tokenize stage or pass a tokenizer artifact"
        )
    return _finish(Tokenizer.from_file(str(path)))
