// common.cuh -- device helpers shared by the kernels of kernels/*.cu (float32 unless noted).
//
// Included as `#include "common.cuh"`: nvcc finds it beside the .cu file, NVRTC through the
// `-I <kernels dir>` option that gru_engine/backends/device.py passes, the CPU emulator through
// its g++ include path. Everything here is `static __forceinline__`: each kernel file gets its own
// copy, so an unused helper costs nothing and changing one never changes another file's ABI.
//
// Reductions are block-wide over blockDim.x threads, blockDim.x a multiple of 32 (<= 1024);
// every thread of the block must call them (they hold two __syncthreads()) and every thread
// gets the result. The leading barrier protects the per-warp partials of the previous call,
// which all warps read. The order of the additions is fixed (xor butterfly within a warp, then
// over the warps' partials), so results are deterministic for a given blockDim.
#pragma once

// Dynamic shared memory: `DYNAMIC_SHARED(T, name)` declares `extern __shared__ T name[]` on the
// GPU; the CPU emulator defines it first, as a pointer to its per-launch buffer.
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

#define NEG_INF_F __int_as_float(0xff800000)

static __device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- warp and block reductions -------------------------------------------------------------
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ int warp_sum(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    return warp_sum(lane < nwarps ? partial[lane] : 0.0f);
}
static __device__ __forceinline__ int block_sum(int v) {
    __shared__ int partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    return warp_sum(lane < nwarps ? partial[lane] : 0);
}
static __device__ __forceinline__ float block_max(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    return warp_max(lane < nwarps ? partial[lane] : NEG_INF_F);
}

// ---- words shared between the blocks of one launch ------------------------------------------
// Read a word that another block of the same launch may store to meanwhile: an atomic read
// (a plain load racing with a store is a data race in the CUDA memory model, and the
// emulator's race detector reports it). Pair it with atomicExch for the store.
static __device__ __forceinline__ int atomic_read(int* p) { return atomicOr(p, 0); }

// ---- optimiser -----------------------------------------------------------------------------
// Adagrad with plain (heavy-ball) momentum on one element, as the GRU4Rec reference:
//   acc += g^2; step = g / sqrt(acc + 1e-6);
//   momentum > 0: v = momentum * v - lr * step; p += v     else: p -= lr * step (v untouched).
static __device__ __forceinline__ void adagrad_update(float* p, float* acc, float* v, float g,
                                                      float lr, float momentum) {
    float a = *acc + g * g;
    *acc = a;
    float step = g / sqrtf(a + 1e-6f);
    if (momentum > 0.0f) {
        float vel = momentum * *v - lr * step;
        *v = vel;
        *p += vel;
    } else {
        *p -= lr * step;
    }
}
