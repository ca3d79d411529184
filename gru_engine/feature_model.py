"""FeatureSessionGRU: parallel GRU subnets over item ids and item features (p-RNN).

Hidasi, Quadrana, Karatzoglou, Tikk, "Parallel Recurrent Neural Network Architectures for
Feature-rich Session-based Recommendations" (RecSys 2016). Every input source gets its own GRU
subnet (one or more layers): the ID subnet reads the item as GRU4Rec does (one-hot, separate
embedding, or constrained: its own block of ``Wy``), a feature subnet reads the current item's
feature vector (:mod:`gru_engine.features`). The subnets' last hidden states are combined
(``concat``, or ``sum``: a learned weight per subnet) and fed to the shared sampled output layer
``Wy`` (n_items, H_comb), ``By`` as in GRU4Rec; losses, negative sampling, session-parallel
batching and Adagrad+momentum are GRU4Rec's (the kernels of ``gru.py``, ``losses.py``,
``optim.py``, ``batching.py``, ``sampling.py`` are reused). Every subnet's hidden state is reset
at session boundaries.

Training strategies (``strategy``):
- ``simultaneous``: all subnets every step;
- ``alternating``: one subnet per epoch in turn (ID first); the others run forward frozen; the
  output layer trains every epoch;
- ``residual``: subnet ``k`` trains on the residual of the frozen subnets ``0..k-1`` (its own
  output block added to their scores; later subnets are off); the ``n_epochs`` epochs are split
  into one block of consecutive epochs per subnet (the remainder goes to the last); only the
  trained subnet's output block of ``Wy`` is updated (``By`` always); needs ``combine='concat'``;
- ``interleaved``: as alternating, but the trained subnet changes every mini-batch.

``architecture='id'`` is plain GRU4Rec: it trains exactly as :class:`~gru_engine.model.SessionGRU`
(item features are ignored). Dropout: ``dropout_p_embed`` on every subnet's input vector,
``dropout_p_hidden`` on every layer's output.

Parameters live in flat arrays (one compiled specialisation whatever the number of subnets):
``params_['theta']`` all dense GRU weights and combine weights, ``params_['T']`` all embedding
tables, ``Wy``, ``By``; the layout tables ``params_['SI']`` (per subnet) and ``params_['LI']``
(per layer) say where each piece is; :meth:`FeatureSessionGRU.subnet_params` gives views.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import numpy as np
from numba import njit

from . import params as hp
from .batching import schedule_advance, schedule_start, session_order
from .data import ItemIndex
from .exceptions import ModelFitError
from .features import RAW, encode_item_features, validate_item_features
from .gru import column_sums, dropout_mask, gru_backward, gru_forward, multiply_rows
from .losses import CROSS_ENTROPY, activate, loss_forward_backward
from .model import SessionGRU, _progress_bar, _thread_limit
from .optim import accumulate_rows, accumulate_rows_1d, adagrad_flat, adagrad_rows_1d, release_rows
from .sampling import SampleStore, draw, seed_numba

logger = logging.getLogger("gru_engine")

ARCHITECTURES = ("id", "parallel", "feature")
COMBINES = ("concat", "sum")
STRATEGIES = ("simultaneous", "alternating", "residual", "interleaved")
FORMAT = "gru_engine.FeatureSessionGRU"
FORMAT_VERSION = 1

# subnet input kinds
K_RAW, K_BAG, K_DIRECT = 0, 1, 2
# table sources
T_NONE, T_OWN, T_WY = -1, 0, 1
# columns of the (S, N_SCOL) subnet layout table
(S_KIND, S_TAB, S_TOFF, S_TROWS, S_TCOLS, S_IN, S_IPOFF, S_L0, S_L1, S_C0, S_C1, S_A, S_D0,
 S_D1, S_XOFF, S_GOFF, S_GCAP, S_ROFF, S_SOFF, S_WYC0, N_SCOL) = range(21)
# columns of the (G, N_LCOL) layer layout table
L_H, L_IN, L_WX, L_BX, L_WH, L_BHN, L_HOFF, L_GOFF, L_STOFF, N_LCOL = range(10)


# ---------------------------------------------------------------------------------------------
# compiled step
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _v2(flat, off, rows, cols):
    """Row-major ``(rows, cols)`` view of ``flat[off:off + rows*cols]``."""
    return flat[off:off + rows * cols].reshape(rows, cols)


@njit(cache=True)
def _bv(buf, col_off, bs, cols):
    """``(bs, cols)`` view of a work buffer that stores blocks of ``bs`` rows; ``col_off`` is the
    block's column offset (sum of the widths before it)."""
    return buf[bs * col_off:bs * (col_off + cols)].reshape(bs, cols)


@njit(cache=True)
def _add_bias(X, b, B):
    for i in range(B):
        for k in range(X.shape[1]):
            X[i, k] += b[k]


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
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


