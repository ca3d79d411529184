# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Ranking kernels for evaluation and serving (no GIL; OpenMP over rows when built with it).

Low-level: arguments are NOT validated here (the wrappers in :mod:`gru_engine.evaluation` do
that). Every score block is a C-contiguous ``(B, n_items)`` float32 array with ``B >= 1`` and
``1 <= n_items < 2**31``; each row is handled by one thread.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t

cdef extern from *:
    """
    #include <stdint.h>
    /* The two scans that dominate the kernels, in C so that GCC can also build AVX2 clones of
       them, picked at load time on CPUs that have AVX2 (the baseline x86-64 build is SSE2).
       Clones need ifunc, hence glibc. */
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
    #define GRU_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define GRU_SIMD_CLONES
    #endif

    /* Branch-free counts over one row; 32-bit counters keep the lanes as wide as the float32
       lanes, so the loop vectorises into compare + subtract (n < 2**31 is checked by the
       caller). */
    GRU_SIMD_CLONES
    static void gru_count_row(const float *row, Py_ssize_t n, float t, int64_t *n_greater,
                              int64_t *n_equal, uint8_t *has_nan) {
        int gt = 0, eq = 0, nan = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            float s = row[j];
            gt += s > t;
            eq += s == t;
            nan |= s != s;
        }
        *n_greater = gt;
        *n_equal = eq;
        *has_nan = (uint8_t)nan;
    }

    /* Number of scores in row[0:n] that are not <= thr (greater, or NaN). */
    GRU_SIMD_CLONES
    static int gru_count_not_le(const float *row, Py_ssize_t n, float thr) {
        int hits = 0;
        for (Py_ssize_t j = 0; j < n; j++)
            hits += !(row[j] <= thr);
        return hits;
    }

    #ifdef _OPENMP
    #include <omp.h>
    static int gru_openmp_enabled(void) { return 1; }
    static int gru_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int gru_openmp_enabled(void) { return 0; }
    static int gru_max_threads(void) { return 1; }
    #endif
    """
    int gru_openmp_enabled() noexcept nogil
    int gru_max_threads() noexcept nogil
    void gru_count_row(const float* row, Py_ssize_t n, float t, int64_t* n_greater,
                       int64_t* n_equal, uint8_t* has_nan) noexcept nogil
    int gru_count_not_le(const float* row, Py_ssize_t n, float thr) noexcept nogil

