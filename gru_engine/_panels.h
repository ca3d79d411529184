/* _panels.h: the fused score-and-rank panel kernels of _ranking.pyx (AVX-512F and AVX2 + FMA
   tiles, ISA picked at run time). Included by _ranking.pyx (cdef extern from "_panels.h") */
#ifndef GRU_ENGINE_PANELS_H
#define GRU_ENGINE_PANELS_H

#include <stddef.h>
/* All-item scores S = A @ B of a scorer, fused with the ranking. A: (R, K) rows [h | 1];
   B: (K, N) = [Wy | By]^T, stored as "panels": ceil(N/32) blocks of 32 item columns, each
   two contiguous K x 16 halves, zero padded. Every score is the chain
   s = fmaf(A[i,k], B[k,j], s) for k = 0..K-1 from s = 0, whatever the tile: the counting
   kernel computes each target's score by the same chain, so it is bit-identical to the
   target's own tile entry (ties are counted exactly), and the scores kernel writes exactly
   the values the counting kernel compares; the top-k kernel keeps, per row, the k best of
   those same values (see gru_topk) without writing the row. Tiles (ISA picked at run time, gru_panel_isa):
   AVX-512F 8 rows x 32 items (16 zmm accumulators); AVX2 + FMA 6 rows x 16 items (12 ymm
   accumulators; 4-, 2- and 1-row tiles for the last rows), walking one half panel over all
   rows of a chunk so that the half (K x 64 bytes) stays in L1/L2. Rows go in chunks of 256
   (the chunk of A stays in L2), panels in groups that every row chunk meets in turn (B
   streams from memory once per call, see GRU_PANEL_GROUP). x86-64 with
   GCC/Clang only; without AVX2 + FMA callers use BLAS. */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#define GRU_MR 8
#define GRU_NR 32
#define GRU_HALF 16
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

/* B (K, N) row-major -> panels of 32 columns, each two contiguous K x 16 halves (so that a
   16-wide AVX2 tile reads one contiguous stream), zero padded. */
static void gru_pack_panels(const float *B, ptrdiff_t K, ptrdiff_t N, float *Bp) {
    ptrdiff_t n_halves = 2 * ((N + GRU_NR - 1) / GRU_NR);
    for (ptrdiff_t q = 0; q < n_halves; q++)
        for (ptrdiff_t k = 0; k < K; k++)
            for (ptrdiff_t c = 0; c < GRU_HALF; c++) {
                ptrdiff_t j = q * GRU_HALF + c;
                Bp[(q * K + k) * GRU_HALF + c] = j < N ? B[k * N + j] : 0.0f;
            }
}

/* The k best items of each row, kept while the tiles go by (gru_panel_top_k). Per row i k
   (value, index) entries in val/idx + i * k (a sorted array or a heap, gru_topk_insert),
   in the order of the top_k kernel of _ranking.pyx: higher score first, then lower index.
   thr[i] is the worst kept score once the row holds k (NaN while it fills): a tile passes a
   lane on only when its score is not <= thr[i] (greater, or NaN), so that nearly every tile
   only compares. A row meets its items in increasing index order (the panels go left to
   right, a tile's lanes too), so an item that ties with the worst kept one loses to it and only a
   strictly greater score enters: the result is the exact top k of the row under that order.
   Excluded items (excl[excl_ptr[i] .. excl_ptr[i + 1]), ascending, per row; excl NULL:
   none) count as -inf, as the -inf a caller writes into a score row before top_k, so they
   pad a row that has fewer than k other items; cursor[i] walks row i's list as its items go
   by. nan[i]: a (not excluded) NaN score was seen. */
typedef struct {
    ptrdiff_t k;
    float *val;
    int64_t *idx;
    float *thr;
    int *fill;
    const int64_t *excl_ptr, *excl;
    int64_t *cursor;
    int *nan;
} gru_topk;

/* Where a tile's results go: scores into out (row stride ldc); else counts against t (gt,
   eq, nan per row, see gru_panel_rank_counts); else, with top != NULL, the top-k heaps. */
typedef struct {
    float *out;
    ptrdiff_t ldc;
    const float *t;
    int *gt, *eq, *nan;
    gru_topk *top;
} gru_sink;

#if GRU_PANELS
/* a worse than b in the output order (lower score, or equal score and higher index) */
static inline int gru_topk_worse(float va, int64_t ia, float vb, int64_t ib) {
    return va < vb || (va == vb && ia > ib);
}

