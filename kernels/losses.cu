// losses.cu -- fused sampled-output losses of GRU4Rec (float32), one kernel per loss.
//
// Input: the score block S (R, C), C = R + n_sample: column i is row i's positive (the in-batch
// targets), then the shared sampled negatives. Every other column of a row is a negative
// (duplicates of the positive included, never masked), as in the reference implementation.
// Per row (one block per row, blockDim a multiple of 32, 256 recommended):
//   row_loss[r]  the row's loss (0 for a row with row_mask[r] == 0; row_mask may be NULL),
//   dS[r, :]     scale * dLoss_r/dS[r, :] (scale = 1/batch_size: step loss = sum / batch_size),
//   *loss_sum   += scale * row_loss[r] (atomic; loss_sum may be NULL).
// Softmaxes subtract the row maximum. The final activation (if any) is a separate elementwise
// kernel (tensor.cu: final_act_forward/backward); the ELU of bpr-max (elu_param) is fused here.

#include "common.cuh"

static __device__ __forceinline__ bool skip_row(const unsigned char* row_mask, int r, int C,
                                                float* row_loss, float* dS) {
    if (row_mask == 0 || row_mask[r]) return false;
    for (int j = threadIdx.x; j < C; j += blockDim.x) dS[(long long)r * C + j] = 0.0f;
    if (threadIdx.x == 0) row_loss[r] = 0.0f;
    return true;
}

static __device__ __forceinline__ void finish_row(int r, float loss, float scale,
                                                  float* row_loss, float* loss_sum) {
    if (threadIdx.x == 0) {
        row_loss[r] = loss;
        if (loss_sum) atomicAdd(loss_sum, scale * loss);
    }
}

// Cross-entropy over all C columns, -log(p_pos + 1e-24); with corr != NULL the softmax runs on
// S - corr (corr[j] = logq * log(q_j), the sampling-probability correction).
extern "C" __global__ void loss_cross_entropy(const float* __restrict__ S, int R, int C,
                                              const float* __restrict__ corr,
                                              const unsigned char* __restrict__ row_mask,
                                              float scale, float* __restrict__ row_loss,
                                              float* loss_sum, float* __restrict__ dS) {
    int r = blockIdx.x;
    if (skip_row(row_mask, r, C, row_loss, dS)) return;
    const float* s = S + (long long)r * C;
    float* d = dS + (long long)r * C;
    float m = NEG_INF_F;
    for (int j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, s[j] - (corr ? corr[j] : 0.0f));
    m = block_max(m);
    float acc = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) acc += expf(s[j] - (corr ? corr[j] : 0.0f) - m);
    float D = block_sum(acc);
    float p_pos = expf(s[r] - (corr ? corr[r] : 0.0f) - m) / D;
    float c = p_pos / (p_pos + 1e-24f);  // d(-log(p+eps))/dp * p
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float p = expf(s[j] - (corr ? corr[j] : 0.0f) - m) / D;
        d[j] = scale * c * (p - (j == r ? 1.0f : 0.0f));
    }
    finish_row(r, -logf(p_pos + 1e-24f), scale, row_loss, loss_sum);
}

// bpr-max: x = ELU_elu(S) if elu > 0 else S; s_j = softmax over the negatives (j != r);
// loss = -log(sum_j s_j sigmoid(x_r - x_j) + 1e-24) + bpreg * sum_j s_j x_j^2.
extern "C" __global__ void loss_bpr_max(const float* __restrict__ S, int R, int C,
                                        const unsigned char* __restrict__ row_mask, float scale,
                                        float bpreg, float elu, float* __restrict__ row_loss,
                                        float* loss_sum, float* __restrict__ dS) {
    int r = blockIdx.x;
    if (skip_row(row_mask, r, C, row_loss, dS)) return;
    const float* s = S + (long long)r * C;
    float* d = dS + (long long)r * C;
    if (C < 2) {
        if (threadIdx.x == 0) d[0] = 0.0f;
        finish_row(r, 0.0f, scale, row_loss, loss_sum);
        return;
    }
#define BPRMAX_X(j) (elu > 0.0f && s[j] <= 0.0f ? elu * (expf(s[j]) - 1.0f) : s[j])
    float xp = BPRMAX_X(r);
    float m = NEG_INF_F;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        if (j != r) m = fmaxf(m, BPRMAX_X(j));
    m = block_max(m);
    float a_e = 0.0f, a_es = 0.0f, a_ex2 = 0.0f, a_ess = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        if (j == r) continue;
        float x = BPRMAX_X(j), e = expf(x - m), sg = sigmoidf_(xp - x);
        a_e += e; a_es += e * sg; a_ex2 += e * x * x; a_ess += e * sg * (1.0f - sg);
    }
    float D = block_sum(a_e);
    float A = block_sum(a_es) / D;   // sum_j s_j sigmoid(x_r - x_j)
    float Q = block_sum(a_ex2) / D;  // sum_j s_j x_j^2
    float P = block_sum(a_ess) / D;  // sum_j s_j sigmoid'(x_r - x_j)
    float inv = 1.0f / (A + 1e-24f);
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float x = BPRMAX_X(j), g;
        if (j == r) {
            g = -inv * P;
        } else {
            float sj = expf(x - m) / D, sg = sigmoidf_(xp - x);
            g = -inv * sj * (sg - A - sg * (1.0f - sg)) + bpreg * sj * (x * x - Q + 2.0f * x);
        }
        if (elu > 0.0f && s[j] <= 0.0f) g *= elu * expf(s[j]);
        d[j] = scale * g;
    }
