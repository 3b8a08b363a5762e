//! ReLU on the GPU (kernels/relu.cu).
use crate::device::cuda::{check_len, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::Result;

const FILE: &str = "relu.cu";
const FWD: Kernel = Kernel::new(FILE, "relu_fwd_f32");
const BWD: Kernel = Kernel::new(FILE, "relu_bwd_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[FWD, BWD]);

/// y = max(x, 0).
pub fn forward(dev: &CudaDevice, x: &GpuBuffer<f32>) -> Result<GpuBuffer<f32>> {
    let n = x.len() as u64;
    let mut y = dev.alloc::<f32>(x.len())?;
    dev.launch(FWD).buf(x).out(&mut y).arg(&n).run(dev.cfg(n))?;
    Ok(y)
}

/// dx = dy where the saved output y > 0, else 0.
pub fn backward(
    dev: &CudaDevice,
    y: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
) -> Result<GpuBuffer<f32>> {
    check_len("relu backward (cuda)", "dy", dy, y.len())?;
    let n = y.len() as u64;
    let mut dx = dev.alloc::<f32>(y.len())?;
    dev.launch(BWD)
        .buf(y)
        .buf(dy)
        .out(&mut dx)
        .arg(&n)
        .run(dev.cfg(n))?;
    Ok(dx)
}
