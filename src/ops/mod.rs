//! Ops: one folder per op family, each with `mod.rs` (shape checks, device dispatch, tape
//! recording and the `Backward`), `cpu.rs` (the reference loops) and, with the CUDA backend,
//! `cuda.rs` beside its kernel in `kernels/`. Forward and backward functions on plain tensors
//! are public too, so benches and parity tests can call them without a tape.
pub mod batch_norm2d;
pub mod concat;
pub mod conv2d;
pub mod elementwise;
pub mod gmp;
pub mod gradcheck;
pub mod loss;
pub mod max_pool2d;
pub mod relu;
pub mod upsample_bilinear;
