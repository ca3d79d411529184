"""CPU backend of FeatureSessionGRU (p-RNN): training epoch and inference step in Numba (the
scorer around the inference step is :class:`.cpu_scoring.FeatureScorer`).

Parameters live in flat arrays, so one compiled specialisation serves any number of subnets:
``theta`` (all dense GRU weights and combine weights), ``T`` (all embedding tables), ``Wy``
(n_items, Hc), ``By`` (n_items,). The layout tables say where each piece is: ``SI`` (S, N_SCOL)
int64, one row per subnet (columns ``S_*``), and ``LI`` (G, N_LCOL) int64, one row per GRU layer
of all subnets (columns ``L_*``); :func:`gru_engine.feature_model.build_layout` builds them.
Work buffers are flat too: a buffer of per-layer blocks stores block ``g`` as ``(bs, width)``
rows at ``bs * offset`` (:func:`_bv`).

One training step follows the ID-only backend (:mod:`gru_engine.backends.cpu`): columns
``[targets | shared negatives]``, dropout masks of the active subnets, every active subnet's
forward (input gather from its bag of table rows or raw feature values, GRU layers), the
combination (``concat`` or weighted ``sum``), the sampled loss, the backward of the output layer
and of the trained subnets, sparse row sums per item or table row, Adagrad + momentum. The GRU
kernels (``gru.py``), losses (``losses.py``), optimiser (``optim.py``), schedule
(``batching.py``) and sample store (``sampling.py``) are shared with the ID-only backend.
"""
from __future__ import annotations

import logging

import numpy as np
from numba import njit

from ..batching import schedule_advance
from ..gru import column_sums, dropout_mask, gru_backward, gru_forward, multiply_rows
from ..optim import adagrad_flat, adagrad_rows_1d, claim_row, release_rows
from ..sampling import SampleStore
from ..network import (K_DIRECT, K_RAW, L_BHN, L_BX, L_GOFF, L_H, L_HOFF, L_IN, L_STOFF, L_WH,
                       L_WX, S_A, S_C0, S_C1, S_D0, S_D1, S_GCAP, S_GOFF, S_IN, S_IPOFF, S_KIND,
                       S_L0, S_L1, S_ROFF, S_SOFF, S_TAB, S_TCOLS, S_TOFF, S_TROWS, S_WYC0,
                       S_XOFF, T_NONE, T_OWN, T_WY)
from .cpu import _add_bias, carry_hidden, epoch_start, output_forward_backward, step_columns

logger = logging.getLogger("gru_engine")


# ---------------------------------------------------------------------------------------------
# compiled step
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _v2(flat, off, rows, cols):
    """Row-major ``(rows, cols)`` view of ``flat[off:off + rows*cols]``."""
    return flat[off:off + rows * cols].reshape(rows, cols)


@njit(cache=True, error_model="numpy")
def _bv(buf, col_off, bs, cols):
    """``(bs, cols)`` view of a work buffer that stores blocks of ``bs`` rows; ``col_off`` is the
    block's column offset (sum of the widths before it)."""
    return buf[bs * col_off:bs * (col_off + cols)].reshape(bs, cols)


@njit(cache=True, error_model="numpy")
def _gather_input(s, SI, in_items, B, bs, indptr, indices, weights, T, Wy, Xf, M0f):
    """Subnet ``s``'s (dropped-out) input rows ``X[:B] = bag(item) * mask0``; returns X."""
    kind, tab, din = SI[s, S_KIND], SI[s, S_TAB], SI[s, S_IN]
    toff, tcols, ip0, wy0 = SI[s, S_TOFF], SI[s, S_TCOLS], SI[s, S_IPOFF], SI[s, S_WYC0]
    X = _bv(Xf, SI[s, S_XOFF], bs, din)
    M0 = _bv(M0f, SI[s, S_XOFF], bs, din)
    for i in range(B):
        it = in_items[i]
        for k in range(din):
            X[i, k] = 0.0
        for j in range(indptr[ip0 + it], indptr[ip0 + it + 1]):
            c = indices[j]
            w = weights[j]
            if kind == K_RAW:
                X[i, c] += w
            elif tab == T_WY:
                for k in range(din):
                    X[i, k] += w * Wy[c, wy0 + k]
            else:
                base = toff + c * tcols
                for k in range(din):
                    X[i, k] += w * T[base + k]
        for k in range(din):
            X[i, k] *= M0[i, k]
    return X


