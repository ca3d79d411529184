"""The user-level GRU's part of a training step (:mod:`gru_engine.user_level`) and the user
trainer's whole epoch, in Numba (compiled only for ``user_layers > 0``).

One step of :func:`user_train_steps` (the order of ``backends/cuda/user_trainer.py``):

1. rows starting a user forget its state; rows starting a session commit the user's last
   finished session, ``Ub = GRU_u(S, Ub)`` (current parameters), ``S = pending``
   (:func:`begin_sessions`);
2. the rows with a user state recompute ``u = GRU_u(S, Ub)`` (times the user-dropout mask);
   ``'init'``: the rows starting a session start from ``h0 = tanh(u Wi + bi)`` (every layer);
   ``'all'``: ``u Wu`` goes to the extra layer-0 gates ``GU`` (:func:`user_forward`);
3. the network's step (:func:`.step.step_forward_backward`), the user part's backward from the
   step's buffers (:func:`user_backward`), the network's update (:func:`.update.step_update`),
   then Adagrad of ``U`` (:func:`user_update`: the dense part and the touched items-table rows);
4. rows that walked a session's last input keep its representation as pending; the walk
   advances (:func:`gru_engine.user_batching.advance_walk`) and every row array is compacted.

A user GRU cell is the network's (:func:`.gru.gru_forward` / :func:`.gru.gru_backward`). Arrays
of ``R`` rows are the first ``R`` rows of ``(bs, ...)`` buffers; ``rows`` maps them to batch
rows. Float arrays share one dtype (float32 in training, float64 in gradient checks).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from ...network import L_GOFF, L_H, L_HOFF, L_WH
from ...user_batching import advance_walk
from ...user_level import (U_ALL, U_BHN, U_BI, U_BX, U_DENSE, U_G0, U_HU, U_INIT, U_ITEMS,
                           U_SIN, U_W, U_WH, U_WI, U_WU, U_WX)
from .gru import column_sums, gru_backward, gru_forward
from .mathfuncs import cast_like, ftanh
from .optim import adagrad_flat, claim_row, release_rows
from .step import block_view, draw_masks, flat_view, step_forward_backward
from .update import release_all, step_update
from .trainer import carry_hidden, step_columns


class UserNet(NamedTuple):
    """The user GRU: UI (N_UCOL,) int64 its layout (``user_level.U_*``); U, acc, vel (n_user,)
    float its flat parameters, Adagrad accumulators and momentum velocities; p_drop (1,)
    float64 the user dropout (0: none)."""
    UI: np.ndarray
    U: np.ndarray
    acc: np.ndarray
    vel: np.ndarray
    p_drop: np.ndarray


class UserRows(NamedTuple):
    """Per batch row: Ub (bs, Hu) the user state before the user's last finished session; S
    (bs,) int64 that session's number ('items') or X (bs, Hc) its combined state ('hidden';
    (bs, 0) for 'items'); pend, pendX the same of the session being walked; has, has_pend (bs,)
    bool whether the row has them."""
    Ub: np.ndarray
    S: np.ndarray
    X: np.ndarray
    pend: np.ndarray
    pendX: np.ndarray
    has: np.ndarray
    has_pend: np.ndarray


class UserWork(NamedTuple):
    """Step buffers (``bs`` rows; G = 3 Hu, W the network's state width, G0 = 3 H0, Hm the
    widest layer): rows (bs,) int64 the batch rows with a user state, irows (bs,) int64 those
    starting a session ('init'); counts (2,) int64 ``[R, Ri]``; ub, u, du, drop (bs, Hu): the
    rows' states, ``u`` (after dropout), its gradient, the dropout mask; gx, gh, ga, dgx, dgh
    (bs, G) the cell's buffers; x (bs, Hc or 0) the rows' combined states ('hidden'); ui, dui
    (bs, Hu) ``u`` of the init rows and its gradient; h0, dh0 (bs, W) their initial states
    and the gradient w.r.t. the pre-activation; hg (bs * 3 Hm,), hw (bs * Hm,) rows of a layer's
    hidden-side gate gradient and their product with ``Wh^T`` (flat); gates (bs, G0) ``u Wu`` or its
    gradient; gU (n_user - U_DENSE,) the dense part's gradient; slot (n_items,) int32 (-1: no
    row), trows (cap,) int32, GT (cap, G): the items-table rows' gradients, ``nT`` (1,) int64
    their count."""
    rows: np.ndarray
    irows: np.ndarray
    counts: np.ndarray
    ub: np.ndarray
    u: np.ndarray
    du: np.ndarray
    drop: np.ndarray
    gx: np.ndarray
    gh: np.ndarray
    ga: np.ndarray
    dgx: np.ndarray
    dgh: np.ndarray
    x: np.ndarray
    ui: np.ndarray
    dui: np.ndarray
    h0: np.ndarray
    dh0: np.ndarray
    hg: np.ndarray
    hw: np.ndarray
    gates: np.ndarray
    gU: np.ndarray
    slot: np.ndarray
    trows: np.ndarray
    GT: np.ndarray
    nT: np.ndarray


@njit(cache=True, error_model="numpy")
def user_cell(un, rs, uw, items, offsets, rows, R, out):
    """``out[:R] = GRU_u(S, Ub)`` of batch rows ``rows[:R]`` (before dropout); leaves the cell's
    state in ``uw`` (``ub``, ``gx``, ``gh``, ``ga``, ``x``) for :func:`user_backward`. 'items':
    ``S`` is a bag of the session's clicks ``items[offsets[s]:offsets[s+1]]``, weight 1/length."""
    UI, U = un.UI, un.U
    Hu = UI[U_HU]
    G = 3 * Hu
    gx, ub = uw.gx, uw.ub
    for i in range(R):
        r = rows[i]
        for k in range(Hu):
            ub[i, k] = rs.Ub[r, k]
    if UI[U_ITEMS]:
        for i in range(R):
            s = rs.S[rows[i]]
            a, b = offsets[s], offsets[s + 1]
            w = cast_like(gx, 1.0 / max(b - a, 1))
            gxi = gx[i]  # row views: the loops vectorise (see gru.gru_forward)
            for k in range(G):
                gxi[k] = 0.0
            for j in range(a, b):
                base = UI[U_WX] + items[j] * G
                row = U[base:base + G]
                for k in range(G):
                    gxi[k] += w * row[k]
    else:
        for i in range(R):
            r = rows[i]
            for k in range(uw.x.shape[1]):
                uw.x[i, k] = rs.X[r, k]
        np.dot(uw.x[:R], flat_view(U, UI[U_WX], UI[U_SIN], G), gx[:R])
    bx = U[UI[U_BX]:UI[U_BX] + G]
    for i in range(R):
        for k in range(G):
            gx[i, k] += bx[k]
    np.dot(ub[:R], flat_view(U, UI[U_WH], Hu, G), uw.gh[:R])
    gru_forward(gx, ub, U[UI[U_BHN]:UI[U_BHN] + Hu], uw.gh, uw.ga, out, R)


