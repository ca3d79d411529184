"""The CUDA trainer of every network (see the package docstring): one training step over the
flat parameters, its CUDA-graph replay, and the epoch loop the estimators drive."""
from __future__ import annotations

import logging

import numpy as np

from ...batching import full_schedule
from ...network import K_DIRECT, T_NONE, T_OWN, T_WY
from ...params import Hyper
from ...sampling import SampleStore
from ..device import Device, GraphCaptureError
from .context import training_context
from .net import DeviceNet
from .output_features import OutputFeatures
from .ops import BLOCK, INT_MAX, MAX_GRAPHS, StepOps, grid

logger = logging.getLogger("gru_engine")


class Trainer(StepOps):
    """Session-parallel training of a network on a :class:`Device`, behind the interface the
    estimators' epoch loop drives (as the CPU trainer): :meth:`fill_store`, ``store``,
    :meth:`start_epoch`, :meth:`rows_left`, :meth:`run`, :meth:`host_params`, :meth:`set_phase`.

    ``params``: flat host parameters of :func:`gru_engine.network.build_layout` (copied to the
    device); ``hyper``: :class:`gru_engine.params.Hyper`; ``item_support`` (n_items,) training
    events per item (negative sampling, logQ); ``sum_mode``: ``combine='sum'``; ``plan``: per
    epoch ``(active, train, interleave, freeze_out)`` (:func:`gru_engine.network.epoch_plan`;
    None: every subnet every epoch); ``names``: subnet names for the log; ``seed``: dropout
    masks (drawn on the device by ``dropout_mask``, so a fit with dropout follows another random
    stream than on the CPU); ``use_graphs``: replay full steps from captured CUDA graphs (None:
    on for a CupyDevice); ``optimizer_state``: optional ``{'acc': {...}, 'vel': {...}}`` host
    arrays shaped like ``theta``/``T``/``Wy``/``By`` (and the extensions' tables, as
    :meth:`optimizer_state` returns) to continue from (warm start);
    ``context``: the CPU context record of a context-aware network (:func:`gru_engine.context.
    fit_context`; its tables and events' rows go to a :class:`~.context.DeviceContext`).

    Schedule (:func:`gru_engine.batching.full_schedule`) and negative samples
    (:class:`~gru_engine.sampling.SampleStore`, drawn with Numba's generator) are the CPU
    trainer's, consumed in the same order; the epoch's schedule is copied to the device once,
    the store once per draw; step losses accumulate on the device and are read once per
    :meth:`run`. Hidden state: ``h[g]`` (batch_size, H_g) per layer of all subnets, rows compact
    as in ``batching.py``.
    """

    def __init__(self, device: Device, params: dict, hyper: Hyper, item_support, *,
                 sum_mode: bool, plan=None, names=None, seed: int = 0, use_graphs=None,
                 optimizer_state=None, context=None):
        super().__init__(device, hyper, item_support, seed)
        d, B = device, self.batch_size
        self.net = net = DeviceNet(device, params)
        self.sum_mode = bool(sum_mode)
        self.masks_per_step = net.S + net.G
        self.acc = {k: d.zeros(net.p[k].shape) for k in ("theta", "T", "Wy", "By")}
        self.vel = {k: d.zeros(net.p[k].shape) for k in ("theta", "T", "Wy", "By")}
        self.gtheta = d.zeros(net.p["theta"].shape)
        # output features (``Fy`` in params): their rows, one spare row per sampled column
        self.output_features = (OutputFeatures(d, params, B + self.n_sample, train=True)
                                if "Fy" in params else None)
        of_rows = [] if self.output_features is None else [self.output_features.F.shape[0]]
        self.owner = d.full((max([net.n_items] + of_rows + [max(sn.trows, sn.spare_row + 1)
                                                             for sn in net.sub]),),
                            INT_MAX, np.int32)
        self.h = [d.zeros((B, H)) for H in net.H]
        self.h_prev = [d.zeros((B, H)) for H in net.H]
        self._zeros = d.zeros((B, net.Hc))
        # the table-entry buffers at their largest, so that no later step reallocates them
        self._cap = [B * sn.max_bag if sn.counted else B for sn in net.sub]
        wy_cap = B + self.n_sample + sum(c for c, sn in zip(self._cap, net.sub) if sn.tab == T_WY)
        self._buf("G_wy", (wy_cap, net.Hc))
        self._buf("idx_wy", (wy_cap,), np.int32)
        if self.output_features is not None:
            of_cap = (B + self.n_sample) * self.output_features.max_bag
            self._buf("G_of", (of_cap, self.output_features.W))
            self._buf("idx_of", (of_cap,), np.int32)
        self._spare = {}  # counted own table -> (cap,) int32 device array of its spare row
        for s, sn in enumerate(net.sub):
            if sn.tab == T_OWN and sn.counted:
                self._buf(f"GT{s}", (self._cap[s], sn.tcols))
                self._buf(f"iT{s}", (self._cap[s],), np.int32)
                self._spare[s] = d.full((self._cap[s],), sn.spare_row, np.int32)
        self._col_masks = {}  # phase -> (Wy column mask of output rows, of input rows) or None
        self.set_phase([True] * net.S, [True] * net.S)
        self.use_graphs = device.name == "cuda" if use_graphs is None else bool(use_graphs)
        self._graphs, self._warm, self._stage = {}, set(), None
        self.n_steps = 0
        self.extra_gates = None  # (R, 3 H0) layer-0 gates added in subnet 0 (user_trainer.py)
        # epoch loop
        self.store = SampleStore(np.asarray(item_support), hyper.sample_alpha, self.n_sample,
                                 hyper.sample_store_size)
        self.min_rows = 2 if self.n_sample == 0 else 1
        self.plan, self.epoch, self.global_step = plan, 0, 0
        self.names = list(names) if names is not None else [str(s) for s in range(net.S)]
        self._store_dev = None
        self._no_sample = d.zeros((0,), np.int32)
        self._masks = None
        self._rows = np.zeros(0, np.int64)
        self._step = 0
        self.context = None if context is None else training_context(device, context, self._buf)
        # the training events' context rows (an augmented epoch selects its events' rows)
        self.event_context = None if context is None else self.context.all_events
        if optimizer_state is not None:
            self.load_state(optimizer_state=optimizer_state)

    # ---- phase -------------------------------------------------------------------------------
    def set_phase(self, active, train, interleave: bool = False, freeze_out: bool = False):
        """Which subnets run (``active``) and learn (``train``) from now on; ``interleave``:
        one trained subnet per step (``global step % n_subnets``); ``freeze_out``: the output
        rows update only the trained subnets' ``Wy`` blocks (``residual``)."""
        net = self.net
        self.interleave = bool(interleave)
        self.active = [bool(a) for a in active]
        self.train = [bool(t) for t in train]
        self.freeze_out = bool(freeze_out)
        self._phase = key = (tuple(self.active), tuple(self.train), self.freeze_out)
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
        has_in = any(sn.tab == T_WY for sn in net.sub)
        if m_out.all() and (m_in.all() or not has_in):
            self._col_masks[key] = None  # every column updates: the unmasked kernel
        else:
            self._col_masks[key] = (self.dev.to_device(m_out), self.dev.to_device(m_in))

    # ---- one step ----------------------------------------------------------------------------
    def _draw_masks(self, R, masks):
        """Per subnet the input mask ((R,) for one-hot input, else (R, din); None without
        dropout) and per layer the output mask; fixed ``masks`` = ``(m0s, mks)`` win."""
        net = self.net
        if masks is not None:
            return ([m[:R] if m is not None else None for m in masks[0]],
                    [m[:R] if m is not None else None for m in masks[1]])
        m0s, mks = [None] * net.S, [None] * net.G
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

    def count_entries(self, items_host) -> list:
        """Table entries per subnet of a step with these (R,) input items (host ints)."""
        R = len(items_host)
        return [int(sn.bag_len[items_host].sum()) if sn.counted else R for sn in self.net.sub]

    def forward_backward(self, in_items, out_items, reset, sample, src=None, nnz=None,
                         masks=None, loss_slot=None):
        """Forward, loss and every gradient of one step (no update); inputs as :meth:`step`.
        Leaves ``gtheta`` (trained subnets' ranges), ``table_rows`` (trained own-table subnet
        -> ``(G, idx, n)`` device gradient rows and their table rows, duplicates not summed),
        the buffers ``G_wy``/``idx_wy`` (``n_wy`` rows: the C output columns, then the
        constrained-input entries) and ``dBy`` (C,) over the columns; returns ``n_wy``."""
        d, net = self.dev, self.net
        R = int(in_items.shape[0])
        C = R + self.n_sample
        if nnz is None:
            nnz = self.count_entries(d.to_host(in_items).astype(np.int64))
        m0s, mks = self._draw_masks(R, masks)
        buf = self._buf
        hprevs = [self._prev_state(g, src, R) for g in range(net.G)]
        ctx = self.context
        if ctx is not None:
            ctx.zero_grads()

        def carry(g, y):
            d.copy(self.h[g][:R], y)  # the dropped-out output is the carried state

        for s in range(net.S):
            if self.active[s]:
                net.subnet_forward(s, in_items, R, reset, hprevs, m0s[s], mks, buf, carry,
                                   self.extra_gates if s == 0 else None, ctx)
        hc = net.combine(self.active, R, self.sum_mode, self.arange, buf, self._zeros[:R])
        if ctx is not None:
            hc = ctx.output(hc, R)
        trained = [s for s in range(net.S) if self.active[s] and self.train[s]]
        n_wy = C + sum(nnz[s] for s in trained if net.sub[s].tab == T_WY)
        idx_wy = buf("idx_wy", (n_wy,), np.int32)
        dBy, G_wy, dhc = self._output_layer(hc, out_items, sample, idx_wy, n_wy, "dhc",
                                            loss_slot)
        self.n_of = 0
        if self.output_features is not None:  # before any input gradient joins G_wy's rows
            of = self.output_features
            self.n_of = of.gradient_rows(idx_wy[:C], C, G_wy, dBy,
                                         buf("G_of", (C * of.max_bag, of.W)),
                                         buf("idx_of", (C * of.max_bag,), np.int32))
        if ctx is not None:
            ctx.output_backward(dhc, R)
        self.table_rows, e_wy = {}, C
        for s in trained:
            sn = net.sub[s]
            rows = G_wy[e_wy:e_wy + nnz[s]] if sn.tab == T_WY else None
            self._subnet_backward(s, in_items, R, dhc, m0s[s], mks, rows)
            if sn.tab == T_NONE:
                continue
            own = self._table_grad(s, in_items, R, nnz[s], G_wy, idx_wy, e_wy, m0s[s])
            if own is not None:
                self.table_rows[s] = own
            if sn.tab == T_WY:
                e_wy += nnz[s]
        return n_wy

    def _subnet_backward(self, s, items, R, dhc, m0, mks, wy_rows):
        """Gradients of subnet ``s`` into ``gtheta`` and the gradient ``dx{s}`` (R, din) of its
        (dropped-out) input rows; with ``direct_grad`` into ``T_WY`` that gradient is written
        straight into ``wy_rows`` (its rows of ``G_wy``)."""
        d, net, buf = self.dev, self.net, self._buf
        sn, gt = net.sub[s], self.gtheta
        ctx = self.context if s == 0 else None  # the input context enters subnet 0
        gl, H = sn.layers[-1], sn.H[-1]
        if net.single:
            dy = dhc
        else:
            dy = buf(f"dy{gl}", (R, H))
            if self.sum_mode:
                a = net.p["theta"][sn.a:sn.a + 1]
                d.launch("scale_add", grid(R * H), BLOCK, [dy, dhc, a, R * H, 0])
                d.launch("dot_sum", 1, BLOCK, [dhc, buf(f"y{gl}", (R, H)), R * H, gt[sn.a:sn.a + 1]])
            else:
                d.launch("gather_rows", grid(R * H), BLOCK,
                         [dhc.reshape(-1)[sn.c0:], net.Hc, self.arange, R, H, None, None, dy, H])
        for n in reversed(range(len(sn.layers))):
            g, H = sn.layers[n], sn.H[n]
            gWx, gbx, gWh, gbhn = net.layer(gt, g)
            hpe = buf(f"hpe{g}", (R, H))
            h_wh = ctx.transition_state(hpe, R) if n == 0 and ctx is not None else hpe
            dgx = self._cell_backward(g, dy, buf(f"saved{g}", (R, 4 * H)), hpe, mks[g], gWh, gbx,
                                      gbhn, h_wh)
            if n == 0 and ctx is not None:
                Wh = net.layer(net.p["theta"], g)[2]
                ctx.transition_backward(buf(f"dgh{g}", (R, 3 * H)), Wh, hpe, R)
                ctx.input_backward(dgx, R, gates=True)
            if n == 0 and sn.kind == K_DIRECT:
                if ctx is not None:  # the gate gradient is the (modulated) input's
                    ctx.input_backward(dgx, R, gates=False)
                return
            n_in = int(gWx.shape[0])
            x = buf(f"y{g - 1}", (R, n_in)) if n > 0 else buf(f"x{s}", (R, n_in))
            Wx = net.layer(net.p["theta"], g)[0]
            d.gemm(x, dgx, out=gWx, trans_a=True)
            if n > 0:
                dy = buf(f"dy{g - 1}", (R, n_in))
                d.gemm(dgx, Wx, out=dy, trans_b=True)
            elif sn.tab != T_NONE:
                dx = wy_rows if sn.direct_grad and sn.tab == T_WY else buf(f"dx{s}", (R, n_in))
                d.gemm(dgx, Wx, out=dx, trans_b=True)
                if ctx is not None:
                    ctx.input_backward(dx, R, gates=False)
                if m0 is not None:
                    d.launch("multiply_inplace", grid(dx.size), BLOCK, [dx, m0, dx.size])

    def _table_grad(self, s, items, R, n, G_wy, idx_wy, e_wy, m0):
        """Table-gradient rows of subnet ``s``: written into ``G_wy``/``idx_wy`` from row
        ``e_wy`` (T_WY; returns None), or returned as ``(G (n, tcols), idx (n,) int32, n)`` for
        its own table (T_OWN): the layer-0 gate gradients of one-hot input (times the per-row
        dropout factor), the input gradient of an identity bag (indices: the step's items), or
        one row per bag entry (``bag_offsets`` + ``bag_grad``). ``n < 0`` (captured steps):
        the entry count is the table's capacity and the rows past the step's entries index the
        spare row (duplicates of one row, summed into the first, which updates only the spare
        row), so that one graph serves every entry count with the same bits."""
        d, net, buf = self.dev, self.net, self._buf
        sn = net.sub[s]
        if sn.kind == K_DIRECT:
            G = buf(f"dgx{sn.layers[0]}", (R, sn.tcols))
            if m0 is not None:
                GT = buf(f"GT{s}", (R, sn.tcols))
                d.launch("gather_rows", grid(R * sn.tcols), BLOCK,
                         [G, sn.tcols, self.arange, R, sn.tcols, None, m0, GT, sn.tcols])
                G = GT
            return G, items, R
        if sn.direct_grad:
            if sn.tab == T_WY:  # the rows themselves were written by _subnet_backward
                d.copy(idx_wy[e_wy:e_wy + R], items)
                return None
            return buf(f"dx{s}", (R, sn.din)), items, R
        offs = buf(f"offs{s}", (R + 1,), np.int32)
        d.launch("bag_offsets", 1, 1, [net.indptr(sn), items, R, offs])
        if sn.tab == T_WY:
            G, idx, ld, col0 = G_wy[e_wy:e_wy + n], idx_wy[e_wy:e_wy + n], net.Hc, sn.wy0
        else:
            if n < 0:  # padded to capacity: the entries past the step's update the spare row
                n = self._cap[s]
                d.copy(buf(f"iT{s}", (n,), np.int32), self._spare[s])
            G, idx = buf(f"GT{s}", (n, sn.tcols)), buf(f"iT{s}", (n,), np.int32)
            ld, col0 = sn.tcols, 0
        d.launch("bag_grad", grid(R * ld), BLOCK,
                 [buf(f"dx{s}", (R, sn.din)), sn.din, net.indptr(sn), net.p["indices"],
                  net.p["weights"], items, R, offs, col0, ld, G, idx])
        return (G, idx, n) if sn.tab == T_OWN else None

    def _kernels(self, in_items, out_items, reset, sample, src, nnz, masks, loss_slot):
        """The kernels and GEMMs of one step (arguments as :meth:`step`); also what a graph
        captures."""
        d, net, p = self.dev, self.net, self.net.p
        R = int(in_items.shape[0])
        C = R + self.n_sample
        n_wy = self.forward_backward(in_items, out_items, reset, sample, src, nnz, masks,
                                     loss_slot)
        for s, sn in enumerate(net.sub):
            if not (self.active[s] and self.train[s]):
                continue
            if sn.d1 > sn.d0:
                sl = slice(sn.d0, sn.d1)
                self._dense_update(p["theta"][sl], self.acc["theta"][sl], self.vel["theta"][sl],
                                   self.gtheta[sl])
            if s in self.table_rows and self.table_rows[s][2] > 0:
                G, idx, n = self.table_rows[s]
                tab = [net.table(sn, a)[0] for a in (p["T"], self.acc["T"], self.vel["T"])]
                self._sparse_update(*tab, G, idx, n, sn.tcols)
        idx_wy = self._buf("idx_wy", (n_wy,), np.int32)
        col_masks = self._col_masks[self._phase]
        self._sparse_update(p["Wy"], self.acc["Wy"], self.vel["Wy"],
                            self._buf("G_wy", (n_wy, net.Hc)), idx_wy, n_wy, net.Hc,
                            col_masks=None if col_masks is None else (C, *col_masks))
        self._sparse_update(p["By"], self.acc["By"], self.vel["By"], self._buf("dBy", (C,)),
                            idx_wy[:C], C, 1)
        if self.output_features is not None:
            of = self.output_features
            of.update(self._sparse_update, self._buf("G_of", (self.n_of, of.W)),
                      self._buf("idx_of", (self.n_of,), np.int32), self.n_of,
                      of.column_mask(self._phase, None if col_masks is None else col_masks[0]))
        if self.context is not None:
            self.context.update(self.lr, self.momentum)
        if self.p_embed > 0 or self.p_hidden > 0:
            d.launch("counter_add", 1, 1, [self.step_counter, 1])

    def step(self, in_items, out_items, reset, sample, src=None, nnz=None, masks=None,
             loss_slot=None):
        """One training step (forward, loss, gradients, Adagrad + momentum); nothing is
        synchronised with the host (unless ``nnz`` must be counted).

        in_items, out_items: (R,) int32 device arrays (input / target item per row); reset:
        (R,) uint8, 1 where the row's session starts; sample: (n_sample,) int32 shared
        negatives; src: (R,) int32 row of each row in the previous step's state (None: the same
        row); nnz: per subnet the table entries of ``in_items`` (host ints, as
        :meth:`count_entries`; counted from a host copy when None); masks: fixed dropout masks
        ``(m0s, mks)`` (tests). The step loss (sum over rows / batch_size) is added to
        ``loss_slot`` (a 1-element float32 device array; default ``self.loss_sum``).

        With ``use_graphs`` a full step (R == batch_size, ``src`` given, no fixed masks) is a
        replay of a CUDA graph captured for its phase on the phase's second full step (the
        first runs directly and sizes the scratch buffers); its own-table updates run over the
        tables' capacities (padding entries update a spare row), so that one graph serves any
        bag sizes. Every other step runs kernel by kernel with the exact entry counts; both
        give the same bits.
        """
        R = self._step_rows(in_items, sample)
        if nnz is None and any(sn.counted for sn in self.net.sub):
            nnz = self.count_entries(self.dev.to_host(in_items).astype(np.int64))
        elif nnz is None:
            nnz = [R] * self.net.S
        if self.use_graphs and R == self.batch_size and src is not None and masks is None:
            # own-table entries padded to capacity (-1): the graph does not depend on them
            nnz = [-1 if s in self._spare else n for s, n in enumerate(nnz)]
            key = (self._phase, tuple(n for n, sn in zip(nnz, self.net.sub) if sn.counted))
            if self._graph_step(key, in_items, out_items, reset, sample, src, nnz, loss_slot):
                self.n_steps += 1
                return
        self._kernels(in_items, out_items, reset, sample, src, nnz, masks, loss_slot)
        self.n_steps += 1

    # ---- CUDA graphs -------------------------------------------------------------------------
    def _graph_step(self, key, in_items, out_items, reset, sample, src, nnz, loss_slot) -> bool:
        """Replay the graph of ``key`` (capturing it on the key's second full step); False when
        the step must run directly. Host calls of a replay: the step's inputs copied into the
        staging buffers (4, +1 with negative samples), ONE graph launch, one ``add_bias``
        adding the staged step loss into ``loss_slot``. Per-step values never reach a captured
        kernel as a scalar: the dropout step index is a counter in device memory, R and the
        entry counts are part of the key, the inputs come through the staging buffers."""
        d = self.dev
        entry = self._graphs.get(key)
        if entry is not None and entry[1] != self.generation:
            self._graphs.clear()  # a scratch buffer was reallocated since: stale graphs
            entry = None
        if entry is None:
            if key not in self._warm or len(self._graphs) >= MAX_GRAPHS:
                self._warm.add(key)
                return False
            try:
                entry = self._capture(key, nnz)
            except GraphCaptureError as exc:
                logger.warning("CUDA graph capture of the training step failed (%s); training "
                               "continues kernel by kernel", exc)
                self.use_graphs = False
                return False
        st = self._stage
        d.copy(st["in"], in_items)
        d.copy(st["out"], out_items)
        d.copy(st["reset"], reset)
        d.copy(st["src"], src)
        if self.n_sample:
            d.copy(st["sample"], sample)
        entry[0].launch()
        d.launch("add_bias", 1, BLOCK, [self.loss_sum if loss_slot is None else loss_slot,
                                        st["loss"], 1, 1])
        return True

    def _capture(self, key, nnz):
        """Capture one full step reading the staging buffers (allocated on first use)."""
        d, B = self.dev, self.batch_size
        if self._stage is None:
            self._stage = {"in": d.zeros((B,), np.int32), "out": d.zeros((B,), np.int32),
                           "reset": d.zeros((B,), np.uint8), "src": d.zeros((B,), np.int32),
                           "sample": d.zeros((self.n_sample,), np.int32), "loss": d.zeros((1,)),
                           "zero": d.zeros((1,))}
        st = self._stage
        d.copy(st["loss"], st["zero"])  # every call the capture makes has run once before

        def body():
            d.copy(st["loss"], st["zero"])
            self._kernels(st["in"], st["out"], st["reset"], st["sample"], st["src"], nnz, None,
                       st["loss"])

        gen = self.generation
        graph = d.capture(body)
        if self.generation != gen:
            raise GraphCaptureError("a scratch buffer was allocated inside the capture")
        self._graphs[key] = (graph, self.generation)
        return self._graphs[key]

    # ---- the epoch loop ----------------------------------------------------------------------
    def fill_store(self):
        """Draw the negative-sample store (seed Numba's generator first)."""
        self.store.fill()
        self._store_dev = None

    def _sample_block(self):
        """(n_sample,) int32 device view of the store's next block (redrawn when used up)."""
        if self.n_sample == 0:
            return self._no_sample
        start, redrawn = self.store.take_block()
        if redrawn or self._store_dev is None:
            self._store_dev = self.dev.to_device(self.store.samples, np.int32)
        return self._store_dev[start:start + self.n_sample]

    def start_epoch(self, items, order, offsets):
        """items: (n_events,) int32; order: (n_sessions,) int64 visiting order; offsets: CSR.
        With a ``plan`` the epoch's phase is ``plan[epoch]``; the table entries of every step
        and counted subnet are counted here (host ints: they size the table-gradient updates)."""
        rows, ins, tgts, rsts, srcs = full_schedule(items, order, offsets, self.batch_size,
                                                    self.min_rows)
        d, net = self.dev, self.net
        self._rows = rows
        self._starts = np.concatenate([[0], np.cumsum(rows)])
        if self.plan is not None:
            self.set_phase(*self.plan[self.epoch])
            logger.info("epoch %d trains subnets %s", self.epoch + 1,
                        [n for n, t in zip(self.names, self.train) if t])
            self.epoch += 1
        ins64 = np.asarray(ins, np.int64)
        self._nnz = np.repeat(rows[:, None], net.S, axis=1).astype(np.int64)
        if len(rows):
            for s, sn in enumerate(net.sub):
                if sn.counted:
                    self._nnz[:, s] = np.add.reduceat(sn.bag_len[ins64], self._starts[:-1])
        self._ins, self._tgts = d.to_device(ins, np.int32), d.to_device(tgts, np.int32)
        self._rsts = d.to_device(rsts.astype(np.uint8))
        self._srcs = d.to_device(srcs, np.int32)
        self._step = 0
        for h in self.h:
            h.fill(0)
        if self.context is not None:  # the input event of every row (its target: the next)
            self.context.start_epoch(full_schedule(np.arange(len(items), dtype=np.int32), order,
                                                   offsets, self.batch_size, self.min_rows)[1])

    @property
    def follows_events(self) -> bool:
        """Whether the network reads per-event data besides the items (context rows): an
        augmented epoch then names its events (:meth:`select_events`)."""
        return self.context is not None

    def select_events(self, rows) -> None:
        """The coming epoch trains on the training events ``rows`` ((n,) int, in their epoch
        order: the kept events of augmented sessions); their context rows go with them."""
        self.context.select_events(rows)

    def rows_left(self) -> bool:
        return self._step < len(self._rows)

    def run(self, max_steps: int = -1):
        """Up to ``max_steps`` steps (-1: to the end of the epoch); one host sync at the end.
        Returns ``(sum of step_loss * rows, events, finite)``."""
        t0 = self._step
        t1 = len(self._rows) if max_steps < 0 else min(len(self._rows), t0 + int(max_steps))
        losses = self.dev.zeros((max(t1 - t0, 1),))
        S = self.net.S
        for t in range(t0, t1):
            a, b = int(self._starts[t]), int(self._starts[t + 1])
            if self.interleave:
                k = self.global_step % S
                self.set_phase(self.active, [s == k for s in range(S)], True, self.freeze_out)
            if self.context is not None:
                self.context.stage(a, b)
            self.step(self._ins[a:b], self._tgts[a:b], self._rsts[a:b], self._sample_block(),
                      self._srcs[a:b], nnz=[int(v) for v in self._nnz[t]], masks=self._masks,
                      loss_slot=losses[t - t0:t - t0 + 1])
            self.global_step += 1
        self._step = t1
        step_loss = self.dev.to_host(losses)[:t1 - t0].astype(np.float64)
        rows = self._rows[t0:t1]
        finite = bool(np.isfinite(step_loss).all())
        return float(step_loss @ rows), int(rows.sum()), finite

    def host_params(self) -> dict:
        """The trained parameters copied to the host: the flat dict given, with ``theta``,
        ``T``, ``Wy``, ``By`` (float32) from the device (copies: writing into them changes
        nothing on the device; see :meth:`load_state`), ``Fy``, ``Fb`` with output
        features, and a context-aware network's context tables."""
        out = self.net.to_host()
        if self.output_features is not None:
            out.update(self.output_features.to_host())
        if self.context is not None:
            out.update(self.context.host_tables())
        return out

    def _extensions(self) -> list:
        """The trained extensions with their own optimiser state (context tables, output
        feature rows)."""
        return [e for e in (self.context, self.output_features) if e is not None]

    def optimizer_state(self) -> dict:
        """``{'acc': {'theta', 'T', 'Wy', 'By'}, 'vel': {...}}``: host copies of the Adagrad
        accumulators and momentum velocities (float32, shaped like the parameters); with
        context and output features also their tables' (keys as the CPU trainer's)."""
        d, net = self.dev, self.net
        out = {"acc": {k: d.to_host(net.host_view(v, k)) for k, v in self.acc.items()},
               "vel": {k: d.to_host(net.host_view(v, k)) for k, v in self.vel.items()}}
        for ext in self._extensions():
            for kind, group in ext.optimizer_state().items():
                out[kind].update(group)
        return out

    def load_state(self, params=None, optimizer_state=None):
        """Copy host ``params`` (``theta``/``T``/``Wy``/``By``, the extensions' tables) and/or
        an ``optimizer_state`` (as :meth:`optimizer_state` returns; extension tables it lacks
        keep their state) onto the device (warm start, checkpoints)."""
        d, net = self.dev, self.net
        for ext in self._extensions():
            ext.load_state(params, optimizer_state)
        for key in ("theta", "T", "Wy", "By"):
            shape = net.host_view(net.p[key], key).shape
            pairs = []
            if params is not None:
                pairs.append((net.p[key], params[key]))
            if optimizer_state is not None:
                pairs += [(self.acc[key], optimizer_state["acc"][key]),
                          (self.vel[key], optimizer_state["vel"][key])]
            for dst, src in pairs:
                d.copy(net.host_view(dst, key),
                       d.to_device(np.reshape(np.asarray(src, np.float32), shape)))

    def training_state(self) -> dict:
        """Host arrays that, with the parameters, the optimiser state and the random
        generators, let training continue exactly (checkpoints): the negative-sample store and
        the counters (store position, global step, the strategy's epoch, dropout step)."""
        return {"store": self.store.samples.copy(),
                "counters": np.array([self.store.pos, self.global_step, self.epoch,
                                      int(self.dev.to_host(self.step_counter)[0])], np.int64)}

    def restore_training_state(self, state: dict) -> None:
        """Inverse of :meth:`training_state` (after :meth:`fill_store`)."""
        self.store.samples[...] = state["store"]
        self._store_dev = None
        pos, self.global_step, self.epoch, counter = (int(x) for x in state["counters"])
        self.store.pos = pos
        self.dev.copy(self.step_counter, self.dev.to_device(np.array([counter], np.uint32)))

    def fix_dropout_masks(self, m0s, mks):
        """Test hook: these masks in every step (``m0s`` per subnet: (batch,) for one-hot ID
        input, else (batch, din); ``mks`` per layer (batch, H)); a (batch, 1) or (batch, k)
        one-hot mask is read as its first column (the CPU draws one factor per row)."""
        d, net = self.dev, self.net
        m0 = []
        for m, sn in zip(m0s, net.sub):
            if m is not None:
                m = np.asarray(m, np.float32)
                m = (m.reshape(len(m), -1)[:, 0] if sn.kind == K_DIRECT
                     else m.reshape(len(m), sn.din))
                m = d.to_device(m, np.float32)
            m0.append(m)
        self._masks = (m0, [None if m is None else d.to_device(m, np.float32) for m in mks])
