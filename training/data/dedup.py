"""Deduplication: exact (hash of the cleaned text) and near (MinHash signatures + LSH banding).

Signatures are computed in parallel inside Ray Data tasks (:func:`minhash_signature`); the
decisions are taken in the driver by :class:`Deduper` over the ordered stream, keeping the first
document in source order. The driver keeps, per *kept* document, a 16-byte text hash, one 8-byte
key per LSH band and one signature (``num_perm`` uint32s): memory grows by that fixed amount per
document (about 1.7 KB at 128 bins), never with document length.

A signature is a *one-permutation* MinHash: every shingle is hashed once, the hash picks one of
``num_perm`` bins and the bin keeps its smallest value; empty bins are filled by optimal
densification. Two signatures agree in a slot with probability equal to the Jaccard similarity of
the shingle sets, as with ``num_perm`` independent permutations, for a single hash per shingle
instead of ``num_perm``.

References: Broder 1997 (MinHash); Li, Owen & Zhang, *One Permutation Hashing*, NeurIPS 2012;
Shrivastava, *Optimal Densification for Fast and Accurate Minwise Hashing*, ICML 2017;
Leskovec et al., *Mining of Massive Datasets* ch. 3 (banding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import xxhash

_WORD = re.compile(r"\w+")
_U64 = np.uint64


class _WordHashes(dict):
    def __missing__(self, word: str) -> int:
        h = self[word] = xxhash.xxh3_64_intdigest(word.encode("utf-8", "surrogatepass"))
        return h


_WORD_HASHES = _WordHashes()
_WORD_CACHE_MAX = 1 << 20
# The densification probes come from a fixed seed: every process (every Ray worker) computes
# the same signature for the same text.
_SEED = 1
_DENSIFY_PROBES = 4


def text_hash(text: str) -> bytes:
    """128-bit hash of a cleaned text, the key of exact dedup."""
    return xxhash.xxh3_128_digest(text.encode("utf-8", "surrogatepass"))


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (in place): every input bit affects every output bit."""
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB93FE53F4A63)
    h ^= h >> _U64(33)
    return h


def lower_words(text: str) -> list[str]:
    """The words of ``text``, lower-cased: what shingles are made of (shared with the toxicity filter)."""
    return _WORD.findall(text.lower())


def _shingles(words: list[str], shingle_words: int) -> np.ndarray:
    """64-bit hashes of the word ``shingle_words``-grams (with repeats; a minimum ignores them)."""
    if not words:
        return np.zeros(0, dtype=_U64)
    # Word hashes come from a per-process cache (words are Zipf-distributed, so almost every lookup
    # hits and runs as a C-level dict access through map()); shingles are then combined with
    # vectorised arithmetic instead of hashing each joined n-gram string. (Hashing the joined
    # UTF-8 bytes in numpy, tabulation-style, measured no faster than this warm cache.)
    if len(_WORD_HASHES) > _WORD_CACHE_MAX:
        _WORD_HASHES.clear()
    wh = np.fromiter(map(_WORD_HASHES.__getitem__, words), dtype=_U64, count=len(words))
    k = min(shingle_words, len(words))
    n = len(words) - k + 1
    acc = wh[:n].copy()
    mult = _U64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for i in range(1, k):
            acc *= mult
            acc += wh[i : i + n]
        return _fmix64(acc)


def shingle_hashes(text: str, shingle_words: int, words: list[str] | None = None) -> np.ndarray:
    """Unique 64-bit hashes of the word ``shingle_words``-grams of ``text`` (lower-cased).

    ``words`` is ``lower_words(text)`` when the caller has it already.
    """
    return np.unique(_shingles(lower_words(text) if words is None else words, shingle_words))


@lru_cache(maxsize=8)
def _probes(num_bins: int) -> np.ndarray:
    # Optimal densification (Shrivastava 2017): an empty bin i copies the value of the first
    # non-empty bin among a fixed pseudo-random sequence of bins probe(i, 1), probe(i, 2), ... The
    # sequence is the same for every document, so two documents copy from the same bin and the
    # slot still collides with probability = Jaccard. 4*num_bins probes reach a non-empty bin
    # unless fewer than ~1% are filled (documents of a few shingles); those fall back to the next
    # non-empty bin to the right (Shrivastava & Li, ICML 2014), which is also deterministic.
    rng = np.random.default_rng(_SEED + num_bins)
    return rng.integers(0, num_bins, size=(num_bins, _DENSIFY_PROBES * num_bins), dtype=np.int64)


def minhash_signature(
    text: str, num_perm: int, shingle_words: int, words: list[str] | None = None
) -> np.ndarray:
    """One-permutation MinHash signature (``num_perm`` uint32 bins) of the word shingles of ``text``.

    Each shingle hash (64 bits) is split: the high 32 bits pick the bin (``hi * num_perm >> 32``,
    Lemire's multiply-shift range reduction), the low 32 bits are the value, and a bin keeps
    its minimum. Sorting ``bin << 32 | value`` puts each bin's minimum first, found with one
    ``searchsorted``. Empty bins are densified (see :func:`_probes`). A text without words gets
    the all-ones signature.
    ``words`` is ``lower_words(text)`` when the caller has it already.
    """
    sh = _shingles(lower_words(text) if words is None else words, shingle_words)
    sig = np.full(num_perm, 0xFFFFFFFF, dtype=np.uint32)
    if not len(sh):
        return sig
    with np.errstate(over="ignore"):
        bins = ((sh >> _U64(32)) * _U64(num_perm)) >> _U64(32)
    keys = np.sort((bins << _U64(32)) | (sh & _U64(0xFFFFFFFF)))
    first = np.searchsorted(keys, np.arange(num_perm, dtype=_U64) << _U64(32))
    filled = first < len(keys)
    filled[filled] = (keys[first[filled]] >> _U64(32)) == np.flatnonzero(filled).astype(_U64)
    sig[filled] = keys[first[filled]].astype(np.uint32)
    if not filled.all():
        empty = np.flatnonzero(~filled)
        probes = _probes(num_perm)[empty]
        hit = filled[probes]
        found = hit.any(axis=1)
        src = probes[np.arange(len(empty)), hit.argmax(axis=1)]
        if not found.all():
            # Next non-empty bin to the right, circularly.
            full = np.flatnonzero(filled)
            nxt = np.searchsorted(full, empty[~found]) % len(full)
            src[~found] = full[nxt]
        sig[empty] = sig[src]
    return sig


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
