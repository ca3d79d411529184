"""GRU layer kernels (forward, hand-written backward) and dropout masks, compiled with Numba.

Shared layout (see the project brief): gate order ``[r | z | n]`` along the 3H axis,
``gx = x @ Wx + bx``, ``gh = h @ Wh``, ``r = sigmoid(gx_r + gh_r)``, ``z = sigmoid(gx_z + gh_z)``,
``n = tanh(gx_n + r * (gh_n + bhn))``, ``h' = (1 - z) * n + z * h``.
Kernels are dtype-generic (float32 in training, float64 in gradient checks); every buffer has at
least ``B`` rows and only the first ``B`` are used. Gate math runs in the arrays' precision with
the vectorisable exp of :mod:`gru_engine.mathfuncs`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .blas import gemm_into
from .mathfuncs import cast_like, fsigmoid, ftanh


@njit(cache=True, error_model="numpy")
def gru_forward(gx, h, bhn, gh, gates, hout, B):
    """One GRU step for the first ``B`` rows.

    gx:    (>=B, 3H) input pre-activations ``x @ Wx + bx`` (read)
    h:     (>=B, H) previous hidden state, zero rows for sessions that start now (read)
    bhn:   (H,)
    gh:    (>=B, 3H) in: ``h @ Wh`` (the caller's GEMM); out: its n-block replaced by
           ``a = gh_n + bhn``
    gates: (>=B, 3H) out: ``[r | z | n]``
    hout:  (>=B, H) out: new hidden state (before dropout)
    """
    H = h.shape[1]
    one = cast_like(h, 1.0)
    for i in range(B):
        # row views and separate simple loops: each loop vectorises (a fused one does not)
        gxi, ghi, gi, hi, ho = gx[i], gh[i], gates[i], h[i], hout[i]
        for j in range(2 * H):
            gi[j] = fsigmoid(gxi[j] + ghi[j])
        for j in range(H):
            a = ghi[2 * H + j] + bhn[j]
            ghi[2 * H + j] = a
            gi[2 * H + j] = gxi[2 * H + j] + gi[j] * a
        for j in range(H):
            gi[2 * H + j] = ftanh(gi[2 * H + j])
        for j in range(H):
            z = gi[H + j]
            ho[j] = (one - z) * gi[2 * H + j] + z * hi[j]


@njit(cache=True, error_model="numpy", parallel=True)
def gemm_pair(A0, B0, C0, A1, B1, C1):
    """``C0 = A0 @ B0`` and ``C1 = A1 @ B1`` side by side, one per Numba thread (a layer's
    input and hidden products ``x Wx``, ``h Wh``: independent). The same BLAS calls as one
    after the other (:func:`~.blas.gemm_into`), so the same results; for training with BLAS on one thread
    (:func:`gru_engine.threads.training_threads`), where each product would leave the other
    thread idle."""
    for t in prange(2):
        if t == 0:
            gemm_into(A0, B0, C0)
        else:
            gemm_into(A1, B1, C1)


@njit(cache=True, error_model="numpy")
def gru_backward(dh, h, gates, gh, dgx, dgh, B):
    """Backward of :func:`gru_forward` through the gates (previous state held constant).

    dh:  (>=B, H) gradient w.r.t. the step's output ``h'`` (before dropout)
    h, gates, gh: as left by :func:`gru_forward`
    dgx: (>=B, 3H) out: gradient w.r.t. ``gx`` (so ``dWx = x^T dgx``, ``dbx = sum dgx``)
    dgh: (>=B, 3H) out: gradient w.r.t. ``[gh_r | gh_z | a]`` (so ``dWh = h^T dgh``,
         ``dbhn = sum dgh[:, 2H:]``)
    """
    H = h.shape[1]
    one = cast_like(h, 1.0)
    for i in range(B):
        for j in range(H):
            r = gates[i, j]
            z = gates[i, H + j]
            n = gates[i, 2 * H + j]
            d = dh[i, j]
            dn = d * (one - z) * (one - n * n)
            dz = d * (h[i, j] - n) * z * (one - z)
            dr = dn * gh[i, 2 * H + j] * r * (one - r)
            dgx[i, j] = dr
            dgx[i, H + j] = dz
            dgx[i, 2 * H + j] = dn
            dgh[i, j] = dr
            dgh[i, H + j] = dz
            dgh[i, 2 * H + j] = dn * r


@njit(cache=True, error_model="numpy")
def column_sums(D, B, out, col0, ncols):
    """``out[k] = sum_{i<B} D[i, col0 + k]`` for ``k < ncols``."""
    for k in range(ncols):
        out[k] = 0.0
    for i in range(B):
        for k in range(ncols):
            out[k] += D[i, col0 + k]


@njit(cache=True, error_model="numpy")
def dropout_mask(mask, B, p):
    """Fill ``mask[:B]`` with inverted-dropout factors: 0 with probability ``p``, else 1/(1-p).

    Draws ``B * mask.shape[1]`` uniforms from Numba's generator (row-major) when ``p > 0``;
    draws nothing when ``p == 0`` (all ones), so the random stream does not depend on unused
    dropout.
    """
    if p <= 0.0:
        mask[:B] = 1.0
        return
    keep = 1.0 / (1.0 - p)
    for i in range(B):
        for j in range(mask.shape[1]):
            mask[i, j] = 0.0 if np.random.random() < p else keep


@njit(cache=True, error_model="numpy")
def multiply_rows(X, M, B):
    """``X[:B] *= M[:B]`` elementwise."""
    for i in range(B):
        for j in range(X.shape[1]):
            X[i, j] *= M[i, j]
