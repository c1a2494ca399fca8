"""Quality and safety filters: length, symbol ratio, repeated lines, Gopher's rules, blocklist toxicity.

Each filter returns the reason a document is dropped (a key of the manifest's ``dropped``
counts) or ``None`` to keep it. The measures follow Gopher's quality rules (Rae et al. 2021,
https://arxiv.org/abs/2112.11446, appendix A): symbol ratio and repeated lines in simplified form,
the rest (``data.quality_rules``) as the paper defines them, with its thresholds as defaults.
"""

from __future__ import annotations

import re
from functools import lru_cache
from itertools import repeat
from pathlib import Path

import numpy as np

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
    lines = list(map(str.strip, text.split("\n")))
    return _repeated_chars(lines, set(lines))


def _repeated_chars(lines: list[str], distinct: set[str]) -> float:
    # Every repeat of a line adds its length to the duplicate count, so the duplicated characters
    # are all characters minus those of the distinct lines (blank lines weigh 0): C-level passes only.
    total = sum(map(len, lines))
    if not total:
        return 0.0
    return (total - sum(map(len, distinct))) / total


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


# --- Gopher's quality rules ---------------------------------------------------------------------
# Why not datatrove's GopherQualityFilter / GopherRepetitionFilter: they work on datatrove's own
# ``Document`` objects inside its pipeline executor, not on a string in a Ray Data worker, and for
# English they split words with spaCy (its tokenizer_assignment.csv maps ``en`` to SpaCyTokenizer),
# a heavy dependency for every worker, whereas the paper's rules are defined on whitespace-separated
# words. Here each rule is a few C-level passes (str methods, bytes.translate, one regex scan that
# stops early) or numpy over word ids, sharing one ``text.split()`` and one line split.

_BULLETS = tuple("\u2022\u2023\u25cf-*\u00b7\u25cb\u25e6\u25aa")  # • ‣ ● - * · ○ ◦ ▪
_ELLIPSES = ("...", "\u2026")  # ... …
_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
# A whitespace-separated word that is a stop word once punctuation (here: any character that is
# neither \w nor space) is stripped from its ends; its case is checked with str.lower() afterwards.
_STOP_WORD = re.compile(r"(?<!\S)[^\w\s]*(the|be|to|of|and|that|have|with)[^\w\s]*(?!\S)", re.IGNORECASE)
# ASCII bytes for the alphabetic-word count: letters become "a", the whitespace str.split() splits
# on becomes " ", everything else is deleted; a word with a letter then starts a run of "a"s.
_ALPHA_MAP = bytes(ord("a") if chr(c).isalpha() else ord(" ") if chr(c).isspace() else c for c in range(128))
_ALPHA_MAP += bytes(range(128, 256))
_ALPHA_DELETE = bytes(c for c in range(128) if not chr(c).isalpha() and not chr(c).isspace())
_ASCII_BYTES = bytes(range(128))
# The same for text of many distinct non-ASCII characters: what is neither a letter nor whitespace
# (symbols, digits, underscore; numerals that are not decimal digits, such as "½", stay as letters).
_NON_ALPHA = re.compile(r"[^\w\s]+|[\d_]+")
# Multiplier of the rolling n-gram hash over word ids (odd, so wrap-around mod 2**64 loses nothing).
_NGRAM_P = np.uint64(0x9E3779B97F4A7C15)


def alpha_word_count(text: str) -> int:
    """How many whitespace-separated words of ``text`` contain at least one letter."""
    b = text.encode("utf-8", "surrogatepass")
    if not text.isascii():
        # Few distinct non-ASCII characters (accents, curly quotes, dashes): each becomes its ASCII
        # stand-in (letter, space or nothing) in one bytes.replace. Many (say Greek or Chinese text):
        # one regex pass, several times slower.
        others = set(b.translate(None, _ASCII_BYTES).decode("utf-8", "surrogatepass"))
        if len(others) > 32:
            return len(_NON_ALPHA.sub("", text).split())
        for c in others:
            stand_in = b"a" if c.isalpha() else b" " if c.isspace() else b""
            b = b.replace(c.encode("utf-8", "surrogatepass"), stand_in)
    t = np.frombuffer(b.translate(_ALPHA_MAP, _ALPHA_DELETE), np.uint8)
    if not len(t):
        return 0
    # Only "a" (97) and " " (32) are left: a word with a letter starts where the byte goes up.
    return int(np.count_nonzero(t[1:] > t[:-1])) + int(t[0] == 97)


