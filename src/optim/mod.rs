//! Optimiser and learning-rate schedule: Adam (PyTorch semantics) and cosine annealing with warm
//! restarts (SGDR, as `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`).
pub mod adam;
pub mod sgdr;

pub use adam::{Adam, AdamConfig};
pub use sgdr::Sgdr;

/// The optimiser's CUDA kernel files (see `crate::kernels`).
pub static CUDA_KERNELS: &[crate::device::cuda::KernelFile] = &[adam::cuda::KERNELS];
