//! dcl: "Decoupling Counting and Localization" (MICCAI 2024) cell counting — tensors, ops with
//! CPU references (and CUDA kernels), an autograd tape, the counter and localizer networks,
//! training, data and the `dcl` command-line tool.
pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod fsutil;
pub mod infer;
pub mod kernels;
pub mod metrics;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod progress;
pub mod report;
pub mod rng;
pub mod shipped;
pub mod tensor;
pub mod train;

pub use error::{Error, Result};
