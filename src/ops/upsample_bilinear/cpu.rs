//! Reference loops for bilinear resize of NCHW planes. The source index and weights of every
//! output row and column are computed once (`axis_taps`), then each (n, c) plane is processed
//! independently, so rayon splits work over planes and the backward's overlapping
//! accumulations never race.
//!
//! [`forward`] and [`backward`] take the separable, vectorised fast path of cpu_fast.rs on a
//! CPU with AVX2 or AVX-512; `*_reference` are the loops it is tested against.
use rayon::prelude::*;

use super::{cpu_fast, source_scale, UpsampleBilinearGeometry};
use crate::device::cpu::simd::{self, Isa};

/// The output planes, through the fast path where there is one.
pub fn forward(x: &[f32], g: &UpsampleBilinearGeometry) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => forward_reference(x, g),
        isa => cpu_fast::forward(x, g, isa),
    }
}

/// The input gradient, through the fast path where there is one.
pub fn backward(dy: &[f32], g: &UpsampleBilinearGeometry) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => backward_reference(dy, g),
        isa => cpu_fast::backward(dy, g, isa),
    }
}

/// The two source taps and weights of one output coordinate along one axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AxisTap {
    pub i0: usize,
    pub i1: usize,
    pub l0: f32,
    pub l1: f32,
}

/// PyTorch's `area_pixel_compute_source_index` (with scale = in/out, as when a size is given)
/// followed by the index/lambda computation of `upsample_bilinear2d`, in f32 like PyTorch's CPU
/// kernel for float tensors.
pub fn axis_taps(input: usize, output: usize, align_corners: bool) -> Vec<AxisTap> {
    let scale = source_scale(input, output, align_corners);
    (0..output)
        .map(|d| {
            let src = if align_corners {
                scale * d as f32
            } else {
                (scale * (d as f32 + 0.5) - 0.5).max(0.0)
            };
            let i0 = (src as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            let l1 = src - i0 as f32;
            AxisTap {
                i0,
                i1,
                l0: 1.0 - l1,
                l1,
            }
        })
        .collect()
}

/// (input h, input w, output h, output w) of `g`.
fn sizes(g: &UpsampleBilinearGeometry) -> (usize, usize, usize, usize) {
    (g.ih as usize, g.iw as usize, g.oh as usize, g.ow as usize)
}

/// `x` holds the input planes of `g`; returns its output planes.
pub fn forward_reference(x: &[f32], g: &UpsampleBilinearGeometry) -> Vec<f32> {
    let (in_h, in_w, out_h, out_w) = sizes(g);
    let ty = axis_taps(in_h, out_h, g.align_corners());
    let tx = axis_taps(in_w, out_w, g.align_corners());
    let mut out = vec![0.0f32; g.out_len()];
    out.par_chunks_mut(out_h * out_w)
        .zip(x.par_chunks(in_h * in_w))
        .for_each(|(o, xp)| {
            for (orow, t) in o.chunks_mut(out_w).zip(&ty) {
                let r0 = &xp[t.i0 * in_w..(t.i0 + 1) * in_w];
                let r1 = &xp[t.i1 * in_w..(t.i1 + 1) * in_w];
                for (v, s) in orow.iter_mut().zip(&tx) {
                    *v = t.l0 * (s.l0 * r0[s.i0] + s.l1 * r0[s.i1])
                        + t.l1 * (s.l0 * r1[s.i0] + s.l1 * r1[s.i1]);
                }
            }
        });
    out
}

/// Adjoint of `forward`: every output gradient is scattered back to its four taps.
pub fn backward_reference(dy: &[f32], g: &UpsampleBilinearGeometry) -> Vec<f32> {
    let (in_h, in_w, out_h, out_w) = sizes(g);
    let ty = axis_taps(in_h, out_h, g.align_corners());
    let tx = axis_taps(in_w, out_w, g.align_corners());
    let mut dx = vec![0.0f32; g.in_len()];
    dx.par_chunks_mut(in_h * in_w)
        .zip(dy.par_chunks(out_h * out_w))
        .for_each(|(d, g)| {
            for (grow, t) in g.chunks(out_w).zip(&ty) {
                for (&gv, s) in grow.iter().zip(&tx) {
                    let a = t.l0 * gv;
                    let b = t.l1 * gv;
                    d[t.i0 * in_w + s.i0] += a * s.l0;
                    d[t.i0 * in_w + s.i1] += a * s.l1;
                    d[t.i1 * in_w + s.i0] += b * s.l0;
                    d[t.i1 * in_w + s.i1] += b * s.l1;
                }
            }
        });
    dx
}
