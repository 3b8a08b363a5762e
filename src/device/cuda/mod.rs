//! The CUDA backend's device layer: one [`CudaDevice`] per GPU (context, a single stream for
//! kernels, copies and cuBLAS, one cuBLAS handle, a stream-ordered memory pool that keeps freed
//! memory, counted allocations, and the NVRTC-compiled kernels loaded once per process), and
//! [`GpuBuffer`], a typed allocation on it (a tensor's is `Storage::Cuda` in `crate::tensor`).
//!
//! Libraries are loaded at run time (cudarc `dynamic-loading`), so the crate builds and its CPU
//! path runs with no CUDA anywhere; [`CudaDevice::new`] probes libcuda, libnvrtc and libcublas
//! first and answers a one-line [`Error::Device`] instead of cudarc's panic.
//!
//! Kernels (`kernels/*.cu`, embedded by build.rs) are compiled by NVRTC to a CUBIN for the
//! device's own `sm_XX` on first use and cached on disk ([`nvrtc`]). The device knows no op: it
//! holds the embedded sources, compiles and loads a file's module on first use
//! ([`CudaDevice::function`]) and launches what a launcher assembles ([`CudaDevice::launch`]).
//! The launchers live beside each op in `src/ops/<op>/cuda.rs` (and `src/optim/cuda.rs`), each
//! family listing its own [`KernelFile`]; `crate::kernels` joins the lists. The device's own
//! primitives (fill, in-place add) are in [`primitives`]. What has run on a GPU is recorded in
//! BENCHMARKS.md.
pub mod buffer;
pub mod gemm;
pub mod kernels;
pub mod launch;
pub mod nvrtc;
pub mod primitives;

pub use buffer::{GpuBuffer, GpuRead, GpuView, GpuViewMut, GpuWrite};
pub use launch::{Kernel, KernelFile, KernelParam, Launch};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::sys::cublasMath_t;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys as drv;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig,
    ValidAsZeroBits,
};

use crate::error::{Error, Result};

pub use kernels::KERNEL_SOURCES;
pub use nvrtc::compile_cubin;

/// Maps a CUDA/cuBLAS/NVRTC error to [`Error::Device`] naming what failed.
pub trait CudaResultExt<T> {
    fn cuda(self, what: &str) -> Result<T>;
}

impl<T, E: std::fmt::Debug> CudaResultExt<T> for std::result::Result<T, E> {
    fn cuda(self, what: &str) -> Result<T> {
        self.map_err(|e| Error::Device(format!("CUDA {what}: {e:?}")))
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u32 {}
    impl Sealed for i32 {}
}

/// Element types of device buffers: plain numbers for which every bit pattern is a value, so a
/// buffer that has not been written yet is garbage, never undefined behaviour.
pub trait DeviceScalar: DeviceRepr + ValidAsZeroBits + Copy + Default + sealed::Sealed {}
impl DeviceScalar for f32 {}
impl DeviceScalar for u32 {}
impl DeviceScalar for i32 {}

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
}

impl std::fmt::Display for CudaDeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// The process-wide handles opened by [`CudaDevice::shared`].
static DEVICES: OnceLock<Mutex<HashMap<usize, CudaDevice>>> = OnceLock::new();

/// The GPUs this process has opened through [`CudaDevice::shared`] (none without CUDA).
pub fn opened_devices() -> Vec<CudaDevice> {
    match DEVICES.get() {
        Some(m) => {
            let mut v: Vec<CudaDevice> = lock(m).values().cloned().collect();
            v.sort_by_key(|d| d.ordinal());
            v
        }
        None => Vec::new(),
    }
}

struct Inner {
    // Field order is drop order: functions and modules before the handle, stream and context.
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    info: CudaDeviceInfo,
    max_blocks: u32,
    kernel_cache: Option<std::path::PathBuf>,
    alloc_calls: AtomicU64,
    alloc_bytes: AtomicU64,
    tf32: AtomicBool,
}

/// A GPU: cheap to clone (shared), `Send + Sync`.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({})", self.inner.info)
    }
}

