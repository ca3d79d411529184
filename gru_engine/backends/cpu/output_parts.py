"""The cross-entropy output layer of a training step in parts that run on separate threads.

The ``U`` distinct items (slots) of a step's sampled columns are split into
``config.TRAIN_OUTPUT_PARTS`` contiguous ranges. Each part computes its scores, its share of
every row's softmax (max and sum over its slots), and after the rows' softmax is joined, its
slots' gradient, their ``Wy``/``By`` gradient rows and its partial ``dhc``; the partial ``dhc``
are summed. The split is fixed, not the thread count: results do not depend on ``n_threads``
(the parts run one after another on one thread). Parts on threads need BLAS on one thread
(:func:`gru_engine.threads.training_threads` decides which of the two gets the threads).

Softmax per slot: the columns of a slot share its activated score ``a_u``; column ``j`` adds
``exp(a_u - logq lq_j - m)`` to the row's softmax sum, so the slot adds ``exp(a_u + lw_u -
m)`` with ``lw_u = log sum_{j in u} exp(-logq lq_j)`` (:func:`~.losses.slot_log_weights`), and
its summed gradient is ``c p_u - c [u = slot of the positive]``: the softmax and gradients of
the columns over ``U`` slots (one exp per distinct item, no gather or scatter); only the
rounding differs from a softmax over the columns.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...config import LOG_EPS
from .blas import gemm_into
from .losses import LINEAR, activate, activate_grad, row_max_finite, row_sum, slot_log_weights
from .mathfuncs import cast_like, fexp
from .profile import P_CE_GRADS, P_CE_JOIN, P_CE_SCORES, tick


@njit(cache=True, error_model="numpy")
def copy_slot_rows(src, lo, hi, Wc, bc):
    """The gather of slots ``lo..hi-1``: ``Wc[u] = Wy[rowsY[u]]``, ``bc[u] = By[rowsY[u]]``;
    ``src`` = ``(Wy, By, rowsY)``."""
    Wy, By, rows = src
    H = Wc.shape[1]
    for u in range(lo, hi):
        c = rows[u]
        for k in range(H):  # an explicit loop: the slice assignment profiled 2x slower
            Wc[u, k] = Wy[c, k]
        bc[u] = By[c]


@njit(cache=True, error_model="numpy")
def _scores_and_sums_of_part(h, hc, Wc, bc, lw, cmap, B, U, P, O_flat, act, act_param, M, Z,
                             A_pos, bad, scratch, src, gather):
    """First pass of part ``h`` (slots ``h U // P`` to ``(h + 1) U // P``): with ``gather``
    its slots' rows first (:func:`copy_slot_rows` from ``src``, on the part's own thread:
    the rows are then in its core's cache for the products), its scores ``S_h = hc[:B] @
    Wc[lo:hi].T`` in ``O_flat[B lo:B hi]`` as ``(B, hi - lo)``, and per row ``i`` ``M[h, i] =
    max_u (a_iu + lw_u)``, ``Z[h, i] = sum_u exp(a_iu + lw_u - M[h, i])`` (float64; an empty
    part: -inf, 0), ``a = final_act(S + bc)``. With a linear final activation ``S_h`` is then
    overwritten with those exps. ``A_pos[i]``: ``a`` of row ``i``'s positive (slot
    ``cmap[i]``), by the part that has it; ``bad[h]``: the count of non-finite ``a + lw``
    (NaN or inf: the fast exp would hide them). scratch: (P, >=U) of the scores' dtype."""
    lo = h * U // P
    hi = (h + 1) * U // P
    n = hi - lo
    nb = 0
    if n == 0:
        for i in range(B):
            M[h, i] = -np.inf
            Z[h, i] = 0.0
    else:
        if gather:
            copy_slot_rows(src, lo, hi, Wc, bc)
        S = O_flat[B * lo:B * hi].reshape(B, n)
        gemm_into(hc[:B], Wc[lo:hi].T, S)
        r = scratch[h]
        bh, lwh = bc[lo:hi], lw[lo:hi]  # not bc[lo + u]: that index does not vectorise (3x)
        for i in range(B):
            Si = S[i]
            pos = cmap[i] - lo
            if act == LINEAR:
                if 0 <= pos < n:
                    A_pos[i] = Si[pos] + bh[pos]
                for u in range(n):
                    r[u] = Si[u] + bh[u] + lwh[u]
            else:
                if 0 <= pos < n:
                    A_pos[i] = activate(Si[pos] + bh[pos], act, act_param)
                for u in range(n):
                    r[u] = cast_like(r, activate(Si[u] + bh[u], act, act_param)) + lwh[u]
            m, nb_row = row_max_finite(r, n)
            nb += nb_row
            e = Si if act == LINEAR else r  # the raw scores stay for the second pass
            for u in range(n):
                e[u] = fexp(r[u] - m)
            M[h, i] = m
            Z[h, i] = row_sum(e, n)
    bad[h] = nb


