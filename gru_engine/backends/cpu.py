"""CPU backend of SessionGRU: the whole training epoch and the inference step in Numba (the
scorer around the inference step is :class:`.cpu_scoring.GRUScorer`).

One training step (all gradients use the parameters as they were before the step):

1. schedule: rows' input items ``items[cur]``, targets ``items[cur+1]`` (batching.py);
   hidden rows of sessions that start now are zero;
2. columns ``cols = [targets (B) | n_sample negatives from the store]``; for cross-entropy with
   logq, ``lq = [log support[targets] | alpha * log support[negatives]]``;
3. dropout masks (inverted): ``mask0`` on the layer-0 input (one factor per row for one-hot
   input), ``mask[l]`` on every layer's output, drawn in that order, row-major;
4. forward: layer-0 input (one-hot row lookup ``Wx[0][item]``, or ``x0 = E[item] * mask0`` /
   ``Wy[item] * mask0`` then ``x0 @ Wx[0]``), GRU steps, ``y[l] = h'[l] * mask[l]``;
   scores ``O = y[L-1] @ Wy[cols].T + By[cols]``;
5. loss and ``dO`` (losses.py, divided by ``batch_size``);
6. backward: ``dWc = dO^T y``, ``dbc = sum_rows dO``, ``dy = dO Wc``; per layer from the top:
   ``dh' = dy * mask``, gate backward, ``dWh = hprev^T dgh``, ``dbhn``, ``dWx = x^T dgx``,
   ``dbx``, ``dx = dgx Wx^T`` (the input gradient of the layer below / of the embedding);
7. sparse sums per item: output rows of Wy/By first (slots ``0..n_out-1``), then the
   constrained-embedding input rows of Wy (``dx0 * mask0``), or E / one-hot Wx[0] rows;
8. Adagrad + momentum: dense for GRU weights, sparse rows for Wy, By (output rows only), E,
   one-hot Wx[0];
9. carry: ``hprev[l] = y[l]`` (the dropped-out output), compacted/zeroed by the schedule.

Input modes: ``ONEHOT`` (Wx[0] is (n_items, 3H0)), ``EMBEDDING`` (E), ``CONSTRAINED`` (Wy rows).
"""
from __future__ import annotations


import numpy as np
# Numba's np.dot calls the BLAS behind scipy.linalg.cython_blas. Load it now, so that a thread
# limit set later (threadpoolctl, see model._thread_limit) sees and limits that library.
import scipy.linalg.cython_blas  # noqa: F401
from numba import njit

from ..batching import schedule_advance, schedule_start
from ..gru import column_sums, dropout_mask, gru_backward, gru_forward, multiply_rows
from ..losses import CROSS_ENTROPY, loss_forward_backward, activate
from ..optim import (accumulate_rows, accumulate_rows_1d, adagrad_dense, adagrad_rows,
                     adagrad_rows_1d, release_rows)
from ..sampling import SampleStore, draw

ONEHOT, EMBEDDING, CONSTRAINED = 0, 1, 2


# ---------------------------------------------------------------------------------------------
# one training step
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _layer0_input(mode, in_items, B, Wx0, bx0, E, Wy, x0, mask0, gx0):
    """gx0[:B] = layer-0 input pre-activations (see the module docstring)."""
    G3 = gx0.shape[1]
    if mode == ONEHOT:
        for i in range(B):
            m = mask0[i, 0]
            it = in_items[i]
            for k in range(G3):
                gx0[i, k] = m * Wx0[it, k] + bx0[k]
        return
    src = E if mode == EMBEDDING else Wy
    d = x0.shape[1]
    for i in range(B):
        it = in_items[i]
        for k in range(d):
            x0[i, k] = src[it, k] * mask0[i, k]
    np.dot(x0[:B], Wx0, gx0[:B])
    _add_bias(gx0, bx0, B)


@njit(cache=True, error_model="numpy")
def _add_bias(X, b, B):
    for i in range(B):
        for k in range(X.shape[1]):
            X[i, k] += b[k]


