"""Negative samples drawn with probability proportional to ``support ** sample_alpha``.

As the official GRU4Rec, samples come from a pre-drawn store of ``sample_store_size`` items, cut
into blocks of ``n_sample`` per training step and redrawn when used up. Drawing is inverse-CDF:
uniform numbers in ``[0, total)`` located in the cumulative weights with a binary search.
The draws use Numba's generator (seed it with :func:`seed_numba`), so the redraw inside the
compiled training epoch continues the same random stream.
"""
from __future__ import annotations

import numpy as np
from numba import njit


def sampling_cdf(support: np.ndarray, alpha: float) -> np.ndarray:
    """(n_items,) float64 cumulative sum of ``support ** alpha`` (``support``: event counts)."""
    weights = np.power(np.asarray(support, dtype=np.float64), alpha)
    weights[np.asarray(support) <= 0] = 0.0
    cdf = np.cumsum(weights)
    if cdf.size == 0 or cdf[-1] <= 0:
        raise ValueError("cannot sample negatives: every item has zero support")
    return cdf


@njit(cache=True, error_model="numpy")
def seed_numba(seed):
    """Seed Numba's (per-thread) NumPy-compatible generator."""
    np.random.seed(seed)


@njit(cache=True, error_model="numpy")
def draw(cdf, out):
    """Fill ``out`` (int32) with item indices drawn from the cumulative weights ``cdf``.

    Item ``i`` is the first with ``cdf[i] > u`` for ``u`` uniform in ``[0, cdf[-1])`` (as
    ``np.searchsorted(cdf, u, side='right')``), found through a guide table of ``len(cdf)``
    buckets (Chen's method) instead of a full binary search per draw.
    """
    n = len(cdf)
    total = cdf[-1]
    guide = np.empty(n + 1, np.int64)
    i = 0
    for k in range(n + 1):
        threshold = total * k / n
        while i < n - 1 and cdf[i] <= threshold:
            i += 1
        guide[k] = i
    for k in range(len(out)):
        u = np.random.random() * total
        i = guide[min(int(u / total * n), n)]
        while i > 0 and cdf[i - 1] > u:
            i -= 1
        while i < n - 1 and cdf[i] <= u:
            i += 1
        out[k] = i


def store_capacity(n_sample: int, store_size: int) -> int:
    """Items held by the store: whole blocks of ``n_sample``, at least one block."""
    if n_sample <= 0:
        return 0
    return max(1, store_size // n_sample) * n_sample


class SampleStore:
    """Pre-drawn negatives (int32) consumed ``n_sample`` at a time.

    ``samples``: (capacity,) int32; ``pos``: next unused position (== capacity: redraw first).
    """

    def __init__(self, support: np.ndarray, alpha: float, n_sample: int, store_size: int):
        self.n_sample = int(n_sample)
        self.cdf = sampling_cdf(support, alpha) if n_sample > 0 else np.ones(1, np.float64)
        self.samples = np.empty(store_capacity(n_sample, store_size), dtype=np.int32)
        self.pos = len(self.samples)

    def fill(self):
        """(Re)draw the whole store (seed Numba's generator first for reproducibility)."""
        if len(self.samples):
            draw(self.cdf, self.samples)
        self.pos = 0

    def take_block(self) -> tuple[int, bool]:
        """Claim the next ``n_sample`` negatives: ``(start, redrawn)``, the block being
        ``samples[start:start + n_sample]``; the store is redrawn first when it is used up
        (``redrawn`` True). The CPU trainer does the same in compiled code."""
        redrawn = self.pos + self.n_sample > len(self.samples)
        if redrawn:
            self.fill()
        start = self.pos
        self.pos += self.n_sample
        return start, redrawn
