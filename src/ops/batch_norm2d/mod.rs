//! BatchNorm2d, as PyTorch's `nn.BatchNorm2d` (affine, track_running_stats):
//! - training: normalise each channel with its batch mean and *biased* variance over (N, H, W);
//!   the running statistics are updated separately (`update_running_stats`) with the
//!   *unbiased* variance M/(M−1)·var, r ← (1 − m)·r + m·stat;
//! - eval: y = (x − running_mean)/√(running_var + eps)·gamma + beta.
//!
//! Both record a backward (to x, gamma, beta). The backward saves x (shared by `Arc`), gamma and
//! the per-channel mean and 1/√(var + eps), and recomputes x̂ from them.
mod cpu;
pub mod cuda;

use std::sync::Arc;

use crate::autograd::{Backward, Tape, Var};
use crate::device::cuda::KernelParam;
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, same_device, Storage, Tensor};

const OP: &str = "batch_norm2d";

/// One batch norm's sizes: `n` images of `c` channel planes of `hw` = H·W values; each channel's
/// statistics run over its M = N·H·W values. Used by the CPU reference, the launchers and,
/// `#[repr(C)]`, as the kernels' parameter struct (kernels/batch_norm2d.cu), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNorm2dGeometry {
    pub hw: u64,
    pub n: u32,
    pub c: u32,
}
// Safety: a u64 and two u32, as `struct BatchNorm2dGeometry` in the kernel.
unsafe impl KernelParam for BatchNorm2dGeometry {}
const _: () = assert!(std::mem::size_of::<BatchNorm2dGeometry>() == 16);

impl BatchNorm2dGeometry {
    /// Checks the input dims [N, C, H, W]: rank 4, C and H·W non-empty (N may be 0), the size
    /// within usize and N, C within u32.
    pub fn new(dims: &[usize]) -> Result<Self> {
        let &[n, c, h, w] = dims else {
            return Err(Error::shape(
                OP,
                format!("input x must have rank 4 [N, C, H, W], got {dims:?}"),
            ));
        };
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::shape(
                OP,
                format!("input x {dims:?} has an empty dimension"),
            ));
        }
        let too_large = || {
            Error::shape(
                OP,
                format!("input x {dims:?} is too large (N and C must fit u32)"),
            )
        };
        let hw = h.checked_mul(w).ok_or_else(too_large)?;
        hw.checked_mul(c)
            .and_then(|v| v.checked_mul(n))
            .ok_or_else(too_large)?;
        let u = |v: usize| u32::try_from(v).map_err(|_| too_large());
        Ok(BatchNorm2dGeometry {
            hw: hw as u64,
            n: u(n)?,
            c: u(c)?,
        })
    }
    pub fn images(&self) -> usize {
        self.n as usize
    }
    pub fn channels(&self) -> usize {
        self.c as usize
    }
    /// Values per channel plane, H·W.
    pub fn plane(&self) -> usize {
        self.hw as usize
    }
    /// Values of x, N·C·H·W.
    pub fn numel(&self) -> usize {
        self.images() * self.channels() * self.plane()
    }
    /// Values per channel, M = N·H·W.
    pub fn per_channel(&self) -> usize {
        self.images() * self.plane()
    }
}

/// Batch statistics of one training forward, for `update_running_stats`.
#[derive(Clone, Debug)]
pub struct BatchStats {
    /// [C]
    pub mean: Tensor,
    /// [C], M/(M−1) times the biased variance used for normalising (M = N·H·W).
    pub var_unbiased: Tensor,
}

/// The per-channel statistics a forward normalised with: batch or running ones.
#[derive(Clone, Debug)]
pub struct BatchNormSaved {
    /// [C]
    pub mean: Tensor,
    /// [C], 1/√(var + eps)
    pub invstd: Tensor,
}

#[derive(Debug)]
pub struct BatchNormGrads {
    pub dx: Option<Tensor>,
    pub dgamma: Option<Tensor>,
    pub dbeta: Option<Tensor>,
}

