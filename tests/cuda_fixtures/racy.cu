// Test-only kernels for the emulator itself (tests/test_cuda_emulated.py).
// block_sum_correct: a proper two-level block reduction (warp shuffles + shared memory).
// block_sum_racy: the same reduction with the __syncthreads() that guards the per-warp partial
// sums left out -- it works by luck on some schedules and must be caught by the emulator.

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

extern "C" __global__ void block_sum_correct(const float* x, int n, float* out) {
    __shared__ float partial[32];
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
    v = warp_sum(v);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = (blockDim.x + 31) / 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nwarps ? partial[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

extern "C" __global__ void block_sum_racy(const float* x, int n, float* out) {
    __shared__ float partial[32];
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
    v = warp_sum(v);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = (blockDim.x + 31) / 32;
    if (lane == 0) partial[warp] = v;
    // BUG (deliberate): missing __syncthreads() -- warp 0 may read partial[] before other
    // warps wrote it.
    if (warp == 0) {
        v = lane < nwarps ? partial[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) out[blockIdx.x] = v;
    }
}

extern "C" __global__ void divergent_barrier(float* out) {
    // BUG (deliberate): lane 0 waits for the block while lanes 1..31 wait for the full warp,
    // which needs lane 0: a deadlock on a GPU (a hang), reported as an error by the emulator.
    if (threadIdx.x == 0) {
        __syncthreads();
    } else {
        __syncwarp();
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}
