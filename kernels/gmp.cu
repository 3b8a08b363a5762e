// Global message passing sampling (DESIGN §1, src/ops/gmp/cuda.rs), versions side by side in the
// llm.c manner, all computing the same function (the channels-last `cl` versions, which also
// fold in the layer's residual, are in kernels/gmp_cl.cu; the geometry in gmp_taps.cuh):
//   a[n][c][i][j] = (1/K) * sum_k bilinear(x[n][c], j + u_k, i + v_k)
// with u_k = off[n][2k][i][j] (horizontal), v_k = off[n][2k+1][i][j] (vertical), pixel centres at
// integer coordinates and zero padding (each of the 4 taps counts only if inside the map), i.e.
// grid_sample(align_corners=True, padding_mode="zeros"). For these versions the residual x + a
// is a separate elementwise pass; the offsets' conv1x1 (cuBLAS) belongs to the layer.
// Backward, given da: dx gets da/K times each tap weight (scatter: atomics); doff gets
// sum_c da/K * sum_t x(tap t) * d(w_t)/d(pos), derivatives taken in the forward's floor cell.
//   naive:   one thread per output element (n, c, i, j) looping over K; backward: one thread
//            per (n, c, i, j) for dx (atomics) and one per (n, k, i, j) looping over C for doff.
//   unfused: one kernel per stage: per-(n, k, i, j) tap indices and weights, per-(n, k, c, i, j)
//            samples [N, K, C, H, W], mean over K; backward likewise through [N, K, C, H, W]
//            position-gradient buffers reduced over C by a last kernel.
//   fused:   one kernel each way (instantiated for K <= 4, 8 and 16, see below; the first
//            version, arrays for 16 whatever K, is kept as fused16). A thread owns a position
//            (n, i, j) and a group of channels
//            (blockIdx.y); it computes the K cells once and reuses them for every channel of
//            its group. Threads of a warp hold neighbouring positions, so NCHW reads and writes
//            stay coalesced. The backward produces dx (atomics) and doff (per-thread sums over
//            its channels, added once per channel group) in the same pass.
#include "common.cuh"
#include "gmp_taps.cuh"

#define GMP_FUSED_MAX_K 16

// acc += w_t * x[tap] for the four taps, in tap order (outside taps read x[0] with weight 0).
__device__ __forceinline__ float gmp_accumulate(float acc, const float* __restrict__ xp,
                                                const Cell& c, u32 w) {
#pragma unroll
    for (int t = 0; t < 4; ++t) acc += tap_weight(c, t) * xp[tap_index(c, t, w)];
    return acc;
}

// d(sample)/d(px) and d(sample)/d(py).
__device__ __forceinline__ void gmp_sample_grad(const float* __restrict__ xp, const Cell& c, u32 w,
                                                float* sx, float* sy) {
    float gx = 0.0f, gy = 0.0f;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const float v = xp[tap_index(c, t, w)];
        gx += v * tap_dwdx(c, t);
        gy += v * tap_dwdy(c, t);
    }
    *sx = gx;
    *sy = gy;
}

// dx[tap] += w_t * g. A zero product changes nothing, so it is skipped: that spares the
// atomics of outside taps (all aimed at index 0) unless the product is NaN, which the CPU
// adds there too.
__device__ __forceinline__ void gmp_scatter(float* dxp, const Cell& c, u32 w, float g) {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        const float v = tap_weight(c, t) * g;
        if (v != 0.0f) atomicAdd(dxp + tap_index(c, t, w), v);
    }
}

// ---------------------------------------------------------------------------------------------
// naive

extern "C" __global__ void gmp_naive_fwd_f32(GmpGeometry p, const float* __restrict__ x,
                                             const float* __restrict__ off, float* __restrict__ a) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.c * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u64 img = i / (hw * p.c);
        const float* xp = x + (i / hw) * hw;
        const float* op = off + img * 2 * p.k * hw;
        float acc = 0.0f;
        for (u32 k = 0; k < p.k; ++k) acc = gmp_accumulate(acc, xp, cell_at(p, op, hw, pos, k), p.w);
        a[i] = acc * (1.0f / (float)p.k);
    }
}

