// GMP in channels-last, channels on the warp (`--gmp-kernel cl` / `cl4`, src/ops/gmp/cl.rs): the
// same function as kernels/gmp.cu, with the residual folded in,
//   y[n][c][p] = x[n][c][p] + (1/K) * sum_k bilinear(x[n][c], j + u_k, i + v_k),
// and laid out for bandwidth: every tap is one contiguous read of channels of a channels-last
// copy of x, xt[n][pos][c], so a warp's 32 lanes (consecutive channels) read whole 128-byte
// lines instead of 32 scattered words of NCHW planes.
//
// Where the layout is paid: `gmp_cl_to_nhwc_f32` transposes x once per forward (read 1x, write
// 1x, through 32x32 shared-memory tiles); the backward reuses the forward's copy (the op saves
// it). The NCHW tensors the op exchanges with its neighbours (y, dy, dx) are never transposed in
// global memory: a block stages its tile [128 channels][32 positions] in shared memory, so y is
// written and dy read as coalesced NCHW rows. dx is accumulated channels-last (dxt, atomics on
// contiguous rows: 4 full 32-byte sectors per warp instruction) and transposed once into NCHW
// with the residual's dy added (`gmp_cl_to_nchw_f32`).
//
// Blocks: 256 threads (8 warps) own CL_TP = 32 consecutive positions (n*H*W flattened) and
// CL_CCH = 128 channels (blockIdx.y). The K cells of each position are computed once per block
// into shared memory (KC at a time: K is a compile-time chunk, any K runs in chunks), warp w
// takes positions w, w+8, w+16, w+24, and its lanes hold 4 channels each:
//   VEC 1: lane L holds channels L, L+32, L+64, L+96 (scalar loads and atomics, each a full
//          128-byte line per warp instruction; any C);
//   VEC 4: lane L holds channels 4L..4L+3 (one float4 load per tap; needs C % 4 == 0; the
//          backward's float4 atomics are native on sm_90 and 4 scalar atomics elsewhere).
// The backward's offset gradient reduces each position's 2K per-lane partial sums over the warp
// with a reduce-scatter butterfly (2K-1+log2(32/2K) shuffles instead of 2K*5), then one lane per
// value writes it (plainly with one channel chunk, else one atomicAdd per chunk).
#include "common.cuh"
#include "gmp_taps.cuh"

#define CL_TP 32
#define CL_CCH 128
#define CL_THREADS 256
#define CL_WARPS (CL_THREADS / 32)
#define CL_ROWS (CL_TP / CL_WARPS)
#define CL_E 4 // channels per lane and block

// Word of channel cl (0..CL_CCH) at tile position pl (0..CL_TP) in a [CL_CCH][CL_TP] staging
// tile, XOR-swizzled by the lane that holds cl: the 32 lanes of a warp at one position, and a
// warp reading one channel over 32 positions, each touch 32 distinct banks.
template <int VEC> __device__ __forceinline__ u32 stage_at(u32 cl, u32 pl) {
    const u32 key = (VEC == 4 ? (cl >> 2) : cl) & 31u;
    return cl * CL_TP + (pl ^ key);
}

// Local channel e (0..CL_E) of a lane.
template <int VEC> __device__ __forceinline__ u32 lane_channel(u32 lane, u32 e) {
    return VEC == 4 ? 4 * lane + e : lane + 32 * e;
}

// Sums the V values of v (V a power of two, 2..32) over the 32 lanes of a warp: halving steps
// while there are values to split (lanes with bit O set keep the upper half and send the lower),
// then plain butterfly sums. Afterwards v[0] of lane L holds the total of value L >> (5 - log2 V).
template <u32 N, u32 O> struct ReduceScatter {
    static __device__ __forceinline__ void run(float* v, u32 lane) {
        if constexpr (N > 1) {
            const bool upper = (lane & O) != 0;
#pragma unroll
            for (u32 i = 0; i < N / 2; ++i) {
                const float send = upper ? v[i] : v[i + N / 2];
                const float keep = upper ? v[i + N / 2] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
            }
            ReduceScatter<N / 2, O / 2>::run(v, lane);
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], O);
            ReduceScatter<1, O / 2>::run(v, lane);
        }
    }
};
template <u32 N> struct ReduceScatter<N, 0> {
    static __device__ __forceinline__ void run(float*, u32) {}
};
template <u32 V> struct Log2 {
    static constexpr u32 value = 1 + Log2<V / 2>::value;
};
template <> struct Log2<1> {
    static constexpr u32 value = 0;
};

