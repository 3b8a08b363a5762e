//! Adam's update on the CPU: the reference loop the CUDA kernel (kernels/adam.cu) mirrors.
use super::AdamStep;

/// p, m, v updated in place from g.
pub fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamStep) {
    let step_size = h.lr / h.bias_correction1;
    let bc2_sqrt = h.bias_correction2.sqrt();
    for i in 0..p.len() {
        let gi = g[i] + h.weight_decay * p[i];
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
        // torch: denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom
        let denom = v[i].sqrt() / bc2_sqrt + h.eps;
        p[i] -= step_size * m[i] / denom;
    }
}
