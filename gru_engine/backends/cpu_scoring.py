"""CPU inference of every network: the evaluator's scorer protocol
(:class:`gru_engine.evaluation.SessionScorer`) with a threaded ``rank``.

:class:`Scorer` steps the network with the compiled ``infer_step`` of :mod:`.cpu.step`;
:class:`OutputLayer` turns the combined hidden states into all-item scores, or straight into
ranks or the top-k items (fused panel kernels where the CPU has AVX-512F or AVX2, else BLAS);
:func:`run_row_blocks` splits a step's rows over threads.
"""
from __future__ import annotations

import collections
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..config import (BALANCE_MIN_WORK, FUSED_TOP_K_MAX, INPUT_TABLE_MAX_ENTRIES,
                      MIN_BLOCK_PANELS, MIN_BLOCK_ROWS)
from ..network import (K_BAG, K_DIRECT, L_BX, L_H, L_IN, L_WX, PARAM_KEYS, S_IN,
                       S_KIND, S_L0, S_TAB, S_TCOLS, S_TOFF, S_TROWS, S_WYC0, S_XOFF, T_NONE,
                       T_OWN, T_WY)
from ..output_features import effective_output
from ..ranking import (Exclusions, ItemPanels, check_rank_mode, panel_path, panels_available,
                       rank_targets, ranks_from_counts, top_k)
from .cpu.infer import apply_final_act, infer_step
from .cpu.step import Net
from .cpu.trainer import work_buffers


class OutputLayer:
    """All-item scores ``final_act([h | 1] @ [Wy | By]^T)`` of a CPU scorer, and the ranks of
    targets among them: through :class:`~gru_engine.ranking.ItemPanels` (fused kernels, the
    scores never written when ranking) where the CPU has AVX-512F or AVX2 + FMA, else one BLAS
    GEMM (and :func:`~gru_engine.ranking.rank_targets` / :func:`~gru_engine.ranking.top_k`).
    Either way ``rank`` and ``top_k`` give exactly the ranks and top-k of the scores ``scores``
    returns. Thread-safe.

    ``path_counts``: calls of ``scores`` / ``rank`` / ``top_k`` per path that ran
    (``'panels-avx512'``, ``'panels-avx2'`` or ``'blas'``), so that callers and tests can tell
    which one did.
    """

    #: use the panel kernels where available (tests switch it off to cover the BLAS path)
    USE_PANELS = True

    def __init__(self, Wy, By, act: int = 0, act_param: float = 0.0):
        WyBT = np.ascontiguousarray(np.vstack([np.asarray(Wy, np.float32).T,
                                               np.asarray(By, np.float32)[None, :]]))
        self.n_items = WyBT.shape[1]
        self.act, self.act_param = act, act_param
        self.panels = ItemPanels(WyBT) if self.USE_PANELS and panels_available() else None
        # (H+1, n_items) in C order: the GEMM reads it without a transpose, which OpenBLAS
        # runs faster than the transposed (n_items, H+1) layout
        self.WyBT = WyBT if self.panels is None else None
        #: ``rank`` needs no score buffer, nor ``top_k`` for small k (:meth:`fused_top_k`; no
        #: final activation: the fused kernels rank the raw scores)
        self.fused_rank = self.panels is not None and act == 0
        self.path_counts = collections.Counter()
        self._count_lock = threading.Lock()

    def _ran(self, path: str) -> None:
        with self._count_lock:
            self.path_counts[path] += 1

    def scores(self, aug, out) -> np.ndarray:
        """``out = final_act(aug @ [Wy | By]^T)``; aug (R, H+1), out (R, n_items) float32."""
        if self.panels is not None:
            self.panels.scores(aug, out)
            self._ran(self.panels.last_path)
        else:
            np.dot(aug, self.WyBT, out=out)
            self._ran("blas")
        if self.act != 0:
            apply_final_act(out, len(out), self.act, self.act_param)
        return out

    def rank(self, aug, targets, mode: str, out=None) -> np.ndarray:
        """(R,) ranks of ``targets`` among each row's scores; ``out``: (R, n_items) scratch,
        needed unless :attr:`fused_rank`."""
        if self.fused_rank:
            ranks = self.panels.rank(aug, targets, mode)
            self._ran(self.panels.last_path)
            return ranks
        return rank_targets(self.scores(aug, out), targets, mode)

    def splits_items(self) -> bool:
        """A threaded ``rank`` should split the items rather than the rows
        (:meth:`rank_split`): on the fused path with the AVX2 tile in use. Measured (quiet
        2-core Zen 5, 17,376 items x 481): two threads of the AVX2 tile on 32-row blocks ran
        at 110 GFLOP/s against 195 on 224-row ones, and a row split ends each 512-row step
        with such blocks; the item split gives every call all rows (yoochoose-1-64
        evaluation, medians of 3 interleaved pairs: 5.40 s against 5.72 s, 5.54 against
        6.01). The AVX-512 tile loses less on small blocks (342 against 403), too little to
        pay for the split's second phase (3.51 s against 3.43 s, within the spread)."""
        return self.fused_rank and panel_path() == "panels-avx2"

    def rank_split(self, aug, t, mode: str, n_threads: int) -> np.ndarray:
        """:meth:`rank` of the fused path (:attr:`fused_rank`) with the items split over up to
        ``n_threads`` threads (:func:`run_row_blocks` over the panels): every thread counts
        all rows of ``aug`` (R, H+1) against its share of the items, so that the item matrix
        streams from memory once for all rows and both threads stay busy to the end whatever
        R. t: (R,) float32 target scores (:meth:`ItemPanels.target_scores`)."""
        R, n_workers = len(aug), max(1, int(n_threads))
        n_greater = np.zeros((n_workers, R), np.int64)
        n_equal = np.zeros((n_workers, R), np.int64)
        has_nan = np.zeros((n_workers, R), np.uint8)

        def block(k, p0, p1):
            self.panels.count(aug, t, n_greater[k], n_equal[k], has_nan[k], (p0, p1))

        run_row_blocks(self.panels.n_panels, n_workers, MIN_BLOCK_PANELS, block)
        self._ran(self.panels.last_path)
        return ranks_from_counts(n_greater.sum(0), n_equal.sum(0), has_nan.max(0), mode,
                                 "OutputLayer.rank")

    def fused_top_k(self, k: int) -> bool:
        """``top_k`` runs the fused kernel for this ``k`` (no score buffer): the panel kernels
        are in use, no final activation, ``k <= config.FUSED_TOP_K_MAX``."""
        return self.fused_rank and k <= FUSED_TOP_K_MAX

    def top_k(self, aug, k: int, exclude: Exclusions | None = None, out=None):
        """``(indices, values)`` (R, k) int64 / float32: each row's ``k`` best items, best
        first, ties to the lower index (:func:`~gru_engine.ranking.top_k` of ``scores``);
        ``exclude``: items scored ``-inf`` per row. ``out``: (R, n_items) scratch, needed
        unless :meth:`fused_top_k` (then the scores are never written)."""
        if self.fused_top_k(k):
            result = self.panels.top_k(aug, k, exclude)
            self._ran(self.panels.last_path)
            return result
        S = self.scores(aug, out)
        if exclude is not None:
            exclude.mask(S)
        return top_k(S, k)


