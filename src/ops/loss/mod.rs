//! The two training losses, each a scalar (`[]`) tensor:
//! - the counter's Eq. 1, `L = (1/N) Σ_n | Σ|z_n| − y_n |`, z `[N, C, h, w]` (C = 1 for the
//!   counter) against per-image counts y;
//! - the localizer's MSE, mean over all elements of `(pred − target)²` against a constant
//!   target of the same shape.
//!
//! |.| has gradient sign(.) with sign(0) = 0, as PyTorch; reductions accumulate in f64 on CPU.
//! The count loss's scalar lives on z's device, so other losses computed there add to it.
mod cpu;
pub mod cuda;
mod window;

pub use window::{window_count_l1_loss, window_sums};

use std::sync::Arc;

use crate::autograd::{Backward, Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, same_device, Storage, Tensor};

const COUNT_OP: &str = "count_l1_loss";
const MSE_OP: &str = "mse_loss";

/// The batch size of z (its first dim), checked non-empty and against `counts` when given.
fn batch_of(op: &'static str, z: &Tensor, counts: Option<&[f32]>) -> Result<usize> {
    let Some(&n) = z.dims().first() else {
        return Err(Error::shape(
            op,
            format!("z must have a batch dim, got shape {}", z.shape()),
        ));
    };
    if n == 0 {
        return Err(Error::shape(
            op,
            format!("z {} has an empty batch", z.shape()),
        ));
    }
    if let Some(c) = counts {
        if c.len() != n {
            return Err(Error::shape(
                op,
                format!("{} counts for z {} with batch {n}", c.len(), z.shape()),
            ));
        }
    }
    Ok(n)
}

/// Σ|z_n| of each image (the predicted counts ĉ), accumulated in f64.
pub fn per_image_counts(z: &Tensor) -> Result<Vec<f32>> {
    let n = batch_of("per_image_counts", z, None)?;
    match z.storage() {
        Storage::Cpu(zs) => Ok(cpu::per_image_abs_sums(zs, n)
            .into_iter()
            .map(|s| s as f32)
            .collect()),
        Storage::Cuda(zs) => {
            let dev = zs.device();
            cuda::image_abs_sums(dev, zs, n)?.to_host()
        }
    }
}

/// Eq. 1 averaged over the batch as a scalar tensor on z's device: on a GPU it stays there,
/// so a training step need not wait for the stream to read it.
pub fn count_l1_loss_value(z: &Tensor, counts: &[f32]) -> Result<Tensor> {
    let n = batch_of(COUNT_OP, z, Some(counts))?;
    match z.storage() {
        Storage::Cpu(zs) => Ok(Tensor::scalar(cpu::count_l1(zs, counts))),
        Storage::Cuda(zs) => {
            let dev = zs.device();
            let counts = dev.htod(counts)?;
            let (loss, _) = cuda::count_l1_forward(dev, zs, &counts, n)?;
            Ok(Tensor::from_storage(loss, &[]))
        }
    }
}

/// The loss value on the host (on a GPU: read back, which waits for the stream).
pub fn count_l1_loss_forward(z: &Tensor, counts: &[f32]) -> Result<f32> {
    count_l1_loss_value(z, counts)?.item()
}

/// dz = (dloss/N) · sign(Σ|z_n| − y_n) · sign(z).
pub fn count_l1_loss_backward(z: &Tensor, counts: &[f32], dloss: f32) -> Result<Tensor> {
    count_l1_loss_backward_by(z, counts, &Tensor::scalar(dloss))
}

/// [`count_l1_loss_backward`] with dloss a one-element tensor, used where it lives: on a GPU
/// the kernel reads it there (no read-back of the loss gradient).
pub fn count_l1_loss_backward_by(z: &Tensor, counts: &[f32], dloss: &Tensor) -> Result<Tensor> {
    let n = batch_of(COUNT_OP, z, Some(counts))?;
    if dloss.numel() != 1 {
        return Err(Error::shape(
            COUNT_OP,
            format!("the loss gradient must be a scalar, got {}", dloss.shape()),
        ));
    }
    match z.storage() {
        Storage::Cpu(zs) => Ok(Tensor::from_storage(
            cpu::count_l1_backward(zs, counts, dloss.item()?),
            z.dims(),
        )),
        Storage::Cuda(zs) => {
            let dev = zs.device();
            let dloss = dloss.to_device(&z.device())?;
            let Storage::Cuda(dl) = dloss.storage() else {
                unreachable!("moved to the GPU above")
            };
            let sums = cuda::image_abs_sums(dev, zs, n)?;
            let counts = dev.htod(counts)?;
            let dz = cuda::count_l1_backward(dev, zs, &sums, &counts, dl, n)?;
            Ok(Tensor::from_storage(dz, z.dims()))
        }
    }
}

