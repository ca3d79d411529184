// ranking.cu -- evaluation ranks and top-k over a score block S (R, N) of all items (float32).
// One block per row; blockDim a multiple of 32 (256 recommended). No full sort of any row.

#include "common.cuh"

// Rank of item targets[r] in row r. mode 0 conservative = #(S >= target score) (ties against
// us); 1 optimistic ("standard") = #(S > target score) + 1; 2 median = halfway between them.
// A row holding NaN anywhere gets rank NaN (the evaluator then refuses the model, as the CPU
// rank kernel does): a NaN score would otherwise just drop out of both counts.
extern "C" __global__ void rank_targets(const float* __restrict__ S, int R, int N,
                                        const int* __restrict__ targets, int mode,
                                        float* __restrict__ rank) {
    int r = blockIdx.x;
    const float* s = S + (long long)r * N;
    float t = s[targets[r]];
    int ge = 0, gt = 0, nan = 0;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        float v = s[j];
        ge += v >= t;
        gt += v > t;
        nan |= v != v;
    }
    ge = block_sum(ge);
    gt = block_sum(gt);
    nan = block_sum(nan);
    if (threadIdx.x == 0) {
        float out = mode == 0 ? (float)ge : mode == 1 ? (float)(gt + 1) : 0.5f * (float)(ge + gt + 1);
        rank[r] = nan ? __int_as_float(0x7fc00000) : out;
    }
}

// Order-preserving map of a float to an unsigned key (larger float -> larger key); -0 == +0,
// NaN below everything.
static __device__ __forceinline__ unsigned float_key(float f) {
    if (f != f) return 0u;
    unsigned u = __float_as_uint(f + 0.0f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Top-k of every row, best first, ties broken by the lower item index: out_idx/out_val (R, k).
// 1 <= k <= N. Radix select (4 passes of 8 bits, histogram in shared memory) finds the key T of
// the k-th largest score; then the items with key > T and the lowest-index items with key == T
// are collected and ordered by counting. Dynamic shared memory: 8 * k bytes.
extern "C" __global__ void topk_rows(const float* __restrict__ S, int R, int N, int k,
                                     int* __restrict__ out_idx, float* __restrict__ out_val) {
    __shared__ unsigned hist[256];
    __shared__ unsigned s_prefix, s_mask;
    __shared__ int s_need, s_count_gt;
    __shared__ int warp_cnt[32];
    DYNAMIC_SHARED(unsigned, cand);
    unsigned* cand_key = cand;
    int* cand_idx = (int*)(cand + k);
    int r = blockIdx.x;
    const float* s = S + (long long)r * N;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (threadIdx.x == 0) { s_prefix = 0u; s_mask = 0u; s_need = k; s_count_gt = 0; }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0u;
        __syncthreads();
        unsigned prefix = s_prefix, mask = s_mask;
        for (int j = threadIdx.x; j < N; j += blockDim.x) {
            unsigned key = float_key(s[j]);
            if ((key & mask) == prefix) atomicAdd(hist + ((key >> shift) & 255u), 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int need = s_need, cum = 0;
            for (int b = 255; b >= 0; --b) {
                int h = (int)hist[b];
                if (cum + h >= need) {
                    s_prefix = prefix | ((unsigned)b << shift);
                    s_mask = mask | (255u << shift);
                    s_need = need - cum;
                    break;
                }
                cum += h;
            }
        }
        __syncthreads();
    }
    unsigned T = s_prefix;
    int need_eq = s_need, n_gt = k - need_eq;
    for (int j = threadIdx.x; j < N; j += blockDim.x) {
        unsigned key = float_key(s[j]);
        if (key > T) {
            int pos = atomicAdd(&s_count_gt, 1);
            cand_key[pos] = key;
            cand_idx[pos] = j;
        }
    }
    // Items equal to T in index order: block-wide prefix count per chunk of blockDim items.
    int taken = 0;
    for (int base = 0; base < N && taken < need_eq; base += blockDim.x) {
        int j = base + threadIdx.x;
        bool eq = j < N && float_key(s[j]) == T;
        unsigned ballot = __ballot_sync(0xffffffffu, eq);
        if (lane == 0) warp_cnt[warp] = __popc(ballot);
        __syncthreads();
        int off = 0, total = 0;
        for (int w = 0; w < nwarps; ++w) {
            int c = warp_cnt[w];
            off += w < warp ? c : 0;
            total += c;
        }
        if (eq) {
            int p = taken + off + __popc(ballot & ((1u << lane) - 1u));
            if (p < need_eq) {
                cand_key[n_gt + p] = T;
                cand_idx[n_gt + p] = j;
            }
        }
        taken += total;
        __syncthreads();
    }
    __syncthreads();
    for (int t = threadIdx.x; t < k; t += blockDim.x) {
        unsigned kt = cand_key[t];
        int it = cand_idx[t], pos = 0;
        for (int u = 0; u < k; ++u) {
            unsigned ku = cand_key[u];
            pos += ku > kt || (ku == kt && cand_idx[u] < it);
        }
        out_idx[(long long)r * k + pos] = it;
        out_val[(long long)r * k + pos] = s[it];
    }
}
