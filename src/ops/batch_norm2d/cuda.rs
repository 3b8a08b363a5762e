//! BatchNorm2d on the GPU (kernels/batch_norm2d.cu): batch statistics by a two-pass per-channel
//! block reduction (deterministic), running-statistics update, eval mode, and both backwards.
use super::BatchNorm2dGeometry;
use crate::device::cuda::{check_len, dim_u32, launch, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::{Error, Result};

const FILE: &str = "batch_norm2d.cu";
const STATS: Kernel = Kernel::new(FILE, "bn_stats_f32");
const INVSTD: Kernel = Kernel::new(FILE, "bn_invstd_f32");
const FWD: Kernel = Kernel::new(FILE, "bn_fwd_f32");
const RUNNING: Kernel = Kernel::new(FILE, "bn_running_update_f32");
const BWD_REDUCE: Kernel = Kernel::new(FILE, "bn_bwd_reduce_f32");
const BWD_DX_TRAIN: Kernel = Kernel::new(FILE, "bn_bwd_dx_train_f32");
const BWD_DX_EVAL: Kernel = Kernel::new(FILE, "bn_bwd_dx_eval_f32");
pub const KERNELS: KernelFile = KernelFile::new(
    FILE,
    &[
        STATS,
        INVSTD,
        FWD,
        RUNNING,
        BWD_REDUCE,
        BWD_DX_TRAIN,
        BWD_DX_EVAL,
    ],
);

const OP: &str = "batch_norm2d (cuda)";

/// What the training forward saves: per-channel batch mean, biased variance and
/// 1/sqrt(var + eps).
pub struct BnSaved {
    pub mean: GpuBuffer<f32>,
    pub var: GpuBuffer<f32>,
    pub invstd: GpuBuffer<f32>,
}

fn check_channel_vec(what: &str, s: &GpuBuffer<f32>, c: usize) -> Result<()> {
    check_len(OP, what, s, c)
}

#[allow(clippy::too_many_arguments)]
fn launch_fwd(
    dev: &CudaDevice,
    p: &BatchNorm2dGeometry,
    x: &GpuBuffer<f32>,
    mean: &GpuBuffer<f32>,
    invstd: &GpuBuffer<f32>,
    gamma: &GpuBuffer<f32>,
    beta: &GpuBuffer<f32>,
    total: usize,
) -> Result<GpuBuffer<f32>> {
    let mut y = dev.alloc::<f32>(total)?;
    dev.launch(FWD)
        .arg(p)
        .buf(x)
        .buf(mean)
        .buf(invstd)
        .buf(gamma)
        .buf(beta)
        .out(&mut y)
        .run(dev.cfg(total as u64))?;
    Ok(y)
}

/// Per-channel batch statistics of x: mean, biased variance and 1/sqrt(var + eps). Refuses
/// M = N·H·W < 2 (the unbiased variance of the running update needs two values, as PyTorch).
pub fn batch_stats(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    g: &BatchNorm2dGeometry,
    eps: f32,
) -> Result<BnSaved> {
    check_len(OP, "x", x, g.numel())?;
    if g.per_channel() < 2 {
        return Err(Error::shape(
            OP,
            format!("training needs more than 1 value per channel, got {g:?}"),
        ));
    }
    let c = g.channels();
    let mut mean = dev.alloc::<f32>(c)?;
    let mut var = dev.alloc::<f32>(c)?;
    let mut invstd = dev.alloc::<f32>(c)?;
    dev.launch(STATS)
        .arg(g)
        .arg(&eps)
        .buf(x)
        .out(&mut mean)
        .out(&mut var)
        .out(&mut invstd)
        .run(launch::per_item(c as u64))?;
    Ok(BnSaved { mean, var, invstd })
}

/// invstd = 1/sqrt(var + eps) per channel (the eval path's normaliser).
pub fn invstd_of(
    dev: &CudaDevice,
    var: &GpuBuffer<f32>,
    c: usize,
    eps: f32,
) -> Result<GpuBuffer<f32>> {
    let cu = dim_u32(OP, "C", c)?;
    let mut invstd = dev.alloc::<f32>(c)?;
    dev.launch(INVSTD)
        .buf(var)
        .out(&mut invstd)
        .arg(&cu)
        .arg(&eps)
        .run(dev.cfg(c as u64))?;
    Ok(invstd)
}

/// y = (x − mean)·invstd·gamma + beta with given per-channel statistics (batch or running).
#[allow(clippy::too_many_arguments)]
pub fn normalize(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    mean: &GpuBuffer<f32>,
    invstd: &GpuBuffer<f32>,
    gamma: &GpuBuffer<f32>,
    beta: &GpuBuffer<f32>,
    g: &BatchNorm2dGeometry,
) -> Result<GpuBuffer<f32>> {
    check_len(OP, "x", x, g.numel())?;
    for (what, s) in [
        ("mean", mean),
        ("invstd", invstd),
        ("gamma", gamma),
        ("beta", beta),
    ] {
        check_channel_vec(what, s, g.channels())?;
    }
    launch_fwd(dev, g, x, mean, invstd, gamma, beta, g.numel())
}

/// `r = (1 − momentum)·r + momentum·stat` for the running mean and variance, given the batch
/// mean and the already unbiased batch variance.
pub fn running_blend(
    dev: &CudaDevice,
    momentum: f32,
    mean: &GpuBuffer<f32>,
    var_unbiased: &GpuBuffer<f32>,
    running_mean: &mut GpuBuffer<f32>,
    running_var: &mut GpuBuffer<f32>,
) -> Result<()> {
    let c = mean.len();
    for (what, s) in [
        ("batch var", var_unbiased),
        ("running_mean", &*running_mean),
        ("running_var", &*running_var),
    ] {
        check_channel_vec(what, s, c)?;
    }
    let cu = dim_u32(OP, "C", c)?;
    let unbias = 1.0f32;
    dev.launch(RUNNING)
        .arg(&cu)
        .arg(&momentum)
        .arg(&unbias)
        .buf(mean)
        .buf(var_unbiased)
        .out(running_mean)
        .out(running_var)
        .run(dev.cfg(c as u64))?;
    Ok(())
}

/// Backward from the statistics the forward normalised with: dgamma = Σ dy·x̂, dbeta = Σ dy,
/// and dx in training mode (the statistics depend on x) or eval mode (constants).
#[allow(clippy::too_many_arguments)]
pub fn backward_with_stats(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    gamma: &GpuBuffer<f32>,
    mean: &GpuBuffer<f32>,
    invstd: &GpuBuffer<f32>,
    g: &BatchNorm2dGeometry,
    training: bool,
) -> Result<BnGrads> {
    check_len(OP, "x", x, g.numel())?;
    check_len(OP, "dy", dy, g.numel())?;
    for (what, s) in [("gamma", gamma), ("mean", mean), ("invstd", invstd)] {
        check_channel_vec(what, s, g.channels())?;
    }
    let (dgamma, dbeta) = reduce(dev, g, x, dy, mean, invstd, g.channels())?;
    let total = g.numel();
    let mut dx = dev.alloc::<f32>(total)?;
    if let Some(cfg) = dev.cfg(total as u64) {
        if training {
            dev.launch(BWD_DX_TRAIN)
                .arg(g)
                .buf(x)
                .buf(dy)
                .buf(mean)
                .buf(invstd)
                .buf(gamma)
                .buf(&dgamma)
                .buf(&dbeta)
                .out(&mut dx)
                .run(Some(cfg))?;
        } else {
            dev.launch(BWD_DX_EVAL)
                .arg(g)
                .buf(dy)
                .buf(invstd)
                .buf(gamma)
                .out(&mut dx)
                .run(Some(cfg))?;
        }
    }
    Ok(BnGrads { dx, dgamma, dbeta })
}

/// Gradients of a batch-norm layer: (dx, dgamma, dbeta).
pub struct BnGrads {
    pub dx: GpuBuffer<f32>,
    pub dgamma: GpuBuffer<f32>,
    pub dbeta: GpuBuffer<f32>,
}

fn reduce(
    dev: &CudaDevice,
    p: &BatchNorm2dGeometry,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    mean: &GpuBuffer<f32>,
    invstd: &GpuBuffer<f32>,
    c: usize,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    let mut dgamma = dev.alloc::<f32>(c)?;
    let mut dbeta = dev.alloc::<f32>(c)?;
    dev.launch(BWD_REDUCE)
        .arg(p)
        .buf(x)
        .buf(dy)
        .buf(mean)
        .buf(invstd)
        .out(&mut dgamma)
        .out(&mut dbeta)
        .run(launch::per_item(c as u64))?;
    Ok((dgamma, dbeta))
}