impl PartialEq for CudaDevice {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for CudaDevice {}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the maps valid (inserts are atomic).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CudaDevice {
    /// Opens GPU `ordinal` with a new handle. Prefer [`CudaDevice::shared`], which keeps one
    /// per device and process.
    pub fn new(ordinal: usize) -> Result<Self> {
        CudaLibraries::probe().require_all()?;
        let count = match CudaContext::device_count() {
            Ok(n) => n.max(0) as usize,
            Err(e) if e.0 == drv::CUresult::CUDA_ERROR_NO_DEVICE => 0,
            Err(e) => {
                return Err(Error::Device(format!(
                    "CUDA driver initialisation failed: {e:?}"
                )))
            }
        };
        if count == 0 {
            return Err(Error::Device(
                "CUDA unavailable: the driver reports no CUDA device; use --device cpu".into(),
            ));
        }
        if ordinal >= count {
            return Err(Error::Device(format!(
                "cuda:{ordinal}: no such device ({count} CUDA device(s): cuda:0..cuda:{})",
                count - 1
            )));
        }
        let mut dv = 0;
        // Safety: valid out-pointer; libcuda is present (probed above).
        unsafe { drv::cuDriverGetVersion(&mut dv) }
            .result()
            .cuda("cuDriverGetVersion")?;
        let driver_version = (dv / 1000, (dv % 1000) / 10);
        let nvrtc_version = nvrtc::nvrtc_version()?;
        check_versions(driver_version, nvrtc_version)?;

        let ctx = CudaContext::new(ordinal).cuda(&format!("context on cuda:{ordinal}"))?;
        // Before any allocation: no per-allocation events. One stream, so no cross-stream
        // hazards for the events to guard against.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability().cuda("compute capability")?;
        check_arch_supported(cc, &nvrtc::supported_archs()?, nvrtc_version)?;
        let arch = format!("sm_{}{}", cc.0, cc.1);
        let stream = ctx.new_stream().cuda("stream creation")?;
        let pool = ctx.has_async_alloc();
        if pool {
            // The default release threshold (0) hands freed memory back to the OS at every
            // synchronisation; keep it in the pool so steady-state steps allocate nothing new.
            unsafe {
                let p = cudarc::driver::result::device::get_default_mem_pool(ctx.cu_device())
                    .cuda("default memory pool")?;
                let mut keep: u64 = u64::MAX;
                cudarc::driver::result::mem_pool::set_attribute(
                    p,
                    drv::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut keep as *mut u64 as *mut std::ffi::c_void,
                )
                .cuda("memory pool release threshold")?;
            }
        }
        let blas = CudaBlas::new(stream.clone()).cuda("cuBLAS handle")?;
        let mut cublas_version = 0;
        unsafe { cudarc::cublas::sys::cublasGetVersion_v2(*blas.handle(), &mut cublas_version) }
            .result()
            .cuda("cublasGetVersion")?;
        let sm_count = ctx
            .attribute(drv::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .cuda("multiprocessor count")?
            .max(1) as u32;
        let info = CudaDeviceInfo {
            ordinal,
            name: ctx.name().cuda("device name")?,
            compute_capability: cc,
            arch,
            sm_count,
            total_mem: ctx.total_mem().cuda("device memory size")?,
            driver_version,
            nvrtc_version,
            cublas_version,
            stream_ordered_pool: pool,
        };
        let dev = CudaDevice {
            inner: Arc::new(Inner {
                functions: Mutex::new(HashMap::new()),
                modules: Mutex::new(HashMap::new()),
                blas,
                stream,
                ctx,
                max_blocks: launch::max_blocks_for(sm_count),
                kernel_cache: nvrtc::cache_dir(),
                info,
                alloc_calls: AtomicU64::new(0),
                alloc_bytes: AtomicU64::new(0),
                tf32: AtomicBool::new(false),
            }),
        };
        dev.set_tf32(false)?;
        Ok(dev)
    }

    /// The process-wide handle of GPU `ordinal` (one context, stream and cuBLAS handle per
    /// device), opened on first use.
    pub fn shared(ordinal: usize) -> Result<Self> {
        let mut map = lock(DEVICES.get_or_init(|| Mutex::new(HashMap::new())));
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let d = CudaDevice::new(ordinal)?;
        map.insert(ordinal, d.clone());
        Ok(d)
    }

    pub fn info(&self) -> &CudaDeviceInfo {
        &self.inner.info
    }
    pub fn ordinal(&self) -> usize {
        self.inner.info.ordinal
    }
    pub fn arch(&self) -> &str {
        &self.inner.info.arch
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }
    /// The raw handle of the one stream every kernel, copy and GEMM of this device runs on, with the context made current on this thread (the raw driver
    /// calls below do not bind it themselves).
    fn cu_stream(&self) -> drv::CUstream {
        // A failure to bind surfaces at the call that uses the stream.
        let _ = self.inner.ctx.bind_to_thread();
        self.inner.stream.cu_stream()
    }
    pub(super) fn blas(&self) -> &CudaBlas {
        &self.inner.blas
    }

    /// Grid cap for grid-stride kernels on this device.
    pub fn max_blocks(&self) -> u32 {
        self.inner.max_blocks
    }
    /// 256-thread launch for `n` elements (None when n is 0).
    pub fn cfg(&self, n: u64) -> Option<LaunchConfig> {
        launch::elementwise(n, self.inner.max_blocks)
    }

    fn count_alloc(&self, bytes: usize) {
        self.inner.alloc_calls.fetch_add(1, Ordering::Relaxed);
        self.inner
            .alloc_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `n` uninitialised elements (stream-ordered from the pool when the device has one). A
    /// zero-length buffer is not allocated at all: the driver never sees a 0-byte request.
    pub fn alloc<T: DeviceScalar>(&self, n: usize) -> Result<GpuBuffer<T>> {
        let bytes = n.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            Error::Device(format!("allocating {n} elements: the size overflows usize"))
        })?;
        self.count_alloc(bytes);
        if n == 0 {
            return Ok(GpuBuffer::from_raw(self, 0, 0));
        }
        let stream = self.cu_stream();
        // Safety: a plain byte allocation; T is a plain number type, so unwritten memory is
        // only garbage values.
        let addr = unsafe {
            if self.inner.info.stream_ordered_pool {
                cudarc::driver::result::malloc_async(stream, bytes)
            } else {
                cudarc::driver::result::malloc_sync(bytes)
            }
        }
        .cuda(&format!(
            "allocating {n} x {} bytes on cuda:{}",
            std::mem::size_of::<T>(),
            self.ordinal()
        ))?;
        Ok(GpuBuffer::from_raw(self, addr, n))
    }