static void gru_topk_sift_down(float *v, int64_t *idx, ptrdiff_t size, ptrdiff_t pos) {
    float tv = v[pos];
    int64_t ti = idx[pos];
    for (;;) {
        ptrdiff_t child = 2 * pos + 1;
        if (child >= size) break;
        if (child + 1 < size && gru_topk_worse(v[child + 1], idx[child + 1], v[child], idx[child]))
            child++;
        if (!gru_topk_worse(v[child], idx[child], tv, ti)) break;
        v[pos] = v[child];
        idx[pos] = idx[child];
        pos = child;
    }
    v[pos] = tv;
    idx[pos] = ti;
}

/* Is column j excluded from row i? Calls for one row come in increasing j. */
static inline int gru_topk_excluded(gru_topk *tp, ptrdiff_t i, int64_t j) {
    int64_t c = tp->cursor[i], end = tp->excl_ptr[i + 1];
    while (c < end && tp->excl[c] < j) c++;
    tp->cursor[i] = c;
    return c < end && tp->excl[c] == j;
}

/* Row i's kept entries for k <= GRU_TOPK_SORTED_MAX: an array sorted in the output order
   (best first, worst last), m entries so far; x (of a higher index than all of them) goes
   after every entry scoring >= x, the worse ones move back one place (an insertion sort
   step: a short, mostly predictable loop where the heap's sift-down mispredicts at every
   level; measured faster than the heap up to k ~ 200 of 40k items). Larger k: a heap,
   root = worst, built once full and heap-sorted in gru_topk_finish. Returns the new threshold (NaN while the row fills). */
#define GRU_TOPK_SORTED_MAX 128
static inline float gru_topk_insert(float *v, int64_t *ix, ptrdiff_t k, int m, float x,
                                    int64_t j) {
    if (k <= GRU_TOPK_SORTED_MAX) {
        ptrdiff_t p = m < k ? m : k - 1;  /* full: the worst entry drops out */
        while (p > 0 && v[p - 1] < x) {
            v[p] = v[p - 1];
            ix[p] = ix[p - 1];
            p--;
        }
        v[p] = x;
        ix[p] = j;
        return m + 1 < k ? NAN : v[k - 1];
    }
    if (m < k) {  /* filling: every item enters, the heap is built once it is full */
        v[m] = x;
        ix[m] = j;
        if (m + 1 < k) return NAN;
        for (ptrdiff_t p = k / 2; p-- > 0;) gru_topk_sift_down(v, ix, k, p);
        return v[0];
    }
    v[0] = x;
    ix[0] = j;
    gru_topk_sift_down(v, ix, k, 0);
    return v[0];
}

/* Offer row i the lanes `bits` of scores s[0..31] of columns col0 + lane (lanes in increasing
   order). Called only for lanes that passed the threshold test. */
__attribute__((noinline))
static void gru_topk_offer(gru_topk *tp, ptrdiff_t i, const float *s, uint32_t bits,
                           ptrdiff_t col0) {
    ptrdiff_t k = tp->k;
    float *v = tp->val + i * k;
    int64_t *ix = tp->idx + i * k;
    while (bits) {
        int lane = __builtin_ctz(bits);
        bits &= bits - 1;
        int64_t j = col0 + lane;
        float x = s[lane];
        if (tp->excl && gru_topk_excluded(tp, i, j)) {
            x = -INFINITY;
        } else if (x != x) {
            tp->nan[i] = 1;
            continue;
        }
        /* full: only a strictly greater score enters (a tie has the higher index: it loses) */
        int m = tp->fill[i];
        if (m < k || x > tp->thr[i]) {
            tp->thr[i] = gru_topk_insert(v, ix, k, m, x, j);
            if (m < k) tp->fill[i] = m + 1;
        }
    }
}

/* Row i's entries in the output order (a heap is sorted: moving the worst to the back
   leaves it ordered best first). A row that never filled (only where NaN scores were
   skipped) is padded with NaN. */
