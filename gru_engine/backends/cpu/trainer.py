"""The CPU trainer of every network: the whole training epoch in Numba.

:class:`Trainer` owns everything one fit needs besides the parameters (optimiser state, sample
store, schedule and work buffers, allocated once); :func:`train_steps` runs the steps of
:mod:`.step` back to back in compiled code. The epoch-loop interface (``fill_store`` /
``start_epoch`` / ``rows_left`` / ``run`` / ``host_params``) is the one the CUDA trainer has.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numba
import numpy as np
from numba import njit

from ...batching import schedule_advance, schedule_start
from ...network import L_H, L_HOFF, S_D0, S_D1, S_GCAP, S_GOFF, S_IN, S_IPOFF, S_ROFF, S_TAB
from ...network import S_TCOLS, S_TOFF, S_TROWS, S_XOFF, T_OWN
from ...sampling import SampleStore, draw
from .context_step import CTR_NONE, context_rows, context_update, kept_events
from .losses import CROSS_ENTROPY
from .output_features import new_record, release_output_rows, update_output_features
from .overlap import backward_beside_output_rows, mark_early_rows
from .profile import (P_ADA_SPARSE, P_CARRY, P_MASKS, P_SAMPLING, P_SCHEDULE, new_profile,
                      tick, tick_start)
from .step import (Net, OutBuf, Sparse, Work, block_view, draw_masks, step_backward,
                   step_forward_backward, step_forward_output)
from .update import release_all, step_update

logger = logging.getLogger("gru_engine")


class OptState(NamedTuple):
    """Adagrad accumulators (``acc_*``) and momentum velocities (``vel_*``) of theta (``_d``),
    T (``_t``), Wy (``_y``) and By (``_b``), each of its parameter's shape."""
    acc_d: np.ndarray
    vel_d: np.ndarray
    acc_t: np.ndarray
    vel_t: np.ndarray
    acc_y: np.ndarray
    vel_y: np.ndarray
    acc_b: np.ndarray
    vel_b: np.ndarray


class Schedule(NamedTuple):
    """Session-parallel schedule of one epoch (``batching.py``). items (n_events,) int32, order
    (n_sessions,) int64, offsets (n_sessions + 1,) int64: the sessions in CSR form and their
    visiting order; state (5,) int64 ``[n_rows, next_sess, store_pos, steps this epoch, steps
    in all]``; cur, end, src (bs,) int64, reset (bs,) bool: per row the current event, the
    session's end, the previous row and whether a session starts; in_items (bs,) int32."""
    items: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    state: np.ndarray
    cur: np.ndarray
    end: np.ndarray
    src: np.ndarray
    reset: np.ndarray
    in_items: np.ndarray


class Store(NamedTuple):
    """Negative samples: samples (store size,) int32 pre-drawn from cdf (n_items,) float64;
    log_support (n_items,) float: log of each item's training support (for logq)."""
    samples: np.ndarray
    cdf: np.ndarray
    log_support: np.ndarray


@njit(cache=True, error_model="numpy")
def epoch_start(sc, min_rows, HP):
    """Start an epoch: first rows of the schedule, zero hidden state (``HP``)."""
    n_rows, next_sess = schedule_start(sc.order, sc.offsets, len(sc.cur), sc.cur, sc.end,
                                       sc.reset, sc.src)
    if n_rows < min_rows:
        n_rows = 0
    sc.state[0] = n_rows
    sc.state[1] = next_sess
    sc.state[3] = 0
    HP[:] = 0.0


