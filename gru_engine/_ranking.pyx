# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Ranking kernels for evaluation and serving (no GIL; OpenMP over rows when built with it).

Low-level: arguments are NOT validated here (the wrappers in :mod:`gru_engine.ranking` do
that). The C of the scans is in ``_scan.h``, that of the fused panel kernels in ``_panels.h``. Every score block is a C-contiguous ``(B, n_items)`` float32 array with ``B >= 1`` and
``1 <= n_items < 2**31``; each row is handled by one thread.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t

cdef extern from "_scan.h":
    int gru_openmp_enabled() noexcept nogil
    int gru_max_threads() noexcept nogil
    void gru_count_row(const float* row, Py_ssize_t n, float t, int64_t* n_greater,
                       int64_t* n_equal, uint8_t* has_nan) noexcept nogil
    int gru_count_not_le(const float* row, Py_ssize_t n, float thr) noexcept nogil

cdef extern from "_panels.h":
    int gru_panel_isa() noexcept nogil
    int gru_panel_limit_isa(int level) noexcept nogil
    void gru_pack_panels(const float* B, Py_ssize_t K, Py_ssize_t N, float* Bp) noexcept nogil
    int gru_panel_scores(const float* A, Py_ssize_t R, Py_ssize_t K, const float* Bp,
                          Py_ssize_t N, float* out, Py_ssize_t ldc) noexcept nogil
    int gru_panel_target_scores(const float* A, Py_ssize_t R, Py_ssize_t K, const float* Bp,
                                const int64_t* targets, float* t) noexcept nogil
    int gru_panel_rank_counts(const float* A, Py_ssize_t R, Py_ssize_t K, const float* Bp,
                              Py_ssize_t N, const float* t, Py_ssize_t p0, Py_ssize_t p1,
                              int64_t* n_greater, int64_t* n_equal, uint8_t* has_nan) noexcept nogil
    int gru_panel_top_k(const float* A, Py_ssize_t R, Py_ssize_t K, const float* Bp,
                        Py_ssize_t N, Py_ssize_t k, const int64_t* excl_ptr,
                        const int64_t* excl, int64_t* idx, float* val,
                        uint8_t* has_nan) noexcept nogil

# Calls with fewer scores than this stay on the calling thread (waking a team is not free).
cdef Py_ssize_t _PARALLEL_MIN_WORK = 1 << 16
# Top-k scans a row in chunks of this many scores; see _top_k_row.
cdef enum:
    _TOP_K_CHUNK = 32


def openmp_enabled() -> bool:
    """True when the extension was compiled with OpenMP (rows are processed in parallel)."""
    return bool(gru_openmp_enabled())


def max_threads() -> int:
    """Threads a kernel uses with ``n_threads=0`` (OpenMP's default; 1 without OpenMP)."""
    return gru_max_threads()


cdef inline int _n_threads(int requested) noexcept nogil:
    return requested if requested > 0 else gru_max_threads()


cdef inline Py_ssize_t _rows_per_chunk(Py_ssize_t n) noexcept nogil:
    # Dynamic scheduling in chunks of about 16k scores: cheap to hand out, and a thread that
    # shares its core with another process does not hold the whole call back.
    return 1 + (1 << 14) // n


# ---------------------------------------------------------------------------------------------
# rank: one pass per row, branch-free counting
# ---------------------------------------------------------------------------------------------
def rank_counts(const float[:, ::1] scores, const int64_t[::1] targets,
                int64_t[::1] n_greater, int64_t[::1] n_equal, uint8_t[::1] has_nan,
                int n_threads=0):
    """Per row ``i``: items scoring above / equal to ``scores[i, targets[i]]``, and a NaN flag.

    scores:    (B, n_items) float32, C-contiguous
    targets:   (B,) int64 in ``[0, n_items)`` (not checked here)
    n_greater: (B,) int64 out, ``#{j: scores[i, j] > scores[i, targets[i]]}``
    n_equal:   (B,) int64 out, ``#{j: scores[i, j] == scores[i, targets[i]]}`` (the target
               itself included unless its score is NaN)
    has_nan:   (B,) uint8 out, 1 where row ``i`` holds a NaN (its counts are then meaningless)
    n_threads: OpenMP threads, 0 = OpenMP's default
    """
    cdef Py_ssize_t B = scores.shape[0]
    cdef Py_ssize_t n = scores.shape[1]
    cdef Py_ssize_t i
    cdef int nt = _n_threads(n_threads)
    cdef bint parallel = nt > 1 and B > 1 and B * n >= _PARALLEL_MIN_WORK
    if B == 0 or n == 0:
        return
    with nogil:
        for i in prange(B, num_threads=nt, schedule="dynamic", chunksize=_rows_per_chunk(n),
                       use_threads_if=parallel):
            gru_count_row(&scores[i, 0], n, scores[i, targets[i]],
                          &n_greater[i], &n_equal[i], &has_nan[i])


