//! Every CUDA kernel file of the crate with its entry points: the device's own primitives, the
//! ops' and the optimiser's, each listed by the family that owns it and joined here, above
//! them, so that no lower layer names a higher one's kernels.
use crate::device::cuda::{primitives, CudaDevice, KernelFile};
use crate::error::Result;

/// All kernel files, in a fixed order.
pub fn all() -> Vec<KernelFile> {
    std::iter::once(primitives::KERNELS)
        .chain(crate::ops::CUDA_KERNELS.iter().copied())
        .chain(crate::optim::CUDA_KERNELS.iter().copied())
        .collect()
}

/// Compiles and loads every kernel now (start-up, benches), so the first step does not pay for
/// NVRTC.
pub fn load_all(dev: &CudaDevice) -> Result<()> {
    dev.load_kernels(&all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda::kernels::{extern_c_kernels, kernel_source, KERNEL_SOURCES};
    use std::collections::BTreeSet;

    #[test]
    fn every_kernel_file_is_embedded_and_registered_both_ways() {
        let embedded: BTreeSet<&str> = KERNEL_SOURCES.iter().map(|(f, _)| *f).collect();
        let files = all();
        let registered: BTreeSet<&str> = files.iter().map(|f| f.file).collect();
        assert_eq!(embedded, registered);
        assert_eq!(registered.len(), files.len(), "a file listed twice");
        assert!(embedded.len() >= 11, "{embedded:?}");
        for f in &files {
            let src = kernel_source(f.file).unwrap();
            // local headers are expanded by build.rs: NVRTC gets no include paths
            let includes = src.lines().any(|l| l.trim_start().starts_with("#include"));
            assert!(!includes, "{}: an #include left for NVRTC", f.file);
            let defined: BTreeSet<String> = extern_c_kernels(src).into_iter().collect();
            let listed: BTreeSet<String> = f.kernels.iter().map(|k| k.name.to_string()).collect();
            assert_eq!(defined, listed, "{}: entry points vs launcher list", f.file);
            assert_eq!(
                listed.len(),
                f.kernels.len(),
                "{}: an entry point twice",
                f.file
            );
            for k in f.kernels {
                assert_eq!(k.file, f.file, "{} listed under {}", k.name, f.file);
            }
        }
        assert!(kernel_source("nope.cu").is_err());
    }
}
