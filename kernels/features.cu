// features.cu -- kernels of the feature-rich p-RNN (FeatureSessionGRU) on top of the GRU4Rec ones
// (float32). Item features are bags in CSR form: item `it` owns entries j in
// [indptr[it], indptr[it+1]), each a table row (or raw column) indices[j] with weight weights[j]
// (gru_engine/backends/feature_cpu.py documents the layout; indptr/indices are int32 here).
// Elementwise kernels launch a 1-D grid over the elements they write (256 threads recommended);
// bag_offsets runs on one thread, dot_sum on one block.

#include "common.cuh"

// out[i, k] = (sum_j weights[j] * table[indices[j] * ld + col0 + k]) * (mask ? mask[i, k] : 1)
// over the bag of item items[i], for i < n, k < width (out (n, width) row-major). With
// table == NULL the bag holds raw values: out[i, k] = sum of weights[j] with indices[j] == k.
// Entries are summed in bag order (as the CPU backend).
extern "C" __global__ void bag_gather(const float* __restrict__ table, int ld, int col0, int width,
                                      const int* __restrict__ indptr,
                                      const int* __restrict__ indices,
                                      const float* __restrict__ weights,
                                      const int* __restrict__ items, int n,
                                      const float* __restrict__ mask, float* __restrict__ out) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * width) return;
    int i = (int)(t / width), k = (int)(t % width);
    int it = items[i];
    float v = 0.0f;
    for (int j = indptr[it]; j < indptr[it + 1]; ++j) {
        if (table) v += weights[j] * table[(long long)indices[j] * ld + col0 + k];
        else if (indices[j] == k) v += weights[j];
    }
    if (mask) v *= mask[t];
    out[t] = v;
}

// offsets[0] = 0, offsets[i + 1] = offsets[i] + (bag size of items[i]), i < n: where row i's
// entries start in bag_grad's output. One thread (n is a batch size).
extern "C" __global__ void bag_offsets(const int* __restrict__ indptr,
                                       const int* __restrict__ items, int n,
                                       int* __restrict__ offsets) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int acc = 0;
    offsets[0] = 0;
    for (int i = 0; i < n; ++i) {
        acc += indptr[items[i] + 1] - indptr[items[i]];
        offsets[i + 1] = acc;
    }
}

// One gradient row per bag entry (the table rows' gradients before duplicates are summed by
// sparse_claim/sparse_combine): entry e = offsets[i] + (j - indptr[items[i]]) of row i gets
// G[e, col0 + k] = weights[j] * dx[i, k] for k < width and 0 in the other columns of its
// out_ld-wide row, and idx_out[e] = indices[j]. dx (n, width); grid over n * out_ld.
extern "C" __global__ void bag_grad(const float* __restrict__ dx, int width,
                                    const int* __restrict__ indptr,
                                    const int* __restrict__ indices,
                                    const float* __restrict__ weights,
                                    const int* __restrict__ items, int n,
                                    const int* __restrict__ offsets, int col0, int out_ld,
                                    float* __restrict__ G, int* __restrict__ idx_out) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * out_ld) return;
    int i = (int)(t / out_ld), k = (int)(t % out_ld);
    int it = items[i], j0 = indptr[it];
    int kk = k - col0;
    bool inside = kk >= 0 && kk < width;
    float g = inside ? dx[(long long)i * width + kk] : 0.0f;
    for (int j = j0; j < indptr[it + 1]; ++j) {
        long long e = offsets[i] + (j - j0);
        G[e * out_ld + k] = inside ? weights[j] * g : 0.0f;
        if (k == 0) idx_out[e] = indices[j];
    }
}

// out[t] = (accumulate ? out[t] : 0) + a[0] * x[t], t < n. The combine weight a lives in device
// memory (a slice of the flat parameters): the weighted sum of subnet outputs and its backward.
extern "C" __global__ void scale_add(float* __restrict__ out, const float* __restrict__ x,
                                     const float* __restrict__ a, long long n, int accumulate) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    float v = a[0] * x[t];
    out[t] = accumulate ? out[t] + v : v;
}

// out[0] = sum_t x[t] * y[t], t < n (gradient of a combine weight). ONE block of a power-of-two
// number of threads (<= 1024): strided partial sums, then a tree in shared memory
// (deterministic for a given block size).
extern "C" __global__ void dot_sum(const float* __restrict__ x, const float* __restrict__ y,
                                   long long n, float* __restrict__ out) {
    __shared__ float part[1024];
    float acc = 0.0f;
    for (long long t = threadIdx.x; t < n; t += blockDim.x) acc += x[t] * y[t];
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = part[0];
}

// optim.cu's sparse_adagrad restricted to some columns: gradient row i (owner of its item, after
// sparse_claim/sparse_combine) updates column c of p/acc/v (n_items, W) only where
// mask[c] != 0, with mask = mask_first for i < n_first (the output rows, listed first) and
// mask_rest otherwise (rows met only as an input). Untouched columns keep p, acc and v. Resets
// owner as sparse_adagrad. grid (n), any block size. The update is common.cuh's adagrad_update.
extern "C" __global__ void sparse_adagrad_masked(float* __restrict__ p, float* __restrict__ acc,
                                                 float* __restrict__ v,
                                                 const float* __restrict__ G,
                                                 const int* __restrict__ idx, int n, int W,
                                                 int* owner, int n_first,
                                                 const float* __restrict__ mask_first,
                                                 const float* __restrict__ mask_rest,
                                                 float lr, float momentum) {
    __shared__ int is_owner;
    int i = blockIdx.x;
    long long row = idx[i];
    if (threadIdx.x == 0) is_owner = atomic_read(owner + row) == i;
    __syncthreads();
    if (!is_owner) return;
    const float* m = i < n_first ? mask_first : mask_rest;
    for (int j = threadIdx.x; j < W; j += blockDim.x)
        if (m[j] != 0.0f)
            adagrad_update(p + row * W + j, acc + row * W + j, v + row * W + j,
                           G[(long long)i * W + j], lr, momentum);
    if (threadIdx.x == 0) atomicExch(owner + row, 0x7fffffff);
}
