//! The real GPU behind a [`super::CudaDevice`]: one context, one stream for kernels, copies
//! and cuBLAS, one cuBLAS handle, the stream-ordered memory pool, and the NVRTC-compiled
//! modules. Raw driver calls take the context current on the calling thread first.
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasMath_t;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys as drv;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, LaunchConfig};

use super::gemm::CublasGemm;
use super::{
    check_arch_supported, check_versions, kernels, nvrtc, CudaDeviceInfo, CudaLibraries,
    CudaResultExt,
};
use crate::error::{Error, Result};

pub(super) struct Driver {
    // Field order is drop order: functions and modules before the handle, stream and context.
    /// Pinned host buffers for asynchronous reads, reused (address, floats).
    pinned: Mutex<Vec<(usize, usize)>>,
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    kernel_cache: Option<std::path::PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Driver {
    /// Opens GPU `ordinal`; returns it with what it is.
    pub(super) fn open(ordinal: usize) -> Result<(Driver, CudaDeviceInfo)> {
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
                    &mut keep as *mut u64 as *mut c_void,
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
            emulated: false,
        };
        let d = Driver {
            pinned: Mutex::new(Vec::new()),
            functions: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            blas,
            stream,
            ctx,
            kernel_cache: nvrtc::cache_dir(),
        };
        d.set_tf32(false)?;
        Ok((d, info))
    }

    /// The raw stream handle, with the context made current on this thread (raw driver calls
    /// do not bind it themselves; a failure to bind surfaces at the call that uses the stream).
    fn cu_stream(&self) -> drv::CUstream {
        let _ = self.ctx.bind_to_thread();
        self.stream.cu_stream()
    }

    pub(super) fn alloc(&self, bytes: usize, pool: bool, what: &str) -> Result<u64> {
        let stream = self.cu_stream();
        // Safety: a plain byte allocation of a non-zero size.
        unsafe {
            if pool {
                cudarc::driver::result::malloc_async(stream, bytes)
            } else {
                cudarc::driver::result::malloc_sync(bytes)
            }
        }
        .cuda(what)
    }

    pub(super) fn free(&self, addr: u64, pool: bool) {
        let stream = self.cu_stream();
        // Safety: `addr` came from `alloc` and is freed once (by its owner).
        let r = unsafe {
            if pool {
                cudarc::driver::result::free_async(addr, stream)
            } else {
                cudarc::driver::result::free_sync(addr)
            }
        };
        self.ctx.record_err(r);
    }

    pub(super) fn memset_zeros(&self, addr: u64, bytes: usize) -> Result<()> {
        let stream = self.cu_stream();
        // Safety: the range lies inside a live allocation (the caller's buffer).
        unsafe { cudarc::driver::result::memset_d8_async(addr, 0, bytes, stream) }.cuda("zero fill")
    }

    /// From pageable memory the driver has staged the data when the call returns (CUDA's
    /// documented behaviour for `cuMemcpyHtoDAsync`), so `host` may be dropped at once.
    pub(super) fn htod<T>(&self, host: &[T], dst: u64) -> Result<()> {
        let stream = self.cu_stream();
        // Safety: `dst` holds host.len() elements.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, host, stream) }
            .cuda("host-to-device copy")
    }

    /// Copies and waits (so `host` is complete when this returns).
    pub(super) fn dtoh<T>(&self, src: u64, host: &mut [T]) -> Result<()> {
        let stream = self.cu_stream();
        // Safety: `host` holds as many elements as `src` addresses, and outlives the wait.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(host, src, stream) }
            .cuda("device-to-host copy")?;
        self.synchronize()
    }

    pub(super) fn dtod(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        let stream = self.cu_stream();
        // Safety: both ranges lie inside live allocations.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, stream) }
            .cuda("device-to-device copy")
    }

