//! Every CUDA op against the CPU reference ops, through the `Tensor` API: random inputs are
//! built on the CPU, copied to the GPU, both devices run the same op, and the results are
//! compared. Runs only with `DCL_TEST_CUDA=1` on a machine with a GPU; otherwise every test
//! prints a note and passes.
//!
//! Inputs are random and never zero (no ReLU/|.| kinks hit exactly), with odd sizes (H != W,
//! element counts that are not multiples of the 256-thread block), batches of 1 and 3, GMP
//! samples outside the map and at exact integer positions, and non-finite GMP offsets (the
//! CPU's NaN semantics must be reproduced exactly). Errors are normwise,
//! max |gpu − cpu| / max |cpu| per tensor: at most 1e-5 for elementwise ops, pooling,
//! resizing and copies, 1e-4 for reductions and FP32 GEMM-based ops, 1e-2 for TF32 GEMMs
//! (and bf16 operands at their own bound, `BF16`).
//! Full training steps compare the loss and every parameter gradient with the looser bounds
//! explained at `STEP_TOL`.
//!
//! What of this has run on a GPU is recorded in BENCHMARKS.md.
mod batch_norm2d;
mod concat;
mod conv2d;
mod coverage;
mod device;
mod elementwise;
mod gmp;
mod loss;
mod max_pool2d;
mod optim;
mod steps;
mod upsample_bilinear;

use std::sync::{Mutex, MutexGuard};

use dcl::autograd::{Tape, Var};
use dcl::bench::kernels::{run_kernel_bench, KernelBenchOptions};
use dcl::device::cuda::gemm::{sgemm, RowMajorGemm};
use dcl::device::{CudaDevice, Device};
use dcl::nn::{apply_bn_updates, Counter, Forward, Localizer, ModelConfig, ModelKind};
use dcl::ops::batch_norm2d::{
    batch_norm2d_backward, batch_norm2d_eval_forward, batch_norm2d_train_forward,
    update_running_stats, BatchNormMode, BatchNormNeeds, BatchNormSaved,
};
use dcl::ops::concat::{concat_channels_backward, concat_channels_forward};
use dcl::ops::conv2d::{
    conv2d_backward, conv2d_forward, cuda as conv_cuda, Conv2dArgs, ConvMath, ConvVersion,
};
use dcl::ops::elementwise::{abs_backward, abs_tensor, add, add_tensors, scale_tensor, sum_tensor};
use dcl::ops::gmp::{gmp_sample_backward, gmp_sample_forward, GmpKernel};
use dcl::ops::loss::{
    count_l1_loss, count_l1_loss_backward, count_l1_loss_forward, mse_loss, mse_loss_backward,
    mse_loss_forward, per_image_counts, window_count_l1_loss, window_sums,
};
use dcl::ops::max_pool2d::{max_pool2d_backward, max_pool2d_forward};
use dcl::ops::relu::{relu_backward, relu_forward};
use dcl::ops::upsample_bilinear::{upsample_bilinear_backward, upsample_bilinear_forward};
use dcl::optim::adam::{update_tensor, AdamStep};
use dcl::optim::{Adam, AdamConfig};
use dcl::tensor::Tensor;

const ELEMENTWISE: f64 = 1e-5;
const REDUCTION: f64 = 1e-4;
const TF32: f64 = 1e-2;
/// Whole training steps (see `steps::compare_steps`): the median gradient tensor within
/// `STEP_TOL`, every one within `STEP_TOL_ANY`, or within 3x what a 1e-6 input perturbation
/// does to the CPU's own gradients (ReLU kinks and max-pool ties make a step's gradients
/// sensitive at that level; the GMP offsets' floor cells likewise).
const STEP_TOL: f64 = 2e-3;
const STEP_TOL_ANY: f64 = 5e-2;

/// GPU tests run one at a time: the allocation test reads device-wide counters.
static GPU: Mutex<()> = Mutex::new(());

/// `DCL_TEST_CUDA=1`: the GPU; `DCL_TEST_CUDA=host`: the host emulation (`cuda-host`), which
/// runs the same kernels through the same launchers as C++ with CUDA semantics.
fn gpu(test: &str) -> Option<(MutexGuard<'static, ()>, Device, CudaDevice)> {
    let which = match std::env::var("DCL_TEST_CUDA").ok().as_deref() {
        Some("1") => "cuda",
        Some("host") => "cuda-host",
        _ => {
            eprintln!("{test}: skipped (DCL_TEST_CUDA=1 on a machine with a GPU, or =host)");
            return None;
        }
    };
    let guard = GPU.lock().unwrap_or_else(|p| p.into_inner());
    let device = Device::parse(which).unwrap_or_else(|e| panic!("DCL_TEST_CUDA: {which}: {e}"));
    let dev = device.cuda().expect("a CUDA device").clone();
    // Every test starts from the defaults (another test may have switched them), the
    // convolutions pinned to strict FP32 (their default is TF32 on Ampere and later), since
    // the tests compare at 1e-4; the TF32 and bf16 comparisons switch explicitly.
    dev.set_tf32(false).unwrap();
    dcl::ops::gmp::set_kernel(GmpKernel::Fused);
    dcl::ops::conv2d::set_version(ConvVersion::default());
    dcl::ops::conv2d::set_math(ConvMath::Fp32);
    eprintln!("{test}: {}", dev.info());
    Some((guard, device, dev))
}

/// Deterministic values in ±[0.05, 1]: never zero, both signs.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let u = (self.0 >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
        let m = 0.05 + 0.95 * u;
        if self.0 & 1 == 0 {
            m
        } else {
            -m
        }
    }
    fn vec(&mut self, n: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale + shift).collect()
    }
    /// A CPU tensor of `dims` with values scale·(±[0.05, 1]) + shift.
    fn tensor(&mut self, dims: &[usize], scale: f32, shift: f32) -> Tensor {
        let n = dims.iter().product();
        Tensor::from_vec(self.vec(n, scale, shift), dims).unwrap()
    }
}

fn on(t: &Tensor, d: &Device) -> Tensor {
    t.to_device(d).unwrap()
}

/// Normwise relative error of `got` against `want`; NaNs must sit at the same places.
fn close_vals(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: gpu {g}, cpu NaN");
            continue;
        }
        if w.is_infinite() {
            assert_eq!(g, w, "{what}[{i}]");
            continue;
        }
        assert!(g.is_finite(), "{what}[{i}]: gpu {g}, cpu {w}");
        let e = (*g as f64 - *w as f64).abs() / scale;
        if e > worst.0 {
            worst = (e, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: normwise error {:.3e} > {tol:.0e} at [{}]: gpu {} vs cpu {}",
        worst.0,
        worst.1,
        got[worst.1],
        want[worst.1]
    );
    worst.0
}

/// `gpu` lives on the GPU, has `cpu`'s shape and values within `tol`.
fn close(what: &str, gpu: &Tensor, cpu: &Tensor, tol: f64) -> f64 {
    assert!(
        gpu.device().is_cuda(),
        "{what}: the result is not on the GPU"
    );
    assert_eq!(gpu.dims(), cpu.dims(), "{what}: shape");
    close_vals(what, &gpu.to_vec(), &cpu.to_vec(), tol)
}
