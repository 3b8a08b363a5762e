//! CI's GPU-free check of the CUDA kernels: every `kernels/*.cu` compiles with NVRTC for the
//! architectures the project targets (sm_80/86 Ampere, sm_89 Ada — the RTX 30/40 series the
//! paper used — and sm_90 Hopper), and each CUBIN defines every entry point its launcher calls.
//! Needs only libnvrtc (`.ci/nvrtc.sh` installs it from PyPI). Without it the tests print a
//! note and pass, unless `DCL_REQUIRE_NVRTC=1`, which makes a missing NVRTC a failure.
use dcl::device::cuda::kernels::{extern_c_kernels, kernel_source};
use dcl::device::cuda::nvrtc::{
    cache_file_name, cache_key, compile_cubin_cached, compile_options, nvrtc_present,
    nvrtc_version, supported_archs,
};
use dcl::device::cuda::{compile_cubin, KERNEL_SOURCES};

const ARCHS: [&str; 4] = ["sm_80", "sm_86", "sm_89", "sm_90"];

/// True when NVRTC can be used; otherwise prints why the test is skipped (or fails when
/// DCL_REQUIRE_NVRTC=1).
fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_present() {
        return true;
    }
    let required = std::env::var("DCL_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: DCL_REQUIRE_NVRTC=1 but libnvrtc cannot be loaded; run \
         `export LD_LIBRARY_PATH=$(bash .ci/nvrtc.sh)`"
    );
    eprintln!("{test}: skipped, libnvrtc not found (install it with .ci/nvrtc.sh)");
    false
}

/// `name` as a NUL-terminated symbol in the ELF string table.
fn has_symbol(cubin: &[u8], name: &str) -> bool {
    let mut pat = Vec::with_capacity(name.len() + 2);
    pat.push(0u8);
    pat.extend_from_slice(name.as_bytes());
    pat.push(0u8);
    cubin.windows(pat.len()).any(|w| w == pat.as_slice())
}

