//! The sampling half of Global Message Passing (DESIGN §1): for every position p = (i, j) and
//! each of K sampling points, read x at (j + u_k, i + v_k) by bilinear interpolation with zero
//! padding (PyTorch `grid_sample(align_corners=True, padding_mode="zeros")` after mapping pixel
//! coordinates to [-1, 1]), and average the K samples. The GMP layer's op adds the residual,
//! `y = x + a` ([`gmp_residual`], `residual.rs`), which GPU versions may fold into their
//! kernels; the offset conv1x1 is the layer's `conv2d`.
pub mod cl;
mod cpu;
mod cpu_fast;
pub mod cuda;
mod residual;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

pub use cuda::GmpKernel;
pub use residual::{gmp_residual, gmp_residual_backward, gmp_residual_forward, GmpSaved};

use crate::autograd::{Backward, Tape, Var};
use crate::device::cuda::{dim_u32, numel, KernelParam};
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, expect_rank, same_device, Storage, Tensor};

const OP: &str = "gmp_sample";

/// One sampling's sizes: x `[n, c, h, w]` read at `k` points per position, offsets
/// `[n, 2k, h, w]`. Used by the CPU reference, the launchers and, `#[repr(C)]`, as the kernels'
/// parameter struct (kernels/gmp.cu), field for field. The fields are private, so every
/// geometry has passed [`GmpGeometry::new`]'s checks once. `c_per_group` is the fused kernels'
/// channels per thread, set by their launcher per launch; everywhere else it is `c` (one group).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GmpGeometry {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    k: u32,
    c_per_group: u32,
}
// Safety: six u32, as `struct GmpGeometry` in the kernel.
unsafe impl KernelParam for GmpGeometry {}
const _: () = assert!(std::mem::size_of::<GmpGeometry>() == 24);

impl GmpGeometry {
    /// Checks x `[n, c, h, w]` with `k` sampling points: nothing empty, a plane the kernels can
    /// index with int (the CPU's taps with u32), every buffer of every version (the unfused one
    /// holds `[N, K, C, H, W]`) within usize, every size within u32.
    pub fn new(n: usize, c: usize, h: usize, w: usize, k: usize) -> Result<Self> {
        if n == 0 || c == 0 || h == 0 || w == 0 {
            return Err(Error::shape(OP, format!("x {:?} is empty", [n, c, h, w])));
        }
        if k == 0 {
            return Err(Error::shape(OP, "K = 0 sampling points"));
        }
        if numel(OP, &[h, w])? > i32::MAX as usize / 2 {
            return Err(Error::shape(OP, format!("map {h}x{w} is too large")));
        }
        numel(OP, &[n, k.max(c), c, h, w])?;
        let (n, c) = (dim_u32(OP, "N", n)?, dim_u32(OP, "C", c)?);
        Ok(GmpGeometry {
            n,
            c,
            h: dim_u32(OP, "H", h)?,
            w: dim_u32(OP, "W", w)?,
            k: dim_u32(OP, "K", k)?,
            c_per_group: c,
        })
    }

    /// The geometry of x `[N, C, H, W]` sampled by offsets `[N, 2K, H, W]` (shapes only).
    pub fn of(x: &Tensor, offsets: &Tensor) -> Result<Self> {
        let &[n, c, h, w] = expect_rank(OP, "input x", x, 4)? else {
            unreachable!("rank checked")
        };
        let &[on, ok2, oh, ow] = expect_rank(OP, "offsets", offsets, 4)? else {
            unreachable!("rank checked")
        };
        if on != n || oh != h || ow != w {
            return Err(Error::shape(
                OP,
                format!(
                    "offsets {} must match x {} in batch and spatial size",
                    offsets.shape(),
                    x.shape()
                ),
            ));
        }
        if ok2 == 0 || ok2 % 2 != 0 {
            return Err(Error::shape(
                OP,
                format!(
                    "offsets {} must have 2K > 0 channels (u_k, v_k pairs), got {ok2}",
                    offsets.shape()
                ),
            ));
        }
        Self::new(n, c, h, w, ok2 / 2)
    }

    /// Positions of one plane, H·W.
    pub fn plane(&self) -> usize {
        self.h as usize * self.w as usize
    }
    /// Elements of x (and of the sampled mean, dx, dy).
    pub fn x_len(&self) -> usize {
        self.n as usize * self.c as usize * self.plane()
    }
    /// Elements of the offsets (and of doffsets).
    pub fn off_len(&self) -> usize {
        self.n as usize * 2 * self.k as usize * self.plane()
    }
    /// Positions of all images, N·H·W.
    pub fn positions(&self) -> usize {
        self.n as usize * self.plane()
    }
    /// Sample points of all images, N·K·H·W (each reads the same cell in every channel).
    pub fn sample_points(&self) -> usize {
        self.positions() * self.k as usize
    }
}

