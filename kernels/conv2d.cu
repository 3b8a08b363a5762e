// Convolution helpers around cuBLAS SGEMM (src/ops/conv2d/cuda.rs): im2col, col2im (gather,
// no atomics), bias add over NCHW and the per-channel bias gradient.
// Column layout for one image: row (c*kh + ki)*kw + kj, column oy*OW + ox; a launch covers
// `n` consecutive images, each with its own [C*kh*kw, OH*OW] block.
// Every index is 64-bit.
#include "common.cuh"
#include "reduce.cuh"

#define BLOCK 256

// Mirrors `Conv2dGeometry` in src/ops/conv2d/mod.rs field for field.
struct Conv2dGeometry {
    u32 n;           // images covered by this launch (the batch, or a tile of it)
    u32 c, h, w;     // input channels and spatial size of one image
    u32 o;           // output channels (the GEMMs' size; im2col and col2im do not read it)
    u32 kh, kw;      // kernel size
    u32 stride, pad; // the same in both directions
    u32 oh, ow;      // output size
};
static_assert(sizeof(Conv2dGeometry) == 44, "layout must match the Rust struct");

// col[img][(ch*kh+ki)*kw+kj][oy*OW+ox] = x[img][ch][oy*s-p+ki][ox*s-p+kj], zero outside.
extern "C" __global__ void im2col_f32(Conv2dGeometry p, const float* __restrict__ x,
                                      float* __restrict__ col) {
    const u64 ohw = (u64)p.oh * p.ow;
    const u64 rows = (u64)p.c * p.kh * p.kw;
    const u64 total = (u64)p.n * rows * ohw;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const u64 q = i % ohw;
        const u64 r = (i / ohw) % rows;
        const u64 img = i / (ohw * rows);
        const u64 oy = q / p.ow, ox = q % p.ow;
        const u64 kj = r % p.kw, ki = (r / p.kw) % p.kh, ch = r / ((u64)p.kw * p.kh);
        const i64 iy = (i64)(oy * p.stride + ki) - (i64)p.pad;
        const i64 ix = (i64)(ox * p.stride + kj) - (i64)p.pad;
        float v = 0.0f;
        if (iy >= 0 && iy < (i64)p.h && ix >= 0 && ix < (i64)p.w)
            v = x[((img * p.c + ch) * p.h + (u64)iy) * p.w + (u64)ix];
        col[i] = v;
    }
}

// Adjoint of im2col, as a gather: each input element sums the column entries that read it.
// Overwrites dx (no accumulation into earlier contents).
extern "C" __global__ void col2im_f32(Conv2dGeometry p, const float* __restrict__ col,
                                      float* __restrict__ dx) {
    const u64 ohw = (u64)p.oh * p.ow;
    const u64 rows = (u64)p.c * p.kh * p.kw;
    const u64 total = (u64)p.n * p.c * p.h * p.w;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const i64 xx = (i64)(i % p.w);
        const i64 yy = (i64)((i / p.w) % p.h);
        const u64 ch = (i / ((u64)p.w * p.h)) % p.c;
        const u64 img = i / ((u64)p.w * p.h * p.c);
        const float* cimg = col + img * rows * ohw;
        float acc = 0.0f;
        for (u32 ki = 0; ki < p.kh; ++ki) {
            const i64 ty = yy + (i64)p.pad - (i64)ki; // = oy * stride when a column reads (yy, .)
            if (ty < 0 || ty % (i64)p.stride != 0) continue;
            const i64 oy = ty / (i64)p.stride;
            if (oy >= (i64)p.oh) continue;
            for (u32 kj = 0; kj < p.kw; ++kj) {
                const i64 tx = xx + (i64)p.pad - (i64)kj;
                if (tx < 0 || tx % (i64)p.stride != 0) continue;
                const i64 ox = tx / (i64)p.stride;
                if (ox >= (i64)p.ow) continue;
                const u64 r = (ch * p.kh + ki) * p.kw + kj;
                acc += cimg[r * ohw + (u64)oy * p.ow + (u64)ox];
            }
        }
        dx[i] = acc;
    }
}

// y[n][o][q] += b[o] over an NCHW tensor of `total` elements with `plane` = OH*OW.
extern "C" __global__ void conv_bias_add_f32(float* __restrict__ y, const float* __restrict__ b,
                                             u64 total, u32 channels, u64 plane) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        y[i] += b[(i / plane) % channels];
    }
}

// db[o] = sum over n, q of dy[n][o][q]. One block per channel (grid-stride over channels),
// block tree reduction: deterministic, no atomics. Launch with blockDim.x == BLOCK.
extern "C" __global__ void __launch_bounds__(256) conv_bias_grad_f32(const float* __restrict__ dy, float* __restrict__ db,
                                              u32 images, u32 channels, u64 plane) {
    __shared__ float sh[33];
    for (u32 ch = blockIdx.x; ch < channels; ch += gridDim.x) {
        float s = 0.0f;
        for (u32 img = 0; img < images; ++img) {
            const float* d = dy + ((u64)img * channels + ch) * plane;
            for (u64 q = threadIdx.x; q < plane; q += blockDim.x) s += d[q];
        }
        s = block_sum(s, sh);
        if (threadIdx.x == 0) db[ch] = s;
    }
}