/// The geometry of x [N, C, H, W] after checking the per-channel tensors ([C] each) and that
/// all share x's device.
fn geometry(x: &Tensor, per_channel: &[(&str, &Tensor)]) -> Result<BatchNorm2dGeometry> {
    let g = BatchNorm2dGeometry::new(x.dims())?;
    let c = g.channels();
    for (name, t) in per_channel {
        if t.dims() != [c] {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} must have shape [{c}] (one per channel of x {}), got {}",
                    x.shape(),
                    t.shape()
                ),
            ));
        }
    }
    let mut all: Vec<&Tensor> = vec![x];
    all.extend(per_channel.iter().map(|(_, t)| *t));
    same_device(OP, &all)?;
    Ok(g)
}

fn check_eps(eps: f32) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::Invalid(format!(
            "{OP}: eps must be finite and non-negative, got {eps}"
        )));
    }
    Ok(())
}

fn check_dy(x: &Tensor, dy: &Tensor) -> Result<()> {
    if dy.dims() != x.dims() {
        return Err(Error::shape(
            OP,
            format!(
                "output gradient dy is {} but the input x is {}",
                dy.shape(),
                x.shape()
            ),
        ));
    }
    same_device(OP, &[x, dy]).map(|_| ())
}

/// y = (x − mean)·invstd·gamma + beta with the given per-channel statistics.
fn normalize(x: &Tensor, gamma: &Tensor, beta: &Tensor, s: &BatchNormSaved) -> Result<Tensor> {
    let geo = geometry(
        x,
        &[
            ("gamma", gamma),
            ("beta", beta),
            ("mean", &s.mean),
            ("invstd", &s.invstd),
        ],
    )?;
    let y = match (
        x.storage(),
        gamma.storage(),
        beta.storage(),
        s.mean.storage(),
        s.invstd.storage(),
    ) {
        (Storage::Cpu(xs), Storage::Cpu(g), Storage::Cpu(b), Storage::Cpu(m), Storage::Cpu(is)) => {
            Storage::Cpu(cpu::normalize(xs, m, is, g, b, &geo))
        }
        (
            Storage::Cuda(xs),
            Storage::Cuda(g),
            Storage::Cuda(b),
            Storage::Cuda(m),
            Storage::Cuda(is),
        ) => {
            let dev = xs.device();
            let y = cuda::normalize(dev, xs, m, is, g, b, &geo)?;
            Storage::Cuda(y)
        }
        _ => return Err(device_mismatch(OP, &[x, gamma, beta, &s.mean, &s.invstd])),
    };
    Ok(Tensor::from_storage(y, x.dims()))
}

/// Training forward: returns y, the statistics used (for the backward) and the batch
/// statistics (for the running update).
pub fn batch_norm2d_train_forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, BatchNormSaved, BatchStats)> {
    let geo = geometry(x, &[("gamma", gamma), ("beta", beta)])?;
    check_eps(eps)?;
    let (c, m) = (geo.channels(), geo.per_channel());
    if m < 2 {
        // As PyTorch: the variance of one value per channel is meaningless (and M−1 = 0).
        return Err(Error::shape(
            OP,
            format!(
                "training needs more than one value per channel, x is {}",
                x.shape()
            ),
        ));
    }
    let (saved, stats) = match x.storage() {
        Storage::Cpu(xs) => {
            let mv = cpu::channel_mean_var(xs, &geo);
            let mean: Vec<f32> = mv.iter().map(|&(mu, _)| mu as f32).collect();
            let invstd: Vec<f32> = mv
                .iter()
                .map(|&(_, v)| (1.0 / (v + eps as f64).sqrt()) as f32)
                .collect();
            let unbiased: Vec<f32> = mv
                .iter()
                .map(|&(_, v)| (v * m as f64 / (m - 1) as f64) as f32)
                .collect();
            (
                BatchNormSaved {
                    mean: Tensor::from_storage(Storage::Cpu(mean.clone()), &[c]),
                    invstd: Tensor::from_storage(Storage::Cpu(invstd), &[c]),
                },
                BatchStats {
                    mean: Tensor::from_storage(Storage::Cpu(mean), &[c]),
                    var_unbiased: Tensor::from_storage(Storage::Cpu(unbiased), &[c]),
                },
            )
        }
        Storage::Cuda(xs) => {
            let dev = xs.device();
            let st = cuda::batch_stats(dev, xs, &geo, eps)?;
            let unbiased = crate::ops::elementwise::cuda::scale(
                dev,
                &st.var,
                (m as f64 / (m - 1) as f64) as f32,
            )?;
            let mean_copy = dev.dtod(&st.mean)?;
            (
                BatchNormSaved {
                    mean: Tensor::from_storage(st.mean, &[c]),
                    invstd: Tensor::from_storage(st.invstd, &[c]),
                },
                BatchStats {
                    mean: Tensor::from_storage(mean_copy, &[c]),
                    var_unbiased: Tensor::from_storage(unbiased, &[c]),
                },
            )
        }
    };
    let y = normalize(x, gamma, beta, &saved)?;
    Ok((y, saved, stats))
}

