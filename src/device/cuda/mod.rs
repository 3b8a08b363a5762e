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
mod driver;
pub mod gemm;
pub mod host;
mod info;
pub mod kernels;
pub mod launch;
pub mod nvrtc;
pub mod primitives;
pub mod resources;

pub use buffer::{GpuBuffer, GpuRead, GpuView, GpuViewMut, GpuWrite};
pub use info::{check_arch_supported, check_versions, CudaDeviceInfo, CudaLibraries};
pub use launch::{Kernel, KernelFile, KernelParam, Launch};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaEvent, DeviceRepr, LaunchConfig, ValidAsZeroBits};

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
    impl Sealed for u16 {}
}

/// Element types of device buffers: plain numbers for which every bit pattern is a value, so a
/// buffer that has not been written yet is garbage, never undefined behaviour.
pub trait DeviceScalar: DeviceRepr + ValidAsZeroBits + Copy + Default + sealed::Sealed {}
impl DeviceScalar for f32 {}
impl DeviceScalar for u32 {}
impl DeviceScalar for i32 {}
/// bf16 values as their bit patterns (the GEMM operands of `gemm::GemmMath::Bf16`).
impl DeviceScalar for u16 {}

/// The process-wide handles opened by [`CudaDevice::shared`] (and the emulated device).
static DEVICES: OnceLock<Mutex<HashMap<usize, CudaDevice>>> = OnceLock::new();

/// The ordinal the host-emulated device reports (never a GPU's).
pub const HOST_ORDINAL: usize = usize::MAX;

/// The GPUs (and the emulated device) this process has opened through [`CudaDevice::shared`]
/// or [`CudaDevice::host_emulated`].
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

/// What executes the device's work.
enum Backend {
    Driver(driver::Driver),
    Host(host::HostBackend),
}

struct Inner {
    backend: Backend,
    info: CudaDeviceInfo,
    /// Every kernel launched so far (coverage checks).
    launched: Mutex<std::collections::BTreeSet<Kernel>>,
    max_blocks: u32,
    alloc_calls: AtomicU64,
    alloc_bytes: AtomicU64,
    tf32: AtomicBool,
}

/// A GPU, or the host emulation of one: cheap to clone (shared), `Send + Sync`.
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

/// Values being copied to the host without waiting for the work queued after them
/// ([`CudaDevice::read_async`]): `wait` blocks only until they have arrived.
pub struct PendingRead {
    dev: CudaDevice,
    state: Option<PendingState>,
}

enum PendingState {
    Ready(Vec<f32>),
    Driver(driver::PinnedRead),
}

impl PendingRead {
    /// The values (waits for their copy, and reports any error of the work before it).
    pub fn wait(mut self) -> Result<Vec<f32>> {
        match self.state.take() {
            Some(PendingState::Ready(v)) => Ok(v),
            Some(PendingState::Driver(r)) => match &self.dev.inner.backend {
                Backend::Driver(d) => d.finish_read(r),
                Backend::Host(_) => unreachable!("a driver read on the host emulation"),
            },
            None => Err(Error::Device("a pending read waited on twice".into())),
        }
    }
}

impl Drop for PendingRead {
    fn drop(&mut self) {
        // A read dropped unread still returns its pinned slot to the pool.
        if let (Some(PendingState::Driver(r)), Backend::Driver(d)) =
            (self.state.take(), &self.dev.inner.backend)
        {
            let _ = d.finish_read(r);
        }
    }
}

/// A timing event: a CUDA event on a GPU, the host clock in emulation.
pub enum GpuEvent {
    Driver(CudaEvent),
    Host(std::time::Instant),
}

impl CudaDevice {
    fn from_backend(backend: Backend, info: CudaDeviceInfo) -> Self {
        CudaDevice {
            inner: Arc::new(Inner {
                backend,
                launched: Mutex::new(Default::default()),
                max_blocks: launch::max_blocks_for(info.sm_count),
                info,
                alloc_calls: AtomicU64::new(0),
                alloc_bytes: AtomicU64::new(0),
                tf32: AtomicBool::new(false),
            }),
        }
    }