// dx must be zeroed. One thread per (n, c, i, j).
extern "C" __global__ void gmp_naive_bwd_dx_f32(GmpGeometry p, const float* __restrict__ off,
                                                const float* __restrict__ da,
                                                float* __restrict__ dx) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.c * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u64 img = i / (hw * p.c);
        float* dxp = dx + (i / hw) * hw;
        const float* op = off + img * 2 * p.k * hw;
        const float g = da[i] * (1.0f / (float)p.k);
        for (u32 k = 0; k < p.k; ++k) gmp_scatter(dxp, cell_at(p, op, hw, pos, k), p.w, g);
    }
}

// One thread per (n, k, i, j), summing over channels: no atomics.
extern "C" __global__ void gmp_naive_bwd_doff_f32(GmpGeometry p, const float* __restrict__ x,
                                                  const float* __restrict__ off,
                                                  const float* __restrict__ da,
                                                  float* __restrict__ doff) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.k * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u32 k = (u32)((i / hw) % p.k);
        const u64 img = i / (hw * p.k);
        const float* op = off + img * 2 * p.k * hw;
        const Cell cell = cell_at(p, op, hw, pos, k);
        float du = 0.0f, dv = 0.0f;
        for (u32 ch = 0; ch < p.c; ++ch) {
            const u64 plane = (img * p.c + ch) * hw;
            const float g = da[plane + pos];
            if (g == 0.0f) continue; // as the CPU, which skips zero gradients
            float sx, sy;
            gmp_sample_grad(x + plane, cell, p.w, &sx, &sy);
            du += g * sx;
            dv += g * sy;
        }
        const float inv_k = 1.0f / (float)p.k;
        doff[(img * 2 * p.k + 2 * k) * hw + pos] = du * inv_k;
        doff[(img * 2 * p.k + 2 * k + 1) * hw + pos] = dv * inv_k;
    }
}

// ---------------------------------------------------------------------------------------------
// unfused: tap tables are [N, K, H, W, 4] (index 0 and masked weights outside, as the CPU
// table), per-sample buffers [N, K, C, H, W]

// Stage 1: tap indices and weights; with dwx/dwy non-null also the weights' derivatives.
extern "C" __global__ void gmp_unf_coords_f32(GmpGeometry p, const float* __restrict__ off,
                                              int* __restrict__ tidx, float* __restrict__ tw,
                                              float* __restrict__ tdwx, float* __restrict__ tdwy) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.k * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u32 k = (u32)((i / hw) % p.k);
        const u64 img = i / (hw * p.k);
        const Cell c = cell_at(p, off + img * 2 * p.k * hw, hw, pos, k);
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            tidx[i * 4 + t] = tap_index(c, t, p.w);
            tw[i * 4 + t] = tap_weight(c, t);
            if (tdwx != nullptr) tdwx[i * 4 + t] = tap_dwdx(c, t);
            if (tdwy != nullptr) tdwy[i * 4 + t] = tap_dwdy(c, t);
        }
    }
}

// Stage 2: s[n][k][c][pos] = sum over inside taps of w * x[n][c][tap].
extern "C" __global__ void gmp_unf_sample_f32(GmpGeometry p, const float* __restrict__ x,
                                              const int* __restrict__ tidx,
                                              const float* __restrict__ tw,
                                              float* __restrict__ s) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.k * p.c * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u32 ch = (u32)((i / hw) % p.c);
        const u64 nk = i / (hw * p.c); // img * K + k
        const u64 img = nk / p.k;
        const float* xp = x + (img * p.c + ch) * hw;
        const u64 tb = (nk * hw + pos) * 4;
        float acc = 0.0f;