/// Training backward (the batch statistics depend on x).
pub fn batch_norm2d_train_backward(
    x: &Tensor,
    gamma: &Tensor,
    saved: &BatchNormSaved,
    dy: &Tensor,
    need_dx: bool,
    need_dgamma: bool,
    need_dbeta: bool,
) -> Result<BatchNormGrads> {
    backward(
        x,
        gamma,
        saved,
        dy,
        true,
        [need_dx, need_dgamma, need_dbeta],
    )
}

impl BatchNormSaved {
    /// The eval-mode statistics: running mean and 1/√(running_var + eps).
    pub fn from_running(running_mean: &Tensor, running_var: &Tensor, eps: f32) -> Result<Self> {
        check_eps(eps)?;
        if running_mean.dims().len() != 1 || running_var.dims() != running_mean.dims() {
            return Err(Error::shape(
                OP,
                format!(
                    "running_mean {} and running_var {} must both be [C]",
                    running_mean.shape(),
                    running_var.shape()
                ),
            ));
        }
        same_device(OP, &[running_mean, running_var])?;
        let invstd = match running_var.storage() {
            Storage::Cpu(v) => Storage::Cpu(
                v.iter()
                    .map(|&v| (1.0 / (v as f64 + eps as f64).sqrt()) as f32)
                    .collect(),
            ),
            Storage::Cuda(v) => Storage::Cuda(cuda::invstd_of(v.device(), v, v.len(), eps)?),
        };
        Ok(BatchNormSaved {
            mean: running_mean.try_clone()?,
            invstd: Tensor::from_storage(invstd, running_var.dims()),
        })
    }
}

/// Eval forward with the running statistics.
pub fn batch_norm2d_eval_forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    normalize(
        x,
        gamma,
        beta,
        &BatchNormSaved::from_running(running_mean, running_var, eps)?,
    )
}

/// Eval backward (fixed statistics, from `BatchNormSaved::from_running`).
pub fn batch_norm2d_eval_backward(
    x: &Tensor,
    gamma: &Tensor,
    saved: &BatchNormSaved,
    dy: &Tensor,
    need_dx: bool,
    need_dgamma: bool,
    need_dbeta: bool,
) -> Result<BatchNormGrads> {
    backward(
        x,
        gamma,
        saved,
        dy,
        false,
        [need_dx, need_dgamma, need_dbeta],
    )
}

