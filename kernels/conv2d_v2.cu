// Convolution v2 (src/ops/conv2d/cuda_v2.rs), beside v1 (conv2d.cu): the kernels around the
// cuBLAS GEMMs without runtime integer division. Every index is decomposed with u32
// magic-number division (`FastDiv`, exact for numerators below 2^31, which the launcher
// checks), over 2-D grids whose y dimension is a uniform row or channel.
//
// Column buffer of a tile of `n` images: `rows` rows of n·OH·OW columns, row-major,
//   col[r][img][oy·OW + ox],  r = (ch·kh + ki)·kw + kj  for r < R = C·kh·kw,
// then (when rows > R) row R all ones (the bias row of the folded forward GEMM, and the db
// column of the dW GEMM) and zero rows up to `rows` (a multiple of 4, for aligned GEMM
// operands). The image index inside a row makes dW one GEMM over n·OH·OW, or a strided batch.
// bf16 outputs are stored as their bit patterns (unsigned short), rounded to nearest even.
#include "common.cuh"
#include "reduce.cuh"

typedef unsigned short u16;

// Mirrors `Conv2dGeometry` in src/ops/conv2d/mod.rs field for field.
struct Conv2dGeometry {
    u32 n;           // images covered by this launch (a tile of the batch)
    u32 c, h, w;     // input channels and spatial size of one image
    u32 o;           // output channels
    u32 kh, kw;      // kernel size
    u32 stride, pad; // the same in both directions
    u32 oh, ow;      // output size
};
static_assert(sizeof(Conv2dGeometry) == 44, "layout must match the Rust struct");

// n / d = (n · mul) >> shift for n < 2^31 (`FastDiv::new` in cuda_v2.rs).
struct FastDiv {
    u32 mul, shift;
};
__device__ __forceinline__ u32 fdiv(u32 n, FastDiv d) {
    return (u32)(((u64)n * d.mul) >> d.shift);
}

// Mirrors `ConvV2Params` in src/ops/conv2d/cuda_v2.rs field for field.
struct ConvV2Params {
    Conv2dGeometry g;
    u32 rows;         // rows of the column buffer (im2col), or of the packed weight
    u32 vec;          // 1: this launch's 4-element groups are 16-byte aligned (the launcher's check)
    FastDiv plane;    // OH·OW
    FastDiv ow;       // OW
    FastDiv khkw;     // kh·kw
    FastDiv kw;       // kw
    FastDiv in_plane; // H·W
    FastDiv w;        // W
    FastDiv stride;   // stride
};
static_assert(sizeof(ConvV2Params) == 108, "layout must match the Rust struct");

__device__ __forceinline__ u16 to_bf16(float f) {
    u32 b = __float_as_uint(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x40u); // NaN stays NaN
    b += 0x7fffu + ((b >> 16) & 1u);
    return (u16)(b >> 16);
}

