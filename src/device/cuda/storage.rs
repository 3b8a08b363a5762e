//! A tensor's f32 buffer on a GPU, with the device that owns it (the stream every op on it
//! runs on).
use cudarc::driver::CudaSlice;

use super::CudaDevice;
use crate::error::Result;

pub struct CudaStorage {
    dev: CudaDevice,
    buf: CudaSlice<f32>,
}

impl CudaStorage {
    pub fn new(dev: &CudaDevice, buf: CudaSlice<f32>) -> Self {
        CudaStorage {
            dev: dev.clone(),
            buf,
        }
    }

    /// Copies host values to a new buffer on `dev`.
    pub fn from_host(dev: &CudaDevice, host: &[f32]) -> Result<Self> {
        Ok(Self::new(dev, dev.htod(host)?))
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }
    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.buf
    }
    pub fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.buf
    }
    pub fn into_slice(self) -> CudaSlice<f32> {
        self.buf
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.len() == 0
    }

    /// The values on the host (waits for the stream).
    pub fn to_host(&self) -> Result<Vec<f32>> {
        self.dev.dtoh(&self.buf)
    }

    /// A deep copy on the same device, through the counted allocator.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self::new(&self.dev, self.dev.dtod(&self.buf)?))
    }
}

/// A deep copy, like `Vec`'s. `Clone` cannot return an error; a failed device copy (out of
/// memory, a faulted context) panics with the CUDA error, as a failed `Vec` allocation aborts.
/// Code that can handle the error calls [`CudaStorage::try_clone`].
impl Clone for CudaStorage {
    fn clone(&self) -> Self {
        self.try_clone()
            .unwrap_or_else(|e| panic!("copying a tensor on cuda:{}: {e}", self.dev.ordinal()))
    }
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage(cuda:{}, {} f32)",
            self.dev.ordinal(),
            self.len()
        )
    }
}
