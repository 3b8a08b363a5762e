//! 2x2 stride-2 max pooling on the GPU (kernels/max_pool.cu).
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use crate::device::cuda::{check_len, dim_u32, numel, CudaDevice, CudaResultExt};
use crate::error::{Error, Result};

pub const KERNEL_FILE: &str = "max_pool.cu";
const FWD: &str = "max_pool2x2_fwd_f32";
const BWD: &str = "max_pool2x2_bwd_f32";
pub const ENTRY_POINTS: &[&str] = &[FWD, BWD];

/// Mirrors `struct PoolParams` in kernels/max_pool.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolParams {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
}
unsafe impl DeviceRepr for PoolParams {}
const _: () = assert!(std::mem::size_of::<PoolParams>() == 20);

const OP: &str = "max_pool2d (cuda)";

/// Parameters for an `[n, c, h, w]` input; floor semantics, so odd sizes drop the last
/// row/column. An output of size 0 is refused, as PyTorch does.
pub fn pool_params(n: usize, c: usize, h: usize, w: usize) -> Result<PoolParams> {
    if h < 2 || w < 2 {
        return Err(Error::shape(
            OP,
            format!("input {h}x{w} is smaller than the 2x2 window"),
        ));
    }
    let planes = numel(OP, &[n, c])?;
    numel(OP, &[planes, h, w])?;
    Ok(PoolParams {
        planes: dim_u32(OP, "N*C", planes)?,
        h: dim_u32(OP, "H", h)?,
        w: dim_u32(OP, "W", w)?,
        oh: dim_u32(OP, "H/2", h / 2)?,
        ow: dim_u32(OP, "W/2", w / 2)?,
    })
}

/// Forward of `x` `[n, c, h, w]`: returns `y` `[n, c, h/2, w/2]` and, per output, the flat
/// index (row·W + col) of its maximum inside the input plane.
pub fn max_pool2d_forward(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<(CudaSlice<f32>, CudaSlice<u32>)> {
    let p = pool_params(n, c, h, w)?;
    check_len(OP, "x", x, numel(OP, &[n, c, h, w])?)?;
    let out = p.planes as usize * p.oh as usize * p.ow as usize;
    let mut y = dev.alloc::<f32>(out)?;
    let mut argmax = dev.alloc::<u32>(out)?;
    if let Some(cfg) = dev.cfg(out as u64) {
        let f = dev.function(KERNEL_FILE, FWD)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&p).arg(x).arg(&mut y).arg(&mut argmax);
        unsafe { b.launch(cfg) }.cuda(FWD)?;
    }
    Ok((y, argmax))
}

/// dx `[n, c, h, w]`: dy routed to each window's saved maximum, zero elsewhere.
pub fn max_pool2d_backward(
    dev: &CudaDevice,
    dy: &CudaSlice<f32>,
    argmax: &CudaSlice<u32>,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
) -> Result<CudaSlice<f32>> {
    let p = pool_params(n, c, h, w)?;
    let out = p.planes as usize * p.oh as usize * p.ow as usize;
    check_len(OP, "dy", dy, out)?;
    check_len(OP, "argmax", argmax, out)?;
    let total = numel(OP, &[n, c, h, w])?;
    let mut dx = dev.alloc::<f32>(total)?;
    if let Some(cfg) = dev.cfg(total as u64) {
        let f = dev.function(KERNEL_FILE, BWD)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&p).arg(dy).arg(argmax).arg(&mut dx);
        unsafe { b.launch(cfg) }.cuda(BWD)?;
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_floor_and_refuse_tiny_inputs() {
        let p = pool_params(3, 5, 7, 4).unwrap();
        assert_eq!((p.planes, p.h, p.w, p.oh, p.ow), (15, 7, 4, 3, 2));
        assert!(pool_params(1, 1, 1, 4)
            .unwrap_err()
            .to_string()
            .contains("max_pool2d"));
        assert!(pool_params(usize::MAX, 2, 2, 2).is_err());
    }
}
