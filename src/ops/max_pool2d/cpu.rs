//! CPU 2x2 stride-2 max pooling, one rayon task per (n, c) plane: the reference loops, and the
//! entry points that take the vectorised fast path (cpu_fast.rs) on a CPU with AVX2 or
//! AVX-512.
use rayon::prelude::*;

use super::{cpu_fast, MaxPool2dGeometry};
use crate::device::cpu::simd::{self, Isa};

/// (y, argmax), through the fast path where there is one.
pub fn forward(x: &[f32], g: &MaxPool2dGeometry) -> (Vec<f32>, Vec<u32>) {
    match simd::isa() {
        Isa::Scalar => forward_reference(x, g),
        isa => cpu_fast::forward(x, g, isa),
    }
}

/// dx, through the fast path where there is one.
pub fn backward(dy: &[f32], idx: &[u32], g: &MaxPool2dGeometry) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => backward_reference(dy, idx, g),
        isa => cpu_fast::backward(dy, idx, g, isa),
    }
}

/// Returns (y, argmax) for the planes of `g`; argmax is the flat index within the input
/// plane. Scan order is row-major and a later value wins only if strictly greater (ties: the
/// first maximum) or NaN (NaN propagates, as PyTorch's CPU kernel).
pub fn forward_reference(x: &[f32], g: &MaxPool2dGeometry) -> (Vec<f32>, Vec<u32>) {
    let (h, w, oh, ow) = (g.h as usize, g.w as usize, g.oh as usize, g.ow as usize);
    let mut y = vec![0.0f32; g.out_len()];
    let mut idx = vec![0u32; g.out_len()];
    y.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(h * w))
        .for_each(|((yp, ip), xp)| {
            for i in 0..oh {
                for j in 0..ow {
                    let first = 2 * i * w + 2 * j;
                    let (mut best, mut arg) = (xp[first], first);
                    for cand in [first + 1, first + w, first + w + 1] {
                        let v = xp[cand];
                        if v > best || v.is_nan() {
                            best = v;
                            arg = cand;
                        }
                    }
                    yp[i * ow + j] = best;
                    ip[i * ow + j] = arg as u32;
                }
            }
        });
    (y, idx)
}

/// Scatters dy onto the argmax positions of zeroed input planes.
pub fn backward_reference(dy: &[f32], idx: &[u32], g: &MaxPool2dGeometry) -> Vec<f32> {
    let (in_plane, out_plane) = (g.in_plane(), g.out_plane());
    let mut dx = vec![0.0f32; g.in_len()];
    dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(idx.par_chunks(out_plane)))
        .for_each(|(dxp, (dyp, ip))| {
            for (&g, &k) in dyp.iter().zip(ip) {
                dxp[k as usize] += g; // windows do not overlap; += keeps it the adjoint anyway
            }
        });
    dx
}
