//! Where tensors live. The CPU is the reference backend; CUDA storage and kernels slot in as a
//! second variant (issue: CUDA backend) without changing callers, which only see `Device`.
pub mod cpu;
pub mod cuda;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
}

impl Device {
    /// Parses `cpu`, `cuda` or `cuda:N`. CUDA is refused with one clear line until the CUDA
    /// backend exists; it never panics.
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            s if s == "cuda" || s.starts_with("cuda:") => Err(Error::Device(format!(
                "--device {s}: this build has no CUDA backend yet; use --device cpu"
            ))),
            other => Err(Error::Device(format!(
                "unknown device '{other}' (expected cpu, cuda or cuda:N)"
            ))),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
