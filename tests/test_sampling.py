"""Negative sampling: frequencies follow support ** alpha; store blocks and redraws."""
import numpy as np
import pytest
from scipy import stats

from gru_engine.sampling import SampleStore, seed_numba, store_capacity


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_frequencies_follow_popularity_power(alpha):
    support = np.array([1, 2, 5, 10, 40, 100, 3, 0, 7], dtype=np.int64)
    seed_numba(123)
    store = SampleStore(support, alpha, n_sample=100, store_size=200_000)
    store.fill()
    counts = np.bincount(store.samples, minlength=len(support))
    assert counts[support == 0].sum() == 0  # never an item without events
    w = np.where(support > 0, support.astype(float) ** alpha, 0.0)
    keep = w > 0
    expected = w[keep] / w[keep].sum() * len(store.samples)
    _, pvalue = stats.chisquare(counts[keep], expected)
    assert pvalue > 1e-3


def test_wrong_distribution_is_detected():
    support = np.array([1, 2, 5, 10, 40, 100], dtype=np.int64)
    seed_numba(5)
    store = SampleStore(support, 1.0, n_sample=100, store_size=200_000)
    store.fill()
    counts = np.bincount(store.samples, minlength=len(support))
    wrong = np.sqrt(support) / np.sqrt(support).sum() * len(store.samples)
    assert stats.chisquare(counts, wrong)[1] < 1e-6


def test_blocks_and_redraw():
    seed_numba(1)
    store = SampleStore(np.array([3, 1, 4]), 0.5, n_sample=4, store_size=10)
    assert len(store.samples) == store_capacity(4, 10) == 8
    store.fill()
    first = store.samples.copy()
    assert store.take_block() == (0, False)
    assert store.take_block() == (4, False)
    np.testing.assert_array_equal(store.samples, first)
    assert store.take_block() == (0, True)  # used up: redrawn
    assert store.pos == 4 and not np.array_equal(store.samples, first)


def test_same_seed_same_store():
    stores = []
    for _ in range(2):
        seed_numba(99)
        s = SampleStore(np.arange(1, 50), 0.5, n_sample=10, store_size=1000)
        s.fill()
        stores.append(s.samples.copy())
    np.testing.assert_array_equal(stores[0], stores[1])


def test_no_sampling():
    store = SampleStore(np.array([1, 2]), 0.5, n_sample=0, store_size=100)
    store.fill()
    assert len(store.samples) == 0 and store.take_block() == (0, False)


def test_store_smaller_than_a_block_holds_one_block():
    assert store_capacity(2048, 0) == 2048
    assert store_capacity(2048, 5000) == 4096
