//! The host-emulated CUDA device (`--device cuda-host`): every kernel file compiled as C++ with
//! [the shim](host/shim.h) in front (CUDA execution semantics: blocks of fibers, barriers, warp
//! operations, per-block shared memory, real atomics) into a shared library, loaded and
//! launched with exactly the grid, block and argument bytes the launcher gives a GPU; cuBLAS
//! replaced by the CPU GEMM through the same column-major operand mapping. So every op and
//! whole training steps run through the CUDA launch code on a machine without a GPU.
//!
//! Device memory is host memory with guard bytes on both sides, filled with NaN bytes when
//! allocated (a kernel that reads what nobody wrote sees NaN, as it would see garbage on a GPU);
//! a guard overwritten by a kernel is an error naming the kernel. Launches run to completion
//! before `launch` returns (one stream, in order), so the stream model holds trivially.
//!
//! The compiler is `$CXX` or `c++`; libraries are cached by content hash under the kernel cache
//! folder (`host-<hash>.so`). `DCL_CUDA_HOST_TSAN=1` builds them with ThreadSanitizer (run the
//! process with the TSan runtime preloaded, see scripts/README.md).
use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::kernels::{extern_c_kernels, kernel_source};
use crate::error::{Error, Result};

const SHIM: &str = include_str!("host/shim.h");

/// Guard bytes before and after every allocation.
const GUARD: usize = 256;
const GUARD_BYTE: u8 = 0xA5;
/// Fill of fresh allocations: 0xFF bytes are a NaN as f32 (and u32::MAX as an index).
const FRESH_BYTE: u8 = 0xFF;

/// `struct Config` of the shim.
#[repr(C)]
struct ShimConfig {
    grid: [u32; 3],
    block: [u32; 3],
    shmem: u32,
    workers: u32,
    always_fibers: u32,
    launch_sync: *mut u8,
}

/// The addresses the shim's ThreadSanitizer annotations order launches on (`Config`).
static LAUNCH_SYNC: [std::sync::atomic::AtomicU8; 2] = [
    std::sync::atomic::AtomicU8::new(0),
    std::sync::atomic::AtomicU8::new(0),
];

type LaunchFn =
    unsafe extern "C" fn(*const ShimConfig, *mut *mut c_void, *mut c_char, usize) -> i32;
type SignatureFn = unsafe extern "C" fn(*mut usize, i32) -> i32;

/// One kernel file's library and its entry points.
struct HostModule {
    entries: HashMap<String, (LaunchFn, SignatureFn)>,
    // Kept last: the function pointers above point into it.
    _lib: libloading::Library,
}

/// What the device holds in emulation.
pub(crate) struct HostBackend {
    modules: Mutex<HashMap<&'static str, Arc<HostModule>>>,
    /// Live allocations: data address → bytes.
    allocs: Mutex<BTreeMap<u64, usize>>,
    /// The first error found after a launch returned (a guard overwritten at free), reported at
    /// the next synchronisation like a GPU's asynchronous fault.
    deferred: Mutex<Option<String>>,
    workers: u32,
    tsan: bool,
    /// Every block on fibers, not only the first of each launch (ThreadSanitizer runs, or
    /// `DCL_CUDA_HOST_FIBERS=always`).
    always_fibers: bool,
    cache: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn compiler() -> String {
    std::env::var("CXX")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "c++".into())
}

/// Whether a C++ compiler runs here (the emulated device needs one).
pub fn compiler_available() -> bool {
    Command::new(compiler())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn compiler_version(cxx: &str) -> Result<String> {
    let out = Command::new(cxx).arg("--version").output().map_err(|e| {
        Error::Device(format!(
            "cuda-host needs a C++17 compiler: running `{cxx} --version` failed ({e}); set CXX"
        ))
    })?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string())
}

/// The C++ translation unit for one kernel file: the shim, the kernels in a namespace, and
/// for each entry point a launcher and a signature function with C linkage.
pub fn translation_unit(file: &str, source: &str) -> String {
    let mut tu = String::with_capacity(SHIM.len() + source.len() + 4096);
    tu.push_str(SHIM);
    tu.push_str("\nnamespace dcl_k {\n");
    tu.push_str(&format!("#line 1 \"{file}\"\n"));
    tu.push_str(source);
    tu.push_str("\n} // namespace dcl_k\n");
    for name in extern_c_kernels(source) {
        tu.push_str(&format!(
            "extern \"C\" int dcl_launch_{name}(const dcl_shim::Config* c, void** a, char* e, size_t n) \
             {{ return dcl_shim::launch(dcl_k::{name}, \"{name}\", c, a, e, n); }}\n\
             extern \"C\" int dcl_signature_{name}(size_t* s, int m) \
             {{ return dcl_shim::signature(dcl_k::{name}, s, m); }}\n"
        ));
    }
    tu
}