static void gru_topk_finish(gru_topk *tp, ptrdiff_t i) {
    ptrdiff_t k = tp->k;
    float *v = tp->val + i * k;
    int64_t *ix = tp->idx + i * k;
    if (tp->fill[i] < k) {
        for (ptrdiff_t p = tp->fill[i]; p < k; p++) { v[p] = NAN; ix[p] = -1; }
        return;
    }
    if (k <= GRU_TOPK_SORTED_MAX) return;
    for (ptrdiff_t p = k - 1; p > 0; p--) {
        float tv = v[0];
        int64_t ti = ix[0];
        v[0] = v[p]; ix[0] = ix[p];
        v[p] = tv; ix[p] = ti;
        gru_topk_sift_down(v, ix, p, 0);
    }
}

/* AVX-512 tile: rows a[0..7] (rows >= mr repeat a valid row; their results are dropped) x
   one panel (bp: its two halves, K x 16 each, contiguous), live columns m0 | m1; the tile's
   first row is row i0 of the sink, its first column c. */
__attribute__((target("avx512f,fma")))
static void gru_tile(const float *const *a, ptrdiff_t K, const float *bp, __mmask16 m0,
                     __mmask16 m1, int mr, const gru_sink *sk, ptrdiff_t i0, ptrdiff_t c,
                     const float *pf, ptrdiff_t pf_n) {
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps();
    __m512 c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps();
    __m512 c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps();
    __m512 c71 = _mm512_setzero_ps();
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    const float *a4 = a[4], *a5 = a[5], *a6 = a[6], *a7 = a[7];
    const float *bq = bp + K * GRU_HALF;
    for (ptrdiff_t k = 0; k < K; k++) {
        __m512 b0 = _mm512_loadu_ps(bp + k * GRU_HALF), b1 = _mm512_loadu_ps(bq + k * GRU_HALF);
        __m512 x;
        if (k < pf_n) _mm_prefetch((const char *)(pf + k * GRU_HALF), _MM_HINT_T1);
        x = _mm512_set1_ps(a0[k]); c00 = _mm512_fmadd_ps(x, b0, c00); c01 = _mm512_fmadd_ps(x, b1, c01);
        x = _mm512_set1_ps(a1[k]); c10 = _mm512_fmadd_ps(x, b0, c10); c11 = _mm512_fmadd_ps(x, b1, c11);
        x = _mm512_set1_ps(a2[k]); c20 = _mm512_fmadd_ps(x, b0, c20); c21 = _mm512_fmadd_ps(x, b1, c21);
        x = _mm512_set1_ps(a3[k]); c30 = _mm512_fmadd_ps(x, b0, c30); c31 = _mm512_fmadd_ps(x, b1, c31);
        x = _mm512_set1_ps(a4[k]); c40 = _mm512_fmadd_ps(x, b0, c40); c41 = _mm512_fmadd_ps(x, b1, c41);
        x = _mm512_set1_ps(a5[k]); c50 = _mm512_fmadd_ps(x, b0, c50); c51 = _mm512_fmadd_ps(x, b1, c51);
        x = _mm512_set1_ps(a6[k]); c60 = _mm512_fmadd_ps(x, b0, c60); c61 = _mm512_fmadd_ps(x, b1, c61);
        x = _mm512_set1_ps(a7[k]); c70 = _mm512_fmadd_ps(x, b0, c70); c71 = _mm512_fmadd_ps(x, b1, c71);
    }
    if (sk->top) {
        /* every row's candidate lanes first (the accumulators stay in registers); only a tile
           with a candidate stores them and calls out */
        gru_topk *tp = sk->top;
        uint32_t bits[GRU_MR] = {0};
        uint32_t any = 0;
#define GRU_TOPK_ROW(r, x0, x1) \
        if (r < mr) { \
            __m512 tv = _mm512_set1_ps(tp->thr[i0 + r]); \
            bits[r] = (uint32_t)_mm512_mask_cmp_ps_mask(m0, x0, tv, _CMP_NLE_UQ) \
                    | (uint32_t)_mm512_mask_cmp_ps_mask(m1, x1, tv, _CMP_NLE_UQ) << 16; \
            any |= bits[r]; \
        }
        GRU_TOPK_ROW(0, c00, c01) GRU_TOPK_ROW(1, c10, c11) GRU_TOPK_ROW(2, c20, c21)
        GRU_TOPK_ROW(3, c30, c31) GRU_TOPK_ROW(4, c40, c41) GRU_TOPK_ROW(5, c50, c51)
        GRU_TOPK_ROW(6, c60, c61) GRU_TOPK_ROW(7, c70, c71)
#undef GRU_TOPK_ROW
        if (!any) return;
        float s[GRU_MR][GRU_NR];
        _mm512_storeu_ps(s[0], c00); _mm512_storeu_ps(s[0] + 16, c01);
        _mm512_storeu_ps(s[1], c10); _mm512_storeu_ps(s[1] + 16, c11);
        _mm512_storeu_ps(s[2], c20); _mm512_storeu_ps(s[2] + 16, c21);
        _mm512_storeu_ps(s[3], c30); _mm512_storeu_ps(s[3] + 16, c31);
        _mm512_storeu_ps(s[4], c40); _mm512_storeu_ps(s[4] + 16, c41);
        _mm512_storeu_ps(s[5], c50); _mm512_storeu_ps(s[5] + 16, c51);
        _mm512_storeu_ps(s[6], c60); _mm512_storeu_ps(s[6] + 16, c61);
        _mm512_storeu_ps(s[7], c70); _mm512_storeu_ps(s[7] + 16, c71);
        for (int r = 0; r < mr; r++)
            if (bits[r]) gru_topk_offer(tp, i0 + r, s[r], bits[r], c);
        return;
    }
    float *out = sk->out ? sk->out + i0 * sk->ldc + c : NULL;
    ptrdiff_t ldc = sk->ldc;
    const float *t = sk->t + (sk->t ? i0 : 0);
    int *gt = sk->gt + (sk->gt ? i0 : 0), *eq = sk->eq + (sk->eq ? i0 : 0);
    int *nan = sk->nan + (sk->nan ? i0 : 0);
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

/* AVX2 tiles: MR rows of A (a0: the first, row stride K; row i of the sink) x one half panel
   (bh: K x 16, contiguous; its first column c), n_live leading live columns (1..16); 2 MR
   accumulators (MR = 6: 12 of the 16 ymm registers, two B vectors and a broadcast beside
   them, so that 12 independent FMA chains hide the FMA latency on two FMA ports). Results go
   to the sink as in gru_tile. Instantiated for MR = 6, 4, 2, 1 (a block's rows are covered
   without padding rows). */
__attribute__((target("avx2,fma"), always_inline))
static inline void gru_tile_avx2(const int MR, const float *a0, ptrdiff_t K, const float *bh,
                                 int n_live, const gru_sink *sk, ptrdiff_t i, ptrdiff_t c,
                                 const float *pf, ptrdiff_t pf_n) {
    __m256 c0[6], c1[6];
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm256_setzero_ps();
    for (ptrdiff_t k = 0; k < K; k++) {
        __m256 b0 = _mm256_loadu_ps(bh + k * GRU_HALF), b1 = _mm256_loadu_ps(bh + k * GRU_HALF + 8);
        if (k < pf_n) _mm_prefetch((const char *)(pf + k * GRU_HALF), _MM_HINT_T1);
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 x = _mm256_broadcast_ss(a0 + r * K + k);
            c0[r] = _mm256_fmadd_ps(x, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(x, b1, c1[r]);
        }
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i v0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n_live), lane);
    __m256i v1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n_live - 8), lane);
    unsigned l0 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(v0));
    unsigned l1 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(v1));
    if (sk->top) {  /* as gru_tile */
        gru_topk *tp = sk->top;
        uint32_t bits[6], any = 0;
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            __m256 tv = _mm256_set1_ps(tp->thr[i + r]);
            bits[r] = ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(c0[r], tv, _CMP_NLE_UQ)) & l0)
                    | ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(c1[r], tv, _CMP_NLE_UQ)) & l1) << 8;
            any |= bits[r];
        }
        if (!any) return;
        float s[6][GRU_HALF];
