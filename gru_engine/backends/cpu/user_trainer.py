"""The CPU trainer of a network with a user-level GRU (:mod:`gru_engine.user_level`).

:class:`UserTrainer` is the CPU :class:`~.trainer.Trainer` with a user-parallel schedule
(:mod:`gru_engine.user_batching`) and the user GRU: each step runs the compiled network step
of :mod:`.step` (``step_forward_backward`` / ``step_update``, unchanged) between the user
part's forward and backward in NumPy (a few (rows x Hu) products per step). The step loop is
Python, one iteration per step; the epoch-loop interface is the Trainer's.

Per row it carries, besides the hidden state: ``Ub`` (Hu,) the user state before the user's
last finished session, ``S`` that session's representation, ``has`` whether the user has a
state, and the pending representation of the session being walked (committed when the next
session of the user starts: ``Ub = GRU_u(S, Ub)``, ``S = pending``).
"""
from __future__ import annotations

import numpy as np

from ...config import ADAGRAD_EPS
from ...network import L_GOFF, L_H, L_HOFF, L_WH
from ...user_batching import UserSchedule, walk_order
from ...user_level import (U_ALL, U_DENSE, U_G0, U_HU, U_INIT, U_ITEMS, U_NROWS, U_SIN,
                           SessionBags, UserStep, gru_step, initial_state_gradient,
                           scatter_initial_state, user_input_gates, user_views)
from .step import block_view, draw_masks, release_all, step_forward_backward, step_update
from .trainer import Store, Trainer, carry_hidden, step_columns, work_buffers


def adagrad(p, g, acc, vel, lr: float, mom: float) -> None:
    """In-place Adagrad + momentum of arrays ``p``, ``g``, ``acc``, ``vel`` (the formula of
    :mod:`.optim`)."""
    acc += g * g
    step = g / np.sqrt(acc + p.dtype.type(ADAGRAD_EPS))
    if mom > 0.0:
        vel *= p.dtype.type(mom)
        vel -= p.dtype.type(lr) * step
        p += vel
    else:
        p -= p.dtype.type(lr) * step


