//! Tensors: a shape and contiguous f32 storage on a `Device`. NCHW throughout.
mod shape;
pub use shape::Shape;

use crate::device::cuda::{primitives, GpuBuffer};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Contiguous row-major f32 storage on one device.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    Cuda(GpuBuffer<f32>),
}

impl From<Vec<f32>> for Storage {
    fn from(v: Vec<f32>) -> Self {
        Storage::Cpu(v)
    }
}

impl From<GpuBuffer<f32>> for Storage {
    fn from(b: GpuBuffer<f32>) -> Self {
        Storage::Cuda(b)
    }
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

    /// Zeros on `device`. On a GPU a failed allocation panics (as a failed `Vec` allocation
    /// aborts); [`Tensor::try_full`] returns the error instead.
    pub fn zeros(dims: &[usize], device: &Device) -> Tensor {
        Self::full(dims, 0.0, device)
    }

    /// `value` everywhere on `device`; panics only if a GPU allocation fails (see `try_full`).
    pub fn full(dims: &[usize], value: f32, device: &Device) -> Tensor {
        Self::try_full(dims, value, device)
            .unwrap_or_else(|e| panic!("Tensor::full {dims:?} on {device}: {e}"))
    }

    /// `value` everywhere on `device`, with a device error returned rather than panicking.
    pub fn try_full(dims: &[usize], value: f32, device: &Device) -> Result<Tensor> {
        let shape = Shape::new(dims);
        let storage = match device {
            Device::Cpu => Storage::Cpu(vec![value; shape.numel()]),
            Device::Cuda(dev) => Storage::Cuda(primitives::fill(dev, shape.numel(), value)?),
        };
        Ok(Tensor { shape, storage })
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
            Storage::Cuda(s) => Device::Cuda(s.device().clone()),
        }
    }

    /// The GPU buffer, when the tensor lives on one.
    pub fn gpu_buffer(&self) -> Option<&GpuBuffer<f32>> {
        match &self.storage {
            Storage::Cuda(s) => Some(s),
            Storage::Cpu(_) => None,
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }

    /// A tensor of `dims` owning host values or a GPU buffer: the one way ops wrap their
    /// outputs (`Tensor::from_storage(cpu::forward(..), dims)`, likewise with a `GpuBuffer`).
    pub fn from_storage(storage: impl Into<Storage>, dims: &[usize]) -> Tensor {
        let storage = storage.into();
        let shape = Shape::new(dims);
        debug_assert_eq!(
            match &storage {
                Storage::Cpu(v) => v.len(),
                Storage::Cuda(b) => b.len(),
            },
            shape.numel(),
            "storage length vs shape {shape}"
        );
        Tensor { shape, storage }
    }

    /// `self += other` in place, on either device (the tape accumulates gradients with this;
    /// nothing is allocated).
    pub fn add_assign(&mut self, other: &Tensor) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::shape(
                "add_assign",
                format!("{} += {}", self.shape, other.shape),
            ));
        }
        let (a_dev, b_dev) = (self.device(), other.device());
        match (&mut self.storage, &other.storage) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += *b);
                Ok(())
            }
            (Storage::Cuda(a), Storage::Cuda(b)) if a_dev == b_dev => {
                let dev = a.device().clone();
                primitives::add_assign(&dev, a, b)
            }
            _ => Err(Error::DeviceMismatch {
                op: "add_assign",
                a: a_dev.name(),
                b: b_dev.name(),
            }),
        }
    }

    /// The values on the host (a copy when the tensor lives on a GPU). A failed device copy
    /// panics with the CUDA error; [`Tensor::to_host`] returns it instead.
    pub fn to_vec(&self) -> Vec<f32> {
        self.to_host()
            .unwrap_or_else(|e| panic!("copying a tensor of shape {} to the host: {e}", self.shape))
    }

    /// The values on the host, with a device error (a failed copy, or an earlier kernel's
    /// asynchronous fault surfacing here) returned.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::Cuda(s) => s.to_host(),
        }
    }

    fn not_on_cpu(&self, what: &str) -> Error {
        Error::Device(format!(
            "{what}: the tensor of shape {} lives on {}, not the CPU; copy it with to_vec() or \
             to_device(&Device::Cpu)",
            self.shape,
            self.device()
        ))
    }

    /// Borrow CPU values; errors for device tensors (use `to_vec` to copy instead).
    pub fn as_cpu(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(_) => Err(self.not_on_cpu("as_cpu")),
        }
    }

    pub fn as_cpu_mut(&mut self) -> Result<&mut [f32]> {
        if let Storage::Cuda(_) = &self.storage {
            return Err(self.not_on_cpu("as_cpu_mut"));
        }
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(_) => unreachable!("checked above"),
        }
    }

    /// A copy on `device` (host↔GPU through the stream; GPU to the same GPU is a device copy).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        let storage = match (&self.storage, device) {
            (Storage::Cpu(v), Device::Cpu) => Storage::Cpu(v.clone()),
            (Storage::Cpu(v), Device::Cuda(d)) => Storage::Cuda(d.htod(v)?),
            (Storage::Cuda(s), Device::Cpu) => Storage::Cpu(s.to_host()?),
            (Storage::Cuda(s), Device::Cuda(d)) if s.device().ordinal() == d.ordinal() => {
                Storage::Cuda(s.try_clone()?)
            }
            (Storage::Cuda(s), Device::Cuda(d)) => Storage::Cuda(d.htod(&s.to_host()?)?),
        };
        Ok(Tensor {
            shape: self.shape.clone(),
            storage,
        })
    }

    /// A deep copy with a device error returned instead of panicking (`clone` panics on a
    /// failed GPU copy).
    pub fn try_clone(&self) -> Result<Tensor> {
        Ok(Tensor {
            shape: self.shape.clone(),
            storage: match &self.storage {
                Storage::Cpu(v) => Storage::Cpu(v.clone()),
                Storage::Cuda(s) => Storage::Cuda(s.try_clone()?),
            },
        })
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

    /// The values on the host, later: on a GPU the copy is queued and `wait` returns them
    /// once it has run, without waiting for work queued after it (on the CPU, at once).
    pub fn to_host_async(&self) -> Result<HostValues> {
        match &self.storage {
            Storage::Cpu(v) => Ok(HostValues::Ready(v.clone())),
            Storage::Cuda(b) => Ok(HostValues::Pending(b.device().read_async(b)?)),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("tensor of shape {} is not a scalar", self.shape),
            ));
        }
        Ok(self.to_host()?[0])
    }

    /// Bytes the tensor's storage occupies (for memory accounting).
    pub fn nbytes(&self) -> usize {
        self.numel() * std::mem::size_of::<f32>()
    }
}

/// A tensor's values on their way to the host ([`Tensor::to_host_async`]).
pub enum HostValues {
    Ready(Vec<f32>),
    Pending(crate::device::cuda::PendingRead),
}

impl HostValues {
    /// Whether the values are already on the host (`wait` returns at once).
    pub fn is_ready(&self) -> bool {
        matches!(self, HostValues::Ready(_))
    }

    pub fn wait(self) -> Result<Vec<f32>> {
        match self {
            HostValues::Ready(v) => Ok(v),
            HostValues::Pending(p) => p.wait(),
        }
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

/// The error for operands whose storages do not match (after `same_device` passed, this can
/// only be a tensor and a non-tensor operand, such as pooling indices, on different devices).
pub fn device_mismatch(op: &'static str, ts: &[&Tensor]) -> Error {
    match same_device(op, ts) {
        Err(e) => e,
        Ok(d) => Error::DeviceMismatch {
            op,
            a: d.name(),
            b: "an operand on another device".into(),
        },
    }
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
