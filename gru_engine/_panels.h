/* _panels.h: the fused score-and-rank panel kernels of _ranking.pyx (AVX-512F and AVX2 + FMA
   tiles, ISA picked at run time). Included by _ranking.pyx (cdef extern from "_panels.h") */
#ifndef GRU_ENGINE_PANELS_H
#define GRU_ENGINE_PANELS_H

#include <stddef.h>
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

static void gru_pack_panels(const float *B, ptrdiff_t K, ptrdiff_t N, float *Bp) {
    ptrdiff_t n_panels = (N + GRU_NR - 1) / GRU_NR;
    for (ptrdiff_t p = 0; p < n_panels; p++)
        for (ptrdiff_t k = 0; k < K; k++)
            for (ptrdiff_t c = 0; c < GRU_NR; c++) {
                ptrdiff_t j = p * GRU_NR + c;
                Bp[(p * K + k) * GRU_NR + c] = j < N ? B[k * N + j] : 0.0f;
            }
}

#if GRU_PANELS
/* One tile: rows a[0..7] (rows >= mr repeat a valid row; their results are dropped),
   panel bp (K x 32), live columns m0 | m1. out != NULL: store the scores (row r at
   out + r * ldc); else count per row against t[r]. */
__attribute__((target("avx512f,fma")))
static void gru_tile(const float *const *a, ptrdiff_t K, const float *bp, __mmask16 m0,
                     __mmask16 m1, int mr, float *out, ptrdiff_t ldc, const float *t,
                     int *gt, int *eq, int *nan) {
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps();
    __m512 c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
    __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps();
    __m512 c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps();
    __m512 c71 = _mm512_setzero_ps();
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    const float *a4 = a[4], *a5 = a[5], *a6 = a[6], *a7 = a[7];
    for (ptrdiff_t k = 0; k < K; k++) {
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
static void gru_tile_avx2(const float *const *a, ptrdiff_t K, const float *bp,
                          unsigned live, int mr, float *out, ptrdiff_t ldc, const float *t,
                          int *gt, int *eq, int *nan) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps();
    __m256 c11 = _mm256_setzero_ps(), c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    for (ptrdiff_t k = 0; k < K; k++) {
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
static int gru_panel_loop(const float *A, ptrdiff_t R, ptrdiff_t K, const float *Bp,
                           ptrdiff_t N, float *out, ptrdiff_t ldc, const float *t,
                           int *gt, int *eq, int *nan) {
    ptrdiff_t n_panels = (N + GRU_NR - 1) / GRU_NR;
    int isa = gru_panel_isa();
    for (ptrdiff_t r0 = 0; r0 < R; r0 += GRU_ROW_CHUNK) {
        ptrdiff_t r1 = R - r0 < GRU_ROW_CHUNK ? R : r0 + GRU_ROW_CHUNK;
        for (ptrdiff_t p = 0; p < n_panels; p++) {
            ptrdiff_t live = N - p * GRU_NR < GRU_NR ? N - p * GRU_NR : GRU_NR;
            __mmask16 m0 = live >= 16 ? 0xFFFF : (__mmask16)((1u << live) - 1);
            __mmask16 m1 = live >= 32 ? 0xFFFF
                         : (live > 16 ? (__mmask16)((1u << (live - 16)) - 1) : 0);
            for (ptrdiff_t i0 = r0; i0 < r1; i0 += GRU_MR) {
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
                        ptrdiff_t i = i0 + 4 * h, c = p * GRU_NR + 16 * q;
                        gru_tile_avx2(a + 4 * h, K, bp + 16 * q, live, hr < 4 ? hr : 4,
                                      out ? out + i * ldc + c : NULL, ldc,
                                      t ? t + i : NULL, gt ? gt + i : NULL,
                                      eq ? eq + i : NULL, nan ? nan + i : NULL);
                    }
                }
            }
        }
    }
    return isa;
}
#endif

/* S[i, j] for all items into out (R rows, row stride ldc >= N). Returns the ISA level of the
   tile that ran (gru_panel_isa), 0 when none did. */
static int gru_panel_scores(const float *A, ptrdiff_t R, ptrdiff_t K, const float *Bp,
                             ptrdiff_t N, float *out, ptrdiff_t ldc) {
#if GRU_PANELS
    return gru_panel_loop(A, R, K, Bp, N, out, ldc, NULL, NULL, NULL, NULL);
#else
    return 0;
#endif
}

/* Per row i: #{j: S[i,j] > S[i,t_i]}, #{j: S[i,j] == S[i,t_i]}, any NaN. Returns -1 when
   out of memory, else the ISA level of the tile that ran (0: none did). */
static int gru_panel_rank_counts(const float *A, ptrdiff_t R, ptrdiff_t K,
                                 const float *Bp, ptrdiff_t N, const int64_t *targets,
                                 int64_t *n_greater, int64_t *n_equal, uint8_t *has_nan) {
#if GRU_PANELS
    float *t = (float *)calloc((size_t)R, sizeof(float));
    int *cnt = (int *)calloc(3 * (size_t)R, sizeof(int));
    if (!t || !cnt) { free(t); free(cnt); return -1; }
    for (ptrdiff_t i = 0; i < R; i++) {
        ptrdiff_t j = targets[i], p = j / GRU_NR, c = j % GRU_NR;
        float s = 0.0f;
        for (ptrdiff_t k = 0; k < K; k++)
            s = fmaf(A[i * K + k], Bp[(p * K + k) * GRU_NR + c], s);
        t[i] = s;
    }
    int isa = gru_panel_loop(A, R, K, Bp, N, NULL, 0, t, cnt, cnt + R, cnt + 2 * R);
    for (ptrdiff_t i = 0; i < R; i++) {
        n_greater[i] = cnt[i];
        n_equal[i] = cnt[R + i];
        has_nan[i] = (uint8_t)cnt[2 * R + i];
    }
    free(t);
    free(cnt);
    return isa;
#else
    return 0;
#endif
}

#endif /* GRU_ENGINE_PANELS_H */
