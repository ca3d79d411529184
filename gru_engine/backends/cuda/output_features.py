"""The feature part of the output layer (:mod:`gru_engine.output_features`) on a CUDA device
(kernels/output_features.cu), for the trainer and the scorer.

On the device ``Fy`` (rows, Hc) and ``Fb`` (rows,) are one table ``F`` (rows + spare, Hc + 1)
(``Fb`` in the last column), so that one sparse Adagrad updates both, as the CPU trainer's
gradient rows ``[GY | gBy]`` (:mod:`gru_engine.backends.cpu.output_features`). A training step,
around the sampled output layer of :class:`~.ops.StepOps`:

1. :meth:`OutputFeatures.add_to_columns` (after the gather of the columns' ``Wy``/``By`` rows):
   ``wy_c[c] += sum_j w_j Fy[r_j]``, ``by_c[c] += sum_j w_j Fb[r_j]`` (``bag_accumulate``);
2. :meth:`OutputFeatures.gradient_rows` (after the output backward): ``max_bag`` gradient rows
   per column, ``w_j [G_wy[c] | dBy[c]]`` (``output_bag_grad``; padding slots are zero rows of
   the column's spare row of ``F``), so that the step's layout is fixed and a CUDA graph
   replays it;
3. :meth:`OutputFeatures.update` (after the ``Wy``/``By`` updates): sparse Adagrad + momentum of
   the rows, duplicates summed first, in the ``Wy`` columns the phase trains (the bias column
   always), as :func:`~gru_engine.backends.cpu.output_features.update_output_features`.

Scoring: :func:`effective_output` (``Wy_eff``, ``By_eff`` of every item, computed on the device).
"""
from __future__ import annotations

import numpy as np

from ..device import Device
from .ops import BLOCK, INT_MAX, grid