@njit(cache=True, error_model="numpy")
def step_forward(mode, in_items, B, Wx, bx, Wh, bhn, E, Wy, x0, mask0, hprev, hout, y, mask,
                 gx, gh, gates):
    """Forward through all GRU layers for the first ``B`` rows (steps 4 of the module doc).

    Tuples ``Wx, bx, Wh, bhn, hprev, hout, y, mask, gx, gh, gates`` hold one array per layer.
    ``y[L-1][:B]`` is the network output.
    """
    L = len(Wx)
    _layer0_input(mode, in_items, B, Wx[0], bx[0], E, Wy, x0, mask0, gx[0])
    for l in range(L):
        if l > 0:
            np.dot(y[l - 1][:B], Wx[l], gx[l][:B])
            _add_bias(gx[l], bx[l], B)
        gru_forward(gx[l], hprev[l], Wh[l], bhn[l], gh[l], gates[l], hout[l], B)
        Yl = y[l]
        Hl = hout[l]
        Ml = mask[l]
        for i in range(B):
            for k in range(Yl.shape[1]):
                Yl[i, k] = Hl[i, k] * Ml[i, k]


@njit(cache=True, error_model="numpy")
def output_forward_backward(h, dh, B, cols, C, Wy, By, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc,
                            rs, loss, act, act_param, logq, bpreg, elu, scale, slotY, rowsY, GY,
                            gBy, any_mask):
    """Sampled output layer of one step (steps 4-7 for the scores): ``O = h[:B] @ Wy[cols].T +
    By[cols]`` (h: (>=B, H)), the loss, ``dh[:B] = dO @ Wy[cols]`` and the output rows of the
    sparse sums, ``GY[u]``/``gBy[u]`` for item ``rowsY[u]`` (slots ``0..n_out-1``).
    Wc, dWc: (>=C, H) and bc, dbc: (>=C,) scratch; ``any_mask`` an unused (.., 1) float array
    of the parameters' dtype. Returns ``(step loss, n_out)``."""
    H = h.shape[1]
    for j in range(C):
        c = cols[j]
        for k in range(H):
            Wc[j, k] = Wy[c, k]
        bc[j] = By[c]
    O = O_flat[:B * C].reshape(B, C)
    np.dot(h[:B], Wc[:C].T, O)
    for i in range(B):
        for j in range(C):
            O[i, j] += bc[j]
    total = loss_forward_backward(O, B, C, loss, act, act_param, logq, lq, bpreg, elu, scale,
                                  ra, rb, rc, rs)
    np.dot(O.T, h[:B], dWc[:C])
    column_sums(O, B, dbc, 0, C)
    np.dot(O, Wc[:C], dh[:B])
    n_out = accumulate_rows(slotY, rowsY, 0, GY, cols, dWc, C, any_mask, False)
    gBy[:n_out] = 0.0
    accumulate_rows_1d(slotY, gBy, cols, dbc, C)
    return total, n_out


@njit(cache=True, error_model="numpy")
def step_forward_backward(mode, in_items, B, Wx, bx, Wh, bhn, E, Wy, By,
                          gWx, gbx, gWh, gbhn,
                          x0, mask0, dx0, hprev, hout, y, mask, gx, gh, gates, dgx, dgh, dy,
                          cols, C, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc, rs,
                          loss, act, act_param, logq, bpreg, elu, scale,
                          slotY, rowsY, GY, gBy, slotI, rowsI, GI, counts):
    """Forward, loss and all gradients of one step (steps 4-7 of the module doc).

    Dense gradients go to ``gWx, gbx, gWh, gbhn`` (``gWx[0]`` unused for one-hot input).
    Sparse gradients: ``GY[u]``/``gBy[u]`` for item ``rowsY[u]`` of Wy/By; ``GI[u]`` for item
    ``rowsI[u]`` of E or one-hot Wx[0]. ``counts`` (3,) int64 gets ``[n Wy rows, n By rows,
    n input rows]``. The slot arrays are left set; call :func:`step_update` (or
    ``release_rows``) afterwards. Returns the step loss.
    """
    L = len(Wx)
    step_forward(mode, in_items, B, Wx, bx, Wh, bhn, E, Wy, x0, mask0, hprev, hout, y, mask,
                 gx, gh, gates)
    total, nY = output_forward_backward(y[L - 1], dy[L - 1], B, cols, C, Wy, By, Wc, bc, O_flat,
                                        dWc, dbc, lq, ra, rb, rc, rs, loss, act, act_param,
                                        logq, bpreg, elu, scale, slotY, rowsY, GY, gBy, mask0)
    n_out = nY
    # GRU layers, top down
    nI = 0
    for l in range(L - 1, -1, -1):
        Hl = Wh[l].shape[0]
        multiply_rows(dy[l], mask[l], B)
        gru_backward(dy[l], hprev[l], gates[l], gh[l], dgx[l], dgh[l], B)
        np.dot(hprev[l][:B].T, dgh[l][:B], gWh[l])
        column_sums(dgh[l], B, gbhn[l], 2 * Hl, Hl)
        column_sums(dgx[l], B, gbx[l], 0, 3 * Hl)
        if l > 0:
            np.dot(y[l - 1][:B].T, dgx[l][:B], gWx[l])
            np.dot(dgx[l][:B], Wx[l].T, dy[l - 1][:B])
        elif mode == ONEHOT:
            nI = accumulate_rows(slotI, rowsI, 0, GI, in_items, dgx[0], B, mask0, True)
        else:
            np.dot(x0[:B].T, dgx[0][:B], gWx[0])
            np.dot(dgx[0][:B], Wx[0].T, dx0[:B])
            if mode == EMBEDDING:
                nI = accumulate_rows(slotI, rowsI, 0, GI, in_items, dx0, B, mask0, True)
            else:
                nY = accumulate_rows(slotY, rowsY, nY, GY, in_items, dx0, B, mask0, True)
    counts[0] = nY
    counts[1] = n_out
    counts[2] = nI
    return total


