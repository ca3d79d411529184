"""The CUDA trainer of a network with a user-level GRU (:mod:`gru_engine.user_level`).

:class:`UserTrainer` is the CUDA :class:`~.trainer.Trainer` with the user-parallel schedule of
:mod:`gru_engine.user_batching` (walked on the host, as on the CPU) and the user GRU on the
device, through the step's own pieces: the fused GRU cell kernels (``gru_cell_forward`` /
``_cell_backward``), GEMMs, ``bag_gather``/``bag_grad`` (``user_input='items'``: a session's
clicks are a bag over the epoch's events), dense and sparse Adagrad, plus the row moves of
``kernels/user.cu``. One step, in the CPU user trainer's order
(:class:`gru_engine.backends.cpu.user_trainer.UserTrainer`, same results up to float32
rounding):

1. rows starting a user forget its state; rows starting a session commit the user's last
   finished session: ``Ub = GRU_u(S, Ub)`` (current parameters), ``S = pending``;
2. the rows with a user state recompute ``u = GRU_u(S, Ub)`` (times the user-dropout mask);
   ``'init'``: the rows starting a session start from ``h0 = tanh(u Wi + bi)`` (every layer)
   instead of zero; ``'all'``: ``u Wu`` is added to layer 0's gates of subnet 0;
3. the network's step (forward, loss, backward), then the user part's backward from the
   step's buffers (layer-0 gate gradient, the initial-state gradient of every layer), before
   the network's update (which changes ``Wh``); the user parameters' Adagrad after it;
4. rows that walked a session's last input keep its representation as pending (its session
   number for 'items', the combined state for 'hidden'); rows are compacted as the walk's.

Per-row flags, the session numbers and the user-dropout masks (drawn from the order generator
as on the CPU) are built on the host and copied per step; every array of the user GRU stays on
the device. Steps run kernel by kernel (no CUDA graphs: the step's shape changes with the rows
that have a user state).
"""
from __future__ import annotations

import numpy as np

from ...network import L_HOFF
from ...user_batching import UserSchedule, walk_order
from ...user_level import U_ALL, U_DENSE, U_HU, U_INIT, U_ITEMS, U_NROWS, user_views
from .ops import BLOCK, grid
from .trainer import Trainer

LOSS_CHUNK = 4096  # step losses kept on the device between host reads


