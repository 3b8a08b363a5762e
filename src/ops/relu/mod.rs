//! ReLU: y = max(x, 0); dx = dy where x > 0.
mod cpu;
pub mod cuda;

use crate::autograd::{Backward, Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, same_device, Storage, Tensor};
use std::sync::Arc;

pub fn relu_forward(x: &Tensor) -> Result<Tensor> {
    match x.storage() {
        Storage::Cpu(xs) => Ok(Tensor::from_storage(cpu::forward(xs), x.dims())),
        Storage::Cuda(xs) => Ok(Tensor::from_storage(
            cuda::forward(xs.device(), xs)?,
            x.dims(),
        )),
    }
}

/// Gradient from the saved output (y > 0 ⇔ x > 0), so the input need not be kept.
pub fn relu_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    if y.shape() != dy.shape() {
        return Err(Error::shape(
            "relu",
            format!(
                "output gradient dy {} vs output y {}",
                dy.shape(),
                y.shape()
            ),
        ));
    }
    same_device("relu", &[y, dy])?;
    match (y.storage(), dy.storage()) {
        (Storage::Cpu(ys), Storage::Cpu(dys)) => {
            Ok(Tensor::from_storage(cpu::backward(ys, dys), y.dims()))
        }
        (Storage::Cuda(ys), Storage::Cuda(dys)) => Ok(Tensor::from_storage(
            cuda::backward(ys.device(), ys, dys)?,
            y.dims(),
        )),
        _ => Err(device_mismatch("relu", &[y, dy])),
    }
}

struct ReluBackward {
    y: Arc<Tensor>,
}

impl Backward for ReluBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(relu_backward(&self.y, dy)?)])
    }
    fn name(&self) -> &'static str {
        "relu"
    }
}

pub fn relu(tape: &Tape, x: &Var) -> Result<Var> {
    let y = Arc::new(tape.timed("relu", || relu_forward(x.value()))?);
    Ok(tape.record(y.clone(), &[x], ReluBackward { y }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_input};

    #[test]
    fn gradcheck_relu() {
        let mut x = random_input(&[2, 3, 4, 5], 11);
        // keep samples away from the kink so finite differences are meaningful
        for v in x.as_cpu_mut().unwrap() {
            if v.abs() < 0.05 {
                *v += 0.1;
            }
        }
        check_gradients("relu", vec![x], |tape, v| relu(tape, &v[0])).unwrap();
    }
}