__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(u16* p, float v) { *p = to_bf16(v); }
__device__ __forceinline__ void put4(float* p, float a, float b, float c, float d) {
    *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void put4(u16* p, float a, float b, float c, float d) {
    uint2 u;
    u.x = (u32)to_bf16(a) | ((u32)to_bf16(b) << 16);
    u.y = (u32)to_bf16(c) | ((u32)to_bf16(d) << 16);
    *reinterpret_cast<uint2*>(p) = u;
}

// Four values at t..t+3 of a row of `len`; vectorised when the launcher said so.
template <typename T>
__device__ __forceinline__ void put_group(T* row, u32 t, u32 len, u32 vec, const float* v) {
    if (vec && t + 3 < len) {
        put4(row + t, v[0], v[1], v[2], v[3]);
    } else {
        for (u32 e = 0; e < 4 && t + e < len; ++e) put(row + t + e, v[e]);
    }
}

// col (layout above) from x [n][C][H][W]; grid.y over rows, grid.x over a row, 4 per thread.
// vec: the row length n·OH·OW is a multiple of 4 and col is 16-byte aligned.
template <typename T>
__device__ void im2col_v2(const ConvV2Params& p, const float* __restrict__ x, T* __restrict__ col) {
    const Conv2dGeometry& g = p.g;
    const u32 plane = g.oh * g.ow, len = g.n * plane, R = g.c * g.kh * g.kw;
    const u32 first = (blockIdx.x * blockDim.x + threadIdx.x) * 4, step = gridDim.x * blockDim.x * 4;
    for (u32 r = blockIdx.y; r < p.rows; r += gridDim.y) {
        T* row = col + (u64)r * len;
        if (r >= R) {
            const float c = r == R ? 1.0f : 0.0f;
            const float v[4] = {c, c, c, c};
            for (u32 t = first; t < len; t += step) put_group(row, t, len, p.vec, v);
            continue;
        }
        const u32 ch = fdiv(r, p.khkw);
        const u32 kk = r - ch * g.kh * g.kw;
        const u32 ki = fdiv(kk, p.kw);
        const u32 kj = kk - ki * g.kw;
        for (u32 t = first; t < len; t += step) {
            float v[4];
            for (u32 e = 0; e < 4; ++e) {
                v[e] = 0.0f;
                const u32 te = t + e;
                if (te >= len) continue;
                const u32 img = fdiv(te, p.plane);
                const u32 q = te - img * plane;
                const u32 oy = fdiv(q, p.ow);
                const u32 ox = q - oy * g.ow;
                const i64 iy = (i64)oy * g.stride + ki - g.pad;
                const i64 ix = (i64)ox * g.stride + kj - g.pad;
                if (iy >= 0 && iy < (i64)g.h && ix >= 0 && ix < (i64)g.w)
                    v[e] = x[(((u64)img * g.c + ch) * g.h + (u64)iy) * g.w + (u64)ix];
            }
            put_group(row, t, len, p.vec, v);
        }
    }
}

extern "C" __global__ void im2col_v2_f32(ConvV2Params p, const float* __restrict__ x,
                                         float* __restrict__ col) {
    im2col_v2(p, x, col);
}

extern "C" __global__ void im2col_v2_bf16(ConvV2Params p, const float* __restrict__ x,
                                          u16* __restrict__ col) {
    im2col_v2(p, x, col);
}

// dx [n][C][H][W] (overwritten) from dcol, whose first R rows have the layout above: each
// input element gathers the column entries that read it. For a stride s the taps that reach
// (yy, xx) are ki ≡ (yy + pad) mod s, with oy = (yy + pad − ki)/s stepping down by one per tap
// (an unsigned oy below 0 wraps past OH and is skipped). grid.y over channels, grid.x over
// the n·H·W positions of a channel.
extern "C" __global__ void col2im_v2_f32(ConvV2Params p, const float* __restrict__ col,
                                         float* __restrict__ dx) {
    const Conv2dGeometry& g = p.g;
    const u32 plane = g.oh * g.ow, len = g.n * plane, hw = g.h * g.w, total = g.n * hw;
    for (u32 ch = blockIdx.y; ch < g.c; ch += gridDim.y) {
        const float* cch = col + (u64)ch * g.kh * g.kw * len;
        for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
            const u32 img = fdiv(t, p.in_plane);
            const u32 rem = t - img * hw;
            const u32 yy = fdiv(rem, p.w);
            const u32 xx = rem - yy * g.w;
            const u32 ty = yy + g.pad, tx = xx + g.pad;
            const u32 qy = fdiv(ty, p.stride), qx = fdiv(tx, p.stride);
            const u32 ry = ty - qy * g.stride, rx = tx - qx * g.stride;
            const float* cimg = cch + (u64)img * plane;
            float acc = 0.0f;
            u32 oy = qy;
            for (u32 ki = ry; ki < g.kh; ki += g.stride, --oy) {
                if (oy >= g.oh) continue;
                u32 ox = qx;
                for (u32 kj = rx; kj < g.kw; kj += g.stride, --ox) {
                    if (ox >= g.ow) continue;
                    acc += cimg[((u64)ki * g.kw + kj) * len + (u64)oy * g.ow + ox];
                }
            }
            dx[((u64)img * g.c + ch) * hw + rem] = acc;
        }
    }
}

// y [n][O][OH·OW] += b[o]; grid.y over channels, grid.x over the n·OH·OW positions of a
// channel, 4 per thread. vec: OH·OW is a multiple of 4 and y 16-byte aligned.
extern "C" __global__ void conv_bias_add_v2_f32(ConvV2Params p, float* __restrict__ y,
                                                const float* __restrict__ b) {
    const Conv2dGeometry& g = p.g;
    const u32 plane = g.oh * g.ow, len = g.n * plane;
    const u32 first = (blockIdx.x * blockDim.x + threadIdx.x) * 4, step = gridDim.x * blockDim.x * 4;
    for (u32 o = blockIdx.y; o < g.o; o += gridDim.y) {
        const float bo = b[o];
        for (u32 t = first; t < len; t += step) {
            if (p.vec && t + 3 < len) {
                const u32 img = fdiv(t, p.plane);
                float4* d = reinterpret_cast<float4*>(y + ((u64)img * g.o + o) * plane + (t - img * plane));
                float4 v = *d;
                v.x += bo;
                v.y += bo;
                v.z += bo;
                v.w += bo;
                *d = v;
            } else {
                for (u32 e = 0; e < 4 && t + e < len; ++e) {
                    const u32 img = fdiv(t + e, p.plane);
                    y[((u64)img * g.o + o) * plane + (t + e - img * plane)] += bo;
                }
            }
        }
    }
}

