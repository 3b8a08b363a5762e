//! Elementwise ops and the scalar sum on the GPU (kernels/elementwise.cu).
use crate::device::cuda::{check_len, launch, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::{Error, Result};

const FILE: &str = "elementwise.cu";
const ADD: Kernel = Kernel::new(FILE, "add_f32");
const SCALE: Kernel = Kernel::new(FILE, "scale_f32");
const SCALE_BY: Kernel = Kernel::new(FILE, "scale_by_f32");
const ABS: Kernel = Kernel::new(FILE, "abs_f32");
const ABS_BWD: Kernel = Kernel::new(FILE, "abs_bwd_f32");
const FILL_SCALAR: Kernel = Kernel::new(FILE, "fill_scalar_f32");
const SUM_PARTIAL: Kernel = Kernel::new(FILE, "sum_partial_f32");
const SUM_FINALIZE: Kernel = Kernel::new(FILE, "sum_finalize_f32");
pub const KERNELS: KernelFile = KernelFile::new(
    FILE,
    &[
        ADD,
        SCALE,
        SCALE_BY,
        ABS,
        ABS_BWD,
        FILL_SCALAR,
        SUM_PARTIAL,
        SUM_FINALIZE,
    ],
);

/// Blocks of the first pass of a sum. Fixed (not derived from the device), so a sum's
/// rounding is the same on every GPU.
pub const SUM_PARTIALS: u32 = 1024;

/// a + b.
pub fn add(dev: &CudaDevice, a: &GpuBuffer<f32>, b: &GpuBuffer<f32>) -> Result<GpuBuffer<f32>> {
    check_len("add (cuda)", "b", b, a.len())?;
    let n = a.len() as u64;
    let mut y = dev.alloc::<f32>(a.len())?;
    dev.launch(ADD)
        .buf(a)
        .buf(b)
        .out(&mut y)
        .arg(&n)
        .run(dev.cfg(n))?;
    Ok(y)
}

/// s · x.
pub fn scale(dev: &CudaDevice, x: &GpuBuffer<f32>, s: f32) -> Result<GpuBuffer<f32>> {
    let n = x.len() as u64;
    let mut y = dev.alloc::<f32>(x.len())?;
    dev.launch(SCALE)
        .buf(x)
        .arg(&s)
        .out(&mut y)
        .arg(&n)
        .run(dev.cfg(n))?;
    Ok(y)
}

/// s[0] · x, with the factor read on the device.
pub fn scale_by(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    s: &GpuBuffer<f32>,
) -> Result<GpuBuffer<f32>> {
    check_len("scale (cuda)", "factor", s, 1)?;
    let n = x.len() as u64;
    let mut y = dev.alloc::<f32>(x.len())?;
    dev.launch(SCALE_BY)
        .buf(x)
        .buf(s)
        .out(&mut y)
        .arg(&n)
        .run(dev.cfg(n))?;
    Ok(y)
}

/// |x|.
pub fn abs(dev: &CudaDevice, x: &GpuBuffer<f32>) -> Result<GpuBuffer<f32>> {
    let n = x.len() as u64;
    let mut y = dev.alloc::<f32>(x.len())?;
    dev.launch(ABS).buf(x).out(&mut y).arg(&n).run(dev.cfg(n))?;
    Ok(y)
}

/// sign(x) · dy with sign(0) = 0.
pub fn abs_backward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
) -> Result<GpuBuffer<f32>> {
    check_len("abs backward (cuda)", "dy", dy, x.len())?;
    let n = x.len() as u64;
    let mut dx = dev.alloc::<f32>(x.len())?;
    dev.launch(ABS_BWD)
        .buf(x)
        .buf(dy)
        .out(&mut dx)
        .arg(&n)
        .run(dev.cfg(n))?;
    Ok(dx)
}

/// A new buffer of `n` copies of the device scalar `s[0]` (the backward of a sum), without a
/// host round trip.
pub fn broadcast_scalar(dev: &CudaDevice, s: &GpuBuffer<f32>, n: usize) -> Result<GpuBuffer<f32>> {
    if s.len() != 1 {
        return Err(Error::shape(
            "broadcast_scalar (cuda)",
            format!("expected a 1-element scalar, got {} elements", s.len()),
        ));
    }
    let mut y = dev.alloc::<f32>(n)?;
    let len = n as u64;
    dev.launch(FILL_SCALAR)
        .buf(s)
        .out(&mut y)
        .arg(&len)
        .run(dev.cfg(len))?;
    Ok(y)
}

/// Σ x as a 1-element buffer: per-block partials, then one block; deterministic.
pub fn sum(dev: &CudaDevice, x: &GpuBuffer<f32>) -> Result<GpuBuffer<f32>> {
    let n = x.len() as u64;
    let parts = launch::grid_size(n, SUM_PARTIALS);
    let mut partial = dev.alloc::<f32>(parts as usize)?;
    let mut out = dev.alloc::<f32>(1)?;
    dev.launch(SUM_PARTIAL)
        .buf(x)
        .out(&mut partial)
        .arg(&n)
        .run(Some(launch::blocks(parts)))?;
    dev.launch(SUM_FINALIZE)
        .buf(&partial)
        .arg(&parts)
        .out(&mut out)
        .run(Some(launch::blocks(1)))?;
    Ok(out)
}