/// FNV-1a over the parts, as a cache key.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0u8]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl HostBackend {
    pub(crate) fn new() -> Result<Self> {
        let tsan = std::env::var("DCL_CUDA_HOST_TSAN").ok().as_deref() == Some("1");
        let workers = std::env::var("DCL_CUDA_HOST_WORKERS")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&w| w > 0)
            .unwrap_or(2);
        let cache = super::nvrtc::cache_dir()
            .unwrap_or_else(|| std::env::temp_dir().join("dcl-kernels"))
            .join("host");
        compiler_version(&compiler())?;
        let always_fibers =
            tsan || std::env::var("DCL_CUDA_HOST_FIBERS").ok().as_deref() == Some("always");
        Ok(HostBackend {
            modules: Mutex::new(HashMap::new()),
            allocs: Mutex::new(BTreeMap::new()),
            deferred: Mutex::new(None),
            workers,
            tsan,
            always_fibers,
            cache,
        })
    }

    fn flags(&self) -> Vec<&'static str> {
        let mut f = vec!["-std=c++17", "-fPIC", "-shared", "-pthread", "-w"];
        if self.tsan {
            f.extend(["-O1", "-g", "-fsanitize=thread", "-DDCL_SHIM_TSAN"]);
        } else {
            f.push("-O2");
        }
        f
    }

    /// Compiles (or finds in the cache) the library of `kernels/<file>`.
    fn library(&self, file: &str, source: &str) -> Result<PathBuf> {
        let cxx = compiler();
        let version = compiler_version(&cxx)?;
        let flags = self.flags();
        let tu = translation_unit(file, source);
        let key = fnv(&[&tu, &cxx, &version, &flags.join(" ")]);
        let stem = file.trim_end_matches(".cu");
        let lib = self.cache.join(format!("host-{stem}-{key:016x}.so"));
        if lib.is_file() {
            return Ok(lib);
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| {
            Error::Device(format!(
                "cuda-host: cannot create {}: {e}",
                self.cache.display()
            ))
        })?;
        // Unique temporary names in the cache folder, renamed into place when complete.
        let tmp = tempfile_in(&self.cache, stem)?;
        let cpp = tmp.with_extension("cpp");
        let so = tmp.with_extension("so.tmp");
        std::fs::write(&cpp, &tu).map_err(|e| {
            Error::Device(format!("cuda-host: cannot write {}: {e}", cpp.display()))
        })?;
        let out = Command::new(&cxx)
            .args(&flags)
            .arg("-o")
            .arg(&so)
            .arg(&cpp)
            .output()
            .map_err(|e| Error::Device(format!("cuda-host: running {cxx}: {e}")))?;
        let _ = std::fs::remove_file(&cpp);
        let _ = std::fs::remove_file(&tmp);
        if !out.status.success() {
            let _ = std::fs::remove_file(&so);
            let log = String::from_utf8_lossy(&out.stderr);
            let first: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("error"))
                .take(8)
                .collect();
            return Err(Error::Device(format!(
                "cuda-host: compiling kernels/{file} as C++ failed: {}",
                first.join(" | ")
            )));
        }
        std::fs::rename(&so, &lib).map_err(|e| {
            Error::Device(format!(
                "cuda-host: cannot move {} into place: {e}",
                so.display()
            ))
        })?;
        Ok(lib)
    }

    fn module(&self, file: &'static str) -> Result<Arc<HostModule>> {
        if let Some(m) = lock(&self.modules).get(file) {
            return Ok(m.clone());
        }
        let source = kernel_source(file)?;
        let path = self.library(file, source)?;
        // Safety: the library is ours, built from the shim and a kernel file; loading runs no
        // initialiser beyond the C++ runtime's.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| Error::Device(format!("cuda-host: loading {}: {e}", path.display())))?;
        let mut entries = HashMap::new();
        for name in extern_c_kernels(source) {
            // Safety: the symbols were generated with exactly these signatures.
            let (l, s) = unsafe {
                let l: libloading::Symbol<LaunchFn> = lib
                    .get(format!("dcl_launch_{name}\0").as_bytes())
                    .map_err(|e| Error::Device(format!("cuda-host: {name}: {e}")))?;
                let s: libloading::Symbol<SignatureFn> = lib
                    .get(format!("dcl_signature_{name}\0").as_bytes())
                    .map_err(|e| Error::Device(format!("cuda-host: {name}: {e}")))?;
                (*l, *s)
            };
            entries.insert(name, (l, s));
        }
        let m = Arc::new(HostModule { entries, _lib: lib });
        lock(&self.modules).insert(file, m.clone());
        Ok(m)
    }

    /// The parameter sizes of `name` in `file`, as the C++ compiler laid them out.
    pub(crate) fn signature(&self, file: &'static str, name: &str) -> Result<Vec<usize>> {
        let m = self.module(file)?;
        let (_, sig) = m.entries.get(name).ok_or_else(|| {
            Error::Device(format!("cuda-host: no kernel {name} in kernels/{file}"))
        })?;
        let mut sizes = [0usize; 64];
        // Safety: writes at most 64 sizes.
        let n = unsafe { sig(sizes.as_mut_ptr(), 64) };
        Ok(sizes[..n.clamp(0, 64) as usize].to_vec())
    }

    /// Runs kernel `name` of `file` over the whole grid with the argument bytes `args` (one
    /// pointer per parameter, as `cuLaunchKernel` takes them); `buffers` are the addresses the
    /// launch passes as pointers, whose guards are checked afterwards.
    pub(crate) fn launch(
        &self,
        file: &'static str,
        name: &str,
        cfg: &cudarc::driver::LaunchConfig,
        args: &mut [*mut c_void],
        buffers: &[u64],
    ) -> Result<()> {
        let m = self.module(file)?;
        let (launch, _) = m.entries.get(name).ok_or_else(|| {
            Error::Device(format!("cuda-host: no kernel {name} in kernels/{file}"))
        })?;
        let c = ShimConfig {
            grid: [cfg.grid_dim.0, cfg.grid_dim.1, cfg.grid_dim.2],
            block: [cfg.block_dim.0, cfg.block_dim.1, cfg.block_dim.2],
            shmem: cfg.shared_mem_bytes,
            workers: self.workers,
            always_fibers: self.always_fibers as u32,
            launch_sync: LAUNCH_SYNC.as_ptr() as *mut u8,
        };
        let mut err = vec![0u8; 1024];
        // Safety: `args` points at the argument bytes of the kernel's parameters (their count
        // and sizes are checked against `signature` by the caller); buffers are live.
        let rc = unsafe {
            launch(
                &c,
                args.as_mut_ptr(),
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(Error::Device(format!(
                "cuda-host: {}",
                String::from_utf8_lossy(&err[..end])
            )));
        }
        for &addr in buffers {
            self.check_guards_of(addr, name)?;
        }
        Ok(())
    }

    /// The allocation holding `addr` has intact guards.
    fn check_guards_of(&self, addr: u64, kernel: &str) -> Result<()> {
        let allocs = lock(&self.allocs);
        let Some((&base, &bytes)) = allocs.range(..=addr).next_back() else {
            return Ok(()); // not one of ours (a null or empty buffer)
        };
        if addr > base + bytes as u64 {
            return Ok(());
        }
        if let Some(side) = broken_guard(base, bytes) {
            return Err(Error::Device(format!(
                "cuda-host: kernel {kernel} wrote {side} a buffer of {bytes} bytes"
            )));
        }
        Ok(())
    }

    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64> {
        let layout = layout(bytes)?;
        // Safety: a non-zero size (the guards).
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::Device(format!(
                "cuda-host: out of host memory allocating {bytes} bytes"
            )));
        }
        // Safety: the allocation holds GUARD + bytes + GUARD bytes.
        unsafe {
            std::ptr::write_bytes(p, GUARD_BYTE, GUARD);
            std::ptr::write_bytes(p.add(GUARD), FRESH_BYTE, bytes);
            std::ptr::write_bytes(p.add(GUARD + bytes), GUARD_BYTE, GUARD);
        }
        let addr = p as u64 + GUARD as u64;
        lock(&self.allocs).insert(addr, bytes);
        Ok(addr)
    }

    pub(crate) fn free(&self, addr: u64) {
        let Some(bytes) = lock(&self.allocs).remove(&addr) else {
            self.defer(format!(
                "cuda-host: freeing 0x{addr:x}, which is not allocated"
            ));
            return;
        };
        if let Some(side) = broken_guard(addr, bytes) {
            self.defer(format!(
                "cuda-host: a kernel wrote {side} a buffer of {bytes} bytes (found when freeing it)"
            ));
        }
        // Safety: allocated by `alloc` with this layout.
        unsafe { std::alloc::dealloc((addr - GUARD as u64) as *mut u8, layout(bytes).unwrap()) };
    }

    fn defer(&self, e: String) {
        lock(&self.deferred).get_or_insert(e);
    }

    /// The first deferred error since the last call.
    pub(crate) fn take_error(&self) -> Option<String> {
        lock(&self.deferred).take()
    }

    /// Bytes in live allocations.
    pub(crate) fn live_bytes(&self) -> u64 {
        lock(&self.allocs).values().map(|&b| b as u64).sum()
    }

    /// Checks that `addr..addr+bytes` lies inside one live allocation (copies and GEMMs are
    /// bounds-checked here, as the driver would fault).
    pub(crate) fn check_range(&self, addr: u64, bytes: usize, what: &str) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let allocs = lock(&self.allocs);
        match allocs.range(..=addr).next_back() {
            Some((&base, &len)) if addr + bytes as u64 <= base + len as u64 => Ok(()),
            _ => Err(Error::Device(format!(
                "cuda-host: {what} of {bytes} bytes at 0x{addr:x} is outside every allocation"
            ))),
        }
    }
}

