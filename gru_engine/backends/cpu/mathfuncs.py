"""Scalar math for the Numba kernels: exp, sigmoid, tanh and 1/sqrt that vectorise in float32.

Numba's ``np.exp`` on a scalar calls libm one value at a time (no SVML here), which made the
softmax of the sampled loss and the GRU gates the slowest parts of a training step. For float32
arguments :func:`fexp` uses a branch-free Cephes-style polynomial (range reduction by powers of
two, max relative error about 1 ulp on [-87, 88]; clamped outside that range, so callers check
NaN/inf themselves), which LLVM vectorises. For float64 (gradient checks) all functions are the
exact NumPy ones. :func:`frsqrt` exists because the vector square root and division are
slow here (Zen 5: Adagrad's ``g / sqrt(acc + eps)`` over a step's 134k Wy entries took ~400 us,
its loads and stores alone ~60 us).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload


@intrinsic
def _int32_bits_as_float32(typingctx, x):
    if x != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _float32_bits_as_int32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@njit(inline="always")
def ordered_bits32(x):
    """The bits of float32 ``x`` as an int32 that orders like ``x`` (-0.0 just below +0.0;
    NaNs beyond the infinities, by their sign bit): max/min over floats become integer
    reductions, which LLVM vectorises (float max reductions it does not)."""
    b = _float32_bits_as_int32(x)
    return np.int32(b ^ ((b >> np.int32(31)) & np.int32(0x7FFFFFFF)))


@njit(inline="always")
def float32_of_ordered_bits(k):
    """Inverse of :func:`ordered_bits32`."""
    return _int32_bits_as_float32(np.int32(k ^ ((k >> np.int32(31)) & np.int32(0x7FFFFFFF))))


@njit(inline="always")
def _rsqrt32(x):
    """1/sqrt(x) for positive normal float32 ``x``: the bit-pattern first guess (relative error
    < 3.5%) and three Newton steps (max relative error 1.5e-7, about 1 ulp; correctly rounded
    ``1 / sqrt`` has 0.9e-7). NaN stays NaN; no division, no square root: it vectorises into
    multiplies."""
    y = _int32_bits_as_float32(np.int32(np.int32(0x5F375A86)
                                        - np.int32(_float32_bits_as_int32(x) >> np.int32(1))))
    h = np.float32(0.5) * x
    y = y * (np.float32(1.5) - h * y * y)
    y = y * (np.float32(1.5) - h * y * y)
    return y * (np.float32(1.5) - h * y * y)


@njit(inline="always")
def _exp32(x):
    x = min(max(x, np.float32(-87.3)), np.float32(88.7))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    f = x - n * np.float32(0.693359375)
    f = f + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * f + np.float32(1.3981999507e-3)
    p = p * f + np.float32(8.3334519073e-3)
    p = p * f + np.float32(4.1665795894e-2)
    p = p * f + np.float32(1.6666665459e-1)
    p = p * f + np.float32(5.0000001201e-1)
    p = p * f * f + f + np.float32(1.0)
    return p * _int32_bits_as_float32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))


def fexp(x):
    """exp(x): fast polynomial for float32, ``np.exp`` otherwise (Numba only)."""
    raise NotImplementedError("fexp is for Numba-compiled code")


def fsigmoid(x):
    """1 / (1 + exp(-x)) in the argument's precision (Numba only)."""
    raise NotImplementedError("fsigmoid is for Numba-compiled code")


def ftanh(x):
    """tanh(x): via exp for float32 (Taylor near 0), ``np.tanh`` otherwise (Numba only)."""
    raise NotImplementedError("ftanh is for Numba-compiled code")


def frsqrt(x):
    """1/sqrt(x) for x > 0 (positive normal numbers): multiplies only for float32 (about 1 ulp),
    ``1 / np.sqrt`` otherwise (Numba only)."""
    raise NotImplementedError("frsqrt is for Numba-compiled code")


def cast_like(arr, x):
    """``x`` converted to the dtype of array ``arr`` (Numba only)."""
    raise NotImplementedError("cast_like is for Numba-compiled code")


@overload(fexp, inline="always")
def _ov_fexp(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    return lambda x: np.exp(x)


@overload(fsigmoid, inline="always")
def _ov_fsigmoid(x):
    if x == types.float32:
        return lambda x: np.float32(1.0) / (np.float32(1.0) + _exp32(-x))
    return lambda x: 1.0 / (1.0 + np.exp(-x))


@overload(ftanh, inline="always")
def _ov_ftanh(x):
    if x == types.float32:
        def impl(x):
            if abs(x) < np.float32(0.004):
                return x * (np.float32(1.0) - x * x * np.float32(1.0 / 3.0))
            return np.float32(1.0) - np.float32(2.0) / (_exp32(np.float32(2.0) * x) + np.float32(1.0))
        return impl
    return lambda x: np.tanh(x)


@overload(frsqrt, inline="always")
def _ov_frsqrt(x):
    if x == types.float32:
        return lambda x: _rsqrt32(x)
    return lambda x: 1.0 / np.sqrt(x)


@overload(cast_like, inline="always")
def _ov_cast_like(arr, x):
    if isinstance(arr, types.Array) and arr.dtype == types.float32:
        return lambda arr, x: np.float32(x)
    return lambda arr, x: np.float64(x)


def fsoftplus(x):
    """log(1 + exp(x)), stable; vectorisable series for float32 (Numba only)."""
    raise NotImplementedError("fsoftplus is for Numba-compiled code")


@njit(inline="always")
def _log1p_unit32(y):
    """log(1 + y) for float32 ``y`` in [0, 1]: 2 atanh(s), s = y / (2 + y) <= 1/3."""
    s = y / (np.float32(2.0) + y)
    s2 = s * s
    p = np.float32(1.0 / 17.0)
    p = p * s2 + np.float32(1.0 / 15.0)
    p = p * s2 + np.float32(1.0 / 13.0)
    p = p * s2 + np.float32(1.0 / 11.0)
    p = p * s2 + np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    return np.float32(2.0) * s * (np.float32(1.0) + s2 * p)


@overload(fsoftplus, inline="always")
def _ov_fsoftplus(x):
    if x == types.float32:
        return lambda x: max(x, np.float32(0.0)) + _log1p_unit32(_exp32(-abs(x)))

    def impl(x):
        if x > 0.0:
            return x + np.log1p(np.exp(-x))
        return np.log1p(np.exp(x))
    return impl
