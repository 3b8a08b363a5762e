//! GPU settings shared by `train`, `count`, `eval` and `bench`: which GMP and convolution
//! kernels run and the arithmetic of the GEMMs. The kernel choices and the convolutions'
//! arithmetic are the ops' own process-wide switches (`ops::gmp::set_kernel`,
//! `ops::conv2d::set_version`, `ops::conv2d::set_math`); the cuBLAS handle's TF32 mode for the
//! other FP32 GEMMs (the bench's ceiling) is stored on the process-wide `CudaDevice`. On the
//! CPU they are accepted and ignored.
use clap::Args;

use crate::device::Device;
use crate::ops::conv2d::{ConvMath, ConvVersion};
use crate::ops::gmp::GmpKernel;

#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuArgs {
    /// GMP implementation on CUDA: naive, unfused, fused, fused16 (the first fused version,
    /// kept as a baseline), cl or cl4 (channels-last, the residual folded in); ignored on the
    /// CPU.
    #[arg(long, default_value = "fused")]
    pub gmp_kernel: GmpKernel,
    /// Convolution implementation on CUDA: v2 (division-free im2col/col2im, batch-tiled
    /// columns, bias folded into the GEMM, dW of a tile in one GEMM) or v1 (the first
    /// version, kept as a baseline); ignored on the CPU.
    #[arg(long, default_value = "v2")]
    pub conv_kernel: ConvVersion,
    /// Strict FP32 GEMMs everywhere. Without it convolutions use TF32 tensor cores on compute
    /// capability 8.0 and later, as PyTorch's cuDNN convolutions do by default.
    #[arg(long, conflicts_with_all = ["tf32", "bf16"])]
    pub fp32: bool,
    /// TF32 tensor cores for every FP32 GEMM (convolutions and the rest), on any GPU.
    #[arg(long, conflicts_with = "bf16")]
    pub tf32: bool,
    /// Convolution GEMMs with bf16 operands and FP32 accumulation (compute capability 8.0
    /// and later, --conv-kernel v2; 1x1 convolutions stay TF32).
    #[arg(long)]
    pub bf16: bool,
}

impl Default for GpuArgs {
    fn default() -> Self {
        GpuArgs {
            gmp_kernel: GmpKernel::Fused,
            conv_kernel: ConvVersion::V2,
            fp32: false,
            tf32: false,
            bf16: false,
        }
    }
}

impl GpuArgs {
    /// The convolutions' arithmetic the flags ask for.
    pub fn conv_math(&self) -> ConvMath {
        if self.fp32 {
            ConvMath::Fp32
        } else if self.tf32 {
            ConvMath::Tf32
        } else if self.bf16 {
            ConvMath::Bf16
        } else {
            ConvMath::Auto
        }
    }

    /// Applies the settings to `device` when it is a GPU: the ops' switches, and the cuBLAS
    /// handle in TF32 exactly when the convolutions resolve to TF32 (so the other FP32 GEMMs,
    /// the bench's ceiling among them, run as the convolutions do).
    pub fn apply(&self, device: &Device) -> crate::Result<()> {
        if let Some(d) = device.cuda() {
            let math = self.conv_math();
            let resolved = math.resolve(d.info())?;
            d.set_tf32(resolved == crate::device::cuda::gemm::GemmMath::Tf32)?;
            crate::ops::gmp::set_kernel(self.gmp_kernel);
            crate::ops::conv2d::set_version(self.conv_kernel);
            crate::ops::conv2d::set_math(math);
        }
        Ok(())
    }

