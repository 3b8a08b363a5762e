// Concatenation along channels of NCHW tensors (src/ops/concat/): one launch per part.
// An image's part occupies `part` = C_part*H*W contiguous floats inside the image's `whole` =
// C_total*H*W floats, starting at `offset` (channels before it times H*W).
#include "common.cuh"

// Mirrors `ConcatPart` in src/ops/concat/mod.rs.
struct ConcatPart {
    u64 images; // N
    u64 part;   // floats of this part per image
    u64 whole;  // floats of the concatenation per image
    u64 offset; // where this part starts inside an image
};
static_assert(sizeof(ConcatPart) == 32, "layout must match the Rust struct");

// dst[n][offset + r] = src[n][r]
extern "C" __global__ void concat_copy_f32(ConcatPart p, const float* __restrict__ src,
                                           float* __restrict__ dst) {
    const u64 total = p.images * p.part;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const u64 n = i / p.part, r = i % p.part;
        dst[n * p.whole + p.offset + r] = src[i];
    }
}

// dx[n][r] = dy[n][offset + r]: the backward splits dy into the parts' gradients.
extern "C" __global__ void concat_split_f32(ConcatPart p, const float* __restrict__ dy,
                                            float* __restrict__ dx) {
    const u64 total = p.images * p.part;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (u64)blockDim.x * gridDim.x) {
        const u64 n = i / p.part, r = i % p.part;
        dx[i] = dy[n * p.whole + p.offset + r];
    }
}
