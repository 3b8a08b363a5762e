//! BatchNorm2d, as PyTorch's `nn.BatchNorm2d` (affine, track_running_stats):
//! - training: normalise each channel with its batch mean and *biased* variance over (N, H, W);
//!   the running statistics are updated separately (`update_running_stats`) with the
//!   *unbiased* variance M/(M−1)·var, r ← (1 − m)·r + m·stat;
//! - eval: y = (x − running_mean)/√(running_var + eps)·gamma + beta.
//!
//! Both record a backward (to x, gamma, beta). The backward saves x (shared by `Arc`), gamma and
//! the per-channel mean and 1/√(var + eps), and recomputes x̂ from them.
//!
//! This file checks shapes (into a [`BatchNorm2dGeometry`]), dispatches on the device and records
//! on the tape; cpu.rs (the reference) and cuda.rs (the launchers of kernels/batch_norm2d.cu)
//! offer the same functions: batch_stats, invstd, normalize, running_blend and backward. On a
//! CPU with AVX2 or AVX-512, cpu_fast.rs (parallel, vectorised, checked against cpu.rs) runs
//! instead of the reference.
//!
//! `batch_norm2d_train_relu` / `batch_norm2d_eval_relu` are batch norm followed by ReLU as one
//! taped op (what every BatchNorm of both networks feeds): it saves the ReLU's output instead
//! of a second tensor, and the CPU fast path applies the ReLU inside the normalising pass and
//! its mask inside the backward's passes. Elsewhere (CUDA, the reference) it composes the two
//! ops' own kernels.
mod cpu;
mod cpu_fast;
pub mod cuda;

use std::sync::Arc;

use crate::autograd::{Backward, Tape, Var};
use crate::device::cpu::simd::{self, Isa};
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

/// The gradients a backward was asked for (the others are `None`): as tensors, or as a
/// backend's buffers (`Vec<f32>`, `GpuBuffer<f32>`) before they are shaped.
#[derive(Debug)]
pub struct BatchNormGrads<T = Tensor> {
    pub dx: Option<T>,
    pub dgamma: Option<T>,
    pub dbeta: Option<T>,
}

impl<B: Into<Storage>> BatchNormGrads<B> {
    /// dx shaped as x, dgamma and dbeta as [C].
    fn into_tensors(self, x_dims: &[usize]) -> BatchNormGrads {
        let c = [x_dims[1]];
        BatchNormGrads {
            dx: self.dx.map(|b| Tensor::from_storage(b, x_dims)),
            dgamma: self.dgamma.map(|b| Tensor::from_storage(b, &c)),
            dbeta: self.dbeta.map(|b| Tensor::from_storage(b, &c)),
        }
    }
}

/// A backend's per-channel batch statistics ([C] each) of one training forward.
pub struct ChannelStats<B> {
    pub mean: B,
    /// 1/√(var + eps) with the biased variance.
    pub invstd: B,
    /// M/(M−1) times the biased variance.
    pub var_unbiased: B,
}

impl<B: Into<Storage>> ChannelStats<B> {
    /// What the backward needs (mean, invstd) and what the running update needs (mean, var).
    fn into_saved(self, c: usize) -> Result<(BatchNormSaved, BatchStats)> {
        let t = |b: B| Tensor::from_storage(b, &[c]);
        let mean = t(self.mean);
        let saved = BatchNormSaved {
            mean: mean.try_clone()?,
            invstd: t(self.invstd),
        };
        let var_unbiased = t(self.var_unbiased);
        Ok((saved, BatchStats { mean, var_unbiased }))
    }
}

/// Which statistics a forward normalised with, and so which backward applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchNormMode {
    /// The batch's own statistics, which depend on x.
    Train,
    /// Fixed statistics (the running ones).
    Eval,
}

