//! Elementwise ops and the scalar sum on the GPU (kernels/elementwise.cu).
use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::device::cuda::{launch, CudaDevice, CudaResultExt};
use crate::error::{Error, Result};

pub const KERNEL_FILE: &str = "elementwise.cu";
const ADD: &str = "add_f32";
const ADD_ASSIGN: &str = "add_assign_f32";
const SCALE: &str = "scale_f32";
const ABS: &str = "abs_f32";
const ABS_BWD: &str = "abs_bwd_f32";
const FILL: &str = "fill_f32";
const FILL_SCALAR: &str = "fill_scalar_f32";
const SUM_PARTIAL: &str = "sum_partial_f32";
const SUM_FINALIZE: &str = "sum_finalize_f32";
pub const ENTRY_POINTS: &[&str] = &[
    ADD,
    ADD_ASSIGN,
    SCALE,
    ABS,
    ABS_BWD,
    FILL,
    FILL_SCALAR,
    SUM_PARTIAL,
    SUM_FINALIZE,
];

/// Blocks of the first pass of a sum. Fixed (not derived from the device), so a sum's
/// rounding is the same on every GPU.
pub const SUM_PARTIALS: u32 = 1024;

fn same_len(op: &'static str, a: &CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<()> {
    if a.len() != b.len() {
        return Err(Error::shape(
            op,
            format!("{} vs {} elements", a.len(), b.len()),
        ));
    }
    Ok(())
}

/// a + b.
pub fn add(dev: &CudaDevice, a: &CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
    same_len("add (cuda)", a, b)?;
    let n = a.len();
    let mut y = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, ADD)?;
        let n = n as u64;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(a).arg(b).arg(&mut y).arg(&n);
        unsafe { l.launch(cfg) }.cuda(ADD)?;
    }
    Ok(y)
}

/// y += x in place (gradient accumulation; allocates nothing).
pub fn add_assign(dev: &CudaDevice, y: &mut CudaSlice<f32>, x: &CudaSlice<f32>) -> Result<()> {
    same_len("add_assign (cuda)", y, x)?;
    let n = y.len() as u64;
    if let Some(cfg) = dev.cfg(n) {
        let f = dev.function(KERNEL_FILE, ADD_ASSIGN)?;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(y).arg(x).arg(&n);
        unsafe { l.launch(cfg) }.cuda(ADD_ASSIGN)?;
    }
    Ok(())
}

/// s · x.
pub fn scale(dev: &CudaDevice, x: &CudaSlice<f32>, s: f32) -> Result<CudaSlice<f32>> {
    let n = x.len();
    let mut y = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, SCALE)?;
        let n = n as u64;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(x).arg(&s).arg(&mut y).arg(&n);
        unsafe { l.launch(cfg) }.cuda(SCALE)?;
    }
    Ok(y)
}

/// |x|.
pub fn abs(dev: &CudaDevice, x: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
    let n = x.len();
    let mut y = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, ABS)?;
        let n = n as u64;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(x).arg(&mut y).arg(&n);
        unsafe { l.launch(cfg) }.cuda(ABS)?;
    }
    Ok(y)
}

/// sign(x) · dy with sign(0) = 0.
pub fn abs_backward(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
) -> Result<CudaSlice<f32>> {
    same_len("abs backward (cuda)", x, dy)?;
    let n = x.len();
    let mut dx = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, ABS_BWD)?;
        let n = n as u64;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(x).arg(dy).arg(&mut dx).arg(&n);
        unsafe { l.launch(cfg) }.cuda(ABS_BWD)?;
    }
    Ok(dx)
}

/// A new buffer of `n` copies of `v`.
pub fn fill(dev: &CudaDevice, n: usize, v: f32) -> Result<CudaSlice<f32>> {
    let mut y = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, FILL)?;
        let n = n as u64;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(&mut y).arg(&v).arg(&n);
        unsafe { l.launch(cfg) }.cuda(FILL)?;
    }
    Ok(y)
}

/// A new buffer of `n` copies of the device scalar `s[0]` (the backward of a sum), without a
/// host round trip.
pub fn broadcast_scalar(dev: &CudaDevice, s: &CudaSlice<f32>, n: usize) -> Result<CudaSlice<f32>> {
    if s.len() != 1 {
        return Err(Error::shape(
            "broadcast_scalar (cuda)",
            format!("expected a 1-element scalar, got {} elements", s.len()),
        ));
    }
    let mut y = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, FILL_SCALAR)?;
        let n = n as u64;
        let mut l = dev.stream().launch_builder(&f);
        l.arg(s).arg(&mut y).arg(&n);
        unsafe { l.launch(cfg) }.cuda(FILL_SCALAR)?;
    }
    Ok(y)
}

/// Σ x as a 1-element buffer: per-block partials, then one block; deterministic.
pub fn sum(dev: &CudaDevice, x: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
    let n = x.len() as u64;
    let parts = launch::grid_size(n, SUM_PARTIALS);
    let mut partial = dev.alloc::<f32>(parts as usize)?;
    let mut out = dev.alloc::<f32>(1)?;
    let f = dev.function(KERNEL_FILE, SUM_PARTIAL)?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(x).arg(&mut partial).arg(&n);
    unsafe { l.launch(launch::blocks(parts)) }.cuda(SUM_PARTIAL)?;
    let f = dev.function(KERNEL_FILE, SUM_FINALIZE)?;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(&partial).arg(&parts).arg(&mut out);
    unsafe { l.launch(launch::blocks(1)) }.cuda(SUM_FINALIZE)?;
    Ok(out)
}