def stop_word_count(text: str, at_least: int) -> int:
    """Distinct stop words of Gopher's list in ``text``, counted up to ``at_least`` (the scan stops there)."""
    seen: set[str] = set()
    if at_least <= 0:
        return 0
    for m in _STOP_WORD.finditer(text):
        w = m.group(1).lower()
        if w in _STOP_WORDS:  # IGNORECASE also matches e.g. a dotless "ı" for "i"; lower() does not
            seen.add(w)
            if len(seen) >= at_least:
                break
    return len(seen)


def word_ids(words: list[str]) -> np.ndarray:
    """Python's ``hash`` of each word as uint64: salted per process, so only compared within a document."""
    return np.fromiter(map(hash, words), np.int64, len(words)).view(np.uint64)


def word_lengths(words: list[str]) -> np.ndarray:
    """The length of each word (int64)."""
    return np.fromiter(map(len, words), np.int64, len(words))


def ngram_reason(ids: np.ndarray, lens: np.ndarray, cfg: DataConfig) -> str | None:
    """``top_ngram`` or ``duplicate_ngrams`` (Gopher's repetition rules over word n-grams), or None.

    * ``top_ngram`` (n = 2, 3, 4): occurrences x characters of the most frequent n-gram (ties: the
      longest) over all word characters. An n-gram occurring once is no repetition and is not counted.
    * ``duplicate_ngrams`` (n = 5..10): the word characters covered by occurrences that repeat an
      earlier one, each word counted once (overlapping occurrences do not add up).

    Each n-gram is a rolling hash (uint64, wrapping) of the word ids. One ``np.sort`` per n groups
    equal n-grams: the hash's low b bits are replaced by the index of the candidate (k of them, k <
    2^b), so a group lists its positions in ascending order, the first occurrence first. (argsort
    does the same ~6x slower on millions of words. The shortened hash merges about k^2 / 2^(65 - b)
    pairs of distinct n-grams: none in a play, ~50 of 11 million windows in a 64 MB document.)
    A repeated (n+1)-gram starts with a repeated n-gram, so after n = 2 only the positions whose
    n-gram occurs more than once go on: a few percent of the words by n = 4 in real text, so n = 2
    is most of the cost. Large documents are not capped: all the rules take ~7 s and ~1.4 GB peak on
    57 MB of text (~8 MB/s; plays: ~15 MB/s).

    Args:
        ids: :func:`word_ids` of ``text.split()``.
        lens: :func:`word_lengths` of the same words.
        cfg: the data config (``max_top_ngram_ratios``, ``max_duplicate_ngram_ratios``).
    """
    n_words = len(ids)
    cum = np.zeros(n_words + 1, np.int64)  # characters of the words before each position
    np.cumsum(lens, out=cum[1:])
    total = int(cum[-1])
    limits = [*cfg.max_top_ngram_ratios, *cfg.max_duplicate_ngram_ratios]  # n = 2..10
    pos = np.arange(max(n_words - 1, 0))  # ascending starts whose n-gram may repeat
    keys = ids[:-1] * _NGRAM_P + ids[1:]  # the hash of the n-gram at each of pos
    for n, limit in enumerate(limits, start=2):
        if n > 2:
            cut = int(np.searchsorted(pos, n_words - n + 1))  # an n-gram must fit before the end
            pos, keys = pos[:cut], keys[:cut]
            keys = keys * _NGRAM_P + ids[pos + (n - 1)]
        k = len(pos)
        if k < 2:
            return None  # no n-gram repeats, so no longer one does
        bits = np.uint64(k.bit_length())
        packed = np.sort(keys >> bits << bits | np.arange(k, dtype=np.uint64))
        index = (packed & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.intp)  # into pos
        packed >>= bits  # the n-gram's group
        first = np.empty(k, bool)
        first[0] = True
        np.not_equal(packed[1:], packed[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        counts = np.empty(len(starts), np.intp)
        counts[:-1] = starts[1:] - starts[:-1]
        counts[-1] = k - starts[-1]
        if n <= 4:
            top = counts.max()
            if top >= 2:
                at = pos[index[starts[counts == top]]]
                if top * int((cum[at + n] - cum[at]).max()) > limit * total:
                    return "top_ngram"
        else:
            dup = pos[np.sort(index[~first])]  # the occurrences repeating an earlier one, ascending
            if len(dup):
                # Union of the windows [d, d + n): as they all have length n, each one adds the words
                # past the end of the one before it.
                begin = dup.copy()
                np.maximum(dup[1:], dup[:-1] + n, out=begin[1:])
                end = dup + n
                if int((cum[end] - cum[np.minimum(begin, end)]).sum()) > limit * total:
                    return "duplicate_ngrams"
        member = np.zeros(k, bool)
        member[index[np.repeat(counts >= 2, counts)]] = True
        pos, keys = pos[member], keys[member]
    return None


def quality_reason(text: str, cfg: DataConfig) -> str | None:
    """The first quality rule that drops ``text``, cheapest rules first; None to keep it.

    ``too_short``, ``symbol_ratio``, ``repeated_lines``, then with ``data.quality_rules`` Gopher's
    rules: ``duplicate_lines``, ``bullet_lines``, ``ellipsis_lines``, ``duplicate_paragraphs``,
    ``mean_word_length`` (also for a document without words), ``symbol_word_ratio``, ``stop_words``,
    ``alpha_words``, ``top_ngram``, ``duplicate_ngrams`` (the ``DataConfig`` fields define each).
    """
    if len(text) < cfg.min_chars:
        return "too_short"
    if symbol_ratio(text) > cfg.max_symbol_ratio:
        return "symbol_ratio"
    # One line split (stripped lines, blank ones "") and its set serve all the line rules.
    lines = list(map(str.strip, text.split("\n")))
    distinct = set(lines)
    if _repeated_chars(lines, distinct) > cfg.max_repeated_line_fraction:
        return "repeated_lines"
    if not cfg.quality_rules:
        return None

    ascii_only = text.isascii()  # O(1); ASCII text cannot hold the non-ASCII bullets and "…"
    n_lines = len(lines) - lines.count("")  # non-blank
    if n_lines:
        if (n_lines - len(distinct) + ("" in distinct)) / n_lines > cfg.max_duplicate_line_ratio:
            return "duplicate_lines"
        # A line rule can only fire when the text holds enough of its characters (a few C-level
        # counts); only then are the lines tested one by one.
        bullets = text.count("-") + text.count("*") if ascii_only else sum(map(text.count, _BULLETS))
        if bullets > cfg.max_bullet_line_ratio * n_lines and (
            sum(map(str.startswith, lines, repeat(_BULLETS))) / n_lines > cfg.max_bullet_line_ratio
        ):
            return "bullet_lines"
    ellipses = text.count("...") + (0 if ascii_only else text.count("\u2026"))
    if (
        n_lines
        and ellipses > cfg.max_ellipsis_line_ratio * n_lines
        and (sum(map(str.endswith, lines, repeat(_ELLIPSES))) / n_lines > cfg.max_ellipsis_line_ratio)
    ):
        return "ellipsis_lines"
    paragraphs = list(filter(None, map(str.strip, "\n".join(lines).split("\n\n"))))
    if paragraphs:
        unique = set(paragraphs)
        if (len(paragraphs) - len(unique)) / len(paragraphs) > cfg.max_duplicate_paragraph_ratio:
            return "duplicate_paragraphs"
        chars = sum(map(len, paragraphs))
        if (chars - sum(map(len, unique))) / chars > cfg.max_duplicate_paragraph_char_ratio:
            return "duplicate_paragraphs"

    words = text.split()
    n_words = len(words)
    lens = word_lengths(words)
    if not n_words or not cfg.min_mean_word_length <= lens.sum() / n_words <= cfg.max_mean_word_length:
        return "mean_word_length"  # a document without words has no mean word length either
    if (text.count("#") + ellipses) / n_words > cfg.max_symbol_word_ratio:
        return "symbol_word_ratio"
    if stop_word_count(text, cfg.min_stop_words) < cfg.min_stop_words:
        return "stop_words"
    if alpha_word_count(text) / n_words < cfg.min_alpha_word_ratio:
        return "alpha_words"
    ids = word_ids(words)
    del words  # on a 64 MB document the word list takes ~0.7 GB: gone before the n-gram sorts
    return ngram_reason(ids, lens, cfg)


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
