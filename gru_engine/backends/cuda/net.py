"""A network of :mod:`gru_engine.network` on a CUDA device: its layout as host ints, its flat
parameters as device arrays, and the forward pieces the trainer and the scorer share (one
subnet's input and GRU layers, the combine step).

Input of a subnet, by kind (``SI[s, S_KIND]``) and bag:

* one-hot ID input (``K_DIRECT``): the item's table row is layer 0's gate pre-activation:
  ``gather_rows`` of the row with ``bx`` and a per-row dropout factor (no GEMM);
* an ID subnet's identity bag (embedding or constrained ``Wy`` block): ``gather_rows`` of the
  item's table row (+ ``multiply_inplace`` by the dropout mask), then the GEMM with ``Wx``;
* any other bag (categorical codes, tokens, raw values, new items' empty ID bags):
  ``bag_gather`` over the item's CSR bag with the mask fused, then the GEMM.

Layer g's weights are views of the flat ``theta`` at the ``LI`` offsets: ``Wx`` (in, 3H), ``bx``
(3H,), ``Wh`` (H, 3H), ``bhn`` (H,), gates [r | z | n].
"""
from __future__ import annotations

import numpy as np

from ...network import (K_BAG, K_DIRECT, L_BHN, L_BX, L_H, L_IN, L_WH, L_WX, PARAM_KEYS, S_A,
                        S_C0, S_C1, S_D0, S_D1, S_IN, S_IPOFF, S_KIND, S_L0, S_L1, S_TAB,
                        S_TCOLS, S_TOFF, S_TROWS, S_WYC0, T_NONE, T_OWN, T_WY)
from ..device import Device
from .ops import BLOCK, INT_MAX, grid


class Subnet:
    """Host-side layout of one subnet: plain ints from ``SI``/``LI`` and its bag's shape.

    ``identity``: the bag is item -> its own table row with weight 1 (an ID subnet's embedding
    or constrained input, no new items), so the input is a row gather; ``direct_grad``: the
    table-gradient rows are the input gradient itself with the step's items as indices (an
    identity bag whose rows span the whole table width); ``counted``: the number of table
    entries of a step depends on its items (host ints, counted per epoch); ``bag_len`` (n_bag,)
    int64 entries per item; ``max_bag`` the largest; ``spare_row`` (set by :class:`DeviceNet`):
    the row index, relative to a counted own table, of its spare row on the device."""

    def __init__(self, SI, LI, s, Hc, indptr, indices, weights, n_bag):
        row = SI[s]
        self.kind, self.tab, self.din = int(row[S_KIND]), int(row[S_TAB]), int(row[S_IN])
        self.toff, self.trows, self.tcols = int(row[S_TOFF]), int(row[S_TROWS]), int(row[S_TCOLS])
        self.ipoff, self.wy0 = int(row[S_IPOFF]), int(row[S_WYC0])
        self.c0, self.c1, self.a = int(row[S_C0]), int(row[S_C1]), int(row[S_A])
        self.d0, self.d1 = int(row[S_D0]), int(row[S_D1])
        self.layers = list(range(int(row[S_L0]), int(row[S_L1])))
        self.H = [int(LI[g, L_H]) for g in self.layers]
        ip = np.asarray(indptr[self.ipoff:self.ipoff + n_bag + 1], np.int64)
        self.bag_len = np.diff(ip)
        self.max_bag = int(self.bag_len.max()) if len(self.bag_len) else 0
        ar = np.arange(n_bag)
        self.identity = bool(
            self.kind == K_BAG and self.tab != T_NONE and (self.bag_len == 1).all()
            and np.array_equal(indices[ip[0]:ip[-1]], ar)
            and np.all(weights[ip[0]:ip[-1]] == 1.0))
        self.direct_grad = self.identity and (self.tab == T_OWN or self.din == Hc)
        self.counted = self.kind == K_BAG and self.tab != T_NONE and not self.direct_grad


