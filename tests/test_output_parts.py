"""The cross-entropy output layer in parts (backends/cpu/output_parts.py) against a plain NumPy
softmax over the columns, and training results that do not depend on n_threads."""
import numba
import numpy as np
import pytest

from gru_engine import SessionGRU
from gru_engine.backends.cpu.losses import ELU, LINEAR
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
def test_parts_equal_the_column_softmax(parts, elu, logq, n_distinct):
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
    hc = rng.normal(size=(B + 2, H))
    Wc = rng.normal(size=(C, H))
    bc = rng.normal(size=C)
    lq = rng.normal(size=C)
    O_flat = np.zeros(B * C)
    dhc = np.zeros((B + 2, H))
    GY = np.zeros((C + B, H))
    gBy = np.zeros(C + B)
    src = (Wc, bc, np.arange(C, dtype=np.int32))
    loss = cross_entropy_output(hc, dhc, Wc, bc, src, False, cmap, lq, np.zeros(C), B, C, U,
                                parts, O_flat, ELU if elu else LINEAR, elu, logq, 3.0, GY, gBy,
                                None)
    ref = _reference(hc, Wc, bc, cmap, lq, B, C, U, elu, logq, 3.0)
    np.testing.assert_allclose(loss, ref[0], rtol=1e-12)
    np.testing.assert_allclose(GY[:U], ref[1], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(gBy[:U], ref[2], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dhc[:B], ref[3], rtol=1e-10, atol=1e-13)


def test_non_finite_score_gives_nan_loss():
    B, C, H = 3, 6, 2
    hc = np.ones((B, H))
    Wc = np.ones((C, H))
    Wc[4, 0] = np.inf
    cmap = np.arange(C, dtype=np.int32)
    src = (Wc, np.zeros(C), cmap)
    loss = cross_entropy_output(hc, np.zeros((B, H)), Wc, np.zeros(C), src, False, cmap,
                                np.zeros(C), np.zeros(C), B, C, C, 2, np.zeros(B * C), LINEAR,
                                0.0, 0.0, 1.0, np.zeros((C, H)), np.zeros(C), None)
    assert np.isnan(loss)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_training_does_not_depend_on_n_threads():
    rng = np.random.default_rng(0)
    n = 600
    events = {"SessionId": np.repeat(np.arange(n // 6), 6), "ItemId": rng.integers(0, 50, n),
              "Time": np.arange(n, dtype=np.float64)}
    kw = dict(layers=[8], n_epochs=2, batch_size=8, n_sample=20, logq=1.0, sample_alpha=0.5,
              random_state=1)
    one = SessionGRU(**kw, n_threads=1).fit(events)
    two = SessionGRU(**kw, n_threads=2).fit(events)
    for k in ("theta", "Wy", "By"):
        assert np.array_equal(one.params_[k], two.params_[k]), k


def test_threads_go_to_the_parts_or_to_blas():
    from gru_engine.threads import training_threads
    assert training_threads("cross-entropy", 100, 2) == (2, 1)
    assert training_threads("cross-entropy", 480, 2) == (1, 2)
    assert training_threads("bpr-max", 100, 2) == (1, 2)
