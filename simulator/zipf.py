"""Zipf-distributed key popularity: a fast exact sampler and the exact probabilities.

Keys are popularity ranks 0..N-1 (0 is the most popular), drawn with P(rank r) ∝ (r+1)^-alpha.
The sampler is Hörmann & Derflinger's rejection-inversion method, compiled (`_zipf.pyx`): O(1)
memory for any vocabulary size and any alpha > 0, exact, 20-45 ns per key here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from simulator._zipf import ZipfCore

__all__ = ["ZipfSampler", "zipf_probabilities"]


def zipf_probabilities(n: int, alpha: float) -> NDArray[np.float64]:
    """P(rank r) for r in 0..n-1 — for tests and analytic checks (allocates n floats)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return weights / weights.sum()


class ZipfSampler:
    """Draws popularity ranks in [0, n) with P(r) ∝ (r+1)^-alpha; seeded from a numpy Generator.

    >>> s = ZipfSampler(1_000_000, 1.0, np.random.default_rng(0))
    >>> keys = s.sample(5)
    >>> keys.dtype, bool((keys >= 0).all() and (keys < 1_000_000).all())
    (dtype('int64'), True)
    """

    def __init__(self, n: int, alpha: float, rng: np.random.Generator) -> None:
        if n < 1:
            raise ValueError(f"vocabulary size must be >= 1 (got {n})")
        if alpha <= 0:
            raise ValueError(f"zipf alpha must be > 0 (got {alpha})")
        self.n = n
        self.alpha = alpha
        seed_words = rng.integers(0, 2**64, size=4, dtype=np.uint64).tolist()
        self._core = ZipfCore(n, alpha, seed_words)

    def sample(self, size: int) -> NDArray[np.int64]:
        """`size` ranks, int64, in [0, n)."""
        out = np.empty(size, dtype=np.int64)
        self._core.fill(out)
        return out

    def fill(self, out: NDArray[np.int64]) -> None:
        """Fill a contiguous int64 array in place (no allocation)."""
        self._core.fill(out)
