//! CPU batch norm over NCHW: per-channel statistics over (N, H, W), accumulated in f64 and in
//! two passes (mean, then squared deviations) so a large common offset costs no precision.
//! Channel reductions run one rayon task per channel; elementwise passes one task per plane.
use rayon::prelude::*;

use super::BatchNorm2dGeometry;

/// Per channel (mean, biased variance) of `x`.
pub fn channel_mean_var(x: &[f32], g: &BatchNorm2dGeometry) -> Vec<(f64, f64)> {
    let (n, c, hw) = (g.images(), g.channels(), g.plane());
    let m = g.per_channel() as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |i: usize| &x[(i * c + ch) * hw..][..hw];
            let sum: f64 = (0..n)
                .map(|i| plane(i).iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mean = sum / m;
            let sq: f64 = (0..n)
                .map(|i| {
                    plane(i)
                        .iter()
                        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                        .sum::<f64>()
                })
                .sum();
            (mean, sq / m)
        })
        .collect()
}

/// y = (x − mean)·invstd·gamma + beta, per channel.
pub fn normalize(
    x: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    g: &BatchNorm2dGeometry,
) -> Vec<f32> {
    let (c, hw) = (g.channels(), g.plane());
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(p, (yp, xp))| {
            let ch = p % c;
            let (mu, s, b) = (mean[ch], invstd[ch] * gamma[ch], beta[ch]);
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = (v - mu) * s + b;
            }
        });
    y
}

/// Per channel (Σ dy, Σ dy·x̂) with x̂ = (x − mean)·invstd: the gradients of beta and gamma.
pub fn grad_sums(
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    g: &BatchNorm2dGeometry,
) -> Vec<(f64, f64)> {
    let (n, c, hw) = (g.images(), g.channels(), g.plane());
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
            for i in 0..n {
                let off = (i * c + ch) * hw;
                for (&xv, &d) in x[off..off + hw].iter().zip(&dy[off..off + hw]) {
                    let xhat = ((xv - mean[ch]) * invstd[ch]) as f64;
                    sdy += d as f64;
                    sdyx += d as f64 * xhat;
                }
            }
            (sdy, sdyx)
        })
        .collect()
}

/// Training-mode dx, where mean and invstd depend on x:
/// dx = gamma·invstd·(dy − Σdy/M − x̂·Σ(dy·x̂)/M), M = N·H·W.
#[allow(clippy::too_many_arguments)]
pub fn dx_train(
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    sums: &[(f64, f64)],
    g: &BatchNorm2dGeometry,
) -> Vec<f32> {
    let (c, hw, m) = (g.channels(), g.plane(), g.per_channel());
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(hw)
        .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
        .enumerate()
        .for_each(|(p, (dxp, (xp, dyp)))| {
            let ch = p % c;
            let (mu, is) = (mean[ch], invstd[ch]);
            let k = gamma[ch] * is;
            let mdy = (sums[ch].0 / m as f64) as f32;
            let mdyx = (sums[ch].1 / m as f64) as f32;
            for ((o, &xv), &d) in dxp.iter_mut().zip(xp).zip(dyp) {
                let xhat = (xv - mu) * is;
                *o = k * (d - mdy - xhat * mdyx);
            }
        });
    dx
}

/// Eval-mode dx (fixed statistics): dx = dy·gamma·invstd.
pub fn dx_eval(dy: &[f32], invstd: &[f32], gamma: &[f32], g: &BatchNorm2dGeometry) -> Vec<f32> {
    let (c, hw) = (g.channels(), g.plane());
    let mut dx = vec![0.0f32; dy.len()];
    dx.par_chunks_mut(hw)
        .zip(dy.par_chunks(hw))
        .enumerate()
        .for_each(|(p, (dxp, dyp))| {
            let k = gamma[p % c] * invstd[p % c];
            for (o, &d) in dxp.iter_mut().zip(dyp) {
                *o = d * k;
            }
        });
    dx
}
