//! Adam on the GPU, fused per parameter tensor (kernels/adam.cu): one launch updates the
//! parameter and both moments in place. The bias corrections are computed on the host in f64.
use cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};

use crate::device::cuda::{check_len, CudaDevice, CudaResultExt};
use crate::error::{Error, Result};

pub const KERNEL_FILE: &str = "adam.cu";
const ADAM: &str = "adam_f32";
pub const ENTRY_POINTS: &[&str] = &[ADAM];

/// Mirrors `struct AdamParams` in kernels/adam.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub bias_c1: f32,
    pub bias_c2: f32,
    pub pad_: f32,
    pub n: u64,
}
unsafe impl DeviceRepr for AdamParams {}
const _: () = assert!(std::mem::size_of::<AdamParams>() == 40);

/// Adam's hyper-parameters (PyTorch names; L2 weight decay added to the gradient).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

const OP: &str = "adam (cuda)";

/// Kernel parameters for step `t` (1-based) over `n` values.
pub fn adam_params(h: &AdamHyper, t: u64, n: usize) -> Result<AdamParams> {
    if t == 0 {
        return Err(Error::Invalid(format!("{OP}: step count t starts at 1")));
    }
    let t = i32::try_from(t).unwrap_or(i32::MAX);
    Ok(AdamParams {
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        bias_c1: (1.0 - (h.beta1 as f64).powi(t)) as f32,
        bias_c2: (1.0 - (h.beta2 as f64).powi(t)) as f32,
        pad_: 0.0,
        n: n as u64,
    })
}

/// Kernel parameters from the host-side step of the CPU optimiser, so both backends use the
/// same bias corrections to the bit.
pub fn adam_params_from_step(h: &crate::optim::adam::AdamStep, n: usize) -> AdamParams {
    AdamParams {
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        bias_c1: h.bias_correction1,
        bias_c2: h.bias_correction2,
        pad_: 0.0,
        n: n as u64,
    }
}

/// Launches the update with prepared parameters (`p.n` must be the buffers' length).
pub fn adam_launch(
    dev: &CudaDevice,
    p: &AdamParams,
    param: &mut CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
) -> Result<()> {
    let n = param.len();
    if p.n != n as u64 {
        return Err(Error::shape(
            OP,
            format!("parameters for {} values, buffer of {n}", p.n),
        ));
    }
    check_len(OP, "grad", grad, n)?;
    check_len(OP, "m", &*m, n)?;
    check_len(OP, "v", &*v, n)?;
    if let Some(cfg) = dev.cfg(n as u64) {
        let f = dev.function(KERNEL_FILE, ADAM)?;
        let mut b = dev.stream().launch_builder(&f);
        b.arg(p).arg(param).arg(grad).arg(m).arg(v);
        unsafe { b.launch(cfg) }.cuda(ADAM)?;
    }
    Ok(())
}

/// One Adam step `t` (1-based) on `param` with `grad`, updating the moments `m`, `v` in place.
pub fn adam_step(
    dev: &CudaDevice,
    param: &mut CudaSlice<f32>,
    grad: &CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    h: &AdamHyper,
    t: u64,
) -> Result<()> {
    let p = adam_params(h, t, param.len())?;
    adam_launch(dev, &p, param, grad, m, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_corrections() {
        let h = AdamHyper {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let p = adam_params(&h, 1, 10).unwrap();
        // from the f32 betas (0.999f32 is 0.99900001..., so bc2 is 0.00099998...)
        assert!((p.bias_c1 - 0.1).abs() < 1e-6 && (p.bias_c2 / 0.001 - 1.0).abs() < 1e-4);
        let p = adam_params(&h, 3, 10).unwrap();
        assert!((p.bias_c1 - (1.0 - 0.9f64.powi(3)) as f32).abs() < 1e-7);
        assert_eq!(p.n, 10);
        assert!(adam_params(&h, 0, 1).is_err());
    }
}