#pragma unroll
        for (int t = 0; t < 4; ++t) acc += tw[tb + t] * xp[tidx[tb + t]];
        s[i] = acc;
    }
}

// Stage 3: a[n][c][pos] = (1/K) sum_k s[n][k][c][pos].
extern "C" __global__ void gmp_unf_mean_f32(GmpGeometry p, const float* __restrict__ s,
                                            float* __restrict__ a) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.c * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u32 ch = (u32)((i / hw) % p.c);
        const u64 img = i / (hw * p.c);
        float acc = 0.0f;
        for (u32 k = 0; k < p.k; ++k) acc += s[((img * p.k + k) * p.c + ch) * hw + pos];
        a[i] = acc * (1.0f / (float)p.k);
    }
}

// Backward stage 2: per (n, k, c, pos): scatter into dx (zeroed; atomics) and write the
// position-gradient contributions gpx, gpy ([N, K, C, H, W]).
extern "C" __global__ void gmp_unf_bwd_sample_f32(GmpGeometry p, const float* __restrict__ x,
                                                  const float* __restrict__ da,
                                                  const int* __restrict__ tidx,
                                                  const float* __restrict__ tw,
                                                  const float* __restrict__ tdwx,
                                                  const float* __restrict__ tdwy,
                                                  float* __restrict__ dx, float* __restrict__ gpx,
                                                  float* __restrict__ gpy) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.k * p.c * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u32 ch = (u32)((i / hw) % p.c);
        const u64 nk = i / (hw * p.c);
        const u64 img = nk / p.k;
        const u64 plane = (img * p.c + ch) * hw;
        const float gd = da[plane + pos];
        const float g = gd * (1.0f / (float)p.k);
        const u64 tb = (nk * hw + pos) * 4;
        float sx = 0.0f, sy = 0.0f;
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const int idx = tidx[tb + t];
            const float c = tw[tb + t] * g;
            if (c != 0.0f) atomicAdd(dx + plane + idx, c); // see gmp_scatter
            const float v = x[plane + idx];
            sx += v * tdwx[tb + t];
            sy += v * tdwy[tb + t];
        }
        // Unscaled by 1/K (applied once in the reduction); zero gradients contribute nothing,
        // as the CPU skips them.
        gpx[i] = gd == 0.0f ? 0.0f : gd * sx;
        gpy[i] = gd == 0.0f ? 0.0f : gd * sy;
    }
}

// Backward stage 3: doff[n][2k][pos] = sum_c gpx, doff[n][2k+1][pos] = sum_c gpy.
extern "C" __global__ void gmp_unf_bwd_reduce_f32(GmpGeometry p, const float* __restrict__ gpx,
                                                  const float* __restrict__ gpy,
                                                  float* __restrict__ doff) {
    const u64 hw = (u64)p.h * p.w;
    const u64 total = (u64)p.n * p.k * hw;
    GRID_STRIDE(i, total) {
        const u64 pos = i % hw;
        const u64 nk = i / hw;
        const u64 img = nk / p.k;
        const u32 k = (u32)(nk % p.k);
        float du = 0.0f, dv = 0.0f;
        for (u32 ch = 0; ch < p.c; ++ch) {
            const u64 j = (nk * p.c + ch) * hw + pos;
            du += gpx[j];
            dv += gpy[j];
        }
        const float inv_k = 1.0f / (float)p.k;
        doff[(img * 2 * p.k + 2 * k) * hw + pos] = du * inv_k;
        doff[(img * 2 * p.k + 2 * k + 1) * hw + pos] = dv * inv_k;
    }
}

// ---------------------------------------------------------------------------------------------
// fused (grid.y = ceil(C / c_per_group) channel groups). The forward's per-thread array holds
// KMAX cells, a compile-time bound (K <= KMAX): registers scale with KMAX, so the launcher
// picks the smallest instantiation that holds K (4, 8, else 16). The backward walks K in
// chunks of 4. The first version, arrays sized for 16 whatever K (163 / 226 registers on
// sm_90, one block per SM), stays as `gmp_fused16_*`, the baseline the others are timed
// against.