#pragma GCC unroll 6
        for (int r = 0; r < MR; r++) {
            _mm256_storeu_ps(s[r], c0[r]);
            _mm256_storeu_ps(s[r] + 8, c1[r]);
        }
        for (int r = 0; r < MR; r++)
            if (bits[r]) gru_topk_offer(tp, i + r, s[r], bits[r], c);
        return;
    }
    float *out = sk->out ? sk->out + i * sk->ldc + c : NULL;
    ptrdiff_t ldc = sk->ldc;
#pragma GCC unroll 6
    for (int r = 0; r < MR; r++) {
        if (out) {
            _mm256_maskstore_ps(out + r * ldc, v0, c0[r]);
            _mm256_maskstore_ps(out + r * ldc + 8, v1, c1[r]);
        } else {
            __m256 tv = _mm256_set1_ps(sk->t[i + r]);
            sk->gt[i + r] += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(c0[r], tv, _CMP_GT_OQ)) & l0)
                           + __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(c1[r], tv, _CMP_GT_OQ)) & l1);
            sk->eq[i + r] += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(c0[r], tv, _CMP_EQ_OQ)) & l0)
                           + __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(c1[r], tv, _CMP_EQ_OQ)) & l1);
            sk->nan[i + r] |= ((_mm256_movemask_ps(_mm256_cmp_ps(c0[r], c0[r], _CMP_UNORD_Q)) & l0)
                               | (_mm256_movemask_ps(_mm256_cmp_ps(c1[r], c1[r], _CMP_UNORD_Q)) & l1)) != 0;
        }
    }
}

