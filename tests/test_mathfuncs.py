"""The vectorisable float32 exp/sigmoid/tanh/rsqrt of the kernels against NumPy float64."""
import numpy as np
from numba import njit

from gru_engine.backends.cpu.mathfuncs import (cast_like, fexp, float32_of_ordered_bits, frsqrt,
                                              fsigmoid, fsoftplus, ftanh, ordered_bits32)


@njit(error_model="numpy")
def _apply(x, e, s, t):
    for i in range(len(x)):
        e[i] = fexp(x[i])
        s[i] = fsigmoid(x[i])
        t[i] = ftanh(x[i])
    return cast_like(x, 0.1)


def _run(dtype):
    x = np.concatenate([np.linspace(-80, 80, 20001), np.linspace(-0.01, 0.01, 2001)]).astype(dtype)
    out = [np.empty_like(x) for _ in range(3)]
    c = _apply(x, *out)
    return x.astype(np.float64), out, c


def test_float32_accuracy():
    x, (e, s, t), c = _run(np.float32)
    ref = np.exp(x)
    assert np.max(np.abs(e - ref) / ref) < 2e-7
    assert np.max(np.abs(s - 1 / (1 + np.exp(-x)))) < 2e-7
    assert np.max(np.abs(t - np.tanh(x))) < 5e-7
    assert c == np.float32(0.1)


def test_float64_is_exact_numpy():
    x, (e, s, t), c = _run(np.float64)
    np.testing.assert_allclose(e, np.exp(x), rtol=1e-15)  # libm vs NumPy: last bit may differ
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-x)), rtol=1e-15)
    assert c == 0.1


@njit(error_model="numpy")
def _softplus(x, out):
    for i in range(len(x)):
        out[i] = fsoftplus(x[i])


def test_softplus():
    for dtype, tol in ((np.float32, 3e-7), (np.float64, 1e-15)):
        x = np.linspace(-100, 100, 40001).astype(dtype)
        out = np.empty_like(x)
        _softplus(x, out)
        ref = np.logaddexp(0.0, x.astype(np.float64))
        assert np.max(np.abs(out - ref) / np.maximum(ref, 1e-30)) < tol


@njit(error_model="numpy")
def _rsqrt_all(x, out):
    for i in range(len(x)):
        out[i] = frsqrt(x[i])


def test_rsqrt():
    # every binade of the positive normal float32 numbers, densely, and a NaN
    x = np.concatenate([np.geomspace(1.2e-38, 3.4e38, 400001), np.geomspace(1e-6, 1e4, 100001),
                        [np.nan]]).astype(np.float32)
    out = np.empty_like(x)
    _rsqrt_all(x, out)
    ref = 1.0 / np.sqrt(x[:-1].astype(np.float64))
    assert np.max(np.abs(out[:-1] / ref - 1.0)) < 2e-7  # correctly rounded: 6e-8..1.2e-7
    assert np.isnan(out[-1])
    x64 = x[:-1].astype(np.float64)
    out64 = np.empty_like(x64)
    _rsqrt_all(x64, out64)
    np.testing.assert_allclose(out64, 1.0 / np.sqrt(x64), rtol=1e-15)


@njit(error_model="numpy")
def _ordered(x, k, back):
    for i in range(len(x)):
        k[i] = ordered_bits32(x[i])
        back[i] = float32_of_ordered_bits(k[i])


def test_ordered_bits_order_like_the_floats():
    f = np.finfo(np.float32)
    x = np.array([-np.inf, -f.max, -1.5, -f.tiny, -1e-45, -0.0, 0.0, 1e-45, f.tiny, 1.0, 1.5,
                  f.max, np.inf], np.float32)
    k, back = np.empty(len(x), np.int32), np.empty_like(x)
    _ordered(x, k, back)
    assert np.all(np.diff(k.astype(np.int64)) > 0)  # -0.0 just below +0.0
    assert back.tobytes() == x.tobytes()
    rng = np.random.default_rng(0)
    y = (rng.normal(size=1000) * 10.0 ** rng.integers(-30, 30, 1000)).astype(np.float32)
    ky, by = np.empty(len(y), np.int32), np.empty_like(y)
    _ordered(y, ky, by)
    assert np.array_equal(np.argsort(ky, kind="stable"), np.argsort(y, kind="stable"))
    assert by.tobytes() == y.tobytes()