// wp [O][rows]: w [O][R] (R = C·kh·kw), then b[o] in column R when has_bias (0 otherwise), then
// zeros. grid.y over channels, grid.x over columns.
template <typename T>
__device__ void pack_weight_v2(const ConvV2Params& p, const float* __restrict__ w,
                               const float* __restrict__ b, u32 has_bias, T* __restrict__ wp) {
    const Conv2dGeometry& g = p.g;
    const u32 R = g.c * g.kh * g.kw;
    for (u32 o = blockIdx.y; o < g.o; o += gridDim.y) {
        for (u32 r = blockIdx.x * blockDim.x + threadIdx.x; r < p.rows; r += gridDim.x * blockDim.x) {
            float v = 0.0f;
            if (r < R) v = w[(u64)o * R + r];
            else if (r == R && has_bias) v = b[o];
            put(wp + (u64)o * p.rows + r, v);
        }
    }
}

extern "C" __global__ void conv_pack_weight_v2_f32(ConvV2Params p, const float* __restrict__ w,
                                                   const float* __restrict__ b, u32 has_bias,
                                                   float* __restrict__ wp) {
    pack_weight_v2(p, w, b, has_bias, wp);
}

extern "C" __global__ void conv_pack_weight_v2_bf16(ConvV2Params p, const float* __restrict__ w,
                                                    const float* __restrict__ b, u32 has_bias,
                                                    u16* __restrict__ wp) {
    pack_weight_v2(p, w, b, has_bias, wp);
}

// dyr [O][n·OH·OW] = dy [n][O][OH·OW] (the tile's dy with the image inside the row, so dW and
// dcol are one GEMM each over n·OH·OW), and when want_db, db[o] (+= when accumulate) the sum
// of channel o. One block per channel (grid-stride over channels), deterministic block sum.
// Launch with blockDim.x == 256.
template <typename T>
__device__ void repack_dy_v2(const ConvV2Params& p, const float* __restrict__ dy, u32 want_db,
                             u32 accumulate, T* __restrict__ dyr, float* __restrict__ db) {
    __shared__ float sh[33];
    const Conv2dGeometry& g = p.g;
    const u32 plane = g.oh * g.ow, len = g.n * plane;
    for (u32 o = blockIdx.x; o < g.o; o += gridDim.x) {
        float s = 0.0f;
        T* row = dyr + (u64)o * len;
        for (u32 t = threadIdx.x; t < len; t += blockDim.x) {
            const u32 img = fdiv(t, p.plane);
            const float v = dy[((u64)img * g.o + o) * plane + (t - img * plane)];
            put(row + t, v);
            s += v;
        }
        if (want_db) {
            s = block_sum(s, sh);
            if (threadIdx.x == 0) db[o] = accumulate ? db[o] + s : s;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) conv_repack_dy_v2_f32(ConvV2Params p, const float* __restrict__ dy, u32 want_db,
                          u32 accumulate, float* __restrict__ dyr, float* __restrict__ db) {
    repack_dy_v2(p, dy, want_db, accumulate, dyr, db);
}

extern "C" __global__ void __launch_bounds__(256) conv_repack_dy_v2_bf16(ConvV2Params p, const float* __restrict__ dy, u32 want_db,
                           u32 accumulate, u16* __restrict__ dyr, float* __restrict__ db) {
    repack_dy_v2(p, dy, want_db, accumulate, dyr, db);
}

// The per-image dW partials of a strided-batched GEMM, part [n][O][ld], summed in image order:
// dw[o][r] for r < R (R = C·kh·kw), and db[o] from column R when want_db; `accumulate` adds
// to what dw / db hold (later tiles). grid.y over channels, grid.x over columns.
extern "C" __global__ void conv_dw_reduce_v2_f32(ConvV2Params p, const float* __restrict__ part,
                                                 u32 ld, u32 want_db, u32 accumulate,
                                                 float* __restrict__ dw, float* __restrict__ db) {
    const Conv2dGeometry& g = p.g;
    const u32 R = g.c * g.kh * g.kw, cols = want_db ? R + 1 : R;
    for (u32 o = blockIdx.y; o < g.o; o += gridDim.y) {
        for (u32 r = blockIdx.x * blockDim.x + threadIdx.x; r < cols; r += gridDim.x * blockDim.x) {
            float s = 0.0f;
            for (u32 img = 0; img < g.n; ++img) s += part[((u64)img * g.o + o) * ld + r];
            float* d = r < R ? dw + (u64)o * R + r : db + o;
            *d = accumulate ? *d + s : s;
        }
    }
}

// y[i] = bf16(x[i]) for i < n.
extern "C" __global__ void conv_to_bf16(const float* __restrict__ x, u64 n, u16* __restrict__ y) {
    GRID_STRIDE(i, n) y[i] = to_bf16(x[i]);
}