    /// Returns an allocation of [`CudaDevice::alloc`] (from `GpuBuffer`'s drop). A failure is
    /// recorded on the context and surfaces at the next [`CudaDevice::synchronize`].
    pub(super) fn free(&self, addr: u64) {
        let stream = self.cu_stream();
        // Safety: `addr` came from `alloc` on this device and is freed once (by its owner).
        let r = unsafe {
            if self.inner.info.stream_ordered_pool {
                cudarc::driver::result::free_async(addr, stream)
            } else {
                cudarc::driver::result::free_sync(addr)
            }
        };
        self.inner.ctx.record_err(r);
    }

    /// `n` zeroed elements.
    pub fn alloc_zeros<T: DeviceScalar>(&self, n: usize) -> Result<GpuBuffer<T>> {
        let mut s = self.alloc::<T>(n)?;
        self.memset_zeros(&mut s)?;
        Ok(s)
    }

    /// Zeroes a buffer or view (stream-ordered).
    pub fn memset_zeros<T: DeviceScalar>(&self, s: &mut impl GpuWrite<T>) -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        let stream = self.cu_stream();
        // Safety: the range lies inside a live allocation of this device.
        unsafe {
            cudarc::driver::result::memset_d8_async(
                s.addr(),
                0,
                s.len() * std::mem::size_of::<T>(),
                stream,
            )
        }
        .cuda("zero fill")
    }

    /// Copies host data to a new device buffer. From pageable memory the driver has staged the
    /// data when the call returns (CUDA's documented behaviour for `cuMemcpyHtoDAsync`), so
    /// `host` may be dropped at once.
    pub fn htod<T: DeviceScalar>(&self, host: &[T]) -> Result<GpuBuffer<T>> {
        let mut s = self.alloc::<T>(host.len())?;
        self.copy_htod(host, &mut s)?;
        Ok(s)
    }

