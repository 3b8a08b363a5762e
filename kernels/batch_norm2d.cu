// BatchNorm2d over NCHW (src/ops/batch_norm2d/cuda.rs). Statistics per channel over (N, H, W),
// M = N*H*W values: a two-pass block reduction (mean, then the mean of squared deviations), one
// block per channel, deterministic. Saved for the backward: mean and invstd = 1/sqrt(var + eps)
// with the biased variance var; the running update uses the unbiased variance var * M/(M-1).
#include "common.cuh"
#include "reduce.cuh"

// Mirrors `BatchNorm2dGeometry` in src/ops/batch_norm2d/mod.rs.
struct BatchNorm2dGeometry {
    u64 hw;   // H * W
    u32 n, c; // batch, channels
};
static_assert(sizeof(BatchNorm2dGeometry) == 16, "layout must match the Rust struct");

// Per channel: mean, biased var, invstd. One block per channel (grid-stride over channels).
extern "C" __global__ void __launch_bounds__(256) bn_stats_f32(BatchNorm2dGeometry p, float eps,
                                        const float* __restrict__ x, float* __restrict__ mean,
                                        float* __restrict__ var, float* __restrict__ invstd) {
    __shared__ float sh[33];
    const float m = (float)((u64)p.n * p.hw);
    for (u32 ch = blockIdx.x; ch < p.c; ch += gridDim.x) {
        float s = 0.0f;
        for (u32 img = 0; img < p.n; ++img) {
            const float* xp = x + ((u64)img * p.c + ch) * p.hw;
            for (u64 q = threadIdx.x; q < p.hw; q += blockDim.x) s += xp[q];
        }
        const float mu = block_sum(s, sh) / m;
        float s2 = 0.0f;
        for (u32 img = 0; img < p.n; ++img) {
            const float* xp = x + ((u64)img * p.c + ch) * p.hw;
            for (u64 q = threadIdx.x; q < p.hw; q += blockDim.x) {
                const float d = xp[q] - mu;
                s2 += d * d;
            }
        }
        const float v = block_sum(s2, sh) / m;
        if (threadIdx.x == 0) {
            mean[ch] = mu;
            var[ch] = v;
            invstd[ch] = 1.0f / sqrtf(v + eps);
        }
    }
}

// invstd[c] = 1/sqrt(var[c] + eps): the eval path's normaliser from the running variance.
extern "C" __global__ void bn_invstd_f32(const float* __restrict__ var, float* __restrict__ invstd,
                                         u32 c, float eps) {
    GRID_STRIDE(i, (u64)c) invstd[i] = 1.0f / sqrtf(var[i] + eps);
}

// y = (x - mean[c]) * (invstd[c] * gamma[c]) + beta[c] (train: batch stats; eval: running
// stats), grouped as the CPU reference.
extern "C" __global__ void bn_fwd_f32(BatchNorm2dGeometry p, const float* __restrict__ x,
                                      const float* __restrict__ mean,
                                      const float* __restrict__ invstd,
                                      const float* __restrict__ gamma,
                                      const float* __restrict__ beta, float* __restrict__ y) {
    const u64 total = (u64)p.n * p.c * p.hw;
    GRID_STRIDE(i, total) {
        const u32 ch = (u32)((i / p.hw) % p.c);
        y[i] = (x[i] - mean[ch]) * (invstd[ch] * gamma[ch]) + beta[ch];
    }
}

// r = (1 - momentum) * r + momentum * stat, with the unbiased variance var * unbias.
extern "C" __global__ void bn_running_update_f32(u32 c, float momentum, float unbias,
                                                 const float* __restrict__ mean,
                                                 const float* __restrict__ var,
                                                 float* __restrict__ running_mean,
                                                 float* __restrict__ running_var) {
    GRID_STRIDE(i, (u64)c) {
        running_mean[i] = (1.0f - momentum) * running_mean[i] + momentum * mean[i];
        running_var[i] = (1.0f - momentum) * running_var[i] + momentum * (var[i] * unbias);
    }
}

// Per channel: dbeta = sum dy, dgamma = sum dy * xhat with xhat = (x - mean) * invstd.
// One block per channel, deterministic.
extern "C" __global__ void __launch_bounds__(256) bn_bwd_reduce_f32(BatchNorm2dGeometry p, const float* __restrict__ x,
                                             const float* __restrict__ dy,
                                             const float* __restrict__ mean,
                                             const float* __restrict__ invstd,
                                             float* __restrict__ dgamma,
                                             float* __restrict__ dbeta) {
    __shared__ float sh[33];
    for (u32 ch = blockIdx.x; ch < p.c; ch += gridDim.x) {
        const float mu = mean[ch], is = invstd[ch];
        float sdy = 0.0f, sdyx = 0.0f;
        for (u32 img = 0; img < p.n; ++img) {
            const u64 base = ((u64)img * p.c + ch) * p.hw;
            for (u64 q = threadIdx.x; q < p.hw; q += blockDim.x) {
                const float g = dy[base + q];
                sdy += g;
                sdyx += g * ((x[base + q] - mu) * is);
            }
        }
        sdy = block_sum(sdy, sh);
        sdyx = block_sum(sdyx, sh);
        if (threadIdx.x == 0) {
            dbeta[ch] = sdy;
            dgamma[ch] = sdyx;
        }
    }
}

// Training-mode input gradient, in the CPU reference's form:
// dx = gamma*invstd * (dy - dbeta/M - xhat*dgamma/M).
extern "C" __global__ void bn_bwd_dx_train_f32(BatchNorm2dGeometry p, const float* __restrict__ x,
                                               const float* __restrict__ dy,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ invstd,
                                               const float* __restrict__ gamma,
                                               const float* __restrict__ dgamma,
                                               const float* __restrict__ dbeta,
                                               float* __restrict__ dx) {
    const u64 total = (u64)p.n * p.c * p.hw;
    const float m = (float)((u64)p.n * p.hw);
    GRID_STRIDE(i, total) {
        const u32 ch = (u32)((i / p.hw) % p.c);
        const float is = invstd[ch];
        const float xhat = (x[i] - mean[ch]) * is;
        const float mdy = dbeta[ch] / m, mdyx = dgamma[ch] / m;
        dx[i] = gamma[ch] * is * (dy[i] - mdy - xhat * mdyx);
    }
}

// Eval-mode input gradient (statistics are constants): dx = dy * gamma * invstd.
extern "C" __global__ void bn_bwd_dx_eval_f32(BatchNorm2dGeometry p, const float* __restrict__ dy,
                                              const float* __restrict__ invstd,
                                              const float* __restrict__ gamma,
                                              float* __restrict__ dx) {
    const u64 total = (u64)p.n * p.c * p.hw;
    GRID_STRIDE(i, total) {
        const u32 ch = (u32)((i / p.hw) % p.c);
        dx[i] = dy[i] * (gamma[ch] * invstd[ch]);
    }
}