fn layout(bytes: usize) -> Result<std::alloc::Layout> {
    std::alloc::Layout::from_size_align(bytes + 2 * GUARD, 256)
        .map_err(|_| Error::Device(format!("cuda-host: cannot allocate {bytes} bytes")))
}

/// "before" or "past the end of" when a guard of the allocation at `addr` was overwritten.
fn broken_guard(addr: u64, bytes: usize) -> Option<&'static str> {
    // Safety: `addr` is a live allocation of `bytes` with its guards around it.
    let (before, after) = unsafe {
        (
            std::slice::from_raw_parts((addr - GUARD as u64) as *const u8, GUARD),
            std::slice::from_raw_parts((addr + bytes as u64) as *const u8, GUARD),
        )
    };
    if before.iter().any(|&b| b != GUARD_BYTE) {
        Some("before the start of")
    } else if after.iter().any(|&b| b != GUARD_BYTE) {
        Some("past the end of")
    } else {
        None
    }
}

/// A fresh, exclusively created file in `dir` (its name is only a prefix for the compiler's
/// outputs next to it).
fn tempfile_in(dir: &Path, stem: &str) -> Result<PathBuf> {
    for i in 0..1000u32 {
        let p = dir.join(format!(".{stem}-{}-{i}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::Device(format!(
                    "cuda-host: cannot create a temporary file in {}: {e}",
                    dir.display()
                )))
            }
        }
    }
    Err(Error::Device(format!(
        "cuda-host: no free temporary name in {}",
        dir.display()
    )))
}

