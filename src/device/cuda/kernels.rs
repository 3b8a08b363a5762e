//! The embedded kernel sources (build.rs) and the entry points each launcher calls.
use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// `(kernel file, extern "C" entry points)` for every file in `kernels/`, as the launchers
/// name them. CI checks it both ways: each name is in the file's CUBIN, and each
/// `extern "C" __global__` of the source is listed here.
pub static KERNEL_ENTRY_POINTS: &[(&str, &[&str])] = &[
    (
        crate::ops::conv2d::cuda::KERNEL_FILE,
        crate::ops::conv2d::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::max_pool2d::cuda::KERNEL_FILE,
        crate::ops::max_pool2d::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::relu::cuda::KERNEL_FILE,
        crate::ops::relu::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::batch_norm2d::cuda::KERNEL_FILE,
        crate::ops::batch_norm2d::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::upsample_bilinear::cuda::KERNEL_FILE,
        crate::ops::upsample_bilinear::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::gmp::cuda::KERNEL_FILE,
        crate::ops::gmp::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::concat::cuda::KERNEL_FILE,
        crate::ops::concat::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::loss::cuda::KERNEL_FILE,
        crate::ops::loss::cuda::ENTRY_POINTS,
    ),
    (
        crate::ops::elementwise::cuda::KERNEL_FILE,
        crate::ops::elementwise::cuda::ENTRY_POINTS,
    ),
    (
        crate::optim::cuda::KERNEL_FILE,
        crate::optim::cuda::ENTRY_POINTS,
    ),
];

/// The source of `kernels/<file>`.
pub fn kernel_source(file: &str) -> Result<&'static str> {
    KERNEL_SOURCES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, src)| *src)
        .ok_or_else(|| Error::Device(format!("no embedded kernel file kernels/{file}")))
}

/// Names of the `extern "C" __global__` functions defined in a kernel source (the kernels are
/// written one signature per `extern "C" __global__ void name(` line).
pub fn extern_c_kernels(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in source.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let Some(rest) = line.strip_prefix("extern \"C\"") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        if words.next() != Some("__global__") || words.next() != Some("void") {
            continue;
        }
        if let Some(w) = words.next() {
            let name: String = w
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_kernel_file_is_embedded_and_registered_both_ways() {
        let embedded: BTreeSet<&str> = KERNEL_SOURCES.iter().map(|(f, _)| *f).collect();
        let registered: BTreeSet<&str> = KERNEL_ENTRY_POINTS.iter().map(|(f, _)| *f).collect();
        assert_eq!(embedded, registered);
        assert!(embedded.len() >= 10, "{embedded:?}");
        for (file, names) in KERNEL_ENTRY_POINTS {
            let src = kernel_source(file).unwrap();
            // local headers are expanded by build.rs: NVRTC gets no include paths
            let includes = src.lines().any(|l| l.trim_start().starts_with("#include"));
            assert!(!includes, "{file}: an #include left for NVRTC");
            let defined: BTreeSet<String> = extern_c_kernels(src).into_iter().collect();
            let listed: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
            assert_eq!(defined, listed, "{file}: entry points vs launcher list");
        }
        assert!(kernel_source("nope.cu").is_err());
    }

    #[test]
    fn parser_reads_signatures() {
        let src = "// extern \"C\" __global__ void commented(\nextern \"C\" __global__ void a_f32(int x) {}\n  extern \"C\" __global__ void b(\nstatic __global__ void c() {}\n";
        assert_eq!(extern_c_kernels(src), vec!["a_f32", "b"]);
    }
}