// dxt[p..p+3] += v: one vector atomic on sm_90 (global float4 atomicAdd), else four scalar
// ones, each skipped when its value is 0 (adding +0 changes nothing; a NaN is added).
__device__ __forceinline__ void atomic_add4(float* p, float4 v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (v.x != 0.0f || v.y != 0.0f || v.z != 0.0f || v.w != 0.0f)
        atomicAdd(reinterpret_cast<float4*>(p), v);
#else
    if (v.x != 0.0f) atomicAdd(p, v.x);
    if (v.y != 0.0f) atomicAdd(p + 1, v.y);
    if (v.z != 0.0f) atomicAdd(p + 2, v.z);
    if (v.w != 0.0f) atomicAdd(p + 3, v.w);
#endif
}

// The cells of samples k0..k0+KC of the tile's positions into cells[pl * KC + j] (positions past
// the end and samples past K are left alone: nobody reads them).
template <u32 KC>
__device__ __forceinline__ void cl_cells(const GmpGeometry& p, const float* __restrict__ off,
                                         u64 hw, u64 positions, u64 q0, u32 k0, Cell* cells) {
    for (u32 i = threadIdx.x; i < CL_TP * KC; i += CL_THREADS) {
        const u32 pl = i / KC, j = i % KC;
        const u64 q = q0 + pl;
        if (q < positions && k0 + j < p.k) {
            const u64 img = q / hw;
            cells[i] = cell_at(p, off + img * 2 * p.k * hw, hw, q % hw, k0 + j);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// layout

// xt[n][pos][c] = x[n][c][pos]. Block (32, 8) over a 32x32 tile (positions blockIdx.x, channels
// blockIdx.y, images blockIdx.z, each grid-strided).
extern "C" __global__ void gmp_cl_to_nhwc_f32(GmpGeometry p, const float* __restrict__ x,
                                              float* __restrict__ xt) {
    __shared__ float tile[32][33];
    const u64 hw = (u64)p.h * p.w;
    const u64 pos_tiles = (hw + 31) / 32;
    const u32 c_tiles = (p.c + 31) / 32;
    const u32 tx = threadIdx.x, ty = threadIdx.y;
    for (u64 img = blockIdx.z; img < p.n; img += gridDim.z)
        for (u32 ct = blockIdx.y; ct < c_tiles; ct += gridDim.y)
            for (u64 pt = blockIdx.x; pt < pos_tiles; pt += gridDim.x) {
                const u64 pos0 = pt * 32;
                const u32 c0 = ct * 32;
                for (u32 r = ty; r < 32; r += 8) { // rows of x: coalesced over positions
                    const u32 c = c0 + r;
                    const u64 pos = pos0 + tx;
                    if (c < p.c && pos < hw) tile[r][tx] = x[(img * p.c + c) * hw + pos];
                }
                __syncthreads();
                for (u32 r = ty; r < 32; r += 8) { // rows of xt: coalesced over channels
                    const u64 pos = pos0 + r;
                    const u32 c = c0 + tx;
                    if (c < p.c && pos < hw) xt[(img * hw + pos) * p.c + c] = tile[tx][r];
                }
                __syncthreads();
            }
}

// x[n][c][pos] = add[n][c][pos] + xt[n][pos][c] (with_add; else xt alone): the backward's
// channels-last dx into NCHW with the residual's gradient. Same tiling as gmp_cl_to_nhwc_f32.
extern "C" __global__ void gmp_cl_to_nchw_f32(GmpGeometry p, const float* __restrict__ xt,
                                              const float* __restrict__ add, u32 with_add,
                                              float* __restrict__ x) {
    __shared__ float tile[32][33];
    const u64 hw = (u64)p.h * p.w;
    const u64 pos_tiles = (hw + 31) / 32;
    const u32 c_tiles = (p.c + 31) / 32;
    const u32 tx = threadIdx.x, ty = threadIdx.y;
    for (u64 img = blockIdx.z; img < p.n; img += gridDim.z)
        for (u32 ct = blockIdx.y; ct < c_tiles; ct += gridDim.y)
            for (u64 pt = blockIdx.x; pt < pos_tiles; pt += gridDim.x) {
                const u64 pos0 = pt * 32;
                const u32 c0 = ct * 32;
                for (u32 r = ty; r < 32; r += 8) { // rows of xt: coalesced over channels
                    const u64 pos = pos0 + r;
                    const u32 c = c0 + tx;
                    if (c < p.c && pos < hw) tile[tx][r] = xt[(img * hw + pos) * p.c + c];
                }
                __syncthreads();
                for (u32 r = ty; r < 32; r += 8) { // rows of x: coalesced over positions
                    const u32 c = c0 + r;
                    const u64 pos = pos0 + tx;
                    if (c < p.c && pos < hw) {
                        const u64 i = (img * p.c + c) * hw + pos;
                        x[i] = with_add ? add[i] + tile[r][tx] : tile[r][tx];
                    }
                }
                __syncthreads();
            }
}

// ---------------------------------------------------------------------------------------------
// forward: y = (residual ? x : 0) + mean_k sample_k, from xt

template <u32 KC, int VEC>
__device__ __forceinline__ void cl_fwd(const GmpGeometry& p, const float* __restrict__ xt,
                                       const float* __restrict__ off, u32 residual,
                                       float* __restrict__ y) {
    __shared__ Cell cells[CL_TP * KC];
    __shared__ float stage[CL_CCH * CL_TP];
    const u64 hw = (u64)p.h * p.w;
    const u64 positions = (u64)p.n * hw;
    const u64 tiles = (positions + CL_TP - 1) / CL_TP;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 c0 = blockIdx.y * CL_CCH;
    const u64 cs = p.c;
    const float inv_k = 1.0f / (float)p.k;
    for (u64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const u64 q0 = tile * CL_TP;
        float acc[CL_ROWS][CL_E];
#pragma unroll
        for (u32 r = 0; r < CL_ROWS; ++r)
#pragma unroll
            for (u32 e = 0; e < CL_E; ++e) acc[r][e] = 0.0f;
        for (u32 k0 = 0; k0 < p.k; k0 += KC) {
            __syncthreads(); // every warp is done with the previous chunk's cells (and stage)
            cl_cells<KC>(p, off, hw, positions, q0, k0, cells);
            __syncthreads();
#pragma unroll
            for (u32 r = 0; r < CL_ROWS; ++r) {
                const u32 pl = warp + CL_WARPS * r;
                const u64 q = q0 + pl;
                if (q >= positions) continue; // warp-uniform
                const float* xi = xt + (q / hw) * hw * cs + c0;
#pragma unroll
                for (u32 j = 0; j < KC; ++j) {
                    if (k0 + j < p.k) {
                        const Cell cell = cells[pl * KC + j];
#pragma unroll
                        for (int t = 0; t < 4; ++t) {
                            const float wt = tap_weight(cell, t);
                            const float* row = xi + (u64)tap_index(cell, t, p.w) * cs;
                            if (VEC == 4) {
                                if (c0 + 4 * lane < p.c) {
                                    const float4 v =
                                        __ldg(reinterpret_cast<const float4*>(row) + lane);
                                    acc[r][0] += wt * v.x;
                                    acc[r][1] += wt * v.y;
                                    acc[r][2] += wt * v.z;
                                    acc[r][3] += wt * v.w;
                                }
                            } else {
#pragma unroll
                                for (u32 e = 0; e < CL_E; ++e)
                                    if (c0 + lane + 32 * e < p.c)
                                        acc[r][e] += wt * __ldg(row + lane + 32 * e);
                            }
                        }
                    }
                }
            }
        }
        // The tile's outputs into the staging tile, x added (from xt at the position itself).
#pragma unroll
        for (u32 r = 0; r < CL_ROWS; ++r) {
            const u32 pl = warp + CL_WARPS * r;
            const u64 q = q0 + pl;
            if (q >= positions) continue;
#pragma unroll
            for (u32 e = 0; e < CL_E; ++e) {
                const u32 cl = lane_channel<VEC>(lane, e);
                if (c0 + cl < p.c) {
                    const float a = acc[r][e] * inv_k;
                    stage[stage_at<VEC>(cl, pl)] = residual ? xt[q * cs + c0 + cl] + a : a;
                }
            }
        }
        __syncthreads();
        // Coalesced NCHW rows: channel cl over the tile's 32 positions.
        for (u32 i = threadIdx.x; i < CL_CCH * CL_TP; i += CL_THREADS) {
            const u32 cl = i / CL_TP, pl = i % CL_TP;
            const u64 q = q0 + pl;
            if (q < positions && c0 + cl < p.c)
                y[((q / hw) * cs + c0 + cl) * hw + q % hw] = stage[stage_at<VEC>(cl, pl)];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backward: dxt += scatter of dy/K (channels-last, zeroed by the launcher), doff (zeroed)

template <u32 KC, int VEC>
__device__ __forceinline__ void cl_bwd(const GmpGeometry& p, const float* __restrict__ xt,
                                       const float* __restrict__ off,
                                       const float* __restrict__ dy, float* __restrict__ dxt,
                                       float* __restrict__ doff) {
    constexpr u32 V = 2 * KC; // du, dv per sample of a chunk
    constexpr u32 SHIFT = 5 - Log2<V>::value;
    __shared__ Cell cells[CL_TP * KC];
    __shared__ float dys[CL_CCH * CL_TP];
    const u64 hw = (u64)p.h * p.w;
    const u64 positions = (u64)p.n * hw;
    const u64 tiles = (positions + CL_TP - 1) / CL_TP;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 c0 = blockIdx.y * CL_CCH;
    const u64 cs = p.c;
    const float inv_k = 1.0f / (float)p.k;
    const bool one_chunk = gridDim.y == 1;
    for (u64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const u64 q0 = tile * CL_TP;
        __syncthreads(); // every warp is done with the previous tile's dys and cells
        // dy's tile, coalesced NCHW rows in, channels of one position out (zero past the ends).
        for (u32 i = threadIdx.x; i < CL_CCH * CL_TP; i += CL_THREADS) {
            const u32 cl = i / CL_TP, pl = i % CL_TP;
            const u64 q = q0 + pl;
            dys[stage_at<VEC>(cl, pl)] = (q < positions && c0 + cl < p.c)
                                             ? dy[((q / hw) * cs + c0 + cl) * hw + q % hw]
                                             : 0.0f;
        }
        for (u32 k0 = 0; k0 < p.k; k0 += KC) {
            __syncthreads(); // dys written; the previous chunk's cells read
            cl_cells<KC>(p, off, hw, positions, q0, k0, cells);
            __syncthreads();
#pragma unroll 1
            for (u32 r = 0; r < CL_ROWS; ++r) {
                const u32 pl = warp + CL_WARPS * r;
                const u64 q = q0 + pl;
                if (q >= positions) continue; // warp-uniform
                const u64 img = q / hw;
                const float* xi = xt + img * hw * cs + c0;
                float* di = dxt + img * hw * cs + c0;
                float gd[CL_E]; // dy at this position (its 1/K applied per use: fewer registers)
#pragma unroll
                for (u32 e = 0; e < CL_E; ++e)
                    gd[e] = dys[stage_at<VEC>(lane_channel<VEC>(lane, e), pl)];
                float v[V];
#pragma unroll
                for (u32 j = 0; j < KC; ++j) {
                    float sx[CL_E], sy[CL_E];
#pragma unroll
                    for (u32 e = 0; e < CL_E; ++e) sx[e] = sy[e] = 0.0f;
                    if (k0 + j < p.k) {
                        const Cell cell = cells[pl * KC + j];
#pragma unroll
                        for (int t = 0; t < 4; ++t) {
                            const float wt = tap_weight(cell, t);
                            const float wx = tap_dwdx(cell, t), wy = tap_dwdy(cell, t);
                            const u64 at = (u64)tap_index(cell, t, p.w) * cs;
                            if (VEC == 4) {
                                if (c0 + 4 * lane < p.c) {
                                    const float4 xv =
                                        __ldg(reinterpret_cast<const float4*>(xi + at) + lane);
                                    const float xs[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                                    for (u32 e = 0; e < 4; ++e) {
                                        sx[e] += xs[e] * wx;
                                        sy[e] += xs[e] * wy;
                                    }
                                    atomic_add4(di + at + 4 * lane,
                                                make_float4(wt * (gd[0] * inv_k), wt * (gd[1] * inv_k),
                                                            wt * (gd[2] * inv_k), wt * (gd[3] * inv_k)));
                                }
                            } else {
#pragma unroll
                                for (u32 e = 0; e < CL_E; ++e) {
                                    const u32 c = lane + 32 * e;
                                    if (c0 + c < p.c) {
                                        const float xv = __ldg(xi + at + c);
                                        sx[e] += xv * wx;
                                        sy[e] += xv * wy;
                                        const float d = wt * (gd[e] * inv_k);
                                        if (d != 0.0f) atomicAdd(di + at + c, d);
                                    }
                                }
                            }
                        }
                    }
                    // The CPU skips zero gradients in the offsets' sum (so 0 * NaN adds nothing).
                    float du = 0.0f, dv = 0.0f;
#pragma unroll
                    for (u32 e = 0; e < CL_E; ++e) {
                        if (gd[e] != 0.0f) {
                            du += gd[e] * sx[e];
                            dv += gd[e] * sy[e];
                        }
                    }
                    v[2 * j] = du;
                    v[2 * j + 1] = dv;
                }
                ReduceScatter<V, 16>::run(v, lane);
                const u32 i = lane >> SHIFT; // doff channel 2 k0 + i of this position
                if ((lane & ((1u << SHIFT) - 1)) == 0 && k0 + i / 2 < p.k) {
                    float* dst = doff + (img * 2 * p.k + 2 * k0 + i) * hw + q % hw;
                    if (one_chunk) {
                        *dst = v[0] * inv_k;
                    } else {
                        atomicAdd(dst, v[0] * inv_k);
                    }
                }
            }
        }
    }
}

// Entry points: K in chunks of 4 or 8 (the launcher picks 4 for K <= 4), lanes VEC 1 or 4.
extern "C" __global__ void __launch_bounds__(CL_THREADS) gmp_cl_fwd_k4_v1_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off, u32 residual,
    float* __restrict__ y) {
    cl_fwd<4, 1>(p, xt, off, residual, y);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS, 3) gmp_cl_bwd_k4_v1_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off,
    const float* __restrict__ dy, float* __restrict__ dxt, float* __restrict__ doff) {
    cl_bwd<4, 1>(p, xt, off, dy, dxt, doff);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS) gmp_cl_fwd_k4_v4_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off, u32 residual,
    float* __restrict__ y) {
    cl_fwd<4, 4>(p, xt, off, residual, y);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS, 3) gmp_cl_bwd_k4_v4_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off,
    const float* __restrict__ dy, float* __restrict__ dxt, float* __restrict__ doff) {
    cl_bwd<4, 4>(p, xt, off, dy, dxt, doff);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS) gmp_cl_fwd_k8_v1_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off, u32 residual,
    float* __restrict__ y) {
    cl_fwd<8, 1>(p, xt, off, residual, y);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS, 3) gmp_cl_bwd_k8_v1_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off,
    const float* __restrict__ dy, float* __restrict__ dxt, float* __restrict__ doff) {
    cl_bwd<8, 1>(p, xt, off, dy, dxt, doff);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS) gmp_cl_fwd_k8_v4_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off, u32 residual,
    float* __restrict__ y) {
    cl_fwd<8, 4>(p, xt, off, residual, y);
}

extern "C" __global__ void __launch_bounds__(CL_THREADS, 3) gmp_cl_bwd_k8_v4_f32(
    GmpGeometry p, const float* __restrict__ xt, const float* __restrict__ off,
    const float* __restrict__ dy, float* __restrict__ dxt, float* __restrict__ doff) {
    cl_bwd<8, 4>(p, xt, off, dy, dxt, doff);
}
