//! Adam exactly as `torch.optim.Adam` (L2 weight decay added to the gradient, bias corrections
//! on m and v), with its state saved and restored for resuming a run.
mod cpu;
pub mod cuda;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::params::{ParamKind, ParamStore};
use crate::tensor::{Storage, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The scalars of one update, shared by the CPU loop and, `#[repr(C)]`, the CUDA kernel's
/// parameter struct (kernels/adam.cu), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1 − β1^t and 1 − β2^t, computed in f64 on the host.
    pub bias_correction1: f32,
    pub bias_correction2: f32,
}
// Safety: seven f32, as `struct AdamStep` in the kernel.
unsafe impl crate::device::cuda::KernelParam for AdamStep {}
const _: () = assert!(std::mem::size_of::<AdamStep>() == 28);

pub struct Adam {
    pub config: AdamConfig,
    /// Steps taken so far (t of the bias corrections).
    pub step: u64,
    /// First and second moments per parameter of the store (None for buffers).
    pub moments: Vec<Option<(Tensor, Tensor)>>,
}

impl Adam {
    /// Zero moments on each parameter's device (an error only if a GPU allocation fails).
    pub fn new(config: AdamConfig, store: &ParamStore) -> Result<Adam> {
        let moments = store
            .iter()
            .map(|(_, p)| {
                (p.kind == ParamKind::Trainable)
                    .then(|| {
                        let d = p.value.device();
                        Ok((
                            Tensor::try_full(p.value.dims(), 0.0, &d)?,
                            Tensor::try_full(p.value.dims(), 0.0, &d)?,
                        ))
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(Adam {
            config,
            step: 0,
            moments,
        })
    }

    /// One update of every parameter that has a gradient (`grads` indexed like the store).
    pub fn update(
        &mut self,
        store: &mut ParamStore,
        grads: &[Option<Tensor>],
        lr: f32,
    ) -> Result<()> {
        if grads.len() != store.len() || self.moments.len() != store.len() {
            return Err(Error::Invalid(format!(
                "adam: {} gradients and {} moment pairs for {} parameters",
                grads.len(),
                self.moments.len(),
                store.len()
            )));
        }
        self.step += 1;
        let t = self.step as f64;
        let c = self.config;
        let h = AdamStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
            bias_correction1: (1.0 - (c.beta1 as f64).powf(t)) as f32,
            bias_correction2: (1.0 - (c.beta2 as f64).powf(t)) as f32,
        };
        let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
        for (id, g) in ids.into_iter().zip(grads) {
            let (Some(g), Some((m, v))) = (g, self.moments[id.0].as_mut()) else {
                continue;
            };
            let name = store.get(id).name.clone();
            let p = store.value_mut(id);
            if p.dims() != g.dims() {
                return Err(Error::shape(
                    "adam",
                    format!("{name}: gradient {} for parameter {}", g.shape(), p.shape()),
                ));
            }
            update_tensor(p, g, m, v, &h)?;
        }
        Ok(())
    }
}

/// p, m, v updated in place from g.
pub fn update_tensor(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    h: &AdamStep,
) -> Result<()> {
    crate::tensor::same_device("adam", &[p, g, m, v])?;
    match (
        p.storage_mut(),
        g.storage(),
        m.storage_mut(),
        v.storage_mut(),
    ) {
        (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => {
            cpu::update(p, g, m, v, h);
            Ok(())
        }
        (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => {
            let dev = p.device().clone();
            cuda::update(&dev, h, p, g, m, v)
        }
        _ => unreachable!("devices checked above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two Adam steps on one scalar, worked by hand:
    /// p0 = 1, g = 0.5 both steps, lr = 0.1, wd = 0.1 → effective g1 = 0.6.
    /// t=1: m = 0.06, v = 0.00036, m̂ = 0.6, v̂ = 0.36, p1 = 1 − 0.1·0.6/(0.6+1e-8) = 0.9
    /// t=2: g2 = 0.5 + 0.09 = 0.59; m = 0.9·0.06 + 0.059 = 0.113; v = 0.999·0.00036 + 0.001·0.3481
    ///      m̂ = 0.113/0.19, v̂ = v/0.001999; p2 = 0.9 − 0.1·m̂/(√v̂ + 1e-8)
    #[test]
    fn adam_matches_hand_computed_steps() {
        let mut store = ParamStore::default();
        let id = store.add(
            "w",
            ParamKind::Trainable,
            Tensor::from_vec(vec![1.0], &[1]).unwrap(),
        );
        let cfg = AdamConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut adam = Adam::new(cfg, &store).unwrap();
        let g = || vec![Some(Tensor::from_vec(vec![0.5], &[1]).unwrap())];
        adam.update(&mut store, &g(), 0.1).unwrap();
        let p1 = store.value(id).to_vec()[0];
        assert!((p1 - 0.9).abs() < 1e-6, "{p1}");
        adam.update(&mut store, &g(), 0.1).unwrap();
        let p2 = store.value(id).to_vec()[0] as f64;
        let v: f64 = 0.999 * 0.00036 + 0.001 * 0.59f64 * 0.59;
        let m_hat = 0.113 / 0.19;
        let v_hat = v / (1.0 - 0.999f64 * 0.999);
        let want = 0.9 - 0.1 * m_hat / (v_hat.sqrt() + 1e-8);
        assert!((p2 - want).abs() < 1e-6, "{p2} vs {want}");
    }

    #[test]
    fn adam_skips_buffers_and_missing_grads() {
        let mut store = ParamStore::default();
        let a = store.add(
            "a",
            ParamKind::Trainable,
            Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap(),
        );
        let b = store.add(
            "b",
            ParamKind::Buffer,
            Tensor::from_vec(vec![3.0], &[1]).unwrap(),
        );
        let mut adam = Adam::new(AdamConfig::default(), &store).unwrap();
        adam.update(&mut store, &[None, None], 0.1).unwrap();
        assert_eq!(store.value(a).to_vec(), vec![1.0, 2.0]);
        assert_eq!(store.value(b).to_vec(), vec![3.0]);
        let bad = vec![Some(Tensor::from_vec(vec![1.0], &[1]).unwrap()), None];
        let e = adam.update(&mut store, &bad, 0.1).unwrap_err().to_string();
        assert!(e.contains("a:"), "{e}");
    }
}
