"""Inference of any network on a CUDA device, for the evaluator's scorer protocol, with
device-side ranking and top-k."""
from __future__ import annotations

import weakref

import numpy as np

from ...ranking import check_rank_mode
from ..device import Device
from .net import DeviceNet
from .ops import BLOCK, ScratchBuffers, grid

RANK_MODES = {"conservative": 0, "optimistic": 1, "standard": 1, "median": 2}

# model -> (params dict, key, net): device parameters reused by the scorers of cache_on=model
_SCORER_NETS = weakref.WeakKeyDictionary()


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


class Scorer(ScratchBuffers):
    """Inference of a network on the device (no dropout; every subnet runs).

    ``params``: flat host parameters (:data:`gru_engine.network.PARAM_KEYS`); ``sum_mode``:
    ``combine='sum'``; ``final_act``: ``(code, param)`` (:func:`gru_engine.params.
    parse_final_act`). ``cache_on``: an object (the model) for which the device copy of
    ``params`` is kept between scorers (in a weak-keyed table, so copies and pickles of the
    model never carry device arrays), reused while ``params`` is the very same dict holding the
    very same arrays on the same device; values written INTO the arrays in place are not seen
    by a cached copy (assign a new array or dict instead).

    Protocol: ``begin(n_rows)`` zeroes an (n_rows, H_g) hidden state per layer; ``score(rows,
    items, new_session)`` feeds one click per listed row (rows: (R,) int indices into the state,
    distinct; items: (R,) int item indices; new_session: (R,) bool, True resets that row) and
    returns float32 (R, n_items) host scores ``final_act(h_comb @ Wy.T + By)``. ``rank`` and
    ``topk`` do the same step but keep the score block on the device; ``advance`` does the
    step alone (no scores). ``context``: None, or the :class:`~.context.DeviceContext` of a
    context-aware network (its rows set before each step; :mod:`gru_engine.context_scoring`).
    """

    #: per-slot device arrays (n_rows, w) besides ``h`` that a session store keeps with the
    #: hidden state (the user-level scorer's extra gates)
    extra_state = ()

    def __init__(self, device: Device, params: dict, sum_mode: bool, final_act=(0, 0.0),
                 cache_on=None):
        self.dev = device
        key = (device.name, getattr(device, "device_id", None),
               tuple((k, id(params[k])) for k in sorted(params)))
        self.net = _cached_net(cache_on, params, key, lambda: DeviceNet(device, params))
        self.sum_mode = bool(sum_mode)
        self.final_act = (int(final_act[0]), float(final_act[1]))
        self.n_items = self.net.n_items
        self.h = None
        self._arange = None
        self._init_scratch()
        self.context = None

    def begin(self, n_rows: int):
        self.h = [self.dev.zeros((int(n_rows), H)) for H in self.net.H]

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
            d.launch("gather_rows", grid(R * H), BLOCK, [h, H, rows_d, R, H, None, None, hp, H])
            hprevs.append(hp)
        no_masks = [None] * net.G
        gates = self._layer0_gates(rows_d, R)
        for s in range(net.S):
            net.subnet_forward(s, items_d, R, reset_d, hprevs, None, no_masks, self._buf,
                               gates=gates if s == 0 else None, context=self.context)
        for g, h in enumerate(self.h):
            H = h.shape[1]
            d.launch("scatter_rows", grid(R * H), BLOCK,
                     [self._buf(f"y{g}", (R, H)), rows_d, R, H, h])
        hc = net.combine([True] * net.S, R, self.sum_mode, self._arange, self._buf, None)
        return hc if self.context is None else self.context.output(hc, R)

    def _layer0_gates(self, rows_d, R: int):
        """(R, 3 H0) extra layer-0 gates of subnet 0 for the rows, or None (none here; see
        :mod:`.user_scorer`)."""
        return None

    def _step(self, rows, items, new_session):
        """One click per row (host inputs of the protocol); returns h_comb (R, Hc)."""
        if self.h is None:
            raise ValueError("call begin(n_rows) before score()")
        d = self.dev
        rows_d = d.to_device(np.asarray(rows), np.int32)
        items_d = d.to_device(np.asarray(items), np.int32)
        reset_d = d.to_device(np.asarray(new_session).astype(np.uint8))
        return self._forward_rows(rows_d, items_d, reset_d, len(rows))

    def advance(self, rows, items, new_session) -> None:
        """The state update of :meth:`score` without scoring any item."""
        if len(rows):
            self._step(rows, items, new_session)

    def _scores_device(self, rows, items, new_session):
        """(R, n_items) float32 device scores of one click per row (advances those rows)."""
        d = self.dev
        R = len(rows)
        x = self._step(rows, items, new_session)
        N = self.n_items
        Wy, By = self.net.scoring_output()
        S = self._buf("S", (R, N))
        d.gemm(x, Wy, out=S, trans_b=True)
        d.launch("add_bias", grid(R * N), BLOCK, [S, By, R, N])
        if self.final_act[0] != 0:
            S_act = self._buf("S_act", (R, N))
            d.launch("final_act_forward", grid(R * N), BLOCK,
                     [S, S_act, R * N, self.final_act[0], self.final_act[1]])
            return S_act
        return S

    def score(self, rows, items, new_session):
        return self.dev.to_host(self._scores_device(rows, items, new_session))

    def rank(self, rows, items, new_session, targets, mode: str = "conservative"):
        """(R,) float32 rank of each row's target item among all items (1 = best); NaN for a
        row whose scores hold NaN anywhere (``evaluate_sessions`` then refuses the model with
        ``ModelFitError``)."""
        check_rank_mode(mode)
        S = self._scores_device(rows, items, new_session)
        R, N = S.shape
        ranks = self._buf("ranks", (R,))
        self.dev.launch("rank_targets", R, BLOCK,
                        [S, R, N, self.dev.to_device(np.asarray(targets), np.int32),
                         RANK_MODES[mode], ranks])
        return self.dev.to_host(ranks)

    def topk(self, rows, items, new_session, k: int, exclude=None):
        """Top-k items per row, best first (ties: lower index first): (R, k) int32 indices
        and float32 scores. ``exclude``: :class:`~gru_engine.ranking.Exclusions` of R rows,
        items scored ``-inf`` on the device before the top-k (as the CPU scorer's
        ``topk``)."""
        if not 1 <= int(k) <= self.n_items:  # before the state moves
            raise ValueError(f"k must be in [1, {self.n_items}], got {k!r}")
        if exclude is not None and exclude.n_rows != len(rows):
            raise ValueError(f"exclude has {exclude.n_rows} rows for {len(rows)} rows")
        S = self._scores_device(rows, items, new_session)
        if exclude is not None:
            ptr = exclude.indptr
            cols = exclude.indices[ptr[0]:ptr[-1]]
            if len(cols):
                r = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(ptr))
                S[self.dev.to_device(r), self.dev.to_device(cols)] = -np.inf
        return topk_device(self.dev, S, k)


def topk_device(device: Device, S, k: int):
    """Top-k of each row of a device score block S (R, N) float32; returns host (idx (R, k)
    int32, vals (R, k) float32)."""
    R, N = S.shape
    if not 1 <= int(k) <= N:
        raise ValueError(f"k must be in [1, {N}], got {k!r}")
    idx = device.empty((R, int(k)), np.int32)
    vals = device.empty((R, int(k)), np.float32)
    device.launch("topk_rows", R, BLOCK, [S, R, N, int(k), idx, vals], shared_mem=8 * int(k))
    return device.to_host(idx), device.to_host(vals)
