// Small elementwise ops and a scalar sum (src/ops/elementwise/cuda.rs). The sum is a two-pass
// block tree reduction (per-block partials, then one block), so it is deterministic for a given
// launch configuration and independent of atomics order.
#include "common.cuh"
#include "reduce.cuh"

extern "C" __global__ void add_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}

extern "C" __global__ void scale_f32(const float* __restrict__ x, float s, float* __restrict__ y,
                                     u64 n) {
    GRID_STRIDE(i, n) y[i] = s * x[i];
}

// y = s[0] * x: the factor on the device (a loss gradient), so nothing waits to read it.
extern "C" __global__ void scale_by_f32(const float* __restrict__ x, const float* __restrict__ s,
                                        float* __restrict__ y, u64 n) {
    const float v = s[0];
    GRID_STRIDE(i, n) y[i] = v * x[i];
}

extern "C" __global__ void abs_f32(const float* __restrict__ x, float* __restrict__ y, u64 n) {
    GRID_STRIDE(i, n) y[i] = fabsf(x[i]);
}

// dx = sign(x) * dy with sign(0) = 0 (as PyTorch).
extern "C" __global__ void abs_bwd_f32(const float* __restrict__ x, const float* __restrict__ dy,
                                       float* __restrict__ dx, u64 n) {
    GRID_STRIDE(i, n) {
        const float v = x[i];
        dx[i] = v > 0.0f ? dy[i] : (v < 0.0f ? -dy[i] : 0.0f);
    }
}

// y[i] = s[0]: broadcasts a device scalar (the gradient of a sum) without a host round trip.
extern "C" __global__ void fill_scalar_f32(const float* __restrict__ s, float* __restrict__ y, u64 n) {
    const float v = s[0];
    GRID_STRIDE(i, n) y[i] = v;
}

// partial[blockIdx.x] = sum of this block's grid-stride share of x.
extern "C" __global__ void __launch_bounds__(256) sum_partial_f32(const float* __restrict__ x, float* __restrict__ partial,
                                           u64 n) {
    __shared__ float sh[33];
    float s = 0.0f;
    GRID_STRIDE(i, n) s += x[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out[0] = sum of partial[0..parts); launch as a single block.
extern "C" __global__ void __launch_bounds__(256) sum_finalize_f32(const float* __restrict__ partial, u32 parts,
                                            float* __restrict__ out) {
    __shared__ float sh[33];
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < parts; i += blockDim.x) s += partial[i];
    s = block_sum(s, sh);
    if (threadIdx.x == 0) out[0] = s;
}