template <u32 KMAX>
__device__ __forceinline__ void fused_fwd(const GmpGeometry& p, const float* __restrict__ x,
                                          const float* __restrict__ off, float* __restrict__ a) {
    const u64 hw = (u64)p.h * p.w;
    const u64 positions = (u64)p.n * hw;
    const u32 c0 = blockIdx.y * p.c_per_group;
    const u32 c1 = min(c0 + p.c_per_group, p.c);
    GRID_STRIDE(q, positions) {
        const u64 img = q / hw, pos = q % hw;
        const float* op = off + img * 2 * p.k * hw;
        Cell cells[KMAX];
#pragma unroll
        for (u32 k = 0; k < KMAX; ++k)
            if (k < p.k) cells[k] = cell_at(p, op, hw, pos, k);
        for (u32 ch = c0; ch < c1; ++ch) {
            const u64 plane = (img * p.c + ch) * hw;
            float acc = 0.0f;
#pragma unroll
            for (u32 k = 0; k < KMAX; ++k)
                if (k < p.k) acc = gmp_accumulate(acc, x + plane, cells[k], p.w);
            a[plane + pos] = acc * (1.0f / (float)p.k);
        }
    }
}

// dx and doff must be zeroed: dx takes atomics from overlapping taps, doff one atomicAdd per
// (element, channel group); with a single channel group doff is deterministic.
template <u32 KMAX>
__device__ __forceinline__ void fused_bwd(const GmpGeometry& p, const float* __restrict__ x,
                                          const float* __restrict__ off,
                                          const float* __restrict__ da, float* __restrict__ dx,
                                          float* __restrict__ doff) {
    const u64 hw = (u64)p.h * p.w;
    const u64 positions = (u64)p.n * hw;
    const u32 c0 = blockIdx.y * p.c_per_group;
    const u32 c1 = min(c0 + p.c_per_group, p.c);
    GRID_STRIDE(q, positions) {
        const u64 img = q / hw, pos = q % hw;
        const float* op = off + img * 2 * p.k * hw;
        Cell cells[KMAX];
        float du[KMAX], dv[KMAX];
#pragma unroll
        for (u32 k = 0; k < KMAX; ++k) {
            du[k] = 0.0f;
            dv[k] = 0.0f;
            if (k < p.k) cells[k] = cell_at(p, op, hw, pos, k);
        }
        const float inv_k = 1.0f / (float)p.k;
        for (u32 ch = c0; ch < c1; ++ch) {
            const u64 plane = (img * p.c + ch) * hw;
            const float gd = da[plane + pos];
            const float g = gd * inv_k;
#pragma unroll
            for (u32 k = 0; k < KMAX; ++k) {
                if (k < p.k) {
                    if (gd != 0.0f) { // the CPU skips zero gradients in the offsets' sum
                        float sx, sy;
                        gmp_sample_grad(x + plane, cells[k], p.w, &sx, &sy);
                        du[k] += gd * sx;
                        dv[k] += gd * sy;
                    }
                    gmp_scatter(dx + plane, cells[k], p.w, g);
                }
            }
        }
        if (c0 < c1) {
#pragma unroll
            for (u32 k = 0; k < KMAX; ++k) {
                if (k < p.k) {
                    atomicAdd(doff + (img * 2 * p.k + 2 * k) * hw + pos, du[k] * inv_k);
                    atomicAdd(doff + (img * 2 * p.k + 2 * k + 1) * hw + pos, dv[k] * inv_k);
                }
            }
        }
    }
}

