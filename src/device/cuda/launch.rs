//! Kernel launches. [`Kernel`] names an entry point of a kernel file, [`KernelFile`] lists a
//! file's entry points (each op family declares its own; the device only knows the mechanism),
//! and [`Launch`] is the one way a launcher calls a kernel:
//! `dev.launch(K).arg(&params).buf(x).out(&mut y).run(cfg)`, the arguments in the order of the
//! kernel's parameter list, each passed by value as the driver's `cuLaunchKernel` expects.
//!
//! Configurations: every grid-stride kernel uses 256-thread blocks with 64-bit indices, so the
//! grid can be clamped (a u64 element count never overflows a u32 grid size) and a launch covers
//! any size. `LaunchConfig::for_num_elems` (1024 threads, u32 count) is never used.
use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::LaunchConfig;

use super::buffer::{GpuRead, GpuWrite};
use super::CudaDevice;
use crate::error::{Error, Result};

/// Threads per block for every kernel (the reduction kernels rely on a multiple of 32).
pub const BLOCK: u32 = 256;

/// An `extern "C" __global__` entry point of `kernels/<file>`, with the launch shape its
/// launcher plans for: blocks of at most `threads`, of which at least `min_blocks_per_sm` must
/// fit on one multiprocessor (CI checks the compiled kernel's registers and shared memory
/// against this on every target architecture).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kernel {
    pub file: &'static str,
    pub name: &'static str,
    pub threads: u32,
    pub min_blocks_per_sm: u32,
}

impl Kernel {
    /// A kernel launched in blocks of [`BLOCK`] threads, 4 of which must fit on an SM (1024
    /// resident threads: at most 64 registers a thread).
    pub const fn new(file: &'static str, name: &'static str) -> Self {
        Kernel {
            file,
            name,
            threads: BLOCK,
            min_blocks_per_sm: 4,
        }
    }

    /// The same kernel with another occupancy floor (a kernel whose work per thread needs
    /// more registers).
    pub const fn min_blocks(mut self, blocks: u32) -> Self {
        self.min_blocks_per_sm = blocks;
        self
    }
}

/// A kernel file and every entry point its launchers call. CI checks the list both ways against
/// the source (each `extern "C" __global__` is listed, each listed name is compiled).
#[derive(Clone, Copy, Debug)]
pub struct KernelFile {
    pub file: &'static str,
    pub kernels: &'static [Kernel],
}

impl KernelFile {
    pub const fn new(file: &'static str, kernels: &'static [Kernel]) -> Self {
        KernelFile { file, kernels }
    }
}

/// Plain values passed to a kernel by value: scalars and `#[repr(C)]` parameter structs that
/// mirror a struct of the kernel source field for field.
///
/// # Safety
/// The type's bytes must be exactly what the kernel's parameter of that position expects (same
/// size, layout and alignment as the CUDA C type), and every bit pattern must be valid.
pub unsafe trait KernelParam: Copy + 'static {}
unsafe impl KernelParam for u32 {}
unsafe impl KernelParam for i32 {}
unsafe impl KernelParam for u64 {}
unsafe impl KernelParam for f32 {}

/// Largest argument passed by value, in bytes (the parameter structs are well under it).
const MAX_ARG_BYTES: usize = 128;

/// One argument's bytes, 8-byte aligned, as `cuLaunchKernel` reads them through a pointer.
#[derive(Clone, Copy)]
struct ArgSlot {
    bytes: [u64; MAX_ARG_BYTES / 8],
    size: usize,
}

impl ArgSlot {
    fn of<T: Copy>(v: &T) -> ArgSlot {
        let size = std::mem::size_of::<T>();
        assert!(
            size <= MAX_ARG_BYTES && std::mem::align_of::<T>() <= 8,
            "kernel argument of {size} bytes"
        );
        let mut bytes = [0u64; MAX_ARG_BYTES / 8];
        // Safety: `size` bytes of a Copy value into a larger, 8-aligned array.
        unsafe {
            std::ptr::copy_nonoverlapping(
                v as *const T as *const u8,
                bytes.as_mut_ptr() as *mut u8,
                size,
            )
        };
        ArgSlot { bytes, size }
    }
}

/// A kernel launch being assembled; see the module docs. Buffers are borrowed for `'a`, so none
/// can be dropped or moved while its address is being passed (dropping one after the launch is
/// fine: frees are ordered on the same stream).
#[must_use = "a launch does nothing until .run(cfg)"]
pub struct Launch<'a> {
    dev: &'a CudaDevice,
    kernel: Kernel,
    args: Vec<ArgSlot>,
    /// The addresses passed as buffer pointers (the emulation checks their guards).
    buffers: Vec<u64>,
    _borrows: PhantomData<&'a mut ()>,
}

impl<'a> Launch<'a> {
    pub(super) fn new(dev: &'a CudaDevice, kernel: Kernel) -> Self {
        Launch {
            dev,
            kernel,
            args: Vec::with_capacity(8),
            buffers: Vec::new(),
            _borrows: PhantomData,
        }
    }

    /// A scalar or parameter struct, by value.
    pub fn arg<P: KernelParam>(mut self, v: &P) -> Self {
        self.args.push(ArgSlot::of(v));
        self
    }

    /// A buffer the kernel reads (a `const T*` parameter).
    pub fn buf<T>(mut self, b: &'a impl GpuRead<T>) -> Self {
        self.args.push(ArgSlot::of(&b.addr()));
        self.buffers.push(b.addr());
        self
    }

    /// A buffer the kernel writes (a `T*` parameter).
    pub fn out<T>(mut self, b: &'a mut impl GpuWrite<T>) -> Self {
        self.args.push(ArgSlot::of(&b.addr()));
        self.buffers.push(b.addr());
        self
    }