class Scorer:
    """Evaluation scorer (protocol of :class:`gru_engine.evaluation.SessionScorer`) of any
    network (:mod:`gru_engine.network`): one compiled step of every subnet for the given slots
    (:func:`.cpu.infer.infer_step`: gather the hidden rows, step, scatter back), then the
    all-item scores ``[h_comb | 1] @ [Wy | By]^T`` of :class:`OutputLayer` into a preallocated
    buffer (valid until the next call). ``rank`` splits a step's rows into up to ``n_threads``
    blocks, each stepped, scored and ranked on its own thread with its own buffers.

    Specialisation for the ID-only network (GRU4Rec): there is no dropout at inference, so the
    layer-0 input projection of an embedding or constrained input, ``x @ Wx[0] + bx[0]`` for
    every item, is computed once (up to :attr:`MAX_TABLE` entries) and read as a one-hot table
    (a row lookup instead of a GEMM per step).
    """

    #: largest (n_items x 3 H_0) input-projection table precomputed (``config``)
    MAX_TABLE = INPUT_TABLE_MAX_ENTRIES

    def __init__(self, params: dict, sum_mode: bool, act: int = 0, act_param: float = 0.0,
                 n_threads: int = 1):
        dt = np.float32
        p = {k: (np.ascontiguousarray(params[k], dt) if k in ("theta", "T", "Wy", "By",
                                                                "weights") else params[k])
             for k in PARAM_KEYS}
        p = _project_id_input(p, self.MAX_TABLE)
        self.net = Net(**p)
        self.sum_mode = bool(sum_mode)
        self.n_threads = max(1, int(n_threads))
        # with output features (``Fy`` in params) the output vectors are Wy + pooled features
        self.output = OutputLayer(*effective_output(dict(params, Wy=p["Wy"], By=p["By"])), act,
                                  act_param)
        self.n_items = self.output.n_items
        self.Hc = p["Wy"].shape[1]
        self.width = int(p["LI"][:, L_H].sum())
        self.active = np.ones(p["SI"].shape[0], np.bool_)
        self._ws = []
        self._aug = np.zeros((0, self.Hc + 1), dt)  # all rows' [h_comb | 1] of a fused rank
        self.state = np.zeros((0, self.width), dt)

    def _workspace(self, k: int, R: int) -> _Workspace:
        """Buffers of block ``k`` with room for ``R`` rows (``self._ws`` must have a slot k)."""
        ws = self._ws[k]
        if ws is None or ws.cap < R:
            ws = _Workspace(self.net, max(R, 64))
            self._ws[k] = ws
        return ws

    def begin(self, n_rows: int) -> None:
        """Allocate and zero the hidden states of slots ``0..n_rows-1``."""
        self.state = np.zeros((int(n_rows), self.width), np.float32)

    def _step(self, ws: _Workspace, rows, items, new_session) -> np.ndarray:
        """Step one block of rows in ``ws``; returns their ``[h_comb | 1]``."""
        infer_step(self.net, self.active, self.sum_mode, rows, items, new_session, self.state,
                   ws.work, ws.aug, ws.context)
        return ws.aug[:len(rows)]

    @staticmethod
    def _inputs(rows, items, new_session):
        return (np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(items, np.int32),
                np.ascontiguousarray(new_session, np.bool_))

    def _reserve(self, n_blocks: int) -> None:
        # workspace slots are made on the calling thread; blocks only fill their own slot
        self._ws += [None] * max(0, n_blocks - len(self._ws))

    def score(self, rows, items, new_session) -> np.ndarray:
        """(R, n_items) float32 scores after clicks ``items`` in slots ``rows``."""
        rows, items, new_session = self._inputs(rows, items, new_session)
        R = len(rows)
        self._reserve(1)
        ws = self._workspace(0, R)
        aug = self._step(ws, rows, items, new_session)
        return self.output.scores(aug, ws.scores(self.n_items)[:R])

    def advance(self, rows, items, new_session) -> None:
        """The state update of :meth:`score` (clicks ``items`` in slots ``rows``, slots with
        ``new_session`` reset first) without scoring any item. Rows are split over
        ``n_threads`` blocks as in :meth:`topk`."""
        rows, items, new_session = self._inputs(rows, items, new_session)
        self._reserve(self.n_threads)

        def block(k, a, b):
            self._step(self._workspace(k, b - a), rows[a:b], items[a:b], new_session[a:b])

        # the row blocks of topk: the step's GEMM rounds by block size, so the same blocks
        # give the same states
        run_row_blocks(len(rows), self.n_threads, MIN_BLOCK_ROWS, block,
                       balance=self.n_items * self.Hc >= BALANCE_MIN_WORK)

    def topk(self, rows, items, new_session, k: int, exclude: Exclusions | None = None):
        """The state update of :meth:`score`, then each row's ``k`` best items (``1 <= k <=
        n_items``): ``(indices (R, k) int64, values (R, k) float32)``, best first, ties to the
        lower item index, exactly :func:`~gru_engine.ranking.top_k` of :meth:`score`'s
        scores. ``exclude``: :class:`~gru_engine.ranking.Exclusions` of R rows, items scored
        ``-inf`` (they come last, lowest index first, where a row has fewer than k others).
        Fused panel kernels where :meth:`OutputLayer.fused_top_k` (the scores are never
        written), else scores + top-k per block; rows split over ``n_threads`` blocks as in
        :meth:`rank`. NaN scores raise ``ModelFitError``."""
        rows, items, new_session = self._inputs(rows, items, new_session)
        R = len(rows)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
                or not 1 <= k <= self.n_items:  # checked before the state moves
            raise ValueError(f"k must be an integer in [1, n_items={self.n_items}], got {k!r}")
        if exclude is not None and (not isinstance(exclude, Exclusions) or exclude.n_rows != R):
            raise ValueError(f"exclude must be Exclusions of {R} rows, got {exclude!r}")
        indices = np.empty((R, int(k)), np.int64)
        values = np.empty((R, int(k)), np.float32)
        self._reserve(self.n_threads)

        def block(w, a, b):
            ws = self._workspace(w, b - a)
            aug = self._step(ws, rows[a:b], items[a:b], new_session[a:b])
            out = None if self.output.fused_top_k(k) else ws.scores(self.n_items)[:b - a]
            indices[a:b], values[a:b] = self.output.top_k(
                aug, k, None if exclude is None else exclude[a:b], out)

        run_row_blocks(R, self.n_threads, MIN_BLOCK_ROWS, block,
                       balance=self.n_items * self.Hc >= BALANCE_MIN_WORK)
        return indices, values

    def rank(self, rows, items, new_session, targets, mode: str = "conservative") -> np.ndarray:
        """(R,) float64 ranks of ``targets`` after the clicks (the evaluator's optional
        ``rank``). The rows are split into up to ``n_threads`` blocks, each stepped on one
        thread without the GIL. Where :meth:`OutputLayer.splits_items` (the AVX2 tile) each
        block also gets its target scores, then the items are split over the threads for the
        counting (:meth:`OutputLayer.rank_split`: every call counts all rows, the item matrix
        streams from memory once per step); otherwise each block is scored (fused panel
        kernels, or a single-threaded BLAS GEMM) and ranked on its own thread, which on small
        GEMMs beats multi-threaded BLAS, whose idle workers spin while the rest of the step
        runs. NaN scores raise ``ModelFitError``."""
        rows, items, new_session = self._inputs(rows, items, new_session)
        targets = np.asarray(targets, np.int64)
        R = len(rows)
        self._reserve(self.n_threads)
        balance = self.n_items * self.Hc >= BALANCE_MIN_WORK
        if self.n_threads > 1 and self.output.splits_items():
            # step and target scores by row blocks, then the counting by item blocks
            check_rank_mode(mode)
            if self._aug.shape[0] < R:
                self._aug = np.zeros((R, self.Hc + 1), np.float32)
            aug, t = self._aug[:R], np.empty(R, np.float32)

            def step_block(k, a, b):
                aug[a:b] = self._step(self._workspace(k, b - a), rows[a:b], items[a:b],
                                      new_session[a:b])
                t[a:b] = self.output.panels.target_scores(aug[a:b], targets[a:b])

            run_row_blocks(R, self.n_threads, MIN_BLOCK_ROWS, step_block, balance=balance)
            return self.output.rank_split(aug, t, mode, self.n_threads)
        ranks = np.empty(R, np.float64)

        def block(k, a, b):
            ws = self._workspace(k, b - a)
            aug = self._step(ws, rows[a:b], items[a:b], new_session[a:b])
            out = None if self.output.fused_rank else ws.scores(self.n_items)[:b - a]
            ranks[a:b] = self.output.rank(aug, targets[a:b], mode, out)

        run_row_blocks(R, self.n_threads, MIN_BLOCK_ROWS, block, balance=balance)
        return ranks


