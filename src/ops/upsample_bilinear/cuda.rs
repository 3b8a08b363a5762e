//! Bilinear resize on the GPU (kernels/upsample.cu), PyTorch `F.interpolate(mode="bilinear")`
//! semantics in both align_corners modes.
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use crate::device::cuda::{check_len, dim_u32, numel, CudaDevice, CudaResultExt};
use crate::error::{Error, Result};

pub const KERNEL_FILE: &str = "upsample.cu";
const FWD: &str = "upsample_bilinear_fwd_f32";
const BWD: &str = "upsample_bilinear_bwd_f32";
pub const ENTRY_POINTS: &[&str] = &[FWD, BWD];

/// Mirrors `struct UpsampleParams` in kernels/upsample.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpsampleParams {
    pub planes: u32,
    pub ih: u32,
    pub iw: u32,
    pub oh: u32,
    pub ow: u32,
    pub align_corners: u32,
    pub scale_h: f32,
    pub scale_w: f32,
}
unsafe impl DeviceRepr for UpsampleParams {}
const _: () = assert!(std::mem::size_of::<UpsampleParams>() == 32);

const OP: &str = "upsample_bilinear (cuda)";

/// Source-per-destination scale, as PyTorch computes it for an explicit output size.
pub fn source_scale(input: usize, output: usize, align_corners: bool) -> f32 {
    if align_corners {
        if output > 1 {
            (input as f32 - 1.0) / (output as f32 - 1.0)
        } else {
            0.0
        }
    } else {
        input as f32 / output as f32
    }
}

/// Parameters for `[n, c, ih, iw]` → `[n, c, oh, ow]`.
#[allow(clippy::too_many_arguments)]
pub fn upsample_params(
    n: usize,
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    align_corners: bool,
) -> Result<UpsampleParams> {
    if ih == 0 || iw == 0 || oh == 0 || ow == 0 {
        return Err(Error::shape(
            OP,
            format!("empty spatial size {ih}x{iw} -> {oh}x{ow}"),
        ));
    }
    let planes = numel(OP, &[n, c])?;
    numel(OP, &[planes, ih.max(oh), iw.max(ow)])?;
    Ok(UpsampleParams {
        planes: dim_u32(OP, "N*C", planes)?,
        ih: dim_u32(OP, "input H", ih)?,
        iw: dim_u32(OP, "input W", iw)?,
        oh: dim_u32(OP, "output H", oh)?,
        ow: dim_u32(OP, "output W", ow)?,
        align_corners: align_corners as u32,
        scale_h: source_scale(ih, oh, align_corners),
        scale_w: source_scale(iw, ow, align_corners),
    })
}

/// y `[n, c, oh, ow]` from x `[n, c, ih, iw]`.
#[allow(clippy::too_many_arguments)]
pub fn upsample_bilinear_forward(
    dev: &CudaDevice,
    x: &CudaSlice<f32>,
    n: usize,
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    align_corners: bool,
) -> Result<CudaSlice<f32>> {
    let p = upsample_params(n, c, ih, iw, oh, ow, align_corners)?;
    check_len(OP, "x", x, numel(OP, &[n, c, ih, iw])?)?;
    let total = numel(OP, &[n, c, oh, ow])?;
    let mut y = dev.alloc::<f32>(total)?;
    if let Some(cfg) = dev.cfg(total as u64) {
        let f = dev.function(KERNEL_FILE, FWD)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&p).arg(x).arg(&mut y);
        unsafe { b.launch(cfg) }.cuda(FWD)?;
    }
    Ok(y)
}

/// dx `[n, c, ih, iw]` from dy `[n, c, oh, ow]` (atomic scatter into a zeroed buffer).
#[allow(clippy::too_many_arguments)]
pub fn upsample_bilinear_backward(
    dev: &CudaDevice,
    dy: &CudaSlice<f32>,
    n: usize,
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    align_corners: bool,
) -> Result<CudaSlice<f32>> {
    let p = upsample_params(n, c, ih, iw, oh, ow, align_corners)?;
    let total = numel(OP, &[n, c, oh, ow])?;
    check_len(OP, "dy", dy, total)?;
    let mut dx = dev.alloc_zeros::<f32>(numel(OP, &[n, c, ih, iw])?)?;
    if let Some(cfg) = dev.cfg(total as u64) {
        let f = dev.function(KERNEL_FILE, BWD)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(&p).arg(dy).arg(&mut dx);
        unsafe { b.launch(cfg) }.cuda(BWD)?;
    }
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_follow_pytorch() {
        assert_eq!(source_scale(16, 32, false), 0.5);
        assert_eq!(source_scale(16, 32, true), 15.0 / 31.0);
        assert_eq!(source_scale(5, 1, true), 0.0);
        let p = upsample_params(2, 3, 4, 5, 8, 10, true).unwrap();
        assert_eq!((p.planes, p.align_corners), (6, 1));
        assert!(upsample_params(1, 1, 0, 4, 2, 2, false).is_err());
    }
}
