"""Sampled-output losses of GRU4Rec: forward and hand-written backward, compiled with Numba.

A score block ``O`` (B, C) has row ``i``'s positive in column ``i``; every other column is a
negative for that row (the other rows' targets, then the shared sampled negatives), never masked.
Per row (reference page):

- ``final_act`` (linear, relu, tanh, leaky-x, elu-x) is applied to the scores first;
- ``cross-entropy``: ``t = o - logq * lq`` (``lq[j] = log q_j``), softmax over all C columns,
  loss ``-log(p_i + 1e-24)``;
- ``bpr-max``: ``r = ELU_elu(o)`` when ``elu > 0``; ``s`` = softmax over the negatives;
  loss ``-log(sum_j s_j sigmoid(r_i - r_j) + 1e-24) + bpreg * sum_j s_j r_j^2``;
- ``top1-max``: ``sum_j s_j (sigmoid(r_j - r_i) + sigmoid(r_j^2))``;
- ``bpr``: mean over negatives of ``-log sigmoid(r_i - r_j)``;
- ``top1``: mean over negatives of ``sigmoid(r_j - r_i) + sigmoid(r_j^2)``.

The step loss is the sum over the ``B`` rows divided by ``scale`` (the configured batch size).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .mathfuncs import fexp, fsigmoid

CROSS_ENTROPY, BPR_MAX, TOP1_MAX, BPR, TOP1 = 0, 1, 2, 3, 4
LINEAR, RELU, TANH, LEAKY, ELU = 0, 1, 2, 3, 4
LOG_EPS = 1e-24


@njit(cache=True, error_model="numpy")
def _softplus(x):
    """log(1 + exp(x)), stable for large |x|."""
    if x > 0.0:
        return x + np.log1p(np.exp(-x))
    return np.log1p(np.exp(x))


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


@njit(cache=True, error_model="numpy")
def _row_loss(a, r, g, i, C, loss, logq, lq, bpreg, elu):
    """Loss of one row and its gradient ``g`` w.r.t. the activated scores ``a`` (C,).

    ``r`` (C,) is scratch. Returns the row loss. Needs ``C >= 2`` for the ranking losses.
    """
    if loss == CROSS_ENTROPY:
        if logq > 0.0:
            for j in range(C):
                r[j] = a[j] - logq * lq[j]
        else:
            for j in range(C):
                r[j] = a[j]
        m = r[0]
        for j in range(1, C):
            if r[j] > m:
                m = r[j]
        for j in range(C):  # separate loops: this one vectorises, the sum below cannot
            r[j] = fexp(r[j] - m)
        z = 0.0
        for j in range(C):
            z += r[j]
        p_pos = r[i] / z
        c = p_pos / (p_pos + LOG_EPS)
        for j in range(C):
            g[j] = c * (r[j] / z)
        g[i] -= c
        return -np.log(p_pos + LOG_EPS)

    # ranking losses: r = scores (ELU'd for bpr-max), i = positive
    for j in range(C):
        x = a[j]
        if loss == BPR_MAX and elu > 0.0 and x <= 0.0:
            x = elu * (fexp(x) - 1.0)
        r[j] = x
    rp = r[i]
    total = 0.0
    if loss == BPR or loss == TOP1:
        inv = 1.0 / (C - 1)
        gp = 0.0
        for j in range(C):
            if j == i:
                continue
            if loss == BPR:
                total += _softplus(r[j] - rp)
                d = fsigmoid(r[j] - rp) * inv
                g[j] = d
                gp -= d
            else:
                sa = fsigmoid(r[j] - rp)
                sb = fsigmoid(r[j] * r[j])
                total += sa + sb
                g[j] = (sa * (1.0 - sa) + sb * (1.0 - sb) * 2.0 * r[j]) * inv
                gp -= sa * (1.0 - sa) * inv
        g[i] = gp
        total *= inv
    else:
        # softmax over the negatives: g holds s_j temporarily
        m = r[1] if i == 0 else r[0]
        for j in range(C):
            if j != i and r[j] > m:
                m = r[j]
        for j in range(C):
            g[j] = fexp(r[j] - m)
        g[i] = 0.0
        z = 0.0
        for j in range(C):
            z += g[j]
        for j in range(C):
            g[j] /= z
        gp = 0.0
        if loss == BPR_MAX:
            A = 0.0
            Q = 0.0
            for j in range(C):
                if j != i:
                    sg = fsigmoid(rp - r[j])
                    A += g[j] * sg
                    Q += g[j] * r[j] * r[j]
            inv = 1.0 / (A + LOG_EPS)
            for j in range(C):
                if j == i:
                    continue
                s = g[j]
                sg = fsigmoid(rp - r[j])
                gp -= inv * s * sg * (1.0 - sg)
                g[j] = -inv * s * (sg * sg - A) + bpreg * s * (r[j] * r[j] - Q + 2.0 * r[j])
            total = -np.log(A + LOG_EPS) + bpreg * Q
        else:
            T = 0.0
            for j in range(C):
                if j != i:
                    T += g[j] * (fsigmoid(r[j] - rp) + fsigmoid(r[j] * r[j]))
            for j in range(C):
                if j == i:
                    continue
                s = g[j]
                sa = fsigmoid(r[j] - rp)
                sb = fsigmoid(r[j] * r[j])
                gp -= s * sa * (1.0 - sa)
                g[j] = s * (sa + sb - T) + s * (sa * (1.0 - sa) + sb * (1.0 - sb) * 2.0 * r[j])
            total = T
        g[i] = gp
    if loss == BPR_MAX and elu > 0.0:
        for j in range(C):
            if r[j] <= 0.0:
                g[j] *= r[j] + elu
    return total


@njit(cache=True, error_model="numpy")
def loss_forward_backward(O, B, C, loss, act, act_param, logq, lq, bpreg, elu, scale, a, r, g):
    """Step loss over the first ``B`` rows of ``O``; ``O[:B, :C]`` is overwritten with dL/dO.

    O: (>=B, >=C) raw scores ``h @ Wy[cols].T + By[cols]``; lq: (>=C,) log q per column (used by
    cross-entropy when ``logq > 0``); a, r, g: (>=C,) scratch. Returns ``sum_rows loss / scale``.
    """
    total = 0.0
    inv_scale = 1.0 / scale
    n_bad = 0
    for i in range(B):
        for j in range(C):
            a[j] = activate(O[i, j], act, act_param)
        for j in range(C):
            n_bad += (a[j] - a[j]) != 0.0  # NaN or inf (the fast exp would hide them)
        total += _row_loss(a, r, g, i, C, loss, logq, lq, bpreg, elu)
        for j in range(C):
            O[i, j] = g[j] * activate_grad(a[j], act, act_param) * inv_scale
    if n_bad > 0:
        return np.nan
    return total * inv_scale
