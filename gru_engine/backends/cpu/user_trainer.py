"""The CPU trainer of a network with a user-level GRU (:mod:`gru_engine.user_level`).

:class:`UserTrainer` is the CPU :class:`~.trainer.Trainer` with a user-parallel schedule
(:mod:`gru_engine.user_batching`) and the user GRU: the whole epoch runs in compiled code,
:func:`.user_step.user_train_steps` (the network's step of :mod:`.step` between the user
part's forward and backward); the epoch-loop interface is the Trainer's.

Per row it carries, besides the hidden state (:class:`.user_step.UserRows`): ``Ub`` (Hu,) the
user state before the user's last finished session, ``S`` that session's representation,
``has`` whether the user has a state, and the pending representation of the session being
walked (committed when the next session of the user starts: ``Ub = GRU_u(S, Ub)``,
``S = pending``).
"""
from __future__ import annotations

import numpy as np

from ...network import L_H
from ...user_batching import UserSchedule, walk_order
from ...user_level import (U_ALL, U_DENSE, U_G0, U_HU, U_ITEMS, U_NROWS, U_SIN, U_W, U_WX,
                           SessionBags)
from .trainer import Store, Trainer, work_buffers
from .user_step import (UserNet, UserRows, UserWork, user_backward, user_forward,
                        user_train_steps)