@njit(cache=True, error_model="numpy")
def begin_sessions(un, rs, uw, items, offsets, reset, new_user, B):
    """Step 1 for the ``B`` rows: new users start without a state; a session start commits
    the user's last finished session (``Ub = GRU_u(S, Ub)``, current parameters)."""
    Hu = un.UI[U_HU]
    rows = uw.rows
    R = 0
    for r in range(B):
        if new_user[r]:
            rs.has[r] = False
            rs.has_pend[r] = False
            for k in range(Hu):
                rs.Ub[r, k] = 0.0
        if reset[r] and rs.has_pend[r] and rs.has[r]:
            rows[R] = r
            R += 1
    if R > 0:
        user_cell(un, rs, uw, items, offsets, rows, R, uw.u)
        for i in range(R):
            for k in range(Hu):
                rs.Ub[rows[i], k] = uw.u[i, k]
    for r in range(B):
        if reset[r] and rs.has_pend[r]:
            rs.S[r] = rs.pend[r]
            for k in range(rs.X.shape[1]):
                rs.X[r, k] = rs.pendX[r, k]
            rs.has[r] = True
            rs.has_pend[r] = False


@njit(cache=True, error_model="numpy")
def user_forward(un, rs, uw, items, offsets, reset, B, LI, HP, GU, bs, rng):
    """Step 2: ``u`` of the rows with a user state (``uw.rows``, count in ``uw.counts[0]``),
    ``h0`` into the previous-state buffer ``HP`` of those starting a session ('init'; rows in
    ``uw.irows``), ``u Wu`` into the extra layer-0 gates ``GU`` ('all'; zero for the other
    rows). The dropout mask is drawn from ``rng`` (``rng.random()`` row by row)."""
    UI, U = un.UI, un.U
    Hu = UI[U_HU]
    if UI[U_ALL]:
        gu = block_view(GU, 0, bs, UI[U_G0])
        for r in range(B):
            for k in range(gu.shape[1]):
                gu[r, k] = 0.0
    rows = uw.rows
    R = 0
    for r in range(B):
        if rs.has[r]:
            rows[R] = r
            R += 1
    uw.counts[0] = R
    uw.counts[1] = 0
    if R == 0:
        return
    u = uw.u
    user_cell(un, rs, uw, items, offsets, rows, R, u)
    p = un.p_drop[0]
    if p > 0.0:
        keep = 1.0 - p
        on = cast_like(u, 1.0 / keep)
        off = cast_like(u, 0.0)
        for i in range(R):
            for k in range(Hu):
                uw.drop[i, k] = on if rng.random() < keep else off
                u[i, k] *= uw.drop[i, k]
    if UI[U_INIT]:
        Ri = 0
        for i in range(R):
            if reset[rows[i]]:
                uw.irows[Ri] = i
                for k in range(Hu):
                    uw.ui[Ri, k] = u[i, k]
                Ri += 1
        uw.counts[1] = Ri
        if Ri > 0:
            W = UI[U_W]
            h0 = uw.h0
            np.dot(uw.ui[:Ri], flat_view(U, UI[U_WI], Hu, W), h0[:Ri])
            bi = U[UI[U_BI]:UI[U_BI] + W]
            for i in range(Ri):
                r = rows[uw.irows[i]]
                for g in range(LI.shape[0]):
                    H, off = LI[g, L_H], LI[g, L_HOFF]
                    hp = block_view(HP, off, bs, H)
                    for k in range(H):
                        v = ftanh(h0[i, off + k] + bi[off + k])
                        h0[i, off + k] = v
                        hp[r, k] = v
    if UI[U_ALL]:
        gates = uw.gates
        np.dot(u[:R], flat_view(U, UI[U_WU], Hu, UI[U_G0]), gates[:R])
        for i in range(R):
            for k in range(gates.shape[1]):
                gu[rows[i], k] = gates[i, k]


