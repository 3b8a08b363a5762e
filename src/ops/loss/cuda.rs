//! The count ℓ1 loss (Eq. 1) and MSE on the GPU (kernels/loss.cu); deterministic reductions.
use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::device::cuda::{check_len, dim_u32, launch, CudaDevice, CudaResultExt};
use crate::error::{Error, Result};

pub const KERNEL_FILE: &str = "loss.cu";
const ABS_SUM_ROWS: &str = "abs_sum_rows_f32";
const COUNT_L1: &str = "count_l1_loss_f32";
const COUNT_L1_BWD: &str = "count_l1_bwd_f32";
const SQ_DIFF: &str = "sq_diff_partial_f32";
const MSE_FINALIZE: &str = "mse_finalize_f32";
const MSE_BWD: &str = "mse_bwd_f32";
pub const ENTRY_POINTS: &[&str] = &[
    ABS_SUM_ROWS,
    COUNT_L1,
    COUNT_L1_BWD,
    SQ_DIFF,
    MSE_FINALIZE,
    MSE_BWD,
];

/// Blocks of the MSE's first pass; fixed, so the result's rounding is the same on every GPU.
pub const MSE_PARTIALS: u32 = 1024;

const OP_L1: &str = "count_l1_loss (cuda)";
const OP_MSE: &str = "mse_loss (cuda)";

/// Per-image predicted counts `S_n = Σ|z_n|` of z `[n, ...]` (`len` values per image).
pub fn image_abs_sums(dev: &CudaDevice, z: &CudaSlice<f32>, n: usize) -> Result<CudaSlice<f32>> {
    if n == 0 || !z.len().is_multiple_of(n) {
        return Err(Error::shape(
            OP_L1,
            format!("z has {} values, not a multiple of the batch {n}", z.len()),
        ));
    }
    let rows = dim_u32(OP_L1, "batch", n)?;
    let len = (z.len() / n) as u64;
    let mut sums = dev.alloc::<f32>(n)?;
    if let Some(cfg) = launch::per_item(n as u64) {
        let f = dev.function(KERNEL_FILE, ABS_SUM_ROWS)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(z).arg(&mut sums).arg(&rows).arg(&len);
        unsafe { b.launch(cfg) }.cuda(ABS_SUM_ROWS)?;
    }
    Ok(sums)
}

/// `L = (1/N) Σ_n |Σ|z_n| − y_n|`. Returns (loss `[1]`, per-image sums `[n]`), the sums being
/// what the backward needs.
pub fn count_l1_forward(
    dev: &CudaDevice,
    z: &CudaSlice<f32>,
    counts: &CudaSlice<f32>,
    n: usize,
) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
    check_len(OP_L1, "counts", counts, n)?;
    let sums = image_abs_sums(dev, z, n)?;
    let rows = dim_u32(OP_L1, "batch", n)?;
    let mut loss = dev.alloc::<f32>(1)?;
    let f = dev.function(KERNEL_FILE, COUNT_L1)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&sums).arg(counts).arg(&mut loss).arg(&rows);
    unsafe { b.launch(launch::blocks(1)) }.cuda(COUNT_L1)?;
    Ok((loss, sums))
}

/// dz = sign(S_n − y_n) · sign(z) / N · dloss, with dloss a 1-element device buffer.
pub fn count_l1_backward(
    dev: &CudaDevice,
    z: &CudaSlice<f32>,
    sums: &CudaSlice<f32>,
    counts: &CudaSlice<f32>,
    dloss: &CudaSlice<f32>,
    n: usize,
) -> Result<CudaSlice<f32>> {
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
    if let Some(cfg) = dev.cfg(z.len() as u64) {
        let f = dev.function(KERNEL_FILE, COUNT_L1_BWD)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(z)
            .arg(sums)
            .arg(counts)
            .arg(dloss)
            .arg(&mut dz)
            .arg(&rows)
            .arg(&len);
        unsafe { b.launch(cfg) }.cuda(COUNT_L1_BWD)?;
    }
    Ok(dz)
}

/// `mean((p − t)²)` as a 1-element buffer.
pub fn mse_forward(
    dev: &CudaDevice,
    pred: &CudaSlice<f32>,
    target: &CudaSlice<f32>,
) -> Result<CudaSlice<f32>> {
    check_len(OP_MSE, "target", target, pred.len())?;
    if pred.is_empty() {
        return Err(Error::shape(OP_MSE, "mean of an empty tensor"));
    }
    let n = pred.len() as u64;
    let parts = launch::grid_size(n, MSE_PARTIALS);
    let mut partial = dev.alloc::<f32>(parts as usize)?;
    let mut loss = dev.alloc::<f32>(1)?;
    let f = dev.function(KERNEL_FILE, SQ_DIFF)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(pred).arg(target).arg(&mut partial).arg(&n);
    unsafe { b.launch(launch::blocks(parts)) }.cuda(SQ_DIFF)?;
    let f = dev.function(KERNEL_FILE, MSE_FINALIZE)?;
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&partial).arg(&parts).arg(&mut loss).arg(&n);
    unsafe { b.launch(launch::blocks(1)) }.cuda(MSE_FINALIZE)?;
    Ok(loss)
}

/// dp = 2 (p − t) / numel · dloss.
pub fn mse_backward(
    dev: &CudaDevice,
    pred: &CudaSlice<f32>,
    target: &CudaSlice<f32>,
    dloss: &CudaSlice<f32>,
) -> Result<CudaSlice<f32>> {
    check_len(OP_MSE, "target", target, pred.len())?;
    check_len(OP_MSE, "dloss", dloss, 1)?;
    let n = pred.len() as u64;
    let mut dp = dev.alloc::<f32>(pred.len())?;
    if let Some(cfg) = dev.cfg(n) {
        let f = dev.function(KERNEL_FILE, MSE_BWD)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(pred).arg(target).arg(dloss).arg(&mut dp).arg(&n);
        unsafe { b.launch(cfg) }.cuda(MSE_BWD)?;
    }
    Ok(dp)
}