class OutputFeatures:
    """Device arrays of the output features of host ``params`` (``Fy``, ``Fb``, ``oindptr``,
    ``oindices``, ``oweights``): ``F`` (n_rows + n_spare, Hc + 1) float32 (spare rows zero),
    ``indptr`` (n_items + 1,) / ``indices`` int32, ``weights`` float32; ``max_bag``: the longest
    output bag. ``n_spare``: spare rows of ``F`` (the trainer's padding rows: one per sampled
    column); ``train``: also the optimiser state ``acc``/``vel`` (zero, shaped like ``F``)."""

    def __init__(self, device: Device, params: dict, n_spare: int = 0, train: bool = False):
        Fy, Fb, ip = params["Fy"], params["Fb"], np.asarray(params["oindptr"])
        if ip[-1] > INT_MAX or Fy.shape[0] + n_spare > INT_MAX:
            raise ValueError(f"{int(ip[-1])} output-feature entries / {Fy.shape[0]} rows: the "
                             f"CUDA backend indexes them with int32 (at most {INT_MAX})")
        self.dev = device
        self.n_rows, self.Hc = int(Fy.shape[0]), int(Fy.shape[1])
        self.W = self.Hc + 1
        F = np.zeros((self.n_rows + int(n_spare), self.W), np.float32)
        F[:self.n_rows, :self.Hc] = Fy
        F[:self.n_rows, self.Hc] = Fb
        self.F = device.to_device(F)
        self.indptr = device.to_device(ip, np.int32)
        self.indices = device.to_device(params["oindices"], np.int32)
        self.weights = device.to_device(params["oweights"], np.float32)
        self.max_bag = max(int(np.diff(ip).max()) if len(ip) > 1 else 0, 1)
        if train:
            self.acc, self.vel = device.zeros(self.F.shape), device.zeros(self.F.shape)
        self._masks = {}

    def add_to_columns(self, cols, C: int, wy_c, by_c) -> None:
        """``wy_c`` (C, Hc) and ``by_c`` (C,): the rows of items ``cols`` (C,) int32 plus their
        bags' ``Fy``/``Fb`` rows (in place)."""
        d, Hc = self.dev, self.Hc
        bag = [self.indptr, self.indices, self.weights, cols, C]
        d.launch("bag_accumulate", grid(C * Hc), BLOCK, [self.F, self.W, 0, Hc, *bag, wy_c, Hc])
        d.launch("bag_accumulate", grid(C), BLOCK, [self.F, self.W, Hc, 1, *bag, by_c, 1])

    def gradient_rows(self, cols, C: int, G_wy, dBy, G, idx) -> int:
        """The gradient rows of ``F`` of one step into ``G`` (>= C * max_bag, Hc + 1) and their
        rows into ``idx`` (int32) from the gradients ``G_wy`` (>= C, Hc) and ``dBy`` (C,) of the
        columns ``cols`` (C,) int32 (``output_bag_grad``); the padding slots of column ``c``
        index spare row ``n_rows + c``. Returns the number of rows, ``C * max_bag``."""
        n = C * self.max_bag
        self.dev.launch("output_bag_grad", grid(n * self.W), BLOCK,
                        [G_wy, dBy, self.Hc, self.indptr, self.indices, self.weights, cols, C,
                         self.max_bag, self.n_rows, G, idx])
        return n

    def update(self, sparse_update, G, idx, n: int, col_mask) -> None:
        """Adagrad + momentum of the ``n`` rows ``idx`` of ``F`` from ``G`` through
        ``sparse_update`` (:meth:`~.ops.StepOps._sparse_update`); ``col_mask``: None (every
        column) or the (Hc + 1,) float32 device mask of the columns to update."""
        masks = None if col_mask is None else (n, col_mask, col_mask)
        sparse_update(self.F, self.acc, self.vel, G, idx, n, self.W, col_masks=masks)

    def column_mask(self, phase, wy_mask):
        """The (Hc + 1,) mask of :meth:`update` for a phase (any hashable key) whose output rows
        of ``Wy`` update the columns of the (Hc,) device mask ``wy_mask`` (None: all, and then
        None): the bias column always. Kept per phase (a captured step finds it ready)."""
        if wy_mask is None:
            return None
        if phase not in self._masks:
            m = np.ones(self.W, np.float32)
            m[:self.Hc] = self.dev.to_host(wy_mask)
            self._masks[phase] = self.dev.to_device(m)
        return self._masks[phase]

    def to_host(self, table=None) -> dict:
        """``{'Fy': (n_rows, Hc), 'Fb': (n_rows,)}`` float32 host copies of ``F`` (or of
        ``table``, shaped like ``F``: its optimiser state)."""
        F = self.dev.to_host((self.F if table is None else table)[:self.n_rows])
        return {"Fy": np.ascontiguousarray(F[:, :self.Hc]), "Fb": F[:, self.Hc].copy()}

    def optimizer_state(self) -> dict:
        """Training: ``{'acc': {'Fy', 'Fb'}, 'vel': {...}}`` host float32 copies of the rows'
        Adagrad accumulators and momentum velocities (as the CPU trainer's)."""
        return {"acc": self.to_host(self.acc), "vel": self.to_host(self.vel)}

    def load_state(self, params=None, optimizer_state=None) -> None:
        """Training: copy the rows ``Fy``/``Fb`` of host ``params`` and/or of
        ``optimizer_state`` (as :meth:`optimizer_state` returns; without ``Fy``: the state
        stays) onto the device (warm start, checkpoints; the spare rows stay zero)."""
        pairs = [] if params is None else [(self.F, params)]
        if optimizer_state is not None and "Fy" in optimizer_state["acc"]:
            pairs += [(self.acc, optimizer_state["acc"]), (self.vel, optimizer_state["vel"])]
        for dst, src in pairs:
            F = np.zeros(dst.shape, np.float32)
            F[:self.n_rows, :self.Hc] = src["Fy"]
            F[:self.n_rows, self.Hc] = src["Fb"]
            self.dev.copy(dst, self.dev.to_device(F))


def effective_output(device: Device, Wy, By, params: dict):
    """``(Wy_eff (n_items, Hc), By_eff (n_items,))`` float32 device arrays: the device ``Wy``,
    ``By`` plus every item's pooled ``Fy``/``Fb`` rows (:func:`gru_engine.output_features.
    effective_output`, summed in float32 on the device)."""
    of = OutputFeatures(device, params)
    n = int(Wy.shape[0])
    Wy_eff, By_eff = device.empty(Wy.shape), device.empty(By.shape)
    device.copy(Wy_eff, Wy)
    device.copy(By_eff, By)
    of.add_to_columns(device.to_device(np.arange(n, dtype=np.int32)), n, Wy_eff, By_eff)
    return Wy_eff, By_eff
