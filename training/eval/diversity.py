"""Degeneration measures of sampled text: distinct-n and the repeated-n-gram rate.

Both count *words* (``\\w+`` runs and single punctuation marks), not tokens, so models with
different tokenizers are measured alike. distinct-n (Li et al. 2016,
https://arxiv.org/abs/1510.03055) is unique n-grams over all n-grams of all samples of a model;
rep-n (Welleck et al. 2019, https://arxiv.org/abs/1908.04319) is, per sample, the share of its
n-grams that repeat an earlier n-gram of the same sample, averaged over samples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORDS = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text``."""
    return _WORDS.findall(text.lower())


def _ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Unique n-grams / n-grams over all ``texts``; None when they hold no n-gram at all."""
    grams = [g for t in texts for g in _ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(texts: Sequence[str], n: int = 4) -> float | None:
    """Mean over texts of 1 - unique/total n-grams; texts shorter than n are skipped (None if all are)."""
    rates = []
    for t in texts:
        grams = _ngrams(words(t), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else None


def mean_words(texts: Sequence[str]) -> float:
    """Mean length of ``texts`` in words."""
    return sum(len(words(t)) for t in texts) / len(texts) if texts else 0.0
