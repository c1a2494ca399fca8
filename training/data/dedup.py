"""Deduplication: exact (hash of the cleaned text) and near (MinHash signatures + LSH banding).

Signatures are computed in parallel inside Ray Data tasks (:func:`minhash_signature`); the
decisions are taken in the driver by :class:`Deduper` over the ordered stream, keeping the first
document in source order. The driver keeps, per *kept* document, a 16-byte text hash, one 8-byte
key per LSH band and one signature (``num_perm`` uint32s): memory grows by that fixed amount per
document (about 1.7 KB at 128 permutations), never with document length.

References: Broder 1997 (MinHash), Leskovec et al., *Mining of Massive Datasets* ch. 3 (banding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
_MERSENNE_61 = np.uint64((1 << 61) - 1)
_SHINGLE_CHUNK = 4096


class _WordHashes(dict):
    def __missing__(self, word: str) -> int:
        h = self[word] = xxhash.xxh3_64_intdigest(word.encode("utf-8", "surrogatepass"))
        return h


_WORD_HASHES = _WordHashes()
_WORD_CACHE_MAX = 1 << 20


def text_hash(text: str) -> bytes:
    """128-bit hash of a cleaned text, the key of exact dedup."""
    return xxhash.xxh3_128_digest(text.encode("utf-8", "surrogatepass"))


@lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, int(_MERSENNE_61), size=num_perm, dtype=np.uint64)
    b = rng.integers(0, int(_MERSENNE_61), size=num_perm, dtype=np.uint64)
    return a, b


def lower_words(text: str) -> list[str]:
    """The words of ``text``, lower-cased: what shingles are made of (shared with the toxicity filter)."""
    return _WORD.findall(text.lower())


def shingle_hashes(text: str, shingle_words: int, words: list[str] | None = None) -> np.ndarray:
    """Unique 64-bit hashes of the word ``shingle_words``-grams of ``text`` (lower-cased).

    ``words`` is ``lower_words(text)`` when the caller has it already.
    """
    if words is None:
        words = lower_words(text)
    if not words:
        return np.zeros(0, dtype=np.uint64)
    # Word hashes come from a per-process cache (words are Zipf-distributed, so almost every lookup
    # hits and runs as a C-level dict access through map()); shingles are then combined with
    # vectorised arithmetic instead of hashing each joined n-gram string.
    if len(_WORD_HASHES) > _WORD_CACHE_MAX:
        _WORD_HASHES.clear()
    wh = np.fromiter(map(_WORD_HASHES.__getitem__, words), dtype=np.uint64, count=len(words))
    k = min(shingle_words, len(words))
    n = len(words) - k + 1
    acc = wh[:n].copy()
    mult = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for i in range(1, k):
            acc = acc * mult + wh[i : i + n]
            acc ^= acc >> np.uint64(29)
    return np.unique(acc)


def minhash_signature(
    text: str, num_perm: int, shingle_words: int, words: list[str] | None = None
) -> np.ndarray:
    """MinHash signature (``num_perm`` uint32) of the word shingles of ``text``.

    Hand-written with numpy instead of ``datasketch.MinHash.update`` (a Python call per shingle):
    all shingles x permutations are hashed in one broadcast, in chunks of 4,096 shingles so the
    work array stays ~4 MB for any document length. The permutation is ``(a*x + b) mod 2**64``
    (multiply-shift family, wrapping uint64 arithmetic) and the top 32 bits are kept, which
    halves the per-document memory of the driver at no measurable cost in accuracy.
    ``words`` is ``lower_words(text)`` when the caller has it already.
    """
    a, b = _permutations(num_perm)
    sh = shingle_hashes(text, shingle_words, words)
    sig = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    # One work buffer reused in place: no temporary per operation and chunk.
    buf = np.empty((min(len(sh), _SHINGLE_CHUNK), num_perm), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(sh), _SHINGLE_CHUNK):
            x = sh[start : start + _SHINGLE_CHUNK, None]
            work = buf[: len(x)]
            np.multiply(x, a, out=work)
            np.add(work, b, out=work)
            np.minimum(sig, work.min(axis=0), out=sig)
    return (sig >> np.uint64(32)).astype(np.uint32)


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two documents: the share of equal signature slots."""
    return float(np.mean(sig_a == sig_b))


def true_jaccard(a: str, b: str, shingle_words: int) -> float:
    """Exact Jaccard similarity of the shingle sets of two texts (for reports and tests)."""
    sa, sb = shingle_hashes(a, shingle_words), shingle_hashes(b, shingle_words)
    if not len(sa) and not len(sb):
        return 1.0
    inter = len(np.intersect1d(sa, sb, assume_unique=True))
    return inter / (len(sa) + len(sb) - inter)


def lsh_params(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """Bands ``b`` and rows ``r`` (``b*r <= num_perm``) minimising weighted false positive/negative area.

    The same criterion as datasketch's ``MinHashLSH`` (integrals of the S-curve
    ``1 - (1 - s**r)**b`` below and above the threshold).
    """
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            lo = np.linspace(0.0, threshold, 200)
            hi = np.linspace(threshold, 1.0, 200)
            fp = np.trapezoid(1 - (1 - lo**r) ** b, lo)
            fn = np.trapezoid((1 - hi**r) ** b, hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


@dataclass
class DedupStats:
    exact: int = 0
    near: int = 0
    examples: list[dict] = field(default_factory=list)


class Deduper:
    """Sequential exact + near dedup decisions over documents in source order (first one wins).

    Args:
        exact: drop documents whose text hash was seen.
        near: drop documents whose MinHash estimate against an LSH candidate is >= ``threshold``.
        num_perm, threshold: MinHash size and the Jaccard threshold.
        max_examples: how many near-duplicate pairs to remember for the data card.
    """

    def __init__(self, *, exact: bool, near: bool, num_perm: int, threshold: float, max_examples: int = 20):
        self.exact, self.near, self.threshold = exact, near, threshold
        self.bands, self.rows = lsh_params(threshold, num_perm) if near else (0, 0)
        self._seen: set[bytes] = set()
        self._tables: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]
        self._sigs: list[np.ndarray] = []
        self._items: list[str] = []
        self.max_examples = max_examples
        self.stats = DedupStats()

    def check(self, item: str, thash: bytes, sig: np.ndarray | None) -> str | None:
        """Decide one document: ``exact_duplicate``, ``near_duplicate`` or None (kept, and indexed)."""
        if self.exact:
            if thash in self._seen:
                self.stats.exact += 1
                return "exact_duplicate"
            self._seen.add(thash)
        if not self.near or sig is None:
            return None
        keys = [
            xxhash.xxh3_64_intdigest(sig[i * self.rows : (i + 1) * self.rows].tobytes())
            for i in range(self.bands)
        ]
        cands: set[int] = set()
        for table, key in zip(self._tables, keys, strict=True):
            cands.update(table.get(key, ()))
        for c in sorted(cands):
            j = jaccard_estimate(sig, self._sigs[c])
            if j >= self.threshold:
                self.stats.near += 1
                if len(self.stats.examples) < self.max_examples:
                    self.stats.examples.append(
                        {"kept": self._items[c], "dropped": item, "jaccard": round(j, 3)}
                    )
                return "near_duplicate"
        idx = len(self._sigs)
        self._sigs.append(sig)
        self._items.append(item)
        for table, key in zip(self._tables, keys, strict=True):
            table.setdefault(key, []).append(idx)
        return None