@njit(cache=True, error_model="numpy")
def subnet_forward(s, SI, LI, in_items, B, bs, indptr, indices, weights, T, Wy, theta,
                   Xf, M0f, HP, HO, Y, MK, GX, GH, GA):
    """Forward of subnet ``s`` for the first ``B`` rows: input gather, its GRU layers, outputs
    ``y = h' * mask`` per layer (flat per-layer buffers ``HP`` hprev, ``HO`` h', ``Y``, ``MK``
    masks, ``GX``/``GH``/``GA`` gate buffers; see :class:`FeatureTrainer`)."""
    X = _gather_input(s, SI, in_items, B, bs, indptr, indices, weights, T, Wy, Xf, M0f)
    l0, l1 = SI[s, S_L0], SI[s, S_L1]
    for g in range(l0, l1):
        H = LI[g, L_H]
        gx = _bv(GX, LI[g, L_GOFF], bs, 3 * H)
        bx = theta[LI[g, L_BX]:LI[g, L_BX] + 3 * H]
        if g == l0:
            if SI[s, S_KIND] == K_DIRECT:
                for i in range(B):
                    for k in range(3 * H):
                        gx[i, k] = X[i, k] + bx[k]
            else:
                np.dot(X[:B], _v2(theta, LI[g, L_WX], LI[g, L_IN], 3 * H), gx[:B])
                _add_bias(gx, bx, B)
        else:
            Hp = LI[g - 1, L_H]
            np.dot(_bv(Y, LI[g - 1, L_HOFF], bs, Hp)[:B],
                   _v2(theta, LI[g, L_WX], LI[g, L_IN], 3 * H), gx[:B])
            _add_bias(gx, bx, B)
        hp = _bv(HP, LI[g, L_HOFF], bs, H)
        ho = _bv(HO, LI[g, L_HOFF], bs, H)
        gru_forward(gx, hp, _v2(theta, LI[g, L_WH], H, 3 * H), theta[LI[g, L_BHN]:LI[g, L_BHN] + H],
                    _bv(GH, LI[g, L_GOFF], bs, 3 * H), _bv(GA, LI[g, L_GOFF], bs, 3 * H), ho, B)
        y = _bv(Y, LI[g, L_HOFF], bs, H)
        mk = _bv(MK, LI[g, L_HOFF], bs, H)
        for i in range(B):
            for k in range(H):
                y[i, k] = ho[i, k] * mk[i, k]


@njit(cache=True, error_model="numpy")
def combine_forward(SI, LI, active, B, bs, theta, Y, hc, sum_mode):
    """``hc[:B]`` = concatenation (or ``a_s``-weighted sum) of the active subnets' outputs;
    inactive subnets contribute zero."""
    for i in range(B):
        for k in range(hc.shape[1]):
            hc[i, k] = 0.0
    for s in range(SI.shape[0]):
        if not active[s]:
            continue
        g = SI[s, S_L1] - 1
        H = LI[g, L_H]
        y = _bv(Y, LI[g, L_HOFF], bs, H)
        c0 = SI[s, S_C0]
        a = theta[SI[s, S_A]] if sum_mode else 1.0
        for i in range(B):
            for k in range(H):
                hc[i, c0 + k] += a * y[i, k]


@njit(cache=True, error_model="numpy")
def _acc_bag(slot, rows, n, G, col0, ip0, indptr, indices, weights, in_items, B, DX):
    """``G[slot[c], col0:col0 + d] += w * DX[i]`` for every bag entry ``(c, w)`` of row ``i``'s
    item (``DX`` (>=B, d)); new rows are appended (``rows``) and zeroed over their full width.
    Returns the new row count."""
    d = DX.shape[1]
    for i in range(B):
        it = in_items[i]
        for j in range(indptr[ip0 + it], indptr[ip0 + it + 1]):
            c = indices[j]
            w = weights[j]
            u, n = claim_row(slot, rows, n, G, c)
            for k in range(d):
                G[u, col0 + k] += w * DX[i, k]
    return n


