//! BatchNorm2d on the GPU (kernels/batch_norm2d.cu), the twins of cpu.rs: batch statistics by a
//! two-pass per-channel block reduction (deterministic), running-statistics update, eval mode,
//! and both backwards.
use super::{BatchNorm2dGeometry, BatchNormGrads, BatchNormMode, BatchNormNeeds, ChannelStats};
use crate::device::cuda::{check_len, dim_u32, launch, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::{Error, Result};
use crate::ops::elementwise::cuda::scale;

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

/// Checks the buffers of N·C·H·W values (`full`) and those of one value per channel.
fn check_sizes(
    g: &BatchNorm2dGeometry,
    full: &[(&str, &GpuBuffer<f32>)],
    per_channel: &[(&str, &GpuBuffer<f32>)],
) -> Result<()> {
    for (what, b) in full {
        check_len(OP, what, *b, g.numel())?;
    }
    for (what, b) in per_channel {
        check_len(OP, what, *b, g.channels())?;
    }
    Ok(())
}

/// Per-channel batch statistics of x: mean, 1/sqrt(var + eps) and the unbiased variance
/// M/(M−1)·var. Refuses M = N·H·W < 2 (the unbiased variance needs two values, as PyTorch).
pub fn batch_stats(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    g: &BatchNorm2dGeometry,
    eps: f32,
) -> Result<ChannelStats<GpuBuffer<f32>>> {
    check_sizes(g, &[("x", x)], &[])?;
    let m = g.per_channel();
    if m < 2 {
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
    let var_unbiased = scale(dev, &var, (m as f64 / (m - 1) as f64) as f32)?;
    Ok(ChannelStats {
        mean,
        invstd,
        var_unbiased,
    })
}

/// invstd = 1/sqrt(var + eps) per channel (the eval path's normaliser).
pub fn invstd(dev: &CudaDevice, var: &GpuBuffer<f32>, eps: f32) -> Result<GpuBuffer<f32>> {
    let c = var.len();
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
    check_sizes(
        g,
        &[("x", x)],
        &[
            ("mean", mean),
            ("invstd", invstd),
            ("gamma", gamma),
            ("beta", beta),
        ],
    )?;
    let mut y = dev.alloc::<f32>(g.numel())?;
    dev.launch(FWD)
        .arg(g)
        .buf(x)
        .buf(mean)
        .buf(invstd)
        .buf(gamma)
        .buf(beta)
        .out(&mut y)
        .run(dev.cfg(g.numel() as u64))?;
    Ok(y)
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
        check_len(OP, what, s, c)?;
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
/// and dx in training mode (the statistics depend on x) or eval mode (constants); only what
/// `needs` asks for is computed.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    gamma: &GpuBuffer<f32>,
    mean: &GpuBuffer<f32>,
    invstd: &GpuBuffer<f32>,
    g: &BatchNorm2dGeometry,
    mode: BatchNormMode,
    needs: BatchNormNeeds,
) -> Result<BatchNormGrads<GpuBuffer<f32>>> {
    check_sizes(
        g,
        &[("x", x), ("dy", dy)],
        &[("gamma", gamma), ("mean", mean), ("invstd", invstd)],
    )?;
    // One reduction gives dgamma and dbeta, which the training dx needs too.
    let sums = needs
        .sums(mode)
        .then(|| reduce(dev, g, x, dy, mean, invstd))
        .transpose()?;
    let train_sums = sums.as_ref().filter(|_| mode == BatchNormMode::Train);
    let dx = needs
        .dx
        .then(|| launch_dx(dev, g, x, dy, gamma, mean, invstd, train_sums))
        .transpose()?;
    let (dgamma, dbeta) = sums.unzip();
    Ok(BatchNormGrads {
        dx,
        dgamma: dgamma.filter(|_| needs.dgamma),
        dbeta: dbeta.filter(|_| needs.dbeta),
    })
}

/// Per channel (dgamma, dbeta) = (Σ dy·x̂, Σ dy).
fn reduce(
    dev: &CudaDevice,
    g: &BatchNorm2dGeometry,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    mean: &GpuBuffer<f32>,
    invstd: &GpuBuffer<f32>,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    let c = g.channels();
    let mut dgamma = dev.alloc::<f32>(c)?;
    let mut dbeta = dev.alloc::<f32>(c)?;
    dev.launch(BWD_REDUCE)
        .arg(g)
        .buf(x)
        .buf(dy)
        .buf(mean)
        .buf(invstd)
        .out(&mut dgamma)
        .out(&mut dbeta)
        .run(launch::per_item(c as u64))?;
    Ok((dgamma, dbeta))
}

/// dx: the training form when given the sums (dgamma, dbeta), else the eval form.
#[allow(clippy::too_many_arguments)]
fn launch_dx(
    dev: &CudaDevice,
    g: &BatchNorm2dGeometry,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    gamma: &GpuBuffer<f32>,
    mean: &GpuBuffer<f32>,
    invstd: &GpuBuffer<f32>,
    train_sums: Option<&(GpuBuffer<f32>, GpuBuffer<f32>)>,
) -> Result<GpuBuffer<f32>> {
    let mut dx = dev.alloc::<f32>(g.numel())?;
    let cfg = dev.cfg(g.numel() as u64);
    match train_sums {
        Some((dgamma, dbeta)) => dev
            .launch(BWD_DX_TRAIN)
            .arg(g)
            .buf(x)
            .buf(dy)
            .buf(mean)
            .buf(invstd)
            .buf(gamma)
            .buf(dgamma)
            .buf(dbeta)
            .out(&mut dx)
            .run(cfg)?,
        None => dev
            .launch(BWD_DX_EVAL)
            .arg(g)
            .buf(dy)
            .buf(invstd)
            .buf(gamma)
            .out(&mut dx)
            .run(cfg)?,
    }
    Ok(dx)
}
