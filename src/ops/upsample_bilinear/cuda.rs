//! Bilinear resize on the GPU (kernels/upsample_bilinear.cu), PyTorch
//! `F.interpolate(mode="bilinear")` semantics in both align_corners modes.
use super::UpsampleBilinearGeometry;
use crate::device::cuda::{check_len, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::Result;

const FILE: &str = "upsample_bilinear.cu";
const FWD: Kernel = Kernel::new(FILE, "upsample_bilinear_fwd_f32");
const BWD: Kernel = Kernel::new(FILE, "upsample_bilinear_bwd_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[FWD, BWD]);

const OP: &str = "upsample_bilinear (cuda)";

/// The output planes of `g` from its input planes `x`.
pub fn forward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    g: &UpsampleBilinearGeometry,
) -> Result<GpuBuffer<f32>> {
    check_len(OP, "x", x, g.in_len())?;
    let mut y = dev.alloc::<f32>(g.out_len())?;
    dev.launch(FWD)
        .arg(g)
        .buf(x)
        .out(&mut y)
        .run(dev.cfg(g.out_len() as u64))?;
    Ok(y)
}

/// dx (input planes) from dy (output planes): an atomic scatter into a zeroed buffer.
pub fn backward(
    dev: &CudaDevice,
    dy: &GpuBuffer<f32>,
    g: &UpsampleBilinearGeometry,
) -> Result<GpuBuffer<f32>> {
    check_len(OP, "dy", dy, g.out_len())?;
    let mut dx = dev.alloc_zeros::<f32>(g.in_len())?;
    dev.launch(BWD)
        .arg(g)
        .buf(dy)
        .out(&mut dx)
        .run(dev.cfg(g.out_len() as u64))?;
    Ok(dx)
}
