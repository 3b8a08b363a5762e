//! Concatenation along channels on the GPU (kernels/concat.cu): one copy launch per part.
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use crate::device::cuda::{check_len, numel, CudaDevice, CudaResultExt};
use crate::error::{Error, Result};

pub const KERNEL_FILE: &str = "concat.cu";
const COPY: &str = "concat_copy_f32";
const SPLIT: &str = "concat_split_f32";
pub const ENTRY_POINTS: &[&str] = &[COPY, SPLIT];

/// Mirrors `struct CatParams` in kernels/concat.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatParams {
    pub images: u64,
    pub part: u64,
    pub whole: u64,
    pub offset: u64,
}
unsafe impl DeviceRepr for CatParams {}
const _: () = assert!(std::mem::size_of::<CatParams>() == 32);

const OP: &str = "concat_channels (cuda)";

/// Placement of each part inside an image of the concatenation: `[n, Σc, h·w]`.
pub fn cat_params(n: usize, channels: &[usize], hw: usize) -> Result<Vec<CatParams>> {
    if channels.is_empty() {
        return Err(Error::shape(OP, "no tensors to concatenate"));
    }
    let total_c = channels
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(|| Error::shape(OP, "channel count overflows"))?;
    let whole = numel(OP, &[total_c, hw])?;
    numel(OP, &[n, whole])?;
    let mut offset = 0usize;
    Ok(channels
        .iter()
        .map(|&c| {
            let p = CatParams {
                images: n as u64,
                part: (c * hw) as u64,
                whole: whole as u64,
                offset: offset as u64,
            };
            offset += c * hw;
            p
        })
        .collect())
}

/// Concatenates `parts` (each `[n, c_i, h, w]`, given with its channel count) along channels.
pub fn concat_channels_forward(
    dev: &CudaDevice,
    parts: &[(&CudaSlice<f32>, usize)],
    n: usize,
    h: usize,
    w: usize,
) -> Result<CudaSlice<f32>> {
    let hw = numel(OP, &[h, w])?;
    let channels: Vec<usize> = parts.iter().map(|p| p.1).collect();
    let params = cat_params(n, &channels, hw)?;
    for (i, ((x, c), _)) in parts.iter().zip(&params).enumerate() {
        check_len(OP, &format!("part {i}"), *x, numel(OP, &[n, *c, hw])?)?;
    }
    let total = params[0].whole as usize * n;
    let mut y = dev.alloc::<f32>(total)?;
    for ((x, _), p) in parts.iter().zip(&params) {
        if let Some(cfg) = dev.cfg(p.images * p.part) {
            let f = dev.function(KERNEL_FILE, COPY)?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(p).arg(*x).arg(&mut y);
            unsafe { b.launch(cfg) }.cuda(COPY)?;
        }
    }
    Ok(y)
}

/// Splits dy `[n, Σc, h, w]` into the parts' gradients `[n, c_i, h, w]`.
pub fn concat_channels_backward(
    dev: &CudaDevice,
    dy: &CudaSlice<f32>,
    channels: &[usize],
    n: usize,
    h: usize,
    w: usize,
) -> Result<Vec<CudaSlice<f32>>> {
    let hw = numel(OP, &[h, w])?;
    let params = cat_params(n, channels, hw)?;
    check_len(OP, "dy", dy, params[0].whole as usize * n)?;
    let mut out = Vec::with_capacity(params.len());
    for p in &params {
        let len = (p.images * p.part) as usize;
        let mut dx = dev.alloc::<f32>(len)?;
        if let Some(cfg) = dev.cfg(len as u64) {
            let f = dev.function(KERNEL_FILE, SPLIT)?;
            let mut b = dev.stream().launch_builder(&f);
            b.arg(p).arg(dy).arg(&mut dx);
            unsafe { b.launch(cfg) }.cuda(SPLIT)?;
        }
        out.push(dx);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's index math on the host: copying parts through their params and splitting
    /// back is the identity, and the concatenation is in channel order.
    #[test]
    fn params_place_parts_in_channel_order() {
        let (n, hw) = (3, 5);
        let channels = [2, 1, 4];
        let params = cat_params(n, &channels, hw).unwrap();
        let whole = params[0].whole as usize;
        assert_eq!(whole, 7 * hw);
        let parts: Vec<Vec<f32>> = channels
            .iter()
            .enumerate()
            .map(|(t, &c)| (0..n * c * hw).map(|i| (t * 1000 + i) as f32).collect())
            .collect();
        let mut y = vec![f32::NAN; n * whole];
        for (x, p) in parts.iter().zip(&params) {
            for (i, &v) in x.iter().enumerate().take((p.images * p.part) as usize) {
                let (img, r) = (i / p.part as usize, i % p.part as usize);
                y[img * whole + p.offset as usize + r] = v;
            }
        }
        assert!(
            y.iter().all(|v| !v.is_nan()),
            "every output element written once"
        );
        // image 1, channel 3 (= channel 0 of part 2), element 0
        assert_eq!(y[whole + 3 * hw], (2 * 1000) as f32 + (4 * hw) as f32);
        for (x, p) in parts.iter().zip(&params) {
            assert_eq!(x.len(), (p.images * p.part) as usize);
            for (i, &v) in x.iter().enumerate() {
                let (img, r) = (i / p.part as usize, i % p.part as usize);
                assert_eq!(y[img * whole + p.offset as usize + r], v);
            }
        }
        assert!(cat_params(1, &[], 4).is_err());
    }
}