def _project_id_input(p: dict, max_table: int) -> dict:
    """``p`` with the embedding/constrained input of an ID-only network replaced by its
    precomputed layer-0 projection (see :class:`Scorer`): the subnet becomes a one-hot
    (``K_DIRECT``) input reading ``src @ Wx[0] + bx[0]`` (its ``bx[0]`` zeroed), appended to
    ``T``. Unchanged for other networks or when the table would exceed ``max_table``
    entries."""
    SI, LI = p["SI"], p["LI"]
    n_items = p["Wy"].shape[0]
    s = 0
    if SI.shape[0] != 1 or SI[s, S_KIND] != K_BAG or SI[s, S_TAB] == T_NONE:
        return p
    ip = p["indptr"]
    if not (len(ip) == n_items + 1 and np.array_equal(ip, np.arange(n_items + 1) + ip[0])
            and np.array_equal(p["indices"][ip[0]:ip[-1]], np.arange(n_items))):
        return p  # not the ID subnet (a single feature subnet), or new items appended
    g = SI[s, S_L0]
    H, din = int(LI[g, L_H]), int(SI[s, S_IN])
    if n_items * 3 * H > max_table:
        return p
    theta = p["theta"].copy()
    Wx0 = theta[LI[g, L_WX]:LI[g, L_WX] + din * 3 * H].reshape(din, 3 * H)
    bx0 = theta[LI[g, L_BX]:LI[g, L_BX] + 3 * H]
    if SI[s, S_TAB] == T_WY:
        c0 = SI[s, S_WYC0]
        src = p["Wy"] if c0 == 0 and din == p["Wy"].shape[1] else p["Wy"][:, c0:c0 + din]
    else:
        a = SI[s, S_TOFF]
        src = p["T"][a:a + n_items * din].reshape(n_items, din)
    table = np.ascontiguousarray(np.ascontiguousarray(src) @ Wx0 + bx0)
    bx0[:] = 0.0
    SI, LI = SI.copy(), LI.copy()
    SI[s, S_KIND], SI[s, S_TAB] = K_DIRECT, T_OWN
    SI[s, S_TOFF], SI[s, S_TROWS], SI[s, S_TCOLS] = len(p["T"]), n_items, 3 * H
    SI[s, S_IN] = 3 * H
    SI[:, S_XOFF] = np.concatenate([[0], np.cumsum(SI[:-1, S_IN])])
    LI[g, L_IN], LI[g, L_WX] = 0, -1
    T = np.concatenate([p["T"], table.ravel()])
    return dict(p, SI=SI, LI=LI, theta=theta, T=T)