@njit(cache=True, error_model="numpy")
def subnet_backward(s, SI, LI, in_items, B, bs, indptr, indices, weights, theta, gtheta,
                    Xf, M0f, DXf, HP, Y, MK, GH, GA, DY, DGX, DGH, dhc, sum_mode,
                    slotT, rowsT, GT, nT, slotY, rowsY, GY, nY):
    """Gradients of subnet ``s`` from ``dhc`` (gradient w.r.t. the combined hidden state):
    dense ones into ``gtheta`` (its range ``S_D0:S_D1``, combine weight included), table rows
    into ``GT`` (own table; count in ``nT[s]``) or ``GY`` (constrained ID input). Returns the
    new ``nY``."""
    l0, l1 = SI[s, S_L0], SI[s, S_L1]
    gl = l1 - 1
    H = LI[gl, L_H]
    dy = _bv(DY, LI[gl, L_HOFF], bs, H)
    y = _bv(Y, LI[gl, L_HOFF], bs, H)
    c0 = SI[s, S_C0]
    if sum_mode:
        a = theta[SI[s, S_A]]
        da = 0.0
        for i in range(B):
            for k in range(H):
                dy[i, k] = a * dhc[i, c0 + k]
                da += dhc[i, c0 + k] * y[i, k]
        gtheta[SI[s, S_A]] = da
    else:
        for i in range(B):
            for k in range(H):
                dy[i, k] = dhc[i, c0 + k]
    din = SI[s, S_IN]
    X = _bv(Xf, SI[s, S_XOFF], bs, din)
    M0 = _bv(M0f, SI[s, S_XOFF], bs, din)
    DX = _bv(DXf, SI[s, S_XOFF], bs, din)
    kind, tab = SI[s, S_KIND], SI[s, S_TAB]
    for g in range(l1 - 1, l0 - 1, -1):
        H = LI[g, L_H]
        dyg = _bv(DY, LI[g, L_HOFF], bs, H)
        multiply_rows(dyg, _bv(MK, LI[g, L_HOFF], bs, H), B)
        hp = _bv(HP, LI[g, L_HOFF], bs, H)
        dgx = _bv(DGX, LI[g, L_GOFF], bs, 3 * H)
        dgh = _bv(DGH, LI[g, L_GOFF], bs, 3 * H)
        gru_backward(dyg, hp, _bv(GA, LI[g, L_GOFF], bs, 3 * H), _bv(GH, LI[g, L_GOFF], bs, 3 * H),
                     dgx, dgh, B)
        np.dot(hp[:B].T, dgh[:B], _v2(gtheta, LI[g, L_WH], H, 3 * H))
        column_sums(dgh, B, gtheta[LI[g, L_BHN]:LI[g, L_BHN] + H], 2 * H, H)
        column_sums(dgx, B, gtheta[LI[g, L_BX]:LI[g, L_BX] + 3 * H], 0, 3 * H)
        if g > l0:
            Hp = LI[g - 1, L_H]
            Wx = _v2(theta, LI[g, L_WX], Hp, 3 * H)
            np.dot(_bv(Y, LI[g - 1, L_HOFF], bs, Hp)[:B].T, dgx[:B],
                   _v2(gtheta, LI[g, L_WX], Hp, 3 * H))
            np.dot(dgx[:B], Wx.T, _bv(DY, LI[g - 1, L_HOFF], bs, Hp)[:B])
        else:
            if kind == K_DIRECT:
                for i in range(B):
                    for k in range(3 * H):
                        DX[i, k] = dgx[i, k]
            else:
                Wx = _v2(theta, LI[g, L_WX], din, 3 * H)
                np.dot(X[:B].T, dgx[:B], _v2(gtheta, LI[g, L_WX], din, 3 * H))
                if tab != T_NONE:
                    np.dot(dgx[:B], Wx.T, DX[:B])
    if tab == T_NONE:
        return nY
    multiply_rows(DX, M0, B)
    if tab == T_WY:
        # the constrained ID input (identity bag) is its own block of Wy: gradient rows are
        # full width, only that block is non-zero
        return _acc_bag(slotY, rowsY, nY, GY, SI[s, S_WYC0], SI[s, S_IPOFF], indptr, indices,
                        weights, in_items, B, DX)
    tc = SI[s, S_TCOLS]
    cap = SI[s, S_GCAP]
    nT[s] = _acc_bag(slotT[SI[s, S_SOFF]:SI[s, S_SOFF] + SI[s, S_TROWS]],
                     rowsT[SI[s, S_ROFF]:SI[s, S_ROFF] + cap], 0,
                     _v2(GT, SI[s, S_GOFF], cap, tc), 0, SI[s, S_IPOFF], indptr, indices,
                     weights, in_items, B, DX)
    return nY


