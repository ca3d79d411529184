"""One training step of any network (:mod:`gru_engine.network`) in Numba (its inference step:
:mod:`.infer`).

One training step (all gradients use the parameters as they were before the step):

1. schedule: rows' input items ``items[cur]``, targets ``items[cur+1]`` (``batching.py``);
   hidden rows of sessions that start now are zero;
2. columns ``cols = [targets (B) | n_sample negatives from the store]``; for cross-entropy with
   logq, ``lq = [log support[targets] | alpha * log support[negatives]]``;
3. inverted-dropout masks of the active subnets, drawn in subnet order: the input (one factor
   per row for one-hot input), then each layer's output;
4. forward of every active subnet: input gather from its bag (``x = sum_j w_j row_j * mask0``:
   table rows, ``Wy`` column-block rows for the constrained ID input, or raw feature values),
   ``x @ Wx`` (a one-hot input's table row *is* the gate pre-activation), GRU layers,
   ``y = h' * mask``; the combination ``hc`` (``concat``, or ``sum`` with a weight per
   subnet); scores ``O = hc @ Wy[cols].T + By[cols]``, computed once per distinct item of
   ``cols`` (``S = hc @ Wy[distinct].T``, ``O[:, j] = S[:, slot(j)] + By[cols[j]]``);
5. loss and ``dO`` (``losses.py``, divided by ``batch_size``), summed per distinct item: ``dS``;
6. backward: ``dWy[distinct] = dS^T hc``, ``dBy``, ``dhc = dS Wy[distinct]``; per trained
   subnet from its top layer: ``dh' = dy * mask``, gate backward, ``dWh = hprev^T dgh``,
   ``dbhn``, ``dWx = x^T dgx``, ``dbx``, ``dx = dgx Wx^T``;
7. sparse sums per row: output rows of ``Wy``/``By`` first (step 6 writes them), then
   constrained-input rows of ``Wy`` (``dx * mask0``), then table rows per subnet;
8. Adagrad + momentum (``update.py``, with ``optim.py``): dense ranges of ``theta`` and the
   touched table rows of the trained subnets, the touched ``Wy`` rows in the trained column
   blocks, ``By`` on output rows;
9. carry: ``hprev = y`` (the dropped-out output), compacted/zeroed by the schedule.

The kernels take records (:class:`Net`, :class:`Work`, :class:`OutBuf`, :class:`Sparse`) instead
of long argument lists; :class:`~gru_engine.params.Hyper` carries the hyperparameters; ``prof``
is ``None`` or a per-phase profile (:mod:`.profile`: the ``tick`` calls compile to nothing for
``None``). A work buffer of per-layer blocks stores block ``g`` as ``(bs, width)`` rows at
``bs * offset`` (:func:`block_view`), with ``bs`` the batch size.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
# Numba's np.dot calls the BLAS behind scipy.linalg.cython_blas. Load it now, so that a thread
# limit set later (threadpoolctl, see threads.thread_limit) sees and limits that library.
import scipy.linalg.cython_blas  # noqa: F401
from numba import njit

from ...config import TRAIN_OUTPUT_PARTS
from ...network import (K_DIRECT, K_RAW, L_BHN, L_BX, L_GOFF, L_H, L_HOFF, L_IN, L_WH,
                        L_WX, S_A, S_C0, S_GCAP, S_GOFF, S_IN, S_IPOFF, S_KIND,
                        S_L0, S_L1, S_ROFF, S_SOFF, S_TAB, S_TCOLS, S_TOFF, S_TROWS, S_WYC0,
                        S_XOFF, T_NONE, T_WY)
from .blas import gemm_into
from .context_step import (CIN_CONCAT, CIN_MULTIPLY, CIN_NONE, COUT_NONE, CTR_NONE,
                           context_input_backward, context_input_forward, context_input_gates,
                           context_output_backward, context_output_forward,
                           context_transition_backward, context_transition_forward,
                           context_zero_grads)
from .gru import column_sums, dropout_mask, gemm_pair, gru_backward, gru_forward, multiply_rows
from .losses import loss_forward_backward
from .optim import claim_row
from .output_features import add_output_features, scatter_output_gradients
from .output_parts import copy_slot_rows, cross_entropy_output
from .profile import (P_DH_GEMM, P_DWH_GEMM, P_DWX_GEMM, P_DWY_GEMM,
                      P_DX_GEMM, P_GATES, P_GRU_BACK, P_H_GEMM, P_IN_GATHER, P_IN_GEMM, P_LOSS,
                      P_OUT_GATHER, P_SCORE_GEMM, P_SPARSE, tick, tick_gemm)


class Net(NamedTuple):
    """A network's layout and parameters (the arrays of ``network.PARAM_KEYS``).

    SI (S, N_SCOL) int64, LI (G, N_LCOL) int64; indptr (S * (n_items + 1),) int64, indices
    (nnz,) int32, weights (nnz,) float: every subnet's bag CSR; theta (n_dense,), T (n_table,),
    Wy (n_items, Hc), By (n_items,) float (float32 in training, float64 in gradient checks).
    """
    SI: np.ndarray
    LI: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    theta: np.ndarray
    T: np.ndarray
    Wy: np.ndarray
    By: np.ndarray


class Work(NamedTuple):
    """Per-step buffers of the subnets (``bs`` rows; X = sum of input widths, W = sum of all
    layers' hidden sizes). Xf, M0f, DXf (bs * X,): inputs, input dropout masks, input gradients;
    HP, HO, Y, MK, DY (bs * W,): previous hidden states, new states, dropped-out outputs, output
    masks, output gradients; GX, GH, GA, DGX, DGH (3 * bs * W,): gate buffers of ``gru.py``;
    hc, dhc (bs, Hc): combined state and its gradient; gtheta (n_dense,): dense gradients;
    GU (bs * 3 H0,) or empty: extra layer-0 gate input of subnet 0 (the user-level GRU's
    ``user_mode='all'``, :mod:`gru_engine.user_level`), added after ``x Wx + bx``."""
    Xf: np.ndarray
    M0f: np.ndarray
    DXf: np.ndarray
    HP: np.ndarray
    HO: np.ndarray
    Y: np.ndarray
    MK: np.ndarray
    DY: np.ndarray
    GX: np.ndarray
    GH: np.ndarray
    GA: np.ndarray
    DGX: np.ndarray
    DGH: np.ndarray
    hc: np.ndarray
    dhc: np.ndarray
    gtheta: np.ndarray
    GU: np.ndarray


class OutBuf(NamedTuple):
    """Sampled output layer of a step (cmax = batch_size + n_sample columns): cols (cmax,) int32
    the columns' items, cmap (cmax,) int32 their slots (distinct items); Wc (cmax, Hc), bc
    (cmax,) the gathered ``Wy`` rows and ``By`` entries of the slots; O_flat (bs * cmax,) the
    slots' scores then their gradient; lq (cmax,) log q per column; ra (cmax,) loss scratch;
    rank: None under cross-entropy, else the ranking losses' scratch ``(r, g, scr)``: (cmax,),
    (cmax,), (2, cmax) (it decides which loss kernels a trainer compiles:
    :func:`output_forward_backward`)."""
    cols: np.ndarray
    cmap: np.ndarray
    Wc: np.ndarray
    bc: np.ndarray
    O_flat: np.ndarray
    lq: np.ndarray
    ra: np.ndarray
    rank: tuple | None


class Sparse(NamedTuple):
    """Sparse gradient accumulators. slotY (n_items,) int32 (-1: no row), rowsY (cap,) int32,
    GY (cap, Hc), gBy (cap,): rows of Wy / By; slotT (table rows of all own tables,) int32,
    rowsT, GT (flat), nT (S,) int64: table rows per subnet (capacities in ``SI[:, S_GCAP]``);
    counts (2,) int64: ``[n Wy rows, n output rows]``; early (cap,) bool: the Wy rows updated
    beside the backward (:mod:`.overlap`; all False between steps)."""
    slotY: np.ndarray
    rowsY: np.ndarray
    GY: np.ndarray
    gBy: np.ndarray
    slotT: np.ndarray
    rowsT: np.ndarray
    GT: np.ndarray
    nT: np.ndarray
    counts: np.ndarray
    early: np.ndarray


# ---------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def flat_view(flat, off, rows, cols):
    """Row-major ``(rows, cols)`` view of ``flat[off:off + rows*cols]``."""
    return flat[off:off + rows * cols].reshape(rows, cols)


@njit(cache=True, error_model="numpy")
def block_view(buf, col_off, bs, cols):
    """``(bs, cols)`` view of a work buffer that stores blocks of ``bs`` rows; ``col_off`` is the
    block's column offset (sum of the widths before it)."""
    return buf[bs * col_off:bs * (col_off + cols)].reshape(bs, cols)


@njit(cache=True, error_model="numpy")
def add_bias(X, b, B):
    """``X[:B] += b`` row by row."""
    for i in range(B):
        for k in range(X.shape[1]):
            X[i, k] += b[k]


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def gather_input(s, net, in_items, B, bs, Xf, M0f):
    """Subnet ``s``'s (dropped-out) input rows ``X[:B] = bag(item) * mask0``; returns X."""
    SI = net.SI
    kind, tab, din = SI[s, S_KIND], SI[s, S_TAB], SI[s, S_IN]
    toff, tcols, ip0, wy0 = SI[s, S_TOFF], SI[s, S_TCOLS], SI[s, S_IPOFF], SI[s, S_WYC0]
    indptr, indices, weights, T, Wy = net.indptr, net.indices, net.weights, net.T, net.Wy
    X = block_view(Xf, SI[s, S_XOFF], bs, din)
    M0 = block_view(M0f, SI[s, S_XOFF], bs, din)
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
def subnet_forward(s, net, in_items, B, bs, wk, cx, prof, two):
    """Forward of subnet ``s`` for the first ``B`` rows: input gather, its GRU layers, outputs
    ``y = h' * mask`` per layer (buffers of ``wk``, a :class:`Work`); subnet 0 takes the input
    context of ``cx`` (:mod:`.context_step`; None: no context, whose hooks then compile to
    nothing). ``two``: a layer's input and hidden products run side by side on two Numba
    threads (:func:`~.gru.gemm_pair`; same results); the input GEMM phase of a profile then
    holds both."""
    SI, LI, theta = net.SI, net.LI, net.theta
    X = gather_input(s, net, in_items, B, bs, wk.Xf, wk.M0f)
    cin = cx.cfg[0] if cx is not None and s == 0 else CIN_NONE
    if cx is not None and cin == CIN_MULTIPLY:
        context_input_forward(cx, X[:B], B)
    tick(prof, P_IN_GATHER)
    l0, l1 = SI[s, S_L0], SI[s, S_L1]
    for g in range(l0, l1):
        H = LI[g, L_H]
        gx = block_view(wk.GX, LI[g, L_GOFF], bs, 3 * H)
        bx = theta[LI[g, L_BX]:LI[g, L_BX] + 3 * H]
        hp = block_view(wk.HP, LI[g, L_HOFF], bs, H)
        ho = block_view(wk.HO, LI[g, L_HOFF], bs, H)
        gh = block_view(wk.GH, LI[g, L_GOFF], bs, 3 * H)
        Wh = flat_view(theta, LI[g, L_WH], H, 3 * H)
        hw = hp  # the previous state as Wh reads it (context_transition: modulated)
        if cx is not None and s == 0 and g == l0 and cx.cfg[2] != CTR_NONE:
            hw = context_transition_forward(cx, hp, B)
        direct = g == l0 and SI[s, S_KIND] == K_DIRECT
        paired = two and not direct
        if direct:
            for i in range(B):
                for k in range(3 * H):
                    gx[i, k] = X[i, k] + bx[k]
            tick(prof, P_IN_GATHER)
        else:
            xin = X if g == l0 else block_view(wk.Y, LI[g - 1, L_HOFF], bs, LI[g, L_IN])
            Wx = flat_view(theta, LI[g, L_WX], LI[g, L_IN], 3 * H)
            if paired:
                gemm_pair(xin[:B], Wx, gx[:B], hw[:B], Wh, gh[:B])
            else:
                gemm_into(xin[:B], Wx, gx[:B])
            add_bias(gx, bx, B)
            # paired: both products, as the one of [x | h] with [Wx; Wh] they amount to
            tick_gemm(prof, P_IN_GEMM, B, 3 * H, LI[g, L_IN] + (H if paired else 0))
        if g == l0:
            if cx is not None and cin == CIN_CONCAT:
                context_input_gates(cx, gx, B)
            if s == 0 and wk.GU.shape[0] > 0:
                gu = block_view(wk.GU, 0, bs, 3 * H)
                for i in range(B):
                    for k in range(3 * H):
                        gx[i, k] += gu[i, k]
        if not paired:
            gemm_into(hw[:B], Wh, gh[:B])
            tick_gemm(prof, P_H_GEMM, B, 3 * H, H)
        gru_forward(gx, hp, theta[LI[g, L_BHN]:LI[g, L_BHN] + H], gh,
                    block_view(wk.GA, LI[g, L_GOFF], bs, 3 * H), ho, B)
        y = block_view(wk.Y, LI[g, L_HOFF], bs, H)
        mk = block_view(wk.MK, LI[g, L_HOFF], bs, H)
        for i in range(B):
            for k in range(H):
                y[i, k] = ho[i, k] * mk[i, k]
        tick(prof, P_GATES)


@njit(cache=True, error_model="numpy")
def combine_forward(net, active, B, bs, Y, hc, sum_mode):
    """``hc[:B]`` = concatenation (or ``a_s``-weighted sum) of the active subnets' outputs;
    inactive subnets contribute zero."""
    SI, LI, theta = net.SI, net.LI, net.theta
    for i in range(B):
        for k in range(hc.shape[1]):
            hc[i, k] = 0.0
    for s in range(SI.shape[0]):
        if not active[s]:
            continue
        g = SI[s, S_L1] - 1
        H = LI[g, L_H]
        y = block_view(Y, LI[g, L_HOFF], bs, H)
        c0 = SI[s, S_C0]
        a = theta[SI[s, S_A]] if sum_mode else 1.0
        for i in range(B):
            for k in range(H):
                hc[i, c0 + k] += a * y[i, k]


@njit(cache=True, error_model="numpy")
def output_forward_backward(hc, dhc, B, C, net, ob, sp, hy, prof, of, rank):
    """Sampled output layer of one step, on the ``U`` distinct items of ``cols`` (a column that
    repeats an item shares its row of every product): the items get the sparse-sum slots
    ``0..U-1`` in order of first appearance (``sp.rowsY[u]``, ``sp.slotY[item]``;
    ``ob.cmap[j]`` is column ``j``'s slot), ``Wc[u] = Wy[rowsY[u]]``, scores
    ``S = hc[:B] @ Wc[:U].T``; the loss over the ``C`` columns ``O[:, j] = S[:, cmap[j]] +
    By[cols[j]]``; its gradient summed per slot, ``dS``, gives the slots' sums directly:
    ``GY[:U] = dS.T @ hc[:B]``, ``gBy[:U]``, and ``dhc[:B] = dS @ Wc[:U]``. ``ob``:
    :class:`OutBuf`, ``sp``: :class:`Sparse`, ``hy``: :class:`~gru_engine.params.Hyper`;
    ``of``: None or the output features' record (:mod:`.output_features`: their rows are added
    to the gathered ``Wc``/``bc``). ``rank`` (``ob.rank``, an argument of its own so that Numba
    compiles only the branch of its type): None for cross-entropy, all of it after the slot
    mapping in the parts of :mod:`.output_parts` (on threads; each part gathers its own rows,
    except under output features); else the ranking loss ``hy.loss`` with ``rank`` its
    scratch. Returns ``(step loss, U)``."""
    Wy, By, cols, Wc, bc, cmap = net.Wy, net.By, ob.cols, ob.Wc, ob.bc, ob.cmap
    slot, rows = sp.slotY, sp.rowsY
    H = hc.shape[1]
    U = np.int64(0)  # not the literal 0: Numba would compile the callees for that type too
    for j in range(C):
        c = cols[j]
        u = slot[c]
        if u < 0:
            u = U
            slot[c] = u
            rows[u] = c
            U += 1
        cmap[j] = u
    src = (Wy, By, rows)
    gather_here = rank is not None or of is not None  # else the parts copy their own rows
    if gather_here:
        copy_slot_rows(src, 0, U, Wc, bc)
    if of is not None:
        add_output_features(of, rows, U, Wc, bc)
    tick(prof, P_OUT_GATHER)
    if rank is None:
        total = cross_entropy_output(hc, dhc, Wc, bc, src, np.bool_(not gather_here), cmap,
                                     ob.lq, ob.ra, B, C, U, TRAIN_OUTPUT_PARTS, ob.O_flat,
                                     hy.final_act, hy.final_act_param, hy.logq,
                                     float(hy.batch_size), sp.GY, sp.gBy, prof)
        return total, U
    S = ob.O_flat[:B * U].reshape(B, U)
    np.dot(hc[:B], Wc[:U].T, S)
    tick_gemm(prof, P_SCORE_GEMM, B, U, H)
    total = loss_forward_backward(S, cmap, bc, B, C, U, hy.loss, hy.final_act,
                                  hy.final_act_param, hy.bpreg, hy.elu_param,
                                  float(hy.batch_size), ob.ra, rank[0], rank[1], rank[2])
    column_sums(S, B, sp.gBy, 0, U)
    tick(prof, P_LOSS)
    np.dot(S.T, hc[:B], sp.GY[:U])
    tick_gemm(prof, P_DWY_GEMM, U, H, B)
    np.dot(S, Wc[:U], dhc[:B])
    tick_gemm(prof, P_DH_GEMM, B, H, U)
    return total, U


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def acc_bag(slot, rows, n, G, col0, ip0, net, in_items, B, DX):
    """``G[slot[c], col0:col0 + d] += w * DX[i]`` for every bag entry ``(c, w)`` of row ``i``'s
    item (``DX`` (>=B, d)); new rows are appended (``rows``) and zeroed over their full width.
    Returns the new row count."""
    indptr, indices, weights = net.indptr, net.indices, net.weights
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
def subnet_backward(s, net, in_items, B, bs, wk, sum_mode, sp, nY, cx, prof):
    """Gradients of subnet ``s`` from ``wk.dhc`` (gradient w.r.t. the combined hidden state):
    dense ones into ``wk.gtheta`` (its range ``S_D0:S_D1``, combine weight included), table rows
    into ``sp.GT`` (own table; count in ``sp.nT[s]``) or ``sp.GY`` (constrained ID input);
    subnet 0's input context into ``cx.gin`` (``cx`` None: no context). Returns the new
    ``nY``."""
    SI, LI, theta, gtheta, dhc = net.SI, net.LI, net.theta, wk.gtheta, wk.dhc
    cin = cx.cfg[0] if cx is not None and s == 0 else CIN_NONE
    l0, l1 = SI[s, S_L0], SI[s, S_L1]
    gl = l1 - 1
    H = LI[gl, L_H]
    dy = block_view(wk.DY, LI[gl, L_HOFF], bs, H)
    y = block_view(wk.Y, LI[gl, L_HOFF], bs, H)
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
    X = block_view(wk.Xf, SI[s, S_XOFF], bs, din)
    M0 = block_view(wk.M0f, SI[s, S_XOFF], bs, din)
    DX = block_view(wk.DXf, SI[s, S_XOFF], bs, din)
    kind, tab = SI[s, S_KIND], SI[s, S_TAB]
    for g in range(l1 - 1, l0 - 1, -1):
        H = LI[g, L_H]
        dyg = block_view(wk.DY, LI[g, L_HOFF], bs, H)
        multiply_rows(dyg, block_view(wk.MK, LI[g, L_HOFF], bs, H), B)
        hp = block_view(wk.HP, LI[g, L_HOFF], bs, H)
        dgx = block_view(wk.DGX, LI[g, L_GOFF], bs, 3 * H)
        dgh = block_view(wk.DGH, LI[g, L_GOFF], bs, 3 * H)
        gru_backward(dyg, hp, block_view(wk.GA, LI[g, L_GOFF], bs, 3 * H),
                     block_view(wk.GH, LI[g, L_GOFF], bs, 3 * H), dgx, dgh, B)
        column_sums(dgh, B, gtheta[LI[g, L_BHN]:LI[g, L_BHN] + H], 2 * H, H)
        column_sums(dgx, B, gtheta[LI[g, L_BX]:LI[g, L_BX] + 3 * H], 0, 3 * H)
        tick(prof, P_GRU_BACK)
        if cx is not None and g == l0 and cin == CIN_CONCAT:
            context_input_backward(cx, dgx[:B], B)
        hw = hp
        if cx is not None and s == 0 and g == l0 and cx.cfg[2] != CTR_NONE:
            hw = cx.hmod
            context_transition_backward(cx, dgh, flat_view(theta, LI[g, L_WH], H, 3 * H), hp, B)
        gemm_into(hw[:B].T, dgh[:B], flat_view(gtheta, LI[g, L_WH], H, 3 * H))
        tick_gemm(prof, P_DWH_GEMM, H, 3 * H, B)
        if g > l0:
            Hp = LI[g - 1, L_H]
            Wx = flat_view(theta, LI[g, L_WX], Hp, 3 * H)
            gemm_into(block_view(wk.Y, LI[g - 1, L_HOFF], bs, Hp)[:B].T, dgx[:B],
                   flat_view(gtheta, LI[g, L_WX], Hp, 3 * H))
            tick_gemm(prof, P_DWX_GEMM, Hp, 3 * H, B)
            gemm_into(dgx[:B], Wx.T, block_view(wk.DY, LI[g - 1, L_HOFF], bs, Hp)[:B])
            tick_gemm(prof, P_DX_GEMM, B, Hp, 3 * H)
        elif kind == K_DIRECT:
            for i in range(B):
                for k in range(3 * H):
                    DX[i, k] = dgx[i, k]
            if cx is not None and cin == CIN_MULTIPLY:
                context_input_backward(cx, DX[:B], B)
            tick(prof, P_GRU_BACK)
        else:
            Wx = flat_view(theta, LI[g, L_WX], din, 3 * H)
            gemm_into(X[:B].T, dgx[:B], flat_view(gtheta, LI[g, L_WX], din, 3 * H))
            tick_gemm(prof, P_DWX_GEMM, din, 3 * H, B)
            if tab != T_NONE or cin == CIN_MULTIPLY:
                gemm_into(dgx[:B], Wx.T, DX[:B])
                tick_gemm(prof, P_DX_GEMM, B, din, 3 * H)
            if cx is not None and cin == CIN_MULTIPLY:
                context_input_backward(cx, DX[:B], B)
    if tab == T_NONE:
        return nY
    multiply_rows(DX, M0, B)
    if tab == T_WY:
        # the constrained ID input (identity bag) is its own block of Wy: gradient rows are
        # full width, only that block is non-zero
        nY = acc_bag(sp.slotY, sp.rowsY, nY, sp.GY, SI[s, S_WYC0], SI[s, S_IPOFF], net,
                     in_items, B, DX)
        tick(prof, P_SPARSE)
        return nY
    tc = SI[s, S_TCOLS]
    cap = SI[s, S_GCAP]
    zero = np.int64(0)  # not the literal 0: Numba would compile acc_bag for it too
    sp.nT[s] = acc_bag(sp.slotT[SI[s, S_SOFF]:SI[s, S_SOFF] + SI[s, S_TROWS]],
                       sp.rowsT[SI[s, S_ROFF]:SI[s, S_ROFF] + cap], zero,
                       flat_view(sp.GT, SI[s, S_GOFF], cap, tc), zero, SI[s, S_IPOFF], net,
                       in_items, B, DX)
    tick(prof, P_SPARSE)
    return nY


@njit(cache=True, error_model="numpy")
def step_forward_output(net, active, sum_mode, in_items, B, C, wk, ob, sp, hy, cx, prof, of,
                        two):
    """Forward over the active subnets, sampled loss and the output layer's gradients (steps
    4-6 up to ``wk.dhc``; ``two``: see :func:`subnet_forward`); context (``cx``,
    :mod:`.context_step`; None without) on subnet 0's input and on the combined state;
    ``of`` (None or the output features' record) gets its rows' gradients. ``sp.counts`` gets
    ``[n output rows, n output rows]`` (:func:`step_backward` adds the input rows). Returns
    the step loss."""
    S = net.SI.shape[0]
    bs = hy.batch_size
    if cx is not None:
        context_zero_grads(cx)
    for s in range(S):
        sp.nT[s] = 0
        if active[s]:
            subnet_forward(s, net, in_items, B, bs, wk, cx, prof, two)
    combine_forward(net, active, B, bs, wk.Y, wk.hc, sum_mode)
    if cx is not None and cx.cfg[1] != COUT_NONE:
        context_output_forward(cx, wk.hc, B)
    tick(prof, P_GATES)
    total, n_out = output_forward_backward(wk.hc, wk.dhc, B, C, net, ob, sp, hy, prof, of,
                                           ob.rank)
    if cx is not None and cx.cfg[1] != COUT_NONE:
        context_output_backward(cx, wk.dhc, B)
    if of is not None:
        scatter_output_gradients(of, sp.rowsY, n_out, sp.GY, sp.gBy)
    sp.counts[0] = n_out
    sp.counts[1] = n_out
    return total


@njit(cache=True, error_model="numpy")
def step_backward(net, active, train, sum_mode, in_items, B, wk, sp, hy, cx, prof):
    """Gradients of the trained subnets from ``wk.dhc`` (steps 6-7 after
    :func:`step_forward_output`; their context's in ``cx.gin``); ``sp.counts[0]`` gets the
    number of ``Wy`` rows (output rows, then rows met only as constrained input)."""
    nY = sp.counts[1]
    for s in range(net.SI.shape[0]):
        if active[s] and train[s]:
            nY = subnet_backward(s, net, in_items, B, hy.batch_size, wk, sum_mode, sp, nY, cx,
                                 prof)
    sp.counts[0] = nY


@njit(cache=True, error_model="numpy")
def step_forward_backward(net, active, train, sum_mode, in_items, B, C, wk, ob, sp, hy, cx,
                          prof, of):
    """:func:`step_forward_output` then :func:`step_backward` (steps 4-7, one thread): the
    gradients of the trained subnets and of the output layer; ``sp.counts`` gets ``[n Wy rows,
    n output rows]``; table rows per subnet are in ``sp.nT``. Slots stay set (release with
    :func:`.update.step_update` or :func:`.update.release_all`). Returns the step loss."""
    # np.bool_, not the literal: Numba would compile the callees once more for it
    total = step_forward_output(net, active, sum_mode, in_items, B, C, wk, ob, sp, hy, cx,
                                prof, of, np.bool_(False))
    step_backward(net, active, train, sum_mode, in_items, B, wk, sp, hy, cx, prof)
    return total


@njit(cache=True, error_model="numpy")
def draw_masks(net, active, B, bs, M0f, MK, p_embed, p_hidden):
    """Inverted-dropout masks of the active subnets (step 3): input (one factor per row for
    one-hot input), then each layer's output."""
    SI, LI = net.SI, net.LI
    for s in range(SI.shape[0]):
        if not active[s]:
            continue
        din = SI[s, S_IN]
        M0 = block_view(M0f, SI[s, S_XOFF], bs, din)
        if SI[s, S_KIND] == K_DIRECT:
            col = np.empty((bs, 1), M0.dtype)
            dropout_mask(col, B, p_embed)
            for i in range(B):
                for k in range(din):
                    M0[i, k] = col[i, 0]
        else:
            dropout_mask(M0, B, p_embed)
        for g in range(SI[s, S_L0], SI[s, S_L1]):
            dropout_mask(block_view(MK, LI[g, L_HOFF], bs, LI[g, L_H]), B, p_hidden)