@njit(cache=True, error_model="numpy")
def user_backward(un, uw, items, offsets, rs, LI, theta, wk, bs):
    """Step 3's user part (after the network's forward/backward, before its update): the
    gradient of ``U`` into ``uw.gU`` (dense part) and ``uw.GT`` (items-table rows, claimed in
    ``uw.slot``; count ``uw.nT[0]``) from the layer-0 gate gradient ``wk.DGX`` ('all') and the
    gradient w.r.t. the init rows' previous state, every layer ``dh * z + dgh Wh^T`` ('init')."""
    UI, U = un.UI, un.U
    Hu = UI[U_HU]
    G = 3 * Hu
    R, Ri = uw.counts[0], uw.counts[1]
    d0 = UI[U_DENSE]
    gU = uw.gU
    gU[:] = 0.0
    du, u, rows = uw.du, uw.u, uw.rows
    for i in range(R):
        for k in range(Hu):
            du[i, k] = 0.0
    if UI[U_ALL]:
        G0 = UI[U_G0]
        dgt = uw.gates
        dgx0 = block_view(wk.DGX, LI[0, L_GOFF], bs, G0)
        for i in range(R):
            for k in range(G0):
                dgt[i, k] = dgx0[rows[i], k]
        Wu = flat_view(U, UI[U_WU], Hu, G0)
        np.dot(u[:R].T, dgt[:R], flat_view(gU, UI[U_WU] - d0, Hu, G0))
        np.dot(dgt[:R], Wu.T, du[:R])
    if Ri > 0:
        W = UI[U_W]
        dh0 = uw.dh0
        for g in range(LI.shape[0]):
            H, off, goff = LI[g, L_H], LI[g, L_HOFF], LI[g, L_GOFF]
            dgh = block_view(wk.DGH, goff, bs, 3 * H)
            hg = flat_view(uw.hg, 0, Ri, 3 * H)
            hw = flat_view(uw.hw, 0, Ri, H)
            for i in range(Ri):
                r = rows[uw.irows[i]]
                for k in range(3 * H):
                    hg[i, k] = dgh[r, k]
            np.dot(hg, flat_view(theta, LI[g, L_WH], H, 3 * H).T, hw)
            dh = block_view(wk.DY, off, bs, H)
            ga = block_view(wk.GA, goff, bs, 3 * H)
            for i in range(Ri):
                r = rows[uw.irows[i]]
                for k in range(H):
                    hv = uw.h0[i, off + k]
                    d = dh[r, k] * ga[r, H + k] + hw[i, k]
                    dh0[i, off + k] = d * (1 - hv * hv)
        np.dot(uw.ui[:Ri].T, dh0[:Ri], flat_view(gU, UI[U_WI] - d0, Hu, W))
        column_sums(dh0, Ri, gU[UI[U_BI] - d0:UI[U_BI] - d0 + W], 0, W)
        np.dot(dh0[:Ri], flat_view(U, UI[U_WI], Hu, W).T, uw.dui[:Ri])
        for i in range(Ri):
            j = uw.irows[i]
            for k in range(Hu):
                du[j, k] += uw.dui[i, k]
    if un.p_drop[0] > 0.0:
        for i in range(R):
            for k in range(Hu):
                du[i, k] *= uw.drop[i, k]
    gru_backward(du, uw.ub, uw.ga, uw.gh, uw.dgx, uw.dgh, R)
    column_sums(uw.dgx, R, gU[UI[U_BX] - d0:UI[U_BX] - d0 + G], 0, G)
    np.dot(uw.ub[:R].T, uw.dgh[:R], flat_view(gU, UI[U_WH] - d0, Hu, G))
    column_sums(uw.dgh, R, gU[UI[U_BHN] - d0:UI[U_BHN] - d0 + Hu], 2 * Hu, Hu)
    if UI[U_ITEMS]:
        n = 0
        for i in range(R):
            s = rs.S[rows[i]]
            a, b = offsets[s], offsets[s + 1]
            w = cast_like(uw.dgx, 1.0 / max(b - a, 1))
            dgxi = uw.dgx[i]
            for j in range(a, b):
                t, n = claim_row(uw.slot, uw.trows, n, uw.GT, items[j])
                gt = uw.GT[t]
                for k in range(G):
                    gt[k] += w * dgxi[k]
        uw.nT[0] = n
    else:
        np.dot(uw.x[:R].T, uw.dgx[:R], flat_view(gU, UI[U_WX], UI[U_SIN], G))


