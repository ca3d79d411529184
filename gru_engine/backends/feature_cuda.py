"""FeatureSessionGRU (p-RNN) training step and scoring on a CUDA device, written once against
:class:`~.device.Device` (runs unchanged on a :class:`~.device.CupyDevice` and in the CPU
emulator :class:`~.device.EmulatedDevice`).

It follows the CPU backend :mod:`gru_engine.backends.feature_cpu` step for step, on the same
flat parameters (``theta``, ``T``, ``Wy``, ``By``) and layout tables (``SI``, ``LI``) of
:func:`gru_engine.feature_model.build_layout`, with the GRU4Rec kernels of ``kernels/*.cu``
(``gather_rows``, ``gru_cell_forward/backward``, the fused losses, ``column_sum``, Adagrad) and
the feature kernels of ``kernels/features.cu``:

* input of a bag subnet (embedding tables, categorical codes, token buckets, the constrained ID
  block of ``Wy``, raw dense values): ``bag_gather`` over the item's CSR bag (+ dropout mask);
  one-hot ID input: ``gather_rows`` of its table rows with ``bx`` and a per-row dropout factor;
* ``combine='sum'``: ``scale_add`` with the combine weight read from ``theta`` on the device,
  its gradient by ``dot_sum``; ``'concat'``: strided ``gather_rows`` into/out of the columns;
* table gradients: ``bag_offsets`` + ``bag_grad`` write one row per bag entry, summed per table
  row by ``sparse_claim``/``sparse_combine`` and applied by ``sparse_adagrad`` (own tables) or
  ``sparse_adagrad_masked`` (``Wy``: the output rows update the column blocks of the active
  subnets -- only the trained ones under ``residual`` -- rows met only as constrained input the
  ID block, exactly as the CPU ``step_update``).

:class:`FeatureEpochTrainer` is the trainer interface of ``SessionGRU``'s epoch loop (that of
:class:`~.feature_cpu.FeatureTrainer`): the same schedule (:func:`batching.full_schedule`), the
same negative-sample store consumed in the same order, the same strategy plan (active/trained
subnets per epoch, ``interleaved`` switching by global step), so CPU and CUDA training agree to
float32 rounding. Dropout masks are drawn on the device (``dropout_mask``, as the ID-only CUDA
backend), so a fit with dropout follows another random stream than on the CPU;
:meth:`FeatureEpochTrainer.fix_dropout_masks` fixes them (tests). CUDA graphs are not used here:
every step runs kernel by kernel (the ID-only ``architecture='id'`` path keeps them).

What is not feature-specific comes from :mod:`.cuda_common`: the trainer builds on
:class:`~.cuda_common.TrainerBase` (sampled output layer, fused loss, dropout masks, Adagrad), the epoch
trainer on :class:`~.cuda_common.EpochLoopBase`, the scorer on :class:`~.cuda_common.ScorerBase`.
"""
from __future__ import annotations

import logging

import numpy as np

from .cuda_common import BLOCK, INT_MAX, EpochLoopBase, ScorerBase, TrainerBase, _cached_net, _grid
from .device import Device
from ..network import (K_DIRECT, L_BHN, L_BX, L_H, L_IN, L_WH, L_WX, S_A, S_C0, S_C1, S_D0,
                      S_D1, S_IN, S_IPOFF, S_KIND, S_L0, S_L1, S_TAB, S_TCOLS, S_TOFF,
                      S_TROWS, S_WYC0, T_NONE, T_OWN, T_WY)

logger = logging.getLogger("gru_engine")

__all__ = ["FeatureCudaTrainer", "FeatureEpochTrainer", "FeatureCudaScorer"]


