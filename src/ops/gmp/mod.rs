//! The sampling half of Global Message Passing (DESIGN §1): for every position p = (i, j) and
//! each of K sampling points, read x at (j + u_k, i + v_k) by bilinear interpolation with zero
//! padding (PyTorch `grid_sample(align_corners=True, padding_mode="zeros")` after mapping pixel
//! coordinates to [-1, 1]), and average the K samples. The offset conv1x1 and the residual
//! `x + a` are composed by the layer from `conv2d` and `add`.
mod cpu;
pub mod cuda;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

pub use cuda::GmpKernel;

use crate::autograd::{Backward, Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, expect_rank, same_device, Storage, Tensor};

fn cuda_shape((n, c, h, w): (usize, usize, usize, usize), k: usize) -> cuda::GmpShape {
    cuda::GmpShape { n, c, h, w, k }
}

const OP: &str = "gmp_sample";

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

/// Checks x `[N, C, H, W]` against offsets `[N, 2K, H, W]`; returns ((N, C, H, W), K).
fn check_shapes(x: &Tensor, offsets: &Tensor) -> Result<((usize, usize, usize, usize), usize)> {
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
    if n == 0 || c == 0 || h == 0 || w == 0 {
        return Err(Error::shape(OP, format!("x {} is empty", x.shape())));
    }
    if h * w > u32::MAX as usize {
        return Err(Error::shape(OP, format!("map {h}x{w} is too large")));
    }
    same_device(OP, &[x, offsets])?;
    Ok(((n, c, h, w), ok2 / 2))
}

/// out `[N, C, H, W]`: out[n,c,i,j] = (1/K) Σ_k x̃[n,c](i + v_k, j + u_k), where x̃ is the
/// bilinear interpolant of x, zero outside the map.
pub fn gmp_sample_forward(x: &Tensor, offsets: &Tensor) -> Result<Tensor> {
    let (dims, k) = check_shapes(x, offsets)?;
    match (x.storage(), offsets.storage()) {
        (Storage::Cpu(xs), Storage::Cpu(os)) => Ok(Tensor::from_storage(
            cpu::forward(xs, os, dims, k),
            x.dims(),
        )),
        (Storage::Cuda(xs), Storage::Cuda(os)) => {
            let dev = xs.device();
            let a = cuda::forward(dev, kernel(), xs, os, &cuda_shape(dims, k))?;
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
    let (dims, k) = check_shapes(x, offsets)?;
    if dy.shape() != x.shape() {
        return Err(Error::shape(
            OP,
            format!("gradient dy {} must match x {}", dy.shape(), x.shape()),
        ));
    }
    same_device(OP, &[x, dy])?;
    match (x.storage(), offsets.storage(), dy.storage()) {
        (Storage::Cpu(xs), Storage::Cpu(os), Storage::Cpu(g)) => Ok(GmpGrads {
            dx: need_dx.then(|| Tensor::from_storage(cpu::backward_x(g, os, dims, k), x.dims())),
            doffsets: need_doffsets.then(|| {
                Tensor::from_storage(cpu::backward_offsets(xs, os, g, dims, k), offsets.dims())
            }),
        }),
        (Storage::Cuda(xs), Storage::Cuda(os), Storage::Cuda(g)) => {
            let dev = xs.device();
            // Every version produces both gradients in its passes; unrequested ones are dropped.
            let (dx, doff) = cuda::backward(dev, kernel(), xs, os, g, &cuda_shape(dims, k))?;
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
