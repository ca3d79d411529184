"""Sampled-output losses of GRU4Rec: forward and hand-written backward, compiled with Numba.

A score block ``O`` (B, C) has row ``i``'s positive in column ``i``; every other column is a
negative for that row (the other rows' targets, then the shared sampled negatives), never masked.
Per row (reference page):

- ``final_act`` (linear, relu, tanh, leaky-x, elu-x) is applied to the scores first;
- ``cross-entropy``: ``t = o - logq * lq`` (``lq[j] = log q_j``), softmax over all C columns,
  loss ``-log(p_i + 1e-24)`` (computed per distinct item, in parts: :mod:`.output_parts`);
- ``bpr-max``: ``r = ELU_elu(o)`` when ``elu > 0``; ``s`` = softmax over the negatives;
  loss ``-log(sum_j s_j sigmoid(r_i - r_j) + 1e-24) + bpreg * sum_j s_j r_j^2``;
- ``top1-max``: ``sum_j s_j (sigmoid(r_j - r_i) + sigmoid(r_j^2))``;
- ``bpr``: mean over negatives of ``-log sigmoid(r_i - r_j)``;
- ``top1``: mean over negatives of ``sigmoid(r_j - r_i) + sigmoid(r_j^2)``.

The step loss is the sum over the ``B`` rows divided by ``scale`` (the configured batch size).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from ...config import LOG_EPS
from .mathfuncs import (cast_like, fexp, float32_of_ordered_bits, fsigmoid, fsoftplus,
                        ordered_bits32)

CROSS_ENTROPY, BPR_MAX, TOP1_MAX, BPR, TOP1 = 0, 1, 2, 3, 4
LINEAR, RELU, TANH, LEAKY, ELU = 0, 1, 2, 3, 4


@njit(cache=True, error_model="numpy")
def activate(x, act, param):
    """Final activation of one score."""
    if act == RELU:
        return x if x > 0.0 else 0.0
    if act == TANH:
        return np.tanh(x)
    if act == LEAKY:
        return x if x > 0.0 else param * x
    if act == ELU:
        return x if x > 0.0 else param * (fexp(x) - 1.0)
    return x


@njit(cache=True, error_model="numpy")
def activate_grad(y, act, param):
    """Derivative of :func:`activate` expressed through its output ``y``."""
    if act == RELU:
        return 1.0 if y > 0.0 else 0.0
    if act == TANH:
        return 1.0 - y * y
    if act == LEAKY:
        return 1.0 if y > 0.0 else param
    if act == ELU:
        return 1.0 if y > 0.0 else y + param
    return 1.0


def row_max_finite(r, C):
    """``(max(r[:C]), number of NaN or infinite r[:C])`` (``C >= 1``; the max is meaningless
    when the count is not 0). float32: one integer pass over the bits
    (:func:`~.mathfuncs.ordered_bits32`), vectorised; float64: a plain loop (Numba only)."""
    raise NotImplementedError("row_max_finite is for Numba-compiled code")


@overload(row_max_finite, jit_options={"cache": True, "error_model": "numpy"})
def _ov_row_max_finite(r, C):
    if isinstance(r, types.Array) and r.dtype == types.float32:
        def impl(r, C):
            k = np.int32(-2147483648)
            bad = 0
            for j in range(C):
                b = ordered_bits32(r[j])
                k = max(k, b)
                # the magnitude bits of r[j]: all exponent bits set = NaN or +-inf
                bad += np.int32(b ^ (b >> np.int32(31))) >= np.int32(0x7F800000)
            return float32_of_ordered_bits(k), bad
        return impl

    def impl64(r, C):
        m = r[0]
        bad = 0
        for j in range(C):
            m = max(m, r[j])
            bad += (r[j] - r[j]) != 0.0
        return m, bad
    return impl64


@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def row_sum(r, C):
    """``sum(r[:C])`` in float64, as a vector reduction (summation order left to the
    compiler)."""
    z = 0.0
    for j in range(C):
        z += r[j]
    return z


@njit(cache=True, error_model="numpy")
def _softmax_negatives(r, g, i, C):
    """``g[:C]`` = softmax of ``r[:C]`` over the columns other than ``i`` (``g[i] = 0``)."""
    m = r[1] if i == 0 else r[0]
    for j in range(C):
        if j != i and r[j] > m:
            m = r[j]
    for j in range(C):
        g[j] = fexp(r[j] - m)
    g[i] = 0.0
    z = row_sum(g, C)
    inv_z = cast_like(g, 1.0 / z)
    for j in range(C):
        g[j] *= inv_z


@njit(cache=True, error_model="numpy")
def _row_loss(a, r, g, scr, i, C, loss, bpreg, elu):
    """Ranking loss of one row and its gradient ``g`` w.r.t. the activated scores ``a`` (C,).

    ``r`` (C,) and ``scr`` (2, C) are scratch. Returns the row loss. Needs ``C >= 2`` for the
    ranking losses. Loops are kept simple (no branches, array precision) so that they
    vectorise; sums run sequentially in float64.
    """
    one = cast_like(g, 1.0)
    two = cast_like(g, 2.0)
    # ranking losses on r = scores (ELU'd for bpr-max); i = the positive column
    if loss == BPR_MAX and elu > 0.0:
        el = cast_like(r, elu)
        for j in range(C):
            x = a[j]
            r[j] = x if x > 0.0 else el * (fexp(x) - one)
    else:
        for j in range(C):
            r[j] = a[j]
    rp = r[i]
    sa, sb = scr[0], scr[1]
    total = 0.0
    if loss == BPR or loss == TOP1:
        inv = 1.0 / (C - 1)
        inv_c = cast_like(g, inv)
        for j in range(C):
            sa[j] = fsigmoid(r[j] - rp)
        if loss == BPR:
            for j in range(C):
                g[j] = sa[j] * inv_c
            for j in range(C):
                sb[j] = fsoftplus(r[j] - rp)
            s = 0.0
            for j in range(C):
                s += sa[j]
                total += sb[j]
            total -= sb[i]
            g[i] = -(s - sa[i]) * inv
        else:
            for j in range(C):
                sb[j] = fsigmoid(r[j] * r[j])
            d = 0.0
            for j in range(C):
                total += sa[j] + sb[j]
                d += sa[j] * (1.0 - sa[j])
            total -= sa[i] + sb[i]
            d -= sa[i] * (1.0 - sa[i])
            for j in range(C):
                g[j] = (sa[j] * (one - sa[j]) + sb[j] * (one - sb[j]) * two * r[j]) * inv_c
            g[i] = -d * inv
        total *= inv
    elif loss == BPR_MAX:
        _softmax_negatives(r, g, i, C)
        for j in range(C):
            sa[j] = fsigmoid(rp - r[j])
        A = 0.0
        Q = 0.0
        D = 0.0
        for j in range(C):  # g[i] == 0: sums over all columns are sums over the negatives
            s = g[j]
            A += s * sa[j]
            Q += s * r[j] * r[j]
            D += s * sa[j] * (1.0 - sa[j])
        inv = 1.0 / (A + LOG_EPS)
        ninv = cast_like(g, -inv)
        A_c = cast_like(g, A)
        Q_c = cast_like(g, Q)
        reg = cast_like(g, bpreg)
        for j in range(C):
            s = g[j]
            g[j] = ninv * s * (sa[j] * sa[j] - A_c) + reg * s * (r[j] * r[j] - Q_c + two * r[j])
        g[i] = -inv * D
        total = -np.log(A + LOG_EPS) + bpreg * Q
        if elu > 0.0:
            el = cast_like(r, elu)
            for j in range(C):
                g[j] *= (r[j] + el) if r[j] <= 0.0 else one
    else:  # TOP1_MAX
        _softmax_negatives(r, g, i, C)
        for j in range(C):
            sa[j] = fsigmoid(r[j] - rp)
            sb[j] = fsigmoid(r[j] * r[j])
        T = 0.0
        D = 0.0
        for j in range(C):
            s = g[j]
            T += s * (sa[j] + sb[j])
            D += s * sa[j] * (1.0 - sa[j])
        T_c = cast_like(g, T)
        for j in range(C):
            s = g[j]
            g[j] = s * (sa[j] + sb[j] - T_c) + s * (sa[j] * (one - sa[j])
                                                     + sb[j] * (one - sb[j]) * two * r[j])
        g[i] = -D
        total = T
    return total


@njit(cache=True, error_model="numpy")
def slot_log_weights(cmap, lq, C, U, logq, lw):
    """``lw[u] = log sum_{j < C, cmap[j] = u} exp(-logq * lq[j])`` for ``u < U``: the log
    weight of slot ``u`` in a softmax over the columns (the log of its column count without
    logq). cmap (>=C,) int32, lq (>=C,), lw (>=U,) of the scores' dtype."""
    wsum = np.zeros(U)
    for j in range(C):
        wsum[cmap[j]] += np.exp(-logq * lq[j]) if logq > 0.0 else 1.0
    for u in range(U):
        lw[u] = np.log(wsum[u])