fn backward(
    x: &Tensor,
    gamma: &Tensor,
    s: &BatchNormSaved,
    dy: &Tensor,
    training: bool,
    [need_dx, need_dgamma, need_dbeta]: [bool; 3],
) -> Result<BatchNormGrads> {
    let geo = geometry(
        x,
        &[("gamma", gamma), ("mean", &s.mean), ("invstd", &s.invstd)],
    )?;
    let c = geo.channels();
    check_dy(x, dy)?;
    let (dx, dgamma, dbeta) = match (
        x.storage(),
        gamma.storage(),
        s.mean.storage(),
        s.invstd.storage(),
        dy.storage(),
    ) {
        (
            Storage::Cpu(xs),
            Storage::Cpu(g),
            Storage::Cpu(m),
            Storage::Cpu(is),
            Storage::Cpu(dys),
        ) => {
            // The sums give dgamma and dbeta, and the training dx needs them too.
            let sums = (need_dgamma || need_dbeta || (training && need_dx))
                .then(|| cpu::grad_sums(xs, dys, m, is, &geo));
            let dx = need_dx.then(|| match &sums {
                Some(sums) if training => cpu::dx_train(xs, dys, m, is, g, sums, &geo),
                _ => cpu::dx_eval(dys, is, g, &geo),
            });
            let pick = |f: fn(&(f64, f64)) -> f64| -> Vec<f32> {
                sums.as_ref()
                    .map(|s| s.iter().map(|v| f(v) as f32).collect())
                    .unwrap_or_default()
            };
            (
                dx.map(Storage::Cpu),
                need_dgamma.then(|| Storage::Cpu(pick(|v| v.1))),
                need_dbeta.then(|| Storage::Cpu(pick(|v| v.0))),
            )
        }
        (
            Storage::Cuda(xs),
            Storage::Cuda(g),
            Storage::Cuda(m),
            Storage::Cuda(is),
            Storage::Cuda(dys),
        ) => {
            let dev = xs.device();
            // One reduction gives dgamma and dbeta, which the training dx needs anyway; the
            // unrequested outputs are dropped.
            let gr = cuda::backward_with_stats(dev, xs, dys, g, m, is, &geo, training)?;
            let st = Storage::Cuda;
            (
                need_dx.then(|| st(gr.dx)),
                need_dgamma.then(|| st(gr.dgamma)),
                need_dbeta.then(|| st(gr.dbeta)),
            )
        }
        _ => return Err(device_mismatch(OP, &[x, gamma, &s.mean, &s.invstd, dy])),
    };
    Ok(BatchNormGrads {
        dx: dx.map(|s| Tensor::from_storage(s, x.dims())),
        dgamma: dgamma.map(|s| Tensor::from_storage(s, &[c])),
        dbeta: dbeta.map(|s| Tensor::from_storage(s, &[c])),
    })
}

/// r ← (1 − momentum)·r + momentum·stat for the mean and the unbiased variance (PyTorch).
pub fn update_running_stats(
    running_mean: &mut Tensor,
    running_var: &mut Tensor,
    stats: &BatchStats,
    momentum: f32,
) -> Result<()> {
    if !momentum.is_finite() {
        return Err(Error::Invalid(format!(
            "{OP}: momentum must be finite, got {momentum}"
        )));
    }
    for (name, r, s) in [
        ("running_mean", &*running_mean, &stats.mean),
        ("running_var", &*running_var, &stats.var_unbiased),
    ] {
        if r.dims().len() != 1 || r.dims() != s.dims() {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} {} does not match the batch statistic {}",
                    r.shape(),
                    s.shape()
                ),
            ));
        }
        same_device(OP, &[r, s])?;
    }
    let blend = |r: &mut [f32], s: &[f32]| {
        for (r, &s) in r.iter_mut().zip(s) {
            *r = (1.0 - momentum) * *r + momentum * s;
        }
    };
    same_device(OP, &[running_mean, running_var])?;
    if let (Storage::Cuda(_), Storage::Cuda(_)) = (running_mean.storage(), running_var.storage()) {
        let (Storage::Cuda(m), Storage::Cuda(v)) =
            (stats.mean.storage(), stats.var_unbiased.storage())
        else {
            return Err(device_mismatch(OP, &[running_mean, &stats.mean]));
        };
        let (Storage::Cuda(rm), Storage::Cuda(rv)) =
            (running_mean.storage_mut(), running_var.storage_mut())
        else {
            unreachable!("checked above")
        };
        let dev = rm.device().clone();
        return cuda::running_blend(&dev, momentum, m, v, rm, rv);
    }
    match (running_mean.storage_mut(), stats.mean.storage()) {
        (Storage::Cpu(r), Storage::Cpu(s)) => blend(r, s),
        _ => unreachable!("devices checked above"),
    }
    match (running_var.storage_mut(), stats.var_unbiased.storage()) {
        (Storage::Cpu(r), Storage::Cpu(s)) => blend(r, s),
        _ => unreachable!("devices checked above"),
    }
    Ok(())
}

struct BatchNormBackward {
    x: Arc<Tensor>,
    gamma: Arc<Tensor>,
    saved: BatchNormSaved,
    training: bool,
}

