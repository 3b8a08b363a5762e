//! Typed buffers in device memory: [`GpuBuffer`] owns an allocation on one [`CudaDevice`] (freed
//! on its stream when dropped), [`GpuView`] / [`GpuViewMut`] borrow a range of one. Kernels and
//! cuBLAS see only addresses, so launchers and GEMMs take any [`GpuRead`] / [`GpuWrite`].
//! A zero-length buffer owns no allocation and never reaches the driver.
use std::marker::PhantomData;
use std::ops::Range;

use super::{CudaDevice, DeviceScalar};
use crate::error::{Error, Result};

/// Something that names `len()` elements of type `T` at a device address.
pub trait GpuRead<T> {
    /// The device address of the first element (meaningless, never dereferenced, when empty).
    fn addr(&self) -> u64;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`GpuRead`] that may be written through (an owned buffer borrowed mutably, or a mutable
/// view): launchers take outputs as `&mut impl GpuWrite`, so the borrow checker sees the write.
pub trait GpuWrite<T>: GpuRead<T> {}

/// `len` elements of `T` owned on `dev`.
pub struct GpuBuffer<T: DeviceScalar> {
    dev: CudaDevice,
    addr: u64,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: DeviceScalar> GpuBuffer<T> {
    /// Takes ownership of an allocation made by `dev` (see [`CudaDevice::alloc`]).
    pub(super) fn from_raw(dev: &CudaDevice, addr: u64, len: usize) -> Self {
        GpuBuffer {
            dev: dev.clone(),
            addr,
            len,
            _t: PhantomData,
        }
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check_range(&self, r: &Range<usize>) -> Result<()> {
        if r.start > r.end || r.end > self.len {
            return Err(Error::shape(
                "device buffer view",
                format!(
                    "range {}..{} of a buffer of {} elements",
                    r.start, r.end, self.len
                ),
            ));
        }
        Ok(())
    }

    /// Elements `r` of the buffer, read-only.
    pub fn view(&self, r: Range<usize>) -> Result<GpuView<'_, T>> {
        self.check_range(&r)?;
        Ok(GpuView {
            addr: self.addr + (r.start * std::mem::size_of::<T>()) as u64,
            len: r.end - r.start,
            _b: PhantomData,
        })
    }

    /// Elements `r` of the buffer, writable.
    pub fn view_mut(&mut self, r: Range<usize>) -> Result<GpuViewMut<'_, T>> {
        self.check_range(&r)?;
        Ok(GpuViewMut {
            addr: self.addr + (r.start * std::mem::size_of::<T>()) as u64,
            len: r.end - r.start,
            _b: PhantomData,
        })
    }

    /// The values on the host (waits for the stream; surfaces earlier asynchronous errors).
    pub fn to_host(&self) -> Result<Vec<T>> {
        self.dev.dtoh(self)
    }

    /// A deep copy on the same device, through the counted allocator.
    pub fn try_clone(&self) -> Result<Self> {
        self.dev.dtod(self)
    }
}

impl<T: DeviceScalar> Drop for GpuBuffer<T> {
    fn drop(&mut self) {
        if self.len > 0 {
            self.dev.free(self.addr);
        }
    }
}

/// A deep copy, like `Vec`'s. `Clone` cannot return an error; a failed device copy (out of
/// memory, a faulted context) panics with the CUDA error, as a failed `Vec` allocation aborts.
/// Code that can handle the error calls [`GpuBuffer::try_clone`].
impl<T: DeviceScalar> Clone for GpuBuffer<T> {
    fn clone(&self) -> Self {
        self.try_clone()
            .unwrap_or_else(|e| panic!("copying a buffer on cuda:{}: {e}", self.dev.ordinal()))
    }
}

impl<T: DeviceScalar> std::fmt::Debug for GpuBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuBuffer(cuda:{}, {} x {} bytes)",
            self.dev.ordinal(),
            self.len,
            std::mem::size_of::<T>()
        )
    }
}

/// A read-only range of a [`GpuBuffer`].
#[derive(Clone, Copy, Debug)]
pub struct GpuView<'a, T> {
    addr: u64,
    len: usize,
    _b: PhantomData<&'a T>,
}

/// A writable range of a [`GpuBuffer`].
#[derive(Debug)]
pub struct GpuViewMut<'a, T> {
    addr: u64,
    len: usize,
    _b: PhantomData<&'a mut T>,
}

impl<T: DeviceScalar> GpuRead<T> for GpuBuffer<T> {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
}
impl<T: DeviceScalar> GpuWrite<T> for GpuBuffer<T> {}

impl<T> GpuRead<T> for GpuView<'_, T> {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl<T> GpuRead<T> for GpuViewMut<'_, T> {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
}
impl<T> GpuWrite<T> for GpuViewMut<'_, T> {}