@njit(cache=True, error_model="numpy")
def softmax_join(cmap, lq, B, logq, M, Z, A_pos, MM, CZ, CC):
    """Each row's softmax over all parts: ``MM[i]`` the max, the positive's probability
    ``p`` (column ``i``: activated score ``A_pos[i]``, ``lq[i]``), ``CC[i] = c = p / (p +
    LOG_EPS)``, ``CZ[i] = c / z``. Returns the sum over rows of ``-log(p + LOG_EPS)``."""
    P = M.shape[0]
    total = 0.0
    for i in range(B):
        m = M[0, i]
        for h in range(1, P):
            m = max(m, M[h, i])
        z = 0.0
        for h in range(P):
            if Z[h, i] > 0.0:
                z += Z[h, i] * np.exp(M[h, i] - m)
        t = A_pos[i] - logq * lq[i] if logq > 0.0 else A_pos[i]
        p = np.exp(t - m) / z
        c = p / (p + LOG_EPS)
        MM[i] = m
        CZ[i] = c / z
        CC[i] = c
        total += -np.log(p + LOG_EPS)
    return total


@njit(cache=True, error_model="numpy")
def _gradients_of_part(h, hc, Wc, bc, lw, cmap, B, U, P, O_flat, act, act_param, M, MM, CZ, CC,
                       inv_scale, GY, gBy, DH, scratch):
    """Second pass of part ``h``: its slots' ``dS = dL/dS`` (the softmax gradient of the
    columns of a slot summed, times ``inv_scale``) over its exps (linear final activation) or
    scores in ``O_flat``, ``gBy[lo:hi]`` (column sums, row by row), ``GY[lo:hi] = dS.T @
    hc[:B]`` and the partial ``DH[h, :B] = dS @ Wc[lo:hi]``."""
    lo = h * U // P
    hi = (h + 1) * U // P
    n = hi - lo
    if n == 0:
        DH[h, :B] = 0.0
    else:
        S = O_flat[B * lo:B * hi].reshape(B, n)
        r = scratch[h]
        bh, lwh, g = bc[lo:hi], lw[lo:hi], gBy[lo:hi]
        for u in range(n):
            g[u] = 0.0
        for i in range(B):
            Si = S[i]
            pos = cmap[i] - lo
            has_pos = 0 <= pos < n
            d_pos = cast_like(O_flat, 0.0)
            if act == LINEAR:  # Si holds exp(a + lw - M[h, i])
                f = cast_like(O_flat, CZ[i] * np.exp(M[h, i] - MM[i]))
                if has_pos:
                    d_pos = cast_like(O_flat, f * Si[pos] - CC[i]) * inv_scale
                for u in range(n):
                    Si[u] = f * Si[u] * inv_scale
            else:
                m = cast_like(O_flat, MM[i])
                cz = cast_like(O_flat, CZ[i])
                for u in range(n):
                    r[u] = activate(Si[u] + bh[u], act, act_param)
                if has_pos:
                    p = cast_like(O_flat, cz * fexp(r[pos] + lwh[pos] - m))
                    d_pos = cast_like(O_flat, p - CC[i]) * (activate_grad(r[pos], act, act_param)
                                                             * inv_scale)
                for u in range(n):
                    Si[u] = (cast_like(O_flat, cz * fexp(r[u] + lwh[u] - m))
                             * (activate_grad(r[u], act, act_param) * inv_scale))
            if has_pos:
                Si[pos] = d_pos
            for u in range(n):
                g[u] += Si[u]
        gemm_into(S.T, hc[:B], GY[lo:hi])
        gemm_into(S, Wc[lo:hi], DH[h, :B])