@njit(cache=True, error_model="numpy")
def user_update(un, uw, lr, mom):
    """Adagrad (+ momentum) of ``U`` (the formula of :mod:`.optim`): the dense part, and the
    items-table rows of the step's bags; releases their slots."""
    UI, U = un.UI, un.U
    d0 = UI[U_DENSE]
    adagrad_flat(U[d0:], uw.gU, un.acc[d0:], un.vel[d0:], lr, mom)
    if UI[U_ITEMS]:
        G = 3 * UI[U_HU]
        for t in range(uw.nT[0]):
            a = UI[U_WX] + uw.trows[t] * G
            adagrad_flat(U[a:a + G], uw.GT[t], un.acc[a:a + G], un.vel[a:a + G], lr, mom)
        release_rows(uw.slot, uw.trows, uw.nT[0])
        uw.nT[0] = 0


@njit(cache=True, error_model="numpy")
def compact_rows(rs, src, n):
    """Row ``w`` of every :class:`UserRows` array takes row ``src[w]`` (``src`` increasing, so
    in place)."""
    for w in range(n):
        r = src[w]
        for k in range(rs.Ub.shape[1]):
            rs.Ub[w, k] = rs.Ub[r, k]
        for k in range(rs.X.shape[1]):
            rs.X[w, k] = rs.X[r, k]
            rs.pendX[w, k] = rs.pendX[r, k]
        rs.S[w], rs.pend[w] = rs.S[r], rs.pend[r]
        rs.has[w], rs.has_pend[w] = rs.has[r], rs.has_pend[r]