class DeviceNet:
    """Layout and device parameters of a network (shared by trainer and scorer).

    ``params``: the flat host parameter dict (:data:`gru_engine.network.PARAM_KEYS`). Device
    arrays in ``p``: ``theta``, ``T``, ``Wy`` (n_items, Hc), ``By`` (n_items,), ``weights``
    float32; ``indptr`` (all subnets' CSR pointers), ``indices`` int32. ``H``: hidden size per
    layer of all subnets (``LI`` order); ``sub``: one :class:`Subnet` per subnet.
    """

    def __init__(self, device: Device, params: dict):
        for key in PARAM_KEYS:
            if key not in params:
                raise ValueError(f"params lacks {key!r}")
        self.dev = device
        self.host = params
        self.SI = np.asarray(params["SI"], np.int64)
        self.LI = np.asarray(params["LI"], np.int64)
        self.H = [int(h) for h in self.LI[:, L_H]]
        if len(params["indices"]) > INT_MAX:
            raise ValueError(f"{len(params['indices'])} feature bag entries: the CUDA backend "
                             f"indexes them with int32 (at most {INT_MAX})")
        self.n_items = int(params["Wy"].shape[0])
        self.Hc = int(params["Wy"].shape[1])
        if np.reshape(params["By"], -1).shape[0] != self.n_items:
            raise ValueError(f"By has {np.size(params['By'])} entries, Wy {self.n_items} rows")
        self.S, self.G = self.SI.shape[0], self.LI.shape[0]
        indptr = np.asarray(params["indptr"])
        # items covered by the bags (n_items, or more with new items' bags for inference)
        self.n_bag = len(indptr) // max(self.S, 1) - 1
        indices, weights = np.asarray(params["indices"]), np.asarray(params["weights"])
        self.sub = [Subnet(self.SI, self.LI, s, self.Hc, indptr, indices, weights, self.n_bag)
                    for s in range(self.S)]
        p = {k: device.to_device(np.reshape(params[k], (-1,)) if k == "By" else params[k],
                                 np.float32) for k in ("theta", "Wy", "By", "weights")}
        # T on the device: the host tables, then one spare row per counted own table (the
        # padding entries of a captured step update it; see Trainer._table_grad)
        T = np.asarray(params["T"], np.float32).reshape(-1)
        self.n_T = end = len(T)
        for sn in self.sub:
            sn.spare_row = -1
            if sn.counted and sn.tab == T_OWN:
                end += (sn.toff - end) % sn.tcols  # row-aligned with the table's start
                sn.spare_row = (end - sn.toff) // sn.tcols
                end += sn.tcols
        p["T"] = device.to_device(np.concatenate([T, np.zeros(end - len(T), np.float32)]))
        p["indptr"] = device.to_device(indptr, np.int32)
        p["indices"] = device.to_device(indices, np.int32)
        self.p = p
        # one subnet under concat: its last output is the combined state (no copy)
        self.single = self.S == 1 and self.sub[0].a < 0
        self._scoring_output = None

    # ---- views ---------------------------------------------------------------------------
    @staticmethod
    def th(arr, off, shape):
        """Row-major view ``shape`` of the flat device array ``arr`` from ``off``."""
        return arr[off:off + int(np.prod(shape))].reshape(shape)

    def layer(self, arr, g: int):
        """Views ``(Wx or None, bx, Wh, bhn)`` of layer g in the flat array ``arr`` (``theta``
        or a gradient/optimiser array of its shape)."""
        LI, H = self.LI[g], self.H[g]
        Wx = None if LI[L_WX] < 0 else self.th(arr, int(LI[L_WX]), (int(LI[L_IN]), 3 * H))
        return (Wx, self.th(arr, int(LI[L_BX]), (3 * H,)), self.th(arr, int(LI[L_WH]), (H, 3 * H)),
                self.th(arr, int(LI[L_BHN]), (H,)))

    def indptr(self, sn):
        return self.p["indptr"][sn.ipoff:sn.ipoff + self.n_bag + 1]

    def table(self, sn, arr=None):
        """Subnet ``sn``'s table as ``(2-D view, ld, col0)`` of ``arr`` (default the parameters:
        its block of ``T`` (T_OWN) or ``Wy`` with its first column (T_WY)); None for raw input."""
        if sn.tab == T_WY:
            return (self.p["Wy"] if arr is None else arr), self.Hc, sn.wy0
        if sn.tab == T_OWN:
            src = self.p["T"] if arr is None else arr
            return self.th(src, sn.toff, (sn.trows, sn.tcols)), sn.tcols, 0
        return None, 0, 0

    def host_view(self, arr, key):
        """The part of device array ``arr`` (``p[key]`` or an array of its shape) that the
        host parameter ``key`` holds (``T`` without its spare rows)."""
        return arr[:self.n_T] if key == "T" else arr

    def scoring_output(self):
        """``(Wy (n_items, Hc), By (n_items,))`` device arrays that score every item: ``p['Wy']``,
        ``p['By']``, or with output features (``Fy`` in the host parameters) the effective ones
        (:func:`.output_features.effective_output`, computed on first use)."""
        if self._scoring_output is None:
            self._scoring_output = (self.p["Wy"], self.p["By"])
            if "Fy" in self.host:
                from .output_features import effective_output
                self._scoring_output = effective_output(self.dev, self.p["Wy"], self.p["By"],
                                                        self.host)
        return self._scoring_output

    def to_host(self) -> dict:
        """The host parameter dict with ``theta``/``T``/``Wy``/``By`` copied from the device."""
        out = dict(self.host)
        for k in ("theta", "T", "Wy", "By"):
            out[k] = self.dev.to_host(self.host_view(self.p[k], k))
        return out

    # ---- forward -------------------------------------------------------------------------
    def subnet_forward(self, s, items, R, reset, hprevs, m0, mks, buf, carry=None, gates=None,
                       context=None):
        """Forward of subnet ``s`` for ``R`` rows: input ``x{s}`` (none for one-hot input),
        every layer g's ``gx{g}``, ``gh{g}``, output ``y{g}`` (dropped out by ``mks[g]``),
        ``saved{g}``, ``hpe{g}`` in ``buf``. ``items`` (R,) int32; ``reset`` (R,) uint8;
        ``hprevs[g]`` (R, H_g) previous states (ignored on reset rows); ``m0``: input dropout
        mask ((R,) per-row factor for one-hot input, else (R, din)) or None. ``carry(g, y)``
        is called after each layer (the trainer copies the carried state). ``gates``: None or
        (R, 3 H) extra gate pre-activations of the first layer, added after its bias (the
        user-level GRU's ``user_mode='all'``). ``context``: the
        :class:`~.context.DeviceContext` of a context-aware network (subnet 0's input)."""
        d, p, sn = self.dev, self.p, self.sub[s]
        ctx = context if s == 0 else None
        for n, g in enumerate(sn.layers):
            H = self.H[g]
            Wx, bx, Wh, bhn = self.layer(p["theta"], g)
            gx = buf(f"gx{g}", (R, 3 * H))
            if n == 0 and sn.kind == K_DIRECT:
                table, _, _ = self.table(sn)
                late_bias = ctx is not None and ctx.multiplies_input  # the row, modulated, + bx
                d.launch("gather_rows", grid(R * 3 * H), BLOCK,
                         [table, 3 * H, items, R, 3 * H, None if late_bias else bx, m0, gx,
                          3 * H])
                if late_bias:
                    ctx.modulate_input(gx, R)
                    d.launch("add_bias", grid(R * 3 * H), BLOCK, [gx, bx, R, 3 * H])
            else:
                x = buf(f"x{s}", (R, sn.din)) if n == 0 else buf(f"y{g - 1}", (R, sn.H[n - 1]))
                if n == 0:
                    self._input(sn, items, R, m0, x)
                    if ctx is not None:
                        ctx.modulate_input(x, R)
                d.gemm(x, Wx, out=gx)
                d.launch("add_bias", grid(R * 3 * H), BLOCK, [gx, bx, R, 3 * H])
            if n == 0 and gates is not None:
                d.launch("add_inplace", grid(R * 3 * H), BLOCK, [gx, gates, R * 3 * H])
            if n == 0 and ctx is not None:
                ctx.gates(gx, R)
            gh = buf(f"gh{g}", (R, 3 * H))
            d.gemm(hprevs[g] if n > 0 or ctx is None else ctx.transition(hprevs[g], R), Wh,
                   out=gh)
            y = buf(f"y{g}", (R, H))
            d.launch("gru_cell_forward", grid(R * H), BLOCK,
                     [gx, gh, bhn, hprevs[g], reset, mks[g], y, buf(f"saved{g}", (R, 4 * H)),
                      buf(f"hpe{g}", (R, H)), R, H])
            if carry is not None:
                carry(g, y)

    def _input(self, sn, items, R, m0, x):
        """x (R, din) = the input vectors of the items (times the mask m0 (R, din) or None)."""
        d, p = self.dev, self.p
        table, ld, col0 = self.table(sn)
        if sn.identity:
            src = table if col0 == 0 else table.reshape(-1)[col0:]
            d.launch("gather_rows", grid(R * sn.din), BLOCK,
                     [src, ld, items, R, sn.din, None, None, x, sn.din])
            if m0 is not None:
                d.launch("multiply_inplace", grid(R * sn.din), BLOCK, [x, m0, R * sn.din])
            return
        d.launch("bag_gather", grid(R * sn.din), BLOCK,
                 [table, ld, col0, sn.din, self.indptr(sn), p["indices"], p["weights"], items, R,
                  m0, x])

    def combine(self, active, R, sum_mode, arange, buf, zeros):
        """``hc`` (R, Hc): the one subnet's last output, the concatenation of the active
        subnets' (zero columns for inactive ones: copied from ``zeros`` (R, Hc)) or their
        ``theta[a_s]``-weighted sum."""
        d, Hc = self.dev, self.Hc
        if self.single:
            g = self.sub[0].layers[-1]
            return buf(f"y{g}", (R, self.H[g]))
        hc = buf("hc", (R, Hc))
        if not sum_mode and not all(active):
            d.copy(hc, zeros)
        first = True
        for s, sn in enumerate(self.sub):
            if not active[s]:
                continue
            g, H = sn.layers[-1], sn.H[-1]
            y = buf(f"y{g}", (R, H))
            if sum_mode:
                d.launch("scale_add", grid(R * Hc), BLOCK,
                         [hc, y, self.p["theta"][sn.a:sn.a + 1], R * Hc, 0 if first else 1])
            else:
                d.launch("gather_rows", grid(R * H), BLOCK,
                         [y, H, arange, R, H, None, None, hc.reshape(-1)[sn.c0:], Hc])
            first = False
        return hc
