//! Reference loops for the GMP sampler. The sample geometry depends on (n, k, i, j) but not on
//! the channel, so it is computed once per image into a table (`taps`) and reused by every
//! channel: forward and dx work per (n, c) plane (rayon over planes, no two threads write one
//! plane); doffsets reduces over channels per (n, position block).
//!
//! [`forward`], [`backward_x`] and [`backward_offsets`] take the channels-last fast path of
//! cpu_fast.rs on a CPU with AVX2 or AVX-512; `*_reference` are the loops it is tested against.
use rayon::prelude::*;

use super::{cpu_fast, GmpGeometry};
use crate::device::cpu::simd::{self, Isa};

/// The sampled mean, through the fast path where there is one.
pub fn forward(x: &[f32], off: &[f32], g: &GmpGeometry) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => forward_reference(x, off, g),
        isa => cpu_fast::forward(x, off, g, isa),
    }
}

/// dx, through the fast path where there is one.
pub fn backward_x(dy: &[f32], off: &[f32], g: &GmpGeometry) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => backward_x_reference(dy, off, g),
        isa => cpu_fast::backward_x(dy, off, g, isa),
    }
}

/// doffsets, through the fast path where there is one.
pub fn backward_offsets(x: &[f32], off: &[f32], dy: &[f32], g: &GmpGeometry) -> Vec<f32> {
    match simd::isa() {
        Isa::Scalar => backward_offsets_reference(x, off, dy, g),
        isa => cpu_fast::backward_offsets(x, off, dy, g, isa),
    }
}

/// One bilinear sample: plane offsets of its four corner taps (top-left, top-right,
/// bottom-left, bottom-right) and its fractional position inside the floor cell. Corners
/// outside the map have `valid = 0` and index 0, so loops need no branches.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tap {
    pub idx: [u32; 4],
    pub valid: [f32; 4],
    pub fx: f32,
    pub fy: f32,
}

impl Tap {
    /// Corner weights, zero for corners outside the map (grid_sample padding_mode="zeros").
    #[inline]
    pub fn weights(&self) -> [f32; 4] {
        let (fx, fy) = (self.fx, self.fy);
        [
            (1.0 - fx) * (1.0 - fy) * self.valid[0],
            fx * (1.0 - fy) * self.valid[1],
            (1.0 - fx) * fy * self.valid[2],
            fx * fy * self.valid[3],
        ]
    }
    /// ∂weight/∂x and ∂weight/∂y of each corner, on the floor cell of the forward.
    #[inline]
    pub fn dweights(&self) -> ([f32; 4], [f32; 4]) {
        let (fx, fy) = (self.fx, self.fy);
        let v = self.valid;
        (
            [-(1.0 - fy) * v[0], (1.0 - fy) * v[1], -fy * v[2], fy * v[3]],
            [-(1.0 - fx) * v[0], -fx * v[1], (1.0 - fx) * v[2], fx * v[3]],
        )
    }
}

/// The taps of one image's samples, laid out `[p = i*W + j][k]`. `off` is that image's
/// `[2K, H, W]` offsets block.
pub fn taps(off: &[f32], g: &GmpGeometry) -> Vec<Tap> {
    let (k, h, w) = (g.k as usize, g.h as usize, g.w as usize);
    let hw = h * w;
    let mut t = vec![Tap::default(); hw * k];
    for i in 0..h {
        for j in 0..w {
            let p = i * w + j;
            for kk in 0..k {
                let px = j as f32 + off[2 * kk * hw + p];
                let py = i as f32 + off[(2 * kk + 1) * hw + p];
                // floor in f32, then a saturating cast: huge or non-finite moves fall outside
                // the map instead of wrapping (NaN propagates through fx, fy).
                let (fx0, fy0) = (px.floor(), py.floor());
                let (x0, y0) = (fx0 as i64, fy0 as i64);
                let (wi, hi) = (w as i64, h as i64);
                let in_x0 = (0..wi).contains(&x0);
                let in_x1 = (-1..wi - 1).contains(&x0);
                let in_y0 = (0..hi).contains(&y0);
                let in_y1 = (-1..hi - 1).contains(&y0);
                let at = |ok: bool, y: i64, x: i64| -> (u32, f32) {
                    if ok {
                        ((y * wi + x) as u32, 1.0)
                    } else {
                        (0, 0.0)
                    }
                };
                // saturating: x0 is i64::MAX for an infinite move (the tap is outside anyway)
                let (x1, y1) = (x0.saturating_add(1), y0.saturating_add(1));
                let c = [
                    at(in_y0 && in_x0, y0, x0),
                    at(in_y0 && in_x1, y0, x1),
                    at(in_y1 && in_x0, y1, x0),
                    at(in_y1 && in_x1, y1, x1),
                ];
                t[p * k + kk] = Tap {
                    idx: c.map(|c| c.0),
                    valid: c.map(|c| c.1),
                    fx: px - fx0,
                    fy: py - fy0,
                };
            }
        }
    }
    t
}

/// Per-image tables, `tables[n]` for image n: `each` turns that image's taps into its table.
fn tables<T: Send>(off: &[f32], g: &GmpGeometry, each: impl Fn(Vec<Tap>) -> T + Sync) -> Vec<T> {
    let per = 2 * g.k as usize * g.plane();
    (0..g.n as usize)
        .into_par_iter()
        .map(|b| each(taps(&off[b * per..(b + 1) * per], g)))
        .collect()
}

/// A tap with its masked corner weights precomputed: forward and dx reuse it for every channel.
#[derive(Clone, Copy)]
struct Weighted {
    idx: [u32; 4],
    w: [f32; 4],
}

/// Channels processed together: each tap is loaded once for this many planes.
const CB: usize = 8;