@njit(cache=True, error_model="numpy")
def step_forward_backward(SI, LI, active, train, sum_mode, in_items, B, bs, indptr, indices,
                          weights, theta, gtheta, T, Wy, By, Xf, M0f, DXf, HP, HO, Y, MK, GX, GH,
                          GA, DY, DGX, DGH, hc, dhc, cols, C, Wc, bc, O_flat, dWc, dbc, lq,
                          ra, rb, rc, rs, loss, act, act_param, logq, bpreg, elu, scale,
                          slotT, rowsT, GT, nT, slotY, rowsY, GY, gBy, counts, dummy_mask):
    """Forward over the active subnets, sampled loss, and the gradients of the trained subnets
    and of the output layer. ``counts`` gets ``[n Wy rows, n output rows]``; table rows per
    subnet are in ``nT``. Slots stay set (release with :func:`step_update`). Returns the loss."""
    S = SI.shape[0]
    for s in range(S):
        nT[s] = 0
        if active[s]:
            subnet_forward(s, SI, LI, in_items, B, bs, indptr, indices, weights, T, Wy, theta,
                           Xf, M0f, HP, HO, Y, MK, GX, GH, GA)
    combine_forward(SI, LI, active, B, bs, theta, Y, hc, sum_mode)
    total, nY = output_forward_backward(hc, dhc, B, cols, C, Wy, By, Wc, bc, O_flat, dWc, dbc,
                                        lq, ra, rb, rc, rs, loss, act, act_param, logq, bpreg,
                                        elu, scale, slotY, rowsY, GY, gBy, dummy_mask)
    n_out = nY
    for s in range(S):
        if active[s] and train[s]:
            nY = subnet_backward(s, SI, LI, in_items, B, bs, indptr, indices, weights, theta,
                                 gtheta, Xf, M0f, DXf, HP, Y, MK, GH, GA, DY, DGX, DGH, dhc,
                                 sum_mode, slotT, rowsT, GT, nT, slotY, rowsY, GY, nY)
    counts[0] = nY
    counts[1] = n_out
    return total


@njit(cache=True, error_model="numpy")
def release_all(SI, slotT, rowsT, nT, slotY, rowsY, counts):
    """Reset every slot used by the last step."""
    release_rows(slotY, rowsY, counts[0])
    for s in range(SI.shape[0]):
        if nT[s] > 0:
            release_rows(slotT[SI[s, S_SOFF]:SI[s, S_SOFF] + SI[s, S_TROWS]],
                         rowsT[SI[s, S_ROFF]:SI[s, S_ROFF] + SI[s, S_GCAP]], nT[s])


@njit(cache=True, error_model="numpy")
def step_update(SI, active, train, sum_mode, freeze_out, theta, gtheta, acc_d, vel_d, T, acc_t,
                vel_t, Wy, acc_y, vel_y, By, acc_b, vel_b, slotT, rowsT, GT, nT, slotY, rowsY,
                GY, gBy, counts, lr, mom):
    """Adagrad + momentum: dense ranges and tables of the trained subnets; rows of ``Wy`` in the
    column blocks being trained (output rows: every active subnet's block, or only the trained
    ones' under ``freeze_out``; rows met only as constrained input: the ID block); ``By`` on the
    output rows. Releases the slots."""
    S = SI.shape[0]
    nY, n_out = counts[0], counts[1]
    for s in range(S):
        if not (active[s] and train[s]):
            continue
        d0, d1 = SI[s, S_D0], SI[s, S_D1]
        adagrad_flat(theta[d0:d1], gtheta[d0:d1], acc_d[d0:d1], vel_d[d0:d1], lr, mom)
        if SI[s, S_TAB] == T_OWN and nT[s] > 0:
            tc, toff, goff, roff = SI[s, S_TCOLS], SI[s, S_TOFF], SI[s, S_GOFF], SI[s, S_ROFF]
            for u in range(nT[s]):
                r = rowsT[roff + u]
                a, b = toff + r * tc, toff + (r + 1) * tc
                adagrad_flat(T[a:b], GT[goff + u * tc:goff + (u + 1) * tc], acc_t[a:b],
                             vel_t[a:b], lr, mom)
    for u in range(nY):
        r = rowsY[u]
        if sum_mode:
            if u < n_out or (active[0] and train[0] and SI[0, S_TAB] == T_WY):
                adagrad_flat(Wy[r], GY[u], acc_y[r], vel_y[r], lr, mom)
            continue
        for s in range(S):
            if not active[s]:
                continue
            if u < n_out:
                if freeze_out and not train[s]:
                    continue
            elif not (train[s] and SI[s, S_TAB] == T_WY):
                continue
            c0, c1 = SI[s, S_C0], SI[s, S_C1]
            adagrad_flat(Wy[r, c0:c1], GY[u, c0:c1], acc_y[r, c0:c1], vel_y[r, c0:c1], lr, mom)
    adagrad_rows_1d(By, acc_b, vel_b, rowsY, gBy, n_out, lr, mom)
    release_all(SI, slotT, rowsT, nT, slotY, rowsY, counts)