@njit(cache=True)
def _acc_bag(slot, rows, n, G, ip0, indptr, indices, weights, in_items, B, DX):
    """``G[slot[c]] += w * DX[i]`` for every bag entry ``(c, w)`` of row ``i``'s item; new rows
    are appended (``rows``) and zeroed. Returns the new row count."""
    d = DX.shape[1]
    for i in range(B):
        it = in_items[i]
        for j in range(indptr[ip0 + it], indptr[ip0 + it + 1]):
            c = indices[j]
            w = weights[j]
            u = slot[c]
            if u < 0:
                u = n
                slot[c] = u
                rows[u] = c
                for k in range(G.shape[1]):
                    G[u, k] = 0.0
                n += 1
            for k in range(d):
                G[u, k] += w * DX[i, k]
    return n


@njit(cache=True)
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
            np.dot(_bv(Y, LI[g - 1, L_HOFF], bs, Hp)[:B].T, dgx[:B], _v2(gtheta, LI[g, L_WX], Hp, 3 * H))
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
        # the constrained ID input is its own block of Wy: gradient rows are full width,
        # only that block is non-zero
        wy0 = SI[s, S_WYC0]
        d = din
        for i in range(B):
            it = in_items[i]
            u = slotY[it]
            if u < 0:
                u = nY
                slotY[it] = u
                rowsY[u] = it
                for k in range(GY.shape[1]):
                    GY[u, k] = 0.0
                nY += 1
            for k in range(d):
                GY[u, wy0 + k] += DX[i, k]
        return nY
    tc = SI[s, S_TCOLS]
    cap = SI[s, S_GCAP]
    nT[s] = _acc_bag(slotT[SI[s, S_SOFF]:SI[s, S_SOFF] + SI[s, S_TROWS]],
                     rowsT[SI[s, S_ROFF]:SI[s, S_ROFF] + cap], 0,
                     _v2(GT, SI[s, S_GOFF], cap, tc), SI[s, S_IPOFF], indptr, indices, weights,
                     in_items, B, DX)
    return nY


