"""Intervals that gate decisions rest on, so that sampling noise cannot flip a promotion.

A rate (k of n replies correct, refused, flagged) gets a Wilson score interval, which stays inside
[0, 1] and behaves at 0 and n, where the normal approximation does not. A mean of per-item scores,
and the difference between two models scored on the same items, gets a percentile bootstrap over the
items; paired resampling keeps each item's two scores together, so what the items have in common
cancels. Resampling uses a fixed seed: the same scores always give the same interval.

``scipy.stats`` has the Wilson interval only inside ``binomtest`` and bootstraps one statistic at a
time with no paired form, so these few lines are written here (NumPy, vectorised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval over ``n`` items."""

    estimate: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_list(self) -> list[float]:
        return [self.lo, self.hi]


def wilson(k: float, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of a rate ``k / n``.

    Raises:
        ValueError: ``n`` is not positive or ``k`` is outside ``[0, n]``.
    """
    if n <= 0:
        raise ValueError(f"a rate needs at least one item, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is outside [0, n={n}]")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(p, max(0.0, centre - spread), min(1.0, centre + spread), n)


def _resample_means(values: np.ndarray, seed: int, samples: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_mean(values: Sequence[float], *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> Interval:
    """The mean of per-item scores with a 95% percentile-bootstrap interval over the items.

    Raises:
        ValueError: no values.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("a mean needs at least one item")
    means = _resample_means(x, seed, samples)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Interval(float(x.mean()), float(lo), float(hi), int(x.size))


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES
) -> Interval:
    """``mean(a) - mean(b)`` over the same items, with a 95% paired-bootstrap interval.

    Raises:
        ValueError: the two lists are empty or of different lengths (not the same items).
    """
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items: {len(a)} against {len(b)}")
    return bootstrap_mean(
        np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), seed=seed, samples=samples
    )


def rate_items_needed(p: float, half_width: float, z: float = Z95) -> int:
    """About how many items a rate near ``p`` needs for an interval of ``± half_width``."""
    p = min(max(p, 0.05), 0.95)  # near 0 or 1 the Wilson interval is narrower; stay conservative
    return math.ceil(z * z * p * (1 - p) / (half_width * half_width))


def mean_items_needed(values: Sequence[float], half_width: float, z: float = Z95) -> int:
    """About how many items a mean with the spread of ``values`` needs for ``± half_width``."""
    sd = float(np.std(np.asarray(values, dtype=np.float64), ddof=1)) if len(values) > 1 else 1.0
    return max(2, math.ceil((z * sd / half_width) ** 2))
