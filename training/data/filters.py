"""Quality and safety filters: length, symbol ratio, repeated lines, blocklist toxicity.

Each filter returns the reason a document is dropped (a key of the manifest's ``dropped``
counts) or ``None`` to keep it. The measures follow Gopher's quality rules (Rae et al. 2021,
https://arxiv.org/abs/2112.11446, appendix A) in simplified form.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from training.data.config import DataConfig

BUILTIN_BLOCKLIST = Path(__file__).with_name("blocklist.txt")
# Characters that are neither letters/digits/underscore nor whitespace.
_SYMBOLS = re.compile(r"[^\w\s]+")


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither alphanumeric nor whitespace."""
    if not text:
        return 0.0
    return (len(text) - len(_SYMBOLS.sub("", text))) / len(text)


def repeated_line_fraction(text: str) -> float:
    """Share of the characters of non-blank lines that sit in lines repeating an earlier line.

    Measured by characters, not by line count, so that short lines that legitimately repeat
    (speaker names in a play, "Chorus") weigh little while boilerplate blocks weigh a lot.
    """
    seen: set[str] = set()
    total = dup = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            dup += len(line)
        else:
            seen.add(line)
    return dup / total if total else 0.0


@lru_cache(maxsize=8)
def load_blocklist(path: str | None = None) -> re.Pattern[str] | None:
    """Compile a blocklist (one term or phrase a line, ``#`` comments) into one whole-word regex."""
    p = Path(path) if path else BUILTIN_BLOCKLIST
    terms = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            terms.append(r"\s+".join(re.escape(w) for w in line.split()))
    if not terms:
        return None
    # Longest first so a phrase wins over a word it contains.
    terms.sort(key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(terms) + r")\b", re.IGNORECASE)


def toxicity_hits(text: str, pattern: re.Pattern[str] | None) -> tuple[int, int]:
    """``(blocklist hits, words)`` of a document."""
    if pattern is None:
        return 0, 0
    return len(pattern.findall(text)), len(text.split())


def quality_reason(text: str, cfg: DataConfig) -> str | None:
    """The first quality filter that drops ``text`` (``too_short``, ``symbol_ratio``, ``repeated_lines``)."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if symbol_ratio(text) > cfg.max_symbol_ratio:
        return "symbol_ratio"
    if repeated_line_fraction(text) > cfg.max_repeated_line_fraction:
        return "repeated_lines"
    return None


def toxicity_reason(text: str, cfg: DataConfig) -> str | None:
    """``toxicity`` when blocklist hits per 1,000 words exceed the configured rate."""
    if not cfg.toxicity_filter:
        return None
    hits, words = toxicity_hits(text, load_blocklist(cfg.toxicity_blocklist))
    if hits and hits * 1000 / max(words, 1) > cfg.toxicity_max_hits_per_1k_words:
        return "toxicity"
    return None
