//! The device's own primitives (kernels/device.cu), which the tensor and the tape build on:
//! a buffer filled with one value, and in-place addition (gradient accumulation).
use super::launch::{Kernel, KernelFile};
use super::{check_len, CudaDevice, GpuBuffer, GpuRead, GpuWrite};
use crate::error::Result;

const FILE: &str = "device.cu";
const FILL: Kernel = Kernel::new(FILE, "fill_f32");
const ADD_ASSIGN: Kernel = Kernel::new(FILE, "add_assign_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[FILL, ADD_ASSIGN]);

/// A new buffer of `n` copies of `v`.
pub fn fill(dev: &CudaDevice, n: usize, v: f32) -> Result<GpuBuffer<f32>> {
    let mut y = dev.alloc::<f32>(n)?;
    let len = n as u64;
    dev.launch(FILL)
        .out(&mut y)
        .arg(&v)
        .arg(&len)
        .run(dev.cfg(len))?;
    Ok(y)
}

/// y += x in place (allocates nothing).
pub fn add_assign(
    dev: &CudaDevice,
    y: &mut impl GpuWrite<f32>,
    x: &impl GpuRead<f32>,
) -> Result<()> {
    check_len("add_assign (cuda)", "x", x, y.len())?;
    let n = y.len() as u64;
    dev.launch(ADD_ASSIGN).out(y).buf(x).arg(&n).run(dev.cfg(n))
}
