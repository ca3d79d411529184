"""``gemm_into(a, b, out)``: ``out[:] = a @ b`` in the Numba kernels through NumPy's own BLAS.

Numba's ``np.dot`` calls SciPy's BLAS (``scipy.linalg.cython_blas``), and the wheels bundle an
OpenBLAS each: here SciPy's 0.3.30 and NumPy's 0.3.31. On the cross-entropy parts' float32
products (32 x 674 x 100 and its transposes, one thread) NumPy's ran 22-27% faster on two of
the three shapes. The results are bit-identical on one BLAS thread (800 shapes checked) except
for vector shapes (a dimension of 1), which NumPy's BLAS rounds differently, as it does on
several threads (where also 1 and 2 threads differ in both libraries): those keep ``np.dot``.

At import, NumPy's 64-bit-integer CBLAS ``sgemm`` and its thread count query (OpenBLAS names,
optionally ``scipy_``-prefixed) are registered with LLVM under the fixed names :data:`SGEMM`
and :data:`THREADS`, so that cached machine code links to them again in every process; where
NumPy has no such symbols, :data:`SGEMM` is a compiled stand-in that runs Numba's ``np.dot``.
Thread limits (threadpoolctl) apply to both libraries.
"""
from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import binding as ll
from llvmlite import ir
from numba import carray, cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

#: the LLVM symbols the kernels call: ``void (int32 layout, int32 trans_a, int32 trans_b, int64
#: m, int64 n, int64 k, float32 alpha, float32 *a, int64 lda, float32 *b, int64 ldb, float32
#: beta, float32 *c, int64 ldc)`` (CBLAS conventions) and ``int32 ()`` (BLAS threads)
SGEMM, THREADS = "gru_engine_cblas_sgemm64", "gru_engine_blas_threads"
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_PREFIXES = ("scipy_", "")


def numpy_blas_addresses():
    """``(sgemm, thread count)`` addresses of NumPy's BLAS (64-bit-integer OpenBLAS), or
    None."""
    try:
        from numpy._core import _multiarray_umath as core
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as core
    lib = ctypes.CDLL(core.__file__)  # the loaded module: its symbol search covers its BLAS
    for prefix in _PREFIXES:
        try:
            return tuple(ctypes.cast(getattr(lib, prefix + name), ctypes.c_void_p).value
                         for name in ("cblas_sgemm64_", "openblas_get_num_threads64_"))
        except AttributeError:
            continue
    return None


def _np_dot_sgemm_address():
    """Address of a compiled :data:`SGEMM` that runs Numba's ``np.dot`` (row-major, leading
    dimensions = row lengths, alpha 1, beta 0: what :func:`gemm_into` passes)."""
    sig = types.void(types.int32, types.int32, types.int32, types.int64, types.int64,
                     types.int64, types.float32, types.CPointer(types.float32), types.int64,
                     types.CPointer(types.float32), types.int64, types.float32,
                     types.CPointer(types.float32), types.int64)

    @cfunc(sig, cache=True)
    def np_dot_sgemm(layout, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        C = carray(c, (m, n))
        if ta == _NO_TRANS and tb == _NO_TRANS:
            np.dot(carray(a, (m, k)), carray(b, (k, n)), C)
        elif ta == _NO_TRANS:
            np.dot(carray(a, (m, k)), carray(b, (n, k)).T, C)
        elif tb == _NO_TRANS:
            np.dot(carray(a, (k, m)).T, carray(b, (k, n)), C)
        else:
            np.dot(carray(a, (k, m)).T, carray(b, (n, k)).T, C)
    return np_dot_sgemm.address


_numpy_blas = numpy_blas_addresses()
#: whether :func:`gemm_into` runs NumPy's BLAS (else Numba's ``np.dot``)
USES_NUMPY_BLAS = _numpy_blas is not None
if USES_NUMPY_BLAS:
    ll.add_symbol(SGEMM, _numpy_blas[0])
    ll.add_symbol(THREADS, _numpy_blas[1])
else:
    ll.add_symbol(SGEMM, _np_dot_sgemm_address())
    ll.add_symbol(THREADS, cfunc(types.int32())(lambda: np.int32(1)).address)


@intrinsic
def _blas_threads(typingctx):
    """BLAS threads of :data:`THREADS`."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, []), THREADS)
        return builder.call(fn, [])
    return types.int32(), codegen


@intrinsic
def _sgemm(typingctx, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    """Call :data:`SGEMM`: row-major ``c = op(a) @ op(b)`` (alpha 1, beta 0); ``a``, ``b``,
    ``c`` float32 arrays (their data pointers)."""
    sig = types.none(types.int32, types.int32, types.int64, types.int64, types.int64, a,
                     types.int64, b, types.int64, c, types.int64)

    def codegen(context, builder, signature, args):
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        fptr = f32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, fptr, i64,
                                               fptr, i64, f32, fptr, i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, SGEMM)
        ta_, tb_, m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_ = args
        ptrs = [context.make_array(t)(context, builder, v).data
                for t, v in ((signature.args[5], a_), (signature.args[7], b_),
                             (signature.args[9], c_))]
        builder.call(fn, [ir.Constant(i32, _ROW_MAJOR), ta_, tb_, m_, n_, k_,
                          ir.Constant(f32, 1.0), ptrs[0], lda_, ptrs[1], ldb_,
                          ir.Constant(f32, 0.0), ptrs[2], ldc_])
        return context.get_dummy_value()
    return sig, codegen


def gemm_into(a, b, out):
    """``out[:] = a @ b`` (2-D; ``out`` C-contiguous (m, n)). float32 with ``a`` and ``b`` each
    C- or F-contiguous (e.g. the transpose of a C array), every dimension > 1 and BLAS on one
    thread: NumPy's BLAS; anything else: ``np.dot(a, b, out)`` (Numba only)."""
    raise NotImplementedError("gemm_into is for Numba-compiled code")


def _blas_operand(t):
    """The CBLAS transpose flag that reads a 2-D array type in place (C: as it is, F: the
    transpose of a C array), or None."""
    if t.layout == "C":
        return _NO_TRANS
    if t.layout == "F":
        return _TRANS
    return None


@overload(gemm_into, jit_options={"cache": True, "error_model": "numpy"})
def _ov_gemm_into(a, b, out):
    arrays = all(isinstance(t, types.Array) and t.ndim == 2 for t in (a, b, out))
    if not (arrays and all(t.dtype == types.float32 for t in (a, b, out))
            and out.layout == "C" and _blas_operand(a) and _blas_operand(b)):
        return lambda a, b, out: np.dot(a, b, out)
    ta, tb = _blas_operand(a), _blas_operand(b)

    def impl(a, b, out):
        m, k = a.shape
        n = b.shape[1]
        if b.shape[0] != k or out.shape[0] != m or out.shape[1] != n:
            raise ValueError("gemm_into: shapes do not match")
        if m <= 1 or n <= 1 or k <= 1 or _blas_threads() > 1:  # np.dot's rounding: see module
            np.dot(a, b, out)
            return
        lda = k if ta == _NO_TRANS else m
        ldb = n if tb == _NO_TRANS else k
        _sgemm(np.int32(ta), np.int32(tb), m, n, k, a, lda, b, ldb, out, n)
    return impl
