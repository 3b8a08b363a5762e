//! Element-wise ops on the CPU: each in parallel chunks vectorised for the instruction set
//! chosen at run time (`device::cpu::par`), the same values bit for bit as the plain loop it
//! states; `sum` is the reference's sequential f64 sum.
use crate::device::cpu::par;
use crate::device::cpu::simd;

pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    par::map2(simd::isa(), a, b, |x, y| x + y)
}

pub fn scale(a: &[f32], s: f32) -> Vec<f32> {
    par::map(simd::isa(), a, |x| x * s)
}

pub fn abs(a: &[f32]) -> Vec<f32> {
    par::map(simd::isa(), a, |x| x.abs())
}

pub fn abs_backward(a: &[f32], dy: &[f32]) -> Vec<f32> {
    par::map2(simd::isa(), a, dy, |x, g| {
        if x > 0.0 {
            g
        } else if x < 0.0 {
            -g
        } else {
            0.0
        }
    })
}

pub fn sum(a: &[f32]) -> f32 {
    a.iter().map(|&x| x as f64).sum::<f64>() as f32
}
