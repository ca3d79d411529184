"""CPU inference of SessionGRU and FeatureSessionGRU: the evaluator's scorer protocol
(:class:`gru_engine.evaluation.SessionScorer`) with a threaded ``rank``.

:class:`GRUScorer` and :class:`FeatureScorer` step their model with the compiled
``infer_step`` of :mod:`.cpu` / :mod:`.feature_cpu`; :class:`OutputLayer` turns the last hidden
states into all-item scores, or straight into ranks (fused panel kernels where the CPU has
AVX-512F, else BLAS); :func:`run_row_blocks` splits a step's rows over threads.
"""
from __future__ import annotations

import collections
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..ranking import ItemPanels, panels_available, rank_targets
from . import cpu, feature_cpu
from .cpu import EMBEDDING, ONEHOT, apply_final_act
from ..network import L_H, S_IN


class OutputLayer:
    """All-item scores ``final_act([h | 1] @ [Wy | By]^T)`` of a CPU scorer, and the ranks of
    targets among them: through :class:`~gru_engine.ranking.ItemPanels` (fused kernels, the
    scores never written when ranking) where the CPU has AVX-512F or AVX2 + FMA, else one BLAS
    GEMM (and :func:`~gru_engine.ranking.rank_targets`). Either way ``rank`` gives exactly the
    ranks of the scores ``scores`` returns. Thread-safe.

    ``path_counts``: calls of ``scores`` / ``rank`` per path that ran (``'panels-avx512'``,
    ``'panels-avx2'`` or ``'blas'``), so that callers and tests can tell which one did.
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
        #: ``rank`` needs no score buffer
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


class GRUScorer:
    """Evaluation scorer (protocol of :class:`gru_engine.evaluation.SessionScorer`).

    One compiled call per block of rows (:func:`.cpu.infer_step`) gathers the hidden rows, runs
    the GRU step and scatters the rows back; :class:`OutputLayer` scores all items into a
    preallocated buffer, which ``score`` returns a view of (valid until the next call).
    ``rank`` splits a step's rows into ``n_threads`` blocks that run the whole chain (step,
    scoring, ranking) on their own threads.
    """

    #: largest (n_items x 3 H_0) input-projection table precomputed for embedding inputs
    MAX_TABLE = 50_000_000

    def __init__(self, params: dict, mode: int, act: int = 0, act_param: float = 0.0,
                 n_threads: int = 1):
        dt = np.float32
        self.n_threads = max(1, int(n_threads))
        Wx = [np.ascontiguousarray(w, dt) for w in params["Wx"]]
        bx = [np.ascontiguousarray(b, dt) for b in params["bx"]]
        if mode != ONEHOT and params["Wy"].shape[0] * Wx[0].shape[1] <= self.MAX_TABLE:
            # No dropout at inference, so layer 0's input projection of every item can be
            # computed once: x @ Wx[0] + bx[0] becomes a row lookup (as for one-hot input).
            src = params["E"] if mode == EMBEDDING else params["Wy"]
            Wx[0] = np.ascontiguousarray(np.asarray(src, dt) @ Wx[0] + bx[0])
            bx[0] = np.zeros_like(bx[0])
            mode = ONEHOT
        self.mode = mode
        self.Wx, self.bx = tuple(Wx), tuple(bx)
        self.Wh = tuple(np.ascontiguousarray(w, dt) for w in params["Wh"])
        self.bhn = tuple(np.ascontiguousarray(b, dt) for b in params["bhn"])
        self.Wy = np.ascontiguousarray(params["Wy"], dt)
        self.E = np.ascontiguousarray(params["E"], dt) if "E" in params else np.zeros((1, 1), dt)
        self.output = OutputLayer(self.Wy, params["By"], act, act_param)
        self.layers = [w.shape[0] for w in self.Wh]
        self.n_items = self.output.n_items
        self._cap = 0
        self.out = None
        self.state = tuple(np.zeros((0, h), dt) for h in self.layers)

    def _grow(self, R: int, scores: bool):
        """Buffers for ``R`` rows; with ``scores`` also the (rows, n_items) score buffer."""
        dt = np.float32
        if R > self._cap:
            cap = max(R, 64)
            per = lambda k: tuple(np.zeros((cap, k * h), dt) for h in self.layers)
            self.hprev, self.hout, self.ones = per(1), per(1), per(1)
            for o in self.ones:
                o[:] = 1.0
            self.gx, self.gh, self.gates = per(3), per(3), per(3)
            d0 = 1 if self.mode == ONEHOT else self.Wx[0].shape[0]
            self.x0 = np.zeros((cap, d0), dt)
            self.ones0 = np.ones((cap, d0), dt)
            self.aug = np.zeros((cap, self.layers[-1] + 1), dt)
            self._cap = cap
        if scores and (self.out is None or self.out.shape[0] < self._cap):
            self.out = np.zeros((self._cap, self.n_items), dt)

    def begin(self, n_rows: int) -> None:
        """Allocate and zero the hidden states of slots ``0..n_rows-1``."""
        self.state = tuple(np.zeros((int(n_rows), h), np.float32) for h in self.layers)

    def _step(self, a: int, b: int, rows, items, new_session) -> np.ndarray:
        """GRU step of ``rows[a:b]`` in buffer rows ``a:b``; returns their ``[h | 1]``."""
        cut = lambda bufs: tuple(x[a:b] for x in bufs)
        cpu.infer_step(self.mode, rows[a:b], items[a:b], new_session[a:b], self.state, self.Wx,
                   self.bx, self.Wh, self.bhn, self.E, self.Wy, self.x0[a:b], self.ones0[a:b],
                   cut(self.hprev), cut(self.hout), cut(self.ones), cut(self.gx), cut(self.gh),
                   cut(self.gates), self.aug[a:b])
        return self.aug[a:b]

    @staticmethod
    def _inputs(rows, items, new_session):
        return (np.ascontiguousarray(rows, np.int64), np.ascontiguousarray(items, np.int32),
                np.ascontiguousarray(new_session, np.bool_))

    def score(self, rows, items, new_session) -> np.ndarray:
        """(R, n_items) float32 scores after clicks ``items`` in slots ``rows``."""
        rows, items, new_session = self._inputs(rows, items, new_session)
        R = len(rows)
        self._grow(R, scores=True)
        return self.output.scores(self._step(0, R, rows, items, new_session), self.out[:R])

    def rank(self, rows, items, new_session, targets, mode: str = "conservative") -> np.ndarray:
        """(R,) float64 ranks of ``targets`` after the clicks (the evaluator's optional ``rank``).

        The rows are split into up to ``n_threads`` blocks; each block's GRU step, scoring
        (fused panel kernels, or a single-threaded BLAS GEMM) and ranking run on one thread
        without the GIL. On small GEMMs this beats multi-threaded BLAS, whose idle workers spin
        while the rest of the step runs. NaN scores raise ``ModelFitError``.
        """
        rows, items, new_session = self._inputs(rows, items, new_session)
        targets = np.asarray(targets, np.int64)
        ranks = np.empty(len(rows), np.float64)
        fused = self.output.fused_rank
        self._grow(len(rows), scores=not fused)

        def block(k, a, b):
            aug = self._step(a, b, rows, items, new_session)
            ranks[a:b] = self.output.rank(aug, targets[a:b], mode,
                                          None if fused else self.out[a:b])

        run_row_blocks(len(rows), self.n_threads, MIN_BLOCK_ROWS, block)
        return ranks


#: fewest rows per thread block of a scorer's ``rank`` (smaller blocks cost more than they save)
MIN_BLOCK_ROWS = 32


def run_row_blocks(n_rows: int, n_threads: int, min_rows: int, block) -> None:
    """Split rows ``0..n_rows-1`` into up to ``n_threads`` contiguous blocks of at least
    ``min_rows`` rows (one block if fewer) and run ``block(k, a, b)`` for block ``k`` = rows
    ``a:b``: block 0 on the calling thread, the others on a shared pool. Returns when all are
    done (an error in any block is raised). ``block`` must release the GIL for the blocks to
    overlap.
    """
    n_blocks = min(max(1, int(n_threads)), max(1, n_rows // min_rows))
    if n_blocks == 1:
        block(0, 0, n_rows)
        return
    edges = np.linspace(0, n_rows, n_blocks + 1).astype(int)
    pool = _pool(n_blocks - 1)
    futures = [pool.submit(block, k, int(edges[k]), int(edges[k + 1]))
               for k in range(1, n_blocks)]
    try:
        block(0, 0, int(edges[1]))
    finally:
        for future in futures:
            future.result()


@functools.lru_cache(maxsize=None)
def _pool(n_workers: int) -> ThreadPoolExecutor:
    """A process-wide thread pool for :func:`run_row_blocks` (threads idle cheaply when unused)."""
    return ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="gru_engine-score")


class _Workspace:
    """Inference buffers of one row block (``cap`` rows), see :func:`.feature_cpu.infer_step`;
    ``out``, the (cap, n_items) score buffer, is made on first use (the fused ranking needs
    none)."""

    def __init__(self, cap: int, width: int, x_width: int, Hc: int):
        dt = np.float32
        z = lambda n: np.zeros(n, dt)
        self.cap = cap
        self.Xf, self.M0f = z(cap * x_width), np.ones(cap * x_width, dt)
        self.HP, self.HO, self.Y = z(cap * width), z(cap * width), z(cap * width)
        self.MK = np.ones(cap * width, dt)
        self.GX, self.GH, self.GA = z(3 * cap * width), z(3 * cap * width), z(3 * cap * width)
        self.aug = np.zeros((cap, Hc + 1), dt)
        self.out = None

    def scores(self, n_items: int) -> np.ndarray:
        if self.out is None:
            self.out = np.zeros((self.cap, n_items), np.float32)
        return self.out


class FeatureScorer:
    """Evaluation scorer (:class:`gru_engine.evaluation.SessionScorer`) over a fitted
    feature-rich model: one step of every subnet for the given slots, then the all-item scores
    ``[h_comb | 1] @ [Wy | By]^T`` of :class:`OutputLayer` into a preallocated buffer
    (valid until the next call). ``rank`` splits a step's rows into up to ``n_threads`` blocks,
    each stepped, scored and ranked on its own thread with its own buffers (as
    :class:`GRUScorer`)."""

    def __init__(self, params: dict, sum_mode: bool, act: int = 0, act_param: float = 0.0,
                 n_threads: int = 1):
        dt = np.float32
        self.p = {k: (np.ascontiguousarray(params[k], dt) if k in ("theta", "T", "Wy", "By",
                                                                     "weights") else params[k])
                  for k in ("theta", "T", "Wy", "By", "weights", "indptr", "indices", "SI", "LI")}
        self.sum_mode = bool(sum_mode)
        self.n_threads = max(1, int(n_threads))
        self.output = OutputLayer(self.p["Wy"], self.p["By"], act, act_param)
        self.n_items = self.output.n_items
        self.Hc = self.p["Wy"].shape[1]
        LI, SI = self.p["LI"], self.p["SI"]
        self.width = int(LI[:, L_H].sum())
        self.x_width = int(SI[:, S_IN].sum())
        self.active = np.ones(SI.shape[0], np.bool_)
        self._ws = []
        self.state = np.zeros((0, self.width), dt)

    def _workspace(self, k: int, R: int) -> _Workspace:
        """Buffers of block ``k`` with room for ``R`` rows (``self._ws`` must have a slot k)."""
        ws = self._ws[k]
        if ws is None or ws.cap < R:
            ws = _Workspace(max(R, 64), self.width, self.x_width, self.Hc)
            self._ws[k] = ws
        return ws

    def begin(self, n_rows: int) -> None:
        """Allocate and zero the hidden states of slots ``0..n_rows-1``."""
        self.state = np.zeros((int(n_rows), self.width), np.float32)

    def _step(self, ws: _Workspace, rows, items, new_session) -> np.ndarray:
        """Step one block of rows in ``ws``; returns their ``[h_comb | 1]``."""
        p = self.p
        feature_cpu.infer_step(p["SI"], p["LI"], self.active, self.sum_mode, rows, items,
                               new_session, self.state, p["indptr"], p["indices"],
                               p["weights"], p["theta"], p["T"], p["Wy"], ws.Xf, ws.M0f, ws.HP,
                               ws.HO, ws.Y, ws.MK, ws.GX, ws.GH, ws.GA, ws.aug)
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

    def rank(self, rows, items, new_session, targets, mode: str = "conservative") -> np.ndarray:
        """(R,) float64 ranks of ``targets`` after the clicks (the evaluator's optional
        ``rank``); NaN scores raise ``ModelFitError``."""
        rows, items, new_session = self._inputs(rows, items, new_session)
        targets = np.asarray(targets, np.int64)
        ranks = np.empty(len(rows), np.float64)
        self._reserve(self.n_threads)

        def block(k, a, b):
            ws = self._workspace(k, b - a)
            aug = self._step(ws, rows[a:b], items[a:b], new_session[a:b])
            out = None if self.output.fused_rank else ws.scores(self.n_items)[:b - a]
            ranks[a:b] = self.output.rank(aug, targets[a:b], mode, out)

        run_row_blocks(len(rows), self.n_threads, MIN_BLOCK_ROWS, block)
        return ranks