#define GRU_AVX2_TILE(MR) \
    __attribute__((target("avx2,fma"), noinline)) \
    static void gru_tile_avx2_##MR(const float *a0, ptrdiff_t K, const float *bh, int n_live, \
                                   const gru_sink *sk, ptrdiff_t i, ptrdiff_t c, \
                                   const float *pf, ptrdiff_t pf_n) { \
        gru_tile_avx2(MR, a0, K, bh, n_live, sk, i, c, pf, pf_n); \
    }
GRU_AVX2_TILE(6)
GRU_AVX2_TILE(4)
GRU_AVX2_TILE(2)
GRU_AVX2_TILE(1)
#undef GRU_AVX2_TILE

/* The tiles over one panel prefetch the next one into L2 (from memory, where the panels of
   a large B live), a slice of it each, one cache line per k step, so that the first tile
   over a panel does not wait for it: tile i of n gets lines [i * per, (i + 1) * per) of the
   n_lines at next (at most K per tile). */
static inline ptrdiff_t gru_prefetch_slice(const float *next, ptrdiff_t n_lines, ptrdiff_t K,
                                           ptrdiff_t i, ptrdiff_t n, const float **pf) {
    ptrdiff_t per = (n_lines + n - 1) / n, a = i * per;
    if (per > K) per = K;
    *pf = next ? next + 16 * a : NULL;
    return next && a < n_lines ? (a + per < n_lines ? per : n_lines - a) : 0;
}

/* Rows r0..r1-1 of A against one half panel (its first column c), in AVX2 tiles of 6 rows,
   then 4, 2, 1; next: the half panel after this one (NULL: none). */
static void gru_half_panel_avx2(const float *A, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t K,
                                const float *bh, const float *next, int n_live,
                                const gru_sink *sk, ptrdiff_t c) {
    ptrdiff_t i = r0, tile = 0, n_tiles = (r1 - r0 + 5) / 6;
    const float *pf;
#define GRU_AVX2_RUN(MR) \
    for (; r1 - i >= MR; i += MR) { \
        ptrdiff_t pf_n = gru_prefetch_slice(next, K, K, tile++, n_tiles, &pf); \
        gru_tile_avx2_##MR(A + i * K, K, bh, n_live, sk, i, c, pf, pf_n); \
    }
    GRU_AVX2_RUN(6) GRU_AVX2_RUN(4) GRU_AVX2_RUN(2) GRU_AVX2_RUN(1)
#undef GRU_AVX2_RUN
}

/* Panels [p0, p1) go in groups of this many (about 1 MB of B at K = 481): a group is read
   from memory once and from the L3 cache for the other row chunks of A, so that B streams
   from memory once per call whatever R (row chunks outermost would stream it R / 256
   times). */
#define GRU_PANEL_GROUP 16

/* The loop shared by the kernels over panels [p0, p1) (results to the sink): panel groups,
   then row chunks, then the group's panels; no target attribute: it runs on every x86-64 CPU
   and calls the tiles of the chosen ISA. Returns that ISA level. */