impl BatchNormMode {
    /// The op's name on the tape.
    pub fn op_name(self) -> &'static str {
        match self {
            BatchNormMode::Train => "batch_norm2d_train",
            BatchNormMode::Eval => "batch_norm2d_eval",
        }
    }
}

/// The gradients a backward is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNormNeeds {
    pub dx: bool,
    pub dgamma: bool,
    pub dbeta: bool,
}

impl BatchNormNeeds {
    /// All three gradients (what a layer in training asks for).
    pub const ALL: BatchNormNeeds = BatchNormNeeds {
        dx: true,
        dgamma: true,
        dbeta: true,
    };
    /// The gradients whose flags are set, in the order dx, dgamma, dbeta.
    pub fn of([dx, dgamma, dbeta]: [bool; 3]) -> Self {
        BatchNormNeeds { dx, dgamma, dbeta }
    }

    /// The per-channel sums Σdy (dbeta) and Σdy·x̂ (dgamma) are needed: for themselves, and by
    /// the training dx.
    pub fn sums(self, mode: BatchNormMode) -> bool {
        self.dgamma || self.dbeta || (mode == BatchNormMode::Train && self.dx)
    }
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
/// The CPU fast path's instruction set, or `None` for the reference loops.
fn fast() -> Option<Isa> {
    Some(simd::isa()).filter(|&i| i != Isa::Scalar)
}

fn normalize(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    s: &BatchNormSaved,
    relu: bool,
) -> Result<Tensor> {
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
            if let Some(isa) = fast() {
                let y = cpu_fast::normalize(xs, m, is, g, b, &geo, relu, isa);
                return Ok(Tensor::from_storage(y, x.dims()));
            }
            Storage::Cpu(cpu::normalize(xs, m, is, g, b, &geo))
        }
        (
            Storage::Cuda(xs),
            Storage::Cuda(g),
            Storage::Cuda(b),
            Storage::Cuda(m),
            Storage::Cuda(is),
        ) => Storage::Cuda(cuda::normalize(xs.device(), xs, m, is, g, b, &geo)?),
        _ => return Err(device_mismatch(OP, &[x, gamma, beta, &s.mean, &s.invstd])),
    };
    let y = Tensor::from_storage(y, x.dims());
    if relu {
        crate::ops::relu::relu_forward(&y)
    } else {
        Ok(y)
    }
}

/// Training forward: returns y, the statistics used (for the backward) and the batch
/// statistics (for the running update).
pub fn batch_norm2d_train_forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, BatchNormSaved, BatchStats)> {
    train_forward(x, gamma, beta, eps, false)
}

fn train_forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<(Tensor, BatchNormSaved, BatchStats)> {
    let geo = geometry(x, &[("gamma", gamma), ("beta", beta)])?;
    check_eps(eps)?;
    if geo.per_channel() < 2 {
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
        Storage::Cpu(xs) => match fast() {
            Some(isa) => cpu_fast::batch_stats(xs, &geo, eps, isa),
            None => cpu::batch_stats(xs, &geo, eps),
        }
        .into_saved(geo.channels())?,
        Storage::Cuda(xs) => {
            cuda::batch_stats(xs.device(), xs, &geo, eps)?.into_saved(geo.channels())?
        }
    };
    let y = normalize(x, gamma, beta, &saved, relu)?;
    Ok((y, saved, stats))
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
            Storage::Cpu(v) => Storage::Cpu(cpu::invstd(v, eps)),
            Storage::Cuda(v) => Storage::Cuda(cuda::invstd(v.device(), v, eps)?),
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
        false,
    )
}

/// The backward of either forward, from the statistics it normalised with (`saved`): in `Train`
/// mode they are the batch's own and depend on x, in `Eval` mode they are constants.
pub fn batch_norm2d_backward(
    x: &Tensor,
    gamma: &Tensor,
    saved: &BatchNormSaved,
    dy: &Tensor,
    mode: BatchNormMode,
    needs: BatchNormNeeds,
) -> Result<BatchNormGrads> {
    backward_masked(x, gamma, saved, dy, None, mode, needs)
}