@njit(cache=True, error_model="numpy")
def step_update(mode, Wx, bx, Wh, bhn, E, Wy, By, gWx, gbx, gWh, gbhn, acc, vel,
                slotY, rowsY, GY, gBy, slotI, rowsI, GI, counts, lr, mom):
    """Adagrad + momentum with the gradients of :func:`step_forward_backward` (step 8).

    ``acc`` and ``vel``: tuples ``(Wx, bx, Wh, bhn, E, Wy, By)`` of optimiser state arrays of the
    parameters' shapes (tuples per layer for the first four).
    """
    L = len(Wx)
    for l in range(L):
        if not (l == 0 and mode == ONEHOT):
            adagrad_dense(Wx[l], gWx[l], acc[0][l], vel[0][l], lr, mom)
        adagrad_dense(bx[l], gbx[l], acc[1][l], vel[1][l], lr, mom)
        adagrad_dense(Wh[l], gWh[l], acc[2][l], vel[2][l], lr, mom)
        adagrad_dense(bhn[l], gbhn[l], acc[3][l], vel[3][l], lr, mom)
    nY, n_out, nI = counts[0], counts[1], counts[2]
    adagrad_rows(Wy, acc[5], vel[5], rowsY, GY, nY, lr, mom)
    adagrad_rows_1d(By, acc[6], vel[6], rowsY, gBy, n_out, lr, mom)
    if mode == ONEHOT:
        adagrad_rows(Wx[0], acc[0][0], vel[0][0], rowsI, GI, nI, lr, mom)
    elif mode == EMBEDDING:
        adagrad_rows(E, acc[4], vel[4], rowsI, GI, nI, lr, mom)
    release_rows(slotY, rowsY, nY)
    release_rows(slotI, rowsI, nI)


# ---------------------------------------------------------------------------------------------
# the epoch
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def epoch_start(order, offsets, batch_size, min_rows, sched, cur, end, reset, src, hprev):
    """Start an epoch: first rows of the schedule, zero hidden state.

    sched: (4,) int64 ``[n_rows, next_sess, store_pos, n_steps]`` (store_pos is kept).
    """
    n_rows, next_sess = schedule_start(order, offsets, batch_size, cur, end, reset, src)
    if n_rows < min_rows:
        n_rows = 0
    sched[0] = n_rows
    sched[1] = next_sess
    sched[3] = 0
    for l in range(len(hprev)):
        hprev[l][:] = 0.0


