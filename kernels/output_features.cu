// output_features.cu -- the feature part of the sampled output layer (FeatureSessionGRU(
// output_features=True), float32; gru_engine/output_features.py documents the model):
//   Wy_eff[i] = Wy[i] + sum_j w_ij Fy[r_ij]        By_eff[i] = By[i] + sum_j w_ij Fb[r_ij]
// over item i's output bag (CSR: entries j in [indptr[i], indptr[i+1]) with row indices[j] and
// weight weights[j]; int32 here). On the device Fy and Fb are one table F (rows, Hc + 1): Fy in
// the first Hc columns, Fb in the last, so that one sparse Adagrad updates both.
// Both kernels launch a 1-D grid over the elements they write (256 threads recommended).

#include "common.cuh"

// out[i * out_ld + k] += sum_j weights[j] * F[indices[j] * ld + col0 + k] over the bag of item
// items[i], for i < n, k < width: the entries are added one by one onto out's value in bag order
// (as the CPU trainer's add_output_features). Training: the gathered Wy/By rows of the sampled
// columns (col0 0, width Hc; col0 Hc, width 1); scoring: Wy/By of every item.
extern "C" __global__ void bag_accumulate(const float* __restrict__ F, int ld, int col0,
                                          int width, const int* __restrict__ indptr,
                                          const int* __restrict__ indices,
                                          const float* __restrict__ weights,
                                          const int* __restrict__ items, int n,
                                          float* __restrict__ out, int out_ld) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * width) return;
    int i = (int)(t / width), k = (int)(t % width);
    int it = items[i];
    float* o = out + (long long)i * out_ld + k;
    float v = *o;
    for (int j = indptr[it]; j < indptr[it + 1]; ++j)
        v += weights[j] * F[(long long)indices[j] * ld + col0 + k];
    *o = v;
}

// Gradient rows of F for the bags of the n sampled columns (before duplicate rows are summed by
// sparse_claim/sparse_combine), max_bag slots per column, so that the layout does not depend on
// the step's items (one CUDA graph serves every step): entry e = c * max_bag + s of column c
// (item items[c]) is, for s < its bag size (j = indptr[items[c]] + s),
//   G[e, m] = weights[j] * gW[c * Hc + m] (m < Hc),  G[e, Hc] = weights[j] * gb[c],
//   idx[e] = indices[j];
// a padding slot (s >= bag size) is a zero row with idx[e] = spare0 + c (one spare row of F per
// column, so padding entries never pile up on one row). gW (n, Hc): the gradient of the
// columns' Wy_eff rows, gb (n,) of their By_eff; G (n * max_bag, Hc + 1); grid over its elements.
extern "C" __global__ void output_bag_grad(const float* __restrict__ gW,
                                           const float* __restrict__ gb, int Hc,
                                           const int* __restrict__ indptr,
                                           const int* __restrict__ indices,
                                           const float* __restrict__ weights,
                                           const int* __restrict__ items, int n, int max_bag,
                                           int spare0, float* __restrict__ G,
                                           int* __restrict__ idx) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int W = Hc + 1;
    if (t >= (long long)n * max_bag * W) return;
    long long e = t / W;
    int m = (int)(t % W);
    int c = (int)(e / max_bag), s = (int)(e % max_bag);
    int it = items[c];
    int j = indptr[it] + s;
    bool real = j < indptr[it + 1];
    float g = m < Hc ? gW[(long long)c * Hc + m] : gb[c];
    G[t] = real ? weights[j] * g : 0.0f;
    if (m == 0) idx[e] = real ? indices[j] : spare0 + c;
}
