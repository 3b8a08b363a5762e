//! The CPU fast path of batch norm: the reference's formulas (cpu.rs) with every pass parallel
//! and vectorised for the instruction set chosen at run time (`simd::with_isa`), and an optional
//! fused ReLU (y = max(bn(x), 0) forward; the gradient masked by y > 0 inside the backward's
//! passes, so neither direction makes an extra pass or tensor).
//!
//! Differences from the reference, all within rounding: channel sums are f64 in 16 lanes
//! (summed at the end) instead of one running sum, and the variance is one pass of shifted
//! sums, Σ(x − s) and Σ(x − s)² about s = the channel's first value, instead of two passes;
//! the shift keeps a large common offset from cancelling, as the reference's second pass does.
//! The per-element arithmetic (normalising, dx) is the reference's, operation for operation.
use rayon::prelude::*;

use super::{BatchNorm2dGeometry, BatchNormGrads, BatchNormMode, BatchNormNeeds, ChannelStats};
use crate::device::cpu::simd::{with_isa, Isa};

const L: usize = 16;

/// Lane sums of `f(i)` over i < n, f64, `L` lanes then summed in lane order.
#[inline(always)]
fn lane_sums2(n: usize, f: impl Fn(usize) -> (f64, f64)) -> (f64, f64) {
    let (mut a, mut b) = ([0.0f64; L], [0.0f64; L]);
    let full = n / L * L;
    for i0 in (0..full).step_by(L) {
        for l in 0..L {
            let (u, v) = f(i0 + l);
            a[l] += u;
            b[l] += v;
        }
    }
    for (l, i) in (full..n).enumerate() {
        let (u, v) = f(i);
        a[l] += u;
        b[l] += v;
    }
    (a.iter().sum(), b.iter().sum())
}

/// Per channel (mean, biased variance) of x.
fn channel_mean_var(x: &[f32], g: &BatchNorm2dGeometry, isa: Isa) -> Vec<(f64, f64)> {
    let (n, c, hw) = (g.images(), g.channels(), g.plane());
    let m = g.per_channel() as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |i: usize| &x[(i * c + ch) * hw..][..hw];
            let s = plane(0)[0] as f64;
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for i in 0..n {
                let p = plane(i);
                let (a, b) = with_isa(
                    isa,
                    #[inline(always)]
                    || {
                        lane_sums2(hw, |j| {
                            let d = p[j] as f64 - s;
                            (d, d * d)
                        })
                    },
                );
                s1 += a;
                s2 += b;
            }
            let mean_d = s1 / m;
            ((s + mean_d), ((s2 / m) - mean_d * mean_d).max(0.0))
        })
        .collect()
}

/// As `cpu::batch_stats`.
pub fn batch_stats(
    x: &[f32],
    g: &BatchNorm2dGeometry,
    eps: f32,
    isa: Isa,
) -> ChannelStats<Vec<f32>> {
    let m = g.per_channel();
    let mv = channel_mean_var(x, g, isa);
    ChannelStats {
        mean: mv.iter().map(|&(mu, _)| mu as f32).collect(),
        invstd: mv
            .iter()
            .map(|&(_, v)| (1.0 / (v + eps as f64).sqrt()) as f32)
            .collect(),
        var_unbiased: mv
            .iter()
            .map(|&(_, v)| (v * m as f64 / (m - 1) as f64) as f32)
            .collect(),
    }
}

/// y = (x − mean)·invstd·gamma + beta per channel, then max(y, 0) when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    x: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    g: &BatchNorm2dGeometry,
    relu: bool,
    isa: Isa,
) -> Vec<f32> {
    let (c, hw) = (g.channels(), g.plane());
    let mut y = Vec::<f32>::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(p, (yp, xp))| {
            let ch = p % c;
            let (mu, s, b) = (mean[ch], invstd[ch] * gamma[ch], beta[ch]);
            with_isa(
                isa,
                #[inline(always)]
                || {
                    if relu {
                        for (o, &v) in yp.iter_mut().zip(xp) {
                            o.write(((v - mu) * s + b).max(0.0));
                        }
                    } else {
                        for (o, &v) in yp.iter_mut().zip(xp) {
                            o.write((v - mu) * s + b);
                        }
                    }
                },
            )
        });
    // Safety: every plane of y was written above.
    unsafe { y.set_len(x.len()) };
    y
}

