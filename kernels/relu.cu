// ReLU: y = max(x, 0); backward from the saved output: dx = dy where y > 0 (src/ops/relu/cuda.rs).
#include "common.cuh"

extern "C" __global__ void relu_fwd_f32(const float* __restrict__ x, float* __restrict__ y, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)blockDim.x * gridDim.x) {
        const float v = x[i];
        y[i] = v > 0.0f ? v : 0.0f; // NaN -> 0, as the CPU's f32::max(v, 0.0)
    }
}

extern "C" __global__ void relu_bwd_f32(const float* __restrict__ y, const float* __restrict__ dy,
                                        float* __restrict__ dx, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)blockDim.x * gridDim.x) {
        dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
    }
}
