// Deterministic block reductions (a fixed order, no atomics), for the files that reduce.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide sum returned to every thread; fixed order, so deterministic. `sh` holds 33 floats.
// Needs a one-dimensional block of whole warps, at most 1024 threads (32 partial sums): the
// kernels that call it say `__launch_bounds__(256)` and their launchers use 256; any other
// block traps rather than sum garbage from lanes that do not exist.
__device__ float block_sum(float v, float* sh) {
    if ((blockDim.x & 31u) != 0 || blockDim.x > 1024 || blockDim.y != 1 || blockDim.z != 1)
        __trap();
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    const float r = sh[32];
    __syncthreads(); // everyone has read sh[32] before the next call overwrites sh
    return r;
}