    /// Copies host data into an existing buffer or view of the same length (see
    /// [`CudaDevice::htod`]).
    pub fn copy_htod<T: DeviceScalar>(&self, host: &[T], dst: &mut impl GpuWrite<T>) -> Result<()> {
        if dst.len() != host.len() {
            return Err(Error::shape(
                "copy_htod",
                format!("{} elements into a buffer of {}", host.len(), dst.len()),
            ));
        }
        if host.is_empty() {
            return Ok(());
        }
        let stream = self.cu_stream();
        // Safety: `dst` holds host.len() elements; pageable `host` is staged before return.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.addr(), host, stream) }
            .cuda("host-to-device copy")
    }

    /// Copies a device buffer (or view) to the host, waiting for the stream; also surfaces any
    /// asynchronous error of earlier work.
    pub fn dtoh<T: DeviceScalar>(&self, s: &impl GpuRead<T>) -> Result<Vec<T>> {
        let mut host = vec![T::default(); s.len()];
        if !host.is_empty() {
            let stream = self.cu_stream();
            // Safety: `host` holds s.len() elements and outlives the synchronisation below.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut host, s.addr(), stream) }
                .cuda("device-to-host copy")?;
        }
        self.synchronize()?;
        Ok(host)
    }

    /// Waits for all work on the stream and reports any error recorded meanwhile (launch
    /// errors are asynchronous and show up here).
    pub fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .cuda("stream synchronisation")?;
        self.inner.ctx.check_err().cuda("deferred error")
    }

    /// Device allocations requested through [`CudaDevice::alloc`] / `alloc_zeros` / `htod`
    /// since the device was opened.
    pub fn alloc_count(&self) -> u64 {
        self.inner.alloc_calls.load(Ordering::Relaxed)
    }
    /// Bytes requested through the counted allocators.
    pub fn alloc_bytes(&self) -> u64 {
        self.inner.alloc_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the memory pool holds from the driver (used or cached); after warm-up it must not
    /// grow from step to step. `None` without a stream-ordered pool.
    pub fn pool_reserved_bytes(&self) -> Result<Option<u64>> {
        if !self.inner.info.stream_ordered_pool {
            return Ok(None);
        }
        let mut v: u64 = 0;
        unsafe {
            let p =
                cudarc::driver::result::device::get_default_mem_pool(self.inner.ctx.cu_device())
                    .cuda("default memory pool")?;
            cudarc::driver::result::mem_pool::get_attribute(
                p,
                drv::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                &mut v as *mut u64 as *mut std::ffi::c_void,
            )
            .cuda("memory pool reserved size")?;
        }
        Ok(Some(v))
    }

    /// TF32 tensor-core math for cuBLAS SGEMM (`--tf32`); off means true FP32 (unless the
    /// NVIDIA_TF32_OVERRIDE environment variable forces it).
    pub fn set_tf32(&self, on: bool) -> Result<()> {
        let mode = if on {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*self.inner.blas.handle(), mode) }
            .result()
            .cuda("cublasSetMathMode")?;
        self.inner.tf32.store(on, Ordering::Relaxed);
        Ok(())
    }
    pub fn tf32(&self) -> bool {
        self.inner.tf32.load(Ordering::Relaxed)
    }

    /// A copy of a device buffer (or view) in a new counted allocation, on the stream.
    pub fn dtod<T: DeviceScalar>(&self, src: &impl GpuRead<T>) -> Result<GpuBuffer<T>> {
        let mut dst = self.alloc::<T>(src.len())?;
        self.copy_dtod(src, &mut dst)?;
        Ok(dst)
    }

    /// Copies `src` into the start of `dst`, which must hold at least as many elements.
    pub fn copy_dtod<T: DeviceScalar>(
        &self,
        src: &impl GpuRead<T>,
        dst: &mut impl GpuWrite<T>,
    ) -> Result<()> {
        if dst.len() < src.len() {
            return Err(Error::shape(
                "copy_dtod",
                format!("{} elements into a buffer of {}", src.len(), dst.len()),
            ));
        }
        if src.is_empty() {
            return Ok(());
        }
        let stream = self.cu_stream();
        // Safety: both ranges lie inside live allocations of this device.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.addr(),
                src.addr(),
                src.len() * std::mem::size_of::<T>(),
                stream,
            )
        }
        .cuda("device-to-device copy")
    }

    /// A timing event recorded on the stream now (timing enabled, unlike cudarc's default).
    pub fn record_event(&self) -> Result<CudaEvent> {
        self.inner
            .stream
            .record_event(Some(drv::CUevent_flags::CU_EVENT_DEFAULT))
            .cuda("recording a timing event")
    }

    /// Milliseconds of stream time between two events from [`CudaDevice::record_event`]
    /// (waits for `end`).
    pub fn elapsed_ms(&self, start: &CudaEvent, end: &CudaEvent) -> Result<f64> {
        start
            .elapsed_ms(end)
            .map(|ms| ms as f64)
            .cuda("event timing")
    }

    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = lock(&self.inner.modules);
        if let Some(m) = modules.get(file) {
            return Ok(m.clone());
        }
        let source = kernels::kernel_source(file)?;
        let cubin = nvrtc::compile_cubin_cached(
            file,
            source,
            self.arch(),
            self.inner.info.nvrtc_version,
            self.inner.kernel_cache.as_deref(),
        )?;
        let m = self
            .inner
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .cuda(&format!("loading kernels/{file} ({})", self.arch()))?;
        modules.insert(file, m.clone());
        Ok(m)
    }

    /// Entry point `k`: its file compiled (or read from the disk cache) and loaded on first
    /// use, then served from memory.
    pub fn function(&self, k: Kernel) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.inner.functions).get(&(k.file, k.name)) {
            return Ok(f.clone());
        }
        let m = self.module(k.file)?;
        let f = m
            .load_function(k.name)
            .cuda(&format!("kernel {} in kernels/{}", k.name, k.file))?;
        lock(&self.inner.functions).insert((k.file, k.name), f.clone());
        Ok(f)
    }

    /// Starts a launch of `k` (see [`Launch`]).
    pub fn launch(&self, k: Kernel) -> Launch<'_> {
        Launch::new(self, k)
    }

    /// Compiles and loads every entry point of `files` now (start-up, benches), so the first
    /// training step does not pay for NVRTC.
    pub fn load_kernels(&self, files: &[KernelFile]) -> Result<()> {
        for file in files {
            for k in file.kernels {
                self.function(*k)?;
            }
        }
        Ok(())
    }
}

