// Shared by every kernel file (build.rs expands `#include "common.cuh"`, since NVRTC is given no
// include paths): integer types and the grid-stride loop with 64-bit indices.
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)