class _Subnet:
    """Host-side layout of one subnet (plain ints from ``SI``/``LI``)."""

    def __init__(self, SI, LI, s):
        row = SI[s]
        self.kind, self.tab, self.din = int(row[S_KIND]), int(row[S_TAB]), int(row[S_IN])
        self.toff, self.trows, self.tcols = int(row[S_TOFF]), int(row[S_TROWS]), int(row[S_TCOLS])
        self.ipoff, self.wy0 = int(row[S_IPOFF]), int(row[S_WYC0])
        self.c0, self.c1, self.a = int(row[S_C0]), int(row[S_C1]), int(row[S_A])
        self.d0, self.d1 = int(row[S_D0]), int(row[S_D1])
        self.layers = list(range(int(row[S_L0]), int(row[S_L1])))
        self.H = [int(LI[g, L_H]) for g in self.layers]


class _FeatureNet:
    """Layout and device parameters of a feature model (shared by trainer and scorer).

    Device arrays: ``theta``, ``T``, ``Wy`` (n_items, Hc), ``By`` float32; ``indptr`` (int32,
    all subnets' CSR pointers), ``indices`` int32, ``weights`` float32. ``H``: hidden size per
    layer of all subnets (``LI`` order).
    """

    def __init__(self, device: Device, params: dict):
        for key in ("SI", "LI", "indptr", "indices", "weights", "theta", "T", "Wy", "By"):
            if key not in params:
                raise ValueError(f"params lacks {key!r}")
        self.dev = device
        self.host = params
        self.SI = np.asarray(params["SI"], np.int64)
        self.LI = np.asarray(params["LI"], np.int64)
        self.H = [int(h) for h in self.LI[:, L_H]]
        indptr = np.asarray(params["indptr"])
        if len(params["indices"]) > INT_MAX:
            raise ValueError(f"{len(params['indices'])} feature bag entries: the CUDA backend "
                             f"indexes them with int32 (at most {INT_MAX})")
        self.n_items = int(params["Wy"].shape[0])
        self.Hc = int(params["Wy"].shape[1])
        self.sub = [_Subnet(self.SI, self.LI, s) for s in range(self.SI.shape[0])]
        self.S, self.G = len(self.sub), self.LI.shape[0]
        # host bag sizes per subnet: rows of the table gradient per step
        n1 = self.n_items + 1
        self.bag_len = [np.diff(indptr[sn.ipoff:sn.ipoff + n1]).astype(np.int64) for sn in self.sub]
        p = {k: device.to_device(params[k], np.float32) for k in ("theta", "T", "Wy", "By",
                                                                   "weights")}
        p["indptr"] = device.to_device(indptr, np.int32)
        p["indices"] = device.to_device(params["indices"], np.int32)
        self.p = p

    def th(self, arr, off, shape):
        """Row-major view ``shape`` of the flat device array ``arr`` from ``off``."""
        return arr[off:off + int(np.prod(shape))].reshape(shape)

    def indptr(self, sn):
        return self.p["indptr"][sn.ipoff:sn.ipoff + self.n_items + 1]

    def table(self, sn):
        """``(table, ld, col0)`` read by the subnet's input (None for raw values)."""
        if sn.tab == T_WY:
            return self.p["Wy"], self.Hc, sn.wy0
        if sn.tab == T_OWN:
            return self.th(self.p["T"], sn.toff, (sn.trows, sn.tcols)), sn.tcols, 0
        return None, 0, 0

    def to_host(self) -> dict:
        """The host parameter dict with ``theta``/``T``/``Wy``/``By`` copied from the device."""
        out = dict(self.host)
        for k in ("theta", "T", "Wy", "By"):
            out[k] = self.dev.to_host(self.p[k])
        return out

    def subnet_forward(self, s, items, R, reset, hprevs, m0, mks, buf):
        """Forward of subnet ``s`` for ``R`` rows: input (``x{s}``; none for one-hot input),
        every layer ``g``'s ``gx{g}``, ``gh{g}``, output ``y{g}`` (dropped out by ``mks[g]``),
        ``saved{g}``, ``hpe{g}`` in ``buf``. ``hprevs[g]`` (R, H) previous states (ignored on
        ``reset`` rows); ``m0``: input dropout mask ((R,) per-row factor for one-hot input,
        else (R, din)) or None."""
        d, p, sn = self.dev, self.p, self.sub[s]
        for n, g in enumerate(sn.layers):
            H = int(self.LI[g, L_H])
            gx = buf(f"gx{g}", (R, 3 * H))
            bx = self.th(p["theta"], int(self.LI[g, L_BX]), (3 * H,))
            if n == 0 and sn.kind == K_DIRECT:
                table = self.th(p["T"], sn.toff, (sn.trows, sn.tcols))
                d.launch("gather_rows", _grid(R * 3 * H), BLOCK,
                         [table, 3 * H, items, R, 3 * H, bx, m0, gx, 3 * H])
            else:
                if n == 0:
                    x = buf(f"x{s}", (R, sn.din))
                    table, ld, col0 = self.table(sn)
                    d.launch("bag_gather", _grid(R * sn.din), BLOCK,
                             [table, ld, col0, sn.din, self.indptr(sn), p["indices"],
                              p["weights"], items, R, m0, x])
                else:
                    x = buf(f"y{g - 1}", (R, sn.H[n - 1]))
                Wx = self.th(p["theta"], int(self.LI[g, L_WX]), (int(self.LI[g, L_IN]), 3 * H))
                d.gemm(x, Wx, out=gx)
                d.launch("add_bias", _grid(R * 3 * H), BLOCK, [gx, bx, R, 3 * H])
            gh = buf(f"gh{g}", (R, 3 * H))
            d.gemm(hprevs[g], self.th(p["theta"], int(self.LI[g, L_WH]), (H, 3 * H)), out=gh)
            d.launch("gru_cell_forward", _grid(R * H), BLOCK,
                     [gx, gh, self.th(p["theta"], int(self.LI[g, L_BHN]), (H,)), hprevs[g],
                      reset, mks[g], buf(f"y{g}", (R, H)), buf(f"saved{g}", (R, 4 * H)),
                      buf(f"hpe{g}", (R, H)), R, H])

    def combine(self, active, R, sum_mode, arange, buf):
        """``hc`` (R, Hc): concatenation (zero columns for inactive subnets) or the
        ``theta[a_s]``-weighted sum of the active subnets' last outputs."""
        d, Hc = self.dev, self.Hc
        hc = buf("hc", (R, Hc))
        if not sum_mode and not all(active):
            hc.fill(0)
        first = True
        for s, sn in enumerate(self.sub):
            if not active[s]:
                continue
            g, H = sn.layers[-1], sn.H[-1]
            y = buf(f"y{g}", (R, H))
            if sum_mode:
                d.launch("scale_add", _grid(R * Hc), BLOCK,
                         [hc, y, self.p["theta"][sn.a:sn.a + 1], R * Hc, 0 if first else 1])
            else:
                d.launch("gather_rows", _grid(R * H), BLOCK,
                         [y, H, arange, R, H, None, None, hc.reshape(-1)[sn.c0:], Hc])
            first = False
        return hc


