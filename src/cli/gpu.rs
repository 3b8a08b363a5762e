//! GPU settings shared by `train`, `count`, `eval` and `bench`: which GMP kernel runs and whether
//! cuBLAS may use TF32 tensor cores. Both are stored on the process-wide `CudaDevice` handle,
//! which the ops read; on the CPU they are accepted and ignored.
use clap::Args;

use crate::device::Device;
use crate::ops::gmp::GmpKernel;

#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuArgs {
    /// GMP implementation on CUDA: naive, unfused, fused, fused16 (the first fused version,
    /// kept as a baseline), cl or cl4 (channels-last, the residual folded in); ignored on the
    /// CPU.
    #[arg(long, default_value = "fused")]
    pub gmp_kernel: GmpKernel,
    /// Let cuBLAS use TF32 tensor cores for FP32 GEMMs (convolutions) on CUDA; ignored on the
    /// CPU.
    #[arg(long)]
    pub tf32: bool,
}

impl Default for GpuArgs {
    fn default() -> Self {
        GpuArgs {
            gmp_kernel: GmpKernel::Fused,
            tf32: false,
        }
    }
}

impl GpuArgs {
    /// Applies the settings to `device` when it is a GPU.
    pub fn apply(&self, device: &Device) -> crate::Result<()> {
        if let Some(d) = device.cuda() {
            d.set_tf32(self.tf32)?;
            crate::ops::gmp::set_kernel(self.gmp_kernel);
        }
        Ok(())
    }
}

/// Opens `--device` and applies the GPU settings to it.
pub fn open_device(name: &str, gpu: &GpuArgs) -> anyhow::Result<Device> {
    let device = Device::parse(name)?;
    gpu.apply(&device)?;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        gpu: GpuArgs,
    }

    #[test]
    fn flags_parse_and_default_to_fused_fp32() {
        let w = Wrap::parse_from(["x"]);
        assert_eq!(w.gpu, GpuArgs::default());
        let w = Wrap::parse_from(["x", "--gmp-kernel", "unfused", "--tf32"]);
        assert_eq!(w.gpu.gmp_kernel, GmpKernel::Unfused);
        assert!(w.gpu.tf32);
        assert!(Wrap::try_parse_from(["x", "--gmp-kernel", "fast"]).is_err());
        // ignored on the CPU
        GpuArgs::default().apply(&Device::Cpu).unwrap();
    }
}
