// tensor.cu -- small elementwise / gather kernels around the GEMMs of a training step (float32).
// All launch as a 1-D grid over the elements they write (block size free, 256 recommended);
// column_sum launches one thread per column.

#include "common.cuh"

// out[i*out_ld + j] = src[idx[i]*src_ld + j] * (row_scale ? row_scale[i] : 1) + (bias ? bias[j] : 0)
// for i < n, j < width. Row lookups: one-hot input (Wx[0] rows + bx), embeddings, Wy/By of the
// sampled columns, logq corrections.
extern "C" __global__ void gather_rows(const float* __restrict__ src, int src_ld,
                                       const int* __restrict__ idx, int n, int width,
                                       const float* __restrict__ bias,
                                       const float* __restrict__ row_scale,
                                       float* __restrict__ out, int out_ld) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * width) return;
    int i = (int)(t / width), j = (int)(t % width);
    float v = src[(long long)idx[i] * src_ld + j];
    if (row_scale) v *= row_scale[i];
    if (bias) v += bias[j];
    out[(long long)i * out_ld + j] = v;
}

// dst[idx[i]*width + j] = src[i*width + j]; idx must hold distinct rows (hidden-state slots).
extern "C" __global__ void scatter_rows(const float* __restrict__ src, const int* __restrict__ idx,
                                        int n, int width, float* __restrict__ dst) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * width) return;
    int i = (int)(t / width), j = (int)(t % width);
    dst[(long long)idx[i] * width + j] = src[t];
}

// s[i*n_cols + j] += bias[j] (score block plus output bias).
extern "C" __global__ void add_bias(float* __restrict__ s, const float* __restrict__ bias,
                                    int n_rows, int n_cols) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n_rows * n_cols) return;
    s[t] += bias[t % n_cols];
}

// out[j] = sum_i a[i*ld + j], j < n_cols (bias gradients). One thread per column, rows looped
// in order (deterministic; coalesced across threads).
extern "C" __global__ void column_sum(const float* __restrict__ a, int n_rows, int ld, int n_cols,
                                      float* __restrict__ out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n_cols) return;
    float acc = 0.0f;
    for (int i = 0; i < n_rows; ++i) acc += a[(long long)i * ld + j];
    out[j] = acc;
}

// x[t] *= m[t] (dropout mask applied to an input, or its gradient).
extern "C" __global__ void multiply_inplace(float* __restrict__ x, const float* __restrict__ m,
                                            long long n) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) x[t] *= m[t];
}

// Inverted-dropout mask from a counter-based hash (same bits on GPU and in the emulator):
// u = hash(seed, stream, t) in [0, 1); m[t] = u >= p ? 1/(1-p) : 0, with
// stream = (step ? step[0] : 0) * stride + offset. The step counter lives in device memory so
// that a step captured into a CUDA graph draws fresh masks on every replay (a scalar argument
// would be frozen at capture time); advance it with counter_add.
static __device__ __forceinline__ unsigned mix32(unsigned x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
extern "C" __global__ void dropout_mask(float* __restrict__ m, long long n, float p,
                                        unsigned seed, const unsigned* __restrict__ step,
                                        unsigned stride, unsigned offset) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    unsigned stream = (step ? step[0] : 0u) * stride + offset;
    unsigned h = mix32(mix32(seed ^ 0x9e3779b9u) ^ mix32(stream + 0x85ebca6bu) ^ (unsigned)t);
    h = mix32(h ^ (unsigned)(t >> 32));
    float u = (float)(h >> 8) * (1.0f / 16777216.0f);
    m[t] = u >= p ? 1.0f / (1.0f - p) : 0.0f;
}

// c[0] += v (one thread): advances a device-side counter such as dropout_mask's step.
extern "C" __global__ void counter_add(unsigned* c, unsigned v) {
    if (blockIdx.x == 0 && threadIdx.x == 0) c[0] += v;
}

// Final activation of the score block before the loss: kind 0 linear, 1 relu, 2 tanh,
// 3 leaky-relu (param = negative slope), 4 elu (param = alpha).
extern "C" __global__ void final_act_forward(const float* __restrict__ x, float* __restrict__ y,
                                             long long n, int kind, float param) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    float v = x[t];
    switch (kind) {
        case 1: v = v > 0.0f ? v : 0.0f; break;
        case 2: v = tanhf(v); break;
        case 3: v = v > 0.0f ? v : param * v; break;
        case 4: v = v > 0.0f ? v : param * (expf(v) - 1.0f); break;
        default: break;
    }
    y[t] = v;
}

// dx[t] = dy[t] * act'(x[t]) (x: the pre-activation scores). May run in place (dx == dy).
extern "C" __global__ void final_act_backward(const float* __restrict__ x, const float* dy,
                                              float* dx, long long n, int kind, float param) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    float v = x[t], d = 1.0f;
    switch (kind) {
        case 1: d = v > 0.0f ? 1.0f : 0.0f; break;
        case 2: { float th = tanhf(v); d = 1.0f - th * th; } break;
        case 3: d = v > 0.0f ? 1.0f : param; break;
        case 4: d = v > 0.0f ? 1.0f : param * expf(v); break;
        default: break;
    }
    dx[t] = dy[t] * d;
}