@njit(cache=True, error_model="numpy", parallel=True)
def run_parts(grads, hc, Wc, bc, lw, cmap, B, U, P, O_flat, act, act_param, M, Z, A_pos, bad,
              MM, CZ, CC, inv_scale, GY, gBy, DH, scratch, src, gather):
    """Every part ``h < P`` on the Numba threads: the first pass
    (:func:`_scores_and_sums_of_part`), or with ``grads`` the second
    (:func:`_gradients_of_part`). One parallel kernel for both passes: each parallel kernel
    costs over a second of compiling of its own. The part kernels are plain ones: the parallel
    loop stays small, which keeps Numba's parallel compilation short."""
    for h in prange(P):
        if grads:
            _gradients_of_part(np.int64(h), hc, Wc, bc, lw, cmap, B, U, P, O_flat, act,
                               act_param, M, MM, CZ, CC, inv_scale, GY, gBy, DH, scratch)
        else:
            _scores_and_sums_of_part(np.int64(h), hc, Wc, bc, lw, cmap, B, U, P, O_flat, act,
                                     act_param, M, Z, A_pos, bad, scratch, src, gather)

@njit(cache=True, error_model="numpy")
def cross_entropy_output(hc, dhc, Wc, bc, src, gather, cmap, lq, lw, B, C, U, P, O_flat, act,
                         act_param, logq, scale, GY, gBy, prof):
    """Scores, cross-entropy and gradients of the ``U`` slots in ``P`` parts: ``GY[:U]``,
    ``gBy[:U]`` the slots' gradient rows, ``dhc[:B]``. ``Wc[:U]``, ``bc[:U]``: the slots'
    rows, gathered by the parts from ``src = (Wy, By, rowsY)`` with ``gather``, else already
    there. ``lw`` (>=U,) gets the slots' log weights. Returns the step loss (sum over rows /
    ``scale``; NaN when a score is not finite). ``prof``: ``None`` or a profile
    (:mod:`.profile`)."""
    slot_log_weights(cmap, lq, C, U, logq, lw)
    dt = O_flat.dtype
    M = np.empty((P, B))
    Z = np.empty((P, B))
    bad = np.zeros(P, np.int64)
    scratch = np.empty((P, max(U, 1)), dt)
    A_pos = np.empty(B, dt)
    MM, CZ, CC = np.empty(B), np.empty(B), np.empty(B)
    DH = np.empty((P, B, hc.shape[1]), dt)
    inv_scale = cast_like(O_flat, 1.0 / scale)
    # np.bool_, not the literals: Numba would compile run_parts once per literal value
    run_parts(np.bool_(False), hc, Wc, bc, lw, cmap, B, U, P, O_flat, act, act_param, M, Z,
              A_pos, bad, MM, CZ, CC, inv_scale, GY, gBy, DH, scratch, src, gather)
    tick(prof, P_CE_SCORES)
    if bad.sum() > 0:
        return np.nan
    total = softmax_join(cmap, lq, B, logq, M, Z, A_pos, MM, CZ, CC)
    tick(prof, P_CE_JOIN)
    run_parts(np.bool_(True), hc, Wc, bc, lw, cmap, B, U, P, O_flat, act, act_param, M, Z,
              A_pos, bad, MM, CZ, CC, inv_scale, GY, gBy, DH, scratch, src, np.bool_(False))
    tick(prof, P_CE_GRADS)
    for i in range(B):
        for k in range(hc.shape[1]):
            dhc[i, k] = DH[0, i, k]
    for h in range(1, P):
        for i in range(B):
            for k in range(hc.shape[1]):
                dhc[i, k] += DH[h, i, k]
    tick(prof, P_CE_JOIN)
    return total / scale
