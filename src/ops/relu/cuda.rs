//! ReLU on the GPU (kernels/relu.cu).
use cudarc::driver::{CudaSlice, PushKernelArg};

use crate::device::cuda::{CudaDevice, CudaResultExt};
use crate::error::{Error, Result};

pub const KERNEL_FILE: &str = "relu.cu";
const FWD: &str = "relu_fwd_f32";
const BWD: &str = "relu_bwd_f32";
pub const ENTRY_POINTS: &[&str] = &[FWD, BWD];

/// y = max(x, 0).
pub fn relu_forward(dev: &CudaDevice, x: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
    let n = x.len();
    let mut y = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, FWD)?;
        let n = n as u64;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(x).arg(&mut y).arg(&n);
        unsafe { b.launch(cfg) }.cuda(FWD)?;
    }
    Ok(y)
}

/// dx = dy where the saved output y > 0, else 0.
pub fn relu_backward(
    dev: &CudaDevice,
    y: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
) -> Result<CudaSlice<f32>> {
    if y.len() != dy.len() {
        return Err(Error::shape(
            "relu backward (cuda)",
            format!("y has {} elements, dy {}", y.len(), dy.len()),
        ));
    }
    let n = y.len();
    let mut dx = dev.alloc::<f32>(n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, BWD)?;
        let n = n as u64;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(y).arg(dy).arg(&mut dx).arg(&n);
        unsafe { b.launch(cfg) }.cuda(BWD)?;
    }
    Ok(dx)
}