class FeatureCudaTrainer(TrainerBase):
    """One FeatureSessionGRU training step on a :class:`Device` (see the module docstring).

    ``params``: host parameter dict of :func:`~gru_engine.feature_model.build_layout` (copied to
    the device); the other arguments are those of :class:`~.cuda_common.TrainerBase` plus
    ``sum_mode`` (``combine='sum'``). Hidden state: ``self.h[g]`` (batch_size, H_g) per layer of
    all subnets, rows compact as in ``batching.py``. ``active``/``train`` (bool per subnet) and
    ``freeze_out`` select the phase (:meth:`set_phase`).
    """

    def __init__(self, device: Device, params: dict, *, sum_mode: bool, **settings):
        super().__init__(device, **settings)
        d = device
        self.net = net = _FeatureNet(device, params)
        self.masks_per_step = net.S + net.G
        self.sum_mode = bool(sum_mode)
        self.acc = {k: d.zeros(net.p[k].shape) for k in ("theta", "T", "Wy", "By")}
        self.vel = {k: d.zeros(net.p[k].shape) for k in ("theta", "T", "Wy", "By")}
        self.gtheta = d.zeros(net.p["theta"].shape)
        self._init_state(net.H, max([net.n_items] + [sn.trows for sn in net.sub]))
        self.active = [True] * net.S
        self.train = [True] * net.S
        self.freeze_out = False
        self._col_masks = {}  # phase -> (Wy column mask of output rows, of input rows)
        self.set_phase(self.active, self.train)

    def set_phase(self, active, train, freeze_out: bool = False):
        """Which subnets run (``active``) and learn (``train``); ``freeze_out``: the output rows
        update only the trained subnets' ``Wy`` blocks (``residual``)."""
        net, d = self.net, self.dev
        self.active = [bool(a) for a in active]
        self.train = [bool(t) for t in train]
        self.freeze_out = bool(freeze_out)
        key = (tuple(self.active), tuple(self.train), self.freeze_out)
        self._phase = key
        if key in self._col_masks:
            return
        m_out, m_in = np.zeros(net.Hc, np.float32), np.zeros(net.Hc, np.float32)
        for s, sn in enumerate(net.sub):
            if self.sum_mode:
                m_out[:] = 1.0
                if sn.tab == T_WY:
                    m_in[:] = 1.0
                continue
            if self.active[s] and (self.train[s] or not self.freeze_out):
                m_out[sn.c0:sn.c1] = 1.0
            if sn.tab == T_WY:
                m_in[sn.c0:sn.c1] = 1.0
        self._col_masks[key] = (d.to_device(m_out), d.to_device(m_in))

    # ---- one step --------------------------------------------------------------------------
    def _draw_masks(self, R, masks):
        """Per subnet the input mask ((R,) for one-hot input, else (R, din); None without
        dropout) and per layer the output mask; fixed ``masks`` = ``(m0s, mks)`` win."""
        net = self.net
        m0s, mks = [None] * net.S, [None] * net.G
        if masks is not None:
            return [m[:R] if m is not None else None for m in masks[0]], \
                   [m[:R] if m is not None else None for m in masks[1]]
        for s, sn in enumerate(net.sub):
            if not self.active[s]:
                continue
            if self.p_embed > 0:
                m0s[s] = self._dropout_mask(f"m0_{s}", (R,) if sn.kind == K_DIRECT
                                            else (R, sn.din), self.p_embed, s)
            if self.p_hidden > 0:
                for g, H in zip(sn.layers, sn.H):
                    mks[g] = self._dropout_mask(f"mk{g}", (R, H), self.p_hidden, net.S + g)
        return m0s, mks

    def forward_backward(self, in_items, out_items, reset, sample, src=None, nnz=None,
                         masks=None, loss_slot=None):
        """Forward, loss and every gradient of one step (no update). Device inputs as
        :meth:`step`. Leaves in the buffers: ``gtheta`` (trained subnets' ranges), per trained
        own-table subnet ``GT{s}``/``iT{s}`` (``n_table[s]`` entry rows), ``G_wy``/``idx_wy``
        (``n_wy`` rows: the C output columns, then constrained-input entries), ``dBy`` (C,)
        over ``cols``; returns ``(n_table, n_wy)``."""
        d, net, p = self.dev, self.net, self.net.p
        R = int(in_items.shape[0])
        C = R + self.n_sample
        if nnz is None:
            nnz = self._count_entries(in_items)
        m0s, mks = self._draw_masks(R, masks)
        buf = self._buf
        # ---- forward ------------------------------------------------------------------
        hprevs = [self._prev_state(g, src, R) for g in range(net.G)]
        for s in range(net.S):
            if self.active[s]:
                net.subnet_forward(s, in_items, R, reset, hprevs, m0s[s], mks, buf)
                for g, H in zip(net.sub[s].layers, net.sub[s].H):
                    d.copy(self.h[g][:R], buf(f"y{g}", (R, H)))  # the carried state
        hc = net.combine(self.active, R, self.sum_mode, self.arange, buf)
        Hc = net.Hc
        trained = [s for s in range(net.S) if self.active[s] and self.train[s]]
        wy_in = [s for s in trained if net.sub[s].tab == T_WY]
        n_wy = C + sum(nnz[s] for s in wy_in)
        idx_wy = buf("idx_wy", (n_wy,), np.int32)
        _, G_wy, dhc = self._output_layer(hc, out_items, sample, idx_wy, n_wy, "dhc", loss_slot)
        # ---- backward -----------------------------------------------------------------
        n_table = [0] * net.S
        e_wy = C
        for s in trained:
            sn = net.sub[s]
            dx = self._subnet_backward(s, in_items, R, dhc, m0s[s], mks, buf)
            if sn.tab == T_NONE:
                continue
            if sn.kind == K_DIRECT:
                GT = buf(f"GT{s}", (R, sn.tcols))
                d.launch("gather_rows", _grid(R * sn.tcols), BLOCK,
                         [dx, sn.tcols, self.arange, R, sn.tcols, None, m0s[s], GT, sn.tcols])
                d.copy(buf(f"iT{s}", (R,), np.int32), in_items)
                n_table[s] = R
                continue
            n = nnz[s]
            offs = buf(f"offs{s}", (R + 1,), np.int32)
            d.launch("bag_offsets", 1, 1, [net.indptr(sn), in_items, R, offs])
            if sn.tab == T_WY:
                G, idx, ld, col0 = G_wy[e_wy:e_wy + n], idx_wy[e_wy:e_wy + n], Hc, sn.wy0
                e_wy += n
            else:
                G, idx = buf(f"GT{s}", (n, sn.tcols)), buf(f"iT{s}", (n,), np.int32)
                ld, col0 = sn.tcols, 0
                n_table[s] = n
            d.launch("bag_grad", _grid(R * ld), BLOCK,
                     [dx, sn.din, net.indptr(sn), p["indices"], p["weights"], in_items, R,
                      offs, col0, ld, G, idx])
        return n_table, n_wy

    def _count_entries(self, in_items):
        items = self.dev.to_host(in_items).astype(np.int64)
        return [int(bl[items].sum()) for bl in self.net.bag_len]

    def _subnet_backward(self, s, items, R, dhc, m0, mks, buf):
        """Gradients of subnet ``s`` into ``gtheta``; returns the gradient w.r.t. its
        (dropped-out, masked) input rows ``dx`` (R, din) or None (raw input)."""
        d, net, p = self.dev, self.net, self.net.p
        sn, LI, gt = net.sub[s], net.LI, self.gtheta
        gl, H = sn.layers[-1], sn.H[-1]
        dy = buf(f"dy{gl}", (R, H))
        if self.sum_mode:
            a = p["theta"][sn.a:sn.a + 1]
            d.launch("scale_add", _grid(R * H), BLOCK, [dy, dhc, a, R * H, 0])
            d.launch("dot_sum", 1, BLOCK, [dhc, buf(f"y{gl}", (R, H)), R * H, gt[sn.a:sn.a + 1]])
        else:
            d.launch("gather_rows", _grid(R * H), BLOCK,
                     [dhc.reshape(-1)[sn.c0:], net.Hc, self.arange, R, H, None, None, dy, H])
        dx = None
        for n in reversed(range(len(sn.layers))):
            g, H = sn.layers[n], sn.H[n]
            dgx = self._cell_backward(g, buf(f"dy{g}", (R, H)), buf(f"saved{g}", (R, 4 * H)),
                                      buf(f"hpe{g}", (R, H)), mks[g],
                                      net.th(gt, int(LI[g, L_WH]), (H, 3 * H)),
                                      net.th(gt, int(LI[g, L_BX]), (3 * H,)),
                                      net.th(gt, int(LI[g, L_BHN]), (H,)))
            if n == 0 and sn.kind == K_DIRECT:
                dx = dgx
                continue
            n_in = int(LI[g, L_IN])
            x = buf(f"y{g - 1}", (R, n_in)) if n > 0 else buf(f"x{s}", (R, n_in))
            Wx = net.th(p["theta"], int(LI[g, L_WX]), (n_in, 3 * H))
            d.gemm(x, dgx, out=net.th(gt, int(LI[g, L_WX]), (n_in, 3 * H)), trans_a=True)
            if n > 0:
                d.gemm(dgx, Wx, out=buf(f"dy{g - 1}", (R, n_in)), trans_b=True)
            elif sn.tab != T_NONE:
                dx = buf(f"dx{s}", (R, n_in))
                d.gemm(dgx, Wx, out=dx, trans_b=True)
                if m0 is not None:
                    d.launch("multiply_inplace", _grid(dx.size), BLOCK, [dx, m0, dx.size])
        return dx

    def step(self, in_items, out_items, reset, sample, src=None, nnz=None, masks=None,
             loss_slot=None):
        """One training step (forward, loss, gradients, Adagrad + momentum updates).

        in_items, out_items: (R,) int32 device arrays; reset: (R,) uint8; sample: (n_sample,)
        int32 shared negatives; src: (R,) int32 previous row of each row (None: the same row);
        nnz: per subnet the number of bag entries of ``in_items`` (host ints; counted from a
        host copy when None); masks: fixed dropout masks ``(m0s, mks)`` (tests). The step loss
        (sum over rows / batch_size) is added to ``loss_slot`` (default ``self.loss_sum``)."""
        R = self._step_rows(in_items, sample)
        d, net, p = self.dev, self.net, self.net.p
        n_table, n_wy = self.forward_backward(in_items, out_items, reset, sample, src, nnz,
                                              masks, loss_slot)
        C = R + self.n_sample
        for s, sn in enumerate(net.sub):
            if not (self.active[s] and self.train[s]):
                continue
            if sn.d1 > sn.d0:
                sl = slice(sn.d0, sn.d1)
                self._dense_update(p["theta"][sl], self.acc["theta"][sl], self.vel["theta"][sl],
                                   self.gtheta[sl])
            if sn.tab == T_OWN and n_table[s] > 0:
                shape = (sn.trows, sn.tcols)
                self._sparse_update(net.th(p["T"], sn.toff, shape),
                                    net.th(self.acc["T"], sn.toff, shape),
                                    net.th(self.vel["T"], sn.toff, shape),
                                    self._buf(f"GT{s}", (n_table[s], sn.tcols)),
                                    self._buf(f"iT{s}", (n_table[s],), np.int32), n_table[s],
                                    sn.tcols)
        idx_wy = self._buf("idx_wy", (n_wy,), np.int32)
        # output rows update the columns m_out, constrained-input rows m_in
        m_out, m_in = self._col_masks[self._phase]
        self._sparse_update(p["Wy"], self.acc["Wy"], self.vel["Wy"],
                            self._buf("G_wy", (n_wy, net.Hc)), idx_wy, n_wy, net.Hc,
                            col_masks=(C, m_out, m_in))
        self._sparse_update(p["By"], self.acc["By"], self.vel["By"], self._buf("dBy", (C,)),
                            idx_wy[:C], C, 1)
        if masks is None and (self.p_embed > 0 or self.p_hidden > 0):
            d.launch("counter_add", 1, 1, [self.step_counter, 1])



