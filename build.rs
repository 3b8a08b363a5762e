//! Embeds every `kernels/*.cu` as `(file_name, source)` in `$OUT_DIR/kernel_sources.rs`
//! (`pub static KERNEL_SOURCES`), included by `src/device/cuda/kernels.rs`. Nothing CUDA happens
//! at build time: NVRTC compiles the sources at run time for the live GPU.
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read at run time: `env!` would bake in the directory the build script was first compiled
    // in, and a target folder copied from another checkout would then keep embedding (and
    // watching) that checkout's kernels.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect(),
        Err(_) => Vec::new(), // no kernels folder: an empty table, the CPU build still works
    };
    files.sort();
    let mut out = String::from("pub static KERNEL_SOURCES: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("kernel file names are UTF-8");
        let full = path.to_str().expect("kernel paths are UTF-8");
        writeln!(out, "    ({name:?}, include_str!({full:?})),").unwrap();
    }
    out.push_str("];\n");
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernel_sources.rs");
    std::fs::write(&dest, out).expect("cannot write kernel_sources.rs into OUT_DIR");
}
