//! CPU batch norm over NCHW, the reference of the launchers in cuda.rs: per-channel statistics
//! over (N, H, W), accumulated in f64 and in two passes (mean, then squared deviations) so a
//! large common offset costs no precision. Channel reductions run one rayon task per channel;
//! elementwise passes one task per plane.
use rayon::prelude::*;

use super::{BatchNorm2dGeometry, BatchNormGrads, BatchNormMode, BatchNormNeeds, ChannelStats};

/// Per-channel batch statistics of x: mean, 1/√(var + eps) and the unbiased variance
/// M/(M−1)·var, from the f64 moments (M = N·H·W ≥ 2, checked by the caller).
pub fn batch_stats(x: &[f32], g: &BatchNorm2dGeometry, eps: f32) -> ChannelStats<Vec<f32>> {
    let m = g.per_channel();
    let mv = channel_mean_var(x, g);
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

/// invstd = 1/√(var + eps) per channel (the eval path's normaliser), in f64.
pub fn invstd(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (v as f64 + eps as f64).sqrt()) as f32)
        .collect()
}

/// Per channel (mean, biased variance) of `x`.
fn channel_mean_var(x: &[f32], g: &BatchNorm2dGeometry) -> Vec<(f64, f64)> {
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

/// `r = (1 − momentum)·r + momentum·stat` for the running mean and variance, given the batch
/// mean and the already unbiased batch variance.
pub fn running_blend(
    momentum: f32,
    mean: &[f32],
    var_unbiased: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    for (r, s) in [(running_mean, mean), (running_var, var_unbiased)] {
        for (r, &s) in r.iter_mut().zip(s) {
            *r = (1.0 - momentum) * *r + momentum * s;
        }
    }
}

/// Backward from the statistics the forward normalised with: dgamma = Σ dy·x̂, dbeta = Σ dy,
/// and dx in training mode (the statistics depend on x) or eval mode (constants); only what
/// `needs` asks for is computed.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    g: &BatchNorm2dGeometry,
    mode: BatchNormMode,
    needs: BatchNormNeeds,
) -> BatchNormGrads<Vec<f32>> {
    let sums = needs.sums(mode).then(|| grad_sums(x, dy, mean, invstd, g));
    let dx = needs.dx.then(|| match (mode, &sums) {
        (BatchNormMode::Train, Some(sums)) => dx_train(x, dy, mean, invstd, gamma, sums, g),
        _ => dx_eval(dy, invstd, gamma, g),
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

/// Per channel (Σ dy, Σ dy·x̂) with x̂ = (x − mean)·invstd: the gradients of beta and gamma.
fn grad_sums(
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
fn dx_train(
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
fn dx_eval(dy: &[f32], invstd: &[f32], gamma: &[f32], g: &BatchNorm2dGeometry) -> Vec<f32> {
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