@njit(cache=True, error_model="numpy")
def _draw_masks(SI, LI, active, B, bs, M0f, MK, p_embed, p_hidden):
    """Inverted-dropout masks of the active subnets: input (one factor per row for one-hot
    input), then each layer's output."""
    for s in range(SI.shape[0]):
        if not active[s]:
            continue
        din = SI[s, S_IN]
        M0 = _bv(M0f, SI[s, S_XOFF], bs, din)
        if SI[s, S_KIND] == K_DIRECT:
            col = np.empty((bs, 1), M0.dtype)
            dropout_mask(col, B, p_embed)
            for i in range(B):
                for k in range(din):
                    M0[i, k] = col[i, 0]
        else:
            dropout_mask(M0, B, p_embed)
        for g in range(SI[s, S_L0], SI[s, S_L1]):
            dropout_mask(_bv(MK, LI[g, L_HOFF], bs, LI[g, L_H]), B, p_hidden)


@njit(cache=True, error_model="numpy")
def train_steps(max_steps, items, order, offsets, min_rows, sched, cur, end, reset, src, in_items,
                store, cdf, log_support, n_sample, sample_alpha, p_embed, p_hidden,
                SI, LI, active, train, interleave, freeze_out, sum_mode, indptr, indices, weights,
                theta, gtheta, acc_d, vel_d, T, acc_t, vel_t, Wy, acc_y, vel_y, By, acc_b, vel_b,
                Xf, M0f, DXf, HP, HO, Y, MK, GX, GH, GA, DY, DGX, DGH, hc, dhc,
                cols, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc, rs,
                loss, act, act_param, logq, bpreg, elu, batch_size, lr, mom,
                slotT, rowsT, GT, nT, slotY, rowsY, GY, gBy, counts, dummy_mask):
    """Up to ``max_steps`` steps (all when < 0) of the epoch started by
    :func:`~gru_engine.backends.cpu.epoch_start`. With ``interleave`` the trained subnet is
    ``sched[4] % S`` (global step count). Returns ``(sum of step_loss * rows, events, finite)``
    as the ID-only trainer."""
    S = SI.shape[0]
    G = LI.shape[0]
    bs = batch_size
    loss_sum = 0.0
    events = 0
    steps = 0
    n_rows = sched[0]
    next_sess = sched[1]
    store_pos = sched[2]
    finite = True
    while n_rows > 0 and (max_steps < 0 or steps < max_steps):
        B = n_rows
        if interleave:
            k = sched[4] % S
            for s in range(S):
                train[s] = s == k
        C, store_pos = step_columns(items, cur, B, in_items, cols, store, store_pos, cdf,
                                    n_sample, sample_alpha, log_support, loss, logq, lq)
        _draw_masks(SI, LI, active, B, bs, M0f, MK, p_embed, p_hidden)
        step_loss = step_forward_backward(
            SI, LI, active, train, sum_mode, in_items, B, bs, indptr, indices, weights, theta,
            gtheta, T, Wy, By, Xf, M0f, DXf, HP, HO, Y, MK, GX, GH, GA, DY, DGX, DGH, hc, dhc,
            cols, C, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc, rs, loss, act, act_param, logq,
            bpreg, elu, float(batch_size), slotT, rowsT, GT, nT, slotY, rowsY, GY, gBy, counts,
            dummy_mask)
        if not np.isfinite(step_loss):
            release_all(SI, slotT, rowsT, nT, slotY, rowsY, counts)
            finite = False
            break
        step_update(SI, active, train, sum_mode, freeze_out, theta, gtheta, acc_d, vel_d, T,
                    acc_t, vel_t, Wy, acc_y, vel_y, By, acc_b, vel_b, slotT, rowsT, GT, nT,
                    slotY, rowsY, GY, gBy, counts, lr, mom)
        loss_sum += step_loss * B
        events += B
        steps += 1
        sched[4] += 1
        n_rows, next_sess = schedule_advance(order, offsets, n_rows, next_sess, min_rows,
                                             cur, end, reset, src)
        for g in range(G):
            H = LI[g, L_H]
            carry_hidden(_bv(HP, LI[g, L_HOFF], bs, H), _bv(Y, LI[g, L_HOFF], bs, H), reset, src,
                         n_rows)
    sched[0] = n_rows
    sched[1] = next_sess
    sched[2] = store_pos
    sched[3] += steps
    return loss_sum, events, finite