@njit(cache=True, error_model="numpy")
def user_train_steps(max_steps, net, sc, st, wk, ob, sp, opt, active, train, flags, min_rows,
                     draw_dropout, hy, cx, of, walk, un, rs, uw, rng):
    """Up to ``max_steps`` steps (all remaining when < 0) of the user-parallel epoch ``walk``
    (:class:`~gru_engine.user_batching.Walk`); arguments as :func:`.trainer.train_steps`
    (``flags`` ``[-, freeze_out, sum_mode]``; no interleaving) plus the user GRU ``un``
    (:class:`UserNet`), the rows' user state ``rs`` (:class:`UserRows`), buffers ``uw``
    (:class:`UserWork`) and the dropout generator ``rng``. Returns ``(sum of step_loss * rows,
    events, finite)``; stops at the first non-finite step loss."""
    LI = net.LI
    bs = hy.batch_size
    freeze_out, sum_mode = flags[1], flags[2]
    state = sc.state
    store_pos = state[2]
    loss_sum = 0.0
    events = 0
    steps = 0
    finite = True
    items, offsets = sc.items, sc.offsets
    while walk.state[0] > 0 and (max_steps < 0 or steps < max_steps):
        B = walk.state[0]
        for r in range(B):
            q = walk.p[r]
            sc.cur[r] = walk.event[q]
            sc.reset[r] = walk.start[q]
        begin_sessions(un, rs, uw, items, offsets, sc.reset, walk.new_user, B)
        C, store_pos = step_columns(sc, B, ob, st, store_pos, hy)
        if draw_dropout:
            draw_masks(net, active, B, bs, wk.M0f, wk.MK, hy.dropout_p_embed,
                       hy.dropout_p_hidden)
        user_forward(un, rs, uw, items, offsets, sc.reset, B, LI, wk.HP, wk.GU, bs, rng)
        loss = step_forward_backward(net, active, train, sum_mode, sc.in_items, B, C, wk, ob,
                                     sp, hy, cx, None, of)
        if not np.isfinite(loss):
            release_all(net.SI, sp)
            finite = False
            break
        R = uw.counts[0]
        if R > 0:
            user_backward(un, uw, items, offsets, rs, LI, net.theta, wk, bs)
        step_update(net, active, train, sum_mode, freeze_out, wk.gtheta, opt, sp,
                    hy.learning_rate, hy.momentum, None)
        if R > 0:
            user_update(un, uw, hy.learning_rate, hy.momentum)
        for r in range(B):
            if walk.last[walk.p[r]]:
                rs.pend[r] = walk.session[walk.p[r]]
                for k in range(rs.pendX.shape[1]):
                    rs.pendX[r, k] = wk.hc[r, k]
                rs.has_pend[r] = True
        loss_sum += loss * B
        events += B
        steps += 1
        state[4] += 1
        n = advance_walk(walk, min_rows)
        compact_rows(rs, walk.src, n)
        for r in range(n):
            sc.reset[r] = walk.start[walk.p[r]]
            sc.src[r] = walk.src[r]
        for g in range(LI.shape[0]):
            H = LI[g, L_H]
            carry_hidden(block_view(wk.HP, LI[g, L_HOFF], bs, H),
                         block_view(wk.Y, LI[g, L_HOFF], bs, H), sc.reset, sc.src, n)
    state[0] = walk.state[0]
    state[2] = store_pos
    state[3] += steps
    return loss_sum, events, finite