class FeatureEpochTrainer(EpochLoopBase):
    """:class:`FeatureCudaTrainer` behind the trainer interface of SessionGRU's epoch loop (as
    :class:`~.feature_cpu.FeatureTrainer`; schedule, sample store and loop of
    :class:`~.cuda_common.EpochLoopBase`), plus ``store`` and ``set_phase``. The number of bag entries
    of every step and subnet is counted on the host once per epoch.

    ``plan``: per-epoch ``(active, train, interleave, freeze_out)``
    (:func:`~gru_engine.feature_model.epoch_plan`); with ``interleave`` the trained subnet is
    ``global step % n_subnets`` (as the CPU backend). ``names``: subnet names for the log.
    """

    trainer_class = FeatureCudaTrainer

    def __init__(self, device: Device, params: dict, *, plan=None, names=None, **settings):
        super().__init__(device, params, **settings)
        self.global_step = 0
        self.plan, self.epoch = plan, 0
        S = self.trainer.net.S
        self.names = list(names) if names is not None else [str(s) for s in range(S)]
        self.interleave = False

    def set_phase(self, active, train, interleave: bool = False, freeze_out: bool = False):
        self.interleave = bool(interleave)
        self.trainer.set_phase(active, train, freeze_out)

    def _prepare_epoch(self, ins):
        """With a ``plan``, the epoch's phase is ``plan[epoch]``; counts the bag entries per
        step and subnet (host ints: they size the table-gradient launches)."""
        if self.plan is not None:
            self.set_phase(*self.plan[self.epoch])
            logger.info("epoch %d trains subnets %s", self.epoch + 1,
                        [n for n, t in zip(self.names, self.trainer.train) if t])
            self.epoch += 1
        ins64 = np.asarray(ins, np.int64)
        self._nnz = np.zeros((len(self._rows), self.trainer.net.S), np.int64)
        if len(self._rows):
            for s, bl in enumerate(self.trainer.net.bag_len):
                self._nnz[:, s] = np.add.reduceat(bl[ins64], self._starts[:-1])

    def fix_dropout_masks(self, m0s, mks):
        """Test hook: these masks in every step (``m0s`` per subnet: (batch,) for one-hot ID
        input, else (batch, din); ``mks`` per layer (batch, H))."""
        d = self.dev
        self._masks = ([None if m is None else d.to_device(m, np.float32) for m in m0s],
                       [None if m is None else d.to_device(m, np.float32) for m in mks])

    def _train_step(self, t: int, a: int, b: int, loss_slot):
        """Step t over schedule rows [a, b) (global step decides the interleaved subnet)."""
        tr = self.trainer
        S = tr.net.S
        if self.interleave:
            k = self.global_step % S
            tr.set_phase(tr.active, [s == k for s in range(S)], tr.freeze_out)
        tr.step(*self._step_inputs(a, b), nnz=[int(v) for v in self._nnz[t]], masks=self._masks,
                loss_slot=loss_slot)
        self.global_step += 1


