//! Elementwise add and scale, abs, and full sum: the small ops the losses, the GMP residual and
//! gradient accumulation are made of.
mod cpu;
pub mod cuda;

use std::sync::Arc;

use crate::autograd::{Backward, Tape, Var};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, same_device, Storage, Tensor};

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{} vs {}", a.shape(), b.shape())));
    }
    same_device(op, &[a, b]).map(|_| ())
}

/// a + b (same shapes).
pub fn add_tensors(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_shape("add", a, b)?;
    match (a.storage(), b.storage()) {
        (Storage::Cpu(x), Storage::Cpu(y)) => Ok(Tensor::from_storage(cpu::add(x, y), a.dims())),
        (Storage::Cuda(x), Storage::Cuda(y)) => {
            Ok(Tensor::from_storage(cuda::add(x.device(), x, y)?, a.dims()))
        }
        _ => Err(device_mismatch("add", &[a, b])),
    }
}

/// s·a.
pub fn scale_tensor(a: &Tensor, s: f32) -> Result<Tensor> {
    match a.storage() {
        Storage::Cpu(x) => Ok(Tensor::from_storage(cpu::scale(x, s), a.dims())),
        Storage::Cuda(x) => Ok(Tensor::from_storage(
            cuda::scale(x.device(), x, s)?,
            a.dims(),
        )),
    }
}

/// s·a with s a one-element tensor, used where it lives (on a GPU it is read there: no
/// read-back of a loss gradient). The result is on a's device.
pub fn scale_by_tensor(a: &Tensor, s: &Tensor) -> Result<Tensor> {
    if s.numel() != 1 {
        return Err(Error::shape(
            "scale",
            format!("the factor must be a scalar, got {}", s.shape()),
        ));
    }
    match a.storage() {
        Storage::Cpu(x) => Ok(Tensor::from_storage(cpu::scale(x, s.item()?), a.dims())),
        Storage::Cuda(x) => {
            let s = s.to_device(&a.device())?;
            let Storage::Cuda(sb) = s.storage() else {
                unreachable!("moved to the GPU above")
            };
            Ok(Tensor::from_storage(
                cuda::scale_by(x.device(), x, sb)?,
                a.dims(),
            ))
        }
    }
}

/// |a|, and its gradient sign(a)·dy (0 at a = 0, as PyTorch).
pub fn abs_tensor(a: &Tensor) -> Result<Tensor> {
    match a.storage() {
        Storage::Cpu(x) => Ok(Tensor::from_storage(cpu::abs(x), a.dims())),
        Storage::Cuda(x) => Ok(Tensor::from_storage(cuda::abs(x.device(), x)?, a.dims())),
    }
}

pub fn abs_backward(a: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape("abs", a, dy)?;
    match (a.storage(), dy.storage()) {
        (Storage::Cpu(x), Storage::Cpu(g)) => {
            Ok(Tensor::from_storage(cpu::abs_backward(x, g), a.dims()))
        }
        (Storage::Cuda(x), Storage::Cuda(g)) => Ok(Tensor::from_storage(
            cuda::abs_backward(x.device(), x, g)?,
            a.dims(),
        )),
        _ => Err(device_mismatch("abs", &[a, dy])),
    }
}

/// Σ a as a scalar tensor on a's device (accumulated in f64 on the CPU; on the GPU a fixed-order
/// two-pass f32 tree, deterministic).
pub fn sum_tensor(a: &Tensor) -> Result<Tensor> {
    match a.storage() {
        Storage::Cpu(x) => Ok(Tensor::from_storage(vec![cpu::sum(x)], &[])),
        Storage::Cuda(x) => Ok(Tensor::from_storage(cuda::sum(x.device(), x)?, &[])),
    }
}

/// A tensor of `dims` filled with the scalar `g` (gradient of a sum), on g's device; on a GPU
/// without a host round trip.
fn broadcast_scalar(g: &Tensor, dims: &[usize]) -> Result<Tensor> {
    if g.numel() != 1 {
        return Err(Error::shape(
            "sum",
            format!("gradient of a sum must be a scalar, got {}", g.shape()),
        ));
    }
    match g.storage() {
        Storage::Cpu(v) => Tensor::try_full(dims, v[0], &Device::Cpu),
        Storage::Cuda(s) => {
            let n = dims.iter().product();
            Ok(Tensor::from_storage(
                cuda::broadcast_scalar(s.device(), s, n)?,
                dims,
            ))
        }
    }
}

struct AddBackward;
impl Backward for AddBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        needs
            .iter()
            .map(|&n| n.then(|| dy.try_clone()).transpose())
            .collect()
    }
    fn name(&self) -> &'static str {
        "add"
    }
}

struct ScaleBackward(f32);
impl Backward for ScaleBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(scale_tensor(dy, self.0)?)])
    }
    fn name(&self) -> &'static str {
        "scale"
    }
}

struct AbsBackward(Arc<Tensor>);
impl Backward for AbsBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(abs_backward(&self.0, dy)?)])
    }
    fn name(&self) -> &'static str {
        "abs"
    }
}

struct SumBackward(Vec<usize>);
impl Backward for SumBackward {
    fn backward(&self, dy: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(broadcast_scalar(dy, &self.0)?)])
    }
    fn name(&self) -> &'static str {
        "sum"
    }
}

pub fn add(tape: &Tape, a: &Var, b: &Var) -> Result<Var> {
    let y = tape.timed("add", || add_tensors(a.value(), b.value()))?;
    Ok(tape.record(y, &[a, b], AddBackward))
}

pub fn scale(tape: &Tape, a: &Var, s: f32) -> Result<Var> {
    let y = tape.timed("scale", || scale_tensor(a.value(), s))?;
    Ok(tape.record(y, &[a], ScaleBackward(s)))
}

pub fn abs(tape: &Tape, a: &Var) -> Result<Var> {
    let y = tape.timed("abs", || abs_tensor(a.value()))?;
    Ok(tape.record(y, &[a], AbsBackward(a.value_arc())))
}

pub fn sum(tape: &Tape, a: &Var) -> Result<Var> {
    let y = tape.timed("sum", || sum_tensor(a.value()))?;
    Ok(tape.record(y, &[a], SumBackward(a.dims().to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::{check_gradients, random_input};

    #[test]
    fn gradcheck_elementwise() {
        let a = random_input(&[2, 3, 4], 1);
        let b = random_input(&[2, 3, 4], 2);
        check_gradients("add", vec![a.clone(), b], |t, v| add(t, &v[0], &v[1])).unwrap();
        check_gradients("scale", vec![a.clone()], |t, v| scale(t, &v[0], -2.5)).unwrap();
        check_gradients("abs", vec![a.clone()], |t, v| abs(t, &v[0])).unwrap();
        check_gradients("sum", vec![a], |t, v| sum(t, &v[0])).unwrap();
    }

    #[test]
    fn tensor_add_assign_matches_add() {
        let a = random_input(&[2, 3, 4], 1);
        let b = random_input(&[2, 3, 4], 2);
        let mut acc = a.clone();
        acc.add_assign(&b).unwrap();
        assert_eq!(acc.to_vec(), add_tensors(&a, &b).unwrap().to_vec());
        let c = random_input(&[4, 3, 2], 3);
        assert!(acc.add_assign(&c).is_err());
    }

    #[test]
    fn add_refuses_mismatched_shapes() {
        let a = random_input(&[2, 3], 1);
        let b = random_input(&[3, 2], 1);
        let e = add_tensors(&a, &b).unwrap_err().to_string();
        assert!(e.contains("add") && e.contains("[2, 3]"), "{e}");
    }
}