/// The implementation `gmp_sample` runs on a GPU (`--gmp-kernel`; the CPU has one reference):
/// the op's own switch, process-wide, default fused.
static KERNEL: AtomicU8 = AtomicU8::new(GmpKernel::Fused as u8);

/// Selects the GPU implementation of every later `gmp_sample` call.
pub fn set_kernel(k: GmpKernel) {
    KERNEL.store(k as u8, Ordering::Relaxed);
}

/// The GPU implementation `gmp_sample` runs now.
pub fn kernel() -> GmpKernel {
    let code = KERNEL.load(Ordering::Relaxed);
    GmpKernel::ALL
        .into_iter()
        .find(|k| *k as u8 == code)
        .unwrap_or_default()
}

/// out `[N, C, H, W]`: out[n,c,i,j] = (1/K) Σ_k x̃[n,c](i + v_k, j + u_k), where x̃ is the
/// bilinear interpolant of x, zero outside the map.
pub fn gmp_sample_forward(x: &Tensor, offsets: &Tensor) -> Result<Tensor> {
    let g = GmpGeometry::of(x, offsets)?;
    same_device(OP, &[x, offsets])?;
    match (x.storage(), offsets.storage()) {
        (Storage::Cpu(xs), Storage::Cpu(os)) => {
            Ok(Tensor::from_storage(cpu::forward(xs, os, &g), x.dims()))
        }
        (Storage::Cuda(xs), Storage::Cuda(os)) => {
            let dev = xs.device();
            let a = cuda::forward(dev, kernel(), xs, os, &g)?;
            Ok(Tensor::from_storage(a, x.dims()))
        }
        _ => Err(device_mismatch(OP, &[x, offsets])),
    }
}

/// Gradients of `gmp_sample_forward`; each is `None` unless asked for.
#[derive(Debug)]
pub struct GmpGrads {
    pub dx: Option<Tensor>,
    pub doffsets: Option<Tensor>,
}

/// dx scatters dy back through the bilinear weights; doffsets is the derivative of the weights
/// with respect to the sample position (piecewise linear on the forward's floor cell, as
/// grid_sample's backward), summed over channels.
pub fn gmp_sample_backward(
    x: &Tensor,
    offsets: &Tensor,
    dy: &Tensor,
    need_dx: bool,
    need_doffsets: bool,
) -> Result<GmpGrads> {
    let g = GmpGeometry::of(x, offsets)?;
    same_device(OP, &[x, offsets])?;
    if dy.shape() != x.shape() {
        return Err(Error::shape(
            OP,
            format!("gradient dy {} must match x {}", dy.shape(), x.shape()),
        ));
    }
    same_device(OP, &[x, dy])?;
    match (x.storage(), offsets.storage(), dy.storage()) {
        (Storage::Cpu(xs), Storage::Cpu(os), Storage::Cpu(dys)) => Ok(GmpGrads {
            dx: need_dx.then(|| Tensor::from_storage(cpu::backward_x(dys, os, &g), x.dims())),
            doffsets: need_doffsets.then(|| {
                Tensor::from_storage(cpu::backward_offsets(xs, os, dys, &g), offsets.dims())
            }),
        }),
        (Storage::Cuda(xs), Storage::Cuda(os), Storage::Cuda(dys)) => {
            let dev = xs.device();
            // Every version produces both gradients in its passes; unrequested ones are dropped.
            let (dx, doff) = cuda::backward(dev, kernel(), xs, os, dys, &g)?;
            Ok(GmpGrads {
                dx: need_dx.then(|| Tensor::from_storage(dx, x.dims())),
                doffsets: need_doffsets.then(|| Tensor::from_storage(doff, offsets.dims())),
            })
        }
        _ => Err(device_mismatch(OP, &[x, offsets, dy])),
    }
}

struct GmpSampleBackward {
    x: Arc<Tensor>,
    offsets: Arc<Tensor>,
}

impl Backward for GmpSampleBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = gmp_sample_backward(&self.x, &self.offsets, dy, needs[0], needs[1])?;
        Ok(vec![g.dx, g.doffsets])
    }
    fn name(&self) -> &'static str {
        OP
    }
}

pub fn gmp_sample(tape: &Tape, x: &Var, offsets: &Var) -> Result<Var> {
    let y = tape.timed(OP, || gmp_sample_forward(x.value(), offsets.value()))?;
    Ok(tape.record(
        y,
        &[x, offsets],
        GmpSampleBackward {
            x: x.value_arc(),
            offsets: offsets.value_arc(),
        },
    ))
}