    /// Bytes of each argument in order (for checking against the compiled kernel's parameters).
    pub fn arg_sizes(&self) -> Vec<usize> {
        self.args.iter().map(|a| a.size).collect()
    }

    /// Queues the kernel with `cfg`; `None` (nothing to do, e.g. zero elements) launches
    /// nothing. Errors of the kernel itself are asynchronous: they surface at the next
    /// synchronisation.
    pub fn run(self, cfg: Option<LaunchConfig>) -> Result<()> {
        let Some(cfg) = cfg else { return Ok(()) };
        check_config(self.kernel, &cfg)?;
        let sizes = self.arg_sizes();
        let mut ptrs: Vec<*mut c_void> = self
            .args
            .iter()
            .map(|a| a.bytes.as_ptr() as *mut c_void)
            .collect();
        self.dev
            .run_launch(self.kernel, &cfg, &mut ptrs, &sizes, &self.buffers)
    }
}

/// A configuration the driver would refuse (an empty grid or block) or that the kernel's plan
/// did not reckon with (more threads than `Kernel::threads`, which its resource check assumed)
/// is a clear error here rather than a deferred launch failure.
fn check_config(k: Kernel, cfg: &LaunchConfig) -> Result<()> {
    let (g, b) = (cfg.grid_dim, cfg.block_dim);
    let threads = b.0 as u64 * b.1 as u64 * b.2 as u64;
    if g.0 == 0 || g.1 == 0 || g.2 == 0 || threads == 0 || threads > k.threads as u64 {
        return Err(Error::Device(format!(
            "kernel {} launched with grid {g:?} and block {b:?}",
            k.name
        )));
    }
    Ok(())
}

/// Upper bound of the grid for grid-stride kernels on a device with `sm_count` multiprocessors:
/// 32 blocks of 256 threads per SM is several waves of full occupancy, past which more blocks
/// only add scheduling.
pub fn max_blocks_for(sm_count: u32) -> u32 {
    sm_count.max(1).saturating_mul(32)
}

/// Blocks for `n` elements, one element per thread, clamped to `[1, max_blocks]`.
pub fn grid_size(n: u64, max_blocks: u32) -> u32 {
    let want = n.div_ceil(BLOCK as u64);
    want.clamp(1, max_blocks.max(1) as u64) as u32
}

/// Configuration for an elementwise grid-stride kernel over `n` elements; `None` when there is
/// nothing to do (a zero-sized grid is a launch error).
pub fn elementwise(n: u64, max_blocks: u32) -> Option<LaunchConfig> {
    (n > 0).then(|| blocks(grid_size(n, max_blocks)))
}

/// `blocks` blocks of [`BLOCK`] threads (per-row / per-channel kernels, partial reductions).
pub fn blocks(blocks: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per item (channel, image) for the per-item reduction kernels, which loop over
/// items with a stride of gridDim.x; clamped to the hardware's grid limit.
pub fn per_item(items: u64) -> Option<LaunchConfig> {
    (items > 0).then(|| blocks(items.min(i32::MAX as u64) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_small_sizes_exactly_and_clamps_large_ones() {
        let max = max_blocks_for(132);
        assert_eq!(max, 4224);
        assert!(elementwise(0, max).is_none());
        assert_eq!(grid_size(1, max), 1);
        assert_eq!(grid_size(256, max), 1);
        assert_eq!(grid_size(257, max), 2);
        assert_eq!(grid_size(1000, max), 4);
        assert_eq!(grid_size(u64::MAX, max), max);
        assert_eq!(grid_size(1 << 40, max), max);
        // either every element gets its own thread, or the grid is at its cap and the
        // grid-stride loop covers the rest
        for n in [1u64, 255, 256, 257, 65_535, 1 << 20, 3 << 30, 1 << 45] {
            let g = grid_size(n, max) as u64;
            assert!(g * BLOCK as u64 >= n || g == max as u64, "n={n}");
            assert!(g >= 1 && g <= max as u64);
        }
        let cfg = elementwise(1 << 33, 7).unwrap();
        assert_eq!(cfg.grid_dim, (7, 1, 1));
        assert_eq!(cfg.block_dim, (256, 1, 1));
        assert_eq!(max_blocks_for(0), 32);
    }

    #[test]
    fn arguments_keep_their_bytes_and_sizes() {
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct P {
            a: u32,
            b: u32,
            c: u64,
        }
        let s = ArgSlot::of(&P { a: 1, b: 2, c: 3 });
        assert_eq!(s.size, 16);
        assert_eq!(s.bytes[0], 1 | (2 << 32));
        assert_eq!(s.bytes[1], 3);
        assert_eq!(ArgSlot::of(&7u32).size, 4);
        assert_eq!(ArgSlot::of(&1.5f32).bytes[0], 1.5f32.to_bits() as u64);
    }

    #[test]
    fn empty_grids_and_oversized_blocks_are_refused() {
        let k = Kernel::new("x.cu", "k");
        assert!(check_config(k, &blocks(3)).is_ok());
        let mut c = blocks(3);
        c.block_dim = (2048, 1, 1);
        assert!(check_config(k, &c)
            .unwrap_err()
            .to_string()
            .contains("k launched"));
        c.block_dim = (256, 1, 1);
        c.grid_dim = (1, 0, 1);
        assert!(check_config(k, &c).is_err());
    }

    #[test]
    fn per_item_grid() {
        assert!(per_item(0).is_none());
        assert_eq!(per_item(64).unwrap().grid_dim, (64, 1, 1));
        assert_eq!(per_item(1 << 40).unwrap().grid_dim.0, i32::MAX as u32);
    }
}
