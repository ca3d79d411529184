"""Ranking: the rank of each row's target among all items and the best ``k`` items per row, on
score blocks or fused with the scoring GEMM.

* :func:`rank_targets` — rank of each row's target item among all items, with the official tie
  modes; :func:`top_k` — the best ``k`` items per row. Both run the Cython kernels of
  :mod:`gru_engine._ranking` (one pass per row, no sort, OpenMP over rows).
* :class:`ItemPanels` — a scorer's item matrix packed for the fused score-and-rank kernels
  (C in ``_panels.h``; AVX-512F or AVX2 + FMA tiles, picked at run time): the ranks, or the
  top-k with items excluded per row (:class:`Exclusions`), without writing the
  (rows x n_items) scores. :func:`panels_available` says whether the CPU runs them,
  :func:`panel_path` which tile runs now, and ``ItemPanels.last_path`` which tile ran.

Used by the evaluator (:mod:`gru_engine.evaluation`), the CPU scorers' output layer and
``recommend``.

Threads: the kernels split rows over OpenMP threads when asked (``n_threads=0``: OpenMP's
default, i.e. OMP_NUM_THREADS or all cores; ``n_threads=n``: n threads) but default to 1. One
thread already beats the NumPy expressions they replace several times over (bench/
bench_ranking.py), while idle OpenMP workers spin-wait after each call and compete with the
scorer's BLAS threads and with other processes: on a shared, busy 2-core machine a replay with 2
rank threads ran 30x slower than with 1 (OMP_WAIT_POLICY=passive removes the spinning). Ask for
more threads for large blocks on a dedicated machine.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

from .exceptions import ModelFitError

#: Tie modes of :func:`rank_targets`; ``standard`` is the official name of ``optimistic``.
RANK_MODES = ("conservative", "optimistic", "standard", "median")


def check_rank_mode(mode) -> None:
    """``ValueError`` unless ``mode`` is one of :data:`RANK_MODES` (the tie modes)."""
    if mode not in RANK_MODES:
        raise ValueError(f"unknown rank mode {mode!r}: mode must be one of {list(RANK_MODES)}")


def _kernels():
    try:
        from . import _ranking
    except ImportError as exc:  # a source checkout that was never built
        raise ImportError("gru_engine._ranking is not built; run "
                          "`python setup.py build_ext --inplace` in the source tree") from exc
    return _ranking


# ---------------------------------------------------------------------------------------------
# ranking
# ---------------------------------------------------------------------------------------------
def _score_block(scores, name: str = "scores") -> np.ndarray:
    """``scores`` as a C-contiguous (B, n_items) float32 array (copied only when needed; a
    warning when the dtype changes)."""
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (batch, n_items) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no item column (shape {arr.shape})")
    if arr.shape[1] >= 2**31:
        raise ValueError(f"{name} has {arr.shape[1]} columns; at most 2**31 - 1 are supported")
    if arr.dtype != np.float32:
        warnings.warn(f"{name} converted from {arr.dtype} to float32 (rounding can create ties); "
                      "pass float32 to avoid the copy", stacklevel=3)
    if arr.dtype != np.float32 or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr


def _check_threads(n_threads) -> int:
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 0:
        raise ValueError(f"n_threads must be an integer >= 0 (0 = OpenMP's default), got {n_threads!r}")
    return int(n_threads)


def _raise_on_nan(has_nan: np.ndarray, what: str) -> None:
    if has_nan.any():
        rows = np.flatnonzero(has_nan)
        raise ModelFitError(f"{what}: {len(rows)} of {len(has_nan)} score rows contain NaN "
                            f"(first: row {rows[0]}); the model produced NaN and is refused")


def rank_targets(scores, targets, mode: str = "conservative", n_threads: int = 1) -> np.ndarray:
    """Rank of each row's target item among all items (1 = best).

    scores:  (B, n_items) scores, higher is better. float32 C-contiguous input is used as is;
             anything else (float64, strided, integer) is converted once to a C-contiguous
             float32 copy, with a ``UserWarning`` when the dtype changes (rounding float64 to
             float32 can create ties).
    targets: (B,) integer item indices in ``[0, n_items)``.
    mode:    ``'conservative'`` (default): number of items scoring >= the target (the target
             counts itself, ties count against the model); ``'optimistic'`` (alias
             ``'standard'``): number scoring > the target, plus 1; ``'median'``: halfway
             between the two.
    n_threads: OpenMP threads over rows (module docstring, *Threads*); 0 = OpenMP's default.

    Returns (B,) float64 ranks (whole numbers except in ``median`` mode).
    Raises ``ValueError`` on a bad shape, dtype, target or mode and
    :class:`~gru_engine.exceptions.ModelFitError` when a row contains NaN.
    """
    check_rank_mode(mode)
    n_threads = _check_threads(n_threads)
    block = _score_block(scores)
    batch, n_items = block.shape
    tgt = np.asarray(targets)
    if tgt.ndim != 1 or len(tgt) != batch:
        raise ValueError(f"targets must have shape ({batch},) to match scores {block.shape}, "
                         f"got {tgt.shape}")
    if tgt.dtype.kind not in "iu":
        raise ValueError(f"targets must be integer item indices, got dtype {tgt.dtype}")
    if batch == 0:
        return np.zeros(0, dtype=np.float64)
    lo, hi = tgt.min(), tgt.max()
    if lo < 0 or hi >= n_items:
        bad = lo if lo < 0 else hi
        raise ValueError(f"target item index {bad} is outside [0, {n_items})")
    tgt = np.ascontiguousarray(tgt, dtype=np.int64)
    n_greater = np.empty(batch, dtype=np.int64)
    n_equal = np.empty(batch, dtype=np.int64)
    has_nan = np.empty(batch, dtype=np.uint8)
    _kernels().rank_counts(block, tgt, n_greater, n_equal, has_nan, n_threads)
    return ranks_from_counts(n_greater, n_equal, has_nan, mode, "rank_targets")


def ranks_from_counts(n_greater, n_equal, has_nan, mode: str, what: str) -> np.ndarray:
    """(B,) float64 ranks in tie mode ``mode`` from the counting kernels' outputs: per row the
    items scoring above / equal to the target (int64) and a NaN flag; a row with NaN raises
    ``ModelFitError`` naming ``what``."""
    _raise_on_nan(has_nan, what)
    if mode == "conservative":
        return (n_greater + n_equal).astype(np.float64)
    if mode == "median":
        return n_greater + 0.5 * (n_equal + 1)
    return (n_greater + 1).astype(np.float64)


#: ``gru_engine._ranking.panel_isa()`` level -> name of the path that ran
PANEL_PATHS = {2: "panels-avx512", 1: "panels-avx2"}


class ItemPanels:
    """The all-item output of a scorer, ``S = A @ B`` with ``B`` (K, n_items) float32 (for
    SessionGRU ``[Wy | By]^T``, rows of ``A`` being ``[h | 1]``), packed once into the panels of
    the fused kernels of :mod:`gru_engine._ranking` (a copy of ``B``'s size).

    :meth:`scores` writes ``S``; :meth:`rank` ranks targets among ``S`` without writing it (the
    scores are counted in registers), exactly as :func:`rank_targets` would rank the output of
    :meth:`scores`; :meth:`top_k` keeps each row's best ``k`` as the tiles go by, exactly the
    output of :func:`top_k` on :meth:`scores` (same items, same float32 values, same tie
    order), excluded items scored ``-inf`` as if written into the scores first. Both release the GIL. Usable where :func:`panels_available` is true
    (x86-64 with AVX-512F or AVX2 + FMA; both give identical scores); elsewhere a BLAS GEMM plus
    :func:`rank_targets` does the same job (and both methods raise ``RuntimeError``).

    ``last_path``: the tile that ran the latest call, ``'panels-avx512'`` or ``'panels-avx2'``
    (None before the first call; the ISA is chosen per call, see :func:`panel_path`).
    """

    last_path: str | None = None

    def __init__(self, B):
        B = np.ascontiguousarray(B, dtype=np.float32)
        if B.ndim != 2 or B.shape[0] < 1 or not 1 <= B.shape[1] < 2**31:
            raise ValueError(f"item matrix must be (K >= 1, 1 <= n_items < 2**31), got {B.shape}")
        self.K, self.n_items = B.shape
        cols = _kernels().PANEL_COLUMNS
        #: number of panels (blocks of 32 item columns) the kernels walk
        self.n_panels = -(-self.n_items // cols)
        self.packed = np.empty(self.n_panels * self.K * cols, np.float32)
        _kernels().pack_panels(B, self.packed)

    def _rows(self, A) -> np.ndarray:
        A = np.asarray(A)
        if A.ndim != 2 or A.shape[1] != self.K or A.dtype != np.float32 or not A.flags.c_contiguous:
            raise ValueError(f"A must be a C-contiguous float32 (R, {self.K}) array, got "
                             f"{A.dtype} {A.shape}")
        return A

    def scores(self, A, out) -> np.ndarray:
        """``out[:, :n_items] = A @ B`` (out: (R, >= n_items) float32, C order); returns out."""
        A = self._rows(A)
        if out.shape[0] != A.shape[0] or out.shape[1] < self.n_items or out.dtype != np.float32 \
                or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 ({A.shape[0]}, >= "
                             f"{self.n_items}) array, got {out.dtype} {out.shape}")
        self._ran(_kernels().panel_scores(A, self.packed, self.n_items, out), len(A))
        return out

    def _ran(self, isa: int, n_rows: int) -> None:
        if n_rows == 0:
            return
        if isa not in PANEL_PATHS:
            raise RuntimeError("the panel kernels cannot run on this CPU (panels_available() "
                               "is false); use a BLAS GEMM and rank_targets")
        self.last_path = PANEL_PATHS[isa]

    def target_scores(self, A, targets) -> np.ndarray:
        """(R,) float32 ``(A @ B)[i, targets[i]]``, bit for bit the values :meth:`scores` writes:
        what :meth:`count` compares each row with. targets: (R,) item indices."""
        A = self._rows(A)
        tgt = np.ascontiguousarray(targets, dtype=np.int64)
        if tgt.shape != (A.shape[0],):
            raise ValueError(f"targets must have shape ({A.shape[0]},), got {tgt.shape}")
        if len(tgt) and (tgt.min() < 0 or tgt.max() >= self.n_items):
            raise ValueError(f"target item index outside [0, {self.n_items})")
        t = np.empty(len(tgt), np.float32)
        self._ran(_kernels().panel_target_scores(A, self.packed, tgt, t), len(tgt))
        return t

    def count(self, A, t, n_greater, n_equal, has_nan, panels: tuple | None = None) -> None:
        """Per row ``i`` of ``A @ B``, over the items of panels ``p0 <= p < p1`` (``panels =
        (p0, p1)``, items ``32 p .. 32 p + 31``; None: all :attr:`n_panels`): ADDS the number
        of items scoring above / equal to ``t[i]`` (:meth:`target_scores`) to ``n_greater[i]``
        / ``n_equal[i]`` ((R,) int64) and sets ``has_nan[i]`` ((R,) uint8) where a score is
        NaN. Counts over a split of the panels (e.g. one range per thread) sum to those of
        all items; :func:`ranks_from_counts` turns them into ranks."""
        A = self._rows(A)
        p0, p1 = (0, self.n_panels) if panels is None else (int(panels[0]), int(panels[1]))
        if not 0 <= p0 <= p1 <= self.n_panels:
            raise ValueError(f"panels must be a range within [0, {self.n_panels}], got {panels!r}")
        R = A.shape[0]
        for name, arr, dt in (("t", t, np.float32), ("n_greater", n_greater, np.int64),
                              ("n_equal", n_equal, np.int64), ("has_nan", has_nan, np.uint8)):
            if arr.shape != (R,) or arr.dtype != dt or not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be a contiguous ({R},) {np.dtype(dt)} array, got "
                                 f"{arr.dtype} {arr.shape}")
        self._ran(_kernels().panel_rank_counts(A, self.packed, self.n_items, t, n_greater,
                                               n_equal, has_nan, p0, p1), R)

    def rank(self, A, targets, mode: str = "conservative") -> np.ndarray:
        """(R,) float64 ranks of ``targets`` (R,) among the rows of ``A @ B`` (tie modes of
        :func:`rank_targets`); ``ModelFitError`` when a row holds NaN."""
        check_rank_mode(mode)
        t = self.target_scores(A, targets)
        n = len(t)
        n_greater, n_equal = np.zeros(n, np.int64), np.zeros(n, np.int64)
        has_nan = np.zeros(n, np.uint8)
        self.count(A, t, n_greater, n_equal, has_nan)
        return ranks_from_counts(n_greater, n_equal, has_nan, mode, "ItemPanels.rank")

    def top_k(self, A, k: int, exclude: "Exclusions | None" = None):
        """The ``k`` best items of each row of ``A @ B``, best first, ties to the lower item
        index: ``(indices (R, k) int64, values (R, k) float32)``, equal to :func:`top_k` of
        :meth:`scores` (the scores are never written). ``1 <= k <= n_items``. ``exclude``:
        items scored ``-inf`` per row (:class:`Exclusions` of R rows; they pad a row left with
        fewer than k others, lowest index first). ``ModelFitError`` when a row holds NaN
        (excluded items aside). Per row the cost is one tile pass plus an insertion for each
        item that beats the row's current k-th best (about ``k ln(n_items / k)``): meant for
        k much smaller than n_items (for k near n_items, :meth:`scores` + :func:`top_k`)."""
        A = self._rows(A)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_items:
            raise ValueError(f"k must be an integer in [1, n_items={self.n_items}], got {k!r}")
        R = A.shape[0]
        indices = np.empty((R, int(k)), np.int64)
        values = np.empty((R, int(k)), np.float32)
        if R == 0:
            return indices, values
        has_nan = np.zeros(R, np.uint8)
        if exclude is None:
            isa = _kernels().panel_top_k(A, self.packed, self.n_items, indices, values, has_nan)
        else:
            if not isinstance(exclude, Exclusions) or exclude.n_rows != R \
                    or exclude.n_items != self.n_items:
                raise ValueError(f"exclude must be Exclusions of {R} rows over "
                                 f"{self.n_items} items, got {exclude!r}")
            isa = _kernels().panel_top_k(A, self.packed, self.n_items, indices, values, has_nan,
                                         exclude.indptr, exclude.indices)
        self._ran(isa, R)
        _raise_on_nan(has_nan, "ItemPanels.top_k")
        return indices, values


class Exclusions:
    """Items excluded per row of a top-k call (``-inf`` scores), in compressed rows: row
    ``i``'s items are ``indices[indptr[i]:indptr[i + 1]]``, ascending and distinct, in
    ``[0, n_items)``.

    ``Exclusions(rows, n_items)``: ``rows`` a sequence of one collection of item indices
    (ints) per row (a set, list or array; None or empty: none); entries outside
    ``[0, n_items)`` are dropped (e.g. items a model does not score), duplicates kept once.
    ``exclusions[a:b]``: rows ``a..b-1`` (a view; ``indptr`` keeps offsets into the same
    ``indices``). :meth:`mask` writes ``-inf`` into a score block.
    """

    def __init__(self, rows, n_items: int, _csr=None):
        self.n_items = int(n_items)
        if _csr is not None:
            self.indptr, self.indices = _csr
            return
        rows = [() if r is None else r for r in rows]
        lengths = np.array([len(r) for r in rows], np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
        row_of = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        keep = (flat >= 0) & (flat < self.n_items)
        flat, row_of = flat[keep], row_of[keep]
        order = np.lexsort((flat, row_of))  # by row, then ascending item
        flat, row_of = flat[order], row_of[order]
        first = np.ones(len(flat), bool)  # drop repeats of an item within a row
        first[1:] = (flat[1:] != flat[:-1]) | (row_of[1:] != row_of[:-1])
        self.indices = flat[first]
        self.indptr = np.zeros(len(rows) + 1, np.int64)
        self.indptr[1:] = np.cumsum(np.bincount(row_of[first], minlength=len(rows)))

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, rows: slice) -> "Exclusions":
        a, b, step = rows.indices(self.n_rows)
        if step != 1:
            raise ValueError("Exclusions take contiguous row slices only")
        return Exclusions(None, self.n_items, (self.indptr[a:max(a, b) + 1], self.indices))

    def mask(self, S) -> None:
        """``S[i, excluded items of row i] = -inf`` for a (n_rows, >= n_items) score block."""
        for i in range(self.n_rows):
            cols = self.indices[self.indptr[i]:self.indptr[i + 1]]
            if len(cols):
                S[i, cols] = -np.inf

    def __repr__(self) -> str:
        return (f"Exclusions({self.n_rows} rows, {self.indptr[-1] - self.indptr[0]} items, "
                f"n_items={self.n_items})")


def panels_available() -> bool:
    """True where :class:`ItemPanels` runs: the kernels are built for x86-64 and the CPU has
    AVX-512F or AVX2 + FMA (:func:`panel_path` says which)."""
    return _kernels().panel_isa() > 0


def panel_path() -> str | None:
    """The tile :class:`ItemPanels` runs now: ``'panels-avx512'``, ``'panels-avx2'`` (the CPU's
    best, or a lower one chosen with ``gru_engine._ranking.limit_panel_isa``), None without."""
    return PANEL_PATHS.get(_kernels().panel_isa())


def top_k(scores, k: int, n_threads: int = 1):
    """The ``k`` best items of each row, best first; ties go to the lower item index.

    scores: (B, n_items) scores (converted as in :func:`rank_targets`); ``-inf`` marks items
            that must not be recommended — they are ordinary values here and appear last, so
            callers drop non-finite values from the output if they wish.
    k:      ``1 <= k <= n_items``.
    n_threads: OpenMP threads over rows (module docstring, *Threads*); 0 = OpenMP's default.

    Returns ``(indices, values)``: (B, k) int64 item indices and (B, k) float32 scores.
    Raises ``ValueError`` on a bad shape or k, ``ModelFitError`` when a row contains NaN.
    """
    n_threads = _check_threads(n_threads)
    block = _score_block(scores)
    batch, n_items = block.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_items:
        raise ValueError(f"k must be an integer in [1, n_items={n_items}], got {k!r}")
    indices = np.empty((batch, int(k)), dtype=np.int64)
    values = np.empty((batch, int(k)), dtype=np.float32)
    if batch == 0:
        return indices, values
    has_nan = np.empty(batch, dtype=np.uint8)
    _kernels().top_k_rows(block, indices, values, has_nan, n_threads)
    _raise_on_nan(has_nan, "top_k")
    return indices, values