static int gru_panel_loop(const float *A, ptrdiff_t R, ptrdiff_t K, const float *Bp,
                          ptrdiff_t N, ptrdiff_t p0, ptrdiff_t p1, const gru_sink *sk) {
    int isa = gru_panel_isa();
    if (isa <= 0) return 0;
    for (ptrdiff_t g0 = p0; g0 < p1; g0 += GRU_PANEL_GROUP) {
        ptrdiff_t g1 = p1 - g0 < GRU_PANEL_GROUP ? p1 : g0 + GRU_PANEL_GROUP;
        for (ptrdiff_t r0 = 0; r0 < R; r0 += GRU_ROW_CHUNK) {
            ptrdiff_t r1 = R - r0 < GRU_ROW_CHUNK ? R : r0 + GRU_ROW_CHUNK;
            /* the panel after the group's last: the group again for the next row chunk */
            ptrdiff_t after = r1 < R ? g0 : g1;
            for (ptrdiff_t p = g0; p < g1; p++) {
                ptrdiff_t live = N - p * GRU_NR < GRU_NR ? N - p * GRU_NR : GRU_NR;
                const float *bp = Bp + p * K * GRU_NR;
                ptrdiff_t c = p * GRU_NR;
                const float *next_panel = p + 1 < g1 ? bp + K * GRU_NR
                                        : (after < p1 ? Bp + after * K * GRU_NR : NULL);
                if (isa == 1) {
                    for (int h = 0; h < 2 && live > GRU_HALF * h; h++) {
                        int n_live = (int)(live - GRU_HALF * h < GRU_HALF ? live - GRU_HALF * h : GRU_HALF);
                        const float *bh = bp + h * K * GRU_HALF;
                        /* the next half to go: this panel's second, or the next panel's first */
                        const float *next = h == 0 && live > GRU_HALF ? bh + K * GRU_HALF : next_panel;
                        gru_half_panel_avx2(A, r0, r1, K, bh, next, n_live, sk, c + GRU_HALF * h);
                    }
                    continue;
                }
                __mmask16 m0 = live >= 16 ? 0xFFFF : (__mmask16)((1u << live) - 1);
                __mmask16 m1 = live >= 32 ? 0xFFFF
                             : (live > 16 ? (__mmask16)((1u << (live - 16)) - 1) : 0);
                ptrdiff_t n_tiles = (r1 - r0 + GRU_MR - 1) / GRU_MR;
                for (ptrdiff_t i0 = r0; i0 < r1; i0 += GRU_MR) {
                    int mr = r1 - i0 < GRU_MR ? (int)(r1 - i0) : GRU_MR;
                    const float *pf;
                    ptrdiff_t pf_n = gru_prefetch_slice(next_panel, 2 * K, K, (i0 - r0) / GRU_MR,
                                                     n_tiles, &pf);
                    const float *a[GRU_MR];
                    for (int r = 0; r < GRU_MR; r++)
                        a[r] = A + (i0 + (r < mr ? r : mr - 1)) * K;
                    gru_tile(a, K, bp, m0, m1, mr, sk, i0, c, pf, pf_n);
                }
            }
        }
    }
    return isa;
}
#endif

#if GRU_PANELS
/* Each target's score by the tiles' chain, t[i] = fmaf(A[i, K-1], B[K-1, j], ... ) for
   j = targets[i]. Only called where the CPU has FMA (every panel ISA does): the target makes
   each fmaf one instruction, the same correctly rounded operation as the libm call. */
__attribute__((target("fma")))
static void gru_target_scores(const float *A, ptrdiff_t R, ptrdiff_t K, const float *Bp,
                              const int64_t *targets, float *t) {
    for (ptrdiff_t i = 0; i < R; i++) {
        const float *a = A + i * K, *b = &Bp[((2 * (targets[i] / GRU_NR)
                                               + targets[i] % GRU_NR / GRU_HALF) * K)
                                             * GRU_HALF + targets[i] % GRU_HALF];
        float s = 0.0f;
        for (ptrdiff_t k = 0; k < K; k++)
            s = fmaf(a[k], b[k * GRU_HALF], s);
        t[i] = s;
    }
}
#endif

#define GRU_N_PANELS(N) (((N) + GRU_NR - 1) / GRU_NR)

/* S[i, j] for all items into out (R rows, row stride ldc >= N). Returns the ISA level of the
   tile that ran (gru_panel_isa), 0 when none did. */
static int gru_panel_scores(const float *A, ptrdiff_t R, ptrdiff_t K, const float *Bp,
                             ptrdiff_t N, float *out, ptrdiff_t ldc) {
#if GRU_PANELS
    gru_sink sk = {out, ldc, NULL, NULL, NULL, NULL, NULL};
    return gru_panel_loop(A, R, K, Bp, N, 0, GRU_N_PANELS(N), &sk);
#else
    return 0;
#endif
}