@njit(cache=True, error_model="numpy")
def step_columns(items, cur, B, in_items, cols, store, store_pos, cdf, n_sample, sample_alpha,
                 log_support, loss, logq, lq):
    """Inputs and sampled output columns of one step (steps 1-2 of the module doc):
    ``in_items[:B]`` (int32) the rows' current items, ``cols[:C] = [targets (B) | n_sample negatives]`` taken
    from ``store`` at ``store_pos`` (redrawn from ``cdf`` when used up), and for cross-entropy
    with logq ``lq[:C] = [log support[targets] | alpha * log support[negatives]]``.
    Returns ``(C, new store_pos)``."""
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
def train_steps(max_steps, items, order, offsets, min_rows, sched, cur, end, reset, src,
                in_items, store, cdf, log_support, n_sample, sample_alpha, p_embed, p_hidden,
                draw_masks, mode, Wx, bx, Wh, bhn, E, Wy, By, gWx, gbx, gWh, gbhn, acc, vel,
                x0, mask0, dx0, hprev, hout, y, mask, gx, gh, gates, dgx, dgh, dy,
                cols, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc, rs,
                loss, act, act_param, logq, bpreg, elu, batch_size, lr, mom,
                slotY, rowsY, GY, gBy, slotI, rowsI, GI, counts):
    """Run up to ``max_steps`` steps (all remaining when < 0) of the epoch started by
    :func:`epoch_start`. Returns ``(sum of step_loss * rows, events, finite)``; stops at the
    first non-finite step loss (``finite`` False, parameters of that step not updated).
    ``draw_masks`` False keeps the dropout masks in ``mask0``/``mask`` as they are (tests).
    """
    L = len(Wx)
    loss_sum = 0.0
    events = 0
    steps = 0
    n_rows = sched[0]
    next_sess = sched[1]
    store_pos = sched[2]
    finite = True
    while n_rows > 0 and (max_steps < 0 or steps < max_steps):
        B = n_rows
        C, store_pos = step_columns(items, cur, B, in_items, cols, store, store_pos, cdf,
                                    n_sample, sample_alpha, log_support, loss, logq, lq)
        if draw_masks:
            dropout_mask(mask0, B, p_embed)
            for l in range(L):
                dropout_mask(mask[l], B, p_hidden)
        step_loss = step_forward_backward(
            mode, in_items, B, Wx, bx, Wh, bhn, E, Wy, By, gWx, gbx, gWh, gbhn,
            x0, mask0, dx0, hprev, hout, y, mask, gx, gh, gates, dgx, dgh, dy,
            cols, C, Wc, bc, O_flat, dWc, dbc, lq, ra, rb, rc, rs,
            loss, act, act_param, logq, bpreg, elu, batch_size,
            slotY, rowsY, GY, gBy, slotI, rowsI, GI, counts)
        if not np.isfinite(step_loss):
            release_rows(slotY, rowsY, counts[0])
            release_rows(slotI, rowsI, counts[2])
            finite = False
            break
        step_update(mode, Wx, bx, Wh, bhn, E, Wy, By, gWx, gbx, gWh, gbhn, acc, vel,
                    slotY, rowsY, GY, gBy, slotI, rowsI, GI, counts, lr, mom)
        loss_sum += step_loss * B
        events += B
        steps += 1
        n_rows, next_sess = schedule_advance(order, offsets, n_rows, next_sess, min_rows,
                                             cur, end, reset, src)
        for l in range(L):
            carry_hidden(hprev[l], y[l], reset, src, n_rows)
    sched[0] = n_rows
    sched[1] = next_sess
    sched[2] = store_pos
    sched[3] += steps
    return loss_sum, events, finite


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------
@njit(cache=True, error_model="numpy", nogil=True)
def apply_final_act(S, R, act, param):
    """``S[:R] = final_act(S[:R])`` in place."""
    for i in range(R):
        for j in range(S.shape[1]):
            S[i, j] = activate(S[i, j], act, param)


@njit(cache=True, error_model="numpy", nogil=True)
def infer_step(mode, rows, items, new_session, state, Wx, bx, Wh, bhn, E, Wy,
               x0, ones0, hprev, hout, ones, gx, gh, gates, out_aug):
    """GRU forward (no dropout) for ``R = len(rows)`` live sessions.

    state: tuple of (n_slots, H_l) hidden states; rows are gathered (zero where
    ``new_session``), stepped and scattered back. ``out_aug[:R] = [h_last | 1]`` (the input
    of :class:`OutputLayer`). Releases the GIL: calls on disjoint ``rows`` with disjoint
    buffers may run on separate threads.
    """
    R = len(rows)
    L = len(Wx)
    for l in range(L):
        st = state[l]
        hp = hprev[l]
        for i in range(R):
            if new_session[i]:
                hp[i, :] = 0.0
            else:
                hp[i, :] = st[rows[i], :]
    step_forward(mode, items, R, Wx, bx, Wh, bhn, E, Wy, x0, ones0, hprev, hout, hout, ones,
                 gx, gh, gates)
    for l in range(L):
        st = state[l]
        ho = hout[l]
        for i in range(R):
            st[rows[i], :] = ho[i, :]
    last = hout[L - 1]
    H = last.shape[1]
    for i in range(R):
        for k in range(H):
            out_aug[i, k] = last[i, k]
        out_aug[i, H] = 1.0