/// Checks that a device buffer holds exactly `want` elements.
pub(crate) fn check_len<T>(
    op: &'static str,
    what: &str,
    s: &impl GpuRead<T>,
    want: usize,
) -> Result<()> {
    if s.len() != want {
        return Err(Error::shape(
            op,
            format!("{what} holds {} elements, expected {want}", s.len()),
        ));
    }
    Ok(())
}

/// Product of dimensions with overflow checked.
pub(crate) fn numel(op: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d)
            .ok_or_else(|| Error::shape(op, format!("{dims:?} overflows usize")))
    })
}

/// A dimension passed to a kernel as `unsigned int`.
pub(crate) fn dim_u32(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(op, format!("{what} = {v} exceeds u32")))
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

    #[test]
    fn opening_a_device_without_cuda_is_an_error_not_a_panic() {
        // On a machine with a GPU this opens it; without one (CI) it must fail cleanly.
        match CudaDevice::new(0) {
            Ok(d) => assert!(d.arch().starts_with("sm_")),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("CUDA") && !msg.contains('\n'), "{msg}");
            }
        }
        if !CudaLibraries::probe().driver {
            assert!(CudaDevice::shared(3).is_err());
        }
    }

    #[test]
    fn size_helpers() {
        assert_eq!(numel("t", &[2, 3, 4]).unwrap(), 24);
        assert!(numel("t", &[usize::MAX, 2]).is_err());
        assert!(dim_u32("t", "h", 1 << 33).is_err());
        assert_eq!(dim_u32("t", "h", 7).unwrap(), 7);
    }
}