@njit(cache=True, error_model="numpy")
def loss_forward_backward(S, cmap, bias, B, C, U, loss, act, act_param, bpreg, elu, scale, a, r,
                          g, scr=None):
    """Ranking loss (not cross-entropy) of the step over the first ``B`` rows of the scores ``O[i, j] = S[i, cmap[j]] +
    bias[cmap[j]]`` (``j < C``); ``S[:B, :U]`` is overwritten with dL/dS, the gradient of the
    columns that share a slot summed.

    S: (>=B, >=U) raw scores ``h @ W.T`` of the ``U`` distinct columns; cmap: (>=C,) int32 slot
    of each column; bias: (>=U,) bias of each slot; a, r, g: (>=C,) and scr: (2, >=C) scratch
    (allocated per call when not given). Returns ``sum_rows loss / scale``.
    """
    work = np.empty((2, len(a)), a.dtype) if scr is None else scr
    if loss == CROSS_ENTROPY:
        raise ValueError("loss_forward_backward: cross-entropy is output_parts.py's")
    total = 0.0
    inv_scale = 1.0 / scale
    n_bad = 0
    for i in range(B):
        Si = S[i]
        if act == LINEAR:  # simple loops (they vectorise)
            for j in range(C):
                a[j] = Si[cmap[j]] + bias[cmap[j]]
        else:
            for j in range(C):
                u = cmap[j]
                a[j] = activate(Si[u] + bias[u], act, act_param)
        for j in range(C):
            n_bad += (a[j] - a[j]) != 0.0  # NaN or inf (the fast exp would hide them)
        total += _row_loss(a, r, g, work, i, C, loss, bpreg, elu)
        if act == LINEAR:
            for j in range(C):
                g[j] = g[j] * inv_scale
        else:
            for j in range(C):
                g[j] = g[j] * activate_grad(a[j], act, act_param) * inv_scale
        for u in range(U):
            Si[u] = 0.0
        for j in range(C):
            Si[cmap[j]] += g[j]
    if n_bad > 0:
        return np.nan
    return total * inv_scale
