"""Session-parallel mini-batch schedule (Numba) against the NumPy reference schedule."""
import numpy as np
import pytest

import naive as ref
from gru_engine.batching import full_schedule


def _sessions(n_sessions, seed, max_len=9):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, max_len + 1, n_sessions)
    offsets = np.zeros(n_sessions + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = rng.integers(0, 50, offsets[-1]).astype(np.int32)
    return items, offsets


def _split(step_rows, flat):
    return np.split(flat, np.cumsum(step_rows)[:-1])


@pytest.mark.parametrize("batch_size", [1, 3, 8, 32])
@pytest.mark.parametrize("min_rows", [1, 2])
def test_matches_reference_schedule(batch_size, min_rows):
    items, offsets = _sessions(40, seed=batch_size)
    order = np.random.default_rng(1).permutation(40).astype(np.int64)
    rows, inp, tgt, rst, _ = full_schedule(items, order, offsets, batch_size, min_rows)
    expected = ref.reference_schedule(items, offsets, order, batch_size, min_rows)
    assert len(rows) == len(expected)
    for (ei, et, er), i, t, r in zip(expected, _split(rows, inp), _split(rows, tgt),
                                     _split(rows, rst)):
        np.testing.assert_array_equal(i, ei)
        np.testing.assert_array_equal(t, et)
        np.testing.assert_array_equal(r, er)


def test_every_pair_exactly_once_with_resets_at_session_starts():
    items, offsets = _sessions(60, seed=7)
    # unique item per event, so that (input, target) pairs identify events
    items = np.arange(offsets[-1], dtype=np.int32)
    order = np.arange(60, dtype=np.int64)
    rows, inp, tgt, rst, _ = full_schedule(items, order, offsets, 8, 1)
    pairs = set(zip(inp.tolist(), tgt.tolist()))
    assert len(pairs) == len(inp)  # no pair twice
    expected = {(e, e + 1) for s in range(60) for e in range(offsets[s], offsets[s + 1] - 1)}
    assert pairs == expected
    starts = set(offsets[:-1].tolist())
    assert all(bool(r) == (i in starts) for i, r in zip(inp.tolist(), rst.tolist()))


def test_batch_shrinks_at_the_end_and_stops_below_min_rows():
    items, offsets = _sessions(30, seed=3)
    order = np.arange(30, dtype=np.int64)
    rows, *_ = full_schedule(items, order, offsets, 8, 1)
    assert rows[0] == 8 and rows[-1] < 8
    assert np.all(np.diff(rows) <= 0) and rows[-1] >= 1
    rows2, *_ = full_schedule(items, order, offsets, 8, 2)
    assert rows2.min() >= 2
    assert len(rows2) <= len(rows)


def test_fewer_sessions_than_batch_size():
    items, offsets = _sessions(3, seed=4)
    rows, inp, _, _, _ = full_schedule(items, np.arange(3, dtype=np.int64), offsets, 10, 1)
    assert rows[0] == 3
    assert len(inp) == offsets[-1] - 3


def test_session_order_is_respected():
    items, offsets = _sessions(20, seed=5)
    items = np.arange(offsets[-1], dtype=np.int32)
    order = np.arange(20, dtype=np.int64)[::-1].copy()
    rows, inp, _, rst, _ = full_schedule(items, order, offsets, 1, 1)
    started = [int(np.searchsorted(offsets, i, side="right") - 1) for i in inp[rst]]
    assert started == order.tolist()


@pytest.mark.parametrize("min_rows", [1, 2])
def test_src_links_each_row_to_its_previous_row(min_rows):
    """``src`` says which row of the previous step a continuing row occupied: its input is the
    target of that row (the hidden state it must carry)."""
    items, offsets = _sessions(50, seed=11)
    items = np.arange(offsets[-1], dtype=np.int32)  # event index as item: pairs are unique
    order = np.arange(50, dtype=np.int64)
    rows, inp, tgt, rst, src = full_schedule(items, order, offsets, 7, min_rows)
    assert src.dtype == np.int32 and len(src) == len(inp)
    steps = list(zip(_split(rows, inp), _split(rows, tgt), _split(rows, rst), _split(rows, src)))
    np.testing.assert_array_equal(steps[0][3], np.arange(rows[0]))
    for (_, prev_tgt, _, _), (i, _, r, s) in zip(steps, steps[1:]):
        assert np.all(s >= 0) and np.all(s < len(prev_tgt)) and np.all(np.diff(s) > 0)
        cont = ~r
        np.testing.assert_array_equal(i[cont], prev_tgt[s[cont]])