@njit(cache=True, error_model="numpy")
def step_columns(sc, B, ob, st, store_pos, hy):
    """Inputs and sampled output columns of one step: ``sc.in_items[:B]`` the rows' current
    items, ``ob.cols[:C] = [targets (B) | n_sample negatives]`` taken from the store at
    ``store_pos`` (redrawn when used up), and for cross-entropy with logq ``ob.lq[:C] = [log
    support[targets] | alpha * log support[negatives]]``. Returns ``(C, new store_pos)``."""
    items, cur, cols, lq = sc.items, sc.cur, ob.cols, ob.lq
    for r in range(B):
        sc.in_items[r] = items[cur[r]]
        cols[r] = items[cur[r] + 1]
    C = B
    n_sample = hy.n_sample
    if n_sample > 0:
        if store_pos + n_sample > len(st.samples):
            draw(st.cdf, st.samples)
            store_pos = 0
        for k in range(n_sample):
            cols[B + k] = st.samples[store_pos + k]
        store_pos += n_sample
        C = B + n_sample
    if hy.loss == CROSS_ENTROPY and hy.logq > 0.0:
        for j in range(B):
            lq[j] = st.log_support[cols[j]]
        for j in range(B, C):
            lq[j] = hy.sample_alpha * st.log_support[cols[j]]
    return C, store_pos


@njit(cache=True, error_model="numpy")
def carry_hidden(hp, y, reset, src, n_rows):
    """Hidden state for the next step: ``hp[r] = y[src[r]]`` (the dropped-out output of the
    row's session), zero where ``reset[r]`` (a session starts). hp, y: (>=n_rows, H)."""
    for r in range(n_rows):
        if reset[r]:
            hp[r, :] = 0.0
        else:
            s = src[r]
            for k in range(hp.shape[1]):
                hp[r, k] = y[s, k]


@njit(cache=True, error_model="numpy")
def train_steps(max_steps, net, sc, st, wk, ob, sp, opt, active, train, flags, min_rows,
                draw_dropout, hy, cx, prof, of):
    """Up to ``max_steps`` steps (all remaining when < 0) of the epoch started by
    :func:`epoch_start`. ``flags`` (4,) bool ``[interleave, freeze_out, sum_mode,
    two_threads]``: with ``interleave`` the trained subnet is ``state[4] % S`` (global step
    count); with ``two_threads`` the step's independent products and updates run side by
    side on two Numba threads (:func:`~.gru.gemm_pair`, :mod:`.overlap`; the same results);
    ``draw_dropout`` False keeps the dropout masks in ``wk`` as they are (tests). Returns ``(sum of step_loss * rows,
    events, finite)``; stops at the first non-finite step loss (``finite`` False, parameters of
    that step not updated). ``cx``: None or the context record (:mod:`.context_step`);
    ``prof``: ``None`` or a per-phase profile (:mod:`.profile`); ``of``:
    ``None`` or the output features' record (:mod:`.output_features`)."""
    S = net.SI.shape[0]
    LI = net.LI
    bs = hy.batch_size
    interleave, freeze_out, sum_mode, two = flags[0], flags[1], flags[2], flags[3]
    loss_sum = 0.0
    events = 0
    steps = 0
    state = sc.state
    n_rows = state[0]
    next_sess = state[1]
    store_pos = state[2]
    finite = True
    tick_start(prof)
    while n_rows > 0 and (max_steps < 0 or steps < max_steps):
        B = n_rows
        if interleave:
            k = state[4] % S
            for s in range(S):
                train[s] = s == k
        C, store_pos = step_columns(sc, B, ob, st, store_pos, hy)
        if cx is not None:
            context_rows(cx, sc.cur, B)
        tick(prof, P_SAMPLING)
        if draw_dropout:
            draw_masks(net, active, B, bs, wk.M0f, wk.MK, hy.dropout_p_embed,
                       hy.dropout_p_hidden)
        tick(prof, P_MASKS)
        step_loss = step_forward_output(net, active, sum_mode, sc.in_items, B, C, wk, ob, sp,
                                        hy, cx, prof, of, two)
        if not np.isfinite(step_loss):
            release_all(net.SI, sp)
            if of is not None:
                release_output_rows(of)
            finite = False
            break
        if two:
            mark_early_rows(net, active, train, sc.in_items, B, sp)
            backward_beside_output_rows(net, active, train, sum_mode, freeze_out, sc.in_items,
                                        B, wk, sp, opt, hy, cx, prof)
            tick(prof, P_ADA_SPARSE)
        else:
            step_backward(net, active, train, sum_mode, sc.in_items, B, wk, sp, hy, cx, prof)
        step_update(net, active, train, sum_mode, freeze_out, wk.gtheta, opt, sp,
                    hy.learning_rate, hy.momentum, prof)
        if cx is not None:
            context_update(cx, hy.learning_rate, hy.momentum)
        if of is not None:
            update_output_features(of, net.SI, active, train, sum_mode, freeze_out,
                                   hy.learning_rate, hy.momentum)
        loss_sum += step_loss * B
        events += B
        steps += 1
        state[4] += 1
        n_rows, next_sess = schedule_advance(sc.order, sc.offsets, n_rows, next_sess, min_rows,
                                             sc.cur, sc.end, sc.reset, sc.src)
        tick(prof, P_SCHEDULE)
        for g in range(LI.shape[0]):
            H = LI[g, L_H]
            carry_hidden(block_view(wk.HP, LI[g, L_HOFF], bs, H),
                         block_view(wk.Y, LI[g, L_HOFF], bs, H), sc.reset, sc.src, n_rows)
        tick(prof, P_CARRY)
    state[0] = n_rows
    state[1] = next_sess
    state[2] = store_pos
    state[3] += steps
    return loss_sum, events, finite


