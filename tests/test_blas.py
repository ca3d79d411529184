"""gemm_into (backends/cpu/blas.py): NumPy's BLAS from the Numba kernels, and its fallback."""
import ctypes

import numpy as np
import pytest
from numba import njit

from gru_engine.backends.cpu import blas
from gru_engine.backends.cpu.blas import gemm_into


@njit(error_model="numpy")
def _gemm(a, b, out):
    gemm_into(a, b, out)


def _operands(rng, m, k, n, dtype):
    """Every C/F layout pair of an (m, k) and a (k, n) array."""
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    for x in (a, np.ascontiguousarray(a.T).T):
        for y in (b, np.ascontiguousarray(b.T).T):
            yield x, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(32, 100, 67), (1, 3, 1), (7, 1, 9), (5, 0, 4), (0, 3, 2)])
def test_gemm_into_is_the_product(dtype, m, k, n):
    rng = np.random.default_rng(m * 100 + k + n)
    for a, b in _operands(rng, m, k, n, dtype):
        out = np.full((m, n), np.nan, dtype)
        _gemm(a, b, out)
        np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")
def test_gemm_into_strided_operand_goes_through_np_dot():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 8)).astype(np.float32)[:, ::2]  # neither C nor F
    b = rng.normal(size=(4, 3)).astype(np.float32)
    out = np.zeros((6, 3), np.float32)
    _gemm(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-6, atol=1e-6)


def test_gemm_into_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        _gemm(np.ones((3, 4), np.float32), np.ones((5, 2), np.float32),
              np.zeros((3, 2), np.float32))


def test_fallback_symbol_computes_the_cblas_product():
    """The compiled stand-in registered when NumPy has no 64-bit CBLAS sgemm."""
    f32p = ctypes.POINTER(ctypes.c_float)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int64,
                          ctypes.c_int64, ctypes.c_int64, ctypes.c_float, f32p, ctypes.c_int64,
                          f32p, ctypes.c_int64, ctypes.c_float, f32p,
                          ctypes.c_int64)(blas._np_dot_sgemm_address())
    rng = np.random.default_rng(1)
    m, k, n = 5, 7, 3
    for a, b in _operands(rng, m, k, n, np.float32):
        ta = blas._NO_TRANS if a.flags.c_contiguous else blas._TRANS
        tb = blas._NO_TRANS if b.flags.c_contiguous else blas._TRANS
        out = np.full((m, n), np.nan, np.float32)
        ptr = lambda x: x.ctypes.data_as(f32p)
        fn(blas._ROW_MAJOR, ta, tb, m, n, k, 1.0, ptr(a), k if ta == blas._NO_TRANS else m,
           ptr(b), n if tb == blas._NO_TRANS else k, 0.0, ptr(out), n)
        np.testing.assert_allclose(out, a @ b, rtol=1e-6, atol=1e-6)
