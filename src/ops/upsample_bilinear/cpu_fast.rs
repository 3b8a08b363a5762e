//! The CPU fast path of bilinear resizing: separable, planes in parallel, vectorised for the
//! instruction set chosen at run time. The forward interpolates each input row horizontally
//! once (`h[r][x] = l0·row[i0] + l1·row[i1]`, the reference's inner pair) and then each output
//! row as `t.l0·h[i0] + t.l1·h[i1]` over whole rows: the reference's arithmetic operation for
//! operation, so bit for bit. The backward is the adjoint in the same two steps (whole-row
//! AXPYs vertically, then each row's horizontal scatter), which sums in another order than
//! the reference's per-output scatter.
use rayon::prelude::*;

use super::cpu::{axis_taps, AxisTap};
use super::UpsampleBilinearGeometry;
use crate::device::cpu::simd::{with_isa, Isa};

fn sizes(g: &UpsampleBilinearGeometry) -> (usize, usize, usize, usize) {
    (g.ih as usize, g.iw as usize, g.oh as usize, g.ow as usize)
}

/// The horizontal taps as arrays (index, weight) the loops can vectorise over.
struct Cols {
    i0: Vec<u32>,
    i1: Vec<u32>,
    l0: Vec<f32>,
    l1: Vec<f32>,
}

fn cols(t: &[AxisTap]) -> Cols {
    Cols {
        i0: t.iter().map(|s| s.i0 as u32).collect(),
        i1: t.iter().map(|s| s.i1 as u32).collect(),
        l0: t.iter().map(|s| s.l0).collect(),
        l1: t.iter().map(|s| s.l1).collect(),
    }
}

/// As `cpu::forward`.
pub fn forward(x: &[f32], g: &UpsampleBilinearGeometry, isa: Isa) -> Vec<f32> {
    let (in_h, in_w, out_h, out_w) = sizes(g);
    let ty = axis_taps(in_h, out_h, g.align_corners());
    let tx = cols(&axis_taps(in_w, out_w, g.align_corners()));
    let mut out = vec![0.0f32; g.out_len()];
    out.par_chunks_mut(out_h * out_w)
        .zip(x.par_chunks(in_h * in_w))
        .for_each_init(Vec::new, |h, (o, xp)| {
            h.resize(in_h * out_w, 0.0);
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for (hr, row) in h.chunks_mut(out_w).zip(xp.chunks(in_w)) {
                        for (x, v) in hr.iter_mut().enumerate() {
                            let (a, b) = (tx.i0[x] as usize, tx.i1[x] as usize);
                            *v = tx.l0[x] * row[a] + tx.l1[x] * row[b];
                        }
                    }
                    for (orow, t) in o.chunks_mut(out_w).zip(&ty) {
                        let (h0, h1) = (&h[t.i0 * out_w..][..out_w], &h[t.i1 * out_w..][..out_w]);
                        for ((v, &a), &b) in orow.iter_mut().zip(h0).zip(h1) {
                            *v = t.l0 * a + t.l1 * b;
                        }
                    }
                },
            )
        });
    out
}

/// As `cpu::backward` (the adjoint of `forward`).
pub fn backward(dy: &[f32], g: &UpsampleBilinearGeometry, isa: Isa) -> Vec<f32> {
    let (in_h, in_w, out_h, out_w) = sizes(g);
    let ty = axis_taps(in_h, out_h, g.align_corners());
    let tx = cols(&axis_taps(in_w, out_w, g.align_corners()));
    let mut dx = vec![0.0f32; g.in_len()];
    dx.par_chunks_mut(in_h * in_w)
        .zip(dy.par_chunks(out_h * out_w))
        .for_each_init(Vec::new, |dh, (d, gp)| {
            dh.clear();
            dh.resize(in_h * out_w, 0.0);
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for (grow, t) in gp.chunks(out_w).zip(&ty) {
                        for (v, &gv) in dh[t.i0 * out_w..][..out_w].iter_mut().zip(grow) {
                            *v += t.l0 * gv;
                        }
                        for (v, &gv) in dh[t.i1 * out_w..][..out_w].iter_mut().zip(grow) {
                            *v += t.l1 * gv;
                        }
                    }
                    for (drow, hrow) in d.chunks_mut(in_w).zip(dh.chunks(out_w)) {
                        for (x, &hv) in hrow.iter().enumerate() {
                            drow[tx.i0[x] as usize] += tx.l0[x] * hv;
                            drow[tx.i1[x] as usize] += tx.l1[x] * hv;
                        }
                    }
                },
            )
        });
    dx
}