struct CountL1Backward {
    z: Arc<Tensor>,
    counts: Vec<f32>,
}

impl Backward for CountL1Backward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(count_l1_loss_backward_by(
            &self.z,
            &self.counts,
            dy,
        )?)])
    }
    fn name(&self) -> &'static str {
        COUNT_OP
    }
}

/// Eq. 1 averaged over the batch, as a scalar `[]` Var on z's device (so it adds to other
/// losses computed there, and a GPU step never waits to read it).
pub fn count_l1_loss(tape: &Tape, z: &Var, counts: &[f32]) -> Result<Var> {
    let l = tape.timed(COUNT_OP, || count_l1_loss_value(z.value(), counts))?;
    Ok(tape.record(
        l,
        &[z],
        CountL1Backward {
            z: z.value_arc(),
            counts: counts.to_vec(),
        },
    ))
}

fn check_mse(pred: &Tensor, target: &Tensor) -> Result<()> {
    if pred.shape() != target.shape() {
        return Err(Error::shape(
            MSE_OP,
            format!("pred {} vs target {}", pred.shape(), target.shape()),
        ));
    }
    if pred.numel() == 0 {
        return Err(Error::shape(
            MSE_OP,
            format!("pred {} is empty", pred.shape()),
        ));
    }
    same_device(MSE_OP, &[pred, target]).map(|_| ())
}

/// mean((pred − target)²) as a scalar tensor on pred's device (a GPU keeps it there).
pub fn mse_loss_value(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    check_mse(pred, target)?;
    match (pred.storage(), target.storage()) {
        (Storage::Cpu(p), Storage::Cpu(t)) => Ok(Tensor::scalar(cpu::mse(p, t))),
        (Storage::Cuda(p), Storage::Cuda(t)) => Ok(Tensor::from_storage(
            cuda::mse_forward(p.device(), p, t)?,
            &[],
        )),
        _ => Err(device_mismatch(MSE_OP, &[pred, target])),
    }
}

/// The loss value on the host (on a GPU: read back, which waits for the stream).
pub fn mse_loss_forward(pred: &Tensor, target: &Tensor) -> Result<f32> {
    mse_loss_value(pred, target)?.item()
}

/// d/dpred = (2·dloss/numel) · (pred − target).
pub fn mse_loss_backward(pred: &Tensor, target: &Tensor, dloss: f32) -> Result<Tensor> {
    check_mse(pred, target)?;
    match (pred.storage(), target.storage()) {
        (Storage::Cpu(p), Storage::Cpu(t)) => Ok(Tensor::from_storage(
            cpu::mse_backward(p, t, dloss),
            pred.dims(),
        )),
        (Storage::Cuda(p), Storage::Cuda(t)) => {
            let dev = p.device();
            let dloss = dev.htod(&[dloss])?;
            Ok(Tensor::from_storage(
                cuda::mse_backward(dev, p, t, &dloss)?,
                pred.dims(),
            ))
        }
        _ => Err(device_mismatch(MSE_OP, &[pred, target])),
    }
}

/// Saves the gradient for dloss = 1 instead of the target: the target arrives as a borrowed
/// tensor, and keeping it would mean a copy of the same size.
struct MseBackward {
    unit_grad: Tensor,
}

impl Backward for MseBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(crate::ops::elementwise::scale_by_tensor(
            &self.unit_grad,
            dy,
        )?)])
    }
    fn name(&self) -> &'static str {
        MSE_OP
    }
}