/// The backward of batch norm followed by ReLU, from that ReLU's output `relu_y`.
pub fn batch_norm2d_relu_backward(
    x: &Tensor,
    gamma: &Tensor,
    saved: &BatchNormSaved,
    relu_y: &Tensor,
    dy: &Tensor,
    mode: BatchNormMode,
    needs: BatchNormNeeds,
) -> Result<BatchNormGrads> {
    backward_masked(x, gamma, saved, dy, Some(relu_y), mode, needs)
}

/// The forward of batch norm followed by ReLU in training mode.
pub fn batch_norm2d_relu_train_forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, BatchNormSaved, BatchStats)> {
    train_forward(x, gamma, beta, eps, true)
}

/// The backward of batch norm, or of batch norm + ReLU when `relu_y` (the ReLU's output) is
/// given: dy is masked by relu_y > 0 first (inside the CPU fast path's passes; elsewhere by the
/// ReLU op's own backward).
fn backward_masked(
    x: &Tensor,
    gamma: &Tensor,
    saved: &BatchNormSaved,
    dy: &Tensor,
    relu_y: Option<&Tensor>,
    mode: BatchNormMode,
    needs: BatchNormNeeds,
) -> Result<BatchNormGrads> {
    let s = saved;
    let masked;
    let (dy, relu_y) = match relu_y {
        Some(y) if !(fast().is_some() && matches!(y.storage(), Storage::Cpu(_))) => {
            masked = crate::ops::relu::relu_backward(y, dy)?;
            (&masked, None)
        }
        other => (dy, other),
    };
    let geo = geometry(
        x,
        &[("gamma", gamma), ("mean", &s.mean), ("invstd", &s.invstd)],
    )?;
    check_dy(x, dy)?;
    let grads = match (
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
        ) => match fast() {
            Some(isa) => {
                let ry = match relu_y.map(Tensor::storage) {
                    None => None,
                    Some(Storage::Cpu(v)) => Some(&v[..]),
                    Some(_) => return Err(device_mismatch(OP, &[x, dy])),
                };
                if ry.is_some_and(|v| v.len() != xs.len()) {
                    return Err(Error::shape(OP, "the saved ReLU output must match x"));
                }
                cpu_fast::backward(xs, dys, ry, g, m, is, &geo, mode, needs, isa)
            }
            None => cpu::backward(xs, dys, g, m, is, &geo, mode, needs),
        }
        .into_tensors(x.dims()),
        (
            Storage::Cuda(xs),
            Storage::Cuda(g),
            Storage::Cuda(m),
            Storage::Cuda(is),
            Storage::Cuda(dys),
        ) => cuda::backward(xs.device(), xs, dys, g, m, is, &geo, mode, needs)?
            .into_tensors(x.dims()),
        _ => return Err(device_mismatch(OP, &[x, gamma, &s.mean, &s.invstd, dy])),
    };
    Ok(grads)
}

/// Declares the entry point of [`batch_norm2d_backward`] for one mode, with the needs as flags
/// (x, gamma, beta): the two modes' entry points are one piece of code.
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
    same_device(OP, &[running_mean, running_var])?;
    match (
        running_mean.storage_mut(),
        running_var.storage_mut(),
        stats.mean.storage(),
        stats.var_unbiased.storage(),
    ) {
        (Storage::Cpu(rm), Storage::Cpu(rv), Storage::Cpu(m), Storage::Cpu(v)) => {
            cpu::running_blend(momentum, m, v, rm, rv);
            Ok(())
        }
        (Storage::Cuda(rm), Storage::Cuda(rv), Storage::Cuda(m), Storage::Cuda(v)) => {
            cuda::running_blend(m.device(), momentum, m, v, rm, rv)
        }
        _ => Err(device_mismatch(OP, &[running_mean, &stats.mean])),
    }
}