    /// Opens GPU `ordinal` with a new handle. Prefer [`CudaDevice::shared`], which keeps one
    /// per device and process.
    pub fn new(ordinal: usize) -> Result<Self> {
        let (d, info) = driver::Driver::open(ordinal)?;
        Ok(Self::from_backend(Backend::Driver(d), info))
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

    /// The process-wide host emulation of a GPU (`--device cuda-host`): the CUDA kernels run
    /// as C++ with CUDA semantics on the CPU (see [`host`]). Needs a C++17 compiler.
    pub fn host_emulated() -> Result<Self> {
        let mut map = lock(DEVICES.get_or_init(|| Mutex::new(HashMap::new())));
        if let Some(d) = map.get(&HOST_ORDINAL) {
            return Ok(d.clone());
        }
        let backend = host::HostBackend::new()?;
        let info = CudaDeviceInfo {
            ordinal: HOST_ORDINAL,
            name: "host emulation (kernels as C++ with CUDA semantics)".into(),
            compute_capability: (0, 0),
            arch: "host".into(),
            // A few "SMs": grids of several blocks, never one.
            sm_count: 4,
            total_mem: 0,
            driver_version: (0, 0),
            nvrtc_version: (0, 0),
            cublas_version: 0,
            stream_ordered_pool: false,
            emulated: true,
        };
        let d = Self::from_backend(Backend::Host(backend), info);
        map.insert(HOST_ORDINAL, d.clone());
        Ok(d)
    }

    pub fn info(&self) -> &CudaDeviceInfo {
        &self.inner.info
    }
    pub fn ordinal(&self) -> usize {
        self.inner.info.ordinal
    }
    /// `cuda:N`, or `cuda-host` for the emulation.
    pub fn name(&self) -> String {
        if self.is_emulated() {
            "cuda-host".into()
        } else {
            format!("cuda:{}", self.ordinal())
        }
    }
    pub fn is_emulated(&self) -> bool {
        matches!(self.inner.backend, Backend::Host(_))
    }
    pub fn arch(&self) -> &str {
        &self.inner.info.arch
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
        let what = format!(
            "allocating {n} x {} bytes on {}",
            std::mem::size_of::<T>(),
            self.name()
        );
        let addr = match &self.inner.backend {
            Backend::Driver(d) => d.alloc(bytes, self.inner.info.stream_ordered_pool, &what)?,
            Backend::Host(h) => h.alloc(bytes)?,
        };
        Ok(GpuBuffer::from_raw(self, addr, n))
    }

    /// Returns an allocation of [`CudaDevice::alloc`] (from `GpuBuffer`'s drop). A failure is
    /// recorded and surfaces at the next [`CudaDevice::synchronize`].
    pub(super) fn free(&self, addr: u64) {
        match &self.inner.backend {
            Backend::Driver(d) => d.free(addr, self.inner.info.stream_ordered_pool),
            Backend::Host(h) => h.free(addr),
        }
    }

    /// `n` zeroed elements.
    pub fn alloc_zeros<T: DeviceScalar>(&self, n: usize) -> Result<GpuBuffer<T>> {
        let mut s = self.alloc::<T>(n)?;
        self.memset_zeros(&mut s)?;
        Ok(s)
    }

    /// Zeroes a buffer or view (stream-ordered).
    pub fn memset_zeros<T: DeviceScalar>(&self, s: &mut impl GpuWrite<T>) -> Result<()> {
        let bytes = s.len() * std::mem::size_of::<T>();
        if bytes == 0 {
            return Ok(());
        }
        match &self.inner.backend {
            Backend::Driver(d) => d.memset_zeros(s.addr(), bytes),
            Backend::Host(h) => {
                h.check_range(s.addr(), bytes, "zero fill")?;
                // Safety: the range lies inside a live allocation (checked).
                unsafe { std::ptr::write_bytes(s.addr() as *mut u8, 0, bytes) };
                Ok(())
            }
        }
    }

    /// Copies host data to a new device buffer (`host` may be dropped as soon as this returns).
    pub fn htod<T: DeviceScalar>(&self, host: &[T]) -> Result<GpuBuffer<T>> {
        let mut s = self.alloc::<T>(host.len())?;
        self.copy_htod(host, &mut s)?;
        Ok(s)
    }

    /// Copies host data into an existing buffer or view of the same length.
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
        match &self.inner.backend {
            Backend::Driver(d) => d.htod(host, dst.addr()),
            Backend::Host(h) => {
                let bytes = std::mem::size_of_val(host);
                h.check_range(dst.addr(), bytes, "host-to-device copy")?;
                // Safety: `dst` holds host.len() elements (checked).
                unsafe {
                    std::ptr::copy_nonoverlapping(host.as_ptr(), dst.addr() as *mut T, host.len())
                };
                Ok(())
            }
        }
    }

