//! Optimiser and learning-rate schedule: Adam (PyTorch semantics) and cosine annealing with warm
//! restarts (SGDR, as `torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`).
pub mod adam;
pub mod cuda;
pub mod sgdr;

pub use adam::{Adam, AdamConfig};
pub use sgdr::Sgdr;