#[test]
fn every_kernel_compiles_for_every_target_arch_with_its_entry_points() {
    if !nvrtc_or_skip("nvrtc_kernels") {
        return;
    }
    let (major, minor) = nvrtc_version().unwrap();
    let supported = supported_archs().unwrap();
    eprintln!("NVRTC {major}.{minor}, supported archs {supported:?}");
    assert!(!KERNEL_SOURCES.is_empty());
    let mut compiled = 0;
    for kf in dcl::kernels::all() {
        let (file, names) = (kf.file, kf.kernels);
        let src = kernel_source(file).unwrap();
        let mut defined = extern_c_kernels(src);
        defined.sort();
        let mut listed: Vec<String> = names.iter().map(|k| k.name.to_string()).collect();
        listed.sort();
        assert_eq!(
            defined, listed,
            "{file}: extern \"C\" kernels vs launcher list"
        );
        for arch in ARCHS {
            let num: i32 = arch[3..].parse().unwrap();
            assert!(
                supported.contains(&num),
                "NVRTC {major}.{minor} lacks {arch}"
            );
            let t = std::time::Instant::now();
            let cubin = compile_cubin(file, src, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                cubin.starts_with(b"\x7fELF"),
                "{file} {arch}: not an ELF CUBIN"
            );
            for k in names {
                let name = k.name;
                assert!(has_symbol(&cubin, name), "{file} {arch}: no symbol {name}");
            }
            eprintln!(
                "{file:>16} {arch}: {:>7} bytes, {} kernels, {:.0} ms",
                cubin.len(),
                names.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
            compiled += 1;
        }
    }
    assert_eq!(compiled, KERNEL_SOURCES.len() * ARCHS.len());
}

#[test]
fn compile_errors_name_the_file_and_carry_the_log() {
    if !nvrtc_or_skip("nvrtc_errors") {
        return;
    }
    let src = "extern \"C\" __global__ void broken(float* y) {\n  y[0] = undefined_name;\n}\n";
    let e = compile_cubin("broken.cu", src, "sm_90")
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.cu") && e.contains("sm_90"), "{e}");
    assert!(
        e.contains("undefined_name") && e.contains("(2)"),
        "log with line number: {e}"
    );
    // a header include fails: NVRTC has no include paths here, kernels must be self-contained
    let e = compile_cubin("inc.cu", "#include <stdint.h>\n", "sm_80")
        .unwrap_err()
        .to_string();
    assert!(e.contains("inc.cu") && e.contains("stdint.h"), "{e}");
}

#[test]
fn disk_cache_reuses_and_repairs_cubins() {
    if !nvrtc_or_skip("nvrtc_cache") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let version = nvrtc_version().unwrap();
    let (file, src) = ("relu.cu", kernel_source("relu.cu").unwrap());
    let first = compile_cubin_cached(file, src, "sm_86", version, Some(dir.path())).unwrap();
    let key = cache_key(src, &compile_options("sm_86"), "sm_86", version);
    let path = dir.path().join(cache_file_name(file, "sm_86", key));
    assert_eq!(std::fs::read(&path).unwrap(), first, "cache file written");
    // a planted (valid-looking) file is served from the cache: the compiler is not run again
    let mut planted = first.clone();
    planted.extend_from_slice(b"cache-hit");
    std::fs::write(&path, &planted).unwrap();
    let second = compile_cubin_cached(file, src, "sm_86", version, Some(dir.path())).unwrap();
    assert_eq!(second, planted);
    // a corrupt file is recompiled and replaced
    std::fs::write(&path, b"garbage").unwrap();
    let third = compile_cubin_cached(file, src, "sm_86", version, Some(dir.path())).unwrap();
    assert_eq!(third, first);
    assert_eq!(std::fs::read(&path).unwrap(), first);
    // another arch is another file
    compile_cubin_cached(file, src, "sm_89", version, Some(dir.path())).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    // no cache directory: still compiles
    assert_eq!(
        compile_cubin_cached(file, src, "sm_86", version, None).unwrap(),
        first
    );
}

/// Registers, spills and shared memory of every kernel on every target, against its launch
/// plan (`Kernel::threads`, `Kernel::min_blocks_per_sm`), and every kernel's parameter sizes in
/// the PTX against the same kernel compiled as C++ for the host emulation, whose launches check
/// the launcher's argument bytes against those sizes (so launcher = host C++ = PTX).
#[test]
fn every_kernel_fits_its_launch_plan_and_takes_what_its_launcher_passes() {
    use dcl::device::cuda::nvrtc::compile;
    use dcl::device::cuda::resources::{
        blocks_per_sm, parse_ptxas_report, ptx_entry_params, TARGETS,
    };
    if !nvrtc_or_skip("nvrtc_resources") {
        return;
    }
    let host = if dcl::device::cuda::host::compiler_available() {
        Some(dcl::device::cuda::CudaDevice::host_emulated().unwrap())
    } else {
        assert!(
            std::env::var("DCL_REQUIRE_CXX").ok().as_deref() != Some("1"),
            "DCL_REQUIRE_CXX=1 but no C++ compiler runs (set CXX)"
        );
        eprintln!("nvrtc_resources: no C++ compiler: PTX parameters not compared");
        None
    };
    let mut problems = Vec::new();
    let mut table = Vec::new();
    for kf in dcl::kernels::all() {
        let src = kernel_source(kf.file).unwrap();
        for sm in &TARGETS {
            let c = compile(kf.file, src, sm.arch, &["--ptxas-options=-v"])
                .unwrap_or_else(|e| panic!("{e}"));
            let report = parse_ptxas_report(&c.log);
            let params = ptx_entry_params(&c.ptx);
            for k in kf.kernels {
                let Some(r) = report.iter().find(|r| r.name == k.name) else {
                    problems.push(format!("{} {}: no ptxas report", k.name, sm.arch));
                    continue;
                };
                let fit = blocks_per_sm(r, k.threads, 0, sm);
                if sm.arch == "sm_90" {
                    table.push(format!(
                        "{:>28} {:>3} regs {:>5} B smem {:>2} blocks/SM (want {})",
                        k.name, r.registers, r.static_smem_bytes, fit, k.min_blocks_per_sm
                    ));
                }
                if fit < k.min_blocks_per_sm {
                    problems.push(format!(
                        "{} on {}: {} registers and {} B of shared memory let {fit} blocks of {} \
                         threads fit on an SM, the plan wants {}",
                        k.name,
                        sm.arch,
                        r.registers,
                        r.static_smem_bytes,
                        k.threads,
                        k.min_blocks_per_sm
                    ));
                }
                if r.spill_stores > 0 || r.spill_loads > 0 {
                    problems.push(format!(
                        "{} on {}: spills ({} B stores, {} B loads)",
                        k.name, sm.arch, r.spill_stores, r.spill_loads
                    ));
                }
                if r.static_smem_bytes > sm.smem_per_block {
                    problems.push(format!(
                        "{} on {}: {} B static shared memory, over the {} B a block gets",
                        k.name, sm.arch, r.static_smem_bytes, sm.smem_per_block
                    ));
                }
                if let Some(dev) = &host {
                    let ptx = params.get(k.name).cloned().unwrap_or_default();
                    let cxx = dev.host_signature(*k).unwrap().unwrap();
                    if ptx != cxx {
                        problems.push(format!(
                            "{} on {}: PTX parameters {ptx:?} bytes, C++ {cxx:?}",
                            k.name, sm.arch
                        ));
                    }
                }
            }
        }
    }
    eprintln!("{}", table.join("\n"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
