//! Tensors: a shape and contiguous f32 storage on a `Device`. NCHW throughout.
mod shape;
pub use shape::Shape;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Contiguous row-major f32 storage on one device.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Shape,
    storage: Storage,
}

impl Tensor {
    /// A CPU tensor from host values; the length must match the shape.
    pub fn from_vec(data: Vec<f32>, dims: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(dims);
        if shape.numel() != data.len() {
            return Err(Error::shape(
                "from_vec",
                format!("{} values for shape {shape}", data.len()),
            ));
        }
        Ok(Tensor {
            shape,
            storage: Storage::Cpu(data),
        })
    }

    pub fn zeros(dims: &[usize], device: &Device) -> Tensor {
        Self::full(dims, 0.0, device)
    }

    pub fn full(dims: &[usize], value: f32, device: &Device) -> Tensor {
        let shape = Shape::new(dims);
        match device {
            Device::Cpu => Tensor {
                storage: Storage::Cpu(vec![value; shape.numel()]),
                shape,
            },
        }
    }

    pub fn scalar(v: f32) -> Tensor {
        Tensor {
            shape: Shape::new(&[]),
            storage: Storage::Cpu(vec![v]),
        }
    }

    /// Normal(0, std) values, seeded.
    pub fn randn(dims: &[usize], std: f32, rng: &mut Rng) -> Tensor {
        let shape = Shape::new(dims);
        let data = (0..shape.numel()).map(|_| rng.normal() * std).collect();
        Tensor {
            shape,
            storage: Storage::Cpu(data),
        }
    }

    /// Uniform(lo, hi) values, seeded.
    pub fn uniform(dims: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
        let shape = Shape::new(dims);
        let data = (0..shape.numel()).map(|_| rng.range(lo, hi)).collect();
        Tensor {
            shape,
            storage: Storage::Cpu(data),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    pub fn numel(&self) -> usize {
        self.shape.numel()
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// A new tensor on the same device as `self` (used by ops to build outputs).
    pub fn from_storage(storage: Storage, dims: &[usize]) -> Tensor {
        Tensor {
            shape: Shape::new(dims),
            storage,
        }
    }

    /// The values on the host (a copy when the tensor lives on a GPU).
    pub fn to_vec(&self) -> Vec<f32> {
        match &self.storage {
            Storage::Cpu(v) => v.clone(),
        }
    }

    /// Borrow CPU values; errors for device tensors (use `to_vec` to copy instead).
    pub fn as_cpu(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
        }
    }

    pub fn as_cpu_mut(&mut self) -> Result<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
        }
    }

    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::from_vec(self.to_vec(), self.dims())?),
        }
    }

    /// Moves the tensor to `device`; free when it is already there.
    pub fn into_device(self, device: &Device) -> Result<Tensor> {
        if self.device() == *device {
            Ok(self)
        } else {
            self.to_device(device)
        }
    }

    /// Same values, new shape with the same number of elements.
    pub fn reshape(mut self, dims: &[usize]) -> Result<Tensor> {
        let shape = Shape::new(dims);
        if shape.numel() != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("{} to {shape}", self.shape),
            ));
        }
        self.shape = shape;
        Ok(self)
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor of shape {} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_vec()[0])
    }

    /// Bytes the tensor's storage occupies (for memory accounting).
    pub fn nbytes(&self) -> usize {
        self.numel() * std::mem::size_of::<f32>()
    }
}

/// Errors unless `t` has exactly `rank` dimensions; returns them.
pub fn expect_rank<'a>(
    op: &'static str,
    what: &str,
    t: &'a Tensor,
    rank: usize,
) -> Result<&'a [usize]> {
    if t.dims().len() != rank {
        return Err(Error::shape(
            op,
            format!("{what} must have rank {rank}, got {}", t.shape()),
        ));
    }
    Ok(t.dims())
}

/// Errors unless all tensors share one device; returns it.
pub fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if t.device() != d {
            return Err(Error::DeviceMismatch {
                op,
                a: d.name(),
                b: t.device().name(),
            });
        }
    }
    Ok(d)
}