@njit(cache=True, error_model="numpy", nogil=True)
def infer_step(SI, LI, active, sum_mode, rows, items, new_session, state, indptr, indices,
               weights, theta, T, Wy, Xf, M0f, HP, HO, Y, MK, GX, GH, GA, hc_aug):
    """Inference step (no dropout: ``M0f``, ``MK`` all ones) for ``R = len(rows)`` live sessions.

    state: (n_slots, sum of layer sizes) float32, layer ``g`` in columns ``L_STOFF``..; rows are
    gathered (zero where ``new_session``), stepped and scattered back. ``hc_aug[:R]`` gets
    ``[combined hidden | 1]``. Releases the GIL: calls on disjoint ``rows`` with their own
    buffers may run on separate threads.
    """
    R = len(rows)
    bs = hc_aug.shape[0]
    for g in range(LI.shape[0]):
        H = LI[g, L_H]
        st0 = LI[g, L_STOFF]
        hp = _bv(HP, LI[g, L_HOFF], bs, H)
        for i in range(R):
            if new_session[i]:
                hp[i, :] = 0.0
            else:
                hp[i, :] = state[rows[i], st0:st0 + H]
    for s in range(SI.shape[0]):
        subnet_forward(s, SI, LI, items, R, bs, indptr, indices, weights, T, Wy, theta,
                       Xf, M0f, HP, HO, Y, MK, GX, GH, GA)
    Hc = hc_aug.shape[1] - 1
    hc = hc_aug[:, :Hc]
    combine_forward(SI, LI, active, R, bs, theta, Y, hc, sum_mode)
    for i in range(R):
        hc_aug[i, Hc] = 1.0
    for g in range(LI.shape[0]):
        H = LI[g, L_H]
        st0 = LI[g, L_STOFF]
        y = _bv(Y, LI[g, L_HOFF], bs, H)
        for i in range(R):
            state[rows[i], st0:st0 + H] = y[i, :]


# ---------------------------------------------------------------------------------------------
# trainer
# ---------------------------------------------------------------------------------------------
def _bag_caps(SI, indptr, batch_size: int, n_items: int) -> None:
    """Fill the table-gradient capacities/offsets (``S_GCAP``, ``S_GOFF``, ``S_ROFF``) in place:
    a step touches at most ``batch_size * longest bag`` rows of a subnet's table."""
    g_off = r_off = 0
    for s in range(SI.shape[0]):
        if SI[s, S_TAB] != T_OWN:
            continue
        ip = indptr[SI[s, S_IPOFF]:SI[s, S_IPOFF] + n_items + 1]
        longest = int(np.diff(ip).max()) if n_items > 0 else 0
        cap = int(min(SI[s, S_TROWS], batch_size * max(longest, 1)))
        SI[s, S_GCAP], SI[s, S_GOFF], SI[s, S_ROFF] = cap, g_off, r_off
        g_off += cap * SI[s, S_TCOLS]
        r_off += cap


