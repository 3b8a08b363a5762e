//! NVRTC: CUDA C → CUBIN for a real `sm_XX`, with a disk cache keyed by everything that changes
//! the binary. Needs only libnvrtc (no driver, no GPU), so CI compiles every kernel with it.
use std::ffi::{c_char, CString, OsString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys};

use crate::error::{Error, Result};

/// Whether libnvrtc can be loaded. Never panics (cudarc panics on the first call into a missing
/// library, so every entry point here checks this first).
pub fn nvrtc_present() -> bool {
    // Safety: only tries to dlopen the candidate names.
    unsafe { sys::is_culib_present() }
}

fn require_nvrtc() -> Result<()> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(Error::Device(
            "CUDA unavailable: libnvrtc (NVRTC 13, e.g. libnvrtc.so.13) not found on the library \
             path; install the CUDA 13 runtime compiler or use --device cpu"
                .into(),
        ))
    }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // Safety: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Device(format!("nvrtcVersion failed: {e:?}")))?;
    Ok((major, minor))
}

/// The `sm_XX` numbers this NVRTC can compile for (e.g. 75, 80, 86, 89, 90, ...).
pub fn supported_archs() -> Result<Vec<i32>> {
    require_nvrtc()?;
    let mut n = 0;
    // Safety: valid out-pointer, then a buffer of exactly the reported length.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| Error::Device(format!("nvrtcGetNumSupportedArchs failed: {e:?}")))?;
    let mut archs = vec![0i32; n.max(0) as usize];
    if !archs.is_empty() {
        unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
            .result()
            .map_err(|e| Error::Device(format!("nvrtcGetSupportedArchs failed: {e:?}")))?;
    }
    Ok(archs)
}

/// The options every kernel is compiled with. No fast math: results must match the CPU
/// reference (and `--use_fast_math` is the only switch that enables it; cudarc's
/// `use_fast_math` does not).
pub fn compile_options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()]
}

fn check_arch(file: &str, arch: &str) -> Result<()> {
    let ok = arch
        .strip_prefix("sm_")
        .is_some_and(|d| d.len() >= 2 && d.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        // `compute_XX` would give an empty CUBIN; only real architectures make sense here.
        Err(Error::Device(format!(
            "kernels/{file}: invalid GPU architecture '{arch}' (expected a real one such as sm_90)"
        )))
    }
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

/// Compiles one kernel file to a CUBIN for `arch` (`sm_XX`). A compile error carries the file
/// name and NVRTC's log (with line numbers).
pub fn compile_cubin(file: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    Ok(compile(file, source, arch, &[])?.cubin)
}

/// What NVRTC made of one kernel file.
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// The PTX the CUBIN was assembled from (its `.entry` lines give the parameter sizes).
    pub ptx: String,
    /// NVRTC's log: warnings, and with `--ptxas-options=-v` each kernel's registers, spills,
    /// stack and shared memory.
    pub log: String,
}

/// Compiles with the usual options plus `extra` (e.g. `--ptxas-options=-v`).
pub fn compile(file: &str, source: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
    check_arch(file, arch)?;
    require_nvrtc()?;
    let src = CString::new(source)
        .map_err(|_| Error::Device(format!("kernels/{file}: source contains a NUL byte")))?;
    let name = CString::new(file)
        .map_err(|_| Error::Device(format!("kernel file name {file:?} contains a NUL byte")))?;
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(|e| {
        Error::Device(format!(
            "NVRTC could not create a program for kernels/{file}: {e:?}"
        ))
    })?;
    let mut opts = compile_options(arch);
    opts.extend(extra.iter().map(|o| o.to_string()));
    // Safety: `prog` is live until destroy_program below; src and name outlive it.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_else(|le| format!("(no log: {le:?})"));
    let out = match compiled {
        Ok(()) => unsafe { read_outputs(prog) }
            .map(|(cubin, ptx)| Compiled { cubin, ptx, log })
            .map_err(|e| {
                Error::Device(format!(
                    "NVRTC: reading the output of kernels/{file} ({arch}): {e}"
                ))
            }),
        Err(e) => Err(Error::Device(format!(
            "NVRTC could not compile kernels/{file} for {arch} ({e:?}; options {}):\n{log}",
            opts.join(" ")
        ))),
    };
    // Safety: created above and not destroyed yet. A failure to free is not worth an error.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    let out = out?;
    if out.cubin.is_empty() {
        return Err(Error::Device(format!(
            "NVRTC produced an empty CUBIN for kernels/{file} ({arch})"
        )));
    }
    Ok(out)
}

/// Safety: `prog` must be a successfully compiled, live program.
unsafe fn read_outputs(prog: sys::nvrtcProgram) -> std::result::Result<(Vec<u8>, String), String> {
    let cubin = read_cubin(prog)?;
    let mut size = 0usize;
    sys::nvrtcGetPTXSize(prog, &mut size)
        .result()
        .map_err(|e| format!("{e:?}"))?;
    let mut buf = vec![0u8; size];
    if size > 0 {
        sys::nvrtcGetPTX(prog, buf.as_mut_ptr() as *mut c_char)
            .result()
            .map_err(|e| format!("{e:?}"))?;
    }
    let ptx = String::from_utf8_lossy(&buf)
        .trim_end_matches('\0')
        .to_string();
    Ok((cubin, ptx))
}