class UserTrainer(Trainer):
    """Trainer of a network plus user GRU. ``params`` also holds ``'UI'``/``'U'``
    (:func:`~gru_engine.user_level.user_layout`; ``U`` updated in place); ``walks``: one
    int64 array of session numbers per user (:func:`~gru_engine.user_batching.user_walks`);
    ``start_times`` (n_sessions,) float the sessions' first click times (walk order);
    ``shuffle``: visit users in random order (``rng``). Other arguments as :class:`Trainer`
    (``plan`` must train every subnet in every epoch)."""

    def __init__(self, params, hyper, support, walks, start_times, shuffle, rng,
                 user_dropout: float = 0.0, optimizer_state=None, **kwargs):
        super().__init__(params, hyper, support, **kwargs)
        p = params
        self.UI, self.U = p["UI"], p["U"]
        UI, bs = self.UI, int(hyper.batch_size)
        self.walks, self.start_times, self.shuffle, self.rng = walks, start_times, shuffle, rng
        dt = p["Wy"].dtype
        if UI[U_ALL]:
            self.work = work_buffers(self.net.SI, p["LI"], bs, p["Wy"].shape[1],
                                     len(p["theta"]), dt, user_gates=int(UI[U_G0]))
        Hu = int(UI[U_HU])
        s_shape = (bs,) if UI[U_ITEMS] else (bs, int(UI[U_SIN]))
        s_dtype = np.int64 if UI[U_ITEMS] else dt
        self.rowstate = {"Ub": np.zeros((bs, Hu), dt), "S": np.zeros(s_shape, s_dtype),
                         "pend": np.zeros(s_shape, s_dtype), "has": np.zeros(bs, np.bool_),
                         "has_pend": np.zeros(bs, np.bool_)}
        self.acc_u, self.vel_u = np.zeros_like(self.U), np.zeros_like(self.U)
        self.walk, self.bags = None, None
        self.user_dropout = float(user_dropout)
        if optimizer_state is not None:
            self.load_state(optimizer_state=optimizer_state)

    # ---- the user part of one step ----------------------------------------------------------
    def _layer_views(self, g):
        LI, wk, bs = self.net.LI, self.work, int(self.hyper.batch_size)
        H = int(LI[g, L_H])
        Wh = self.net.theta[LI[g, L_WH]:LI[g, L_WH] + 3 * H * H].reshape(H, 3 * H)
        return (block_view(wk.DY, LI[g, L_HOFF], bs, H), block_view(wk.GA, LI[g, L_GOFF], bs, 3 * H),
                block_view(wk.DGH, LI[g, L_GOFF], bs, 3 * H), Wh)

    def _hp_view(self, g):
        LI, bs = self.net.LI, int(self.hyper.batch_size)
        return block_view(self.work.HP, LI[g, L_HOFF], bs, int(LI[g, L_H]))

    def _user_forward(self, B, reset):
        """User GRU of the rows with a state; ``h0`` into ``HP`` of those starting a session
        ('init'), extra gates into ``GU`` ('all'). Returns ``(rows, UserStep or None)``."""
        rs, UI = self.rowstate, self.UI
        bs = int(self.hyper.batch_size)
        if UI[U_ALL]:
            gu = block_view(self.work.GU, 0, bs, int(UI[U_G0]))
            gu[:B] = 0.0
        rows = np.flatnonzero(rs["has"][:B])
        if len(rows) == 0:
            return rows, None
        ustep = UserStep(UI, self.U, self.bags)
        init = reset[rows] if UI[U_INIT] else np.zeros(len(rows), np.bool_)
        drop = None
        if self.user_dropout > 0 and self.rng is not None:
            keep = 1.0 - self.user_dropout
            drop = ((self.rng.random((len(rows), int(UI[U_HU]))) < keep) / keep).astype(
                self.U.dtype)
        _, h0, gates = ustep.forward(rs["S"][rows], rs["Ub"][rows], init, drop)
        if h0 is not None:
            scatter_initial_state(self.net.LI, self._hp_view, rows[init], h0)
        if gates is not None:
            gu[rows] = gates
        return rows, ustep

    def _user_backward(self, rows, ustep):
        """Gradient of ``U`` of the step (after ``step_forward_backward``)."""
        UI = self.UI
        dgates = dhp = None
        if UI[U_ALL]:
            LI, bs = self.net.LI, int(self.hyper.batch_size)
            dgx0 = block_view(self.work.DGX, LI[0, L_GOFF], bs, 3 * int(LI[0, L_H]))
            dgates = dgx0[rows]
        if ustep.h0 is not None:
            dhp = initial_state_gradient(self.net.LI, self._layer_views, rows[ustep.init_mask])
        return ustep.backward(dgates, dhp)

    def _update_user(self, gU, ustep):
        """Adagrad (+ momentum) of ``U``: the dense part, and the items table's rows that the
        step's bags touched."""
        lr, mom, UI = self.hyper.learning_rate, self.hyper.momentum, self.UI
        d0 = int(UI[U_DENSE])
        adagrad(self.U[d0:], gU[d0:], self.acc_u[d0:], self.vel_u[d0:], lr, mom)
        if UI[U_ITEMS]:
            G = 3 * int(UI[U_HU])
            rows = ustep.touched
            shape = (int(UI[U_NROWS]), G)
            P, g = self.U[:d0].reshape(shape), gU[:d0].reshape(shape)
            A, V = self.acc_u[:d0].reshape(shape), self.vel_u[:d0].reshape(shape)
            p, a, v = P[rows], A[rows], V[rows]
            adagrad(p, g[rows], a, v, lr, mom)
            P[rows], A[rows], V[rows] = p, a, v

    def _begin_sessions(self, B, reset, new_user):
        """New users start without a state; a session start commits the user's last
        finished session (``Ub = GRU_u(S, Ub)``, current parameters)."""
        rs = self.rowstate
        rs["has"][:B][new_user] = False
        rs["has_pend"][:B][new_user] = False
        rs["Ub"][:B][new_user] = 0.0
        commit = np.flatnonzero(reset & rs["has_pend"][:B])
        if len(commit) == 0:
            return
        upd = commit[rs["has"][commit]]
        if len(upd):
            v = user_views(self.UI, self.U)
            gx = user_input_gates(self.UI, v, rs["S"][upd], self.bags)
            rs["Ub"][upd] = gru_step(gx, rs["Ub"][upd], v["Wh"], v["bhn"])[0]
        rs["S"][commit] = rs["pend"][commit]
        rs["has"][commit] = True
        rs["has_pend"][commit] = False

    # ---- the epoch-loop interface -----------------------------------------------------------
    def start_epoch(self, items, order, offsets):
        """As :meth:`Trainer.start_epoch`; ``order`` (sessions) is not used: the rows walk
        users (:class:`~gru_engine.user_batching.UserSchedule`)."""
        super().start_epoch(items, order, offsets)
        self.bags = SessionBags(items, offsets)
        worder = walk_order(self.walks, self.start_times, self.shuffle, self.rng)
        self.walk = UserSchedule(offsets, self.walks, worder, int(self.hyper.batch_size),
                                 self.min_rows)
        self.sched_state[0] = self.walk.n_rows
        for a in self.rowstate.values():
            a[...] = 0

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch); returns ``(sum of
        step_loss * rows, events, finite)`` as :meth:`Trainer.run`."""
        st = Store(samples=self.store.samples, cdf=self.store.cdf, log_support=self.log_support)
        sc, walk, net, wk, hy, rs = self.sched, self.walk, self.net, self.work, self.hyper, self.rowstate
        sum_mode, freeze_out = bool(self.flags[2]), bool(self.flags[1])
        LI, bs = net.LI, int(hy.batch_size)
        loss_sum, events, steps, finite = 0.0, 0, 0, True
        while walk.n_rows > 0 and (max_steps < 0 or steps < max_steps):
            B = walk.n_rows
            cur, reset, new_user, last, session = walk.rows()
            self._begin_sessions(B, reset, new_user)
            sc.cur[:B] = cur
            C, self.sched_state[2] = step_columns(sc, B, self.out, st, self.sched_state[2], hy)
            if self.draw_masks:
                draw_masks(net, self.active, B, bs, wk.M0f, wk.MK, hy.dropout_p_embed,
                           hy.dropout_p_hidden)
            rows, ustep = self._user_forward(B, reset)
            loss = step_forward_backward(net, self.active, self.train, sum_mode, sc.in_items, B,
                                         C, wk, self.out, self.sparse, hy, self.cx, None,
                                         self.of)
            if not np.isfinite(loss):
                release_all(net.SI, self.sparse)
                finite = False
                break
            gU = self._user_backward(rows, ustep) if ustep is not None else None
            step_update(net, self.active, self.train, sum_mode, freeze_out, wk.gtheta, self.opt,
                        self.sparse, hy.learning_rate, hy.momentum, None)
            if gU is not None:
                self._update_user(gU, ustep)
            ends = np.flatnonzero(last)
            rs["pend"][ends] = session[ends] if self.UI[U_ITEMS] else wk.hc[ends]
            rs["has_pend"][ends] = True
            loss_sum += loss * B
            events += B
            steps += 1
            self.sched_state[4] += 1
            n = walk.advance()
            src = walk.src[:n]
            for a in rs.values():
                a[:n] = a[src]
            sc.reset[:n] = walk.start[walk.p[:n]]
            sc.src[:n] = src
            for g in range(LI.shape[0]):
                H = int(LI[g, L_H])
                carry_hidden(self._hp_view(g), block_view(wk.Y, LI[g, L_HOFF], bs, H),
                             sc.reset, sc.src, n)
        self.sched_state[0] = walk.n_rows
        self.sched_state[3] += steps
        return loss_sum, events, finite

    def rows_left(self) -> bool:
        return bool(self.walk is not None and self.walk.n_rows > 0)

    def forward_backward(self, in_items, B, cols, C, S=None, Ub=None, has=None, reset=None):
        """One step's loss and gradients without an update (gradient checks), as
        :meth:`Trainer.forward_backward` plus the user part: rows with ``has`` (B,) bool use
        the user state ``(S, Ub)`` (B rows); those with ``reset`` start a session (their
        ``work.HP`` rows are replaced by ``h0`` under 'init'). ``grads['U']`` is the gradient
        of ``U``."""
        rs = self.rowstate
        if has is not None:
            rs["S"][:B], rs["Ub"][:B], rs["has"][:B] = S, Ub, has
        else:
            rs["has"][:B] = False
        rows, ustep = self._user_forward(B, np.zeros(B, np.bool_) if reset is None else reset)
        loss, grads = super().forward_backward(in_items, B, cols, C)
        grads["U"] = (self._user_backward(rows, ustep) if ustep is not None
                      else np.zeros_like(self.U))
        return loss, grads

    def optimizer_state(self) -> dict:
        """As :meth:`Trainer.optimizer_state`, with the user GRU's ``U``."""
        out = super().optimizer_state()
        out["acc"]["U"], out["vel"]["U"] = self.acc_u, self.vel_u
        return out