// The backward in chunks of KC sampling points: each chunk's cells and sums live in registers
// while the thread walks its channels (da is read once per chunk), so registers scale with KC,
// not K: KC = 4 fits 2 blocks of 256 threads per SM without spilling, for any K.
template <u32 KC>
__device__ __forceinline__ void fused_bwd_chunked(const GmpGeometry& p,
                                                  const float* __restrict__ x,
                                                  const float* __restrict__ off,
                                                  const float* __restrict__ da,
                                                  float* __restrict__ dx,
                                                  float* __restrict__ doff) {
    const u64 hw = (u64)p.h * p.w;
    const u64 positions = (u64)p.n * hw;
    const u32 c0 = blockIdx.y * p.c_per_group;
    const u32 c1 = min(c0 + p.c_per_group, p.c);
    const float inv_k = 1.0f / (float)p.k;
    GRID_STRIDE(q, positions) {
        const u64 img = q / hw, pos = q % hw;
        const float* op = off + img * 2 * p.k * hw;
        for (u32 k0 = 0; k0 < p.k; k0 += KC) {
            Cell cells[KC];
            float du[KC], dv[KC];
#pragma unroll
            for (u32 j = 0; j < KC; ++j) {
                du[j] = 0.0f;
                dv[j] = 0.0f;
                if (k0 + j < p.k) cells[j] = cell_at(p, op, hw, pos, k0 + j);
            }
            for (u32 ch = c0; ch < c1; ++ch) {
                const u64 plane = (img * p.c + ch) * hw;
                const float gd = da[plane + pos];
                const float g = gd * inv_k;
#pragma unroll
                for (u32 j = 0; j < KC; ++j) {
                    if (k0 + j < p.k) {
                        if (gd != 0.0f) { // the CPU skips zero gradients in the offsets' sum
                            float sx, sy;
                            gmp_sample_grad(x + plane, cells[j], p.w, &sx, &sy);
                            du[j] += gd * sx;
                            dv[j] += gd * sy;
                        }
                        gmp_scatter(dx + plane, cells[j], p.w, g);
                    }
                }
            }
            if (c0 < c1) {
#pragma unroll
                for (u32 j = 0; j < KC; ++j) {
                    const u32 k = k0 + j;
                    if (k < p.k) {
                        atomicAdd(doff + (img * 2 * p.k + 2 * k) * hw + pos, du[j] * inv_k);
                        atomicAdd(doff + (img * 2 * p.k + 2 * k + 1) * hw + pos, dv[j] * inv_k);
                    }
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 2) gmp_fused_k4_fwd_f32(
    GmpGeometry p, const float* __restrict__ x, const float* __restrict__ off,
    float* __restrict__ a) {
    fused_fwd<4>(p, x, off, a);
}

extern "C" __global__ void __launch_bounds__(256, 2) gmp_fused_k8_fwd_f32(
    GmpGeometry p, const float* __restrict__ x, const float* __restrict__ off,
    float* __restrict__ a) {
    fused_fwd<8>(p, x, off, a);
}

extern "C" __global__ void __launch_bounds__(256, 2) gmp_fused_bwd_f32(
    GmpGeometry p, const float* __restrict__ x, const float* __restrict__ off,
    const float* __restrict__ da, float* __restrict__ dx, float* __restrict__ doff) {
    fused_bwd_chunked<4>(p, x, off, da, dx, doff);
}

// The first fused version (arrays for GMP_FUSED_MAX_K whatever K): the baseline.
extern "C" __global__ void gmp_fused16_fwd_f32(GmpGeometry p, const float* __restrict__ x,
                                               const float* __restrict__ off,
                                               float* __restrict__ a) {
    fused_fwd<GMP_FUSED_MAX_K>(p, x, off, a);
}

extern "C" __global__ void gmp_fused16_bwd_f32(GmpGeometry p, const float* __restrict__ x,
                                               const float* __restrict__ off,
                                               const float* __restrict__ da, float* __restrict__ dx,
                                               float* __restrict__ doff) {
    fused_bwd<GMP_FUSED_MAX_K>(p, x, off, da, dx, doff);
}
