"""The inference step of any network (:func:`infer_step`): the scorers' GRU step over live
sessions' state rows, with the layer, combine and context kernels of :mod:`.step`."""
from __future__ import annotations

import numpy as np
from numba import njit

from ...network import L_H, L_HOFF, L_STOFF
from .context_step import COUT_NONE, context_output_forward
from .losses import activate
from .step import block_view, combine_forward, subnet_forward


@njit(cache=True, error_model="numpy", nogil=True)
def apply_final_act(S, R, act, param):
    """``S[:R] = final_act(S[:R])`` in place."""
    for i in range(R):
        for j in range(S.shape[1]):
            S[i, j] = activate(S[i, j], act, param)


@njit(cache=True, error_model="numpy", nogil=True)
def infer_step(net, active, sum_mode, rows, items, new_session, state, wk, hc_aug, cx):
    """Inference step (no dropout: ``wk.M0f``, ``wk.MK`` all ones) for ``R = len(rows)`` live
    sessions. ``wk``: a :class:`Work` of ``bs = hc_aug.shape[0]`` rows (the gradient buffers may
    be empty).

    state: (n_slots, sum of layer sizes) float32, layer ``g`` in columns ``L_STOFF``..; rows are
    gathered (zero where ``new_session``), stepped and scattered back. ``hc_aug[:R]`` gets
    ``[combined hidden | 1]``, the combined state modulated by the output context in ``cx``
    (:mod:`.context_step`; ``cx.rin``/``cx.rout`` set by the caller; None: no context). Releases the GIL: calls
    on disjoint ``rows`` with their own buffers (``wk``, ``hc_aug``, ``cx``) may run on
    separate threads. With a non-empty ``wk.GU`` (user-level GRU, ``user_mode='all'``) the
    last ``len(GU) / bs`` columns of each state row are the slot's extra layer-0 gates (read,
    never written).
    """
    LI = net.LI
    R = len(rows)
    bs = hc_aug.shape[0]
    gw = wk.GU.shape[0] // bs
    if gw > 0:
        gu = block_view(wk.GU, 0, bs, gw)
        c0 = state.shape[1] - gw
        for i in range(R):
            for j in range(gw):  # element loops (a row slice copy: see below)
                gu[i, j] = state[rows[i], c0 + j]
    for g in range(LI.shape[0]):
        H = LI[g, L_H]
        st0 = LI[g, L_STOFF]
        hp = block_view(wk.HP, LI[g, L_HOFF], bs, H)
        for i in range(R):
            if new_session[i]:
                hp[i, :] = 0.0
            else:  # element loops: an array slice assignment compiles a shape-error formatter
                for j in range(H):
                    hp[i, j] = state[rows[i], st0 + j]
    for s in range(net.SI.shape[0]):
        subnet_forward(s, net, items, R, bs, wk, cx, None, np.bool_(False))
    Hc = hc_aug.shape[1] - 1
    hc = hc_aug[:, :Hc]
    combine_forward(net, active, R, bs, wk.Y, hc, sum_mode)
    if cx is not None and cx.cfg[1] != COUT_NONE:
        context_output_forward(cx, hc, R)
    for i in range(R):
        hc_aug[i, Hc] = 1.0
    for g in range(LI.shape[0]):
        H = LI[g, L_H]
        st0 = LI[g, L_STOFF]
        y = block_view(wk.Y, LI[g, L_HOFF], bs, H)
        for i in range(R):
            for j in range(H):
                state[rows[i], st0 + j] = y[i, j]
