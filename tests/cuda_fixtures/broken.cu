// Test-only kernels with deliberate GPU bugs, one per bug class, each beside its correct twin
// (tests/test_emulator_modes.py). Every broken kernel gives the right answer when the emulator
// runs blocks in order, one thread at a time between barriers, on zeroed memory without guard
// zones -- as the emulator did before its checks -- and is wrong or undefined on a GPU.

// ---- missing atomic: out[0] += x[t] from every thread of every block ------------------------
extern "C" __global__ void sum_plain(const float* x, int n, float* out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) out[0] += x[t];  // BUG: a read-modify-write racing with every other thread
}
extern "C" __global__ void sum_atomic(const float* x, int n, float* out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) atomicAdd(out, x[t]);
}

// ---- inter-block dependence: block b reads block b-1's partial sum in the same launch -------
// partial (gridDim.x) must be zeros; out[b] = sum of blocks 0..b of x (blockDim.x each).
extern "C" __global__ void running_sum_one_launch(const float* x, float* partial, float* out) {
    int b = blockIdx.x;
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int i = 0; i < (int)blockDim.x; ++i) s += x[b * blockDim.x + i];
        // BUG: reads what block b-1 wrote in this launch; only a new launch would order them.
        float before = b > 0 ? partial[b - 1] : 0.0f;
        partial[b] = before + s;
        out[b] = before + s;
    }
}

// ---- divergent barrier: two call sites, or a barrier skipped after an early return ----------
extern "C" __global__ void barrier_two_sites(const float* x, float* out) {
    __shared__ float s[256];
    int t = threadIdx.x;
    if (t % 2 == 0) {  // BUG: even and odd threads wait at different __syncthreads()
        s[t] = x[t];
        __syncthreads();
    } else {
        s[t] = x[t];
        __syncthreads();
    }
    out[t] = s[t ^ 1];
}
extern "C" __global__ void barrier_after_return(const float* x, int n, float* out) {
    __shared__ float s[256];
    int t = threadIdx.x;
    if (t >= n) return;  // BUG: the threads past n never reach the barrier below
    s[t] = x[t];
    __syncthreads();
    out[t] = s[(t + 1) % n];
}
extern "C" __global__ void barrier_uniform(const float* x, int n, float* out) {
    __shared__ float s[256];
    int t = threadIdx.x;
    if (t < n) s[t] = x[t];
    __syncthreads();
    if (t < n) out[t] = s[(t + 1) % n];
}

// ---- out-of-bounds write: an off-by-one bound ------------------------------------------------
extern "C" __global__ void copy_off_by_one(const float* x, int n, float* out) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t <= n) out[t] = t < n ? x[t] : 0.0f;  // BUG: writes out[n]
}

// ---- uninitialised read: accumulating into a buffer nobody cleared ---------------------------
// acc must hold zeros before the launch (the caller allocated it with empty() instead).
extern "C" __global__ void accumulate(const float* x, int n, float* acc) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) acc[t] += x[t];
}