class UserTrainer(Trainer):
    """CUDA trainer of a network plus user GRU. ``params`` also holds ``'UI'``/``'U'``
    (:func:`~gru_engine.user_level.user_layout`); ``walks``, ``start_times``, ``shuffle``,
    ``rng``, ``user_dropout`` as the CPU :class:`~gru_engine.backends.cpu.user_trainer.
    UserTrainer`; other arguments as :class:`~.trainer.Trainer` (CUDA graphs off; ``plan`` must
    train every subnet in every epoch)."""

    def __init__(self, device, params, hyper, item_support, *, walks, start_times, shuffle,
                 rng, user_dropout: float = 0.0, optimizer_state=None, **kwargs):
        kwargs["use_graphs"] = False
        super().__init__(device, params, hyper, item_support, **kwargs)
        d, B = self.dev, self.batch_size
        self.UI = UI = np.asarray(params["UI"], np.int64)
        self.Hu = int(UI[U_HU])
        self.U = d.to_device(np.asarray(params["U"], np.float32))
        self.acc_u, self.vel_u, self.gU = (d.zeros(self.U.shape) for _ in range(3))
        self.uv, self.gv = user_views(UI, self.U), user_views(UI, self.gU)
        self.d0 = int(UI[U_DENSE])
        self.walks, self.start_times, self.shuffle, self.rng = walks, start_times, shuffle, rng
        self.user_dropout = float(user_dropout)
        if optimizer_state is not None:  # after U exists
            self.load_state(optimizer_state=optimizer_state)
        self.items_input = bool(UI[U_ITEMS])
        self.W = sum(self.net.H)
        # the rows' user state: Ub on the device, the flags on the host; S and the pending
        # representation as session numbers (host, 'items') or combined states (device)
        self.Ub = d.zeros((B, self.Hu))
        if self.items_input:
            self.S, self.pend = np.zeros(B, np.int64), np.zeros(B, np.int64)
        else:
            self.S, self.pend = d.zeros((B, self.net.Hc)), d.zeros((B, self.net.Hc))
        self.has, self.has_pend = np.zeros(B, np.bool_), np.zeros(B, np.bool_)
        self._no_reset = d.zeros((B,), np.uint8)
        self.walk, self._h0, self._init_dev, self._urows = None, None, None, None
        self._step_masks = None

    # ---- host -> device per step -------------------------------------------------------------
    def _flag(self, name, mask):
        """(R,) uint8 device copy of the host bool ``mask`` (buffer ``name``)."""
        out = self._buf(name, (len(mask),), np.uint8)
        self.dev.copy(out, self.dev.to_device(np.asarray(mask, np.uint8)))
        return out

    def _ints(self, name, values):
        out = self._buf(name, (len(values),), np.int32)
        self.dev.copy(out, self.dev.to_device(np.asarray(values, np.int32)))
        return out

    # ---- the user GRU ------------------------------------------------------------------------
    def _user_cell(self, R, sessions, mask, tag):
        """``u`` (R, Hu) = GRU_u(S, Ub) of the first ``R`` rows (times ``mask`` (R, Hu) or
        None) in buffer ``u{tag}``, its forward state in ``usaved{tag}``/``uhpe{tag}``;
        ``sessions`` (R,) int32 device session numbers ('items'; the epoch's empty bag for rows
        without a state) or None ('hidden': the rows of ``S``)."""
        d, v, Hu = self.dev, self.uv, self.Hu
        gx = self._buf(f"ugx{tag}", (R, 3 * Hu))
        if self.items_input:
            indptr, indices, weights = self._bags
            d.launch("bag_gather", grid(R * 3 * Hu), BLOCK,
                     [v["Wx"], 3 * Hu, 0, 3 * Hu, indptr, indices, weights, sessions, R, None,
                      gx])
        else:
            d.gemm(self.S[:R], v["Wx"], out=gx)
        d.launch("add_bias", grid(R * 3 * Hu), BLOCK, [gx, v["bx"], R, 3 * Hu])
        gh = self._buf(f"ugh{tag}", (R, 3 * Hu))
        d.gemm(self.Ub[:R], v["Wh"], out=gh)
        u = self._buf(f"u{tag}", (R, Hu))
        d.launch("gru_cell_forward", grid(R * Hu), BLOCK,
                 [gx, gh, v["bhn"], self.Ub[:R], self._no_reset[:R], mask, u,
                  self._buf(f"usaved{tag}", (R, 4 * Hu)), self._buf(f"uhpe{tag}", (R, Hu)), R,
                  Hu])
        return u

    def _session_numbers(self, R, rows_with_state):
        """(R,) int32 device session numbers of the rows' ``S`` ('items'; the empty bag where
        not ``rows_with_state``) and their bag entries (host int), or (None, 0)."""
        if not self.items_input:
            return None, 0
        sess = np.where(rows_with_state, self.S[:R], self._empty_bag)
        n = int((self._bag_ptr[sess + 1] - self._bag_ptr[sess]).sum())
        return self._ints("usess", sess), n

    def _begin_sessions(self, B, reset, new_user):
        """New users start without a state; a session start commits the user's last
        finished session (``Ub = GRU_u(S, Ub)``, current parameters), then ``S = pending``."""
        d, Hu = self.dev, self.Hu
        self.has[:B][new_user] = False
        self.has_pend[:B][new_user] = False
        if new_user.any():
            d.launch("select_rows", grid(B * Hu), BLOCK,
                     [self.Ub, Hu, None, 0, self._flag("unew", new_user), B, Hu])
        commit = reset & self.has_pend[:B]
        if not commit.any():
            return
        upd = commit & self.has[:B]
        if upd.any():
            sessions, _ = self._session_numbers(B, upd)
            u = self._user_cell(B, sessions, None, "c")
            d.launch("select_rows", grid(B * Hu), BLOCK,
                     [self.Ub, Hu, u, Hu, self._flag("uupd", upd), B, Hu])
        if self.items_input:
            self.S[:B][commit] = self.pend[:B][commit]
        else:
            Hc = self.net.Hc
            d.launch("select_rows", grid(B * Hc), BLOCK,
                     [self.S, Hc, self.pend, Hc, self._flag("ucommit", commit), B, Hc])
        self.has[:B][commit] = True
        self.has_pend[:B][commit] = False

    def _user_forward(self, B, reset):
        """The user part of the step's forward for the rows with a state: ``u``, ``h0`` (kept
        for :meth:`_prev_state`), the extra layer-0 gates (``extra_gates``). Returns the reset
        flags of the network's step (rows starting from ``h0`` do not reset)."""
        d, UI, v, Hu = self.dev, self.UI, self.uv, self.Hu
        self._h0, self.extra_gates, self._urows = None, None, None
        has = self.has[:B]
        if not has.any():
            return reset
        mask = has[:, None].astype(np.float32) * np.ones((1, Hu), np.float32)
        if self.user_dropout > 0 and self.rng is not None:
            keep = 1.0 - self.user_dropout
            rows = np.flatnonzero(has)
            mask[rows] = ((self.rng.random((len(rows), Hu)) < keep) / keep).astype(np.float32)
        umask = self._buf("umask", (B, Hu))
        d.copy(umask, d.to_device(mask))
        sessions, n_bag = self._session_numbers(B, has)
        u = self._user_cell(B, sessions, umask, "")
        self._urows = (umask, sessions, n_bag)
        init = reset & has if UI[U_INIT] else np.zeros(B, np.bool_)
        if init.any():
            W = self.W
            pre, h0 = self._buf("upre", (B, W)), self._buf("uh0", (B, W))
            d.gemm(u, v["Wi"], out=pre)
            d.launch("add_bias", grid(B * W), BLOCK, [pre, v["bi"], B, W])
            d.launch("final_act_forward", grid(B * W), BLOCK, [pre, h0, B * W, 2, 0.0])
            self._h0, self._init_dev = h0, self._flag("uinit", init)
        if UI[U_ALL]:
            self.extra_gates = d.gemm(u, v["Wu"], out=self._buf("ugates", (B, v["Wu"].shape[1])))
        return reset & ~init

    def _prev_state(self, g, src, R):
        """As :meth:`Trainer._prev_state`; rows starting a session with a user state get
        their slice of ``h0`` ('init')."""
        hprev = super()._prev_state(g, src, R)
        if self._h0 is not None:
            H, off = self.net.H[g], int(self.net.LI[g, L_HOFF])
            self.dev.launch("select_rows", grid(R * H), BLOCK,
                            [hprev, H, self._h0.reshape(-1)[off:], self.W, self._init_dev, R, H])
        return hprev

    def _draw_masks(self, R, masks):
        self._step_masks = super()._draw_masks(R, masks)
        return self._step_masks

    def forward_backward(self, in_items, out_items, reset, sample, src=None, nnz=None,
                         masks=None, loss_slot=None):
        """As :meth:`Trainer.forward_backward`; then the gradient of ``U`` into ``gU`` (the
        network's buffers are read before its update changes ``Wh``)."""
        n_wy = super().forward_backward(in_items, out_items, reset, sample, src, nnz, masks,
                                        loss_slot)
        if self._urows is not None:
            self._user_backward(int(in_items.shape[0]))
        return n_wy

    def _initial_state_grad(self, R):
        """(R, W) gradient of the step's loss w.r.t. every layer's previous state."""
        d, net, buf = self.dev, self.net, self._buf
        dhp, tmp = buf("udhp", (R, self.W)), buf("udghwh", (R, max(net.H)))
        last0 = net.sub[0].layers[-1]
        for g, H in enumerate(net.H):
            dy = buf("dhc", (R, H)) if net.single and g == last0 else buf(f"dy{g}", (R, H))
            Wh = net.layer(net.p["theta"], g)[2]
            t = tmp.reshape(-1)[:R * H].reshape(R, H)
            d.gemm(buf(f"dgh{g}", (R, 3 * H)), Wh, out=t, trans_b=True)
            d.launch("state_grad", grid(R * H), BLOCK,
                     [dy, self._step_masks[1][g], buf(f"saved{g}", (R, 4 * H)), t,
                      dhp.reshape(-1)[int(net.LI[g, L_HOFF]):], self.W, R, H])
        return dhp

    def _user_backward(self, R):
        """``gU``: the gradient of ``U`` (dense part; for 'items' the table's entry rows in
        ``ugT``/``uiT``) from the step's layer-0 gate gradient ('all') and initial-state
        gradient ('init')."""
        d, UI, v, gv, Hu, buf = self.dev, self.UI, self.uv, self.gv, self.Hu, self._buf
        umask, sessions, n_bag = self._urows
        u = buf("u", (R, Hu))
        du = buf("udu", (R, Hu))
        self.gU[self.d0:].fill(0)
        if UI[U_ALL]:
            g0 = self.net.sub[0].layers[0]
            dgx0 = buf(f"dgx{g0}", (R, v["Wu"].shape[1]))
            d.gemm(u, dgx0, out=gv["Wu"], trans_a=True)
            d.gemm(dgx0, v["Wu"], out=du, trans_b=True)
        else:
            du.fill(0)
        if self._h0 is not None:
            W = self.W
            dpre = buf("udpre", (R, W))
            d.launch("tanh_rows_backward", grid(R * W), BLOCK,
                     [self._initial_state_grad(R), self._h0, self._init_dev, dpre, R, W])
            d.gemm(u, dpre, out=gv["Wi"], trans_a=True)
            d.launch("column_sum", grid(W), BLOCK, [dpre, R, W, W, gv["bi"]])
            t = buf("udu_init", (R, Hu))
            d.gemm(dpre, v["Wi"], out=t, trans_b=True)
            d.launch("add_inplace", grid(R * Hu), BLOCK, [du, t, R * Hu])
        dgx = self._cell_backward("u", du, buf("usaved", (R, 4 * Hu)), buf("uhpe", (R, Hu)),
                                  umask, gv["Wh"], gv["bx"], gv["bhn"])
        if not self.items_input:
            d.gemm(self.S[:R], dgx, out=gv["Wx"], trans_a=True)
            return
        indptr, indices, weights = self._bags
        offs = buf("uoffs", (R + 1,), np.int32)
        d.launch("bag_offsets", 1, 1, [indptr, sessions, R, offs])
        G, idx = buf("ugT", (max(n_bag, 1), 3 * Hu)), buf("uiT", (max(n_bag, 1),), np.int32)
        d.launch("bag_grad", grid(R * 3 * Hu), BLOCK,
                 [dgx, 3 * Hu, indptr, indices, weights, sessions, R, offs, 0, 3 * Hu, G, idx])
        self._n_bag = n_bag

    def _update_user(self):
        """Adagrad (+ momentum) of ``U``: the dense part, and the items table's rows that the
        step's bags touched (duplicates summed)."""
        d0 = self.d0
        self._dense_update(self.U[d0:], self.acc_u[d0:], self.vel_u[d0:], self.gU[d0:])
        if self.items_input and self._n_bag > 0:
            G3, n = 3 * self.Hu, self._n_bag
            rows = int(self.UI[U_NROWS])
            tab = [a[:d0].reshape(rows, G3) for a in (self.U, self.acc_u, self.vel_u)]
            self._sparse_update(*tab, self._buf("ugT", (n, G3)),
                                self._buf("uiT", (n,), np.int32), n, G3)

    def _end_sessions(self, B, last, session):
        """Rows that walked their session's last input keep its representation as pending."""
        if not last.any():
            return
        if self.items_input:
            self.pend[:B][last] = session[last]
        else:
            net, Hc = self.net, self.net.Hc
            g = net.sub[0].layers[-1]
            hc = self._buf(f"y{g}", (B, net.H[g])) if net.single else self._buf("hc", (B, Hc))
            self.dev.launch("select_rows", grid(B * Hc), BLOCK,
                            [self.pend, Hc, hc, Hc, self._flag("ulast", last), B, Hc])
        self.has_pend[:B][last] = True

    def _compact(self, n, src):
        """Row ``r`` of every user row array takes row ``src[r]`` (the walk's compaction)."""
        for name in ("has", "has_pend") + (("S", "pend") if self.items_input else ()):
            a = getattr(self, name)
            a[:n] = a[src]
        src_dev = self._ints("usrc", src)
        for name in ("Ub",) + (() if self.items_input else ("S", "pend")):
            a = getattr(self, name)
            W = a.shape[1]
            tmp = self._buf("ucompact", (n, W))
            self.dev.launch("gather_rows", grid(n * W), BLOCK,
                            [a, W, src_dev, n, W, None, None, tmp, W])
            self.dev.copy(a[:n], tmp)

    # ---- the epoch-loop interface ------------------------------------------------------------
    def start_epoch(self, items, order, offsets):
        """As :meth:`Trainer.start_epoch` but the rows walk users
        (:class:`~gru_engine.user_batching.UserSchedule`; ``order`` is not used)."""
        d, B = self.dev, self.batch_size
        if self.plan is not None:
            self.set_phase(*self.plan[self.epoch])
            self.epoch += 1
        self._items = np.asarray(items, np.int64)
        self._offsets = offsets = np.asarray(offsets, np.int64)
        worder = walk_order(self.walks, self.start_times, self.shuffle, self.rng)
        self.walk = UserSchedule(offsets, self.walks, worder, B, self.min_rows)
        if self.items_input:  # each session a bag of its clicks, weight 1 / length
            lengths = np.diff(offsets)
            self._empty_bag = len(lengths)
            weights = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
            self._bag_ptr = np.r_[offsets, offsets[-1]]  # + the empty bag
            self._bags = (d.to_device(self._bag_ptr, np.int32),
                          d.to_device(self._items, np.int32), d.to_device(weights))
        for h in self.h:
            h.fill(0)
        self.Ub.fill(0)
        if self.items_input:
            self.S[:], self.pend[:] = 0, 0
        else:
            self.S.fill(0)
            self.pend.fill(0)
        self.has[:], self.has_pend[:] = False, False
        self._src = np.arange(B, dtype=np.int64)

    def rows_left(self) -> bool:
        return bool(self.walk is not None and self.walk.n_rows > 0)

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch); step losses are read back
        every :data:`LOSS_CHUNK` steps. Returns ``(sum of step_loss * rows, events, finite)``."""
        walk, d = self.walk, self.dev
        losses = d.zeros((LOSS_CHUNK,))
        total, events, steps, finite, rows_of = 0.0, 0, 0, True, []

        def drain():
            nonlocal total, finite, rows_of
            if rows_of:
                step_loss = d.to_host(losses)[:len(rows_of)].astype(np.float64)
                finite = finite and bool(np.isfinite(step_loss).all())
                total += float(step_loss @ np.asarray(rows_of, np.float64))
                losses.fill(0)
                rows_of = []

        while walk.n_rows > 0 and (max_steps < 0 or steps < max_steps):
            B = walk.n_rows
            cur, reset, new_user, last, session = walk.rows()
            self._begin_sessions(B, reset, new_user)
            net_reset = self._user_forward(B, reset)
            k = len(rows_of)
            self.step(self._ints("uin", self._items[cur]), self._ints("uout", self._items[cur + 1]),
                      self._flag("ureset", net_reset), self._sample_block(),
                      self._ints("ustep_src", self._src[:B]),
                      nnz=self.count_entries(self._items[cur]), masks=self._masks,
                      loss_slot=losses[k:k + 1])
            if self._urows is not None:
                self._update_user()
            self._end_sessions(B, last, session)
            rows_of.append(B)
            events += B
            steps += 1
            self.global_step += 1
            n = walk.advance()
            self._src = walk.src[:n].copy()
            if n:
                self._compact(n, self._src)
            if len(rows_of) == LOSS_CHUNK:
                drain()
        drain()
        return total, events, finite

    def host_params(self) -> dict:
        out = super().host_params()
        out["U"] = self.dev.to_host(self.U)
        return out

    def optimizer_state(self) -> dict:
        out = super().optimizer_state()
        out["acc"]["U"], out["vel"]["U"] = self.dev.to_host(self.acc_u), self.dev.to_host(self.vel_u)
        return out

    def load_state(self, params=None, optimizer_state=None):
        """As :meth:`Trainer.load_state`, with the user GRU's ``U`` and its state."""
        super().load_state(params, optimizer_state)
        d = self.dev
        pairs = [] if params is None else [(self.U, params["U"])]
        if optimizer_state is not None and "U" in optimizer_state["acc"]:
            pairs += [(self.acc_u, optimizer_state["acc"]["U"]),
                      (self.vel_u, optimizer_state["vel"]["U"])]
        for dst, src in pairs:
            d.copy(dst, d.to_device(np.asarray(src, np.float32).reshape(dst.shape)))