/// Rounds to TF32 (10 explicit mantissa bits, round to nearest even), as tensor cores read
/// FP32 operands in TF32 mode.
pub fn round_tf32(v: f32) -> f32 {
    if !v.is_finite() {
        return v;
    }
    let b = v.to_bits();
    let lsb = (b >> 13) & 1;
    f32::from_bits(b.wrapping_add(0x0fff + lsb) & !0x1fff)
}

/// cuBLAS's column-major `C = alpha·op(A)·op(B) + beta·C` for `batch` matrices, on host
/// memory, through the CPU GEMM (`gemm` crate) with the same strides.
///
/// # Safety
/// The addresses must hold what the dimensions, leading dimensions and strides address.
pub(crate) unsafe fn sgemm_col_major(
    g: &super::gemm::CublasGemm,
    a: u64,
    b: u64,
    c: u64,
    tf32: bool,
) {
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    for p in 0..g.batch as usize {
        let ap = (a as *const f32).add(p * g.stride_a as usize);
        let bp = (b as *const f32).add(p * g.stride_b as usize);
        let cp = (c as *mut f32).add(p * g.stride_c as usize);
        // op(A) is m×k: element (i, l) at a[i + l·lda], or a[l + i·lda] transposed.
        let (a_rs, a_cs) = if g.transa {
            (g.lda as isize, 1)
        } else {
            (1, g.lda as isize)
        };
        let (b_rs, b_cs) = if g.transb {
            (g.ldb as isize, 1)
        } else {
            (1, g.ldb as isize)
        };
        let (a_tf, b_tf);
        let (ap, bp) = if tf32 {
            let (a_len, b_len) = (
                (m.max(1) - 1) * a_rs as usize + (k.max(1) - 1) * a_cs as usize + 1,
                (k.max(1) - 1) * b_rs as usize + (n.max(1) - 1) * b_cs as usize + 1,
            );
            a_tf = std::slice::from_raw_parts(ap, a_len)
                .iter()
                .map(|&v| round_tf32(v))
                .collect::<Vec<_>>();
            b_tf = std::slice::from_raw_parts(bp, b_len)
                .iter()
                .map(|&v| round_tf32(v))
                .collect::<Vec<_>>();
            (a_tf.as_ptr(), b_tf.as_ptr())
        } else {
            (ap, bp)
        };
        if k == 0 {
            for j in 0..n {
                for i in 0..m {
                    let v = cp.add(i + j * g.ldc as usize);
                    *v = if g.beta == 0.0 { 0.0 } else { g.beta * *v };
                }
            }
            continue;
        }
        gemm::gemm(
            m,
            n,
            k,
            cp,
            g.ldc as isize,
            1,
            g.beta != 0.0,
            ap,
            a_cs,
            a_rs,
            bp,
            b_cs,
            b_rs,
            g.beta,
            g.alpha,
            false,
            false,
            false,
            if m * n * k >= 1 << 18 {
                gemm::Parallelism::Rayon(rayon::current_num_threads())
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// Elements of A and B that a column-major strided-batched GEMM addresses (all its batches).
fn addressed_lens(g: &super::gemm::CublasGemm) -> (usize, usize) {
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let one = |rows: usize, cols: usize, ld: usize, trans: bool| {
        // op(X) is rows×cols; stored cols×rows when transposed, column-major with `ld`
        let (r, c) = if trans { (cols, rows) } else { (rows, cols) };
        if r == 0 || c == 0 {
            0
        } else {
            (c - 1) * ld + r
        }
    };
    let a = one(m, k, g.lda as usize, g.transa);
    let b = one(k, n, g.ldb as usize, g.transb);
    let batches = (g.batch.max(1) - 1) as usize;
    (
        if a == 0 {
            0
        } else {
            batches * g.stride_a as usize + a
        },
        if b == 0 {
            0
        } else {
            batches * g.stride_b as usize + b
        },
    )
}

/// bf16 bits widened to f32 (exact).
pub fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// [`sgemm_col_major`] with an explicit compute type: FP32, TF32 (operands rounded as tensor
/// cores read them) or bf16 operands (bit patterns, widened exactly) with FP32 accumulation.
///
/// # Safety
/// The addresses must hold what the dimensions, leading dimensions and strides address, in the
/// element type `math` names (u16 for bf16).
pub(crate) unsafe fn gemm_ex_col_major(
    g: &super::gemm::CublasGemm,
    math: super::gemm::GemmMath,
    a: u64,
    b: u64,
    c: u64,
) {
    use super::gemm::GemmMath;
    match math {
        GemmMath::Fp32 => sgemm_col_major(g, a, b, c, false),
        GemmMath::Tf32 => sgemm_col_major(g, a, b, c, true),
        GemmMath::Bf16 => {
            let (a_len, b_len) = addressed_lens(g);
            let widen = |p: u64, n: usize| -> Vec<f32> {
                std::slice::from_raw_parts(p as *const u16, n)
                    .iter()
                    .map(|&v| bf16_to_f32(v))
                    .collect()
            };
            let (aw, bw) = (widen(a, a_len), widen(b, b_len));
            sgemm_col_major(g, aw.as_ptr() as u64, bw.as_ptr() as u64, c, false)
        }
    }
}
