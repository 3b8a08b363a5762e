// Adam, fused per parameter tensor (src/optim/): PyTorch's Adam with L2 weight decay,
// written in the CPU reference's (and torch's) form:
//   g = grad + wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g g
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc1 = 1 - b1^t, bc2 = 1 - b2^t (host)
#include "common.cuh"

// Mirrors `AdamStep` in src/optim/adam.rs.
struct AdamStep {
    float lr, beta1, beta2, eps, weight_decay;
    float bias_c1, bias_c2; // 1 - beta1^t, 1 - beta2^t
};
static_assert(sizeof(AdamStep) == 28, "AdamStep layout must match the Rust struct");

extern "C" __global__ void adam_f32(AdamStep p, float* __restrict__ param,
                                    const float* __restrict__ grad, float* __restrict__ m,
                                    float* __restrict__ v, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (u64)blockDim.x * gridDim.x) {
        const float pi = param[i];
        const float g = grad[i] + p.weight_decay * pi;
        const float mi = p.beta1 * m[i] + (1.0f - p.beta1) * g;
        const float vi = p.beta2 * v[i] + (1.0f - p.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float step_size = p.lr / p.bias_c1;
        const float denom = sqrtf(vi) / sqrtf(p.bias_c2) + p.eps;
        param[i] = pi - step_size * mi / denom;
    }
}
