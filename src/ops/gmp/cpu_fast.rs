//! The CPU fast path of the GMP sampler, over channels-last copies: with x as `[H·W][C]` per
//! image, each bilinear tap of a sample is one contiguous AXPY over the channels (forward,
//! dx) or one contiguous dot product (doffsets), vectorised for the instruction set chosen at
//! run time, instead of C strided gathers.
//!
//! The forward and dx do the reference's arithmetic in its order (per output element: k, then
//! the four corners; dx accumulates positions in order), so they equal cpu.rs bit for bit;
//! doffsets sums its channels in f64 lanes instead of one running f64 sum. Tasks are images ×
//! blocks of positions (forward, doffsets) or images × blocks of channels (dx, whose scatter
//! then never has two tasks on one element).
use rayon::prelude::*;

use super::cpu::{taps, Tap};
use super::GmpGeometry;
use crate::device::cpu::par::transpose;
use crate::device::cpu::simd::{with_isa, Isa};

/// Positions per forward / doffsets task.
const PB: usize = 16;
/// Channels per dx task.
const CB: usize = 64;

/// A tap with its masked corner weights precomputed.
#[derive(Clone, Copy)]
struct Weighted {
    idx: [u32; 4],
    w: [f32; 4],
}

fn weighted(off: &[f32], g: &GmpGeometry) -> Vec<Vec<Weighted>> {
    let per = 2 * g.k as usize * g.plane();
    (0..g.n as usize)
        .into_par_iter()
        .map(|b| {
            taps(&off[b * per..(b + 1) * per], g)
                .iter()
                .map(|t| Weighted {
                    idx: t.idx,
                    w: t.weights(),
                })
                .collect()
        })
        .collect()
}

/// As `cpu::forward`.
pub fn forward(x: &[f32], off: &[f32], g: &GmpGeometry, isa: Isa) -> Vec<f32> {
    let (n, c, hw, k) = (g.n as usize, g.c as usize, g.plane(), g.k as usize);
    let inv_k = 1.0 / k as f32;
    let xt = transpose(isa, x, n, c, hw);
    let tabs = weighted(off, g);
    // Channels-last output, transposed back at the end.
    let mut outt = vec![0.0f32; x.len()];
    outt.par_chunks_mut(PB * c).enumerate().for_each(|(t, ob)| {
        // a chunk may straddle two images: each position finds its own
        let start = t * PB * c;
        with_isa(
            isa,
            #[inline(always)]
            || {
                for (j, acc) in ob.chunks_mut(c).enumerate() {
                    let flat = start / c + j;
                    let (b, p) = (flat / hw, flat % hw);
                    let xi = &xt[b * hw * c..][..hw * c];
                    for tp in &tabs[b][p * k..(p + 1) * k] {
                        for q in 0..4 {
                            let (i, wq) = (tp.idx[q] as usize, tp.w[q]);
                            let row = &xi[i * c..][..c];
                            for (a, &v) in acc.iter_mut().zip(row) {
                                *a += wq * v;
                            }
                        }
                    }
                    for a in acc.iter_mut() {
                        *a *= inv_k;
                    }
                }
            },
        )
    });
    transpose(isa, &outt, n, hw, c)
}