class CPUTrainer:
    """Everything one fit needs besides the parameters: optimiser state, sample store, schedule
    state and work buffers, allocated once; :meth:`run` executes steps in compiled code.

    params: dict as ``SessionGRU.params_`` (updated in place); arrays of one float dtype
    (float32 in training, float64 in tests). ``mode``: ONEHOT | EMBEDDING | CONSTRAINED.
    """

    def __init__(self, params: dict, mode: int, n_items: int, support, batch_size: int,
                 n_sample: int, sample_alpha: float, sample_store_size: int, loss: int,
                 act: int, act_param: float, logq: float, bpreg: float, elu: float, lr: float,
                 mom: float, p_embed: float, p_hidden: float):
        p = params
        dt = p["Wy"].dtype
        layers = [w.shape[0] for w in p["Wh"]]
        bs = batch_size
        cmax = bs + n_sample
        H = layers[-1]
        self.params = p
        self.mode = mode
        self.batch_size = bs
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.hyper = (loss, act, act_param, logq, bpreg, elu, float(bs), lr, mom)
        self.p_embed, self.p_hidden = p_embed, p_hidden
        self.min_rows = 2 if n_sample == 0 else 1
        self.store = SampleStore(support, sample_alpha, n_sample, sample_store_size)
        self.log_support = np.log(np.maximum(np.asarray(support), 1)).astype(dt)
        z2 = np.zeros((1, 1), dt)
        self.Wx, self.bx = tuple(p["Wx"]), tuple(p["bx"])
        self.Wh, self.bhn = tuple(p["Wh"]), tuple(p["bhn"])
        self.E = p.get("E", z2)
        like = lambda xs: tuple(np.zeros_like(x) for x in xs)
        state = lambda: (like(p["Wx"]), like(p["bx"]), like(p["Wh"]), like(p["bhn"]),
                         np.zeros_like(self.E), np.zeros_like(p["Wy"]), np.zeros_like(p["By"]))
        self.acc, self.vel = state(), state()
        self.gWx = tuple(z2.copy() if (l == 0 and mode == ONEHOT) else np.zeros_like(w)
                         for l, w in enumerate(p["Wx"]))
        self.gbx, self.gWh, self.gbhn = like(p["bx"]), like(p["Wh"]), like(p["bhn"])
        if mode == ONEHOT:
            self.x0, self.dx0 = z2.copy(), z2.copy()
            self.mask0 = np.ones((bs, 1), dt)
            d_in = 3 * layers[0]
        else:
            d_in = p["Wx"][0].shape[0]
            self.x0 = np.zeros((bs, d_in), dt)
            self.dx0 = np.zeros((bs, d_in), dt)
            self.mask0 = np.ones((bs, d_in), dt)
        per = lambda k: tuple(np.zeros((bs, k * h), dt) for h in layers)
        self.hprev, self.hout, self.y, self.mask, self.dy = per(1), per(1), per(1), per(1), per(1)
        self.gx, self.gh, self.gates, self.dgx, self.dgh = per(3), per(3), per(3), per(3), per(3)
        self.cols = np.zeros(cmax, np.int32)
        self.Wc = np.zeros((cmax, H), dt)
        self.bc = np.zeros(cmax, dt)
        self.O_flat = np.zeros(bs * cmax, dt)
        self.dWc = np.zeros((cmax, H), dt)
        self.dbc, self.lq = np.zeros(cmax, dt), np.zeros(cmax, dt)
        self.ra, self.rb, self.rc = np.zeros(cmax, dt), np.zeros(cmax, dt), np.zeros(cmax, dt)
        self.rs = np.zeros((2, cmax), dt)
        self.slotY = np.full(n_items, -1, np.int32)
        self.rowsY = np.zeros(cmax + bs, np.int32)
        self.GY = np.zeros((cmax + bs, H), dt)
        self.gBy = np.zeros(cmax + bs, dt)
        self.slotI = np.full(n_items, -1, np.int32)
        self.rowsI = np.zeros(bs, np.int32)
        self.GI = np.zeros((bs, d_in), dt) if mode != CONSTRAINED else z2.copy()
        self.counts = np.zeros(3, np.int64)
        self.sched = np.zeros(4, np.int64)
        self.cur = np.zeros(bs, np.int64)
        self.end = np.zeros(bs, np.int64)
        self.reset = np.zeros(bs, np.bool_)
        self.src = np.zeros(bs, np.int64)
        self.in_items = np.zeros(bs, np.int32)
        self.items = self.order = self.offsets = None
        self.draw_masks = True

    def fix_dropout_masks(self, embed, hidden):
        """Test hook: use these inverted-dropout masks in every step instead of drawing them.

        embed: (batch_size, width) layer-0 input mask (width 1 for one-hot input: one factor per
        row); hidden: one (batch_size, H_l) mask per layer. A step of R rows uses rows ``:R``.
        """
        self.mask0[:] = np.asarray(embed, self.mask0.dtype).reshape(self.mask0.shape)
        for m, h in zip(self.mask, hidden):
            m[:] = h
        self.draw_masks = False

    def host_params(self) -> dict:
        """The trained parameters (host arrays, updated in place during training)."""
        return self.params

    def fill_store(self):
        """Draw the negative-sample store (Numba's generator: seed it first)."""
        self.store.fill()
        self.sched[2] = self.store.pos

    def start_epoch(self, items, order, offsets):
        """items: (n_events,) int32; order: (n_sessions,) int64 visiting order; offsets: CSR."""
        self.items, self.order, self.offsets = items, order, offsets
        epoch_start(order, offsets, self.batch_size, self.min_rows, self.sched, self.cur,
                    self.end, self.reset, self.src, self.hprev)

    def rows_left(self) -> bool:
        return bool(self.sched[0] > 0)

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch).
        Returns ``(sum of step_loss * rows, events, finite)``."""
        p = self.params
        loss, act, act_param, logq, bpreg, elu, scale, lr, mom = self.hyper
        return train_steps(
            max_steps, self.items, self.order, self.offsets, self.min_rows, self.sched,
            self.cur, self.end, self.reset, self.src, self.in_items, self.store.samples,
            self.store.cdf, self.log_support, self.n_sample, self.sample_alpha, self.p_embed,
            self.p_hidden, self.draw_masks, self.mode, self.Wx, self.bx, self.Wh, self.bhn,
            self.E, p["Wy"], p["By"], self.gWx, self.gbx, self.gWh, self.gbhn, self.acc, self.vel,
            self.x0, self.mask0, self.dx0, self.hprev, self.hout, self.y, self.mask, self.gx,
            self.gh, self.gates, self.dgx, self.dgh, self.dy, self.cols, self.Wc, self.bc,
            self.O_flat, self.dWc, self.dbc, self.lq, self.ra, self.rb, self.rc, self.rs,
            loss, act, act_param, logq, bpreg, elu, scale, lr, mom,
            self.slotY, self.rowsY, self.GY, self.gBy, self.slotI, self.rowsI, self.GI,
            self.counts)

    def forward_backward(self, in_items, B, cols, C):
        """One step's loss and gradients without updating (for gradient checks): uses the
        current ``hprev``, ``mask0``, ``mask`` and ``lq`` buffers. Returns the step loss; the
        gradients are left in ``gWx, gbx, gWh, gbhn`` and the sparse accumulators (slots are
        released, ``counts`` gives their sizes)."""
        p = self.params
        loss, act, act_param, logq, bpreg, elu, scale, lr, mom = self.hyper
        self.in_items[:B] = in_items
        self.cols[:C] = cols
        total = step_forward_backward(
            self.mode, self.in_items, B, self.Wx, self.bx, self.Wh, self.bhn, self.E, p["Wy"],
            p["By"], self.gWx, self.gbx, self.gWh, self.gbhn, self.x0, self.mask0, self.dx0,
            self.hprev, self.hout, self.y, self.mask, self.gx, self.gh, self.gates, self.dgx,
            self.dgh, self.dy, self.cols, C, self.Wc, self.bc, self.O_flat, self.dWc, self.dbc,
            self.lq, self.ra, self.rb, self.rc, self.rs, loss, act, act_param, logq, bpreg, elu,
            scale,
            self.slotY, self.rowsY, self.GY, self.gBy, self.slotI, self.rowsI, self.GI,
            self.counts)
        release_rows(self.slotY, self.rowsY, self.counts[0])
        release_rows(self.slotI, self.rowsI, self.counts[2])
        return total
