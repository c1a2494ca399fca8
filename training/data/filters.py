"""Quality and safety filters: length, symbol ratio, repeated lines, blocklist toxicity.

Each filter returns the reason a document is dropped (a key of the manifest's ``dropped``
counts) or ``None`` to keep it. The measures follow Gopher's quality rules (Rae et al. 2021,
https://arxiv.org/abs/2112.11446, appendix A) in simplified form.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from core.data_config import DataConfig

BUILTIN_BLOCKLIST = Path(__file__).with_name("blocklist.txt")
# Characters that are neither letters/digits/underscore nor whitespace.
_SYMBOLS = re.compile(r"[^\w\s]+")
_WORD = re.compile(r"\w+")
_ASCII_WORD = re.compile(r"[A-Za-z0-9_]+")
# The only non-ASCII characters that re.IGNORECASE matches to ASCII letters (i, s, k).
_ASCII_CASE_TWINS = "\u0130\u0131\u017f\u212a"
# The same class over ASCII, for bytes.translate (one C pass, no new str, ~20x the regex).
_ASCII_SYMBOLS = bytes(c for c in range(128) if _SYMBOLS.fullmatch(chr(c)))


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither alphanumeric nor whitespace."""
    if not text:
        return 0.0
    if text.isascii():
        b = text.encode("ascii")
        return (len(b) - len(b.translate(None, _ASCII_SYMBOLS))) / len(b)
    return (len(text) - len(_SYMBOLS.sub("", text))) / len(text)


def repeated_line_fraction(text: str) -> float:
    """Share of the characters of non-blank lines that sit in lines repeating an earlier line.

    Measured by characters, not by line count, so that short lines that legitimately repeat
    (speaker names in a play, "Chorus") weigh little while boilerplate blocks weigh a lot.
    """
    # Every repeat of a line adds its length to the duplicate count, so the duplicated characters
    # are all characters minus those of the distinct lines (blank lines weigh 0): C-level passes only.
    lines = list(map(str.strip, text.split("\n")))
    total = sum(map(len, lines))
    if not total:
        return 0.0
    return (total - sum(map(len, set(lines)))) / total


def _blocklist_terms(path: str | None) -> list[str]:
    p = Path(path) if path else BUILTIN_BLOCKLIST
    terms = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            terms.append(line)
    return terms


@lru_cache(maxsize=8)
def load_blocklist(path: str | None = None) -> re.Pattern[str] | None:
    """Compile a blocklist (one term or phrase a line, ``#`` comments) into one whole-word regex."""
    terms = [r"\s+".join(re.escape(w) for w in t.split()) for t in _blocklist_terms(path)]
    if not terms:
        return None
    # Longest first so a phrase wins over a word it contains.
    terms.sort(key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(terms) + r")\b", re.IGNORECASE)


@lru_cache(maxsize=8)
def blocklist_gate(path: str | None = None) -> tuple[str, ...] | None:
    """Per blocklist term, ``" w1 w2 "`` (its lower-cased words); None when they cannot serve as a gate.

    In ASCII text a whole-word, case-insensitive match of a term means its words are consecutive
    whole ``\\w+`` words of the lower-cased text, hence a substring of ``" " + " ".join(words) + " "``.
    A document containing no term that way has no hit and skips the alternation regex (~15 MB/s)
    after a dozen substring searches. A word that is not plain ASCII ``\\w+`` disables the gate.
    """
    terms = [t.lower().split() for t in _blocklist_terms(path)]
    if not all(_ASCII_WORD.fullmatch(w) for t in terms for w in t):
        return None
    return tuple(" " + " ".join(t) + " " for t in terms)


@lru_cache(maxsize=256)
def _subset_pattern(path: str | None, keep: tuple[int, ...]) -> re.Pattern[str]:
    # The blocklist regex restricted to the terms ``keep`` (indices into the file's terms). An
    # alternative that cannot match anywhere never changes what the longest-first alternation
    # finds, so the hits equal those of the full regex.
    terms = _blocklist_terms(path)
    alts = [r"\s+".join(re.escape(w) for w in terms[i].split()) for i in keep]
    alts.sort(key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(alts) + r")\b", re.IGNORECASE)


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


def toxicity_reason(text: str, cfg: DataConfig, words: list[str] | None = None) -> str | None:
    """``toxicity`` when blocklist hits per 1,000 words exceed the configured rate.

    Args:
        text: the cleaned document.
        cfg: the data config.
        words: ``re.findall(r"\\w+", text.lower())`` when the caller has it (MinHash shares it).
    """
    if not cfg.toxicity_filter:
        return None
    gate = blocklist_gate(cfg.toxicity_blocklist)
    gate_words = None
    if gate is None:
        pass
    elif text.isascii():
        gate_words = words if words is not None else _WORD.findall(text.lower())
    elif not any(c in text for c in _ASCII_CASE_TWINS):
        # Other non-ASCII characters never match a term's letters, and as "?" they still end a word.
        gate_words = _WORD.findall(text.encode("ascii", "replace").decode("ascii").lower())
    if gate_words is not None:
        assert gate is not None
        joined = " " + " ".join(gate_words) + " "
        keep = tuple(i for i, t in enumerate(gate) if t in joined)
        if not keep:
            return None
        hits = len(_subset_pattern(cfg.toxicity_blocklist, keep).findall(text))
        n_words = len(text.split()) if hits else 0
    else:
        hits, n_words = toxicity_hits(text, load_blocklist(cfg.toxicity_blocklist))
    if hits and hits * 1000 / max(n_words, 1) > cfg.toxicity_max_hits_per_1k_words:
        return "toxicity"
    return None