# ---------------------------------------------------------------------------------------------
# top-k: size-k heap per row (root = the worst kept entry), then an in-place heap sort
# ---------------------------------------------------------------------------------------------
cdef inline bint _worse(float va, int64_t ia, float vb, int64_t ib) noexcept nogil:
    # Order of the output: higher score first, then lower item index first.
    return va < vb or (va == vb and ia > ib)


cdef inline void _sift_down(float* v, int64_t* idx, Py_ssize_t size, Py_ssize_t pos) noexcept nogil:
    cdef float tv = v[pos]
    cdef int64_t ti = idx[pos]
    cdef Py_ssize_t child
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(v[child + 1], idx[child + 1], v[child], idx[child]):
            child += 1
        if not _worse(v[child], idx[child], tv, ti):
            break
        v[pos] = v[child]
        idx[pos] = idx[child]
        pos = child
    v[pos] = tv
    idx[pos] = ti


cdef inline void _top_k_row(const float* row, Py_ssize_t n, Py_ssize_t k, float* v,
                            int64_t* idx, uint8_t* has_nan) noexcept nogil:
    cdef Py_ssize_t j, p, start, end
    cdef float s, thr, tv
    cdef int64_t ti
    cdef int nan = 0
    for j in range(k):
        s = row[j]
        v[j] = s
        idx[j] = j
        nan |= s != s
    p = k // 2
    while p > 0:
        p -= 1
        _sift_down(v, idx, k, p)
    thr = v[0]
    start = k
    while start < n:
        end = start + _TOP_K_CHUNK if n - start > _TOP_K_CHUNK else n
        # Branch-free (vectorised) test first: most chunks hold nothing better than the worst
        # kept entry once the heap has filled up; NaN fails `s <= thr` too.
        if gru_count_not_le(row + start, end - start, thr):
            for j in range(start, end):
                s = row[j]
                # Items come in increasing index order, so an item tying with the worst kept
                # one loses the tie: only a strictly higher score enters.
                if not (s <= thr):
                    if s != s:
                        nan = 1
                        continue
                    v[0] = s
                    idx[0] = j
                    _sift_down(v, idx, k, 0)
                    thr = v[0]
        start = end
    # Heap sort: moving the worst to the back leaves the row ordered best first.
    p = k - 1
    while p > 0:
        tv = v[0]
        ti = idx[0]
        v[0] = v[p]
        idx[0] = idx[p]
        v[p] = tv
        idx[p] = ti
        _sift_down(v, idx, p, 0)
        p -= 1
    has_nan[0] = nan


def top_k_rows(const float[:, ::1] scores, int64_t[:, ::1] indices, float[:, ::1] values,
               uint8_t[::1] has_nan, int n_threads=0):
    """Per row: the ``k`` largest scores, best first, ties to the lower item index.

    scores:  (B, n_items) float32, C-contiguous; -inf entries are ordinary (excluded) values
    indices: (B, k) int64 out, ``1 <= k <= n_items`` (not checked here)
    values:  (B, k) float32 out
    has_nan: (B,) uint8 out, 1 where row ``i`` holds a NaN (its output is then meaningless)
    n_threads: OpenMP threads, 0 = OpenMP's default
    """
    cdef Py_ssize_t B = scores.shape[0]
    cdef Py_ssize_t n = scores.shape[1]
    cdef Py_ssize_t k = indices.shape[1]
    cdef Py_ssize_t i
    cdef int nt = _n_threads(n_threads)
    cdef bint parallel = nt > 1 and B > 1 and B * n >= _PARALLEL_MIN_WORK
    if B == 0 or n == 0 or k == 0:
        return
    with nogil:
        for i in prange(B, num_threads=nt, schedule="dynamic", chunksize=_rows_per_chunk(n),
                       use_threads_if=parallel):
            _top_k_row(&scores[i, 0], n, k, &values[i, 0], &indices[i, 0], &has_nan[i])


# ---------------------------------------------------------------------------------------------
# fused scoring + ranking over item panels (AVX-512F / AVX2 + FMA tiles; C in _panels.h)
# ---------------------------------------------------------------------------------------------
PANEL_COLUMNS = 32


def panel_isa() -> int:
    """Instruction set of the panel kernels in use: 2 AVX-512F, 1 AVX2+FMA, 0 none (BLAS)."""
    return gru_panel_isa()