class UserTrainer(Trainer):
    """Trainer of a network plus user GRU. ``params`` also holds ``'UI'``/``'U'``
    (:func:`~gru_engine.user_level.user_layout`; ``U`` updated in place); ``walks``: one
    int64 array of session numbers per user (:func:`~gru_engine.user_batching.user_walks`);
    ``start_times`` (n_sessions,) float the sessions' first click times (walk order);
    ``shuffle``: visit users in random order (``rng``, a ``numpy.random.Generator``, which
    also draws the user-dropout masks). Other arguments as :class:`Trainer` (``plan`` must
    train every subnet in every epoch)."""

    def __init__(self, params, hyper, support, walks, start_times, shuffle, rng,
                 user_dropout: float = 0.0, optimizer_state=None, **kwargs):
        super().__init__(params, hyper, support, **kwargs)
        p = params
        self.UI, self.U = UI, U = p["UI"], p["U"]
        bs = int(hyper.batch_size)
        self.walks, self.start_times, self.shuffle, self.rng = walks, start_times, shuffle, rng
        dt = p["Wy"].dtype
        if UI[U_ALL]:
            self.work = work_buffers(self.net.SI, p["LI"], bs, p["Wy"].shape[1],
                                     len(p["theta"]), dt, user_gates=int(UI[U_G0]))
        Hu, items = int(UI[U_HU]), bool(UI[U_ITEMS])
        sin = 0 if items else int(UI[U_SIN])
        self.user_dropout = float(user_dropout)
        drop = self.user_dropout if rng is not None else 0.0
        self.unet = UserNet(UI=UI, U=U, acc=np.zeros_like(U), vel=np.zeros_like(U),
                            p_drop=np.array([drop]))
        self.acc_u, self.vel_u = self.unet.acc, self.unet.vel
        self.rowstate = UserRows(Ub=np.zeros((bs, Hu), dt), S=np.zeros(bs, np.int64),
                                 X=np.zeros((bs, sin), dt), pend=np.zeros(bs, np.int64),
                                 pendX=np.zeros((bs, sin), dt), has=np.zeros(bs, np.bool_),
                                 has_pend=np.zeros(bs, np.bool_))
        z = lambda *shape: np.zeros(shape, dt)
        G, W, Hm = 3 * Hu, int(UI[U_W]), int(p["LI"][:, L_H].max())
        n_items = int(UI[U_NROWS]) if items else 0
        self.uwork = UserWork(
            rows=np.zeros(bs, np.int64), irows=np.zeros(bs, np.int64),
            counts=np.zeros(2, np.int64), ub=z(bs, Hu), u=z(bs, Hu), du=z(bs, Hu),
            drop=z(bs, Hu), gx=z(bs, G), gh=z(bs, G), ga=z(bs, G), dgx=z(bs, G), dgh=z(bs, G),
            x=z(bs, sin), ui=z(bs, Hu), dui=z(bs, Hu), h0=z(bs, W), dh0=z(bs, W),
            hg=z(bs * 3 * Hm), hw=z(bs * Hm), gates=z(bs, max(int(UI[U_G0]), 0)),
            gU=z(len(U) - int(UI[U_DENSE])), slot=np.full(n_items, -1, np.int32),
            trows=np.zeros(n_items, np.int32), GT=z(n_items, G), nT=np.zeros(1, np.int64))
        # a generator for the kernels' signature when there is none (no dropout then)
        self._rng = rng if rng is not None else np.random.default_rng(0)
        self.walk, self.bags = None, None
        if optimizer_state is not None:
            self.load_state(optimizer_state=optimizer_state)

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
        for a in self.rowstate:
            a[...] = 0

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch); returns ``(sum of
        step_loss * rows, events, finite)`` as :meth:`Trainer.run`."""
        st = Store(samples=self.store.samples, cdf=self.store.cdf, log_support=self.log_support)
        return user_train_steps(max_steps, self.net, self.sched, st, self.work, self.out,
                                self.sparse, self.opt, self.active, self.train, self.flags,
                                self.min_rows, self.draw_masks, self.hyper, self.cx, self.of,
                                self.walk.arrays, self.unet, self.rowstate, self.uwork,
                                self._rng)

    def rows_left(self) -> bool:
        return bool(self.walk is not None and self.walk.n_rows > 0)

    def forward_backward(self, in_items, B, cols, C, S=None, Ub=None, has=None, reset=None):
        """One step's loss and gradients without an update (gradient checks), as
        :meth:`Trainer.forward_backward` plus the user part: rows with ``has`` (B,) bool use
        the user state ``(S, Ub)`` (B rows; ``S`` (B,) int64 session numbers of ``self.bags``
        (:class:`~gru_engine.user_level.SessionBags`) for 'items', (B, Hc) combined states for 'hidden'); those with
        ``reset`` start a session (their ``work.HP`` rows are replaced by ``h0`` under
        'init'). ``grads['U']`` is the gradient of ``U``."""
        rs, uw, UI = self.rowstate, self.uwork, self.UI
        bags = self.bags or SessionBags(np.zeros(0, np.int32), np.zeros(1, np.int64))
        items, offsets = bags.items, bags.offsets
        rs.has[:B] = False if has is None else has
        if has is not None:
            rs.Ub[:B] = Ub
            if UI[U_ITEMS]:
                rs.S[:B] = S
            else:
                rs.X[:B] = S
        reset = np.zeros(B, np.bool_) if reset is None else np.asarray(reset, np.bool_)
        bs = int(self.hyper.batch_size)
        user_forward(self.unet, rs, uw, items, offsets, reset, B, self.net.LI, self.work.HP,
                     self.work.GU, bs, self._rng)
        loss, grads = super().forward_backward(in_items, B, cols, C)
        gU = np.zeros_like(self.U)
        if uw.counts[0] > 0:
            user_backward(self.unet, uw, items, offsets, rs, self.net.LI, self.net.theta,
                          self.work, bs)
            d0 = int(UI[U_DENSE])
            gU[d0:] = uw.gU
            G = 3 * int(UI[U_HU])
            for t in range(int(uw.nT[0])):
                a = int(UI[U_WX]) + int(uw.trows[t]) * G
                gU[a:a + G] += uw.GT[t]
            uw.slot[uw.trows[:uw.nT[0]]] = -1
            uw.nT[0] = 0
        grads["U"] = gU
        return loss, grads

    def optimizer_state(self) -> dict:
        """As :meth:`Trainer.optimizer_state`, with the user GRU's ``U``."""
        out = super().optimizer_state()
        out["acc"]["U"], out["vel"]["U"] = self.acc_u, self.vel_u
        return out