/// Safety: `prog` must be a successfully compiled, live program.
unsafe fn read_cubin(prog: sys::nvrtcProgram) -> std::result::Result<Vec<u8>, String> {
    let mut size = 0usize;
    sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(|e| format!("{e:?}"))?;
    let mut buf = vec![0u8; size];
    if size > 0 {
        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
            .result()
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(buf)
}

/// Where compiled kernels are cached: `$DCL_KERNEL_CACHE`, else `$XDG_CACHE_HOME/dcl/kernels`,
/// else `~/.cache/dcl/kernels`; `None` when none of them is set (no disk cache then).
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|k| std::env::var_os(k))
}

/// [`cache_dir`] with the environment passed in (for tests).
pub fn cache_dir_from(get: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
    if let Some(d) = nonempty("DCL_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("dcl").join("kernels"));
    }
    nonempty("HOME").map(|h| PathBuf::from(h).join(".cache").join("dcl").join("kernels"))
}

/// Bumped when the way CUBINs are produced changes in a way the key would not see.
const CACHE_FORMAT: &str = "dcl-cubin-v1";

/// 128-bit FNV-1a over length-prefixed fields: source, options, arch and NVRTC version. Not
/// cryptographic; it only has to tell honest inputs apart.
pub fn cache_key(source: &str, options: &[String], arch: &str, nvrtc: (i32, i32)) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            h ^= b as u128;
            h = h.wrapping_mul(PRIME);
        }
    };
    feed(CACHE_FORMAT.as_bytes());
    feed(source.as_bytes());
    for o in options {
        feed(o.as_bytes());
    }
    feed(arch.as_bytes());
    feed(&nvrtc.0.to_le_bytes());
    feed(&nvrtc.1.to_le_bytes());
    h
}

/// File name of a cached CUBIN: readable prefix plus the key.
pub fn cache_file_name(file: &str, arch: &str, key: u128) -> String {
    let stem = file.strip_suffix(".cu").unwrap_or(file);
    format!("{stem}-{arch}-{key:032x}.cubin")
}

/// A cached CUBIN is used only if it looks like an ELF file; anything else is recompiled.
fn looks_like_cubin(bytes: &[u8]) -> bool {
    bytes.len() > 4 && bytes.starts_with(b"\x7fELF")
}

/// [`compile_cubin`] through the disk cache in `dir` (no cache when `None`). A cache read
/// failure recompiles; a cache write failure only prints a warning.
pub fn compile_cubin_cached(
    file: &str,
    source: &str,
    arch: &str,
    nvrtc_version: (i32, i32),
    dir: Option<&Path>,
) -> Result<Vec<u8>> {
    let path = dir.map(|d| {
        let key = cache_key(source, &compile_options(arch), arch, nvrtc_version);
        d.join(cache_file_name(file, arch, key))
    });
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if looks_like_cubin(&bytes) {
                return Ok(bytes);
            }
        }
    }
    let cubin = compile_cubin(file, source, arch)?;
    if let Some(p) = &path {
        if let Err(e) = crate::fsutil::atomic_write(p, &cubin) {
            eprintln!("warning: kernel cache not written ({e}); kernels will be recompiled");
        }
    }
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            cache_dir_from(env(&[
                ("DCL_KERNEL_CACHE", "/k"),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ])),
            Some(PathBuf::from("/k"))
        );
        assert_eq!(
            cache_dir_from(env(&[
                ("DCL_KERNEL_CACHE", ""),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ])),
            Some(PathBuf::from("/x/dcl/kernels"))
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/dcl/kernels"))
        );
        assert_eq!(cache_dir_from(env(&[])), None);
    }

    #[test]
    fn cache_key_changes_with_every_input() {
        let opts = compile_options("sm_90");
        let base = cache_key("src", &opts, "sm_90", (13, 0));
        assert_eq!(base, cache_key("src", &opts, "sm_90", (13, 0)));
        assert_ne!(base, cache_key("src ", &opts, "sm_90", (13, 0)));
        assert_ne!(
            base,
            cache_key("src", &compile_options("sm_89"), "sm_90", (13, 0))
        );
        assert_ne!(base, cache_key("src", &opts, "sm_89", (13, 0)));
        assert_ne!(base, cache_key("src", &opts, "sm_90", (13, 1)));
        assert_ne!(base, cache_key("src", &opts, "sm_90", (12, 0)));
        // length prefixes keep field boundaries apart
        let a = cache_key("ab", &["c".to_string()], "sm_90", (13, 0));
        let b = cache_key("a", &["bc".to_string()], "sm_90", (13, 0));
        assert_ne!(a, b);
        let name = cache_file_name("conv.cu", "sm_90", base);
        assert!(
            name.starts_with("conv-sm_90-") && name.ends_with(".cubin"),
            "{name}"
        );
        assert_eq!(name.len(), "conv-sm_90-".len() + 32 + ".cubin".len());
    }

    #[test]
    fn options_have_arch_and_no_fast_math() {
        let o = compile_options("sm_86");
        assert!(o.contains(&"--gpu-architecture=sm_86".to_string()));
        assert!(o.contains(&"--std=c++17".to_string()));
        assert!(!o
            .iter()
            .any(|s| s.contains("fast_math") || s.contains("fast-math")));
    }

    #[test]
    fn bad_arch_is_refused_before_nvrtc_is_touched() {
        for arch in ["compute_90", "sm_", "sm_9a", "90", ""] {
            let e = compile_cubin("relu.cu", "", arch).unwrap_err().to_string();
            assert!(
                e.contains("relu.cu") && e.contains("invalid GPU architecture"),
                "{e}"
            );
        }
    }

    #[test]
    fn cubin_check_wants_elf_magic() {
        assert!(looks_like_cubin(b"\x7fELF\x02\x01"));
        assert!(!looks_like_cubin(b""));
        assert!(!looks_like_cubin(b"garbage"));
    }
}
