// Losses and their reductions (src/ops/loss/cuda.rs). Reductions are block tree reductions in a
// fixed order (per-row blocks, or per-block partials then one block): deterministic, no atomics.
//   count l1 (Eq. 1): S_n = sum |z_n|, loss = (1/N) sum_n |S_n - y_n|,
//                     dz = sign(S_n - y_n) * sign(z) / N * dloss   (sign(0) = 0)
//   mse:              loss = (1/numel) sum (p - t)^2,  dp = 2 (p - t) / numel * dloss
// dloss is read from device memory (the loss gradient of the tape), so no host round trip.
#include "common.cuh"
#include "reduce.cuh"

__device__ __forceinline__ float signf(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); }

// sums[r] = sum_q |z[r * len + q]|; one block per row (grid-stride over rows).
extern "C" __global__ void __launch_bounds__(256) abs_sum_rows_f32(const float* __restrict__ z, float* __restrict__ sums,
                                            u32 rows, u64 len) {
    __shared__ float sh[33];
    for (u32 r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* zr = z + (u64)r * len;
        float s = 0.0f;
        for (u64 q = threadIdx.x; q < len; q += blockDim.x) s += fabsf(zr[q]);
        s = block_sum(s, sh);
        if (threadIdx.x == 0) sums[r] = s;
    }
}

// loss[0] = (1/n) sum_r |sums[r] - counts[r]|; launch as one block.
extern "C" __global__ void __launch_bounds__(256) count_l1_loss_f32(const float* __restrict__ sums,
                                             const float* __restrict__ counts,
                                             float* __restrict__ loss, u32 n) {
    __shared__ float sh[33];
    float s = 0.0f;
    for (u32 r = threadIdx.x; r < n; r += blockDim.x) s += fabsf(sums[r] - counts[r]);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) loss[0] = s / (float)n;
}

extern "C" __global__ void count_l1_bwd_f32(const float* __restrict__ z,
                                            const float* __restrict__ sums,
                                            const float* __restrict__ counts,
                                            const float* __restrict__ dloss,
                                            float* __restrict__ dz, u32 n, u64 len) {
    const float g = dloss[0] / (float)n;
    GRID_STRIDE(i, (u64)n * len) {
        const u64 r = i / len;
        dz[i] = signf(sums[r] - counts[r]) * signf(z[i]) * g;
    }
}

// partial[blockIdx.x] = sum of (p - t)^2 over this block's grid-stride share.
extern "C" __global__ void __launch_bounds__(256) sq_diff_partial_f32(const float* __restrict__ p,
                                               const float* __restrict__ t,
                                               float* __restrict__ partial, u64 n) {
    __shared__ float sh[33];
    float s = 0.0f;
    GRID_STRIDE(i, n) {
        const float d = p[i] - t[i];
        s += d * d;
    }
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// loss[0] = (sum of partials) / numel; launch as one block.
extern "C" __global__ void __launch_bounds__(256) mse_finalize_f32(const float* __restrict__ partial, u32 parts,
                                            float* __restrict__ loss, u64 numel) {
    __shared__ float sh[33];
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < parts; i += blockDim.x) s += partial[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) loss[0] = s / (float)numel;
}

extern "C" __global__ void mse_bwd_f32(const float* __restrict__ p, const float* __restrict__ t,
                                       const float* __restrict__ dloss, float* __restrict__ dp,
                                       u64 n) {
    const float g = 2.0f * dloss[0] / (float)n;
    GRID_STRIDE(i, n) dp[i] = (p[i] - t[i]) * g;
}