def table_capacities(SI, indptr, batch_size: int, n_items: int) -> None:
    """Fill the table-gradient capacities/offsets (``S_GCAP``, ``S_GOFF``, ``S_ROFF``) of ``SI``
    in place: a step touches at most ``batch_size * longest bag`` rows of a subnet's table."""
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


def work_buffers(SI, LI, bs: int, Hc: int, n_dense: int, dtype, grads: bool = True,
                 user_gates: int = 0) -> Work:
    """A :class:`Work` of ``bs`` rows; masks are ones. Without ``grads`` (inference) the
    gradient buffers are empty; ``user_gates``: width of the extra layer-0 gate input ``GU``
    (0: none)."""
    z = lambda n: np.zeros(n, dtype)
    W, X = int(LI[:, L_H].sum()), int(SI[:, S_IN].sum())
    g = bs if grads else 0
    return Work(Xf=z(bs * X), M0f=np.ones(bs * X, dtype), DXf=z(g * X), HP=z(bs * W),
                HO=z(bs * W), Y=z(bs * W), MK=np.ones(bs * W, dtype), DY=z(g * W),
                GX=z(3 * bs * W), GH=z(3 * bs * W), GA=z(3 * bs * W), DGX=z(3 * g * W),
                DGH=z(3 * g * W), hc=np.zeros((g, Hc), dtype), dhc=np.zeros((g, Hc), dtype),
                gtheta=z(n_dense if grads else 0), GU=z(bs * user_gates))