/* t[i] = S[i, targets[i]], bit for bit the tiles' value (the counting kernel's reference).
   Returns the ISA level of the tiles (0: none; t is then not written). */
static int gru_panel_target_scores(const float *A, ptrdiff_t R, ptrdiff_t K, const float *Bp,
                                   const int64_t *targets, float *t) {
#if GRU_PANELS
    int isa = gru_panel_isa();
    if (isa > 0) gru_target_scores(A, R, K, Bp, targets, t);  /* FMA only where a tile runs */
    return isa;
#else
    return 0;
#endif
}

/* Per row i, over the items of panels [p0, p1) (columns 32 p0 .. 32 p1 - 1): adds
   #{j: S[i,j] > t[i]} to n_greater[i] and #{j: S[i,j] == t[i]} to n_equal[i], and sets
   has_nan[i] where a score is NaN; t from gru_panel_target_scores. The counts add up over
   any split of the panels (callers split them over threads). Returns -1 when out of memory,
   else the ISA level of the tile that ran (0: none did). */
static int gru_panel_rank_counts(const float *A, ptrdiff_t R, ptrdiff_t K,
                                 const float *Bp, ptrdiff_t N, const float *t, ptrdiff_t p0,
                                 ptrdiff_t p1, int64_t *n_greater, int64_t *n_equal,
                                 uint8_t *has_nan) {
#if GRU_PANELS
    if (gru_panel_isa() <= 0) return 0;
    int *cnt = (int *)calloc(3 * (size_t)R, sizeof(int));
    if (!cnt) return -1;
    gru_sink sk = {NULL, 0, t, cnt, cnt + R, cnt + 2 * R, NULL};
    int isa = gru_panel_loop(A, R, K, Bp, N, p0, p1, &sk);
    for (ptrdiff_t i = 0; i < R; i++) {
        n_greater[i] += cnt[i];
        n_equal[i] += cnt[R + i];
        has_nan[i] |= (uint8_t)cnt[2 * R + i];
    }
    free(cnt);
    return isa;
#else
    return 0;
#endif
}

/* Per row i the k best items of S[i, :] (1 <= k <= N), best first (higher score, then lower
   index: the order and the values of the top_k kernel of _ranking.pyx on the scores of
   gru_panel_scores), into idx / val (R, k); the scores are never written (gru_topk).
   excl_ptr (R + 1,) / excl: the excluded columns of each row, ascending (excl NULL: none);
   they count as -inf. has_nan[i]: a score of row i that is not excluded is NaN (the row's
   output is then meaningless). Returns -1 when out of memory, else the ISA level of the tile
   that ran (0: none did). */
static int gru_panel_top_k(const float *A, ptrdiff_t R, ptrdiff_t K, const float *Bp,
                           ptrdiff_t N, ptrdiff_t k, const int64_t *excl_ptr,
                           const int64_t *excl, int64_t *idx, float *val, uint8_t *has_nan) {
#if GRU_PANELS
    if (gru_panel_isa() <= 0) return 0;
    float *thr = (float *)malloc((size_t)R * sizeof(float));
    int *cnt = (int *)calloc(2 * (size_t)R, sizeof(int));
    int64_t *cursor = excl ? (int64_t *)malloc((size_t)R * sizeof(int64_t)) : NULL;
    if (!thr || !cnt || (excl && !cursor)) { free(thr); free(cnt); free(cursor); return -1; }
    for (ptrdiff_t i = 0; i < R; i++) {
        thr[i] = NAN;  /* filling: every score is a candidate */
        if (cursor) cursor[i] = excl_ptr[i];
    }
    gru_topk tp = {k, val, idx, thr, cnt, excl ? excl_ptr : NULL, excl, cursor, cnt + R};
    gru_sink sk = {NULL, 0, NULL, NULL, NULL, NULL, &tp};
    int isa = gru_panel_loop(A, R, K, Bp, N, 0, GRU_N_PANELS(N), &sk);
    for (ptrdiff_t i = 0; i < R; i++) {
        gru_topk_finish(&tp, i);
        has_nan[i] = (uint8_t)tp.nan[i];
    }
    free(thr);
    free(cnt);
    free(cursor);
    return isa;
#else
    return 0;
#endif
}

#endif /* GRU_ENGINE_PANELS_H */
