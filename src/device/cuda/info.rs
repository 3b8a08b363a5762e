//! What a CUDA device is, and the checks before one is opened: which libraries load, whether
//! the driver is new enough for NVRTC's output, whether NVRTC targets the device.
use crate::error::{Error, Result};

/// Which CUDA libraries can be loaded (cudarc looks for the CUDA 13 names, then older ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaLibraries {
    pub driver: bool,
    pub nvrtc: bool,
    pub cublas: bool,
}

impl CudaLibraries {
    pub fn probe() -> Self {
        // Safety: these only try to dlopen the candidate file names.
        unsafe {
            CudaLibraries {
                driver: cudarc::driver::sys::is_culib_present(),
                nvrtc: cudarc::nvrtc::sys::is_culib_present(),
                cublas: cudarc::cublas::sys::is_culib_present(),
            }
        }
    }

    /// `Ok` when all three are present, else one line naming the first one missing.
    pub fn require_all(&self) -> Result<()> {
        let missing = if !self.driver {
            "libcuda (the NVIDIA driver, libcuda.so.1)"
        } else if !self.nvrtc {
            "libnvrtc (CUDA 13 runtime compiler, libnvrtc.so.13)"
        } else if !self.cublas {
            "libcublas (CUDA 13 cuBLAS, libcublas.so.13)"
        } else {
            return Ok(());
        };
        Err(Error::Device(format!(
            "CUDA unavailable: {missing} not found on the library path; use --device cpu"
        )))
    }
}

/// CUBINs from NVRTC major version X need a driver for CUDA X or newer. Refuse early with both
/// versions named rather than fail at module load.
pub fn check_versions(driver: (i32, i32), nvrtc: (i32, i32)) -> Result<()> {
    if driver.0 < nvrtc.0 {
        return Err(Error::Device(format!(
            "CUDA driver supports CUDA {}.{} but NVRTC is {}.{}: kernels compiled by NVRTC {} need \
             a driver for CUDA {}.0 or newer; update the NVIDIA driver",
            driver.0, driver.1, nvrtc.0, nvrtc.1, nvrtc.0, nvrtc.0
        )));
    }
    Ok(())
}

/// The device's `sm_XX` must be one NVRTC can target.
pub fn check_arch_supported(cc: (i32, i32), supported: &[i32], nvrtc: (i32, i32)) -> Result<()> {
    let want = cc.0 * 10 + cc.1;
    if supported.contains(&want) {
        return Ok(());
    }
    let list: Vec<String> = supported.iter().map(|a| format!("sm_{a}")).collect();
    Err(Error::Device(format!(
        "GPU architecture sm_{want} is not supported by NVRTC {}.{} (it targets {})",
        nvrtc.0,
        nvrtc.1,
        list.join(", ")
    )))
}

/// What a device is, for logs and reports.
#[derive(Clone, Debug)]
pub struct CudaDeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    /// `sm_XX`, what NVRTC compiles for.
    pub arch: String,
    pub sm_count: u32,
    pub total_mem: usize,
    /// (major, minor) CUDA version the driver supports.
    pub driver_version: (i32, i32),
    pub nvrtc_version: (i32, i32),
    /// cuBLAS version as it reports it (e.g. 130000).
    pub cublas_version: i32,
    /// Whether allocations are stream-ordered from the device's memory pool.
    pub stream_ordered_pool: bool,
    /// The host emulation, not a GPU.
    pub emulated: bool,
}

impl std::fmt::Display for CudaDeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.emulated {
            return write!(
                f,
                "cuda-host {} ({} SMs emulated)",
                self.name, self.sm_count
            );
        }
        write!(
            f,
            "cuda:{} {} ({}, {} SMs, {:.1} GiB), driver CUDA {}.{}, NVRTC {}.{}, cuBLAS {}, {}",
            self.ordinal,
            self.name,
            self.arch,
            self.sm_count,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.driver_version.0,
            self.driver_version.1,
            self.nvrtc_version.0,
            self.nvrtc_version.1,
            self.cublas_version,
            if self.stream_ordered_pool {
                "stream-ordered pool"
            } else {
                "synchronous cuMemAlloc (no memory pools)"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check_names_both_versions() {
        assert!(check_versions((13, 0), (13, 0)).is_ok());
        assert!(check_versions((13, 2), (13, 0)).is_ok());
        assert!(
            check_versions((13, 0), (13, 2)).is_ok(),
            "minor-version compatibility"
        );
        let e = check_versions((12, 4), (13, 0)).unwrap_err().to_string();
        assert!(
            e.contains("12.4") && e.contains("13.0") && !e.contains('\n'),
            "{e}"
        );
    }

    #[test]
    fn arch_check() {
        let archs = [75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121];
        assert!(check_arch_supported((9, 0), &archs, (13, 0)).is_ok());
        assert!(check_arch_supported((8, 9), &archs, (13, 0)).is_ok());
        let e = check_arch_supported((7, 0), &archs, (13, 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sm_70") && e.contains("13.0") && e.contains("sm_75"),
            "{e}"
        );
    }

    #[test]
    fn missing_libraries_give_one_line_naming_the_library() {
        let all = CudaLibraries {
            driver: true,
            nvrtc: true,
            cublas: true,
        };
        assert!(all.require_all().is_ok());
        for (libs, name) in [
            (
                CudaLibraries {
                    driver: false,
                    ..all
                },
                "libcuda",
            ),
            (
                CudaLibraries {
                    nvrtc: false,
                    ..all
                },
                "libnvrtc",
            ),
            (
                CudaLibraries {
                    cublas: false,
                    ..all
                },
                "libcublas",
            ),
        ] {
            let e = libs.require_all().unwrap_err().to_string();
            assert!(e.contains(name) && !e.contains('\n'), "{e}");
        }
    }
}