/// The frame forward and dx share: both read an x-shaped `[N, C, hw]` input and write a zeroed
/// x-shaped output, by blocks of up to `CB` planes of one image (in parallel) that use the
/// image's `Weighted` taps `[p][k]`. `f(table, out_block, in_block, planes)` does one block.
fn per_channel_block(
    input: &[f32],
    off: &[f32],
    g: &GmpGeometry,
    f: impl Fn(&[Weighted], &mut [f32], &[f32], usize) + Sync,
) -> Vec<f32> {
    let tables = tables(off, g, |t| {
        t.iter()
            .map(|t| Weighted {
                idx: t.idx,
                w: t.weights(),
            })
            .collect::<Vec<_>>()
    });
    let (c, hw) = (g.c as usize, g.plane());
    let mut out = vec![0.0f32; g.x_len()];
    out.par_chunks_mut(c * hw)
        .zip(input.par_chunks(c * hw))
        .zip(&tables)
        .for_each(|((oi, ii), tab)| {
            oi.par_chunks_mut(CB * hw)
                .zip(ii.par_chunks(CB * hw))
                .for_each(|(ob, ib)| f(tab, ob, ib, ob.len() / hw));
        });
    out
}

/// out[n,c,p] = (1/K) Σ_k Σ_corners weight · x[n,c,corner].
pub fn forward_reference(x: &[f32], off: &[f32], g: &GmpGeometry) -> Vec<f32> {
    let (hw, k) = (g.plane(), g.k as usize);
    let inv_k = 1.0 / k as f32;
    per_channel_block(x, off, g, |tab, o, xb, planes| {
        for p in 0..hw {
            let mut acc = [0.0f32; CB];
            for t in &tab[p * k..(p + 1) * k] {
                for q in 0..4 {
                    let (i, wq) = (t.idx[q] as usize, t.w[q]);
                    for (cc, a) in acc[..planes].iter_mut().enumerate() {
                        *a += wq * xb[cc * hw + i];
                    }
                }
            }
            for (cc, a) in acc[..planes].iter().enumerate() {
                o[cc * hw + p] = a * inv_k;
            }
        }
    })
}

/// dx[n,c,corner] += (1/K) · weight · dy[n,c,p], scattered within each (n, c) plane (a block
/// of planes belongs to one task, so no two threads write the same plane).
pub fn backward_x_reference(dy: &[f32], off: &[f32], g: &GmpGeometry) -> Vec<f32> {
    let (hw, k) = (g.plane(), g.k as usize);
    let inv_k = 1.0 / k as f32;
    per_channel_block(dy, off, g, |tab, d, gb, planes| {
        for p in 0..hw {
            let mut gk = [0.0f32; CB];
            for (cc, v) in gk[..planes].iter_mut().enumerate() {
                *v = gb[cc * hw + p] * inv_k;
            }
            for t in &tab[p * k..(p + 1) * k] {
                for q in 0..4 {
                    let (i, wq) = (t.idx[q] as usize, t.w[q]);
                    for (cc, v) in gk[..planes].iter().enumerate() {
                        d[cc * hw + i] += wq * v;
                    }
                }
            }
        }
    })
}

/// doffsets[n, 2k, p] = (1/K) Σ_c dy[n,c,p] · Σ_corners x[n,c,corner] · ∂weight/∂x, and likewise
/// channel 2k+1 with ∂weight/∂y; the channel sum is accumulated in f64. Work is split over
/// (image, block of positions), each block reducing over all channels.
pub fn backward_offsets_reference(x: &[f32], off: &[f32], dy: &[f32], g: &GmpGeometry) -> Vec<f32> {
    let (n, c, hw, k) = (g.n as usize, g.c as usize, g.plane(), g.k as usize);
    let tables = tables(off, g, |t| t);
    // Blocks of positions small enough that the f64 accumulators stay in cache.
    let block = hw.clamp(1, 256);
    let blocks = hw.div_ceil(block);
    let inv_k = 1.0 / k as f64;
    let mut doff = vec![0.0f32; g.off_len()];
    let parts: Vec<(usize, usize, Vec<f64>)> = (0..n * blocks)
        .into_par_iter()
        .map(|job| {
            let (b, blk) = (job / blocks, job % blocks);
            let (p0, p1) = (blk * block, ((blk + 1) * block).min(hw));
            let tab = &tables[b];
            let mut acc = vec![0.0f64; (p1 - p0) * k * 2];
            for ch in 0..c {
                let base = (b * c + ch) * hw;
                let xp = &x[base..base + hw];
                let dyp = &dy[base..base + hw];
                for p in p0..p1 {
                    let gv = dyp[p];
                    if gv == 0.0 {
                        continue;
                    }
                    for (kk, t) in tab[p * k..(p + 1) * k].iter().enumerate() {
                        let (dwx, dwy) = t.dweights();
                        let (mut sx, mut sy) = (0.0f32, 0.0f32);
                        for q in 0..4 {
                            let v = xp[t.idx[q] as usize];
                            sx += v * dwx[q];
                            sy += v * dwy[q];
                        }
                        let a = &mut acc[((p - p0) * k + kk) * 2..][..2];
                        a[0] += (gv * sx) as f64;
                        a[1] += (gv * sy) as f64;
                    }
                }
            }
            (b, p0, acc)
        })
        .collect();
    for (b, p0, acc) in parts {
        let span = acc.len() / (2 * k);
        for pp in 0..span {
            for kk in 0..k {
                let a = &acc[(pp * k + kk) * 2..][..2];
                doff[(b * 2 * k + 2 * kk) * hw + p0 + pp] = (a[0] * inv_k) as f32;
                doff[(b * 2 * k + 2 * kk + 1) * hw + p0 + pp] = (a[1] * inv_k) as f32;
            }
        }
    }
    doff
}
