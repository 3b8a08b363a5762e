// Bilinear resize of NCHW planes with PyTorch F.interpolate(mode="bilinear") semantics, both
// align_corners modes (src/ops/upsample_bilinear/). The scales are computed on the host (`source_scale`):
//   align_corners=true:  scale = (in-1)/(out-1) (0 when out == 1), src = dst * scale
//   align_corners=false: scale = in/out, src = max((dst + 0.5) * scale - 0.5, 0)
// i0 = floor(src), i1 = min(i0 + 1, in - 1), l1 = src - i0, l0 = 1 - l1.
// The backward scatters with atomicAdd into a zeroed dx: output pixels share input pixels.
#include "common.cuh"

// Mirrors `UpsampleBilinearGeometry` in src/ops/upsample_bilinear/mod.rs.
struct UpsampleBilinearGeometry {
    u32 planes;         // N * C
    u32 ih, iw;         // input size
    u32 oh, ow;         // output size
    u32 align_corners;  // 0 or 1
    float scale_h, scale_w;
};
static_assert(sizeof(UpsampleBilinearGeometry) == 32, "layout must match the Rust struct");

__device__ __forceinline__ void src_index(u32 dst, u32 in, float scale, u32 align, u32* i0,
                                          u32* i1, float* l1) {
    float s;
    if (align) {
        s = scale * (float)dst;
    } else {
        s = scale * ((float)dst + 0.5f) - 0.5f;
        if (s < 0.0f) s = 0.0f;
    }
    u32 a = (u32)s; // s >= 0: truncation is floor
    if (a > in - 1) a = in - 1;
    *i0 = a;
    *i1 = a + 1 < in ? a + 1 : in - 1;
    *l1 = s - (float)a;
}

extern "C" __global__ void upsample_bilinear_fwd_f32(UpsampleBilinearGeometry p, const float* __restrict__ x,
                                                     float* __restrict__ y) {
    const u64 total = (u64)p.planes * p.oh * p.ow;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const u32 ox = (u32)(i % p.ow);
        const u32 oy = (u32)((i / p.ow) % p.oh);
        const u64 plane = i / ((u64)p.ow * p.oh);
        u32 y0, y1, x0, x1;
        float ly1, lx1;
        src_index(oy, p.ih, p.scale_h, p.align_corners, &y0, &y1, &ly1);
        src_index(ox, p.iw, p.scale_w, p.align_corners, &x0, &x1, &lx1);
        const float ly0 = 1.0f - ly1, lx0 = 1.0f - lx1;
        const float* xp = x + plane * p.ih * p.iw;
        y[i] = ly0 * (lx0 * xp[y0 * p.iw + x0] + lx1 * xp[y0 * p.iw + x1]) +
               ly1 * (lx0 * xp[y1 * p.iw + x0] + lx1 * xp[y1 * p.iw + x1]);
    }
}

// dx must be zeroed by the caller; each dy element adds its four weighted shares.
extern "C" __global__ void upsample_bilinear_bwd_f32(UpsampleBilinearGeometry p, const float* __restrict__ dy,
                                                     float* __restrict__ dx) {
    const u64 total = (u64)p.planes * p.oh * p.ow;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const u32 ox = (u32)(i % p.ow);
        const u32 oy = (u32)((i / p.ow) % p.oh);
        const u64 plane = i / ((u64)p.ow * p.oh);
        u32 y0, y1, x0, x1;
        float ly1, lx1;
        src_index(oy, p.ih, p.scale_h, p.align_corners, &y0, &y1, &ly1);
        src_index(ox, p.iw, p.scale_w, p.align_corners, &x0, &x1, &lx1);
        const float ly0 = 1.0f - ly1, lx0 = 1.0f - lx1;
        const float g = dy[i];
        float* dp = dx + plane * p.ih * p.iw;
        atomicAdd(dp + y0 * p.iw + x0, ly0 * lx0 * g);
        atomicAdd(dp + y0 * p.iw + x1, ly0 * lx1 * g);
        atomicAdd(dp + y1 * p.iw + x0, ly1 * lx0 * g);
        atomicAdd(dp + y1 * p.iw + x1, ly1 * lx1 * g);
    }
}
