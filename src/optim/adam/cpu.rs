//! Adam's update on the CPU: the reference loop the CUDA kernel (kernels/adam.cu) mirrors, and
//! the entry point, which runs the same per-element arithmetic in parallel chunks vectorised
//! for the instruction set chosen at run time (bit for bit the reference's values: each element
//! depends on its own p, g, m, v only, and no step is contracted or reordered).
use rayon::prelude::*;

use super::AdamStep;
use crate::device::cpu::par::CHUNK;
use crate::device::cpu::simd::{self, with_isa, Isa};

/// p, m, v updated in place from g.
pub fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamStep) {
    let isa = simd::isa();
    if isa == Isa::Scalar || p.len() < CHUNK {
        return update_reference(p, g, m, v, h);
    }
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            with_isa(
                isa,
                #[inline(always)]
                || update_reference(p, g, m, v, h),
            )
        });
}

/// The plain loop.
#[inline(always)]
pub fn update_reference(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamStep) {
    let step_size = h.lr / h.bias_correction1;
    let bc2_sqrt = h.bias_correction2.sqrt();
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i] + h.weight_decay * p[i];
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * gi;
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * gi * gi;
        // torch: denom = sqrt(v) / sqrt(bc2) + eps; p -= lr / bc1 * m / denom
        let denom = v[i].sqrt() / bc2_sqrt + h.eps;
        p[i] -= step_size * m[i] / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_update_equals_the_plain_loop() {
        let n = 3 * CHUNK + 17;
        let f = |s: f32| {
            (0..n)
                .map(|i| ((i as f32 + s) * 0.731).sin())
                .collect::<Vec<_>>()
        };
        let (g, p0, m0) = (f(1.0), f(2.0), f(3.0));
        let v0: Vec<f32> = f(4.0).iter().map(|x| x * x).collect();
        let h = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            bias_correction1: 0.19,
            bias_correction2: 0.0199,
        };
        let (mut pr, mut mr, mut vr) = (p0.clone(), m0.clone(), v0.clone());
        update_reference(&mut pr, &g, &mut mr, &mut vr, &h);
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
            simd::with_forced_isa(isa, || update(&mut p, &g, &mut m, &mut v, &h));
            assert_eq!((&p, &m, &v), (&pr, &mr, &vr), "{isa:?}");
        }
    }
}