impl Backward for BatchNormBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = backward(
            &self.x,
            &self.gamma,
            &self.saved,
            dy,
            self.training,
            [needs[0], needs[1], needs[2]],
        )?;
        Ok(vec![g.dx, g.dgamma, g.dbeta])
    }
    fn name(&self) -> &'static str {
        if self.training {
            "batch_norm2d_train"
        } else {
            "batch_norm2d_eval"
        }
    }
}

/// Training-mode batch norm; the caller applies `update_running_stats` with the returned stats.
pub fn batch_norm2d_train(
    tape: &Tape,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    eps: f32,
) -> Result<(Var, BatchStats)> {
    let (y, saved, stats) = tape.timed("batch_norm2d_train", || {
        batch_norm2d_train_forward(x.value(), gamma.value(), beta.value(), eps)
    })?;
    let bw = BatchNormBackward {
        x: x.value_arc(),
        gamma: gamma.value_arc(),
        saved,
        training: true,
    };
    Ok((tape.record(y, &[x, gamma, beta], bw), stats))
}

/// Eval-mode batch norm with the running statistics (differentiable in x, gamma and beta).
pub fn batch_norm2d_eval(
    tape: &Tape,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Var> {
    let saved = BatchNormSaved::from_running(running_mean, running_var, eps)?;
    let y = tape.timed("batch_norm2d_eval", || {
        normalize(x.value(), gamma.value(), beta.value(), &saved)
    })?;
    let bw = BatchNormBackward {
        x: x.value_arc(),
        gamma: gamma.value_arc(),
        saved,
        training: false,
    };
    Ok(tape.record(y, &[x, gamma, beta], bw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients_with, random_input, GradcheckOptions};
    use crate::rng::Rng;

    /// Per channel (mean, biased variance) computed directly in f64.
    fn moments(t: &Tensor) -> Vec<(f64, f64)> {
        let d = t.dims();
        let (n, c, hw) = (d[0], d[1], d[2] * d[3]);
        let v = t.to_vec();
        (0..c)
            .map(|ch| {
                let xs: Vec<f64> = (0..n)
                    .flat_map(|i| v[(i * c + ch) * hw..][..hw].iter().map(|&x| x as f64))
                    .collect();
                let mean = xs.iter().sum::<f64>() / xs.len() as f64;
                let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
                (mean, var)
            })
            .collect()
    }

    fn shifted(dims: &[usize], offset: f32, scale: f32, seed: u64) -> Tensor {
        let v = random_input(dims, seed)
            .to_vec()
            .iter()
            .map(|&x| offset + scale * x)
            .collect();
        Tensor::from_vec(v, dims).unwrap()
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
    }

    #[test]
    fn normalized_output_has_zero_mean_unit_variance() {
        // The offset of 1000 with a spread of 0.1 would defeat a one-pass E[x²] − E[x]² in f32.
        for (offset, scale) in [(5.0, 3.0), (1000.0, 0.1)] {
            let x = shifted(&[4, 3, 6, 5], offset, scale, 9);
            let (y, _, _) =
                batch_norm2d_train_forward(&x, &t(&[1.0; 3]), &t(&[0.0; 3]), 1e-5).unwrap();
            // x − mean is exact only up to the f32 spacing at `offset`, relative to the spread.
            let mean_tol = 1e-5 + 2.0 * (f32::EPSILON * offset / scale) as f64;
            for (mean, var) in moments(&y) {
                assert!(mean.abs() < mean_tol, "mean {mean} (offset {offset})");
                assert!((var - 1.0).abs() < 2e-3, "var {var} (offset {offset})");
            }
            // gamma scales the spread, beta moves the mean.
            let (y, _, _) =
                batch_norm2d_train_forward(&x, &t(&[2.0, 1.0, 0.5]), &t(&[1.0, -1.0, 0.0]), 1e-5)
                    .unwrap();
            let m = moments(&y);
            for (ch, (mean, var)) in [(1.0, 4.0), (-1.0, 1.0), (0.0, 0.25)].iter().enumerate() {
                assert!((m[ch].0 - mean).abs() < 2.0 * mean_tol, "{:?}", m[ch]);
                assert!((m[ch].1 - var).abs() < 2e-3 * var, "{:?}", m[ch]);
            }
        }
    }

    #[test]
    fn running_stats_after_one_update() {
        // x [2, 2, 1, 2]: channel 0 holds 1, 2 (image 0) and 3, 6 (image 1): mean 3, biased
        // variance (4 + 1 + 0 + 9)/4 = 3.5, unbiased 14/3. Channel 1 holds 0, 0, 0, 4: mean 1,
        // biased variance (1 + 1 + 1 + 9)/4 = 3, unbiased 4.
        let x = Tensor::from_vec(vec![1., 2., 0., 0., 3., 6., 0., 4.], &[2, 2, 1, 2]).unwrap();
        let (y, saved, stats) =
            batch_norm2d_train_forward(&x, &t(&[1., 1.]), &t(&[0., 0.]), 0.0).unwrap();
        assert_eq!(stats.mean.to_vec(), vec![3.0, 1.0]);
        let vu = stats.var_unbiased.to_vec();
        assert!(
            (vu[0] - 14.0 / 3.0).abs() < 1e-6 && (vu[1] - 4.0).abs() < 1e-6,
            "{vu:?}"
        );
        let is = saved.invstd.to_vec();
        assert!((is[0] - 1.0 / 3.5f32.sqrt()).abs() < 1e-6, "{is:?}");
        // Normalising uses the biased variance: the first element is (1 − 3)/√3.5.
        assert!((y.to_vec()[0] + 2.0 / 3.5f32.sqrt()).abs() < 1e-6);

        let mut rm = t(&[0.5, 0.0]);
        let mut rv = t(&[2.0, 1.0]);
        update_running_stats(&mut rm, &mut rv, &stats, 0.1).unwrap();
        let (rm, rv) = (rm.to_vec(), rv.to_vec());
        let want_m = [0.9 * 0.5 + 0.1 * 3.0, 0.9 * 0.0 + 0.1 * 1.0];
        let want_v = [0.9 * 2.0 + 0.1 * 14.0 / 3.0, 0.9 * 1.0 + 0.1 * 4.0];
        for ch in 0..2 {
            assert!((rm[ch] - want_m[ch]).abs() < 1e-6, "{rm:?}");
            assert!((rv[ch] - want_v[ch]).abs() < 1e-6, "{rv:?}");
        }
    }

    #[test]
    fn eval_forward_uses_running_stats() {
        let x = random_input(&[2, 2, 3, 3], 4);
        let (g, b) = (t(&[1.5, -0.5]), t(&[0.25, 2.0]));
        let (rm, rv) = (t(&[0.3, -1.0]), t(&[4.0, 0.5]));
        let y = batch_norm2d_eval_forward(&x, &g, &b, &rm, &rv, 1e-5).unwrap();
        let (xs, ys) = (x.to_vec(), y.to_vec());
        for (i, (&xv, &yv)) in xs.iter().zip(&ys).enumerate() {
            let ch = (i / 9) % 2;
            let (m, v) = (rm.to_vec()[ch], rv.to_vec()[ch]);
            let want = (xv - m) / (v + 1e-5).sqrt() * g.to_vec()[ch] + b.to_vec()[ch];
            assert!((yv - want).abs() < 1e-5, "{i}: {yv} vs {want}");
        }
    }

    /// Tight enough that dropping the mean/variance terms of the training gradient fails (see
    /// `gradcheck_rejects_eval_gradient_in_training`).
    fn bn_opts() -> GradcheckOptions {
        GradcheckOptions {
            eps: 1e-3,
            rtol: 1e-2,
            atol: 1e-3,
            max_probes: 64,
        }
    }

    #[test]
    fn gradcheck_batch_norm2d() {
        let mut rng = Rng::new(3);
        let x = shifted(&[2, 3, 4, 5], 2.0, 1.5, 21);
        let gamma = Tensor::uniform(&[3], 0.5, 1.5, &mut rng);
        let beta = random_input(&[3], 22);
        check_gradients_with(
            "batch_norm2d train",
            &bn_opts(),
            vec![x.clone(), gamma.clone(), beta.clone()],
            |t, v| batch_norm2d_train(t, &v[0], &v[1], &v[2], 1e-5).map(|(y, _)| y),
        )
        .unwrap();
        let rm = t(&[1.5, 2.5, 2.0]);
        let rv = t(&[2.0, 1.0, 3.0]);
        check_gradients_with(
            "batch_norm2d eval",
            &bn_opts(),
            vec![x, gamma, beta],
            |t, v| batch_norm2d_eval(t, &v[0], &v[1], &v[2], &rm, &rv, 1e-5),
        )
        .unwrap();
    }

    /// The checker with `bn_opts` can fail: the eval-mode dx (which ignores that the batch
    /// statistics depend on x) applied to the training forward is rejected.
    #[test]
    fn gradcheck_rejects_eval_gradient_in_training() {
        struct WrongTrain(Arc<Tensor>, Arc<Tensor>, BatchNormSaved);
        impl Backward for WrongTrain {
            fn backward(&self, dy: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
                let g =
                    batch_norm2d_eval_backward(&self.0, &self.1, &self.2, dy, true, true, true)?;
                Ok(vec![g.dx, g.dgamma, g.dbeta])
            }
            fn name(&self) -> &'static str {
                "wrong"
            }
        }
        let x = shifted(&[2, 3, 4, 5], 2.0, 1.5, 21);
        let gamma = t(&[1.0, 0.8, 1.2]);
        let beta = t(&[0.0, 0.1, -0.1]);
        let r = check_gradients_with("wrong", &bn_opts(), vec![x, gamma, beta], |tape, v| {
            let (y, saved, _) =
                batch_norm2d_train_forward(v[0].value(), v[1].value(), v[2].value(), 1e-5)?;
            let bw = WrongTrain(v[0].value_arc(), v[1].value_arc(), saved);
            Ok(tape.record(y, &[&v[0], &v[1], &v[2]], bw))
        });
        let e = r.unwrap_err().to_string();
        assert!(e.contains("input 0"), "{e}");
    }

    #[test]
    fn backward_honours_needs() {
        let x = random_input(&[2, 2, 3, 3], 1);
        let (_, saved, _) =
            batch_norm2d_train_forward(&x, &t(&[1., 1.]), &t(&[0., 0.]), 1e-5).unwrap();
        let dy = random_input(&[2, 2, 3, 3], 2);
        let g = batch_norm2d_train_backward(&x, &t(&[1., 1.]), &saved, &dy, true, false, false)
            .unwrap();
        assert!(g.dx.is_some() && g.dgamma.is_none() && g.dbeta.is_none());
        let g =
            batch_norm2d_train_backward(&x, &t(&[1., 1.]), &saved, &dy, false, true, true).unwrap();
        assert!(g.dx.is_none() && g.dgamma.is_some() && g.dbeta.is_some());
        // dbeta is Σ dy per channel.
        let d = dy.to_vec();
        let want: f32 = (0..2).flat_map(|n| d[(n * 2) * 9..][..9].to_vec()).sum();
        assert!((g.dbeta.unwrap().to_vec()[0] - want).abs() < 1e-5);
    }

    #[test]
    fn shape_errors_name_batch_norm2d() {
        let x = random_input(&[2, 3, 4, 4], 1);
        let (g3, g2) = (t(&[1.; 3]), t(&[1.; 2]));
        let e = batch_norm2d_train_forward(&x, &g2, &g3, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_norm2d") && e.contains("gamma"), "{e}");
        let e = batch_norm2d_train_forward(&random_input(&[3, 4, 4], 1), &g3, &g3, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_norm2d") && e.contains("rank 4"), "{e}");
        let e = batch_norm2d_train_forward(&random_input(&[1, 3, 1, 1], 1), &g3, &g3, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batch_norm2d") && e.contains("more than one"),
            "{e}"
        );
        let e = batch_norm2d_eval_forward(&x, &g3, &g3, &g3, &g2, 1e-5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batch_norm2d") && e.contains("running_var"),
            "{e}"
        );
        let (_, _, stats) = batch_norm2d_train_forward(&x, &g3, &g3, 1e-5).unwrap();
        let (mut rm, mut rv) = (t(&[0.; 2]), t(&[1.; 3]));
        let e = update_running_stats(&mut rm, &mut rv, &stats, 0.1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("batch_norm2d") && e.contains("running_mean"),
            "{e}"
        );
    }
}