class FeatureCudaScorer(ScorerBase):
    """Inference of a fitted feature model on the device (protocol of :class:`~.cuda_common.ScorerBase`:
    ``begin``, ``score`` -> (R, n_items) float32 host scores ``final_act([h_comb | 1] @ [Wy |
    By]^T)``, device-side ``rank`` and ``topk``). No dropout; every subnet runs. ``cache_on``:
    keep the device copy of ``params`` between scorers of that object while it holds the very
    same arrays (as :class:`~.cuda.CudaScorer`)."""

    def __init__(self, device: Device, params: dict, sum_mode: bool, final_act=(0, 0.0),
                 cache_on=None):
        key = (device.name, getattr(device, "device_id", None),
               tuple(id(params[k]) for k in sorted(params)))
        super().__init__(device, _cached_net(cache_on, params, key,
                                             lambda: _FeatureNet(device, params)), final_act)
        self.sum_mode = bool(sum_mode)
        self._arange = None

    def _forward_rows(self, rows_d, items_d, reset_d, R: int):
        """One click per row through every subnet (rows_d, items_d (R,) int32, reset_d (R,)
        uint8); writes the rows' new state into ``self.h``; returns h_comb (R, Hc)."""
        d, net = self.dev, self.net
        if self._arange is None or self._arange.shape[0] < R:
            self._arange = d.to_device(np.arange(max(R, 64), dtype=np.int32))
        hprevs = []
        for g, h in enumerate(self.h):
            H = h.shape[1]
            hp = self._buf(f"hprev{g}", (R, H))
            d.launch("gather_rows", _grid(R * H), BLOCK, [h, H, rows_d, R, H, None, None, hp, H])
            hprevs.append(hp)
        no_masks = [None] * net.G
        for s in range(net.S):
            net.subnet_forward(s, items_d, R, reset_d, hprevs, None, no_masks, self._buf)
        for g, h in enumerate(self.h):
            H = h.shape[1]
            d.launch("scatter_rows", _grid(R * H), BLOCK,
                     [self._buf(f"y{g}", (R, H)), rows_d, R, H, h])
        return net.combine([True] * net.S, R, self.sum_mode, self._arange, self._buf)