class Trainer:
    """Optimiser state, sample store, schedule and work buffers of one fit (allocated once);
    :meth:`run` executes training steps in compiled code.

    params: a network's parameter dict (``network.PARAM_KEYS``; ``theta``, ``T``, ``Wy``,
    ``By`` are updated in place), arrays of one float dtype (float32 in training, float64 in
    gradient checks); hyper: :class:`~gru_engine.params.Hyper`; support: (n_items,) int64
    training events per item; sum_mode: ``combine='sum'``. ``plan``: optional per-epoch phases
    ``(active, train, interleave, freeze_out)`` (:func:`~gru_engine.network.epoch_plan`) applied
    by :meth:`start_epoch`; without it the phase is whatever :meth:`set_phase` set last
    (default: all subnets run and train). ``names``: subnet names for the log.
    ``optimizer_state``: optional ``{'acc': {...}, 'vel': {...}}`` of :meth:`optimizer_state`
    (arrays shaped like theta/T/Wy/By) to continue from (warm start). ``context``: the
    :class:`~.context_step.Ctx` of a context-aware network (its tables are updated in place;
    :func:`gru_engine.context.training_context`), None without context.
    """

    def __init__(self, params: dict, hyper, support, *, sum_mode: bool = False, plan=None,
                 names=None, optimizer_state=None, context=None):
        p = params
        dt = p["Wy"].dtype
        n_items = len(support)
        bs = int(hyper.batch_size)
        cmax = bs + hyper.n_sample
        SI = p["SI"].copy()
        table_capacities(SI, p["indptr"], bs, n_items)
        S = SI.shape[0]
        self.params, self.hyper = p, hyper
        self.net = Net(SI=SI, LI=p["LI"], indptr=p["indptr"], indices=p["indices"],
                       weights=p["weights"], theta=p["theta"], T=p["T"], Wy=p["Wy"], By=p["By"])
        self.min_rows = 2 if hyper.n_sample == 0 else 1
        self.store = SampleStore(support, hyper.sample_alpha, hyper.n_sample,
                                 hyper.sample_store_size)
        self.log_support = np.log(np.maximum(np.asarray(support), 1)).astype(dt)
        Hc = p["Wy"].shape[1]
        z = lambda n: np.zeros(n, dt)
        like = np.zeros_like
        self.opt = OptState(acc_d=like(p["theta"]), vel_d=like(p["theta"]), acc_t=like(p["T"]),
                            vel_t=like(p["T"]), acc_y=like(p["Wy"]), vel_y=like(p["Wy"]),
                            acc_b=like(p["By"]), vel_b=like(p["By"]))
        self.work = work_buffers(SI, p["LI"], bs, Hc, len(p["theta"]), dt)
        self.out = OutBuf(cols=np.zeros(cmax, np.int32), cmap=np.zeros(cmax, np.int32),
                          Wc=np.zeros((cmax, Hc), dt), bc=z(cmax), O_flat=z(bs * cmax),
                          lq=z(cmax), ra=z(cmax),
                          rank=None if hyper.loss == CROSS_ENTROPY else
                          (z(cmax), z(cmax), np.zeros((2, cmax), dt)))
        own = SI[:, S_TAB] == T_OWN
        self.sparse = Sparse(
            slotY=np.full(n_items, -1, np.int32), rowsY=np.zeros(cmax + bs, np.int32),
            GY=np.zeros((cmax + bs, Hc), dt), gBy=z(cmax + bs),
            slotT=np.full(max(int(SI[own, S_TROWS].sum()), 1), -1, np.int32),
            rowsT=np.zeros(max(int(SI[own, S_GCAP].sum()), 1), np.int32),
            GT=z(max(int((SI[own, S_GCAP] * SI[own, S_TCOLS]).sum()), 1)),
            nT=np.zeros(S, np.int64), counts=np.zeros(2, np.int64),
            early=np.zeros(cmax + bs, np.bool_))
        self.sched_state = np.zeros(5, np.int64)
        self.rows = dict(cur=np.zeros(bs, np.int64), end=np.zeros(bs, np.int64),
                         src=np.zeros(bs, np.int64), reset=np.zeros(bs, np.bool_),
                         in_items=np.zeros(bs, np.int32))
        self.sched = None
        self.active = np.ones(S, np.bool_)
        self.train = np.ones(S, np.bool_)
        self.flags = np.array([False, False, bool(sum_mode), False])
        self.draw_masks = True
        self.plan, self.epoch = plan, 0
        self.names = list(names) if names is not None else [str(s) for s in range(S)]
        self.prof = None
        self.cx = context  # None: the context hooks of the step are not even compiled
        # the training events' context rows; an epoch's cx.ev_in/ev_out follow its augmented
        # events (select_events)
        self.event_context = None if context is None else (context.ev_in, context.ev_out)
        # output features (``Fy`` in params, :mod:`gru_engine.output_features`): their own
        # gradient rows and optimiser state (not part of optimizer_state())
        self.of = new_record(p, cmax) if "Fy" in p else None
        if optimizer_state is not None:
            self.load_state(optimizer_state=optimizer_state)

    def start_profile(self):
        """Time every phase of the following steps (:mod:`.profile`; the profiled kernels are
        compiled on first use). Read the result with :meth:`profile`."""
        self.prof = new_profile()

    def profile(self) -> np.ndarray:
        """The profile of the steps since :meth:`start_profile` (``profile.new_profile``
        layout; steps in ``sched_state``)."""
        if self.prof is None:
            raise ValueError("profile: call start_profile() before training")
        return self.prof

    def set_phase(self, active, train, interleave: bool = False, freeze_out: bool = False):
        """Which subnets run (``active``) and learn (``train``) from now on."""
        self.active[:] = active
        self.train[:] = train
        self.flags[0], self.flags[1] = bool(interleave), bool(freeze_out)

    def fix_dropout_masks(self, m0s, mks):
        """Test hook: use these inverted-dropout masks in every step instead of drawing them.
        m0s: one (batch_size, input width) mask per subnet; mks: one (batch_size, H) mask per
        layer (all subnets' layers in order). A step of R rows uses rows ``:R``."""
        SI, LI, bs = self.net.SI, self.net.LI, int(self.hyper.batch_size)
        for s, m in enumerate(m0s):
            block_view(self.work.M0f, SI[s, S_XOFF], bs, SI[s, S_IN])[:] = m
        for g, m in enumerate(mks):
            block_view(self.work.MK, LI[g, L_HOFF], bs, LI[g, L_H])[:] = m
        self.draw_masks = False

    def fill_store(self):
        """Draw the negative-sample store (Numba's generator: seed it first)."""
        self.store.fill()
        self.sched_state[2] = self.store.pos

    def optimizer_state(self) -> dict:
        """``{'acc': {'theta', 'T', 'Wy', 'By'}, 'vel': {...}}``: the Adagrad accumulators and
        momentum velocities (host arrays shaped like the parameters; live, not copies), keyed
        by parameter name; with context also ``context_in``/``context_out`` (and
        ``context_h`` with a context transition), with output features ``Fy``/``Fb``."""
        o = self.opt
        out = {"acc": {"theta": o.acc_d, "T": o.acc_t, "Wy": o.acc_y, "By": o.acc_b},
               "vel": {"theta": o.vel_d, "T": o.vel_t, "Wy": o.vel_y, "By": o.vel_b}}
        if self.cx is not None:
            cx = self.cx
            out["acc"].update(context_in=cx.acc_in, context_out=cx.acc_out)
            out["vel"].update(context_in=cx.vel_in, context_out=cx.vel_out)
            if cx.cfg[2] != CTR_NONE:
                out["acc"]["context_h"], out["vel"]["context_h"] = cx.acc_h, cx.vel_h
        if self.of is not None:
            out["acc"].update(Fy=self.of.acc_f, Fb=self.of.acc_b)
            out["vel"].update(Fy=self.of.vel_f, Fb=self.of.vel_b)
        return out

    def load_state(self, params=None, optimizer_state=None):
        """Copy ``params`` (every parameter :meth:`optimizer_state` has a state of) and/or an
        ``optimizer_state`` (as :meth:`optimizer_state` returns; parameters it lacks keep
        their state) into the trainer's arrays (warm start, checkpoints)."""
        live = self.optimizer_state()
        for key in live["acc"]:
            if params is not None:
                self.params[key][...] = params[key]
            if optimizer_state is not None and key in optimizer_state["acc"]:
                live["acc"][key][...] = optimizer_state["acc"][key]
                live["vel"][key][...] = optimizer_state["vel"][key]

    def training_state(self) -> dict:
        """Host arrays that, with the parameters, the optimiser state and the random
        generators, let training continue exactly (checkpoints): the negative-sample store,
        its position, the step count and the strategy's epoch."""
        return {"store": self.store.samples.copy(),
                "counters": np.array([self.sched_state[2], self.sched_state[4], self.epoch],
                                     np.int64)}

    def restore_training_state(self, state: dict) -> None:
        """Inverse of :meth:`training_state` (after :meth:`fill_store`)."""
        self.store.samples[...] = state["store"]
        self.sched_state[2], self.sched_state[4], self.epoch = (int(x) for x in
                                                                  state["counters"])

    @property
    def follows_events(self) -> bool:
        """Whether the network reads per-event data besides the items (context rows): an
        augmented epoch then names its events (:meth:`select_events`)."""
        return self.cx is not None

    def select_events(self, rows) -> None:
        """The coming epoch trains on the training events ``rows`` ((n,) int, in their epoch
        order: the kept events of augmented sessions); their context rows go with them."""
        ev_in, ev_out = kept_events(self.event_context, rows)
        self.cx = self.cx._replace(ev_in=ev_in, ev_out=ev_out)

    def host_params(self) -> dict:
        """The trained parameters (host arrays, updated in place during training)."""
        return self.params

    def start_epoch(self, items, order, offsets):
        """items: (n_events,) int32; order: (n_sessions,) int64 visiting order; offsets: CSR.
        With a ``plan``, the epoch's phase is ``plan[epoch]`` (see :meth:`set_phase`)."""
        if self.plan is not None:
            self.set_phase(*self.plan[self.epoch])
            if len(self.names) > 1:
                logger.info("epoch %d trains subnets %s", self.epoch + 1,
                            [n for n, t in zip(self.names, self.train) if t])
            self.epoch += 1
        self.sched = Schedule(items=items, order=order, offsets=offsets, state=self.sched_state,
                              **self.rows)
        epoch_start(self.sched, self.min_rows, self.work.HP)

    def rows_left(self) -> bool:
        return bool(self.sched_state[0] > 0)

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch).
        Returns ``(sum of step_loss * rows, events, finite)``."""
        st = Store(samples=self.store.samples, cdf=self.store.cdf, log_support=self.log_support)
        # BLAS runs on one thread whenever Numba has more (threads.training_threads)
        self.flags[3] = numba.get_num_threads() >= 2
        return train_steps(max_steps, self.net, self.sched, st, self.work, self.out,
                           self.sparse, self.opt, self.active, self.train, self.flags,
                           self.min_rows, self.draw_masks, self.hyper, self.cx, self.prof,
                           self.of)

    def forward_backward(self, in_items, B, cols, C):
        """One step's loss and gradients without an update (gradient checks), with the current
        ``work.HP`` (previous hidden states), masks ``work.M0f``/``work.MK``, ``out.lq`` and the
        context rows ``cx.rin``/``cx.rout``. Returns ``(loss, grads)``; ``grads`` holds
        full-size ``theta``, ``T``, ``Wy``, ``By`` gradients (zero for parameters that are
        frozen or not reached), with context ``context_in``/``context_out``/``context_h``, and
        ``Fy``/``Fb`` for a network with output features."""
        p, SI, sp, wk = self.params, self.net.SI, self.sparse, self.work
        in_buf = self.rows["in_items"]
        in_buf[:B] = in_items
        self.out.cols[:C] = cols
        wk.gtheta[:] = 0.0
        total = step_forward_backward(self.net, self.active, self.train, bool(self.flags[2]),
                                      in_buf, B, C, wk, self.out, sp, self.hyper, self.cx,
                                      None, self.of)
        grads = {"theta": np.zeros_like(p["theta"]), "T": np.zeros_like(p["T"]),
                 "Wy": np.zeros_like(p["Wy"]), "By": np.zeros_like(p["By"])}
        for s in range(SI.shape[0]):
            if self.active[s] and self.train[s]:
                d0, d1 = SI[s, S_D0], SI[s, S_D1]
                grads["theta"][d0:d1] = wk.gtheta[d0:d1]
            if SI[s, S_TAB] == T_OWN:
                tc, toff, goff, roff = SI[s, S_TCOLS], SI[s, S_TOFF], SI[s, S_GOFF], SI[s, S_ROFF]
                for u in range(sp.nT[s]):
                    r = sp.rowsT[roff + u]
                    g0 = goff + u * tc
                    grads["T"][toff + r * tc:toff + (r + 1) * tc] += sp.GT[g0:g0 + tc]
        nY, n_out = sp.counts
        for u in range(nY):
            grads["Wy"][sp.rowsY[u]] += sp.GY[u]
        for u in range(n_out):
            grads["By"][sp.rowsY[u]] += sp.gBy[u]
        release_all(SI, sp)
        if self.cx is not None:
            grads["context_in"], grads["context_out"] = self.cx.gin.copy(), self.cx.gout.copy()
            grads["context_h"] = self.cx.gh.copy()
        if self.of is not None:
            of, H = self.of, self.of.Fy.shape[1]
            grads["Fy"], grads["Fb"] = np.zeros_like(of.Fy), np.zeros_like(of.Fb)
            for u in range(of.count[0]):
                grads["Fy"][of.rows[u]] += of.G[u, :H]
                grads["Fb"][of.rows[u]] += of.G[u, H]
            release_output_rows(of)
        return total, grads
