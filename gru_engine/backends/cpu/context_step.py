"""The context layers of the context-aware GRU (:mod:`gru_engine.context`) in Numba: the hooks
that :mod:`.step` calls when a network has context (a :class:`Ctx`; the step kernels take
``None`` without context, and then none of these is compiled into them).

A context feature (time-gap bucket, hour, weekday, a categorical column) is an integer id per
event; each feature has its own rows in a context table, and an event's context vector is the
sum of its features' rows (a one-hot context times a weight matrix, as Smirnova & Vasile 2017).

* input ``concat`` (:data:`CIN_CONCAT`): ``Cin`` (R_in, 3 H_0) rows are added to the layer-0
  gate pre-activations of subnet 0: ``[x, onehot(c)] @ [Wx; Cin] = x Wx + sum_f Cin[c_f]``;
* input ``multiply`` (:data:`CIN_MULTIPLY`): ``x' = x * (1 + sum_f Cin[c_f])``, ``Cin`` (R_in,
  d_0) with d_0 subnet 0's input width, applied to the (dropped-out) input before ``Wx``;
* output ``multiply`` (:data:`COUT_MULTIPLY`): the combined state before the output layer
  ``hc' = hc * (1 + sum_f Cout[c'_f])``, ``Cout`` (R_out, Hc), ``c'`` the *next* event's
  context (known in training from the target's time, at serving from the request's time);
* transition ``multiply`` (:data:`CTR_MULTIPLY`): layer 0's recurrent matrix as a function of
  the current event's context, ``W_h(c) = diag(1 + sum_f Ch[c_f]) W_h``: ``W_h`` reads
  ``hmod = h_prev * (1 + sum_f Ch[c_f])``, ``Ch`` (R_in, H_0) (the update gate mixes the plain
  ``h_prev``; the previous state is a constant of the step, as everywhere in training).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from .optim import adagrad_flat

CIN_NONE, CIN_CONCAT, CIN_MULTIPLY = 0, 1, 2
COUT_NONE, COUT_MULTIPLY = 0, 1
CTR_NONE, CTR_MULTIPLY = 0, 1


class Ctx(NamedTuple):
    """Context record of a step (float arrays of the network's dtype).

    cfg (3,) int64 ``[input mode (CIN_*), output mode (COUT_*), transition mode (CTR_*)]``;
    ev_in (n_events, F_in),
    ev_out (n_events, F_out) int32: per training event the rows of ``Cin``/``Cout`` of its
    context features (empty at inference); rin (bs, F_in), rout (bs, F_out) int32: the rows of
    the step's rows (input: the current event's; output: the next event's); Cin (R_in, w_in),
    Cout (R_out, Hc): the tables (updated in place); gin, gout: their gradients (dense, zeroed
    every step); acc_in, vel_in, acc_out, vel_out: Adagrad state; mod_in, xraw (bs, w_in):
    ``1 + sum Cin`` and the unmodulated input (multiply); mod_out, hraw (bs, Hc): likewise for
    the output; Ch (R_in, H_0), gh, acc_h, vel_h: the transition table, its gradient and
    Adagrad state; mod_h, hmod, dh (bs, H_0): ``1 + sum Ch``, the modulated previous state of
    layer 0 and its gradient (transition)."""
    cfg: np.ndarray
    ev_in: np.ndarray
    ev_out: np.ndarray
    rin: np.ndarray
    rout: np.ndarray
    Cin: np.ndarray
    Cout: np.ndarray
    gin: np.ndarray
    gout: np.ndarray
    acc_in: np.ndarray
    vel_in: np.ndarray
    acc_out: np.ndarray
    vel_out: np.ndarray
    mod_in: np.ndarray
    xraw: np.ndarray
    mod_out: np.ndarray
    hraw: np.ndarray
    Ch: np.ndarray
    gh: np.ndarray
    acc_h: np.ndarray
    vel_h: np.ndarray
    mod_h: np.ndarray
    hmod: np.ndarray
    dh: np.ndarray


def make_ctx(cfg, Cin, Cout, bs: int, ev_in=None, ev_out=None, grads: bool = True,
             Ch=None) -> Ctx:
    """A :class:`Ctx` of ``bs`` rows over the tables ``Cin`` (R_in, w_in), ``Cout`` (R_out,
    Hc) and ``Ch`` (R_in, H_0; None: no transition table) (float, one dtype); ``cfg`` of 2
    modes means no transition; ``ev_in``/``ev_out`` the training events' rows (None: none, for
    inference). Without ``grads`` the gradient and optimiser arrays are empty."""
    dt = Cin.dtype
    F_in = 0 if ev_in is None else ev_in.shape[1]
    F_out = 0 if ev_out is None else ev_out.shape[1]
    ev_in = np.zeros((0, F_in), np.int32) if ev_in is None else np.ascontiguousarray(ev_in,
                                                                                    np.int32)
    ev_out = np.zeros((0, F_out), np.int32) if ev_out is None else np.ascontiguousarray(
        ev_out, np.int32)
    like = (lambda a: np.zeros_like(a)) if grads else (lambda a: np.zeros((0, a.shape[1]), dt))
    Ch = np.zeros((0, 1), dt) if Ch is None else Ch
    cfg = np.concatenate([np.asarray(cfg, np.int64), np.zeros(3 - len(cfg), np.int64)])
    return Ctx(cfg=cfg, ev_in=ev_in, ev_out=ev_out,
               rin=np.zeros((bs, max(F_in, 1)), np.int32),
               rout=np.zeros((bs, max(F_out, 1)), np.int32), Cin=Cin, Cout=Cout,
               gin=like(Cin), gout=like(Cout), acc_in=like(Cin), vel_in=like(Cin),
               acc_out=like(Cout), vel_out=like(Cout),
               mod_in=np.ones((bs, Cin.shape[1]), dt), xraw=np.zeros((bs, Cin.shape[1]), dt),
               mod_out=np.ones((bs, Cout.shape[1]), dt), hraw=np.zeros((bs, Cout.shape[1]), dt),
               Ch=Ch, gh=like(Ch), acc_h=like(Ch), vel_h=like(Ch),
               mod_h=np.ones((bs, Ch.shape[1]), dt), hmod=np.zeros((bs, Ch.shape[1]), dt),
               dh=np.zeros((bs if grads else 0, Ch.shape[1]), dt))


def kept_events(events: tuple, rows) -> tuple:
    """The per-event table rows ``events`` (each (n, F) int32; a side that is off (0, F)) of
    the training events ``rows`` ((n',) int, in epoch order: the kept events of augmented
    sessions), for both backends' ``select_events``."""
    return tuple(np.ascontiguousarray(ev[rows]) if len(ev) else ev for ev in events)


@njit(cache=True, error_model="numpy")
def context_rows(cx, cur, B):
    """Training: the context rows of the step's ``B`` rows from their current events ``cur``
    (input: event ``cur[r]``; output: the target event ``cur[r] + 1``)."""
    if cx.cfg[0] != CIN_NONE or cx.cfg[2] != CTR_NONE:  # element loops: a row slice copy
        # compiles a shape-error formatter
        for r in range(B):
            for f in range(cx.rin.shape[1]):
                cx.rin[r, f] = cx.ev_in[cur[r], f]
    if cx.cfg[1] != COUT_NONE:
        for r in range(B):
            for f in range(cx.rout.shape[1]):
                cx.rout[r, f] = cx.ev_out[cur[r] + 1, f]


@njit(cache=True, error_model="numpy")
def _row_sums(table, rows, B, out, plus_one):
    """``out[i] = plus_one + sum_f table[rows[i, f]]`` for ``i < B``."""
    for i in range(B):
        for k in range(out.shape[1]):
            out[i, k] = plus_one
        for f in range(rows.shape[1]):
            r = rows[i, f]
            for k in range(out.shape[1]):
                out[i, k] += table[r, k]


@njit(cache=True, error_model="numpy")
def _modulate(table, rows, B, X, mod, raw):
    """``raw[:B] = X[:B]``; ``mod[:B] = 1 + sum table[rows]``; ``X[:B] *= mod[:B]``."""
    _row_sums(table, rows, B, mod, 1.0)
    for i in range(B):
        for k in range(X.shape[1]):
            raw[i, k] = X[i, k]
            X[i, k] *= mod[i, k]


@njit(cache=True, error_model="numpy")
def context_input_forward(cx, X, B):
    """Multiply mode: ``X[:B] *= 1 + sum Cin[rin]`` in place (keeps ``xraw``, ``mod_in``)."""
    _modulate(cx.Cin, cx.rin, B, X, cx.mod_in, cx.xraw)


@njit(cache=True, error_model="numpy")
def context_input_gates(cx, gx, B):
    """Concat mode: ``gx[:B] += sum Cin[rin]`` (layer-0 gate pre-activations, (bs, 3 H_0))."""
    for i in range(B):
        for f in range(cx.rin.shape[1]):
            r = cx.rin[i, f]
            for k in range(gx.shape[1]):
                gx[i, k] += cx.Cin[r, k]


@njit(cache=True, error_model="numpy")
def context_input_backward(cx, D, B):
    """Gradient of the input context from ``D`` (B, w_in): concat mode ``D`` = dL/d(gates of
    layer 0), ``gin[rin] += D``; multiply mode ``D`` = dL/dx' (modulated input), ``gin[rin] +=
    D * xraw`` and ``D *= mod_in`` in place (then dL/dx)."""
    multiply = cx.cfg[0] == CIN_MULTIPLY
    for i in range(B):
        for f in range(cx.rin.shape[1]):
            r = cx.rin[i, f]
            for k in range(D.shape[1]):
                cx.gin[r, k] += D[i, k] * cx.xraw[i, k] if multiply else D[i, k]
        if multiply:
            for k in range(D.shape[1]):
                D[i, k] *= cx.mod_in[i, k]


@njit(cache=True, error_model="numpy")
def context_output_forward(cx, hc, B):
    """``hc[:B] *= 1 + sum Cout[rout]`` in place (keeps ``hraw``, ``mod_out``)."""
    _modulate(cx.Cout, cx.rout, B, hc, cx.mod_out, cx.hraw)


@njit(cache=True, error_model="numpy")
def context_output_backward(cx, dhc, B):
    """From ``dhc`` = dL/dhc' (modulated): ``gout[rout] += dhc * hraw``, then ``dhc *=
    mod_out`` in place (dL/dhc, what the subnets' backward reads)."""
    for i in range(B):
        for f in range(cx.rout.shape[1]):
            r = cx.rout[i, f]
            for k in range(dhc.shape[1]):
                cx.gout[r, k] += dhc[i, k] * cx.hraw[i, k]
        for k in range(dhc.shape[1]):
            dhc[i, k] *= cx.mod_out[i, k]


@njit(cache=True, error_model="numpy")
def context_transition_forward(cx, hp, B):
    """Transition mode: ``hmod[:B] = hp[:B] * (1 + sum Ch[rin])`` (layer 0's previous state as
    ``W_h`` reads it; keeps ``mod_h``). Returns ``hmod``."""
    _row_sums(cx.Ch, cx.rin, B, cx.mod_h, 1.0)
    for i in range(B):
        for k in range(hp.shape[1]):
            cx.hmod[i, k] = hp[i, k] * cx.mod_h[i, k]
    return cx.hmod


@njit(cache=True, error_model="numpy")
def context_transition_backward(cx, dgh, Wh, hp, B):
    """From ``dgh`` (B, 3 H_0) = dL/d(hmod W_h): ``dh = dgh W_h^T`` (dL/d hmod) and ``gh[rin]
    += dh * hp`` (``hp`` the plain previous state)."""
    np.dot(dgh[:B], Wh.T, cx.dh[:B])
    for i in range(B):
        for f in range(cx.rin.shape[1]):
            r = cx.rin[i, f]
            for k in range(hp.shape[1]):
                cx.gh[r, k] += cx.dh[i, k] * hp[i, k]


@njit(cache=True, error_model="numpy")
def context_zero_grads(cx):
    """Zero the tables' gradients before a step."""
    if cx.cfg[0] != CIN_NONE:
        cx.gin[:, :] = 0.0
    if cx.cfg[1] != COUT_NONE:
        cx.gout[:, :] = 0.0
    if cx.cfg[2] != CTR_NONE:
        cx.gh[:, :] = 0.0


@njit(cache=True, error_model="numpy")
def context_update(cx, lr, mom):
    """Adagrad + momentum of the tables (dense: they are small; untouched rows have zero
    gradient and, without momentum, do not move)."""
    if cx.cfg[0] != CIN_NONE:
        n = cx.Cin.size
        adagrad_flat(cx.Cin.reshape(n), cx.gin.reshape(n), cx.acc_in.reshape(n),
                     cx.vel_in.reshape(n), lr, mom)
    if cx.cfg[1] != COUT_NONE:
        n = cx.Cout.size
        adagrad_flat(cx.Cout.reshape(n), cx.gout.reshape(n), cx.acc_out.reshape(n),
                     cx.vel_out.reshape(n), lr, mom)
    if cx.cfg[2] != CTR_NONE:
        n = cx.Ch.size
        adagrad_flat(cx.Ch.reshape(n), cx.gh.reshape(n), cx.acc_h.reshape(n),
                     cx.vel_h.reshape(n), lr, mom)