/// dy masked by the saved ReLU output: dy where y > 0, else 0 (branch-free).
#[inline(always)]
fn mask(d: f32, y: f32) -> f32 {
    if y > 0.0 {
        d
    } else {
        0.0
    }
}

/// Per-plane sums (Σ d, Σ d·x̂) with d = dy, or dy masked by the ReLU output.
#[inline(always)]
fn plane_sums(xp: &[f32], dp: &[f32], yp: Option<&[f32]>, mu: f32, is: f32) -> (f64, f64) {
    let hw = xp.len();
    match yp {
        None => lane_sums2(hw, |j| {
            let d = dp[j] as f64;
            (d, d * ((xp[j] - mu) * is) as f64)
        }),
        Some(yp) => {
            let yp = &yp[..hw];
            lane_sums2(hw, |j| {
                let d = mask(dp[j], yp[j]) as f64;
                (d, d * ((xp[j] - mu) * is) as f64)
            })
        }
    }
}

/// As `cpu::backward`, with the upstream gradient masked by `relu_y > 0` when the forward
/// applied a ReLU (`relu_y` its output).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    dy: &[f32],
    relu_y: Option<&[f32]>,
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    g: &BatchNorm2dGeometry,
    mode: BatchNormMode,
    needs: BatchNormNeeds,
    isa: Isa,
) -> BatchNormGrads<Vec<f32>> {
    let (n, c, hw, m) = (g.images(), g.channels(), g.plane(), g.per_channel());
    let sums = needs.sums(mode).then(|| {
        (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
                let (mu, is) = (mean[ch], invstd[ch]);
                for i in 0..n {
                    let off = (i * c + ch) * hw;
                    let (xp, dp) = (&x[off..off + hw], &dy[off..off + hw]);
                    let yp = relu_y.map(|y| &y[off..off + hw]);
                    let (a, b) = with_isa(
                        isa,
                        #[inline(always)]
                        || plane_sums(xp, dp, yp, mu, is),
                    );
                    sdy += a;
                    sdyx += b;
                }
                (sdy, sdyx)
            })
            .collect::<Vec<(f64, f64)>>()
    });
    let dx = needs.dx.then(|| {
        let mut dx = Vec::<f32>::with_capacity(x.len());
        let train = mode == BatchNormMode::Train;
        dx.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(hw)
            .enumerate()
            .for_each(|(p, dxp)| {
                let ch = p % c;
                let off = p * hw;
                let (xp, dp) = (&x[off..off + hw], &dy[off..off + hw]);
                let yp = relu_y.map(|y| &y[off..off + hw]);
                let (mu, is) = (mean[ch], invstd[ch]);
                let k = gamma[ch] * is;
                let (mdy, mdyx) = if train {
                    let s = sums.as_ref().expect("sums")[ch];
                    ((s.0 / m as f64) as f32, (s.1 / m as f64) as f32)
                } else {
                    (0.0, 0.0)
                };
                with_isa(
                    isa,
                    #[inline(always)]
                    || match (train, yp) {
                        (true, None) => {
                            for ((o, &xv), &d) in dxp.iter_mut().zip(xp).zip(dp) {
                                let xhat = (xv - mu) * is;
                                o.write(k * (d - mdy - xhat * mdyx));
                            }
                        }
                        (true, Some(yp)) => {
                            for (((o, &xv), &d), &yv) in dxp.iter_mut().zip(xp).zip(dp).zip(yp) {
                                let xhat = (xv - mu) * is;
                                o.write(k * (mask(d, yv) - mdy - xhat * mdyx));
                            }
                        }
                        (false, None) => {
                            for (o, &d) in dxp.iter_mut().zip(dp) {
                                o.write(d * k);
                            }
                        }
                        (false, Some(yp)) => {
                            for ((o, &d), &yv) in dxp.iter_mut().zip(dp).zip(yp) {
                                o.write(mask(d, yv) * k);
                            }
                        }
                    },
                )
            });
        // Safety: every plane of dx was written above.
        unsafe { dx.set_len(x.len()) };
        dx
    });
    let pick = |f: fn(&(f64, f64)) -> f64| -> Vec<f32> {
        sums.iter().flatten().map(|v| f(v) as f32).collect()
    };
    BatchNormGrads {
        dx,
        dgamma: needs.dgamma.then(|| pick(|v| v.1)),
        dbeta: needs.dbeta.then(|| pick(|v| v.0)),
    }
}
