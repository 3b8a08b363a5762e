//! The count ℓ1 loss (Eq. 1) and MSE on the GPU (kernels/loss.cu); deterministic reductions.
use crate::device::cuda::{check_len, dim_u32, launch, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::{Error, Result};

const FILE: &str = "loss.cu";
const ABS_SUM_ROWS: Kernel = Kernel::new(FILE, "abs_sum_rows_f32");
const COUNT_L1: Kernel = Kernel::new(FILE, "count_l1_loss_f32");
const COUNT_L1_BWD: Kernel = Kernel::new(FILE, "count_l1_bwd_f32");
const SQ_DIFF: Kernel = Kernel::new(FILE, "sq_diff_partial_f32");
const MSE_FINALIZE: Kernel = Kernel::new(FILE, "mse_finalize_f32");
const MSE_BWD: Kernel = Kernel::new(FILE, "mse_bwd_f32");
pub const KERNELS: KernelFile = KernelFile::new(
    FILE,
    &[
        ABS_SUM_ROWS,
        COUNT_L1,
        COUNT_L1_BWD,
        SQ_DIFF,
        MSE_FINALIZE,
        MSE_BWD,
    ],
);

/// Blocks of the MSE's first pass; fixed, so the result's rounding is the same on every GPU.
pub const MSE_PARTIALS: u32 = 1024;

const OP_L1: &str = "count_l1_loss (cuda)";
const OP_MSE: &str = "mse_loss (cuda)";

/// Per-image predicted counts `S_n = Σ|z_n|` of z `[n, ...]` (`len` values per image).
pub fn image_abs_sums(dev: &CudaDevice, z: &GpuBuffer<f32>, n: usize) -> Result<GpuBuffer<f32>> {
    if n == 0 || !z.len().is_multiple_of(n) {
        return Err(Error::shape(
            OP_L1,
            format!("z has {} values, not a multiple of the batch {n}", z.len()),
        ));
    }
    let rows = dim_u32(OP_L1, "batch", n)?;
    let len = (z.len() / n) as u64;
    let mut sums = dev.alloc::<f32>(n)?;
    dev.launch(ABS_SUM_ROWS)
        .buf(z)
        .out(&mut sums)
        .arg(&rows)
        .arg(&len)
        .run(launch::per_item(n as u64))?;
    Ok(sums)
}

/// `L = (1/N) Σ_n |Σ|z_n| − y_n|`. Returns (loss `[1]`, per-image sums `[n]`), the sums being
/// what the backward needs.
pub fn count_l1_forward(
    dev: &CudaDevice,
    z: &GpuBuffer<f32>,
    counts: &GpuBuffer<f32>,
    n: usize,
) -> Result<(GpuBuffer<f32>, GpuBuffer<f32>)> {
    check_len(OP_L1, "counts", counts, n)?;
    let sums = image_abs_sums(dev, z, n)?;
    let rows = dim_u32(OP_L1, "batch", n)?;
    let mut loss = dev.alloc::<f32>(1)?;
    dev.launch(COUNT_L1)
        .buf(&sums)
        .buf(counts)
        .out(&mut loss)
        .arg(&rows)
        .run(Some(launch::blocks(1)))?;
    Ok((loss, sums))
}

/// dz = sign(S_n − y_n) · sign(z) / N · dloss, with dloss a 1-element device buffer.
pub fn count_l1_backward(
    dev: &CudaDevice,
    z: &GpuBuffer<f32>,
    sums: &GpuBuffer<f32>,
    counts: &GpuBuffer<f32>,
    dloss: &GpuBuffer<f32>,
    n: usize,
) -> Result<GpuBuffer<f32>> {
    if n == 0 || !z.len().is_multiple_of(n) {
        return Err(Error::shape(
            OP_L1,
            format!("z has {} values, not a multiple of the batch {n}", z.len()),
        ));
    }
    check_len(OP_L1, "sums", sums, n)?;
    check_len(OP_L1, "counts", counts, n)?;
    check_len(OP_L1, "dloss", dloss, 1)?;
    let rows = dim_u32(OP_L1, "batch", n)?;
    let len = (z.len() / n) as u64;
    let mut dz = dev.alloc::<f32>(z.len())?;
    dev.launch(COUNT_L1_BWD)
        .buf(z)
        .buf(sums)
        .buf(counts)
        .buf(dloss)
        .out(&mut dz)
        .arg(&rows)
        .arg(&len)
        .run(dev.cfg(z.len() as u64))?;
    Ok(dz)
}

/// `mean((p − t)²)` as a 1-element buffer.
pub fn mse_forward(
    dev: &CudaDevice,
    pred: &GpuBuffer<f32>,
    target: &GpuBuffer<f32>,
) -> Result<GpuBuffer<f32>> {
    check_len(OP_MSE, "target", target, pred.len())?;
    if pred.is_empty() {
        return Err(Error::shape(OP_MSE, "mean of an empty tensor"));
    }
    let n = pred.len() as u64;
    let parts = launch::grid_size(n, MSE_PARTIALS);
    let mut partial = dev.alloc::<f32>(parts as usize)?;
    let mut loss = dev.alloc::<f32>(1)?;
    dev.launch(SQ_DIFF)
        .buf(pred)
        .buf(target)
        .out(&mut partial)
        .arg(&n)
        .run(Some(launch::blocks(parts)))?;
    dev.launch(MSE_FINALIZE)
        .buf(&partial)
        .arg(&parts)
        .out(&mut loss)
        .arg(&n)
        .run(Some(launch::blocks(1)))?;
    Ok(loss)
}

/// dp = 2 (p − t) / numel · dloss.
pub fn mse_backward(
    dev: &CudaDevice,
    pred: &GpuBuffer<f32>,
    target: &GpuBuffer<f32>,
    dloss: &GpuBuffer<f32>,
) -> Result<GpuBuffer<f32>> {
    check_len(OP_MSE, "target", target, pred.len())?;
    check_len(OP_MSE, "dloss", dloss, 1)?;
    let n = pred.len() as u64;
    let mut dp = dev.alloc::<f32>(pred.len())?;
    dev.launch(MSE_BWD)
        .buf(pred)
        .buf(target)
        .buf(dloss)
        .out(&mut dp)
        .arg(&n)
        .run(dev.cfg(n))?;
    Ok(dp)
}