    /// Copies a device buffer (or view) to the host, waiting for the stream; also surfaces any
    /// asynchronous error of earlier work.
    pub fn dtoh<T: DeviceScalar>(&self, s: &impl GpuRead<T>) -> Result<Vec<T>> {
        let mut host = vec![T::default(); s.len()];
        if !host.is_empty() {
            match &self.inner.backend {
                Backend::Driver(d) => d.dtoh(s.addr(), &mut host)?,
                Backend::Host(h) => {
                    h.check_range(
                        s.addr(),
                        std::mem::size_of_val(&host[..]),
                        "device-to-host copy",
                    )?;
                    // Safety: `s` holds host.len() elements (checked).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            s.addr() as *const T,
                            host.as_mut_ptr(),
                            host.len(),
                        )
                    };
                }
            }
        }
        self.synchronize()?;
        Ok(host)
    }

    /// Starts copying `s` to the host and returns at once: the training loop reads a step's loss
    /// while the next step is being queued, instead of waiting for the stream to drain.
    pub fn read_async(&self, s: &impl GpuRead<f32>) -> Result<PendingRead> {
        let state = match &self.inner.backend {
            Backend::Driver(d) if !s.is_empty() => {
                PendingState::Driver(d.read_async(s.addr(), s.len())?)
            }
            _ => PendingState::Ready(self.dtoh(s)?),
        };
        Ok(PendingRead {
            dev: self.clone(),
            state: Some(state),
        })
    }

    /// Waits for all work on the stream and reports any error recorded meanwhile (launch
    /// errors are asynchronous and show up here).
    pub fn synchronize(&self) -> Result<()> {
        match &self.inner.backend {
            Backend::Driver(d) => d.synchronize(),
            Backend::Host(h) => h.take_error().map_or(Ok(()), |e| Err(Error::Device(e))),
        }
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
    /// grow from step to step. `None` without a stream-ordered pool (and in emulation).
    pub fn pool_reserved_bytes(&self) -> Result<Option<u64>> {
        match &self.inner.backend {
            Backend::Driver(d) if self.inner.info.stream_ordered_pool => {
                d.pool_reserved_bytes().map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Bytes in live allocations, where the device can tell (the emulation).
    pub fn live_bytes(&self) -> Option<u64> {
        match &self.inner.backend {
            Backend::Host(h) => Some(h.live_bytes()),
            Backend::Driver(_) => None,
        }
    }

    /// TF32 tensor-core math for SGEMM (`--tf32`); off means true FP32 (unless the
    /// NVIDIA_TF32_OVERRIDE environment variable forces it). The emulation rounds the operands
    /// to TF32 as tensor cores read them.
    pub fn set_tf32(&self, on: bool) -> Result<()> {
        if let Backend::Driver(d) = &self.inner.backend {
            d.set_tf32(on)?;
        }
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
        let bytes = src.len() * std::mem::size_of::<T>();
        if bytes == 0 {
            return Ok(());
        }
        match &self.inner.backend {
            Backend::Driver(d) => d.dtod(src.addr(), dst.addr(), bytes),
            Backend::Host(h) => {
                h.check_range(src.addr(), bytes, "device-to-device copy (source)")?;
                h.check_range(dst.addr(), bytes, "device-to-device copy (destination)")?;
                // Safety: both ranges lie inside live allocations (checked); copy handles
                // overlap.
                unsafe { std::ptr::copy(src.addr() as *const u8, dst.addr() as *mut u8, bytes) };
                Ok(())
            }
        }
    }

    /// A timing event recorded on the stream now (timing enabled, unlike cudarc's default).
    pub fn record_event(&self) -> Result<GpuEvent> {
        match &self.inner.backend {
            Backend::Driver(d) => d.record_event().map(GpuEvent::Driver),
            Backend::Host(_) => Ok(GpuEvent::Host(std::time::Instant::now())),
        }
    }

    /// Milliseconds of stream time between two events from [`CudaDevice::record_event`]
    /// (waits for `end`).
    pub fn elapsed_ms(&self, start: &GpuEvent, end: &GpuEvent) -> Result<f64> {
        match (start, end) {
            (GpuEvent::Driver(a), GpuEvent::Driver(b)) => {
                a.elapsed_ms(b).map(|ms| ms as f64).cuda("event timing")
            }
            (GpuEvent::Host(a), GpuEvent::Host(b)) => {
                Ok(b.saturating_duration_since(*a).as_secs_f64() * 1e3)
            }
            _ => Err(Error::Device(
                "timing events of two different devices".into(),
            )),
        }
    }

    /// Starts a launch of `k` (see [`Launch`]).
    pub fn launch(&self, k: Kernel) -> Launch<'_> {
        Launch::new(self, k)
    }

    /// Runs one assembled launch: the argument bytes go to the driver (or the emulation) as
    /// `cuLaunchKernel` takes them; `buffers` are the addresses passed as pointers.
    pub(super) fn run_launch(
        &self,
        k: Kernel,
        cfg: &LaunchConfig,
        args: &mut [*mut std::ffi::c_void],
        arg_sizes: &[usize],
        buffers: &[u64],
    ) -> Result<()> {
        lock(&self.inner.launched).insert(k);
        match &self.inner.backend {
            Backend::Driver(d) => {
                let f = d.function(k.file, k.name, &self.inner.info)?;
                d.launch(&f, cfg, args, k.name)
            }
            Backend::Host(h) => {
                let want = h.signature(k.file, k.name)?;
                if want != arg_sizes {
                    return Err(Error::Device(format!(
                        "kernel {}: the launcher passes arguments of {arg_sizes:?} bytes, the \
                         kernel's parameters are {want:?} bytes",
                        k.name
                    )));
                }
                h.launch(k.file, k.name, cfg, args, buffers)
            }
        }
    }

    /// Every kernel launched on this device since it was opened (for coverage checks: the
    /// parity tests must run each entry point).
    pub fn launched_kernels(&self) -> std::collections::BTreeSet<Kernel> {
        lock(&self.inner.launched).clone()
    }

    /// The parameter sizes of kernel `k` as compiled by the emulation's C++ compiler (an ABI
    /// check needs no GPU); `None` on a GPU.
    pub fn host_signature(&self, k: Kernel) -> Result<Option<Vec<usize>>> {
        match &self.inner.backend {
            Backend::Host(h) => h.signature(k.file, k.name).map(Some),
            Backend::Driver(_) => Ok(None),
        }
    }

    /// Compiles and loads every entry point of `files` now (start-up, benches), so the first
    /// training step does not pay for the compiler.
    pub fn load_kernels(&self, files: &[KernelFile]) -> Result<()> {
        for file in files {
            for k in file.kernels {
                match &self.inner.backend {
                    Backend::Driver(d) => d.function(k.file, k.name, &self.inner.info).map(drop)?,
                    Backend::Host(h) => h.signature(k.file, k.name).map(drop)?,
                }
            }
        }
        Ok(())
    }

    /// Column-major SGEMM as cuBLAS defines it (`first` is cuBLAS's A): cuBLAS on a GPU, the
    /// CPU GEMM with the same strides in emulation.
    ///
    /// # Safety
    /// The addresses must hold what the dimensions, leading dimensions and strides address.
    pub(super) unsafe fn sgemm_col_major(
        &self,
        cb: &gemm::CublasGemm,
        first: u64,
        second: u64,
        out: u64,
    ) -> Result<()> {
        match &self.inner.backend {
            Backend::Driver(d) => d.sgemm(cb, first, second, out),
            Backend::Host(_) => {
                host::sgemm_col_major(cb, first, second, out, self.tf32());
                Ok(())
            }
        }
    }

    /// Column-major GEMM with an explicit compute type (`cublasGemmStridedBatchedEx`): A and B
    /// f32 (`Fp32`, `Tf32`) or bf16 bit patterns (`Bf16`), C f32. In emulation the operands
    /// are rounded as tensor cores read them (TF32) or widened exactly (bf16), then the CPU
    /// GEMM runs with the same strides.
    ///
    /// # Safety
    /// The addresses must hold what the dimensions, leading dimensions and strides address, in
    /// the element type `math` names.
    pub(super) unsafe fn gemm_ex_col_major(
        &self,
        cb: &gemm::CublasGemm,
        math: gemm::GemmMath,
        first: u64,
        second: u64,
        out: u64,
    ) -> Result<()> {
        match &self.inner.backend {
            Backend::Driver(d) => d.gemm_ex(cb, math, self.tf32(), first, second, out),
            Backend::Host(_) => {
                host::gemm_ex_col_major(cb, math, first, second, out);
                Ok(())
            }
        }
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
