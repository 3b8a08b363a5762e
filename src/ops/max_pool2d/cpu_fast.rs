//! The CPU fast path of 2x2 max pooling: the reference's scan (cpu.rs: row-major, a later
//! value wins only if strictly greater or NaN) written branch-free per output row, so it
//! vectorises for the instruction set chosen at run time, with planes in parallel; the
//! backward writes every input position once (the argmax's gradient or zero) instead of
//! zeroing and scattering.
use rayon::prelude::*;

use super::MaxPool2dGeometry;
use crate::device::cpu::simd::{with_isa, Isa};

/// As `cpu::forward`: (y, argmax within the input plane).
pub fn forward(x: &[f32], g: &MaxPool2dGeometry, isa: Isa) -> (Vec<f32>, Vec<u32>) {
    let (h, w, oh, ow) = (g.h as usize, g.w as usize, g.oh as usize, g.ow as usize);
    let mut y = vec![0.0f32; g.out_len()];
    let mut idx = vec![0u32; g.out_len()];
    y.par_chunks_mut(oh * ow)
        .zip(idx.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(h * w))
        .for_each(|((yp, ip), xp)| {
            with_isa(isa, || {
                for i in 0..oh {
                    let r0 = &xp[2 * i * w..][..2 * ow];
                    let r1 = &xp[(2 * i + 1) * w..][..2 * ow];
                    let yr = &mut yp[i * ow..][..ow];
                    let ir = &mut ip[i * ow..][..ow];
                    let base = (2 * i * w) as u32;
                    for j in 0..ow {
                        let first = base + 2 * j as u32;
                        let (mut best, mut arg) = (r0[2 * j], first);
                        for (v, at) in [
                            (r0[2 * j + 1], first + 1),
                            (r1[2 * j], first + w as u32),
                            (r1[2 * j + 1], first + w as u32 + 1),
                        ] {
                            let take = v > best || v.is_nan();
                            best = if take { v } else { best };
                            arg = if take { at } else { arg };
                        }
                        yr[j] = best;
                        ir[j] = arg;
                    }
                }
            })
        });
    (y, idx)
}

/// As `cpu::backward`: dx[argmax] = dy, every other input position 0.
pub fn backward(dy: &[f32], idx: &[u32], g: &MaxPool2dGeometry, isa: Isa) -> Vec<f32> {
    let (h, w, oh, ow) = (g.h as usize, g.w as usize, g.oh as usize, g.ow as usize);
    let mut dx = vec![0.0f32; g.in_len()];
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow).zip(idx.par_chunks(oh * ow)))
        .for_each(|(dxp, (dyp, ip))| {
            with_isa(isa, || {
                for i in 0..oh {
                    let base = (2 * i * w) as u32;
                    let (d, ix) = (&dyp[i * ow..][..ow], &ip[i * ow..][..ow]);
                    let (top, bottom) = dxp[2 * i * w..(2 * i + 2) * w].split_at_mut(w);
                    for j in 0..ow {
                        let rel = ix[j].wrapping_sub(base + 2 * j as u32);
                        let g = d[j];
                        top[2 * j] = if rel == 0 { g } else { 0.0 };
                        top[2 * j + 1] = if rel == 1 { g } else { 0.0 };
                        bottom[2 * j] = if rel == w as u32 { g } else { 0.0 };
                        bottom[2 * j + 1] = if rel == w as u32 + 1 { g } else { 0.0 };
                    }
                }
            })
        });
    dx
}