def run_row_blocks(n_rows: int, n_threads: int, min_rows: int, block,
                   balance: bool = True) -> None:
    """Run ``block(k, a, b)`` over rows ``0..n_rows-1`` on up to ``n_threads`` workers (as many
    as there are ``min_rows``-row blocks; one if fewer): worker 0 is the calling thread, the
    others come from a shared pool. The workers take contiguous blocks ``a:b`` from one queue:
    first one large block each (together about 7/8 of the rows, multiples of 8 rows), then
    the rest in small blocks (at least ``min_rows``), so that a worker slowed by another
    process on its core does not hold the step back: the others take its share of the small
    blocks. ``k`` is the worker (``0 <= k < n_threads``): one worker's calls run one after the
    other, so per-``k`` buffers are safe. Returns when every row is done (an error in any
    block is raised). ``block`` must release the GIL for the workers to overlap.
    ``balance=False``: one equal block per worker (for light steps, where a block's fixed cost
    outweighs what balancing can save).
    """
    n_workers = min(max(1, int(n_threads)), max(1, n_rows // min_rows))
    if n_workers == 1:
        block(0, 0, n_rows)
        return
    pool = _pool(n_workers - 1)
    if not balance:
        edges = np.linspace(0, n_rows, n_workers + 1).astype(int)
        futures = [pool.submit(block, k, int(edges[k]), int(edges[k + 1]))
                   for k in range(1, n_workers)]
        try:
            block(0, 0, int(edges[1]))
        finally:
            for future in futures:
                future.result()
        return
    lock = threading.Lock()
    queue = iter(_row_blocks(n_rows, n_workers, min_rows))

    def worker(k):
        while True:
            with lock:
                rows = next(queue, None)
            if rows is None:
                return
            block(k, *rows)

    futures = [pool.submit(worker, k) for k in range(1, n_workers)]
    try:
        worker(0)
    finally:
        for future in futures:
            future.result()


def _row_blocks(n_rows: int, n_workers: int, min_rows: int) -> list:
    """The (a, b) blocks of :func:`run_row_blocks`, in the order they are taken: one large
    block per worker (multiples of 8 rows), then the rest (at least 1/8 of the rows) in
    ``n_workers * m`` nearly equal blocks of at least ``min_rows`` rows, so that on a quiet
    machine every worker takes as many small blocks and all finish together."""
    reserve = max(min_rows * n_workers, n_rows // 8)
    first = (n_rows - reserve) // n_workers // 8 * 8
    if first < min_rows:
        first = 0
    start = first * n_workers
    n_small = max(1, (n_rows - start) // (n_workers * min_rows)) * n_workers
    n_small = min(n_small, max(1, (n_rows - start) // min_rows))
    edges = [first * k for k in range(n_workers + 1)] if first else [0]
    edges += [int(e) for e in np.linspace(start, n_rows, n_small + 1)[1:]]
    return list(zip(edges[:-1], edges[1:]))


@functools.lru_cache(maxsize=None)
def _pool(n_workers: int) -> ThreadPoolExecutor:
    """A process-wide thread pool for :func:`run_row_blocks` (threads idle cheaply when unused)."""
    return ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="gru_engine-score")


class _Workspace:
    """Inference buffers of one row block (``cap`` rows): a :class:`.cpu.step.Work` without
    gradient buffers and ``aug`` (cap, Hc + 1); ``out``, the (cap, n_items) score buffer, is
    made on first use (the fused ranking needs none)."""

    def __init__(self, net, cap: int):
        self.cap = cap
        Hc = net.Wy.shape[1]
        self.work = work_buffers(net.SI, net.LI, cap, Hc, 0, np.float32, grads=False)
        self.aug = np.zeros((cap, Hc + 1), np.float32)
        self.out = None
        self.context = None  # no context; a context-aware scorer sets its record

    def scores(self, n_items: int) -> np.ndarray:
        if self.out is None:
            self.out = np.zeros((self.cap, n_items), np.float32)
        return self.out