@njit(cache=True)
def step_forward_backward(SI, LI, active, train, sum_mode, in_items, B, bs, indptr, indices,
                          weights, theta, gtheta, T, Wy, By, Xf, M0f, DXf, HP, HO, Y, MK, GX, GH,
                          GA, DY, DGX, DGH, hc, dhc, cols, C, Wc, bc, O_flat, dWc, dbc, lq,
                          ra, rb, rc, loss, act, act_param, logq, bpreg, elu, scale,
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
    Hc = hc.shape[1]
    for j in range(C):
        c = cols[j]
        for k in range(Hc):
            Wc[j, k] = Wy[c, k]
        bc[j] = By[c]
    O = O_flat[:B * C].reshape(B, C)
    np.dot(hc[:B], Wc[:C].T, O)
    for i in range(B):
        for j in range(C):
            O[i, j] += bc[j]
    total = loss_forward_backward(O, B, C, loss, act, act_param, logq, lq, bpreg, elu, scale,
                                  ra, rb, rc)
    np.dot(O.T, hc[:B], dWc[:C])
    column_sums(O, B, dbc, 0, C)
    np.dot(O, Wc[:C], dhc[:B])
    nY = accumulate_rows(slotY, rowsY, 0, GY, cols, dWc, C, dummy_mask, False)
    n_out = nY
    gBy[:n_out] = 0.0
    accumulate_rows_1d(slotY, gBy, cols, dbc, C)
    for s in range(S):
        if active[s] and train[s]:
            nY = subnet_backward(s, SI, LI, in_items, B, bs, indptr, indices, weights, theta,
                                 gtheta, Xf, M0f, DXf, HP, Y, MK, GH, GA, DY, DGX, DGH, dhc,
                                 sum_mode, slotT, rowsT, GT, nT, slotY, rowsY, GY, nY)
    counts[0] = nY
    counts[1] = n_out
    return total


@njit(cache=True)
def release_all(SI, slotT, rowsT, nT, slotY, rowsY, counts):
    """Reset every slot used by the last step."""
    release_rows(slotY, rowsY, counts[0])
    for s in range(SI.shape[0]):
        if nT[s] > 0:
            release_rows(slotT[SI[s, S_SOFF]:SI[s, S_SOFF] + SI[s, S_TROWS]],
                         rowsT[SI[s, S_ROFF]:SI[s, S_ROFF] + SI[s, S_GCAP]], nT[s])


@njit(cache=True)
def step_update(SI, active, train, sum_mode, freeze_out, theta, gtheta, acc_d, vel_d, T, acc_t,
                vel_t, Wy, acc_y, vel_y, By, acc_b, vel_b, slotT, rowsT, GT, nT, slotY, rowsY,
                GY, gBy, counts, lr, mom):
    """Adagrad + momentum: dense ranges and tables of the trained subnets; rows of ``Wy`` in the
    column blocks being trained (output rows: every active subnet's block, or only the trained
    ones' under ``freeze_out``; rows met only as constrained input: the ID block); ``By`` on the
    output rows. Releases the slots."""
    S = SI.shape[0]
    Hc = Wy.shape[1]
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


@njit(cache=True)
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


@njit(cache=True)
def train_steps(max_steps, items, order, offsets, min_rows, sched, cur, end, reset, src, in_items,
                store, cdf, log_support, n_sample, sample_alpha, p_embed, p_hidden,
                SI, LI, active, train, interleave, freeze_out, sum_mode, indptr, indices, weights,
                theta, gtheta, acc_d, vel_d, T, acc_t, vel_t, Wy, acc_y, vel_y, By, acc_b, vel_b,
                Xf, M0f, DXf, HP, HO, Y, MK, GX, GH, GA, DY, DGX, DGH, hc, dhc,
                cols, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc,
                loss, act, act_param, logq, bpreg, elu, batch_size, lr, mom,
                slotT, rowsT, GT, nT, slotY, rowsY, GY, gBy, counts, dummy_mask):
    """Up to ``max_steps`` steps (all when < 0) of the epoch started by :func:`epoch_start`.
    With ``interleave`` the trained subnet is ``sched[3] % S`` (global step count). Returns
    ``(sum of step_loss * rows, events, finite)`` as the ID-only trainer."""
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
        for r in range(B):
            in_items[r] = items[cur[r]]
            cols[r] = items[cur[r] + 1]
        C = B
        if n_sample > 0:
            if store_pos + n_sample > len(store):
                draw(cdf, store)
                store_pos = 0
            for k in range(n_sample):
                cols[B + k] = store[store_pos + k]
            store_pos += n_sample
            C = B + n_sample
        if loss == CROSS_ENTROPY and logq > 0.0:
            for j in range(B):
                lq[j] = log_support[cols[j]]
            for j in range(B, C):
                lq[j] = sample_alpha * log_support[cols[j]]
        _draw_masks(SI, LI, active, B, bs, M0f, MK, p_embed, p_hidden)
        step_loss = step_forward_backward(
            SI, LI, active, train, sum_mode, in_items, B, bs, indptr, indices, weights, theta,
            gtheta, T, Wy, By, Xf, M0f, DXf, HP, HO, Y, MK, GX, GH, GA, DY, DGX, DGH, hc, dhc,
            cols, C, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc, loss, act, act_param, logq,
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
            hp = _bv(HP, LI[g, L_HOFF], bs, H)
            y = _bv(Y, LI[g, L_HOFF], bs, H)
            for r in range(n_rows):
                if reset[r]:
                    hp[r, :] = 0.0
                else:
                    s_ = src[r]
                    for k in range(H):
                        hp[r, k] = y[s_, k]
    sched[0] = n_rows
    sched[1] = next_sess
    sched[2] = store_pos
    sched[3] += steps
    return loss_sum, events, finite


@njit(cache=True)
def epoch_start(order, offsets, batch_size, min_rows, sched, cur, end, reset, src, HP):
    """First rows of the epoch's schedule; every hidden state zero."""
    n_rows, next_sess = schedule_start(order, offsets, batch_size, cur, end, reset, src)
    if n_rows < min_rows:
        n_rows = 0
    sched[0] = n_rows
    sched[1] = next_sess
    sched[3] = 0
    HP[:] = 0.0


@njit(cache=True)
def infer_step(SI, LI, active, sum_mode, rows, items, new_session, state, indptr, indices,
               weights, theta, T, Wy, Xf, M0f, HP, HO, Y, MK, GX, GH, GA, hc_aug):
    """Inference step (no dropout: ``M0f``, ``MK`` all ones) for ``R = len(rows)`` live sessions.

    state: (n_slots, sum of layer sizes) float32, layer ``g`` in columns ``L_STOFF``..; rows are
    gathered (zero where ``new_session``), stepped and scattered back. ``hc_aug[:R]`` gets
    ``[combined hidden | 1]``.
    """
    R = len(rows)
    bs = hc_aug.shape[0]
    for g in range(LI.shape[0]):
        H = LI[g, L_H]
        st0 = LI[g, L_STOFF]
        hp = _bv(HP, LI[g, L_HOFF], bs, H)
        for i in range(R):
            for k in range(H):
                hp[i, k] = 0.0 if new_session[i] else state[rows[i], st0 + k]
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
            for k in range(H):
                state[rows[i], st0 + k] = y[i, k]


@njit(cache=True)
def _apply_final_act(S, R, act, param):
    for i in range(R):
        for j in range(S.shape[1]):
            S[i, j] = activate(S[i, j], act, param)


# ---------------------------------------------------------------------------------------------
# layout: subnets, layers, flat parameters
# ---------------------------------------------------------------------------------------------
def _block(rng, rows, cols, n_blocks, dtype):
    s = np.sqrt(6.0 / (rows + cols))
    return rng.uniform(-s, s, size=(rows, cols * n_blocks)).astype(dtype)


def _identity_bag(n_items: int):
    return (np.arange(n_items + 1, dtype=np.int64), np.arange(n_items, dtype=np.int32),
            np.ones(n_items, np.float32))


def build_layout(n_items: int, architecture: str, combine: str, input_mode: str, layers,
                 embedding: int, feature_layers, encoded: list, rng, dtype=np.float32) -> dict:
    """Subnet/layer tables and initial flat parameters (init as GRU4Rec: per-gate blocks uniform
    in ``[-s, s]``, ``s = sqrt(6/(fan_in+fan_out))``, biases zero; combine weights 1).

    Returns a dict: ``SI`` (S, N_SCOL) int64, ``LI`` (G, N_LCOL) int64, ``indptr``/``indices``/
    ``weights`` (all subnets' bags concatenated), ``theta``, ``T``, ``Wy`` (n_items, Hc), ``By``,
    ``names`` (subnet names, ID first), ``Hc``, ``state_width``.
    """
    subnets = []  # (name, kind, tab, table_rows, table_cols, in_dim, layers, csr)
    if architecture == "parallel":
        csr = _identity_bag(n_items)
        if input_mode == "onehot":
            subnets.append(("id", K_DIRECT, T_OWN, n_items, 3 * layers[0], 3 * layers[0], layers, csr))
        elif input_mode == "embedding":
            subnets.append(("id", K_BAG, T_OWN, n_items, embedding, embedding, layers, csr))
        else:
            subnets.append(("id", K_BAG, T_WY, n_items, layers[-1], layers[-1], layers, csr))
    for e in encoded:
        csr = (e.indptr, e.indices, e.weights)
        if e.kind == RAW:
            subnets.append((e.name, K_RAW, T_NONE, 0, 0, e.dim, feature_layers, csr))
        else:
            subnets.append((e.name, K_BAG, T_OWN, e.n_rows, e.dim, e.dim, feature_layers, csr))
    S = len(subnets)
    sum_mode = combine == "sum"
    last = [sn[6][-1] for sn in subnets]
    Hc = last[0] if sum_mode else int(sum(last))
    G = sum(len(sn[6]) for sn in subnets)
    SI = np.zeros((S, N_SCOL), np.int64)
    LI = np.zeros((G, N_LCOL), np.int64)
    theta_parts, table_parts = [], []
    d_off = t_off = x_off = g_off = r_off = s_off = ip_off = nnz_off = 0
    h_off = gg_off = c_off = g = 0
    indptrs, idxs, wts = [], [], []
    for s, (name, kind, tab, trows, tcols, din, lay, (ip, ind, w)) in enumerate(subnets):
        SI[s, S_KIND], SI[s, S_TAB], SI[s, S_IN] = kind, tab, din
        SI[s, S_TROWS], SI[s, S_TCOLS] = trows, tcols
        SI[s, S_IPOFF] = ip_off
        indptrs.append(ip + nnz_off)
        idxs.append(ind)
        wts.append(w)
        ip_off += n_items + 1
        nnz_off += len(ind)
        SI[s, S_XOFF] = x_off
        SI[s, S_D0] = d_off
        SI[s, S_L0] = g
        for l, H in enumerate(lay):
            n_in = din if l == 0 else lay[l - 1]
            LI[g, L_H], LI[g, L_HOFF], LI[g, L_GOFF], LI[g, L_STOFF] = H, h_off, gg_off, h_off
            if l == 0 and kind == K_DIRECT:
                LI[g, L_IN], LI[g, L_WX] = 0, -1
            else:
                LI[g, L_IN], LI[g, L_WX] = n_in, d_off
                theta_parts.append(_block(rng, n_in, H, 3, dtype).ravel())
                d_off += n_in * 3 * H
            LI[g, L_BX] = d_off
            theta_parts.append(np.zeros(3 * H, dtype))
            d_off += 3 * H
            LI[g, L_WH] = d_off
            theta_parts.append(_block(rng, H, H, 3, dtype).ravel())
            d_off += 3 * H * H
            LI[g, L_BHN] = d_off
            theta_parts.append(np.zeros(H, dtype))
            d_off += H
            h_off += H
            gg_off += 3 * H
            g += 1
        SI[s, S_L1] = g
        if sum_mode:
            SI[s, S_A] = d_off
            theta_parts.append(np.ones(1, dtype))
            d_off += 1
            SI[s, S_C0], SI[s, S_C1] = 0, Hc
        else:
            SI[s, S_A] = -1
            SI[s, S_C0], SI[s, S_C1] = c_off, c_off + lay[-1]
            c_off += lay[-1]
        SI[s, S_WYC0] = SI[s, S_C0]
        SI[s, S_D1] = d_off
        if tab == T_OWN:
            SI[s, S_TOFF] = t_off
            if kind == K_DIRECT:
                table_parts.append(_block(rng, trows, lay[0], 3, dtype).ravel())
            else:
                table_parts.append(_block(rng, trows, tcols, 1, dtype).ravel())
            t_off += trows * tcols
            SI[s, S_SOFF] = s_off
            s_off += trows
        x_off += din
    Wy = _block(rng, n_items, Hc, 1, dtype)
    return {
        "SI": SI, "LI": LI,
        "indptr": np.concatenate(indptrs).astype(np.int64),
        "indices": np.concatenate(idxs).astype(np.int32),
        "weights": np.concatenate(wts).astype(dtype),
        "theta": np.concatenate(theta_parts).astype(dtype) if theta_parts else np.zeros(0, dtype),
        "T": np.concatenate(table_parts).astype(dtype) if table_parts else np.zeros(1, dtype),
        "Wy": Wy, "By": np.zeros(n_items, dtype),
        "names": [sn[0] for sn in subnets], "Hc": int(Hc), "state_width": int(h_off),
        "x_width": int(x_off), "n_gates": int(gg_off), "n_table_slots": int(s_off),
    }


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
    ``SI``, ``LI``, ``indptr``, ``indices``, ``weights`` of :func:`build_layout`; arrays of one
    float dtype (float32 in training, float64 in gradient checks).
    """

    def __init__(self, params: dict, n_items: int, support, batch_size: int, n_sample: int,
                 sample_alpha: float, sample_store_size: int, loss: int, act: int,
                 act_param: float, logq: float, bpreg: float, elu: float, lr: float, mom: float,
                 p_embed: float, p_hidden: float, sum_mode: bool):
        p = params
        dt = p["Wy"].dtype
        bs = int(batch_size)
        cmax = bs + n_sample
        SI = p["SI"].copy()
        _bag_caps(SI, p["indptr"], bs, n_items)
        self.SI, self.LI = SI, p["LI"]
        S, G = SI.shape[0], self.LI.shape[0]
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
        self.gtheta, self.acc_d, self.vel_d = z(len(p["theta"])), z(len(p["theta"])), z(len(p["theta"]))
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

    def start_epoch(self, items, order, offsets):
        self.items, self.order, self.offsets = items, order, offsets
        epoch_start(order, offsets, self.batch_size, self.min_rows, self.sched, self.cur,
                    self.end, self.reset, self.src, self.HP)

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
            self.lq, self.ra, self.rb, self.rc, loss, act, act_param, logq, bpreg, elu,
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
            self.rb, self.rc, loss, act, act_param, logq, bpreg, elu, scale, self.slotT,
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
                    grads["T"][toff + r * tc:toff + (r + 1) * tc] += self.GT[goff + u * tc:goff + (u + 1) * tc]
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
class FeatureScorer:
    """Evaluation scorer (:class:`gru_engine.evaluation.SessionScorer`) over a fitted
    feature-rich model: one step of every subnet for the given slots, then one GEMM
    ``[h_comb | 1] @ [Wy | By]^T`` into a preallocated buffer (valid until the next call)."""

    def __init__(self, params: dict, sum_mode: bool, act: int = 0, act_param: float = 0.0):
        dt = np.float32
        self.p = {k: (np.ascontiguousarray(params[k], dt) if k in ("theta", "T", "Wy", "By",
                                                                     "weights") else params[k])
                  for k in ("theta", "T", "Wy", "By", "weights", "indptr", "indices", "SI", "LI")}
        self.sum_mode = bool(sum_mode)
        self.act, self.act_param = act, act_param
        self.WyB = np.ascontiguousarray(np.hstack([self.p["Wy"], self.p["By"][:, None]]))
        self.n_items = self.WyB.shape[0]
        self.Hc = self.WyB.shape[1] - 1
        LI, SI = self.p["LI"], self.p["SI"]
        self.width = int(LI[:, L_H].sum())
        self.x_width = int(SI[:, S_IN].sum())
        self.active = np.ones(SI.shape[0], np.bool_)
        self._cap = 0
        self.state = np.zeros((0, self.width), dt)

    def _grow(self, R: int):
        if R <= self._cap:
            return
        cap = max(R, 64)
        dt = np.float32
        z = lambda n: np.zeros(n, dt)
        self.Xf, self.M0f = z(cap * self.x_width), np.ones(cap * self.x_width, dt)
        self.HP, self.HO, self.Y = z(cap * self.width), z(cap * self.width), z(cap * self.width)
        self.MK = np.ones(cap * self.width, dt)
        self.GX, self.GH, self.GA = z(3 * cap * self.width), z(3 * cap * self.width), z(3 * cap * self.width)
        self.aug = np.zeros((cap, self.Hc + 1), dt)
        self.out = np.zeros((cap, self.n_items), dt)
        self._cap = cap

    def begin(self, n_rows: int) -> None:
        """Allocate and zero the hidden states of slots ``0..n_rows-1``."""
        self.state = np.zeros((int(n_rows), self.width), np.float32)

    def score(self, rows, items, new_session) -> np.ndarray:
        """(R, n_items) float32 scores after clicks ``items`` in slots ``rows``."""
        R = len(rows)
        self._grow(R)
        p = self.p
        infer_step(p["SI"], p["LI"], self.active, self.sum_mode, np.asarray(rows, np.int64),
                   np.asarray(items, np.int32), np.asarray(new_session, np.bool_), self.state,
                   p["indptr"], p["indices"], p["weights"], p["theta"], p["T"], p["Wy"],
                   self.Xf, self.M0f, self.HP, self.HO, self.Y, self.MK, self.GX, self.GH,
                   self.GA, self.aug)
        out = self.out[:R]
        np.dot(self.aug[:R], self.WyB.T, out=out)
        if self.act != 0:
            _apply_final_act(out, R, self.act, self.act_param)
        return out


# ---------------------------------------------------------------------------------------------
# the estimator
# ---------------------------------------------------------------------------------------------
def epoch_plan(strategy: str, n_subnets: int, n_epochs: int) -> list:
    """Per epoch ``(active, train, interleave, freeze_out)``: bool lists over the subnets."""
    S = n_subnets
    every = [True] * S
    plan = []
    if strategy == "residual":
        per = n_epochs // S
        for e in range(n_epochs):
            k = min(e // per, S - 1)
            plan.append(([s <= k for s in range(S)], [s == k for s in range(S)], False, True))
    for e in range(n_epochs if strategy != "residual" else 0):
        if strategy == "simultaneous":
            plan.append((every, every, False, False))
        elif strategy == "alternating":
            plan.append((every, [s == e % S for s in range(S)], False, False))
        else:
            plan.append((every, every, True, False))
    return plan


class FeatureSessionGRU(SessionGRU):
    """GRU4Rec with parallel feature subnets (p-RNN, Hidasi et al. RecSys 2016).

    Hyperparameters: those of :class:`~gru_engine.model.SessionGRU` plus

    - ``architecture``: ``'parallel'`` (ID subnet + one subnet per feature source, default),
      ``'feature'`` (feature subnets only; the output layer stays item-indexed), ``'id'``
      (plain GRU4Rec, exactly SessionGRU's training; features ignored);
    - ``combine``: ``'concat'`` (default) or ``'sum'`` (learned scalar weight per subnet; all
      subnets' last layers must have the same size);
    - ``strategy``: ``'simultaneous'`` (default), ``'alternating'``, ``'residual'``,
      ``'interleaved'`` (module docstring);
    - ``feature_layers``: hidden sizes of every feature subnet (int or list; None = ``layers``).

    Example::

        feats = {"category": CategoricalFeatures(cat_ids, cat_codes, dim=16)}
        model = FeatureSessionGRU(layers=[100], architecture="parallel").fit(train, item_features=feats)
        model.evaluate(test)["recall@20"]

    Items that have features but did not occur in the training events are not part of the
    model: ``recommend``/``predict_next`` raise ``KeyError`` for them and ``evaluate`` drops their
    events (as for any unknown item).

    Fitted attributes (besides SessionGRU's): ``params_`` (``theta``, ``T``, ``Wy``, ``By`` and the
    layout arrays), ``subnet_names_`` (ID first), ``feature_info_`` (one dict per source).
    """

    def __init__(self, layers=(100,), loss="cross-entropy", final_act="linear", batch_size=32,
                 n_epochs=10, n_sample=2048, sample_alpha=0.5, sample_store_size=10_000_000,
                 logq=1.0, bpreg=0.0, elu_param=0.0, embedding=0, constrained_embedding=True,
                 dropout_p_embed=0.0, dropout_p_hidden=0.0, learning_rate=0.1, momentum=0.0,
                 random_state=None, n_threads=None, device="cpu", shuffle_sessions=False,
                 show_progress=False, architecture="parallel", combine="concat",
                 strategy="simultaneous", feature_layers=None):
        super().__init__(layers=layers, loss=loss, final_act=final_act, batch_size=batch_size,
                         n_epochs=n_epochs, n_sample=n_sample, sample_alpha=sample_alpha,
                         sample_store_size=sample_store_size, logq=logq, bpreg=bpreg,
                         elu_param=elu_param, embedding=embedding,
                         constrained_embedding=constrained_embedding,
                         dropout_p_embed=dropout_p_embed, dropout_p_hidden=dropout_p_hidden,
                         learning_rate=learning_rate, momentum=momentum,
                         random_state=random_state, n_threads=n_threads, device=device,
                         shuffle_sessions=shuffle_sessions, show_progress=show_progress)
        self.architecture = architecture
        self.combine = combine
        self.strategy = strategy
        self.feature_layers = feature_layers

    def _validated(self) -> dict:
        if self.architecture != "id" and self.device == "cuda":
            raise ValueError(f"device='cuda': architecture={self.architecture!r} has a CPU backend "
                             "only; use device='cpu' or 'auto' (architecture='id' runs on CUDA)")
        p = super()._validated()
        if p["architecture"] not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {list(ARCHITECTURES)}, got {p['architecture']!r}")
        if p["combine"] not in COMBINES:
            raise ValueError(f"combine must be one of {list(COMBINES)}, got {p['combine']!r}")
        if p["strategy"] not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got {p['strategy']!r}")
        fl = p["feature_layers"]
        if fl is None:
            fl = p["layers"]
        try:
            fl = hp.validate(dict(hp.DEFAULTS, layers=fl))["layers"]
        except ValueError:
            raise ValueError(f"feature_layers must be None or a non-empty list of positive ints, "
                             f"got {p['feature_layers']!r}") from None
        p["feature_layers"] = fl
        if p["combine"] == "sum" and p["architecture"] == "parallel" and fl[-1] != p["layers"][-1]:
            raise ValueError(f"combine='sum' needs subnets of one size: layers[-1]={p['layers'][-1]} "
                             f"but feature_layers[-1]={fl[-1]}")
        if p["strategy"] == "residual" and p["combine"] != "concat":
            raise ValueError("strategy='residual' needs combine='concat' (each subnet has its own "
                             "output block)")
        return p

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, data, item_features=None, session_key: str = "SessionId", item_key: str = "ItemId",
            time_key: str = "Time", callback=None):
        """Train on an event table and item features ``{source_name: spec}`` (specs of
        :mod:`gru_engine.features`; not needed for ``architecture='id'``). ``callback(epoch,
        elapsed_s, loss)`` after every epoch. Returns self.

        Raises ``ValueError`` for bad hyperparameters or features (checked before the events are
        read), ``ModelFitError`` when the loss becomes NaN or infinite.
        """
        p = self._validated()
        feats = validate_item_features(item_features)
        if p["architecture"] != "id" and not feats:
            raise ValueError(f"architecture={p['architecture']!r} needs item_features "
                             "(a dict {name: DenseFeatures | CategoricalFeatures | TokenFeatures})")
        from .base import SessionModel
        return SessionModel.fit(self, data, session_key=session_key, item_key=item_key,
                                time_key=time_key, callback=callback, item_features=feats)

    def _fit(self, sessions, callback=None, item_features=None):
        p = self._validated()
        self.feature_info_ = []
        if p["architecture"] == "id":
            self.subnet_names_ = ["id"]
            return super()._fit(sessions, callback=callback)
        if p["device"] == "auto":
            logger.info("device='auto': architecture=%r trains on the CPU (no CUDA backend)",
                        p["architecture"])
        self.device_ = "cpu"
        n_items = len(self.item_index_)
        encoded = encode_item_features(item_features, self.item_index_)
        self.feature_info_ = [dict(e.info, name=e.name) for e in encoded]
        seq = np.random.SeedSequence(p["random_state"])
        init_seed, order_seed, numba_seed = seq.spawn(3)
        rng = np.random.default_rng(init_seed)
        order_rng = np.random.default_rng(order_seed)
        mode = self._input_mode(p)
        layout = build_layout(n_items, p["architecture"], p["combine"], mode, p["layers"],
                              p["embedding"], p["feature_layers"], encoded, rng)
        self.subnet_names_ = layout["names"]
        S = len(self.subnet_names_)
        if p["strategy"] == "residual" and p["n_epochs"] < S:
            raise ValueError(f"strategy='residual' trains the {S} subnets one after another: "
                             f"n_epochs ({p['n_epochs']}) must be >= {S}")
        params = {k: layout[k] for k in ("SI", "LI", "indptr", "indices", "weights", "theta",
                                         "T", "Wy", "By")}
        support = sessions.item_support(n_items)
        self.item_support_ = support
        self.input_mode_ = mode
        self.params_ = params
        self.loss_history_, self.epoch_times_, self.events_per_s_ = [], [], []
        act, act_param = hp.parse_final_act(p["final_act"])
        trainer = FeatureTrainer(params, n_items, support, p["batch_size"], p["n_sample"],
                                 p["sample_alpha"], p["sample_store_size"],
                                 loss=hp.LOSS_CODES[p["loss"]], act=act, act_param=act_param,
                                 logq=p["logq"], bpreg=p["bpreg"], elu=p["elu_param"],
                                 lr=p["learning_rate"], mom=p["momentum"],
                                 p_embed=p["dropout_p_embed"], p_hidden=p["dropout_p_hidden"],
                                 sum_mode=p["combine"] == "sum")
        plan = epoch_plan(p["strategy"], S, p["n_epochs"])
        threads = 1 if p["n_threads"] is None else p["n_threads"]
        with _thread_limit(threads):
            seed_numba(int(numba_seed.generate_state(1)[0] & 0x7FFFFFFF))
            t0 = time.perf_counter()
            trainer.fill_store()
            self.sample_store_seconds_ = time.perf_counter() - t0
            progress = _progress_bar(p["show_progress"])
            for epoch in range(1, p["n_epochs"] + 1):
                trainer.set_phase(*plan[epoch - 1])
                order = session_order(sessions, p["shuffle_sessions"], order_rng)
                trainer.start_epoch(sessions.items, order, sessions.offsets)
                bar = progress(epoch, sessions.n_events - sessions.n_sessions)
                t0 = time.perf_counter()
                loss_sum, events, finite = 0.0, 0, True
                while trainer.rows_left() and finite:
                    ls, ev, finite = trainer.run(500 if bar is not None else -1)
                    loss_sum += ls
                    events += ev
                    if bar is not None:
                        bar.update(ev)
                elapsed = time.perf_counter() - t0
                if bar is not None:
                    bar.close()
                if not finite:
                    raise ModelFitError(f"training diverged: the loss became NaN or infinite "
                                        f"in epoch {epoch}; lower learning_rate or check the data")
                loss = loss_sum / max(events, 1)
                self.loss_history_.append(loss)
                self.epoch_times_.append(elapsed)
                self.events_per_s_.append(events / elapsed if elapsed > 0 else float("inf"))
                logger.info("epoch %d (%s, training %s): loss %.6f, %d events, %.0f events/s",
                            epoch, p["strategy"],
                            [n for n, t in zip(self.subnet_names_, plan[epoch - 1][1]) if t],
                            loss, events, self.events_per_s_[-1])
                if callback is not None:
                    callback(epoch, elapsed, loss)
        bad = [k for k in ("theta", "T", "Wy", "By") if not np.all(np.isfinite(params[k]))]
        if bad:
            raise ModelFitError(f"training produced non-finite parameters in {bad}")

    # ---- scoring ----------------------------------------------------------------------------
    def _is_id(self) -> bool:
        return "theta" not in getattr(self, "params_", {})

    def scorer(self):
        """A fresh scorer: :class:`FeatureScorer`, or SessionGRU's for ``architecture='id'``."""
        self._check_fitted()
        if self._is_id():
            return super().scorer()
        act, act_param = hp.parse_final_act(self.final_act)
        return FeatureScorer(self.params_, self.combine == "sum", act, act_param)

    def subnet_params(self, name: str) -> dict:
        """Views of one subnet's parameters: ``Wx``, ``bx``, ``Wh``, ``bhn`` (lists per layer;
        ``Wx[0]`` None for one-hot input), ``table`` (its embedding table or None), ``weight``
        (combine weight under ``sum``, else None), ``columns`` (its ``Wy`` column range)."""
        self._check_fitted()
        if self._is_id():
            raise ValueError("architecture='id' has no subnet layout; see params_")
        if name not in self.subnet_names_:
            raise KeyError(f"no subnet {name!r}; subnets: {self.subnet_names_}")
        p = self.params_
        SI, LI, th = p["SI"], p["LI"], p["theta"]
        s = self.subnet_names_.index(name)
        out = {"Wx": [], "bx": [], "Wh": [], "bhn": []}
        for g in range(SI[s, S_L0], SI[s, S_L1]):
            H, n_in = int(LI[g, L_H]), int(LI[g, L_IN])
            out["Wx"].append(None if LI[g, L_WX] < 0 else th[LI[g, L_WX]:LI[g, L_WX] + n_in * 3 * H].reshape(n_in, 3 * H))
            out["bx"].append(th[LI[g, L_BX]:LI[g, L_BX] + 3 * H])
            out["Wh"].append(th[LI[g, L_WH]:LI[g, L_WH] + 3 * H * H].reshape(H, 3 * H))
            out["bhn"].append(th[LI[g, L_BHN]:LI[g, L_BHN] + H])
        out["table"] = None
        if SI[s, S_TAB] == T_OWN:
            a, r, c = SI[s, S_TOFF], SI[s, S_TROWS], SI[s, S_TCOLS]
            out["table"] = p["T"][a:a + r * c].reshape(r, c)
        out["weight"] = float(th[SI[s, S_A]]) if SI[s, S_A] >= 0 else None
        out["columns"] = (int(SI[s, S_C0]), int(SI[s, S_C1]))
        return out

    # ---- files ------------------------------------------------------------------------------
    def save(self, path):
        """Write the fitted model (parameters, layout, encoded feature tables) to one ``.npz``
        (JSON header, no pickle, atomic). ``architecture='id'`` uses SessionGRU's format."""
        self._check_fitted()
        if self._is_id():
            return super().save(path)
        ids = np.asarray(self.item_index_.ids)
        if ids.dtype.kind not in "iuU":
            raise ValueError(f"cannot save item ids of dtype {ids.dtype}: only integer or string ids")
        params = self.get_params()
        params["layers"] = [int(h) for h in np.atleast_1d(params["layers"])]
        if params["feature_layers"] is not None:
            params["feature_layers"] = [int(h) for h in np.atleast_1d(params["feature_layers"])]
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "class": type(self).__name__,
                  "params": params, "keys": self.keys_, "input_mode": self.input_mode_,
                  "subnet_names": self.subnet_names_, "feature_info": self.feature_info_,
                  "loss_history": [float(x) for x in self.loss_history_]}
        arrays = {"header": np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8),
                  "item_ids": ids, "item_support": np.asarray(self.item_support_, np.int64)}
        arrays.update(self.params_)
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-",
                                   suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path) -> "FeatureSessionGRU":
        """Read a model written by :meth:`save`; ``ValueError`` for a foreign or newer file."""
        path = os.fspath(path)
        with np.load(path, allow_pickle=False) as f:
            if "header" not in f.files:
                raise ValueError(f"{path} is not a gru_engine model file (no header)")
            try:
                header = json.loads(bytes(f["header"]).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValueError(f"{path}: unreadable model header") from None
            if header.get("format") != FORMAT:
                from .io import load_model
                model = load_model(path, cls)
                model.subnet_names_, model.feature_info_ = ["id"], []
                return model
            if header.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: FeatureSessionGRU format version "
                                 f"{header.get('format_version')!r} is not supported")
            if header.get("class") != cls.__name__:
                raise ValueError(f"{path} holds a {header.get('class')!r}, not a {cls.__name__}")
            params = {k: np.array(f[k]) for k in ("SI", "LI", "indptr", "indices", "weights",
                                                  "theta", "T", "Wy", "By")}
            ids = np.array(f["item_ids"])
            support = np.array(f["item_support"])
        model = cls(**header["params"])
        model.item_index_ = ItemIndex(ids)
        model.keys_ = header["keys"]
        model.params_ = params
        model.input_mode_ = header["input_mode"]
        model.item_support_ = support
        model.subnet_names_ = header["subnet_names"]
        model.feature_info_ = header["feature_info"]
        model.loss_history_ = header["loss_history"]
        return model