#undef BPRMAX_X
    finish_row(r, -logf(A + 1e-24f) + bpreg * Q, scale, row_loss, loss_sum);
}

// top1-max: s_j = softmax over the negatives; loss = sum_j s_j (sigmoid(x_j - x_r) + sigmoid(x_j^2)).
extern "C" __global__ void loss_top1_max(const float* __restrict__ S, int R, int C,
                                         const unsigned char* __restrict__ row_mask, float scale,
                                         float* __restrict__ row_loss, float* loss_sum,
                                         float* __restrict__ dS) {
    int r = blockIdx.x;
    if (skip_row(row_mask, r, C, row_loss, dS)) return;
    const float* s = S + (long long)r * C;
    float* d = dS + (long long)r * C;
    if (C < 2) {
        if (threadIdx.x == 0) d[0] = 0.0f;
        finish_row(r, 0.0f, scale, row_loss, loss_sum);
        return;
    }
    float xp = s[r];
    float m = NEG_INF_F;
    for (int j = threadIdx.x; j < C; j += blockDim.x)
        if (j != r) m = fmaxf(m, s[j]);
    m = block_max(m);
    float a_e = 0.0f, a_et = 0.0f, a_ed = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        if (j == r) continue;
        float x = s[j], e = expf(x - m), s1 = sigmoidf_(x - xp), s2 = sigmoidf_(x * x);
        a_e += e; a_et += e * (s1 + s2); a_ed += e * s1 * (1.0f - s1);
    }
    float D = block_sum(a_e);
    float T = block_sum(a_et) / D;
    float U = block_sum(a_ed) / D;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        float g;
        if (j == r) {
            g = -U;
        } else {
            float x = s[j], sj = expf(x - m) / D, s1 = sigmoidf_(x - xp), s2 = sigmoidf_(x * x);
            g = sj * (s1 + s2 - T) + sj * (s1 * (1.0f - s1) + 2.0f * x * s2 * (1.0f - s2));
        }
        d[j] = scale * g;
    }
    finish_row(r, T, scale, row_loss, loss_sum);
}

// bpr (2016): mean over the C-1 negatives of -log(sigmoid(x_r - x_j)) (computed as softplus).
extern "C" __global__ void loss_bpr(const float* __restrict__ S, int R, int C,
                                    const unsigned char* __restrict__ row_mask, float scale,
                                    float* __restrict__ row_loss, float* loss_sum,
                                    float* __restrict__ dS) {
    int r = blockIdx.x;
    if (skip_row(row_mask, r, C, row_loss, dS)) return;
    const float* s = S + (long long)r * C;
    float* d = dS + (long long)r * C;
    float inv_n = C > 1 ? 1.0f / (float)(C - 1) : 0.0f;
    float xp = s[r];
    float a_l = 0.0f, a_g = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        if (j == r) continue;
        float u = s[j] - xp;  // -log(sigmoid(-u)) = softplus(u)
        a_l += fmaxf(u, 0.0f) + log1pf(expf(-fabsf(u)));
        float g = sigmoidf_(u) * inv_n;
        a_g += g;
        d[j] = scale * g;
    }
    float L = block_sum(a_l) * inv_n;
    float G = block_sum(a_g);
    if (threadIdx.x == 0) d[r] = -scale * G;
    finish_row(r, L, scale, row_loss, loss_sum);
}

// top1 (2016): mean over the C-1 negatives of sigmoid(x_j - x_r) + sigmoid(x_j^2).
extern "C" __global__ void loss_top1(const float* __restrict__ S, int R, int C,
                                     const unsigned char* __restrict__ row_mask, float scale,
                                     float* __restrict__ row_loss, float* loss_sum,
                                     float* __restrict__ dS) {
    int r = blockIdx.x;
    if (skip_row(row_mask, r, C, row_loss, dS)) return;
    const float* s = S + (long long)r * C;
    float* d = dS + (long long)r * C;
    float inv_n = C > 1 ? 1.0f / (float)(C - 1) : 0.0f;
    float xp = s[r];
    float a_l = 0.0f, a_g = 0.0f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) {
        if (j == r) continue;
        float x = s[j], s1 = sigmoidf_(x - xp), s2 = sigmoidf_(x * x);
        a_l += s1 + s2;
        float d1 = s1 * (1.0f - s1) * inv_n;
        a_g += d1;
        d[j] = scale * (d1 + 2.0f * x * s2 * (1.0f - s2) * inv_n);
    }
    float L = block_sum(a_l) * inv_n;
    float G = block_sum(a_g);
    if (threadIdx.x == 0) d[r] = -scale * G;
    finish_row(r, L, scale, row_loss, loss_sum);
}
