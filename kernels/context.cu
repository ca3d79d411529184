// context.cu -- the context tables of the context-aware GRU (Smirnova & Vasile 2017;
// gru_engine/context.py) on the device (float32). A table holds one row per value of each
// context feature (the rows of feature f lie in a range of their own); a row i of a step has
// F features, rows[i * F + f] its table row of feature f, and its context vector is the sum of
// those rows. Both kernels add in the order of the CPU backend (backends/cpu/context_step.py),
// so they give its bits. 1-D grids over the elements they write (256 threads recommended).

#include "common.cuh"

// out[i * out_ld + k] = (accumulate ? out[i * out_ld + k] : base) + sum_f table[rows[i * F + f]
// * W + k] for i < R, k < W, added in f order: the concat gate pre-activations (accumulate = 1,
// out = layer 0's gx) and the multiplicative modulations 1 + sum (base = 1, accumulate = 0).
extern "C" __global__ void context_rows_sum(const float* __restrict__ table, int W,
                                            const int* __restrict__ rows, int R, int F,
                                            float base, int accumulate, float* __restrict__ out,
                                            int out_ld) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)R * W) return;
    int i = (int)(t / W), k = (int)(t % W);
    long long o = (long long)i * out_ld + k;
    float v = accumulate ? out[o] : base;
    for (int f = 0; f < F; ++f) v += table[(long long)rows[i * F + f] * W + k];
    out[o] = v;
}

// G[rows[i * F + f] * W + k] += D[i * W + k] * (raw ? raw[i * W + k] : 1) for i < R, one thread
// per (feature f, column k) adding over i in order (the CPU's order; no atomics: the features'
// row ranges are disjoint, so no two threads write one element). G (table rows, W) holds the
// dense table gradient (zero it before the step); D (R, W) the gradient w.r.t. the modulated
// values (multiply: raw = the unmodulated ones) or w.r.t. the gates (concat: raw = NULL).
extern "C" __global__ void context_table_grad(const float* __restrict__ D,
                                              const float* __restrict__ raw,
                                              const int* __restrict__ rows, int R, int F, int W,
                                              float* __restrict__ G) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)F * W) return;
    int f = (int)(t / W), k = (int)(t % W);
    for (int i = 0; i < R; ++i) {
        long long e = (long long)i * W + k;
        float g = raw ? D[e] * raw[e] : D[e];
        G[(long long)rows[i * F + f] * W + k] += g;
    }
}
