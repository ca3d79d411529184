// gru_cell.cu -- fused GRU cell of one time step of a session-parallel batch (float32).
//
// Layout (shared with the CPU backend): gates along the 3H axis are [r | z | n];
//   gx = x @ Wx + bx (B, 3H), gh = h_prev @ Wh (B, 3H), both computed by GEMMs outside;
//   r = sigmoid(gx_r + gh_r), z = sigmoid(gx_z + gh_z), hn = gh_n + bhn,
//   n = tanh(gx_n + r * hn), h' = (1 - z) * n + z * h_prev.
// A row with reset[i] != 0 starts a session: gh and h_prev are taken as 0 for that row.
// Inverted dropout on the output: out = h' * mask (mask holds 0 or 1/(1-p); NULL = no dropout).
// Launch: 1-D grid over B*H elements, any block size (256 recommended).

#include "common.cuh"

// Outputs: h_out (B, H) = dropout(h'); saved (B, 4H) = [r | z | n | hn] for backward;
// h_prev_eff (B, H) = the h_prev the cell used (0 on reset rows) for dWh = h_prev_eff^T d_gh.
extern "C" __global__ void gru_cell_forward(const float* __restrict__ gx,
                                            const float* __restrict__ gh,
                                            const float* __restrict__ bhn,
                                            const float* __restrict__ h_prev,
                                            const unsigned char* __restrict__ reset,
                                            const float* __restrict__ mask,
                                            float* __restrict__ h_out,
                                            float* __restrict__ saved,
                                            float* __restrict__ h_prev_eff,
                                            int B, int H) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)B * H;
    if (idx >= total) return;
    int i = (int)(idx / H), j = (int)(idx % H);
    const float* gxi = gx + (long long)i * 3 * H;
    bool rs = reset[i] != 0;
    float ghr = 0.0f, ghz = 0.0f, ghn = 0.0f, hp = 0.0f;
    if (!rs) {
        const float* ghi = gh + (long long)i * 3 * H;
        ghr = ghi[j];
        ghz = ghi[H + j];
        ghn = ghi[2 * H + j];
        hp = h_prev[idx];
    }
    float r = sigmoidf_(gxi[j] + ghr);
    float z = sigmoidf_(gxi[H + j] + ghz);
    float hn = ghn + bhn[j];
    float n = tanhf(gxi[2 * H + j] + r * hn);
    float h = (1.0f - z) * n + z * hp;
    if (mask) h *= mask[idx];
    h_out[idx] = h;
    float* s = saved + (long long)i * 4 * H;
    s[j] = r;
    s[H + j] = z;
    s[2 * H + j] = n;
    s[3 * H + j] = hn;
    h_prev_eff[idx] = hp;
}

// One-step BPTT (h_prev is a constant). dh: gradient w.r.t. the cell's (dropped-out) output.
// Outputs d_gx (B, 3H) = dLoss/d(gx) and d_gh (B, 3H) = dLoss/d(gh incl. bhn for the n part),
// so dWx = x^T d_gx, dbx = colsum(d_gx), dWh = h_prev_eff^T d_gh, dbhn = colsum(d_gh[:, 2H:]).
extern "C" __global__ void gru_cell_backward(const float* __restrict__ dh,
                                             const float* __restrict__ saved,
                                             const float* __restrict__ h_prev_eff,
                                             const float* __restrict__ mask,
                                             float* __restrict__ d_gx,
                                             float* __restrict__ d_gh,
                                             int B, int H) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)B * H;
    if (idx >= total) return;
    int i = (int)(idx / H), j = (int)(idx % H);
    const float* s = saved + (long long)i * 4 * H;
    float r = s[j], z = s[H + j], n = s[2 * H + j], hn = s[3 * H + j];
    float g = dh[idx];
    if (mask) g *= mask[idx];
    float dn_pre = g * (1.0f - z) * (1.0f - n * n);
    float dz_pre = g * (h_prev_eff[idx] - n) * z * (1.0f - z);
    float dr_pre = dn_pre * hn * r * (1.0f - r);
    float* dgx = d_gx + (long long)i * 3 * H;
    float* dgh = d_gh + (long long)i * 3 * H;
    dgx[j] = dr_pre;
    dgx[H + j] = dz_pre;
    dgx[2 * H + j] = dn_pre;
    dgh[j] = dr_pre;
    dgh[H + j] = dz_pre;
    dgh[2 * H + j] = dn_pre * r;
}
