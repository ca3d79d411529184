"""The cross-entropy output layer in parts (backends/cpu/output_parts.py) against a plain NumPy
softmax over the columns, and training results that do not depend on n_threads."""
import numba
import numpy as np
import pytest
from numba import njit

from gru_engine import SessionGRU
from gru_engine.backends.cpu.losses import ELU, LINEAR, row_max_finite
from gru_engine.backends.cpu.output_parts import cross_entropy_output
from gru_engine.config import LOG_EPS


def _reference(hc, Wc, bc, cmap, lq, B, C, U, act_elu, logq, scale):
    """Loss and gradients of the columns' softmax, float64, by NumPy (columns expanded)."""
    O = hc[:B] @ Wc[:U].T + bc[:U]
    O = O[:, cmap[:C]]
    A = np.where(O > 0, O, act_elu * (np.exp(O) - 1)) if act_elu else O
    T = A - logq * lq[:C]
    T = T - T.max(axis=1, keepdims=True)
    Pm = np.exp(T) / np.exp(T).sum(axis=1, keepdims=True)
    p = Pm[np.arange(B), np.arange(B)]
    c = p / (p + LOG_EPS)
    G = c[:, None] * Pm
    G[np.arange(B), np.arange(B)] -= c
    if act_elu:
        G *= np.where(A > 0, 1.0, A + act_elu)
    G /= scale
    dS = np.zeros((B, U))
    for j in range(C):
        dS[:, cmap[j]] += G[:, j]
    return -np.log(p + LOG_EPS).sum() / scale, dS.T @ hc[:B], dS.sum(axis=0), dS @ Wc[:U]


@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("elu, logq", [(0.0, 0.0), (0.0, 1.0), (0.5, 0.7)])
@pytest.mark.parametrize("n_distinct", [1, 2, 9])
@pytest.mark.parametrize("dtype, gather", [(np.float64, False), (np.float32, True)])
def test_parts_equal_the_column_softmax(parts, elu, logq, n_distinct, dtype, gather):
    rng = np.random.default_rng(parts * 100 + n_distinct)
    B, n_sample, H = 5, 11, 4
    C = B + n_sample
    cmap = np.concatenate([rng.permutation(n_distinct)[:min(B, n_distinct)],
                           rng.integers(0, n_distinct, C)])[:C].astype(np.int32)
    # slots in order of first appearance, as the gather makes them
    order = {}
    for u in cmap:
        order.setdefault(int(u), len(order))
    cmap = np.array([order[int(u)] for u in cmap], np.int32)
    U = len(order)
    hc = rng.normal(size=(B + 2, H)).astype(dtype)
    Wy = rng.normal(size=(C + 3, H)).astype(dtype)
    By = rng.normal(size=C + 3).astype(dtype)
    rows = rng.permutation(C + 3)[:C].astype(np.int32)  # the slots' rows of Wy
    lq = rng.normal(size=C).astype(dtype)
    if gather:  # the parts copy their slots' rows; rows past U stay untouched
        Wc, bc = np.full((C, H), np.nan, dtype), np.full(C, np.nan, dtype)
    else:
        Wc, bc = Wy[rows], By[rows]
    O_flat = np.zeros(B * C, dtype)
    dhc = np.zeros((B + 2, H), dtype)
    GY = np.zeros((C + B, H), dtype)
    gBy = np.zeros(C + B, dtype)
    loss = cross_entropy_output(hc, dhc, Wc, bc, (Wy, By, rows), gather, cmap, lq,
                                np.zeros(C, dtype), B, C, U, parts, O_flat,
                                ELU if elu else LINEAR, elu, logq, 3.0, GY, gBy, None)
    np.testing.assert_array_equal(Wc[:U], Wy[rows[:U]])
    np.testing.assert_array_equal(bc[:U], By[rows[:U]])
    f64 = [a.astype(np.float64) for a in (hc, Wc, bc, lq)]
    ref = _reference(f64[0], f64[1], f64[2], cmap, f64[3], B, C, U, elu, logq, 3.0)
    tol = dict(rtol=1e-10, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-12 if dtype == np.float64 else 1e-5)
    np.testing.assert_allclose(GY[:U], ref[1], **tol)
    np.testing.assert_allclose(gBy[:U], ref[2], **tol)
    np.testing.assert_allclose(dhc[:B], ref[3], **tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act, value", [(LINEAR, np.nan), (LINEAR, -np.nan), (LINEAR, np.inf),
                                        (LINEAR, -np.inf), (ELU, np.nan), (ELU, np.inf)])
def test_non_finite_score_gives_nan_loss(dtype, act, value):
    """(ELU(-inf) = -1 is finite.)"""
    B, C, H = 3, 6, 2
    hc = np.ones((B, H), dtype)
    Wc = np.ones((C, H), dtype)
    Wc[4, 0] = value
    cmap = np.arange(C, dtype=np.int32)
    src = (Wc, np.zeros(C, dtype), cmap)
    loss = cross_entropy_output(hc, np.zeros((B, H), dtype), Wc, np.zeros(C, dtype), src, False,
                                cmap, np.zeros(C, dtype), np.zeros(C, dtype), B, C, C, 2,
                                np.zeros(B * C, dtype), act, 1.0, 0.0, 1.0,
                                np.zeros((C, H), dtype), np.zeros(C, dtype), None)
    assert np.isnan(loss)


@njit(error_model="numpy")
def _row_max_finite(r):
    return row_max_finite(r, len(r))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_max_finite(dtype):
    rng = np.random.default_rng(1)
    big = np.finfo(dtype).max
    for n in (1, 2, 17, 674):
        x = (rng.normal(size=n) * 10).astype(dtype)
        x[rng.integers(n)] = -big
        assert _row_max_finite(x) == (x.max(), 0)
        assert _row_max_finite(-x) == ((-x).max(), 0)
        for value in (np.nan, -np.nan, np.inf, -np.inf):
            y = x.copy()
            y[rng.integers(n)] = value
            assert _row_max_finite(y)[1] == 1
    assert _row_max_finite(np.array([-0.0, -1.0], dtype))[0] == 0.0


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
@pytest.mark.parametrize("hidden", [8, 480], ids=["h8", "h480"])
def test_training_does_not_depend_on_n_threads(hidden):
    """Up to ``config.TRAIN_PARTS_MAX_HIDDEN`` (here hidden 480, yoochoose's) two threads
    train the one-thread model bit for bit."""
    rng = np.random.default_rng(0)
    n = 600
    events = {"SessionId": np.repeat(np.arange(n // 6), 6), "ItemId": rng.integers(0, 50, n),
              "Time": np.arange(n, dtype=np.float64)}
    kw = dict(layers=[hidden], n_epochs=2, batch_size=8, n_sample=20, logq=1.0, sample_alpha=0.5,
              random_state=1)
    one = SessionGRU(**kw, n_threads=1).fit(events)
    two = SessionGRU(**kw, n_threads=2).fit(events)
    for k in ("theta", "Wy", "By"):
        assert np.array_equal(one.params_[k], two.params_[k]), k


def test_threads_go_to_the_parts_or_to_blas():
    from gru_engine.threads import training_threads
    assert training_threads("cross-entropy", 100, 2) == (2, 1)
    assert training_threads("cross-entropy", 480, 2) == (2, 1)
    assert training_threads("cross-entropy", 1000, 2) == (1, 2)
    assert training_threads("bpr-max", 100, 2) == (1, 2)
