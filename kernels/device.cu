// The device's own primitives (src/device/cuda/primitives.rs): filling a buffer and adding one
// buffer into another in place (gradient accumulation). Not ops: the tensor and the tape use
// them, and no op is below those.
#include "common.cuh"

extern "C" __global__ void fill_f32(float* __restrict__ y, float v, u64 n) {
    GRID_STRIDE(i, n) y[i] = v;
}

// y += x.
extern "C" __global__ void add_assign_f32(float* __restrict__ y, const float* __restrict__ x, u64 n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}
