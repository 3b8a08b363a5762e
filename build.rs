//! Embeds every `kernels/*.cu` as `(file_name, source)` in `$OUT_DIR/kernel_sources.rs`
//! (`pub static KERNEL_SOURCES`), included by `src/device/cuda/kernels.rs`. NVRTC is given no
//! include paths, so `#include "X.cuh"` lines naming a file of `kernels/` are expanded here,
//! wrapped in `#line` directives so NVRTC's messages still name the right file and line.
//! Nothing CUDA happens at build time: NVRTC compiles the sources at run time for the live GPU.
use std::fmt::Write as _;
use std::path::Path;

/// The source with its local includes expanded (one level: headers include nothing).
fn expand(dir: &Path, name: &str, src: &str) -> String {
    let mut out = String::new();
    for (i, line) in src.lines().enumerate() {
        let header = line
            .trim()
            .strip_prefix("#include \"")
            .and_then(|r| r.strip_suffix('"'))
            .filter(|h| dir.join(h).is_file());
        match header {
            Some(h) => {
                let path = dir.join(h);
                println!("cargo:rerun-if-changed={}", path.display());
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                writeln!(out, "#line 1 \"{h}\"\n{text}\n#line {} \"{name}\"", i + 2).unwrap();
            }
            None => writeln!(out, "{line}").unwrap(),
        }
    }
    out
}

fn main() {
    // Read at run time: `env!` would bake in the directory the build script was first compiled
    // in, and a target folder copied from another checkout would then keep embedding (and
    // watching) that checkout's kernels.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
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
    let expanded_dir = Path::new(&out_dir).join("kernels");
    std::fs::create_dir_all(&expanded_dir).expect("cannot create OUT_DIR/kernels");
    let mut out = String::from("pub static KERNEL_SOURCES: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("kernel file names are UTF-8");
        let src = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let dest = expanded_dir.join(name);
        std::fs::write(&dest, expand(&dir, name, &src))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
        let full = dest.to_str().expect("OUT_DIR paths are UTF-8");
        writeln!(out, "    ({name:?}, include_str!({full:?})),").unwrap();
    }
    out.push_str("];\n");
    std::fs::write(Path::new(&out_dir).join("kernel_sources.rs"), out)
        .expect("cannot write kernel_sources.rs into OUT_DIR");
}