/// As `cpu::backward_x`.
pub fn backward_x(dy: &[f32], off: &[f32], g: &GmpGeometry, isa: Isa) -> Vec<f32> {
    let (n, c, hw, k) = (g.n as usize, g.c as usize, g.plane(), g.k as usize);
    let inv_k = 1.0 / k as f32;
    let gt = transpose(isa, dy, n, c, hw);
    let tabs = weighted(off, g);
    let cblocks = c.div_ceil(CB);
    // dxᵀ per image and block of channels: [hw][cw], each task its own buffer.
    let parts: Vec<Vec<f32>> = (0..n * cblocks)
        .into_par_iter()
        .map(|t| {
            let (b, cb) = (t / cblocks, t % cblocks);
            let (c0, cw) = (cb * CB, CB.min(c - cb * CB));
            let gi = &gt[b * hw * c..][..hw * c];
            let mut d = vec![0.0f32; hw * cw];
            let mut v = vec![0.0f32; cw];
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for p in 0..hw {
                        for (vv, &gv) in v.iter_mut().zip(&gi[p * c + c0..][..cw]) {
                            *vv = gv * inv_k;
                        }
                        for tp in &tabs[b][p * k..(p + 1) * k] {
                            for q in 0..4 {
                                let (i, wq) = (tp.idx[q] as usize, tp.w[q]);
                                for (dd, &vv) in d[i * cw..][..cw].iter_mut().zip(&v) {
                                    *dd += wq * vv;
                                }
                            }
                        }
                    }
                },
            );
            d
        })
        .collect();
    let mut dx = vec![0.0f32; dy.len()];
    dx.par_chunks_mut(hw).enumerate().for_each(|(plane, dp)| {
        let (b, ch) = (plane / c, plane % c);
        let (cb, cc) = (ch / CB, ch % CB);
        let cw = CB.min(c - cb * CB);
        let part = &parts[b * cblocks + cb];
        for (p, v) in dp.iter_mut().enumerate() {
            *v = part[p * cw + cc];
        }
    });
    dx
}

/// As `cpu::backward_offsets`.
pub fn backward_offsets(x: &[f32], off: &[f32], dy: &[f32], g: &GmpGeometry, isa: Isa) -> Vec<f32> {
    let (n, c, hw, k) = (g.n as usize, g.c as usize, g.plane(), g.k as usize);
    let inv_k = 1.0 / k as f64;
    let xt = transpose(isa, x, n, c, hw);
    let gt = transpose(isa, dy, n, c, hw);
    let tabs: Vec<Vec<Tap>> = {
        let per = 2 * k * hw;
        (0..n)
            .into_par_iter()
            .map(|b| taps(&off[b * per..(b + 1) * per], g))
            .collect()
    };
    let mut doff = vec![0.0f32; g.off_len()];
    // Per (image, position): 2K values, written below into [N][2K][hw].
    let vals: Vec<f32> = (0..n * hw)
        .into_par_iter()
        .with_min_len(PB)
        .flat_map_iter(|flat| {
            let (b, p) = (flat / hw, flat % hw);
            let xi = &xt[b * hw * c..][..hw * c];
            let gp = &gt[(b * hw + p) * c..][..c];
            let tab = &tabs[b][p * k..(p + 1) * k];
            let mut out = Vec::with_capacity(2 * k);
            for t in tab {
                let (dwx, dwy) = t.dweights();
                let rows: [&[f32]; 4] = std::array::from_fn(|q| &xi[t.idx[q] as usize * c..][..c]);
                let (sx, sy) = with_isa(
                    isa,
                    #[inline(always)]
                    || {
                        const L: usize = 16;
                        let (mut ax, mut ay) = ([0.0f64; L], [0.0f64; L]);
                        for (j, &gv) in gp.iter().enumerate() {
                            let (mut vx, mut vy) = (0.0f32, 0.0f32);
                            for q in 0..4 {
                                let v = rows[q][j];
                                vx += v * dwx[q];
                                vy += v * dwy[q];
                            }
                            // the reference skips gv == 0 (so 0 · inf adds nothing)
                            let (px, py) = if gv == 0.0 {
                                (0.0, 0.0)
                            } else {
                                (gv * vx, gv * vy)
                            };
                            ax[j % L] += px as f64;
                            ay[j % L] += py as f64;
                        }
                        (ax.iter().sum::<f64>(), ay.iter().sum::<f64>())
                    },
                );
                out.push((sx * inv_k) as f32);
                out.push((sy * inv_k) as f32);
            }
            out
        })
        .collect();
    for b in 0..n {
        for p in 0..hw {
            for j in 0..2 * k {
                doff[(b * 2 * k + j) * hw + p] = vals[(b * hw + p) * 2 * k + j];
            }
        }
    }
    doff
}
