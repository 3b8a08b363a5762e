//! Finite-difference gradient checking for ops and small networks (used by the
//! `gradcheck_<op>` tests). The scalar checked is L = Σ R ⊙ f(inputs) with a fixed random R, so
//! every output element carries a distinct weight; L is accumulated in f64 on the host.
use std::sync::Arc;

use crate::autograd::{Backward, Tape, Var};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct GradcheckOptions {
    /// Central-difference step.
    pub eps: f32,
    /// Pass if |analytic − numeric| ≤ atol + rtol·max(|analytic|, |numeric|).
    pub rtol: f32,
    pub atol: f32,
    /// At most this many elements per input are probed (chosen at random), to keep tests fast.
    pub max_probes: usize,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-3,
            rtol: 2e-2,
            atol: 2e-3,
            max_probes: 64,
        }
    }
}

/// Normal(0,1) values, never all zero; seeded so failures reproduce.
pub fn random_input(dims: &[usize], seed: u64) -> Tensor {
    Tensor::randn(dims, 1.0, &mut Rng::new(seed))
}

struct WeightedSumBackward(Arc<Tensor>);
impl Backward for WeightedSumBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = dy.item()?;
        let r: Vec<f32> = self.0.to_vec().iter().map(|v| v * g).collect();
        Ok(vec![Some(
            Tensor::from_vec(r, self.0.dims())?.to_device(&dy.device())?,
        )])
    }
    fn name(&self) -> &'static str {
        "weighted_sum"
    }
}

fn weighted_sum(out: &Tensor, r: &[f32]) -> f64 {
    out.to_vec()
        .iter()
        .zip(r)
        .map(|(&o, &w)| o as f64 * w as f64)
        .sum()
}

pub fn check_gradients(
    name: &str,
    inputs: Vec<Tensor>,
    f: impl Fn(&Tape, &[Var]) -> Result<Var>,
) -> Result<()> {
    check_gradients_with(name, &GradcheckOptions::default(), inputs, f)
}

/// Checks the gradient of `f` with respect to every input. Returns an error describing the
/// worst element when any probe fails.
pub fn check_gradients_with(
    name: &str,
    opts: &GradcheckOptions,
    inputs: Vec<Tensor>,
    f: impl Fn(&Tape, &[Var]) -> Result<Var>,
) -> Result<()> {
    let tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.leaf(t.clone())).collect();
    let out = f(&tape, &vars)?;
    let mut rng = Rng::new(0x5EED);
    let r: Vec<f32> = (0..out.value().numel())
        .map(|_| rng.range(0.5, 1.5) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 })
        .collect();
    let rt = Arc::new(Tensor::from_vec(r.clone(), out.dims())?);
    let loss_val = Tensor::scalar(weighted_sum(out.value(), &r) as f32);
    let loss = tape.record(loss_val, &[&out], WeightedSumBackward(rt));
    let grads = tape.backward(&loss)?;

    for (i, input) in inputs.iter().enumerate() {
        let analytic = grads
            .get(&vars[i])
            .ok_or_else(|| Error::Invalid(format!("gradcheck {name}: no gradient for input {i}")))?
            .to_vec();
        if analytic.len() != input.numel() {
            return Err(Error::Invalid(format!(
                "gradcheck {name}: gradient {i} has {} values for {} inputs",
                analytic.len(),
                input.numel()
            )));
        }
        let n = input.numel();
        let mut probes: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut probes);
        probes.truncate(opts.max_probes);
        for &j in &probes {
            let eval = |delta: f32| -> Result<f64> {
                let mut xs = inputs.clone();
                let mut v = xs[i].to_vec();
                v[j] += delta;
                xs[i] = Tensor::from_vec(v, input.dims())?.to_device(&input.device())?;
                let t = Tape::inference();
                let cs: Vec<Var> = xs.into_iter().map(Var::constant).collect();
                Ok(weighted_sum(f(&t, &cs)?.value(), &r))
            };
            let numeric = ((eval(opts.eps)? - eval(-opts.eps)?) / (2.0 * opts.eps as f64)) as f32;
            let a = analytic[j];
            let tol = opts.atol + opts.rtol * a.abs().max(numeric.abs());
            if !((a - numeric).abs() <= tol && a.is_finite()) {
                return Err(Error::Invalid(format!(
                    "gradcheck {name}: input {i} element {j}: analytic {a} vs numeric {numeric} (tolerance {tol})"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::Backward;

    /// A deliberately wrong backward must be caught: the checker can fail.
    #[test]
    fn gradcheck_detects_a_wrong_gradient() {
        struct Wrong;
        impl Backward for Wrong {
            fn backward(&self, dy: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
                Ok(vec![Some(crate::ops::elementwise::scale_tensor(dy, 1.1)?)])
            }
            fn name(&self) -> &'static str {
                "wrong"
            }
        }
        let x = random_input(&[3, 4], 3);
        let r = check_gradients("identity", vec![x], |t, v| {
            Ok(t.record(v[0].value().clone(), &[&v[0]], Wrong))
        });
        assert!(r.is_err());
    }
}
