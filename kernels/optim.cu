// optim.cu -- Adagrad with plain (heavy-ball) momentum, as the GRU4Rec reference (float32):
//   acc += g^2; step = g / sqrt(acc + 1e-6);
//   momentum > 0: v = momentum * v - lr * step; p += v     else: p -= lr * step (v untouched).
//
// Dense: adagrad_dense over every element (GRU weights and biases), 1-D grid.
// Sparse (item-indexed rows of Wy, By, E or the one-hot Wx[0]): gradient rows G (n, W) belong to
// item rows idx[0..n) that may repeat. Three launches, one block per gradient row:
//   1. sparse_claim:   owner[idx[i]] = min i with that item     (atomicMin)
//   2. sparse_combine: rows that are not the owner add their gradient into the owner's row of G
//   3. sparse_adagrad: owner rows apply the update once with the summed gradient, then reset
//                      owner[idx[i]] to INT_MAX; untouched item rows keep their acc and v.
// owner (n_items ints) must hold INT_MAX (0x7fffffff) before step 1 and holds it again after 3,
// so one buffer serves every sparse update. Launch boundaries order the three steps.
// (Non-owner blocks in step 3 read either the owner index or INT_MAX; both differ from their
// own i, so the reset cannot change their decision. The read and the reset race between blocks
// by design, so both are atomics.)

#include "common.cuh"

extern "C" __global__ void adagrad_dense(float* __restrict__ p, const float* __restrict__ g,
                                         float* __restrict__ acc, float* __restrict__ v,
                                         long long n, float lr, float momentum) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) adagrad_update(p + t, acc + t, v + t, g[t], lr, momentum);
}

extern "C" __global__ void sparse_claim(const int* __restrict__ idx, int n, int* owner) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicMin(owner + idx[i], i);
}

// grid (n), any block size; G (n, W) row-major, combined in place.
extern "C" __global__ void sparse_combine(float* G, const int* __restrict__ idx, int n, int W,
                                          const int* __restrict__ owner) {
    int i = blockIdx.x;
    int o = owner[idx[i]];
    if (o == i) return;
    for (int j = threadIdx.x; j < W; j += blockDim.x)
        atomicAdd(G + (long long)o * W + j, G[(long long)i * W + j]);
}

// grid (n), any block size. p, acc, v: (n_items, W).
extern "C" __global__ void sparse_adagrad(float* __restrict__ p, float* __restrict__ acc,
                                          float* __restrict__ v, const float* __restrict__ G,
                                          const int* __restrict__ idx, int n, int W, int* owner,
                                          float lr, float momentum) {
    __shared__ int is_owner;
    int i = blockIdx.x;
    long long row = idx[i];
    if (threadIdx.x == 0) is_owner = atomic_read(owner + row) == i;
    __syncthreads();
    if (!is_owner) return;
    for (int j = threadIdx.x; j < W; j += blockDim.x)
        adagrad_update(p + row * W + j, acc + row * W + j, v + row * W + j,
                       G[(long long)i * W + j], lr, momentum);
    if (threadIdx.x == 0) atomicExch(owner + row, 0x7fffffff);
}
