//! Adam on the GPU, fused per parameter tensor (kernels/adam.cu): one launch updates the
//! parameter and both moments in place, with the host's [`AdamStep`] (bias corrections in f64
//! on the host, so both backends use the same values to the bit).
use super::AdamStep;
use crate::device::cuda::{check_len, CudaDevice, GpuBuffer, Kernel, KernelFile};
use crate::error::Result;

const FILE: &str = "adam.cu";
const ADAM: Kernel = Kernel::new(FILE, "adam_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[ADAM]);

const OP: &str = "adam (cuda)";

/// param, m, v updated in place from grad.
pub fn update(
    dev: &CudaDevice,
    h: &AdamStep,
    param: &mut GpuBuffer<f32>,
    grad: &GpuBuffer<f32>,
    m: &mut GpuBuffer<f32>,
    v: &mut GpuBuffer<f32>,
) -> Result<()> {
    let n = param.len();
    check_len(OP, "grad", grad, n)?;
    check_len(OP, "m", m, n)?;
    check_len(OP, "v", v, n)?;
    let len = n as u64;
    dev.launch(ADAM)
        .arg(h)
        .out(param)
        .buf(grad)
        .out(m)
        .out(v)
        .arg(&len)
        .run(dev.cfg(len))
}
