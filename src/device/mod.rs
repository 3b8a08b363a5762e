//! Where tensors live. The CPU is the reference backend; a CUDA GPU is the second variant,
//! opened through [`cuda::CudaDevice::shared`] (one context, stream and cuBLAS handle per GPU
//! and process). Callers only see `Device`.
pub mod cpu;
pub mod cuda;

use crate::error::{Error, Result};

pub use cuda::CudaDevice;

#[derive(Clone, Debug, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(CudaDevice),
}

/// Two CUDA devices are the same device when they are the same GPU (ordinal).
impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Cuda(a), Device::Cuda(b)) => a.ordinal() == b.ordinal(),
            _ => false,
        }
    }
}
impl Eq for Device {}

impl Device {
    /// Parses `cpu`, `cuda` (= `cuda:0`), `cuda:N`, opening the GPU, or `cuda-host`, the host
    /// emulation of one (the CUDA kernels as C++ with CUDA semantics, for checking without a
    /// GPU). Without CUDA (no driver, libraries or device) the error is the probe's one line;
    /// it never panics.
    pub fn parse(s: &str) -> Result<Device> {
        let ordinal = match s {
            "cpu" => return Ok(Device::Cpu),
            "cuda-host" => return Ok(Device::Cuda(CudaDevice::host_emulated()?)),
            "cuda" => 0,
            s if s.starts_with("cuda:") => s["cuda:".len()..].parse::<usize>().map_err(|_| {
                Error::Device(format!(
                    "--device {s}: expected cuda:N with N a GPU number, e.g. cuda:0"
                ))
            })?,
            other => {
                return Err(Error::Device(format!(
                    "unknown device '{other}' (expected cpu, cuda, cuda:N or cuda-host)"
                )))
            }
        };
        Ok(Device::Cuda(CudaDevice::shared(ordinal)?))
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(d) => d.name(),
        }
    }

    /// The GPU, when this is one.
    pub fn cuda(&self) -> Option<&CudaDevice> {
        match self {
            Device::Cpu => None,
            Device::Cuda(d) => Some(d),
        }
    }

    pub fn is_cuda(&self) -> bool {
        self.cuda().is_some()
    }

    /// Waits for the device's queued work (a no-op on the CPU): for timing and profiling.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(d) => d.synchronize(),
        }
    }
}

/// The GPUs this process has opened so far (none on a CPU-only run).
pub fn opened_gpus() -> Vec<Device> {
    cuda::opened_devices()
        .into_iter()
        .map(Device::Cuda)
        .collect()
}

/// Waits for the queued work of every GPU this process has opened (profiling: a CPU-only run
/// costs one lock).
pub fn synchronize_all() -> Result<()> {
    for d in cuda::opened_devices() {
        d.synchronize()?;
    }
    Ok(())
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cpu_and_refuse_unknown_names() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        let e = Device::parse("tpu").unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("cuda:N"), "{e}");
        let e = Device::parse("cuda:x").unwrap_err().to_string();
        assert!(e.contains("cuda:x") && !e.contains('\n'), "{e}");
    }

    /// Without CUDA (this CI machine) `cuda` is one clear line, not a panic; with a GPU it
    /// opens it and the name round-trips.
    #[test]
    fn parse_cuda_opens_the_gpu_or_says_why_not() {
        for s in ["cuda", "cuda:0"] {
            match Device::parse(s) {
                Ok(d) => {
                    assert_eq!(d.name(), "cuda:0");
                    assert_eq!(d, Device::parse("cuda").unwrap());
                    assert_ne!(d, Device::Cpu);
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains("CUDA") && !msg.contains('\n'), "{msg}");
                }
            }
        }
    }
}
