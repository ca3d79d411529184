// user.cu -- kernels of the user-level GRU (HRNN; gru_engine/user_level.py) around the GRU4Rec
// ones (float32): the user GRU itself runs through gru_cell_forward/backward and the GEMMs; these
// move rows between the user part and the session GRU's step. Row flags are unsigned char
// (0/1, one per row). All launch as a 1-D grid over the elements they write (256 threads
// recommended).

#include "common.cuh"

// dst[i*dst_ld + j] = src ? src[i*src_ld + j] : 0 where flag[i] != 0 (other rows untouched),
// i < n, j < width: the user states of the rows that commit a session or start a user, the
// initial hidden state h0 of the rows that start a session with a user state, a finished
// session's combined state.
extern "C" __global__ void select_rows(float* __restrict__ dst, int dst_ld,
                                       const float* __restrict__ src, int src_ld,
                                       const unsigned char* __restrict__ flag, int n, int width) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * width) return;
    int i = (int)(t / width), j = (int)(t % width);
    if (!flag[i]) return;
    dst[(long long)i * dst_ld + j] = src ? src[(long long)i * src_ld + j] : 0.0f;
}

// Gradient of a step's loss w.r.t. layer g's previous state h_prev (one-step BPTT):
// out[i*out_ld + j] = dh[i, j] * (mask ? mask[i, j] : 1) * z[i, j] + dgh_wh[i, j], i < n, j < H,
// with z the update gate in saved (n, 4H) = [r | z | n | hn] of gru_cell_forward, dh (n, H) the
// gradient w.r.t. the cell's dropped-out output (mask: its dropout mask or NULL) and
// dgh_wh (n, H) = d_gh @ Wh^T. out_ld: the width of the concatenated state of every layer.
extern "C" __global__ void state_grad(const float* __restrict__ dh,
                                      const float* __restrict__ mask,
                                      const float* __restrict__ saved,
                                      const float* __restrict__ dgh_wh,
                                      float* __restrict__ out, int out_ld, int n, int H) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * H) return;
    int i = (int)(t / H), j = (int)(t % H);
    float g = dh[t];
    if (mask) g *= mask[t];
    out[(long long)i * out_ld + j] = g * saved[(long long)i * 4 * H + H + j] + dgh_wh[t];
}

// Backward of h0 = tanh(pre) on the rows with flag[i] != 0 (the others get 0):
// dpre[i, j] = flag[i] ? dh0[i, j] * (1 - h0[i, j]^2) : 0, i < n, j < width.
extern "C" __global__ void tanh_rows_backward(const float* __restrict__ dh0,
                                              const float* __restrict__ h0,
                                              const unsigned char* __restrict__ flag,
                                              float* __restrict__ dpre, int n, int width) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)n * width) return;
    int i = (int)(t / width);
    float h = h0[t];
    dpre[t] = flag[i] ? dh0[t] * (1.0f - h * h) : 0.0f;
}

// x[t] += y[t], t < n: the user GRU's extra layer-0 gates added to the session GRU's (after the
// bias), the two gradient paths into the user state summed.
extern "C" __global__ void add_inplace(float* __restrict__ x, const float* __restrict__ y,
                                       long long n) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) x[t] += y[t];
}
