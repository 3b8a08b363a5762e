// The sample geometry every GMP kernel file shares (kernels/gmp.cu, kernels/gmp_cl.cu; build.rs
// expands `#include "gmp_taps.cuh"` after common.cuh): the parameter struct, a sample point's
// floor cell and its four taps with the CPU reference's exact semantics (src/ops/gmp/cpu.rs).

// Mirrors `GmpGeometry` in src/ops/gmp/mod.rs field for field.
struct GmpGeometry {
    u32 n, c, h, w; // x is [n, c, h, w]; offsets are [n, 2k, h, w]
    u32 k;          // sampling points
    u32 c_per_group; // fused only: channels per thread (blockIdx.y selects the group)
};
static_assert(sizeof(GmpGeometry) == 24, "GmpGeometry layout must match the Rust struct");

// The floor cell of a sample point, with exactly the CPU reference's semantics
// (src/ops/gmp/cpu.rs `taps`): taps t = 0..3 sit at (y0, x0), (y0, x0+1), (y0+1, x0),
// (y0+1, x0+1) (row, column); bit t of mask says tap t is inside the map. A tap outside reads
// index 0 with weight 0 (so a non-finite x[0] or weight still propagates, as on the CPU), and
// base = y0*w + x0 is only used for taps inside.
struct Cell {
    int base;
    float fx, fy;
    u32 mask;
};

__device__ __forceinline__ Cell gmp_cell(float px, float py, u32 h, u32 w) {
    const float fx0 = floorf(px), fy0 = floorf(py);
    // The CPU casts floor() to i64 with saturation (NaN -> 0). Only each tap's inside/outside
    // status and the indices of inside taps matter, and clamping to [-2, size+1] keeps both for
    // every value while keeping the float->int conversion defined.
    const int x0 = (fx0 != fx0) ? 0 : (int)fminf(fmaxf(fx0, -2.0f), (float)w + 1.0f);
    const int y0 = (fy0 != fy0) ? 0 : (int)fminf(fmaxf(fy0, -2.0f), (float)h + 1.0f);
    const bool xin0 = x0 >= 0 && x0 < (int)w, xin1 = x0 + 1 >= 0 && x0 + 1 < (int)w;
    const bool yin0 = y0 >= 0 && y0 < (int)h, yin1 = y0 + 1 >= 0 && y0 + 1 < (int)h;
    Cell c;
    c.base = y0 * (int)w + x0;
    // From the unclamped position, as the CPU: NaN for a non-finite position, and then every
    // weight (inside or not) is NaN and the sample is NaN.
    c.fx = px - fx0;
    c.fy = py - fy0;
    c.mask = (u32)(yin0 && xin0) | ((u32)(yin0 && xin1) << 1) | ((u32)(yin1 && xin0) << 2) |
             ((u32)(yin1 && xin1) << 3);
    return c;
}

__device__ __forceinline__ bool tap_inside(const Cell& c, int t) { return (c.mask >> t) & 1u; }

// Index of tap t within the plane: its position when inside, else 0 (the CPU table's index).
__device__ __forceinline__ int tap_index(const Cell& c, int t, u32 w) {
    return tap_inside(c, t) ? c.base + (t & 1) + ((t >> 1) ? (int)w : 0) : 0;
}

// Bilinear weight of tap t, times 1 inside and 0 outside (the CPU's `weights`).
__device__ __forceinline__ float tap_weight(const Cell& c, int t) {
    const float wx = (t & 1) ? c.fx : 1.0f - c.fx;
    const float wy = (t >> 1) ? c.fy : 1.0f - c.fy;
    return wx * wy * (tap_inside(c, t) ? 1.0f : 0.0f);
}
// d(weight)/dx (column) and d(weight)/dy (row) on the floor cell, masked (the CPU's
// `dweights`).
__device__ __forceinline__ float tap_dwdx(const Cell& c, int t) {
    const float wy = (t >> 1) ? c.fy : 1.0f - c.fy;
    return ((t & 1) ? wy : -wy) * (tap_inside(c, t) ? 1.0f : 0.0f);
}
__device__ __forceinline__ float tap_dwdy(const Cell& c, int t) {
    const float wx = (t & 1) ? c.fx : 1.0f - c.fx;
    return ((t >> 1) ? wx : -wx) * (tap_inside(c, t) ? 1.0f : 0.0f);
}

// Cell of sample k at plane position pos = i*w + j; op points at off[n][0][0][0].
__device__ __forceinline__ Cell cell_at(const GmpGeometry& p, const float* __restrict__ op, u64 hw,
                                        u64 pos, u32 k) {
    const u32 i = (u32)(pos / p.w), j = (u32)(pos % p.w);
    const float u = op[(2 * (u64)k) * hw + pos];
    const float v = op[(2 * (u64)k + 1) * hw + pos];
    return gmp_cell((float)j + u, (float)i + v, p.h, p.w);
}