    pub(super) fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().cuda("stream synchronisation")?;
        self.ctx.check_err().cuda("deferred error")
    }

    pub(super) fn pool_reserved_bytes(&self) -> Result<u64> {
        let mut v: u64 = 0;
        unsafe {
            let p = cudarc::driver::result::device::get_default_mem_pool(self.ctx.cu_device())
                .cuda("default memory pool")?;
            cudarc::driver::result::mem_pool::get_attribute(
                p,
                drv::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                &mut v as *mut u64 as *mut c_void,
            )
            .cuda("memory pool reserved size")?;
        }
        Ok(v)
    }

    pub(super) fn set_tf32(&self, on: bool) -> Result<()> {
        let mode = if on {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*self.blas.handle(), mode) }
            .result()
            .cuda("cublasSetMathMode")
    }

    /// Queues a copy of `len` floats at `src` into pinned host memory and an event after it;
    /// [`Driver::finish_read`] waits for that event only, not for work queued later.
    pub(super) fn read_async(&self, src: u64, len: usize) -> Result<PinnedRead> {
        let taken = {
            let mut pool = lock(&self.pinned);
            let i = pool.iter().position(|&(_, cap)| cap >= len);
            i.map(|i| pool.swap_remove(i))
        };
        let (addr, cap) = match taken {
            Some(slot) => slot,
            None => {
                let cap = len.max(64);
                let _ = self.ctx.bind_to_thread();
                // Safety: a plain pinned allocation, freed by the pool when the driver goes.
                let p = unsafe { cudarc::driver::result::malloc_host(cap * 4, 0) }
                    .cuda("pinned host allocation")?;
                (p as usize, cap)
            }
        };
        let stream = self.cu_stream();
        // Safety: the pinned slot holds `cap` >= `len` floats and is ours until finish_read.
        let host = unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, len) };
        let copied = unsafe { cudarc::driver::result::memcpy_dtoh_async(host, src, stream) }
            .cuda("asynchronous device-to-host copy");
        let read = PinnedRead {
            addr,
            cap,
            len,
            event: None,
        };
        copied?;
        Ok(PinnedRead {
            event: Some(self.record_event()?),
            ..read
        })
    }

    /// Waits for `r`'s copy and returns the values; the pinned slot goes back to the pool.
    pub(super) fn finish_read(&self, mut r: PinnedRead) -> Result<Vec<f32>> {
        let waited = match r.event.take() {
            Some(e) => e.synchronize().cuda("waiting for a read"),
            None => Ok(()),
        };
        // Safety: the copy into the slot has completed (or never started).
        let v = unsafe { std::slice::from_raw_parts(r.addr as *const f32, r.len) }.to_vec();
        lock(&self.pinned).push((r.addr, r.cap));
        waited?;
        self.ctx.check_err().cuda("deferred error")?;
        Ok(v)
    }

    pub(super) fn record_event(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(drv::CUevent_flags::CU_EVENT_DEFAULT))
            .cuda("recording a timing event")
    }

    fn module(
        &self,
        file: &'static str,
        arch: &str,
        nvrtc_version: (i32, i32),
    ) -> Result<Arc<CudaModule>> {
        let mut modules = lock(&self.modules);
        if let Some(m) = modules.get(file) {
            return Ok(m.clone());
        }
        let source = kernels::kernel_source(file)?;
        let cubin = nvrtc::compile_cubin_cached(
            file,
            source,
            arch,
            nvrtc_version,
            self.kernel_cache.as_deref(),
        )?;
        let m = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .cuda(&format!("loading kernels/{file} ({arch})"))?;
        modules.insert(file, m.clone());
        Ok(m)
    }

    /// Entry point `name` of `kernels/<file>`: compiled (or read from the disk cache) and loaded
    /// on first use, then served from memory.
    pub(super) fn function(
        &self,
        file: &'static str,
        name: &'static str,
        info: &CudaDeviceInfo,
    ) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.functions).get(&(file, name)) {
            return Ok(f.clone());
        }
        let m = self.module(file, &info.arch, info.nvrtc_version)?;
        let f = m
            .load_function(name)
            .cuda(&format!("kernel {name} in kernels/{file}"))?;
        lock(&self.functions).insert((file, name), f.clone());
        Ok(f)
    }

    pub(super) fn launch(
        &self,
        f: &CudaFunction,
        cfg: &LaunchConfig,
        args: &mut [*mut c_void],
        name: &str,
    ) -> Result<()> {
        let stream = self.cu_stream();
        // Safety: each pointer addresses an argument's bytes, alive until this call returns
        // (the driver copies them at launch); buffer addresses come from live borrows.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                cfg.grid_dim,
                cfg.block_dim,
                cfg.shared_mem_bytes,
                stream,
                args,
            )
        }
        .cuda(name)
    }

    /// cuBLAS SGEMM (strided-batched) on the device's stream, column-major.
    ///
    /// # Safety
    /// The addresses must hold what the dimensions, leading dimensions and strides address.
    pub(super) unsafe fn sgemm(
        &self,
        cb: &CublasGemm,
        first: u64,
        second: u64,
        out: u64,
    ) -> Result<()> {
        self.ctx.bind_to_thread().cuda("binding the context")?;
        let op = |t: bool| {
            if t {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let handle = *self.blas.handle();
        let (a, b, c) = (first as *const f32, second as *const f32, out as *mut f32);
        // One strided-batched call for every batch size: with batch 1 cuBLAS runs it as a plain
        // GEMM (the strides are not read).
        cudarc::cublas::result::sgemm_strided_batched(
            handle,
            op(cb.transa),
            op(cb.transb),
            cb.m,
            cb.n,
            cb.k,
            &cb.alpha,
            a,
            cb.lda,
            cb.stride_a,
            b,
            cb.ldb,
            cb.stride_b,
            &cb.beta,
            c,
            cb.ldc,
            cb.stride_c,
            cb.batch,
        )
        .cuda("cublasSgemmStridedBatched")
    }

    /// `cublasGemmStridedBatchedEx` with the compute type of `math` on the device's stream.
    /// `Fp32` is `CUBLAS_COMPUTE_32F`, or `_PEDANTIC` while the handle's math mode allows TF32
    /// (`handle_tf32`), so that it stays strict FP32 either way.
    ///
    /// # Safety
    /// The addresses must hold what the dimensions, leading dimensions and strides address, in
    /// the element type `math` names.
    pub(super) unsafe fn gemm_ex(
        &self,
        cb: &CublasGemm,
        math: super::gemm::GemmMath,
        handle_tf32: bool,
        first: u64,
        second: u64,
        out: u64,
    ) -> Result<()> {
        use super::gemm::GemmMath;
        use cudarc::cublas::sys::{cublasComputeType_t as Ct, cublasGemmAlgo_t, cudaDataType_t};
        self.ctx.bind_to_thread().cuda("binding the context")?;
        let op = |t: bool| {
            if t {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (ab, compute) = match math {
            GemmMath::Fp32 if handle_tf32 => {
                (cudaDataType_t::CUDA_R_32F, Ct::CUBLAS_COMPUTE_32F_PEDANTIC)
            }
            GemmMath::Fp32 => (cudaDataType_t::CUDA_R_32F, Ct::CUBLAS_COMPUTE_32F),
            GemmMath::Tf32 => (cudaDataType_t::CUDA_R_32F, Ct::CUBLAS_COMPUTE_32F_FAST_TF32),
            GemmMath::Bf16 => (cudaDataType_t::CUDA_R_16BF, Ct::CUBLAS_COMPUTE_32F),
        };
        cudarc::cublas::result::gemm_strided_batched_ex(
            *self.blas.handle(),
            op(cb.transa),
            op(cb.transb),
            cb.m,
            cb.n,
            cb.k,
            &cb.alpha as *const f32 as *const c_void,
            first as *const c_void,
            ab,
            cb.lda,
            cb.stride_a,
            second as *const c_void,
            ab,
            cb.ldb,
            cb.stride_b,
            &cb.beta as *const f32 as *const c_void,
            out as *mut c_void,
            cudaDataType_t::CUDA_R_32F,
            cb.ldc,
            cb.stride_c,
            cb.batch,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
        .cuda(&format!("cublasGemmStridedBatchedEx ({})", math.name()))
    }
}

/// A pending read into a pinned slot of the driver's pool.
pub(super) struct PinnedRead {
    addr: usize,
    cap: usize,
    len: usize,
    event: Option<CudaEvent>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        for (addr, _) in lock(&self.pinned).drain(..) {
            // Safety: allocated by malloc_host and no longer in use (no read is pending once
            // the device is being dropped: a PendingRead holds the device).
            let _ = unsafe { cudarc::driver::result::free_host(addr as *mut c_void) };
        }
    }
}
