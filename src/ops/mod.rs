//! Ops: one folder per op family, each with `mod.rs` (shape checks, device dispatch, tape
//! recording and the `Backward`), `cpu.rs` (the reference loops) and, with the CUDA backend,
//! `cuda.rs` beside its kernel in `kernels/`. Forward and backward functions on plain tensors
//! are public too, so benches and parity tests can call them without a tape.
//!
//! The op surface the layers build on (tensors are NCHW f32):
//! - `conv2d(tape, x, w, b: Option, Conv2dArgs { stride, padding })`, weight `[O, C, kh, kw]`;
//! - `max_pool2d(tape, x)`: 2x2 window, stride 2, floor (PyTorch's default);
//! - `relu(tape, x)`;
//! - `batch_norm2d_train(tape, x, gamma, beta, eps) -> (y, BatchStats)` and
//!   `batch_norm2d_eval(tape, x, gamma, beta, running_mean, running_var, eps)`, with
//!   `update_running_stats(.., momentum)` (unbiased running variance, as PyTorch);
//! - `upsample_bilinear(tape, x, out_h, out_w, align_corners)` (PyTorch `F.interpolate`);
//! - `gmp_sample(tape, x, offsets)`: the mean over K bilinear samples of DESIGN §1, and
//!   `gmp_residual(tape, x, offsets)`: the GMP layer's `x + gmp_sample(x, offsets)`;
//! - `concat_channels(tape, &[x, ..])`;
//! - `add`, `scale`, `abs`, `sum` (elementwise);
//! - `count_l1_loss(tape, z, counts)` (Eq. 1, batch mean) and `mse_loss(tape, pred, target)`.
use crate::device::cuda::KernelFile;

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

/// The CUDA kernel files of the ops and their entry points (see `crate::kernels` for the whole
/// crate's list).
pub static CUDA_KERNELS: &[KernelFile] = &[
    batch_norm2d::cuda::KERNELS,
    concat::cuda::KERNELS,
    conv2d::cuda::KERNELS,
    conv2d::cuda_v2::KERNELS,
    elementwise::cuda::KERNELS,
    gmp::cuda::KERNELS,
    gmp::cl::KERNELS,
    loss::cuda::KERNELS,
    max_pool2d::cuda::KERNELS,
    relu::cuda::KERNELS,
    upsample_bilinear::cuda::KERNELS,
];