    /// One line for logs and bench notes: the kernels and the GEMMs' arithmetic on `device`.
    pub fn describe(&self, device: &Device) -> String {
        let Some(d) = device.cuda() else {
            return "CPU".into();
        };
        let math = match self.conv_math().resolve(d.info()) {
            Ok(m) => m.name().to_uppercase(),
            Err(e) => format!("unavailable ({e})"),
        };
        format!(
            "convolutions {} with {math} GEMMs ({}; --fp32 strict, --tf32, --bf16), GMP {}",
            self.conv_kernel.name(),
            match self.conv_math() {
                ConvMath::Auto => "default: TF32 from compute capability 8.0",
                _ => "as asked",
            },
            self.gmp_kernel.name()
        )
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
    use crate::device::cuda::gemm::GemmMath;
    use crate::device::cuda::CudaDeviceInfo;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        gpu: GpuArgs,
    }

    #[test]
    fn flags_parse_and_default_to_fused_v2_auto() {
        let w = Wrap::parse_from(["x"]);
        assert_eq!(w.gpu, GpuArgs::default());
        assert_eq!(w.gpu.conv_math(), ConvMath::Auto);
        let w = Wrap::parse_from(["x", "--gmp-kernel", "unfused", "--tf32"]);
        assert_eq!(w.gpu.gmp_kernel, GmpKernel::Unfused);
        assert!(w.gpu.tf32);
        assert_eq!(w.gpu.conv_math(), ConvMath::Tf32);
        let w = Wrap::parse_from(["x", "--conv-kernel", "v1", "--fp32"]);
        assert_eq!(w.gpu.conv_kernel, ConvVersion::V1);
        assert_eq!(w.gpu.conv_math(), ConvMath::Fp32);
        let w = Wrap::parse_from(["x", "--bf16"]);
        assert_eq!(w.gpu.conv_math(), ConvMath::Bf16);
        assert!(Wrap::try_parse_from(["x", "--gmp-kernel", "fast"]).is_err());
        assert!(Wrap::try_parse_from(["x", "--conv-kernel", "v9"]).is_err());
        assert!(Wrap::try_parse_from(["x", "--fp32", "--tf32"]).is_err());
        assert!(Wrap::try_parse_from(["x", "--bf16", "--tf32"]).is_err());
        // ignored on the CPU
        GpuArgs::default().apply(&Device::Cpu).unwrap();
        assert_eq!(GpuArgs::default().describe(&Device::Cpu), "CPU");
    }

    #[test]
    fn auto_is_tf32_from_ampere_on_as_pytorch() {
        let info = |cc: (i32, i32), emulated: bool| CudaDeviceInfo {
            ordinal: 0,
            name: "test".into(),
            compute_capability: cc,
            arch: format!("sm_{}{}", cc.0, cc.1),
            sm_count: 1,
            total_mem: 0,
            driver_version: (13, 0),
            nvrtc_version: (13, 0),
            cublas_version: 0,
            stream_ordered_pool: false,
            emulated,
        };
        let r = |m: ConvMath, cc, e| m.resolve(&info(cc, e));
        assert_eq!(r(ConvMath::Auto, (9, 0), false).unwrap(), GemmMath::Tf32);
        assert_eq!(r(ConvMath::Auto, (8, 6), false).unwrap(), GemmMath::Tf32);
        assert_eq!(r(ConvMath::Auto, (7, 5), false).unwrap(), GemmMath::Fp32);
        assert_eq!(r(ConvMath::Auto, (0, 0), true).unwrap(), GemmMath::Fp32);
        assert_eq!(r(ConvMath::Fp32, (9, 0), false).unwrap(), GemmMath::Fp32);
        assert_eq!(r(ConvMath::Tf32, (7, 5), false).unwrap(), GemmMath::Tf32);
        assert_eq!(r(ConvMath::Bf16, (8, 9), false).unwrap(), GemmMath::Bf16);
        assert_eq!(r(ConvMath::Bf16, (0, 0), true).unwrap(), GemmMath::Bf16);
        let e = r(ConvMath::Bf16, (7, 5), false).unwrap_err().to_string();
        assert!(
            e.contains("bf16") && e.contains("7.5") && !e.contains('\n'),
            "{e}"
        );
    }
}