class FeatureTrainer:
    """Optimiser state, sample store, schedule and work buffers of one fit (allocated once);
    :meth:`run` executes training steps in compiled code.

    params: dict with ``theta``, ``T``, ``Wy``, ``By`` (updated in place) and the layout arrays
    ``SI``, ``LI``, ``indptr``, ``indices``, ``weights`` of
    :func:`~gru_engine.feature_model.build_layout`; arrays of one float dtype (float32 in
    training, float64 in gradient checks). ``plan``: optional per-epoch phases ``(active, train,
    interleave, freeze_out)`` (:func:`~gru_engine.feature_model.epoch_plan`) applied by
    :meth:`start_epoch`; without it the phase is whatever :meth:`set_phase` set last (default:
    all subnets run and train). ``names``: subnet names for the log.

    Flat work buffers (``bs`` = batch_size, ``X`` = sum of input widths, ``W`` = sum of all
    layers' hidden sizes; blocks read through ``_bv``): ``Xf``, ``M0f``, ``DXf`` (bs * X,)
    inputs, input dropout masks, input gradients; ``HP``, ``HO``, ``Y``, ``MK``, ``DY`` (bs * W,)
    previous hidden states, new states, dropped-out outputs, output masks, output gradients;
    ``GX``, ``GH``, ``GA``, ``DGX``, ``DGH`` (3 * bs * W,) gate buffers of ``gru.py``; ``hc``,
    ``dhc`` (bs, Hc) combined state and its gradient. Sparse accumulators: ``slotY``/``rowsY``/
    ``GY``/``gBy`` for rows of Wy/By, ``slotT``/``rowsT``/``GT``/``nT`` for table rows per subnet.
    """

    def __init__(self, params: dict, n_items: int, support, batch_size: int, n_sample: int,
                 sample_alpha: float, sample_store_size: int, loss: int, act: int,
                 act_param: float, logq: float, bpreg: float, elu: float, lr: float, mom: float,
                 p_embed: float, p_hidden: float, sum_mode: bool, plan=None, names=None):
        p = params
        dt = p["Wy"].dtype
        bs = int(batch_size)
        cmax = bs + n_sample
        SI = p["SI"].copy()
        _bag_caps(SI, p["indptr"], bs, n_items)
        self.SI, self.LI = SI, p["LI"]
        S = SI.shape[0]
        self.params = p
        self.batch_size = bs
        self.n_sample, self.sample_alpha = n_sample, sample_alpha
        self.hyper = (loss, act, act_param, logq, bpreg, elu, float(bs), lr, mom)
        self.p_embed, self.p_hidden = p_embed, p_hidden
        self.sum_mode = bool(sum_mode)
        self.min_rows = 2 if n_sample == 0 else 1
        self.store = SampleStore(support, sample_alpha, n_sample, sample_store_size)
        self.log_support = np.log(np.maximum(np.asarray(support), 1)).astype(dt)
        self.Hc = p["Wy"].shape[1]
        sumH = int(self.LI[:, L_H].sum())
        xw = int(SI[:, S_IN].sum())
        z = lambda n: np.zeros(n, dt)
        nth = len(p["theta"])
        self.gtheta, self.acc_d, self.vel_d = z(nth), z(nth), z(nth)
        self.acc_t, self.vel_t = np.zeros_like(p["T"]), np.zeros_like(p["T"])
        self.acc_y, self.vel_y = np.zeros_like(p["Wy"]), np.zeros_like(p["Wy"])
        self.acc_b, self.vel_b = np.zeros_like(p["By"]), np.zeros_like(p["By"])
        self.Xf, self.M0f, self.DXf = z(bs * xw), np.ones(bs * xw, dt), z(bs * xw)
        self.HP, self.HO, self.Y, self.DY = z(bs * sumH), z(bs * sumH), z(bs * sumH), z(bs * sumH)
        self.MK = np.ones(bs * sumH, dt)
        self.GX, self.GH, self.GA = z(3 * bs * sumH), z(3 * bs * sumH), z(3 * bs * sumH)
        self.DGX, self.DGH = z(3 * bs * sumH), z(3 * bs * sumH)
        self.hc, self.dhc = np.zeros((bs, self.Hc), dt), np.zeros((bs, self.Hc), dt)
        self.cols = np.zeros(cmax, np.int32)
        self.Wc, self.dWc = np.zeros((cmax, self.Hc), dt), np.zeros((cmax, self.Hc), dt)
        self.bc, self.dbc, self.lq = z(cmax), z(cmax), z(cmax)
        self.O_flat = z(bs * cmax)
        self.ra, self.rb, self.rc = z(cmax), z(cmax), z(cmax)
        self.rs = np.zeros((2, cmax), dt)
        own = SI[:, S_TAB] == T_OWN
        self.slotT = np.full(max(int(SI[own, S_TROWS].sum()), 1), -1, np.int32)
        self.rowsT = np.zeros(max(int(SI[own, S_GCAP].sum()), 1), np.int32)
        self.GT = z(max(int((SI[own, S_GCAP] * SI[own, S_TCOLS]).sum()), 1))
        self.nT = np.zeros(S, np.int64)
        self.slotY = np.full(n_items, -1, np.int32)
        self.rowsY = np.zeros(cmax + bs, np.int32)
        self.GY = np.zeros((cmax + bs, self.Hc), dt)
        self.gBy = z(cmax + bs)
        self.counts = np.zeros(2, np.int64)
        self.dummy_mask = np.ones((1, 1), dt)
        self.sched = np.zeros(5, np.int64)  # n_rows, next_sess, store_pos, steps, global steps
        self.cur, self.end = np.zeros(bs, np.int64), np.zeros(bs, np.int64)
        self.reset, self.src = np.zeros(bs, np.bool_), np.zeros(bs, np.int64)
        self.in_items = np.zeros(bs, np.int32)
        self.active = np.ones(S, np.bool_)
        self.train = np.ones(S, np.bool_)
        self.interleave = False
        self.freeze_out = False
        self.items = self.order = self.offsets = None
        self.plan, self.epoch = plan, 0
        self.names = list(names) if names is not None else [str(s) for s in range(S)]

    def set_phase(self, active, train, interleave: bool = False, freeze_out: bool = False):
        """Which subnets run (``active``) and learn (``train``) from now on."""
        self.active[:] = active
        self.train[:] = train
        self.interleave = bool(interleave)
        self.freeze_out = bool(freeze_out)

    def fill_store(self):
        """Draw the negative-sample store (Numba's generator: seed it first)."""
        self.store.fill()
        self.sched[2] = self.store.pos

    def host_params(self) -> dict:
        """The trained parameters (host arrays, updated in place during training)."""
        return self.params

    def start_epoch(self, items, order, offsets):
        """items: (n_events,) int32; order: (n_sessions,) int64 visiting order; offsets: CSR.
        With a ``plan``, the epoch's phase is ``plan[epoch]`` (see :meth:`set_phase`)."""
        if self.plan is not None:
            self.set_phase(*self.plan[self.epoch])
            logger.info("epoch %d trains subnets %s", self.epoch + 1,
                        [n for n, t in zip(self.names, self.train) if t])
            self.epoch += 1
        self.items, self.order, self.offsets = items, order, offsets
        epoch_start(order, offsets, self.batch_size, self.min_rows, self.sched, self.cur,
                    self.end, self.reset, self.src, (self.HP,))

    def rows_left(self) -> bool:
        return bool(self.sched[0] > 0)

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch).
        Returns ``(sum of step_loss * rows, events, finite)``."""
        p = self.params
        loss, act, act_param, logq, bpreg, elu, scale, lr, mom = self.hyper
        return train_steps(
            max_steps, self.items, self.order, self.offsets, self.min_rows, self.sched, self.cur,
            self.end, self.reset, self.src, self.in_items, self.store.samples, self.store.cdf,
            self.log_support, self.n_sample, self.sample_alpha, self.p_embed, self.p_hidden,
            self.SI, self.LI, self.active, self.train, self.interleave, self.freeze_out,
            self.sum_mode, p["indptr"], p["indices"], p["weights"], p["theta"], self.gtheta,
            self.acc_d, self.vel_d, p["T"], self.acc_t, self.vel_t, p["Wy"], self.acc_y,
            self.vel_y, p["By"], self.acc_b, self.vel_b, self.Xf, self.M0f, self.DXf, self.HP,
            self.HO, self.Y, self.MK, self.GX, self.GH, self.GA, self.DY, self.DGX, self.DGH,
            self.hc, self.dhc, self.cols, self.Wc, self.bc, self.O_flat, self.dWc, self.dbc,
            self.lq, self.ra, self.rb, self.rc, self.rs, loss, act, act_param, logq, bpreg, elu,
            self.batch_size, lr, mom, self.slotT, self.rowsT, self.GT, self.nT, self.slotY,
            self.rowsY, self.GY, self.gBy, self.counts, self.dummy_mask)

    def forward_backward(self, in_items, B, cols, C):
        """One step's loss and gradients without an update (gradient checks), with the current
        ``HP`` (previous hidden states), masks ``M0f``/``MK`` and ``lq``. Returns ``(loss,
        grads)``; ``grads`` holds full-size ``theta``, ``T``, ``Wy``, ``By`` gradients (zero for
        parameters that are frozen or not reached)."""
        p = self.params
        loss, act, act_param, logq, bpreg, elu, scale, lr, mom = self.hyper
        self.in_items[:B] = in_items
        self.cols[:C] = cols
        self.gtheta[:] = 0.0
        total = step_forward_backward(
            self.SI, self.LI, self.active, self.train, self.sum_mode, self.in_items, B,
            self.batch_size, p["indptr"], p["indices"], p["weights"], p["theta"], self.gtheta,
            p["T"], p["Wy"], p["By"], self.Xf, self.M0f, self.DXf, self.HP, self.HO, self.Y,
            self.MK, self.GX, self.GH, self.GA, self.DY, self.DGX, self.DGH, self.hc, self.dhc,
            self.cols, C, self.Wc, self.bc, self.O_flat, self.dWc, self.dbc, self.lq, self.ra,
            self.rb, self.rc, self.rs, loss, act, act_param, logq, bpreg, elu, scale, self.slotT,
            self.rowsT, self.GT, self.nT, self.slotY, self.rowsY, self.GY, self.gBy, self.counts,
            self.dummy_mask)
        grads = {"theta": np.zeros_like(p["theta"]), "T": np.zeros_like(p["T"]),
                 "Wy": np.zeros_like(p["Wy"]), "By": np.zeros_like(p["By"])}
        SI = self.SI
        for s in range(SI.shape[0]):
            if self.active[s] and self.train[s]:
                d0, d1 = SI[s, S_D0], SI[s, S_D1]
                grads["theta"][d0:d1] = self.gtheta[d0:d1]
            if SI[s, S_TAB] == T_OWN:
                tc, toff, goff, roff = SI[s, S_TCOLS], SI[s, S_TOFF], SI[s, S_GOFF], SI[s, S_ROFF]
                for u in range(self.nT[s]):
                    r = self.rowsT[roff + u]
                    g0 = goff + u * tc
                    grads["T"][toff + r * tc:toff + (r + 1) * tc] += self.GT[g0:g0 + tc]
        nY, n_out = self.counts
        for u in range(nY):
            grads["Wy"][self.rowsY[u]] += self.GY[u]
        for u in range(n_out):
            grads["By"][self.rowsY[u]] += self.gBy[u]
        release_all(SI, self.slotT, self.rowsT, self.nT, self.slotY, self.rowsY, self.counts)
        return total, grads


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------
