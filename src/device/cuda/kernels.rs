//! The embedded kernel sources (build.rs): the mechanism by which a kernel file reaches NVRTC.
//! Which entry points each file has is declared by the op family that owns it (see
//! `crate::kernels`).
use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

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
        let Some(rest) = rest.trim_start().strip_prefix("__global__") else {
            continue;
        };
        let Some(mut rest) = rest.trim_start().strip_prefix("void") else {
            continue;
        };
        // an optional `__launch_bounds__(threads, blocks)` before the name
        if let Some(bounds) = rest.trim_start().strip_prefix("__launch_bounds__(") {
            rest = bounds.split_once(')').map_or("", |(_, after)| after);
        }
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_reads_signatures() {
        let src = "// extern \"C\" __global__ void commented(\nextern \"C\" __global__ void a_f32(int x) {}\n  extern \"C\" __global__ void b(\nstatic __global__ void c() {}\nextern \"C\" __global__ void __launch_bounds__(256, 2) d_f32(\n";
        assert_eq!(extern_c_kernels(src), vec!["a_f32", "b", "d_f32"]);
    }
}
