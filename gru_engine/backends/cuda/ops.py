"""Launch helpers of the CUDA backend and the pieces of a training step that do not depend on the
network's input subnets: scratch buffers, dropout masks, the sampled output layer with the fused
loss, the GRU cell backward, dense and sparse Adagrad. Every call goes through
:class:`~gru_engine.backends.device.Device` (``launch``/``gemm``/``copy``), so the same code runs
on a GPU (CuPy) and in the CPU emulator.

The block size comes from :mod:`gru_engine.config` (the engine's tunables); the graph limit is
the only tunable of its own.
"""
from __future__ import annotations

import numpy as np

from ... import config
from ...params import LOSSES, Hyper
from ..device import Device

#: threads per block of the elementwise and per-row kernels (a multiple of 32, <= 1024)
BLOCK = config.CUDA_BLOCK
#: the most CUDA graphs one trainer keeps (``config.CUDA_MAX_GRAPHS``)
MAX_GRAPHS = config.CUDA_MAX_GRAPHS

INT_MAX = 2 ** 31 - 1  # an unclaimed row of the sparse updates' owner table


def grid(n: int) -> int:
    """Blocks of :data:`BLOCK` threads covering ``n`` elements (at least 1)."""
    return max(1, (int(n) + BLOCK - 1) // BLOCK)


def row_block(width: int) -> int:
    """Threads per block of a per-row kernel over ``width`` columns: warps, at most BLOCK."""
    return min(BLOCK, 32 * ((int(width) + 31) // 32))


class ScratchBuffers:
    """Named scratch buffers: one flat device allocation per name, grown on demand and viewed at
    the size asked for. ``generation`` counts allocations: a captured graph holds the buffers of
    its generation and is stale once it changes. Needs ``self.dev``."""

    def _init_scratch(self):
        self._flat = {}
        self.generation = 0

    def _buf(self, name, shape, dtype=np.float32):
        n = int(np.prod(shape))
        cur = self._flat.get(name)
        if cur is None or cur.size < n or cur.dtype != np.dtype(dtype):
            cur = self.dev.empty((max(n, 1),), dtype)
            self._flat[name] = cur
            self.generation += 1
        return cur[:n].reshape(shape)


class StepOps(ScratchBuffers):
    """Hyperparameters, optimiser kernels and the network-independent parts of a step.

    ``hyper``: :class:`gru_engine.params.Hyper`; ``item_support`` (n_items,) training events per
    item (the logQ correction of cross-entropy needs it). The subclass sets ``self.net`` (with
    ``p['Wy']``, ``p['By']``) and ``self.masks_per_step`` (dropout streams per step).
    """

    def __init__(self, device: Device, hyper: Hyper, item_support, seed: int):
        if not 0 <= int(hyper.loss) < len(LOSSES):
            raise ValueError(f"loss code must be in [0, {len(LOSSES)}), got {hyper.loss!r}")
        self.dev = d = device
        self.hyper = hyper
        self.loss_name = LOSSES[int(hyper.loss)]
        self.batch_size, self.n_sample = int(hyper.batch_size), int(hyper.n_sample)
        self.final_act = (int(hyper.final_act), float(hyper.final_act_param))
        self.lr, self.momentum = float(hyper.learning_rate), float(hyper.momentum)
        self.p_embed, self.p_hidden = float(hyper.dropout_p_embed), float(hyper.dropout_p_hidden)
        self.seed = int(seed) & 0xFFFFFFFF
        self._init_scratch()
        self.corr_item = None
        if self.loss_name == "cross-entropy" and hyper.logq > 0:
            if item_support is None:
                raise ValueError("logq > 0 needs item_support (training event count per item)")
            log_q = np.log(np.maximum(np.asarray(item_support, dtype=np.float64), 1.0))
            # in-batch columns use the raw support, sampled columns support^sample_alpha
            self.corr_item = (d.to_device(hyper.logq * log_q, np.float32),
                              d.to_device(hyper.logq * hyper.sample_alpha * log_q, np.float32))
        self.loss_sum = d.zeros((1,))
        self.arange = d.to_device(np.arange(self.batch_size + self.n_sample, dtype=np.int32))
        # dropout's step counter in device memory (a graph replay must not freeze it)
        self.step_counter = d.zeros((1,), np.uint32)
        # the output features' part of the output layer (.output_features), set by the subclass
        self.output_features = None

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
        self.dev.launch("dropout_mask", grid(m.size), BLOCK,
                        [m, m.size, p, self.seed, *self._mask_stream(offset)])
        return m

    def _prev_state(self, g: int, src, R: int):
        """(R, H_g) state of layer g before this step: ``h[g][:R]`` (src None) or the rows
        ``src`` (R,) int32 of ``h[g]`` gathered into ``h_prev[g]``."""
        if src is None:
            return self.h[g][:R]
        H = self.h[g].shape[1]
        hprev = self.h_prev[g][:R]
        self.dev.launch("gather_rows", grid(R * H), BLOCK,
                        [self.h[g], H, src, R, H, None, None, hprev, H])
        return hprev

    def _output_layer(self, h_last, out_items, sample, idx_wy, n_wy: int, dh_name: str,
                      loss_slot):
        """Sampled output layer, forward and backward. h_last (R, Hc) float32; columns
        ``cols = idx_wy[:C]`` = [out_items (R,) | sample (n_sample,)] written here; scores
        ``h_last @ Wy[cols].T + By[cols]`` -> :meth:`_loss` (step loss added to ``loss_slot``).
        Returns ``dBy`` (C,), ``G_wy`` (n_wy, Hc) with rows [:C] = dS^T h_last (the rest is the
        caller's), ``dh`` (R, Hc) = dS Wy[cols] in buffer ``dh_name``."""
        d, p = self.dev, self.net.p
        R, Hc = h_last.shape
        C = R + self.n_sample
        cols = idx_wy[:C]
        d.copy(cols[:R], out_items)
        d.copy(cols[R:], sample)
        wy_c, by_c = self._buf("wy_c", (C, Hc)), self._buf("by_c", (C,))
        d.launch("gather_rows", grid(C * Hc), BLOCK,
                 [p["Wy"], Hc, cols, C, Hc, None, None, wy_c, Hc])
        d.launch("gather_rows", grid(C), BLOCK, [p["By"], 1, cols, C, 1, None, None, by_c, 1])
        if self.output_features is not None:  # the columns' effective vectors and biases
            self.output_features.add_to_columns(cols, C, wy_c, by_c)
        S = self._buf("S", (R, C))
        d.gemm(h_last, wy_c, out=S, trans_b=True)
        d.launch("add_bias", grid(R * C), BLOCK, [S, by_c, R, C])
        dS = self._loss(S, out_items, sample, loss_slot)
        dBy = self._buf("dBy", (C,))
        d.launch("column_sum", grid(C), BLOCK, [dS, R, C, C, dBy])
        G_wy = self._buf("G_wy", (n_wy, Hc))
        d.gemm(dS, h_last, out=G_wy[:C], trans_a=True)
        dh = self._buf(dh_name, (R, Hc))
        d.gemm(dS, wy_c, out=dh)
        return dBy, G_wy, dh

    def _loss(self, S, out_items, sample, loss_slot):
        """Final activation and fused loss of the scores S (R, C) (row i's positive is column
        i); adds the step loss (sum over rows / batch_size) to ``loss_slot`` (default
        ``self.loss_sum``); returns dS (R, C), the gradient w.r.t. S."""
        d, hy = self.dev, self.hyper
        R, C = S.shape
        act, act_param = self.final_act
        S_loss = S
        if act != 0:
            S_loss = self._buf("S_act", (R, C))
            d.launch("final_act_forward", grid(R * C), BLOCK, [S, S_loss, R * C, act, act_param])
        dS = self._buf("dS", (R, C))
        row_loss = self._buf("row_loss", (R,))
        scale = 1.0 / self.batch_size
        loss_acc = self.loss_sum if loss_slot is None else loss_slot
        if self.loss_name == "cross-entropy":
            corr = None
            if self.corr_item is not None:
                corr = self._buf("corr", (C,))
                d.launch("gather_rows", grid(R), BLOCK,
                         [self.corr_item[0], 1, out_items, R, 1, None, None, corr, 1])
                if self.n_sample:
                    d.launch("gather_rows", grid(self.n_sample), BLOCK,
                             [self.corr_item[1], 1, sample, self.n_sample, 1, None, None,
                              corr[R:], 1])
            args = [S_loss, R, C, corr, None, scale, row_loss, loss_acc, dS]
        elif self.loss_name == "bpr-max":
            args = [S_loss, R, C, None, scale, float(hy.bpreg), float(hy.elu_param), row_loss,
                    loss_acc, dS]
        else:
            args = [S_loss, R, C, None, scale, row_loss, loss_acc, dS]
        d.launch("loss_" + self.loss_name.replace("-", "_"), R, BLOCK, args)
        if act != 0:
            d.launch("final_act_backward", grid(R * C), BLOCK, [S, dS, dS, R * C, act, act_param])
        return dS

    def _cell_backward(self, g: int, dh, saved, hpe, mask, dWh, dbx, dbhn, h_wh=None):
        """Backward of layer ``g``'s fused GRU cell for dh (R, H) (``saved`` (R, 4H), ``hpe``
        (R, H) and ``mask`` of its forward): writes dWh (H, 3H) = h_wh^T dgh (``h_wh``: the
        state Wh read, default hpe), dbx (3H,) and dbhn (H,); returns dgx (R, 3H) (buffer
        ``dgx{g}``), the gradient of x @ Wx + bx (``dgh{g}`` holds dgh)."""
        d = self.dev
        R, H = dh.shape
        dgx, dgh = self._buf(f"dgx{g}", (R, 3 * H)), self._buf(f"dgh{g}", (R, 3 * H))
        d.launch("gru_cell_backward", grid(R * H), BLOCK, [dh, saved, hpe, mask, dgx, dgh, R, H])
        d.gemm(hpe if h_wh is None else h_wh, dgh, out=dWh, trans_a=True)
        d.launch("column_sum", grid(3 * H), BLOCK, [dgx, R, 3 * H, 3 * H, dbx])
        d.launch("column_sum", grid(H), BLOCK, [dgh.reshape(-1)[2 * H:], R, 3 * H, H, dbhn])
        return dgx

    def _dense_update(self, prm, acc, vel, g):
        """Adagrad + momentum on a whole float32 array (prm, acc, vel, g of one shape)."""
        self.dev.launch("adagrad_dense", grid(prm.size), BLOCK,
                        [prm, g, acc, vel, prm.size, self.lr, self.momentum])

    def _sparse_update(self, prm, acc, vel, G, idx, n: int, W: int, col_masks=None):
        """Adagrad + momentum on the rows ``idx`` (n,) int32 of prm/acc/vel (rows, W) from the
        gradient rows G (n, W), duplicate indices summed first (``sparse_claim`` +
        ``sparse_combine``); untouched rows keep acc and velocity. ``col_masks``: ``(n_first,
        mask_first, mask_rest)`` with (W,) float32 masks: entries below n_first update only
        mask_first's nonzero columns, the others mask_rest's (``sparse_adagrad_masked``)."""
        d = self.dev
        blk = row_block(W)
        d.launch("sparse_claim", grid(n), BLOCK, [idx, n, self.owner])
        d.launch("sparse_combine", n, blk, [G, idx, n, W, self.owner])
        if col_masks is None:
            d.launch("sparse_adagrad", n, blk,
                     [prm, acc, vel, G, idx, n, W, self.owner, self.lr, self.momentum])
        else:
            d.launch("sparse_adagrad_masked", n, blk,
                     [prm, acc, vel, G, idx, n, W, self.owner, *col_masks, self.lr,
                      self.momentum])
