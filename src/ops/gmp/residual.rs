//! The GMP layer's op (DESIGN §1): `y = x + gmp_sample(x, offsets)` and its backward, one op so
//! a GPU version can fold the residual into its kernels (`cl`, `cl4`) and keep what its
//! forward made for the backward (their channels-last copy of x).
//!
//! On the CPU it composes the reference functions exactly as the layer used to compose the ops
//! (`gmp_sample` then `add`, and on the tape dx = dy + ∂a/∂x·dy accumulated in that order), so
//! its results are bit-identical to that composition.
use std::sync::Arc;

use super::{cpu, cuda, GmpGeometry, GmpGrads, GmpKernel};
use crate::autograd::{Backward, Tape, Var};
use crate::device::cuda::GpuBuffer;
use crate::error::{Error, Result};
use crate::ops::elementwise::add_tensors;
use crate::tensor::{device_mismatch, same_device, Storage, Tensor};

const OP: &str = "gmp";

/// What the forward leaves for the backward beyond x and the offsets: the GPU version that ran
/// (the backward runs the same one) and the channels-last copy of x it made, if any.
pub struct GmpSaved {
    version: GmpKernel,
    xt: Option<GpuBuffer<f32>>,
}

impl GmpSaved {
    /// The GPU version the forward ran (the CPU's saved state says the current switch).
    pub fn version(&self) -> GmpKernel {
        self.version
    }
    /// Whether a channels-last copy of x is kept for the backward.
    pub fn has_channels_last(&self) -> bool {
        self.xt.is_some()
    }
}

/// y = x + a, a = the mean over K bilinear samples of x at (j + u_k, i + v_k) (see
/// [`super::gmp_sample_forward`]).
pub fn gmp_residual_forward(x: &Tensor, offsets: &Tensor) -> Result<(Tensor, GmpSaved)> {
    let g = GmpGeometry::of(x, offsets)?;
    same_device(OP, &[x, offsets])?;
    let version = super::kernel();
    match (x.storage(), offsets.storage()) {
        (Storage::Cpu(xs), Storage::Cpu(os)) => {
            let a = Tensor::from_storage(cpu::forward(xs, os, &g), x.dims());
            Ok((add_tensors(x, &a)?, GmpSaved { version, xt: None }))
        }
        (Storage::Cuda(xs), Storage::Cuda(os)) => {
            let (y, xt) = cuda::residual_forward(xs.device(), version, xs, os, &g)?;
            Ok((Tensor::from_storage(y, x.dims()), GmpSaved { version, xt }))
        }
        _ => Err(device_mismatch(OP, &[x, offsets])),
    }
}

/// dx = dy + (dy scattered back through the bilinear weights) and doffsets (as
/// [`super::gmp_sample_backward`]'s); each is `None` unless asked for.
pub fn gmp_residual_backward(
    x: &Tensor,
    offsets: &Tensor,
    saved: &GmpSaved,
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
        (Storage::Cpu(xs), Storage::Cpu(os), Storage::Cpu(dys)) => {
            let dx = if need_dx {
                // The tape's accumulation of add's and gmp_sample's gradients: dy, then += ∂a/∂x.
                let mut dx = dy.try_clone()?;
                dx.add_assign(&Tensor::from_storage(
                    cpu::backward_x(dys, os, &g),
                    x.dims(),
                ))?;
                Some(dx)
            } else {
                None
            };
            Ok(GmpGrads {
                dx,
                doffsets: need_doffsets.then(|| {
                    Tensor::from_storage(cpu::backward_offsets(xs, os, dys, &g), offsets.dims())
                }),
            })
        }
        (Storage::Cuda(xs), Storage::Cuda(os), Storage::Cuda(dys)) => {
            let dev = xs.device();
            let xt = saved.xt.as_ref();
            let (dx, doff) = cuda::residual_backward(dev, saved.version, xs, xt, os, dys, &g)?;
            Ok(GmpGrads {
                dx: need_dx.then(|| Tensor::from_storage(dx, x.dims())),
                doffsets: need_doffsets.then(|| Tensor::from_storage(doff, offsets.dims())),
            })
        }
        _ => Err(device_mismatch(OP, &[x, offsets, dy])),
    }
}

struct GmpResidualBackward {
    x: Arc<Tensor>,
    offsets: Arc<Tensor>,
    saved: GmpSaved,
}

impl Backward for GmpResidualBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = gmp_residual_backward(&self.x, &self.offsets, &self.saved, dy, needs[0], needs[1])?;
        Ok(vec![g.dx, g.doffsets])
    }
    fn name(&self) -> &'static str {
        OP
    }
}

/// The GMP layer's op on the tape: y = x + gmp_sample(x, offsets).
pub fn gmp_residual(tape: &Tape, x: &Var, offsets: &Var) -> Result<Var> {
    let (y, saved) = tape.timed(OP, || gmp_residual_forward(x.value(), offsets.value()))?;
    Ok(tape.record(
        y,
        &[x, offsets],
        GmpResidualBackward {
            x: x.value_arc(),
            offsets: offsets.value_arc(),
            saved,
        },
    ))
}
