//! ReLU on the CPU: the reference loops, and the entry points, which run them in parallel
//! chunks vectorised for the instruction set chosen at run time (`device::cpu::par`; the same
//! values bit for bit).
use crate::device::cpu::par;
use crate::device::cpu::simd::{self, Isa};

pub fn forward(x: &[f32]) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => forward_reference(x),
        isa => par::map(isa, x, |v| v.max(0.0)),
    }
}

pub fn backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => backward_reference(y, dy),
        isa => par::map2(isa, y, dy, |y, g| if y > 0.0 { g } else { 0.0 }),
    }
}

pub fn forward_reference(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| v.max(0.0)).collect()
}

pub fn backward_reference(y: &[f32], dy: &[f32]) -> Vec<f32> {
    y.iter()
        .zip(dy)
        .map(|(&y, &g)| if y > 0.0 { g } else { 0.0 })
        .collect()
}
