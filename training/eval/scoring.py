"""Teacher-forced scores: held-out perplexity and bits per byte, conditional log-likelihoods, KL.

Held-out text is read as *documents* (the split's token stream cut at end-of-text and decoded),
and each model re-encodes them with its own tokenizer. Perplexity is per token of the model's
own tokenizer; bits per byte divides the same total loss by the UTF-8 bytes of the text, so
two models with different tokenizers (a nightly run may train a new one) stay comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gpt.tokenizer import EOT

# torch is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from gpt.model import GPT
    from training.data.shards import TokenShards


@dataclass(frozen=True)
class HeldoutText:
    """Held-out documents, decoded once and shared by every model scored."""

    documents: list[str]
    source: str  # where they came from, for the report
    # log p(token) of a context-free (unigram) model fitted on the train split, over the shards'
    # vocabulary: the baseline a language model must beat. None when there is no train split.
    unigram_logprob: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents)


@dataclass
class HeldoutScore:
    """Loss of one model on :class:`HeldoutText`."""

    perplexity: float
    bits_per_byte: float
    nll_per_token: float  # nats
    tokens: int  # predicted tokens
    bytes: int
    window_nll: list[float] = field(default_factory=list)  # mean nats/token of each window, for plots


def heldout_documents(
    shards: TokenShards, tokenizer: Tokenizer, *, split: str = "val", max_tokens: int = 8192
) -> HeldoutText:
    """Whole documents from the start of ``split``, up to ``max_tokens`` tokens (at least one document).

    Raises:
        ValueError: ``tokenizer`` is not the one the shards were written with (its round trip of the
            first document differs), or the split holds no tokens.
    """
    stream = shards.split(split)
    if len(stream) == 0:
        raise ValueError(f"tokens artifact {shards.ref.path}: split '{split}' is empty; tokenize more text")
    head = np.asarray(stream.window(0, max_tokens + 1)).astype(np.int64)
    cuts = np.flatnonzero(head == shards.eot_id)
    docs_ids: list[list[int]] = []
    start = 0
    for c in cuts:
        if c > start:
            docs_ids.append(head[start:c].tolist())
        start = int(c) + 1
    complete = bool(docs_ids)
    if not complete:  # one document longer than max_tokens: take its beginning
        docs_ids = [head[:max_tokens].tolist()]
    # A document cut short may re-encode differently at the cut (its last word), never before it.
    ids = docs_ids[0]
    keep = len(ids) if complete else len(ids) // 2
    if tokenizer.encode(tokenizer.decode(ids, skip_special_tokens=False)).ids[:keep] != ids[:keep]:
        raise ValueError(
            f"tokens artifact {shards.ref.path} was not written with this tokenizer (its first document "
            "does not round-trip); pass the tokenizer of the tokenize stage that made it"
        )
    docs = [tokenizer.decode(d, skip_special_tokens=False) for d in docs_ids]
    return HeldoutText(
        documents=docs, source=f"{shards.ref.path.name}:{split}", unigram_logprob=_unigram(shards, split)
    )


def _unigram(shards: TokenShards, heldout_split: str, max_tokens: int = 2**24) -> np.ndarray | None:
    """Add-one smoothed unigram log-probabilities from (up to ``max_tokens`` of) the train split."""
    if "train" not in shards.meta["splits"] or heldout_split == "train":
        return None
    train = shards.split("train")
    if len(train) == 0:
        return None
    ids = np.asarray(train.window(0, max_tokens)).astype(np.int64)
    counts = np.bincount(ids, minlength=shards.vocab_size)[: shards.vocab_size] + 1
    return np.log(counts / counts.sum())


def _stream(tokenizer: Tokenizer, text: HeldoutText) -> list[int]:
    """The held-out documents as one token stream, each followed by end-of-text."""
    eot = _eot(tokenizer)
    stream: list[int] = []
    for doc in text.documents:
        stream.extend(tokenizer.encode(doc).ids)
        stream.append(eot)
    return stream


def unigram_perplexity(tokenizer: Tokenizer, text: HeldoutText) -> float | None:
    """Perplexity of the unigram baseline on the tokens :func:`score_heldout` predicts (None without one).

    Only meaningful for a tokenizer with the shards' vocabulary (the one that wrote them).
    """
    if text.unigram_logprob is None:
        return None
    predicted = np.asarray(_stream(tokenizer, text)[1:], dtype=np.int64)
    if predicted.size == 0 or predicted.max() >= len(text.unigram_logprob):
        return None
    return math.exp(-float(text.unigram_logprob[predicted].mean()))


def _eot(tokenizer: Tokenizer) -> int:
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise ValueError(f"the tokenizer has no {EOT} token; held-out documents are separated by it")
    return eot


def _device(model: GPT) -> torch.device:
    return model.transformer.wte.weight.device


def score_heldout(
    model: GPT, tokenizer: Tokenizer, text: HeldoutText, *, batch_size: int = 8
) -> HeldoutScore:
    """Held-out loss of ``model``: documents joined by end-of-text, cut in non-overlapping windows.

    Every token but the very first is predicted exactly once, with up to ``block_size`` tokens of
    context (the windows of pretraining's validation).
    """
    import torch

    eot = _eot(tokenizer)
    stream = _stream(tokenizer, text)
    T = model.cfg.block_size
    ids = torch.tensor(stream, dtype=torch.long)
    windows = [ids[i : i + T + 1] for i in range(0, max(len(stream) - 1, 1), T)]
    windows = [w for w in windows if len(w) > 1]
    total, count, per_window = 0.0, 0, []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(0, len(windows), batch_size):
                batch = windows[b : b + batch_size]
                L = max(len(w) for w in batch)
                x = torch.full((len(batch), L - 1), eot, dtype=torch.long)
                y = torch.full((len(batch), L - 1), -100, dtype=torch.long)
                for i, w in enumerate(batch):
                    x[i, : len(w) - 1], y[i, : len(w) - 1] = w[:-1], w[1:]
                logits, _ = model(x.to(_device(model)))
                nll = torch.nn.functional.cross_entropy(
                    logits.float().transpose(1, 2), y.to(logits.device), ignore_index=-100, reduction="none"
                )  # (B, T)
                mask = (y != -100).to(nll.device)
                for i in range(len(batch)):
                    n = int(mask[i].sum())
                    s = float(nll[i][mask[i]].sum())
                    per_window.append(s / n)
                    total, count = total + s, count + n
    finally:
        model.train(was_training)
    n_bytes = text.bytes
    mean = total / max(count, 1)
    return HeldoutScore(
        perplexity=math.exp(min(mean, 700.0)),
        bits_per_byte=total / math.log(2) / max(n_bytes, 1),
        nll_per_token=mean,
        tokens=count,
        bytes=n_bytes,
        window_nll=per_window,
    )


def continuation_logprob(model: GPT, tokenizer: Tokenizer, prefix: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | prefix) in nats.

    Prefix and continuation are encoded separately, so two prefixes that differ in one word are
    scored on exactly the same continuation tokens.
    """
    import torch

    pre = tokenizer.encode(prefix).ids or [_eot(tokenizer)]
    cont = tokenizer.encode(continuation).ids
    if not cont:
        raise ValueError(f"continuation {continuation!r} encodes to no tokens")
    ids = (pre + cont)[-(model.cfg.block_size + 1) :]
    n = min(len(cont), len(ids) - 1)
    x = torch.tensor([ids[:-1]], dtype=torch.long, device=_device(model))
    with torch.no_grad():
        logits, _ = model(x)
    logp = torch.log_softmax(logits[0, -n:].float(), dim=-1)  # (n, vocab)
    target = torch.tensor(ids[-n:], dtype=torch.long, device=logp.device)
    return float(logp.gather(1, target[:, None]).sum())


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers map every token to the same id (token-level scores are comparable)."""
    return a.get_vocab(with_added_tokens=True) == b.get_vocab(with_added_tokens=True)


def kl_per_token(
    model: GPT,
    reference: GPT,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    vocab: int,
) -> float:
    """Mean KL(model || reference) in nats over the generated positions of ``sequences``.

    Each sequence is ``(prompt ids, generated ids)`` sampled from ``model``; at every position that
    predicted a generated token, the exact KL between the two next-token distributions (over the
    first ``vocab`` ids, the tokenizer's) is taken, as in the per-token KL penalty of RLHF.
    """
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for prompt, gen in sequences:
            if not gen:
                continue
            ids = (list(prompt) + list(gen))[-(min(model.cfg.block_size, reference.cfg.block_size) + 1) :]
            n = min(len(gen), len(ids) - 1)
            x = torch.tensor([ids[:-1]], dtype=torch.long)
            lp = torch.log_softmax(model(x.to(_device(model)))[0][0, -n:, :vocab].float().cpu(), dim=-1)
            lq = torch.log_softmax(
                reference(x.to(_device(reference)))[0][0, -n:, :vocab].float().cpu(), dim=-1
            )
            total += float((lp.exp() * (lp - lq)).sum())
            count += n
    return total / count if count else float("nan")
