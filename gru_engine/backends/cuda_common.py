"""Pieces of the CUDA backends written once, for SessionGRU (:mod:`.cuda`) and FeatureSessionGRU
(:mod:`.feature_cuda`), against :class:`~.device.Device`:

- :class:`TrainerBase`: hyperparameters, hidden state, dropout masks, the sampled output layer
  with the fused loss, the GRU cell backward, dense and sparse Adagrad;
- :class:`EpochLoopBase`: the trainer interface of ``SessionGRU``'s epoch loop (schedule,
  sample store, the epoch loop);
- :class:`ScorerBase`: the evaluator's scorer protocol with device-side ``rank``/``topk``
  (:func:`topk_device`), device parameters cached per model (:func:`_cached_net`).
"""
from __future__ import annotations

import weakref

import numpy as np

from ..batching import full_schedule
from ..sampling import SampleStore
from .device import Device

INT_MAX = 2 ** 31 - 1
BLOCK = 256
LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
RANK_MODES = {"conservative": 0, "optimistic": 1, "standard": 1, "median": 2}


def _grid(n: int) -> int:
    return max(1, (int(n) + BLOCK - 1) // BLOCK)


# model -> (params dict, key, net): device parameters reused by the scorers' cache_on=model
# (a cuda._Net, or a feature_cuda._FeatureNet; the keys of the two never compare equal)
_SCORER_NETS = weakref.WeakKeyDictionary()


class ScratchBuffers:
    """Named scratch buffers: one flat allocation per name (``self._flat``), grown on demand and
    viewed at the size asked for. Needs ``self.dev`` and ``self._flat = {}``."""

    def _buf(self, name, shape, dtype=np.float32):
        n = int(np.prod(shape))
        cur = self._flat.get(name)
        if cur is None or cur.size < n or cur.dtype != np.dtype(dtype):
            cur = self.dev.empty((max(n, 1),), dtype)
            self._flat[name] = cur
        return cur[:n].reshape(shape)


class TrainerBase(ScratchBuffers):
    """Hyperparameters and step pieces shared by :class:`CudaTrainer` and
    :class:`~.feature_cuda.FeatureCudaTrainer`.

    Arguments mirror the model's hyperparameters. ``item_support`` (n_items,) training event
    counts, needed for ``logq > 0`` with cross-entropy. ``final_act``: (code, param) as
    :func:`gru_engine.params.parse_final_act` (0 linear, 1 relu, 2 tanh, 3 leaky, 4 elu).
    A subclass sets ``self.net`` (with ``p['Wy']``, ``p['By']``, ``to_host()``), ``self.acc``/
    ``self.vel``, ``masks_per_step`` (dropout streams per step) and calls :meth:`_init_state`.
    """

    def __init__(self, device: Device, *, batch_size: int, n_sample: int,
                 loss: str = "cross-entropy", final_act=(0, 0.0), bpreg: float = 0.0,
                 elu_param: float = 0.0, logq: float = 0.0, sample_alpha: float = 0.5,
                 item_support=None, learning_rate: float = 0.05, momentum: float = 0.0,
                 dropout_p_embed: float = 0.0, dropout_p_hidden: float = 0.0, seed: int = 42):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.dev = d = device
        self.loss = loss
        self.batch_size, self.n_sample = int(batch_size), int(n_sample)
        self.final_act = (int(final_act[0]), float(final_act[1]))
        self.bpreg, self.elu_param = float(bpreg), float(elu_param)
        self.lr, self.momentum = float(learning_rate), float(momentum)
        self.p_embed, self.p_hidden = float(dropout_p_embed), float(dropout_p_hidden)
        self.seed = int(seed) & 0xFFFFFFFF
        self.corr_item = None
        if loss == "cross-entropy" and logq > 0:
            if item_support is None:
                raise ValueError("logq > 0 needs item_support (training event count per item)")
            log_q = np.log(np.maximum(np.asarray(item_support, dtype=np.float64), 1.0))
            # in-batch columns use the raw support, sampled columns support^sample_alpha
            self.corr_item = (d.to_device(logq * log_q, np.float32),
                              d.to_device(logq * sample_alpha * log_q, np.float32))
        self.loss_sum = d.zeros((1,))
        self.arange = d.to_device(np.arange(max(self.batch_size, self.batch_size + self.n_sample),
                                            dtype=np.int32))
        # dropout's step counter in device memory (a graph replay must not freeze it)
        self.step_counter = d.zeros((1,), np.uint32)
        self._flat = {}

    def _init_state(self, hidden_sizes, owner_rows: int):
        """Hidden state ``h``/``h_prev`` (batch_size, H) per layer and the sparse updates' row
        ``owner`` table (owner_rows,) int32 (INT_MAX = unclaimed)."""
        d, B = self.dev, self.batch_size
        self.owner = d.full((owner_rows,), INT_MAX, np.int32)
        self.h = [d.zeros((B, H)) for H in hidden_sizes]
        self.h_prev = [d.zeros((B, H)) for H in hidden_sizes]

    def reset_state(self):
        """Zero the hidden state (start of an epoch)."""
        for h in self.h:
            h.fill(0)

    def params_to_host(self) -> dict:
        return self.net.to_host()

    def take_loss_sum(self) -> float:
        """Sum of step losses (each = sum over rows / batch_size) since the last call; syncs."""
        value = float(self.dev.to_host(self.loss_sum)[0])
        self.loss_sum.fill(0)
        return value

    def _step_rows(self, in_items, sample) -> int:
        """R, the rows of a step; ValueError unless 1 <= R <= batch_size and (n_sample,) sample."""
        R = int(in_items.shape[0])
        if not 1 <= R <= self.batch_size or int(sample.shape[0]) != self.n_sample:
            raise ValueError(f"step with {R} rows / {int(sample.shape[0])} samples; trainer "
                             f"built for batch_size={self.batch_size}, n_sample={self.n_sample}")
        return R

    def _mask_stream(self, offset):
        """``dropout_mask``'s (step, stride, offset) arguments: mask ``offset`` of step t uses
        stream ``t * masks_per_step + offset`` with t read from ``self.step_counter`` on the
        device (advanced by ``counter_add`` at the end of each step), so graph replays stay
        correct."""
        return [self.step_counter, self.masks_per_step, offset]

    def _dropout_mask(self, name, shape, p: float, offset: int):
        """Buffer ``name`` of ``shape`` float32 filled by ``dropout_mask`` (0 with probability
        ``p``, else 1/(1-p)) from stream ``offset`` of this step."""
        m = self._buf(name, shape)
        self.dev.launch("dropout_mask", _grid(m.size), BLOCK,
                        [m, m.size, p, self.seed, *self._mask_stream(offset)])
        return m

    def _prev_state(self, l: int, src, R: int):
        """(R, H_l) state of layer l before this step: ``h[l][:R]`` (src None) or the rows
        ``src`` (R,) int32 of ``h[l]`` gathered into ``h_prev[l]``."""
        if src is None:
            return self.h[l][:R]
        H = self.h[l].shape[1]
        hprev = self.h_prev[l][:R]
        self.dev.launch("gather_rows", _grid(R * H), BLOCK,
                        [self.h[l], H, src, R, H, None, None, hprev, H])
        return hprev

    def _output_layer(self, h_last, out_items, sample, idx_wy, n_wy: int, dh_name: str,
                      loss_slot):
        """Sampled output layer, forward and backward. h_last (R, Hl) float32; columns
        ``cols = idx_wy[:C]`` = [out_items (R,) | sample (n_sample,)] written here; scores
        ``h_last @ Wy[cols].T + By[cols]`` -> :meth:`_loss` (step loss added to ``loss_slot``).
        Returns ``dBy`` (C,), ``G_wy`` (n_wy, Hl) with rows [:C] = dS^T h_last (the rest is the
        caller's), ``dh`` (R, Hl) = dS Wy[cols] in buffer ``dh_name``."""
        d, p = self.dev, self.net.p
        R, Hl = h_last.shape
        C = R + self.n_sample
        cols = idx_wy[:C]
        d.copy(cols[:R], out_items)
        d.copy(cols[R:], sample)
        wy_c, by_c = self._buf("wy_c", (C, Hl)), self._buf("by_c", (C,))
        d.launch("gather_rows", _grid(C * Hl), BLOCK,
                 [p["Wy"], Hl, cols, C, Hl, None, None, wy_c, Hl])
        d.launch("gather_rows", _grid(C), BLOCK, [p["By"], 1, cols, C, 1, None, None, by_c, 1])
        S = self._buf("S", (R, C))
        d.gemm(h_last, wy_c, out=S, trans_b=True)
        d.launch("add_bias", _grid(R * C), BLOCK, [S, by_c, R, C])
        dS = self._loss(S, out_items, sample, loss_slot)
        dBy = self._buf("dBy", (C,))
        d.launch("column_sum", _grid(C), BLOCK, [dS, R, C, C, dBy])
        G_wy = self._buf("G_wy", (n_wy, Hl))
        d.gemm(dS, h_last, out=G_wy[:C], trans_a=True)
        dh = self._buf(dh_name, (R, Hl))
        d.gemm(dS, wy_c, out=dh)
        return dBy, G_wy, dh

    def _loss(self, S, out_items, sample, loss_slot):
        """Final activation and fused loss of the scores S (R, C) (row i's positive is column
        i); adds the step loss (sum over rows / batch_size) to ``loss_slot`` (default
        ``self.loss_sum``); returns dS (R, C), the gradient w.r.t. S."""
        d = self.dev
        R, C = S.shape
        act, act_param = self.final_act
        S_loss = S
        if act != 0:
            S_loss = self._buf("S_act", (R, C))
            d.launch("final_act_forward", _grid(R * C), BLOCK, [S, S_loss, R * C, act, act_param])
        dS = self._buf("dS", (R, C))
        row_loss = self._buf("row_loss", (R,))
        scale = 1.0 / self.batch_size
        loss_acc = self.loss_sum if loss_slot is None else loss_slot
        if self.loss == "cross-entropy":
            corr = None
            if self.corr_item is not None:
                corr = self._buf("corr", (C,))
                d.launch("gather_rows", _grid(R), BLOCK,
                         [self.corr_item[0], 1, out_items, R, 1, None, None, corr, 1])
                if self.n_sample:
                    d.launch("gather_rows", _grid(self.n_sample), BLOCK,
                             [self.corr_item[1], 1, sample, self.n_sample, 1, None, None,
                              corr[R:], 1])
            args = [S_loss, R, C, corr, None, scale, row_loss, loss_acc, dS]
        elif self.loss == "bpr-max":
            args = [S_loss, R, C, None, scale, self.bpreg, self.elu_param, row_loss, loss_acc, dS]
        else:
            args = [S_loss, R, C, None, scale, row_loss, loss_acc, dS]
        d.launch("loss_" + self.loss.replace("-", "_"), R, BLOCK, args)
        if act != 0:
            d.launch("final_act_backward", _grid(R * C), BLOCK, [S, dS, dS, R * C, act, act_param])
        return dS

    def _cell_backward(self, l: int, dh, saved, hpe, mask, dWh, dbx, dbhn):
        """Backward of layer ``l``'s fused GRU cell for dh (R, H) (``saved`` (R, 4H), ``hpe``
        (R, H) and ``mask`` of its forward): writes dWh (H, 3H) = hpe^T dgh, dbx (3H,) and
        dbhn (H,); returns dgx (R, 3H) (buffer ``dgx{l}``), the gradient of x @ Wx + bx."""
        d = self.dev
        R, H = dh.shape
        dgx, dgh = self._buf(f"dgx{l}", (R, 3 * H)), self._buf(f"dgh{l}", (R, 3 * H))
        d.launch("gru_cell_backward", _grid(R * H), BLOCK, [dh, saved, hpe, mask, dgx, dgh, R, H])
        d.gemm(hpe, dgh, out=dWh, trans_a=True)
        d.launch("column_sum", _grid(3 * H), BLOCK, [dgx, R, 3 * H, 3 * H, dbx])
        d.launch("column_sum", _grid(H), BLOCK, [dgh.reshape(-1)[2 * H:], R, 3 * H, H, dbhn])
        return dgx

    def _dense_update(self, prm, acc, vel, g):
        """Adagrad + momentum on a whole float32 array (prm, acc, vel, g of one shape)."""
        self.dev.launch("adagrad_dense", _grid(prm.size), BLOCK,
                        [prm, g, acc, vel, prm.size, self.lr, self.momentum])

    def _sparse_update(self, prm, acc, vel, G, idx, n: int, W: int, col_masks=None):
        """Adagrad + momentum on the rows ``idx`` (n,) int32 of prm/acc/vel (rows, W) from the
        gradient rows G (n, W), duplicate indices summed first (``sparse_claim`` +
        ``sparse_combine``); untouched rows keep acc and velocity. ``col_masks``: ``(n_first,
        mask_first, mask_rest)`` with (W,) float32 masks: entries below n_first update only
        mask_first's nonzero columns, the others mask_rest's (``sparse_adagrad_masked``)."""
        d = self.dev
        blk = min(BLOCK, 32 * ((W + 31) // 32))
        d.launch("sparse_claim", _grid(n), BLOCK, [idx, n, self.owner])
        d.launch("sparse_combine", n, blk, [G, idx, n, W, self.owner])
        if col_masks is None:
            d.launch("sparse_adagrad", n, blk,
                     [prm, acc, vel, G, idx, n, W, self.owner, self.lr, self.momentum])
        else:
            d.launch("sparse_adagrad_masked", n, blk,
                     [prm, acc, vel, G, idx, n, W, self.owner, *col_masks, self.lr,
                      self.momentum])


class EpochLoopBase:
    """A CUDA trainer (the subclass's ``trainer_class``) behind the interface SessionGRU's epoch
    loop drives (the same as :class:`gru_engine.backends.cpu.CPUTrainer`): ``fill_store()``,
    ``start_epoch(items, order, offsets)``, ``rows_left()``, ``run(max_steps) -> (loss_sum,
    events, finite)``, ``host_params()``.

    The epoch's schedule is built on the host once per epoch (:func:`batching.full_schedule`,
    the CPU backend's scheduler) and copied to the device once; the negative-sample store is the
    CPU backend's :class:`SampleStore` (drawn with Numba's generator, redrawn when used up, so
    the same blocks are consumed in the same order as on the CPU) and is copied to the device
    once per (re)draw. Step losses accumulate on the device and are read once per :meth:`run`.
    A subclass runs one step in :meth:`_train_step`.

    ``params``: host parameter dict (copied to the device); the other arguments are those of
    the trainer plus ``sample_store_size``.
    """

    def __init__(self, device: Device, params: dict, *, batch_size: int, n_sample: int,
                 sample_alpha: float, sample_store_size: int, item_support, **trainer_args):
        self.dev = device
        self.trainer = self.trainer_class(device, params, batch_size=batch_size,
                                          n_sample=n_sample, sample_alpha=sample_alpha,
                                          item_support=item_support, **trainer_args)
        self.batch_size, self.n_sample = int(batch_size), int(n_sample)
        self.min_rows = 2 if self.n_sample == 0 else 1
        self.store = SampleStore(np.asarray(item_support), sample_alpha, n_sample,
                                 sample_store_size)
        self._store_dev = None
        self._no_sample = device.zeros((0,), np.int32)
        self._masks = None
        self._rows = np.zeros(0, np.int64)
        self._step = 0

    def fill_store(self):
        """Draw the negative-sample store (seed Numba's generator first)."""
        self.store.fill()
        self._store_dev = None

    def _sample_block(self):
        """(n_sample,) int32 device view of the store's next block (redrawn when used up)."""
        if self.n_sample == 0:
            return self._no_sample
        st = self.store
        if st.pos + self.n_sample > len(st.samples):
            self.fill_store()
        if self._store_dev is None:
            self._store_dev = self.dev.to_device(st.samples, np.int32)
        block = self._store_dev[st.pos:st.pos + self.n_sample]
        st.pos += self.n_sample
        return block

    def start_epoch(self, items, order, offsets):
        """items: (n_events,) int32; order: (n_sessions,) int64 visiting order; offsets: CSR."""
        rows, ins, tgts, rsts, srcs = full_schedule(items, order, offsets, self.batch_size,
                                                    self.min_rows)
        d = self.dev
        self._rows = rows
        self._starts = np.concatenate([[0], np.cumsum(rows)])
        self._prepare_epoch(ins)
        self._ins, self._tgts = d.to_device(ins, np.int32), d.to_device(tgts, np.int32)
        self._rsts = d.to_device(rsts.astype(np.uint8))
        self._srcs = d.to_device(srcs, np.int32)
        self._step = 0
        self.trainer.reset_state()

    def _prepare_epoch(self, ins):
        """Hook called by :meth:`start_epoch` once ``_rows``/``_starts`` hold the new schedule;
        ins: (sum rows,) host input items. Nothing to prepare here."""

    def rows_left(self) -> bool:
        return self._step < len(self._rows)

    def _step_inputs(self, a: int, b: int):
        """Positional inputs of the trainer's ``step`` for schedule rows [a, b): ``(in_items,
        out_items, reset, sample, src)`` device views (the sample block is consumed here)."""
        return (self._ins[a:b], self._tgts[a:b], self._rsts[a:b], self._sample_block(),
                self._srcs[a:b])

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch); one host sync at the end.
        Returns ``(sum of step_loss * rows, events, finite)``."""
        t0 = self._step
        t1 = len(self._rows) if max_steps < 0 else min(len(self._rows), t0 + int(max_steps))
        losses = self.dev.zeros((max(t1 - t0, 1),))
        for t in range(t0, t1):
            self._train_step(t, int(self._starts[t]), int(self._starts[t + 1]),
                             losses[t - t0:t - t0 + 1])
        self._step = t1
        step_loss = self.dev.to_host(losses)[:t1 - t0].astype(np.float64)
        rows = self._rows[t0:t1]
        finite = bool(np.isfinite(step_loss).all())
        return float(step_loss @ rows), int(rows.sum()), finite

    def host_params(self) -> dict:
        """The trained parameters copied to the host (float32, the CPU backend's layout)."""
        return self.trainer.params_to_host()


def _cached_net(cache_on, params: dict, key, build):
    """The device parameters kept for ``cache_on`` when they were built from the very same
    ``params`` dict under the same ``key``; else ``build()`` (kept for ``cache_on``)."""
    cached = _SCORER_NETS.get(cache_on) if cache_on is not None else None
    if cached is not None and cached[0] is params and cached[1] == key:
        return cached[2]
    net = build()
    if cache_on is not None:
        _SCORER_NETS[cache_on] = (params, key, net)
    return net


class ScorerBase(ScratchBuffers):
    """Inference on the device for the evaluator's scorer protocol (no dropout), shared by
    :class:`CudaScorer` and :class:`~.feature_cuda.FeatureCudaScorer`.

    ``begin(n_rows)`` zeroes an (n_rows, H_l) hidden state per layer; ``score(rows, items,
    new_session)`` feeds one click per listed row (rows: (R,) int indices into the state,
    distinct; items: (R,) int item indices; new_session: (R,) bool, True resets that row) and
    returns float32 (R, n_items) scores ``final_act(h_out @ Wy.T + By)`` on the host (as the
    CPU scorer). ``rank`` and ``topk`` do the same step but keep the score block on the device.
    ``net``: device parameters with ``H`` (hidden size per layer), ``n_items``, ``p['Wy']``
    (n_items, H_out), ``p['By']``; a subclass computes ``h_out`` in :meth:`_forward_rows`.
    """

    def __init__(self, device: Device, net, final_act):
        self.dev = device
        self.net = net
        self.final_act = (int(final_act[0]), float(final_act[1]))
        self.n_items = net.n_items
        self.h = None
        self._flat = {}

    def begin(self, n_rows: int):
        self.h = [self.dev.zeros((int(n_rows), H)) for H in self.net.H]

    def _scores_device(self, rows, items, new_session):
        """(R, n_items) float32 device scores of one click per row (advances those rows)."""
        if self.h is None:
            raise ValueError("call begin(n_rows) before score()")
        d, p = self.dev, self.net.p
        R = len(rows)
        rows_d = d.to_device(np.asarray(rows), np.int32)
        items_d = d.to_device(np.asarray(items), np.int32)
        reset_d = d.to_device(np.asarray(new_session).astype(np.uint8))
        x = self._forward_rows(rows_d, items_d, reset_d, R)
        N = self.n_items
        S = self._buf("S", (R, N))
        d.gemm(x, p["Wy"], out=S, trans_b=True)
        d.launch("add_bias", _grid(R * N), BLOCK, [S, p["By"], R, N])
        if self.final_act[0] != 0:
            S_act = self._buf("S_act", (R, N))
            d.launch("final_act_forward", _grid(R * N), BLOCK,
                     [S, S_act, R * N, self.final_act[0], self.final_act[1]])
            return S_act
        return S

    def score(self, rows, items, new_session):
        return self.dev.to_host(self._scores_device(rows, items, new_session))

    def rank(self, rows, items, new_session, targets, mode: str = "conservative"):
        """(R,) float32 rank of each row's target item among all items (1 = best); NaN for a
        row whose scores hold NaN anywhere (``evaluate_sessions`` then refuses the model with
        ``ModelFitError``)."""
        if mode not in RANK_MODES:
            raise ValueError(f"mode must be one of {sorted(RANK_MODES)}, got {mode!r}")
        S = self._scores_device(rows, items, new_session)
        R, N = S.shape
        ranks = self._buf("ranks", (R,))
        self.dev.launch("rank_targets", R, BLOCK,
                        [S, R, N, self.dev.to_device(np.asarray(targets), np.int32),
                         RANK_MODES[mode], ranks])
        return self.dev.to_host(ranks)

    def topk(self, rows, items, new_session, k: int):
        """Top-k items per row, best first (ties: lower index first): (R, k) int32 indices
        and float32 scores."""
        return topk_device(self.dev, self._scores_device(rows, items, new_session), k)


def topk_device(device: Device, S, k: int):
    """Top-k of each row of a device score block S (R, N); returns host (idx, vals)."""
    R, N = S.shape
    if not 1 <= int(k) <= N:
        raise ValueError(f"k must be in [1, {N}], got {k!r}")
    idx = device.empty((R, int(k)), np.int32)
    vals = device.empty((R, int(k)), np.float32)
    device.launch("topk_rows", R, BLOCK, [S, R, N, int(k), idx, vals], shared_mem=8 * int(k))
    return device.to_host(idx), device.to_host(vals)
