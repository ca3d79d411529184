/* _scan.h: the row scans of the rank and top-k kernels of _ranking.pyx, and OpenMP introspection.
   Included by _ranking.pyx (cdef extern from "_scan.h") */
#ifndef GRU_ENGINE_SCAN_H
#define GRU_ENGINE_SCAN_H

#include <stddef.h>
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
static void gru_count_row(const float *row, ptrdiff_t n, float t, int64_t *n_greater,
                          int64_t *n_equal, uint8_t *has_nan) {
    int gt = 0, eq = 0, nan = 0;
    for (ptrdiff_t j = 0; j < n; j++) {
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
static int gru_count_not_le(const float *row, ptrdiff_t n, float thr) {
    int hits = 0;
    for (ptrdiff_t j = 0; j < n; j++)
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

#endif /* GRU_ENGINE_SCAN_H */