def limit_panel_isa(int level) -> int:
    """Use at most ``level`` (2, 1 or 0; never more than the CPU has); returns the level in
    use. For tests and comparisons: the levels compute identical scores."""
    return gru_panel_limit_isa(level)


def pack_panels(const float[:, ::1] B, float[::1] Bp):
    """Pack ``B`` (K, N) into ``Bp`` (ceil(N/32) * K * 32,) panels of 32 columns, zero padded."""
    with nogil:
        gru_pack_panels(&B[0, 0], B.shape[0], B.shape[1], &Bp[0])


def panel_scores(const float[:, ::1] A, const float[::1] Bp, Py_ssize_t n_items,
                 float[:, ::1] out) -> int:
    """``out[:R, :n_items] = A @ B`` for ``A`` (R, K), the packed ``Bp`` of a (K, n_items) B.
    Returns the ISA level of the tile that ran (as :func:`panel_isa`; 0 for no rows)."""
    cdef int isa = 0
    if A.shape[0] == 0:
        return 0
    with nogil:
        isa = gru_panel_scores(&A[0, 0], A.shape[0], A.shape[1], &Bp[0], n_items, &out[0, 0],
                               out.shape[1])
    return isa


def panel_target_scores(const float[:, ::1] A, const float[::1] Bp,
                        const int64_t[::1] targets, float[::1] t) -> int:
    """``t[i] = (A @ B)[i, targets[i]]`` (R,), bit for bit the value the tiles compute, for
    :func:`panel_rank_counts`. Returns the ISA level of the tiles (as :func:`panel_isa`; 0 for
    no rows, or no tile: t not written)."""
    cdef int isa = 0
    if A.shape[0] == 0:
        return 0
    with nogil:
        isa = gru_panel_target_scores(&A[0, 0], A.shape[0], A.shape[1], &Bp[0], &targets[0],
                                      &t[0])
    return isa


def panel_rank_counts(const float[:, ::1] A, const float[::1] Bp, Py_ssize_t n_items,
                      const float[::1] t, int64_t[::1] n_greater, int64_t[::1] n_equal,
                      uint8_t[::1] has_nan, Py_ssize_t first_panel, Py_ssize_t end_panel) -> int:
    """:func:`rank_counts` of the scores ``A @ B`` without forming them (_panels.h), over the
    items of panels ``first_panel <= p < end_panel`` (columns ``32 p .. 32 p + 31``; ``0 <=
    first_panel <= end_panel <= ceil(n_items / 32)``, not checked here), against ``t`` of
    :func:`panel_target_scores`: ADDS the counts to ``n_greater`` / ``n_equal`` and ORs the
    NaN flags into ``has_nan`` (so that a split of the panels sums to the whole). Returns the
    ISA level of the tile that ran (as :func:`panel_isa`; 0 for no rows)."""
    cdef int isa = 0
    if A.shape[0] == 0:
        return 0
    with nogil:
        isa = gru_panel_rank_counts(&A[0, 0], A.shape[0], A.shape[1], &Bp[0], n_items, &t[0],
                                    first_panel, end_panel, &n_greater[0], &n_equal[0],
                                    &has_nan[0])
    if isa < 0:
        raise MemoryError("panel_rank_counts: out of memory")
    return isa


def panel_top_k(const float[:, ::1] A, const float[::1] Bp, Py_ssize_t n_items,
                int64_t[:, ::1] indices, float[:, ::1] values, uint8_t[::1] has_nan,
                const int64_t[::1] excl_ptr=None, const int64_t[::1] excl=None) -> int:
    """:func:`top_k_rows` of the scores ``A @ B`` without forming them (_panels.h): per row the
    ``k = indices.shape[1]`` best (``1 <= k <= n_items``), best first, ties to the lower index.
    ``excl_ptr`` (R + 1,) / ``excl``: per row ``i`` the excluded items
    ``excl[excl_ptr[i]:excl_ptr[i + 1]]``, ascending, in ``[0, n_items)`` (not checked here),
    scored ``-inf``; None: none. Returns the ISA level of the tile that ran (as
    :func:`panel_isa`; 0 for no rows)."""
    cdef int isa = 0
    cdef const int64_t* ep = NULL
    cdef const int64_t* ex = NULL
    cdef int64_t empty = 0
    if A.shape[0] == 0:
        return 0
    if excl_ptr is not None:
        ep = &excl_ptr[0]
        ex = &excl[0] if excl.shape[0] > 0 else &empty
    with nogil:
        isa = gru_panel_top_k(&A[0, 0], A.shape[0], A.shape[1], &Bp[0], n_items,
                              indices.shape[1], ep, ex, &indices[0, 0], &values[0, 0],
                              &has_nan[0])
    if isa < 0:
        raise MemoryError("panel_top_k: out of memory")
    return isa