cdef extern from *:
    """
    /* All-item scores S = A @ B of a scorer, fused with the ranking. A: (R, K) rows [h | 1];
       B: (K, N) = [Wy | By]^T, stored as "panels": ceil(N/32) blocks of K rows x 32 item
       columns, zero padded, each contiguous. A register tile is 8 rows of A x one panel: 16
       AVX-512 accumulators, every score the chain s = fmaf(A[i,k], B[k,j], s) for k = 0..K-1
       from s = 0. The counting kernel computes each target's score by the same chain, so it is
       bit-identical to the target's own tile entry (ties are counted exactly), and the scores
       kernel writes exactly the values the counting kernel compares. Panels are walked in the
       outer loop and rows in chunks of 256, so a chunk of A stays in L2 while each panel is
       read once per chunk. x86-64 with GCC/Clang only; the tile runs with AVX-512F (8 rows x
       32 items) or AVX2+FMA (4 rows x 16 items, four per 8 x 32 block), picked at run time
       (gru_panel_isa); both compute the same chains, so they give identical scores. Without
       either, callers use BLAS. */
    #include <stdint.h>
    #include <stdlib.h>
    #include <math.h>
    #define GRU_MR 8
    #define GRU_NR 32
    #define GRU_ROW_CHUNK 256
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #define GRU_PANELS 1
    #include <immintrin.h>
    #else
    #define GRU_PANELS 0
    #endif

    /* 2: AVX-512F, 1: AVX2 + FMA, 0: no panel kernels. Detected once; tests may lower it. */
    static int gru_panel_isa_level = -1;

    static int gru_panel_isa_detected(void) {
    #if GRU_PANELS
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f")) return 2;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    #endif
        return 0;
    }

    static int gru_panel_isa(void) {
        if (gru_panel_isa_level < 0) gru_panel_isa_level = gru_panel_isa_detected();
        return gru_panel_isa_level;
    }

    /* Use at most `level` (never more than the CPU has); returns the level now in use. */
    static int gru_panel_limit_isa(int level) {
        int have = gru_panel_isa_detected();
        gru_panel_isa_level = level < have ? (level < 0 ? 0 : level) : have;
        return gru_panel_isa_level;
    }

    static void gru_pack_panels(const float *B, Py_ssize_t K, Py_ssize_t N, float *Bp) {
        Py_ssize_t n_panels = (N + GRU_NR - 1) / GRU_NR;
        for (Py_ssize_t p = 0; p < n_panels; p++)
            for (Py_ssize_t k = 0; k < K; k++)
                for (Py_ssize_t c = 0; c < GRU_NR; c++) {
                    Py_ssize_t j = p * GRU_NR + c;
                    Bp[(p * K + k) * GRU_NR + c] = j < N ? B[k * N + j] : 0.0f;
                }
    }

    #if GRU_PANELS
    /* One tile: rows a[0..7] (rows >= mr repeat a valid row; their results are dropped),
       panel bp (K x 32), live columns m0 | m1. out != NULL: store the scores (row r at
       out + r * ldc); else count per row against t[r]. */
    __attribute__((target("avx512f,fma")))
    static void gru_tile(const float *const *a, Py_ssize_t K, const float *bp, __mmask16 m0,
                         __mmask16 m1, int mr, float *out, Py_ssize_t ldc, const float *t,
                         int *gt, int *eq, int *nan) {
        __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps();
        __m512 c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
        __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps();
        __m512 c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
        __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps();
        __m512 c71 = _mm512_setzero_ps();
        const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
        const float *a4 = a[4], *a5 = a[5], *a6 = a[6], *a7 = a[7];
        for (Py_ssize_t k = 0; k < K; k++) {
            __m512 b0 = _mm512_loadu_ps(bp + k * GRU_NR), b1 = _mm512_loadu_ps(bp + k * GRU_NR + 16);
            __m512 x;
            x = _mm512_set1_ps(a0[k]); c00 = _mm512_fmadd_ps(x, b0, c00); c01 = _mm512_fmadd_ps(x, b1, c01);
            x = _mm512_set1_ps(a1[k]); c10 = _mm512_fmadd_ps(x, b0, c10); c11 = _mm512_fmadd_ps(x, b1, c11);
            x = _mm512_set1_ps(a2[k]); c20 = _mm512_fmadd_ps(x, b0, c20); c21 = _mm512_fmadd_ps(x, b1, c21);
            x = _mm512_set1_ps(a3[k]); c30 = _mm512_fmadd_ps(x, b0, c30); c31 = _mm512_fmadd_ps(x, b1, c31);
            x = _mm512_set1_ps(a4[k]); c40 = _mm512_fmadd_ps(x, b0, c40); c41 = _mm512_fmadd_ps(x, b1, c41);
            x = _mm512_set1_ps(a5[k]); c50 = _mm512_fmadd_ps(x, b0, c50); c51 = _mm512_fmadd_ps(x, b1, c51);
            x = _mm512_set1_ps(a6[k]); c60 = _mm512_fmadd_ps(x, b0, c60); c61 = _mm512_fmadd_ps(x, b1, c61);
            x = _mm512_set1_ps(a7[k]); c70 = _mm512_fmadd_ps(x, b0, c70); c71 = _mm512_fmadd_ps(x, b1, c71);
        }
    #define GRU_TILE_ROW(r, x0, x1) \
        if (r < mr) { \
            if (out) { \
                _mm512_mask_storeu_ps(out + r * ldc, m0, x0); \
                _mm512_mask_storeu_ps(out + r * ldc + 16, m1, x1); \
            } else { \
                __m512 tv = _mm512_set1_ps(t[r]); \
                gt[r] += __builtin_popcount(_mm512_mask_cmp_ps_mask(m0, x0, tv, _CMP_GT_OQ)) \
                       + __builtin_popcount(_mm512_mask_cmp_ps_mask(m1, x1, tv, _CMP_GT_OQ)); \
                eq[r] += __builtin_popcount(_mm512_mask_cmp_ps_mask(m0, x0, tv, _CMP_EQ_OQ)) \
                       + __builtin_popcount(_mm512_mask_cmp_ps_mask(m1, x1, tv, _CMP_EQ_OQ)); \
                nan[r] |= (_mm512_mask_cmp_ps_mask(m0, x0, x0, _CMP_UNORD_Q) \
                           | _mm512_mask_cmp_ps_mask(m1, x1, x1, _CMP_UNORD_Q)) != 0; \
            } \
        }
        GRU_TILE_ROW(0, c00, c01) GRU_TILE_ROW(1, c10, c11) GRU_TILE_ROW(2, c20, c21)
        GRU_TILE_ROW(3, c30, c31) GRU_TILE_ROW(4, c40, c41) GRU_TILE_ROW(5, c50, c51)
        GRU_TILE_ROW(6, c60, c61) GRU_TILE_ROW(7, c70, c71)
    #undef GRU_TILE_ROW
    }

    /* AVX2 tile: rows a[0..3] x 16 columns of a panel (bp: the panel's first column of the
       half, row stride 32), live columns `live` (bit c = column c); otherwise as gru_tile. */
    __attribute__((target("avx2,fma")))
    static void gru_tile_avx2(const float *const *a, Py_ssize_t K, const float *bp,
                              unsigned live, int mr, float *out, Py_ssize_t ldc, const float *t,
                              int *gt, int *eq, int *nan) {
        __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps();
        __m256 c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
        __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
        const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
        for (Py_ssize_t k = 0; k < K; k++) {
            __m256 b0 = _mm256_loadu_ps(bp + k * GRU_NR), b1 = _mm256_loadu_ps(bp + k * GRU_NR + 8);
            __m256 x;
            x = _mm256_broadcast_ss(a0 + k); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
            x = _mm256_broadcast_ss(a1 + k); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
            x = _mm256_broadcast_ss(a2 + k); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
            x = _mm256_broadcast_ss(a3 + k); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        }
        unsigned l0 = live & 0xFF, l1 = (live >> 8) & 0xFF;
    #define GRU_TILE2_ROW(r, x0, x1) \
        if (r < mr) { \
            if (out) { \
                float tmp[16]; \
                _mm256_storeu_ps(tmp, x0); \
                _mm256_storeu_ps(tmp + 8, x1); \
                for (int c = 0; c < 16; c++) \
                    if (live >> c & 1u) out[r * ldc + c] = tmp[c]; \
            } else { \
                __m256 tv = _mm256_set1_ps(t[r]); \
                gt[r] += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(x0, tv, _CMP_GT_OQ)) & l0) \
                       + __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(x1, tv, _CMP_GT_OQ)) & l1); \
                eq[r] += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(x0, tv, _CMP_EQ_OQ)) & l0) \
                       + __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(x1, tv, _CMP_EQ_OQ)) & l1); \
                nan[r] |= ((_mm256_movemask_ps(_mm256_cmp_ps(x0, x0, _CMP_UNORD_Q)) & l0) \
                           | (_mm256_movemask_ps(_mm256_cmp_ps(x1, x1, _CMP_UNORD_Q)) & l1)) != 0; \
            } \
        }
        GRU_TILE2_ROW(0, c00, c01) GRU_TILE2_ROW(1, c10, c11) GRU_TILE2_ROW(2, c20, c21)
        GRU_TILE2_ROW(3, c30, c31)
    #undef GRU_TILE2_ROW
    }

    /* The loop shared by both kernels (out != NULL: scores; else counts, see gru_tile); no
       target attribute: it runs on every x86-64 CPU and calls the tile of the chosen ISA. */
    static void gru_panel_loop(const float *A, Py_ssize_t R, Py_ssize_t K, const float *Bp,
                               Py_ssize_t N, float *out, Py_ssize_t ldc, const float *t,
                               int *gt, int *eq, int *nan) {
        Py_ssize_t n_panels = (N + GRU_NR - 1) / GRU_NR;
        int isa = gru_panel_isa();
        for (Py_ssize_t r0 = 0; r0 < R; r0 += GRU_ROW_CHUNK) {
            Py_ssize_t r1 = R - r0 < GRU_ROW_CHUNK ? R : r0 + GRU_ROW_CHUNK;
            for (Py_ssize_t p = 0; p < n_panels; p++) {
                Py_ssize_t live = N - p * GRU_NR < GRU_NR ? N - p * GRU_NR : GRU_NR;
                __mmask16 m0 = live >= 16 ? 0xFFFF : (__mmask16)((1u << live) - 1);
                __mmask16 m1 = live >= 32 ? 0xFFFF
                             : (live > 16 ? (__mmask16)((1u << (live - 16)) - 1) : 0);
                for (Py_ssize_t i0 = r0; i0 < r1; i0 += GRU_MR) {
                    int mr = r1 - i0 < GRU_MR ? (int)(r1 - i0) : GRU_MR;
                    const float *a[GRU_MR];
                    for (int r = 0; r < GRU_MR; r++)
                        a[r] = A + (i0 + (r < mr ? r : mr - 1)) * K;
                    const float *bp = Bp + p * K * GRU_NR;
                    if (isa == 2) {
                        gru_tile(a, K, bp, m0, m1, mr,
                                 out ? out + i0 * ldc + p * GRU_NR : NULL, ldc,
                                 t ? t + i0 : NULL, gt ? gt + i0 : NULL,
                                 eq ? eq + i0 : NULL, nan ? nan + i0 : NULL);
                        continue;
                    }
                    for (int h = 0; h < 2; h++) {         /* rows 0-3, 4-7 */
                        int hr = mr - 4 * h;
                        if (hr <= 0) break;
                        for (int q = 0; q < 2; q++) {     /* columns 0-15, 16-31 */
                            unsigned live = q == 0 ? (unsigned)m0 : (unsigned)m1;
                            if (!live) continue;
                            Py_ssize_t i = i0 + 4 * h, c = p * GRU_NR + 16 * q;
                            gru_tile_avx2(a + 4 * h, K, bp + 16 * q, live, hr < 4 ? hr : 4,
                                          out ? out + i * ldc + c : NULL, ldc,
                                          t ? t + i : NULL, gt ? gt + i : NULL,
                                          eq ? eq + i : NULL, nan ? nan + i : NULL);
                        }
                    }
                }
            }
        }
    }
    #endif

    /* S[i, j] for all items into out (R rows, row stride ldc >= N). */
    static void gru_panel_scores(const float *A, Py_ssize_t R, Py_ssize_t K, const float *Bp,
                                 Py_ssize_t N, float *out, Py_ssize_t ldc) {
    #if GRU_PANELS
        gru_panel_loop(A, R, K, Bp, N, out, ldc, NULL, NULL, NULL, NULL);
    #endif
    }

    /* Per row i: #{j: S[i,j] > S[i,t_i]}, #{j: S[i,j] == S[i,t_i]}, any NaN. Returns -1 when
       out of memory, else 0. */
    static int gru_panel_rank_counts(const float *A, Py_ssize_t R, Py_ssize_t K,
                                     const float *Bp, Py_ssize_t N, const int64_t *targets,
                                     int64_t *n_greater, int64_t *n_equal, uint8_t *has_nan) {
    #if GRU_PANELS
        float *t = (float *)calloc((size_t)R, sizeof(float));
        int *cnt = (int *)calloc(3 * (size_t)R, sizeof(int));
        if (!t || !cnt) { free(t); free(cnt); return -1; }
        for (Py_ssize_t i = 0; i < R; i++) {
            Py_ssize_t j = targets[i], p = j / GRU_NR, c = j % GRU_NR;
            float s = 0.0f;
            for (Py_ssize_t k = 0; k < K; k++)
                s = fmaf(A[i * K + k], Bp[(p * K + k) * GRU_NR + c], s);
            t[i] = s;
        }
        gru_panel_loop(A, R, K, Bp, N, NULL, 0, t, cnt, cnt + R, cnt + 2 * R);
        for (Py_ssize_t i = 0; i < R; i++) {
            n_greater[i] = cnt[i];
            n_equal[i] = cnt[R + i];
            has_nan[i] = (uint8_t)cnt[2 * R + i];
        }
        free(t);
        free(cnt);
    #endif
        return 0;
    }
    """
    int gru_panel_isa() noexcept nogil
    int gru_panel_limit_isa(int level) noexcept nogil
    void gru_pack_panels(const float* B, Py_ssize_t K, Py_ssize_t N, float* Bp) noexcept nogil
    void gru_panel_scores(const float* A, Py_ssize_t R, Py_ssize_t K, const float* Bp,
                          Py_ssize_t N, float* out, Py_ssize_t ldc) noexcept nogil
    int gru_panel_rank_counts(const float* A, Py_ssize_t R, Py_ssize_t K, const float* Bp,
                              Py_ssize_t N, const int64_t* targets, int64_t* n_greater,
                              int64_t* n_equal, uint8_t* has_nan) noexcept nogil

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
# fused scoring + ranking over item panels (AVX-512; see the C block above)
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
                 float[:, ::1] out):
    """``out[:R, :n_items] = A @ B`` for ``A`` (R, K), the packed ``Bp`` of a (K, n_items) B."""
    if A.shape[0] == 0:
        return
    with nogil:
        gru_panel_scores(&A[0, 0], A.shape[0], A.shape[1], &Bp[0], n_items, &out[0, 0],
                         out.shape[1])


def panel_rank_counts(const float[:, ::1] A, const float[::1] Bp, Py_ssize_t n_items,
                      const int64_t[::1] targets, int64_t[::1] n_greater,
                      int64_t[::1] n_equal, uint8_t[::1] has_nan):
    """:func:`rank_counts` of the scores ``A @ B`` without forming them (see the C block)."""
    cdef int status = 0
    if A.shape[0] == 0:
        return
    with nogil:
        status = gru_panel_rank_counts(&A[0, 0], A.shape[0], A.shape[1], &Bp[0], n_items,
                                       &targets[0], &n_greater[0], &n_equal[0], &has_nan[0])
    if status != 0:
        raise MemoryError("panel_rank_counts: out of memory")
