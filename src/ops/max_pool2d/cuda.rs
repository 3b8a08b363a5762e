//! 2x2 stride-2 max pooling on the GPU (kernels/max_pool2d.cu).
use super::MaxPool2dGeometry;
use crate::device::cuda::{check_len, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::Result;

const FILE: &str = "max_pool2d.cu";
const FWD: Kernel = Kernel::new(FILE, "max_pool2x2_fwd_f32");
const BWD: Kernel = Kernel::new(FILE, "max_pool2x2_bwd_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[FWD, BWD]);

const OP: &str = "max_pool2d (cuda)";

/// Forward of `x`: returns `y` and, per output, the flat index (row·W + col) of its maximum
/// inside the input plane.
pub fn forward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    g: &MaxPool2dGeometry,
) -> Result<(GpuBuffer<f32>, GpuBuffer<u32>)> {
    check_len(OP, "x", x, g.in_len())?;
    let mut y = dev.alloc::<f32>(g.out_len())?;
    let mut argmax = dev.alloc::<u32>(g.out_len())?;
    dev.launch(FWD)
        .arg(g)
        .buf(x)
        .out(&mut y)
        .out(&mut argmax)
        .run(dev.cfg(g.out_len() as u64))?;
    Ok((y, argmax))
}

/// dx: dy routed to each window's saved maximum, zero elsewhere.
pub fn backward(
    dev: &CudaDevice,
    dy: &GpuBuffer<f32>,
    argmax: &GpuBuffer<u32>,
    g: &MaxPool2dGeometry,
) -> Result<GpuBuffer<f32>> {
    check_len(OP, "dy", dy, g.out_len())?;
    check_len(OP, "argmax", argmax, g.out_len())?;
    let mut dx = dev.alloc::<f32>(g.in_len())?;
    dev.launch(BWD)
        .arg(g)
        .buf(dy)
        .buf(argmax)
        .out(&mut dx)
        .run(dev.cfg(g.in_len() as u64))?;
    Ok(dx)
}