/// mean((pred − target)²) as a scalar `[]` Var on pred's device; `target` is a constant.
pub fn mse_loss(tape: &Tape, pred: &Var, target: &Tensor) -> Result<Var> {
    let l = tape.timed(MSE_OP, || mse_loss_value(pred.value(), target))?;
    if !(tape.is_recording() && pred.requires_grad()) {
        return Ok(Var::constant(l));
    }
    let unit_grad = mse_loss_backward(pred.value(), target, 1.0)?;
    Ok(tape.record(l, &[pred], MseBackward { unit_grad }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_input};

    /// z = [[1, -2], [0, 3]]: Σ|z| = 3, 3; counts 2, 5 → (|3−2| + |3−5|)/2 = 1.5. The gradient is
    /// (1/2)·sign(ĉ−y)·sign(z): image 0 [+½, −½], image 1 [0 (z = 0), −½].
    #[test]
    fn golden_count_l1() {
        let z = Tensor::from_vec(vec![1., -2., 0., 3.], &[2, 1, 1, 2]).unwrap();
        assert_eq!(per_image_counts(&z).unwrap(), vec![3.0, 3.0]);
        assert_eq!(count_l1_loss_forward(&z, &[2.0, 5.0]).unwrap(), 1.5);
        let g = count_l1_loss_backward(&z, &[2.0, 5.0], 1.0).unwrap();
        assert_eq!(g.to_vec(), vec![0.5, -0.5, 0.0, -0.5]);
        // An exact count gives a zero gradient (sign(0) = 0), and dloss scales.
        let g = count_l1_loss_backward(&z, &[3.0, 5.0], 4.0).unwrap();
        assert_eq!(g.to_vec(), vec![0.0, 0.0, 0.0, -2.0]);
    }

    #[test]
    fn gradcheck_count_l1_loss() {
        let mut z = random_input(&[3, 1, 4, 5], 31);
        for v in z.as_cpu_mut().unwrap() {
            if v.abs() < 0.05 {
                *v += 0.1; // keep probes off the kink of |z|
            }
        }
        // Counts on both sides of the predicted sums and well away from them.
        let sums = per_image_counts(&z).unwrap();
        let counts = [sums[0] + 2.0, sums[1] - 3.0, sums[2] + 0.5];
        let tape = Tape::new();
        let l = count_l1_loss(&tape, &tape.leaf(z.clone()), &counts).unwrap();
        assert_eq!(l.dims(), &[] as &[usize]);
        assert!((l.value().item().unwrap() - 5.5 / 3.0).abs() < 1e-4);
        check_gradients(COUNT_OP, vec![z], |t, v| count_l1_loss(t, &v[0], &counts)).unwrap();
    }

    /// pred [1, 2, 3, 4], target [0, 2, 5, 4]: (1 + 0 + 4 + 0)/4 = 1.25; gradient
    /// (2/4)·(pred − target) = [0.5, 0, −1, 0].
    #[test]
    fn golden_mse() {
        let p = Tensor::from_vec(vec![1., 2., 3., 4.], &[1, 1, 2, 2]).unwrap();
        let t = Tensor::from_vec(vec![0., 2., 5., 4.], &[1, 1, 2, 2]).unwrap();
        assert_eq!(mse_loss_forward(&p, &t).unwrap(), 1.25);
        let g = mse_loss_backward(&p, &t, 1.0).unwrap();
        assert_eq!(g.to_vec(), vec![0.5, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn gradcheck_mse_loss() {
        let p = random_input(&[2, 1, 3, 4], 41);
        let t = random_input(&[2, 1, 3, 4], 42);
        check_gradients(MSE_OP, vec![p], |tape, v| mse_loss(tape, &v[0], &t)).unwrap();
        // On an inference tape the loss is a plain value.
        let tape = Tape::inference();
        let l = mse_loss(&tape, &Var::constant(t.clone()), &t).unwrap();
        assert!(!l.requires_grad() && l.value().item().unwrap() == 0.0);
    }

    #[test]
    fn errors_name_the_op() {
        let z = random_input(&[2, 1, 3, 3], 1);
        let e = count_l1_loss_forward(&z, &[1.0]).unwrap_err().to_string();
        assert!(e.contains(COUNT_OP) && e.contains("1 counts"), "{e}");
        let e = count_l1_loss_forward(&Tensor::scalar(1.0), &[1.0])
            .unwrap_err()
            .to_string();
        assert!(e.contains(COUNT_OP), "{e}");
        let t = random_input(&[2, 1, 3, 4], 2);
        let e = mse_loss_forward(&z, &t).unwrap_err().to_string();
        assert!(e.contains(MSE_OP) && e.contains("[2, 1, 3, 4]"), "{e}");
    }
}
