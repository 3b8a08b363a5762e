// Max pooling, 2x2 window, stride 2, floor (PyTorch's default): src/ops/max_pool2d/.
// The forward saves, per output, the flat index (row * W + col) of the winning input inside its
// (n, c) plane; the backward routes dy back to it. Windows do not overlap, so the backward is a
// gather over inputs (one write each, no atomics, no separate zero fill).
#include "common.cuh"

// Mirrors `MaxPool2dGeometry` in src/ops/max_pool2d/mod.rs.
struct MaxPool2dGeometry {
    u32 planes;  // N * C
    u32 h, w;    // input size
    u32 oh, ow;  // output size: h / 2, w / 2
};
static_assert(sizeof(MaxPool2dGeometry) == 20, "layout must match the Rust struct");

// First maximum in row-major window order; a NaN wins over anything before it, including an
// earlier NaN (the last NaN in scan order is the argmax), exactly as the CPU reference.
extern "C" __global__ void max_pool2x2_fwd_f32(MaxPool2dGeometry p, const float* __restrict__ x,
                                               float* __restrict__ y, u32* __restrict__ argmax) {
    const u64 total = (u64)p.planes * p.oh * p.ow;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const u32 ox = (u32)(i % p.ow);
        const u32 oy = (u32)((i / p.ow) % p.oh);
        const u64 plane = i / ((u64)p.ow * p.oh);
        const float* xp = x + plane * p.h * p.w;
        const u32 y0 = 2 * oy, x0 = 2 * ox;
        u32 best_i = y0 * p.w + x0;
        float best = xp[best_i];
        for (u32 dy = 0; dy < 2; ++dy) {
            for (u32 dx = 0; dx < 2; ++dx) {
                const u32 idx = (y0 + dy) * p.w + x0 + dx;
                const float v = xp[idx];
                if (v > best || v != v) {
                    best = v;
                    best_i = idx;
                }
            }
        }
        y[i] = best;
        argmax[i] = best_i;
    }
}

// dx[plane][yy][xx] = dy[plane][yy/2][xx/2] if (yy, xx) won its window, else 0.
extern "C" __global__ void max_pool2x2_bwd_f32(MaxPool2dGeometry p, const float* __restrict__ dy,
                                               const u32* __restrict__ argmax,
                                               float* __restrict__ dx) {
    const u64 total = (u64)p.planes * p.h * p.w;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const u32 xx = (u32)(i % p.w);
        const u32 yy = (u32)((i / p.w) % p.h);
        const u64 plane = i / ((u64)p.w * p.h);
        const u32 oy = yy / 2, ox = xx / 2;
        float g = 0.0f;
        if (oy < p.oh && ox < p.ow) {
            const u64 o = (plane * p.oh + oy) * p.ow + ox;
            if (argmax[o] == yy * p.w + xx) g = dy[o];
        }
        dx[i] = g;
    }
}