struct BatchNormBackward {
    x: Arc<Tensor>,
    gamma: Arc<Tensor>,
    saved: BatchNormSaved,
    mode: BatchNormMode,
    /// The output of a fused ReLU (batch_norm2d_*_relu), whose mask the gradient takes first.
    relu_y: Option<Arc<Tensor>>,
}

impl Backward for BatchNormBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let needs = BatchNormNeeds {
            dx: needs[0],
            dgamma: needs[1],
            dbeta: needs[2],
        };
        let relu_y = self.relu_y.as_deref();
        let g = backward_masked(
            &self.x,
            &self.gamma,
            &self.saved,
            dy,
            relu_y,
            self.mode,
            needs,
        )?;
        Ok(vec![g.dx, g.dgamma, g.dbeta])
    }
    fn name(&self) -> &'static str {
        op_name(self.mode, self.relu_y.is_some())
    }
}

fn op_name(mode: BatchNormMode, relu: bool) -> &'static str {
    match (mode, relu) {
        (m, false) => m.op_name(),
        (BatchNormMode::Train, true) => "batch_norm2d_relu_train",
        (BatchNormMode::Eval, true) => "batch_norm2d_relu_eval",
    }
}

/// Records y of a forward in `mode` that normalised with `saved`.
fn record(
    tape: &Tape,
    [x, gamma, beta]: [&Var; 3],
    y: Tensor,
    saved: BatchNormSaved,
    mode: BatchNormMode,
    relu: bool,
) -> Var {
    let y = Arc::new(y);
    let bw = BatchNormBackward {
        x: x.value_arc(),
        gamma: gamma.value_arc(),
        saved,
        mode,
        relu_y: relu.then(|| y.clone()),
    };
    tape.record(y, &[x, gamma, beta], bw)
}

/// Training-mode batch norm; the caller applies `update_running_stats` with the returned stats.
pub fn batch_norm2d_train(
    tape: &Tape,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    eps: f32,
) -> Result<(Var, BatchStats)> {
    train_op(tape, x, gamma, beta, eps, false)
}

/// [`batch_norm2d_train`] followed by ReLU, as one op (see the module notes).
pub fn batch_norm2d_train_relu(
    tape: &Tape,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    eps: f32,
) -> Result<(Var, BatchStats)> {
    train_op(tape, x, gamma, beta, eps, true)
}

fn train_op(
    tape: &Tape,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    eps: f32,
    relu: bool,
) -> Result<(Var, BatchStats)> {
    let mode = BatchNormMode::Train;
    let (y, saved, stats) = tape.timed(op_name(mode, relu), || {
        train_forward(x.value(), gamma.value(), beta.value(), eps, relu)
    })?;
    Ok((record(tape, [x, gamma, beta], y, saved, mode, relu), stats))
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
    eval_op(
        tape,
        [x, gamma, beta],
        running_mean,
        running_var,
        eps,
        false,
    )
}

/// [`batch_norm2d_eval`] followed by ReLU, as one op (see the module notes).
pub fn batch_norm2d_eval_relu(
    tape: &Tape,
    x: &Var,
    gamma: &Var,
    beta: &Var,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
) -> Result<Var> {
    eval_op(tape, [x, gamma, beta], running_mean, running_var, eps, true)
}

fn eval_op(
    tape: &Tape,
    [x, gamma, beta]: [&Var; 3],
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f32,
    relu: bool,
) -> Result<Var> {
    let mode = BatchNormMode::Eval;
    let saved = BatchNormSaved::from_running(running_mean, running_var, eps)?;
    let y = tape.timed(op_name(mode, relu), || {
        normalize(x.value(), gamma.value(), beta.value(), &saved, relu)
    })?;
    Ok(record(tape, [x, gamma, beta], y, saved, mode, relu))
}

#[cfg(test)]
mod tests;
