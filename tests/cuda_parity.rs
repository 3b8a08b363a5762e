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
//! resizing and copies, 1e-4 for reductions and FP32 GEMM-based ops, 1e-2 for TF32 GEMMs.
//! Full training steps compare the loss and every parameter gradient with the looser bounds
//! explained at `STEP_TOL`.
//!
//! What of this has run on a GPU is recorded in BENCHMARKS.md.
use std::sync::{Mutex, MutexGuard};

use dcl::autograd::{Tape, Var};
use dcl::bench::kernels::{run_kernel_bench, KernelBenchOptions};
use dcl::device::cuda::gemm::{sgemm, RowMajorGemm};
use dcl::device::{CudaDevice, Device};
use dcl::nn::{apply_bn_updates, Counter, Forward, Localizer, ModelConfig, ModelKind};
use dcl::ops::batch_norm2d::{
    batch_norm2d_eval_backward, batch_norm2d_eval_forward, batch_norm2d_train_backward,
    batch_norm2d_train_forward, update_running_stats, BatchNormSaved,
};
use dcl::ops::concat::{concat_channels_backward, concat_channels_forward};
use dcl::ops::conv2d::{conv2d_backward, conv2d_forward, cuda as conv_cuda, Conv2dArgs};
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
/// Whole training steps: 20-odd layers of FP32 GEMMs and batch statistics summed in a different
/// order on each device, through BatchNorm (which rescales small differences) and ReLU/max-pool
/// decisions on values that differ in the last bits. 2e-3 normwise per parameter gradient.
const STEP_TOL: f64 = 2e-3;
/// The GMP offsets' gradient is discontinuous where a sample crosses an integer position
/// (the floor cell changes), so a sample within rounding of an integer may take the other
/// cell's derivative on one device: the offset conv's parameters get a looser bound.
const STEP_TOL_GMP_OFFSETS: f64 = 3e-2;

/// GPU tests run one at a time: the allocation test reads device-wide counters.
static GPU: Mutex<()> = Mutex::new(());

fn gpu(test: &str) -> Option<(MutexGuard<'static, ()>, Device, CudaDevice)> {
    if std::env::var("DCL_TEST_CUDA").ok().as_deref() != Some("1") {
        eprintln!("{test}: skipped (set DCL_TEST_CUDA=1 on a machine with a GPU)");
        return None;
    }
    let guard = GPU.lock().unwrap_or_else(|p| p.into_inner());
    let device = Device::parse("cuda").unwrap_or_else(|e| panic!("DCL_TEST_CUDA=1 but: {e}"));
    let dev = device.cuda().expect("a CUDA device").clone();
    // Every test starts from the defaults (another test may have switched them).
    dev.set_tf32(false).unwrap();
    dcl::ops::gmp::set_kernel(GmpKernel::Fused);
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

// ------------------------------------------------------------------------------------------
// device layer: copies, GEMM operand order, TF32, mixed devices

#[test]
fn copies_round_trip_and_mixed_devices_are_refused() {
    let Some((_g, d, _dev)) = gpu("copies") else {
        return;
    };
    let mut r = Rng(1);
    let x = r.tensor(&[3, 5, 7, 9], 1.0, 0.0);
    let xg = on(&x, &d);
    assert_eq!(xg.device(), d);
    assert_eq!(xg.to_vec(), x.to_vec());
    assert_eq!(xg.clone().to_vec(), x.to_vec(), "clone is a device copy");
    assert_eq!(on(&xg, &Device::Cpu).to_vec(), x.to_vec());
    assert_eq!(xg.clone().into_device(&d).unwrap().to_vec(), x.to_vec());
    let e = xg.as_cpu().unwrap_err().to_string();
    assert!(e.contains("cuda:0") && e.contains("to_vec"), "{e}");
    let z = Tensor::try_full(&[2, 257], 0.0, &d).unwrap();
    assert!(z.to_vec().iter().all(|&v| v == 0.0));
    assert_eq!(Tensor::full(&[3], 2.5, &d).to_vec(), vec![2.5; 3]);
    let e = add_tensors(&x, &xg).unwrap_err().to_string();
    assert!(e.contains("different devices"), "{e}");
    let w = r.tensor(&[2, 5, 3, 3], 1.0, 0.0);
    let args = Conv2dArgs {
        stride: 1,
        padding: 1,
    };
    assert!(matches!(
        conv2d_forward(&xg, &w, None, args),
        Err(dcl::Error::DeviceMismatch { .. })
    ));
    let (_, idx) = max_pool2d_forward(&x).unwrap();
    let dy = on(&r.tensor(&idx.out_dims(), 1.0, 0.0), &d);
    assert!(matches!(
        max_pool2d_backward(&dy, &idx, x.dims()),
        Err(dcl::Error::DeviceMismatch { .. })
    ));
}

#[test]
fn sgemm_3x5_times_5x7_and_tf32_switch() {
    let Some((_g, _d, dev)) = gpu("sgemm") else {
        return;
    };
    let mut r = Rng(2);
    for (m, k, n, tf32) in [(3, 5, 7, false), (64, 96, 80, false), (64, 96, 80, true)] {
        let a = r.vec(m * k, 1.0, 0.0);
        let b = r.vec(k * n, 1.0, 0.0);
        let want: Vec<f32> = (0..m * n)
            .map(|ij| {
                (0..k)
                    .map(|l| a[(ij / n) * k + l] as f64 * b[l * n + ij % n] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let (ad, bd) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
        let mut cd = dev.alloc::<f32>(m * n).unwrap();
        dev.set_tf32(tf32).unwrap();
        assert_eq!(dev.tf32(), tf32);
        sgemm(
            &dev,
            &RowMajorGemm::packed(m, n, k, false, false),
            &ad,
            &bd,
            &mut cd,
        )
        .unwrap();
        let tol = if tf32 { TF32 } else { REDUCTION };
        close_vals(
            &format!("C = A·B ({m}x{k}·{k}x{n}, tf32 {tf32})"),
            &dev.dtoh(&cd).unwrap(),
            &want,
            tol,
        );
    }
    dev.set_tf32(false).unwrap();
}

// ------------------------------------------------------------------------------------------
// elementwise, relu

#[test]
fn elementwise_relu_and_sum() {
    let Some((_g, d, _dev)) = gpu("elementwise") else {
        return;
    };
    let mut r = Rng(3);
    for dims in [vec![1, 3, 5, 7], vec![3, 2, 37, 29], vec![1]] {
        let a = r.tensor(&dims, 1.0, 0.0);
        let b = r.tensor(&dims, 2.0, 0.1);
        let dy = r.tensor(&dims, 1.0, 0.0);
        let (ag, bg, dyg) = (on(&a, &d), on(&b, &d), on(&dy, &d));
        let tag = format!("{dims:?}");
        close(
            &format!("add {tag}"),
            &add_tensors(&ag, &bg).unwrap(),
            &add_tensors(&a, &b).unwrap(),
            ELEMENTWISE,
        );
        let (mut acc, mut accg) = (a.clone(), ag.clone());
        acc.add_assign(&b).unwrap();
        accg.add_assign(&bg).unwrap();
        close(&format!("add_assign {tag}"), &accg, &acc, ELEMENTWISE);
        close(
            &format!("scale {tag}"),
            &scale_tensor(&ag, -1.7).unwrap(),
            &scale_tensor(&a, -1.7).unwrap(),
            ELEMENTWISE,
        );
        close(
            &format!("abs {tag}"),
            &abs_tensor(&ag).unwrap(),
            &abs_tensor(&a).unwrap(),
            ELEMENTWISE,
        );
        close(
            &format!("abs backward {tag}"),
            &abs_backward(&ag, &dyg).unwrap(),
            &abs_backward(&a, &dy).unwrap(),
            ELEMENTWISE,
        );
        close(
            &format!("sum {tag}"),
            &sum_tensor(&ag).unwrap(),
            &sum_tensor(&a).unwrap(),
            REDUCTION,
        );
        let (y, yg) = (relu_forward(&a).unwrap(), relu_forward(&ag).unwrap());
        close(&format!("relu {tag}"), &yg, &y, ELEMENTWISE);
        close(
            &format!("relu backward {tag}"),
            &relu_backward(&yg, &dyg).unwrap(),
            &relu_backward(&y, &dy).unwrap(),
            ELEMENTWISE,
        );
    }
    // The tape's scalar-sum backward broadcasts a device scalar.
    let a = r.tensor(&[3, 4, 5], 1.0, 0.0);
    let ag = on(&a, &d);
    for (x, dev) in [(a, Device::Cpu), (ag, d.clone())] {
        let tape = Tape::new();
        let v = tape.leaf(x);
        let s = dcl::ops::elementwise::sum(&tape, &v).unwrap();
        let g = tape.backward(&s).unwrap();
        let gv = g.get(&v).unwrap();
        assert_eq!(gv.device(), dev);
        assert_eq!(gv.to_vec(), vec![1.0; 60]);
    }
}

// ------------------------------------------------------------------------------------------
// max pooling

#[test]
fn max_pool_forward_backward() {
    let Some((_g, d, _dev)) = gpu("max_pool2d") else {
        return;
    };
    let mut r = Rng(4);
    for dims in [[3, 4, 7, 10], [1, 2, 6, 5], [3, 3, 33, 17]] {
        let x = r.tensor(&dims, 1.0, 0.0);
        let xg = on(&x, &d);
        let (y, idx) = max_pool2d_forward(&x).unwrap();
        let (yg, idxg) = max_pool2d_forward(&xg).unwrap();
        close(&format!("max_pool y {dims:?}"), &yg, &y, 0.0);
        assert_eq!(
            idxg.to_vec().unwrap(),
            idx.to_vec().unwrap(),
            "argmax {dims:?}"
        );
        let dy = r.tensor(&idx.out_dims(), 1.0, 0.0);
        close(
            &format!("max_pool dx {dims:?}"),
            &max_pool2d_backward(&on(&dy, &d), &idxg, &dims).unwrap(),
            &max_pool2d_backward(&dy, &idx, &dims).unwrap(),
            0.0,
        );
    }
    // ties (first maximum) and NaNs (the last NaN wins), as the CPU
    let x = Tensor::from_vec(
        vec![
            3.,
            3.,
            1.,
            f32::NAN, //
            3.,
            3.,
            f32::NAN,
            2., //
        ],
        &[1, 1, 2, 4],
    )
    .unwrap();
    let (y, idx) = max_pool2d_forward(&x).unwrap();
    let (yg, idxg) = max_pool2d_forward(&on(&x, &d)).unwrap();
    assert_eq!(idxg.to_vec().unwrap(), idx.to_vec().unwrap());
    close("max_pool ties and NaN", &yg, &y, 0.0);
}

// ------------------------------------------------------------------------------------------
// convolution

#[test]
fn conv2d_forward_backward_all_paths() {
    let Some((_g, d, dev)) = gpu("conv2d") else {
        return;
    };
    let mut r = Rng(5);
    // (x dims, out channels, kernel, stride, padding, bias)
    let cases = [
        ([3, 2, 9, 7], 5, 3, 1, 1, true),
        ([1, 3, 6, 11], 4, 3, 2, 1, true),
        ([3, 4, 5, 6], 7, 1, 1, 0, true), // pointwise: x is its own column matrix
        ([2, 1, 8, 8], 3, 2, 3, 0, false),
        ([1, 17, 13, 19], 33, 3, 1, 1, false),
    ];
    for (xd, o, k, stride, padding, bias) in cases {
        let args = Conv2dArgs { stride, padding };
        let x = r.tensor(&xd, 1.0, 0.0);
        let w = r.tensor(&[o, xd[1], k, k], 0.5, 0.0);
        let b = bias.then(|| r.tensor(&[o], 0.5, 0.0));
        let (xg, wg, bg) = (on(&x, &d), on(&w, &d), b.as_ref().map(|b| on(b, &d)));
        let tag = format!("x {xd:?} w {:?} s{stride} p{padding}", w.dims());
        let y = conv2d_forward(&x, &w, b.as_ref(), args).unwrap();
        let yg = conv2d_forward(&xg, &wg, bg.as_ref(), args).unwrap();
        close(&format!("conv y {tag}"), &yg, &y, REDUCTION);
        let dy = r.tensor(y.dims(), 1.0, 0.0);
        let gc = conv2d_backward(&x, &w, &dy, args, true, true, bias).unwrap();
        let gg = conv2d_backward(&xg, &wg, &on(&dy, &d), args, true, true, bias).unwrap();
        close(
            &format!("conv dx {tag}"),
            gg.dx.as_ref().unwrap(),
            gc.dx.as_ref().unwrap(),
            REDUCTION,
        );
        close(
            &format!("conv dw {tag}"),
            gg.dw.as_ref().unwrap(),
            gc.dw.as_ref().unwrap(),
            REDUCTION,
        );
        if bias {
            close(
                &format!("conv db {tag}"),
                gg.db.as_ref().unwrap(),
                gc.db.as_ref().unwrap(),
                REDUCTION,
            );
        }
        // only what is asked for
        let only_dw = conv2d_backward(&xg, &wg, &on(&dy, &d), args, false, true, false).unwrap();
        assert!(only_dw.dx.is_none() && only_dw.db.is_none());
        close(
            &format!("conv dw alone {tag}"),
            only_dw.dw.as_ref().unwrap(),
            gc.dw.as_ref().unwrap(),
            REDUCTION,
        );
        // a column workspace of one image: the tiled path gives the same result
        let geo = dcl::ops::conv2d::Conv2dGeometry::new(&x, &w, args).unwrap();
        let s = geo.cuda_shape();
        let one = geo.col_rows() * geo.col_cols();
        let yt = conv_cuda::forward_ws(
            &dev,
            xg.gpu_buffer().unwrap(),
            wg.gpu_buffer().unwrap(),
            bg.as_ref().map(|b| b.gpu_buffer().unwrap()),
            &s,
            one,
        )
        .unwrap();
        close_vals(
            &format!("conv y, 1-image tiles {tag}"),
            &dev.dtoh(&yt).unwrap(),
            &y.to_vec(),
            REDUCTION,
        );
    }
    // TF32 on the largest case
    let (xd, o) = ([1, 17, 13, 19], 33);
    let args = Conv2dArgs {
        stride: 1,
        padding: 1,
    };
    let x = r.tensor(&xd, 1.0, 0.0);
    let w = r.tensor(&[o, xd[1], 3, 3], 0.5, 0.0);
    let y = conv2d_forward(&x, &w, None, args).unwrap();
    dev.set_tf32(true).unwrap();
    let yg = conv2d_forward(&on(&x, &d), &on(&w, &d), None, args).unwrap();
    dev.set_tf32(false).unwrap();
    close("conv y (tf32)", &yg, &y, TF32);
}

// ------------------------------------------------------------------------------------------
// batch norm

#[test]
fn batch_norm_train_eval_running_and_backward() {
    let Some((_g, d, _dev)) = gpu("batch_norm2d") else {
        return;
    };
    let mut r = Rng(6);
    for dims in [[3, 5, 7, 9], [1, 3, 17, 2], [3, 2, 33, 31]] {
        let c = dims[1];
        // a large common offset: the two-pass statistics must not lose it
        let x = r.tensor(&dims, 2.0, 30.0);
        let gamma = r.tensor(&[c], 1.0, 0.0);
        let beta = r.tensor(&[c], 1.0, 0.0);
        let dy = r.tensor(&dims, 1.0, 0.0);
        let (xg, gg, bg, dyg) = (on(&x, &d), on(&gamma, &d), on(&beta, &d), on(&dy, &d));
        let tag = format!("{dims:?}");
        let (y, saved, stats) = batch_norm2d_train_forward(&x, &gamma, &beta, 1e-5).unwrap();
        let (yg, savedg, statsg) = batch_norm2d_train_forward(&xg, &gg, &bg, 1e-5).unwrap();
        close(&format!("bn y {tag}"), &yg, &y, REDUCTION);
        close(
            &format!("bn mean {tag}"),
            &savedg.mean,
            &saved.mean,
            REDUCTION,
        );
        close(
            &format!("bn invstd {tag}"),
            &savedg.invstd,
            &saved.invstd,
            REDUCTION,
        );
        close(
            &format!("bn unbiased var {tag}"),
            &statsg.var_unbiased,
            &stats.var_unbiased,
            REDUCTION,
        );
        let gc = batch_norm2d_train_backward(&x, &gamma, &saved, &dy, true, true, true).unwrap();
        let gp = batch_norm2d_train_backward(&xg, &gg, &savedg, &dyg, true, true, true).unwrap();
        for (what, a, b) in [
            ("dx", &gp.dx, &gc.dx),
            ("dgamma", &gp.dgamma, &gc.dgamma),
            ("dbeta", &gp.dbeta, &gc.dbeta),
        ] {
            close(
                &format!("bn train {what} {tag}"),
                a.as_ref().unwrap(),
                b.as_ref().unwrap(),
                REDUCTION,
            );
        }
        // running statistics
        let (mut rm, mut rv) = (r.tensor(&[c], 1.0, 0.0), r.tensor(&[c], 0.5, 1.0));
        let (mut rmg, mut rvg) = (on(&rm, &d), on(&rv, &d));
        update_running_stats(&mut rm, &mut rv, &stats, 0.1).unwrap();
        update_running_stats(&mut rmg, &mut rvg, &statsg, 0.1).unwrap();
        close(&format!("running mean {tag}"), &rmg, &rm, REDUCTION);
        close(&format!("running var {tag}"), &rvg, &rv, REDUCTION);
        // eval mode
        let ye = batch_norm2d_eval_forward(&x, &gamma, &beta, &rm, &rv, 1e-5).unwrap();
        let yeg = batch_norm2d_eval_forward(&xg, &gg, &bg, &rmg, &rvg, 1e-5).unwrap();
        close(&format!("bn eval y {tag}"), &yeg, &ye, REDUCTION);
        let se = BatchNormSaved::from_running(&rm, &rv, 1e-5).unwrap();
        let seg = BatchNormSaved::from_running(&rmg, &rvg, 1e-5).unwrap();
        let ge = batch_norm2d_eval_backward(&x, &gamma, &se, &dy, true, true, true).unwrap();
        let geg = batch_norm2d_eval_backward(&xg, &gg, &seg, &dyg, true, true, true).unwrap();
        for (what, a, b) in [
            ("dx", &geg.dx, &ge.dx),
            ("dgamma", &geg.dgamma, &ge.dgamma),
            ("dbeta", &geg.dbeta, &ge.dbeta),
        ] {
            close(
                &format!("bn eval {what} {tag}"),
                a.as_ref().unwrap(),
                b.as_ref().unwrap(),
                REDUCTION,
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// bilinear resize

#[test]
fn upsample_bilinear_both_modes_forward_backward() {
    let Some((_g, d, _dev)) = gpu("upsample_bilinear") else {
        return;
    };
    let mut r = Rng(7);
    // (x dims, out size): x2, odd factors, a downsample, to 1x1
    let cases = [
        ([3, 2, 5, 7], (10, 14)),
        ([1, 3, 4, 6], (11, 13)),
        ([3, 1, 9, 8], (4, 3)),
        ([1, 2, 3, 5], (1, 1)),
        ([1, 4, 16, 16], (128, 128)),
    ];
    for (xd, (oh, ow)) in cases {
        for align in [false, true] {
            let tag = format!("{xd:?} -> {oh}x{ow} align_corners={align}");
            let x = r.tensor(&xd, 1.0, 0.0);
            close(
                &format!("upsample y {tag}"),
                &upsample_bilinear_forward(&on(&x, &d), oh, ow, align).unwrap(),
                &upsample_bilinear_forward(&x, oh, ow, align).unwrap(),
                ELEMENTWISE,
            );
            let dy = r.tensor(&[xd[0], xd[1], oh, ow], 1.0, 0.0);
            // the backward sums overlapping shares (atomics on the GPU): reduction bound
            close(
                &format!("upsample dx {tag}"),
                &upsample_bilinear_backward(&on(&dy, &d), xd[2], xd[3], align).unwrap(),
                &upsample_bilinear_backward(&dy, xd[2], xd[3], align).unwrap(),
                REDUCTION,
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// GMP

/// Offsets with moves of up to `reach` pixels (many samples outside a small map), and some
/// exact integers (samples on pixel centres and cell edges).
fn gmp_offsets(r: &mut Rng, dims: &[usize], reach: f32) -> Tensor {
    let mut v = r.vec(dims.iter().product(), reach, 0.0);
    for (i, o) in v.iter_mut().enumerate() {
        if i % 7 == 0 {
            *o = ((i / 7) % 5) as f32 - 2.0;
        }
    }
    Tensor::from_vec(v, dims).unwrap()
}

fn gmp_compare(d: &Device, x: &Tensor, off: &Tensor, da: &Tensor, tag: &str) {
    let a = gmp_sample_forward(x, off).unwrap();
    let g = gmp_sample_backward(x, off, da, true, true).unwrap();
    let (xg, og, dag) = (on(x, d), on(off, d), on(da, d));
    let k = off.dims()[1] / 2;
    for v in GmpKernel::ALL {
        dcl::ops::gmp::set_kernel(v);
        if v == GmpKernel::Fused && k > dcl::ops::gmp::cuda::FUSED_MAX_K {
            let e = gmp_sample_forward(&xg, &og).unwrap_err().to_string();
            assert!(e.contains("naive"), "{e}");
            continue;
        }
        let tag = format!("{tag} {}", v.name());
        close(
            &format!("gmp a {tag}"),
            &gmp_sample_forward(&xg, &og).unwrap(),
            &a,
            REDUCTION,
        );
        let gg = gmp_sample_backward(&xg, &og, &dag, true, true).unwrap();
        close(
            &format!("gmp dx {tag}"),
            gg.dx.as_ref().unwrap(),
            g.dx.as_ref().unwrap(),
            REDUCTION,
        );
        close(
            &format!("gmp doffsets {tag}"),
            gg.doffsets.as_ref().unwrap(),
            g.doffsets.as_ref().unwrap(),
            REDUCTION,
        );
    }
    dcl::ops::gmp::set_kernel(GmpKernel::Fused);
}

#[test]
fn gmp_three_versions_match_the_cpu() {
    let Some((_g, d, _dev)) = gpu("gmp_sample") else {
        return;
    };
    let mut r = Rng(8);
    // (n, c, h, w, k, reach)
    for (n, c, h, w, k, reach) in [
        (3, 5, 7, 9, 4, 4.0),
        (1, 3, 6, 11, 8, 2.5),
        (3, 37, 5, 4, 2, 6.0),
        (1, 2, 9, 6, 17, 3.0), // beyond the fused kernel's K: naive and unfused only
        (2, 64, 16, 16, 8, 8.0),
    ] {
        let x = r.tensor(&[n, c, h, w], 1.0, 0.0);
        let off = gmp_offsets(&mut r, &[n, 2 * k, h, w], reach);
        let da = r.tensor(&[n, c, h, w], 1.0, 0.0);
        gmp_compare(&d, &x, &off, &da, &format!("N{n} C{c} {h}x{w} K{k}"));
    }
}

/// Non-finite offsets: the CPU gives NaN samples (and NaN gradients at the taps it touches),
/// and every CUDA version must put its NaNs at exactly the same places.
#[test]
fn gmp_non_finite_offsets_follow_the_cpu() {
    let Some((_g, d, _dev)) = gpu("gmp_sample non-finite") else {
        return;
    };
    let mut r = Rng(9);
    let (n, c, h, w, k) = (2, 3, 5, 6, 3);
    let x = r.tensor(&[n, c, h, w], 1.0, 0.0);
    let mut off = gmp_offsets(&mut r, &[n, 2 * k, h, w], 2.0).to_vec();
    let at = |img: usize, ch: usize, i: usize, j: usize| ((img * 2 * k + ch) * h + i) * w + j;
    off[at(0, 0, 1, 2)] = f32::NAN; // u of sample 0
    off[at(0, 3, 4, 5)] = f32::INFINITY; // v of sample 1
    off[at(1, 4, 0, 0)] = f32::NEG_INFINITY; // u of sample 2
    off[at(1, 1, 2, 3)] = 1e30; // huge but finite: outside, not NaN
    let off = Tensor::from_vec(off, &[n, 2 * k, h, w]).unwrap();
    let da = r.tensor(&[n, c, h, w], 1.0, 0.0);
    let a = gmp_sample_forward(&x, &off).unwrap().to_vec();
    assert!(a.iter().any(|v| v.is_nan()), "the CPU reference makes NaNs");
    gmp_compare(&d, &x, &off, &da, "non-finite offsets");
}

// ------------------------------------------------------------------------------------------
// concat, losses, Adam

#[test]
fn concat_forward_backward() {
    let Some((_g, d, _dev)) = gpu("concat") else {
        return;
    };
    let mut r = Rng(10);
    for (n, h, w, chans) in [(3, 5, 7, vec![2, 1, 4]), (1, 16, 9, vec![3, 1])] {
        let xs: Vec<Tensor> = chans
            .iter()
            .map(|&c| r.tensor(&[n, c, h, w], 1.0, 0.0))
            .collect();
        let xg: Vec<Tensor> = xs.iter().map(|x| on(x, &d)).collect();
        let y = concat_channels_forward(&xs.iter().collect::<Vec<_>>()).unwrap();
        let yg = concat_channels_forward(&xg.iter().collect::<Vec<_>>()).unwrap();
        close("concat y", &yg, &y, 0.0);
        let dy = r.tensor(y.dims(), 1.0, 0.0);
        let gc = concat_channels_backward(&dy, &chans).unwrap();
        let gg = concat_channels_backward(&on(&dy, &d), &chans).unwrap();
        for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
            close(&format!("concat d{i}"), a, b, 0.0);
        }
    }
}

#[test]
fn count_l1_and_mse_losses() {
    let Some((_g, d, _dev)) = gpu("losses") else {
        return;
    };
    let mut r = Rng(11);
    for dims in [[3, 1, 7, 9], [1, 2, 33, 17]] {
        let z = r.tensor(&dims, 1.0, 0.0);
        let zg = on(&z, &d);
        let sums = per_image_counts(&z).unwrap();
        close_vals(
            "per-image counts",
            &per_image_counts(&zg).unwrap(),
            &sums,
            REDUCTION,
        );
        // counts well away from the sums, so sign(Σ|z| − y) is the same on both devices
        let counts: Vec<f32> = sums
            .iter()
            .enumerate()
            .map(|(i, s)| if i % 2 == 0 { s + 5.0 } else { s - 5.0 })
            .collect();
        let l = count_l1_loss_forward(&z, &counts).unwrap();
        let lg = count_l1_loss_forward(&zg, &counts).unwrap();
        close_vals("count l1 loss", &[lg], &[l], REDUCTION);
        close(
            "count l1 dz",
            &count_l1_loss_backward(&zg, &counts, 0.7).unwrap(),
            &count_l1_loss_backward(&z, &counts, 0.7).unwrap(),
            ELEMENTWISE,
        );
        let t = r.tensor(&dims, 1.0, 0.3);
        let tg = on(&t, &d);
        close_vals(
            "mse loss",
            &[mse_loss_forward(&zg, &tg).unwrap()],
            &[mse_loss_forward(&z, &t).unwrap()],
            REDUCTION,
        );
        close(
            "mse dpred",
            &mse_loss_backward(&zg, &tg, 1.3).unwrap(),
            &mse_loss_backward(&z, &t, 1.3).unwrap(),
            ELEMENTWISE,
        );
    }
}

/// The window count loss is composed of taped ops (abs, an all-ones conv, add, sum, scale), its
/// targets are window sums of a density map: both on the GPU against the CPU, targets well away
/// from the window sums; and its scalar adds to the count loss's on the same device.
#[test]
fn window_count_loss_and_gradient() {
    let Some((_g, d, _dev)) = gpu("window loss") else {
        return;
    };
    let mut r = Rng(13);
    let z = r.tensor(&[3, 1, 32, 32], 1.0, 0.0);
    let density = r.tensor(&[3, 1, 256, 256], 0.01, 0.02);
    let y = window_sums(&density, 4).unwrap();
    close(
        "window sums",
        &window_sums(&on(&density, &d), 4).unwrap(),
        &y,
        REDUCTION,
    );
    let y: Vec<f32> = y
        .to_vec()
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 2 == 0 { v + 50.0 } else { v - 50.0 })
        .collect();
    let y = Tensor::from_vec(y, &[3, 1, 4, 4]).unwrap();
    let counts = per_image_counts(&z).unwrap();
    let counts: Vec<f32> = counts.iter().map(|c| c + 5.0).collect();
    let run = |z: &Tensor| {
        let tape = Tape::new();
        let zv = tape.leaf(z.clone());
        let win = window_count_l1_loss(&tape, &zv, 4, &y).unwrap();
        let l = add(&tape, &count_l1_loss(&tape, &zv, &counts).unwrap(), &win).unwrap();
        let lv = l.value().item().unwrap();
        let g = tape.backward(&l).unwrap().get(&zv).unwrap().clone();
        (lv, g)
    };
    let (l, g) = run(&z);
    let (lg, gg) = run(&on(&z, &d));
    close_vals("count + window loss", &[lg], &[l], REDUCTION);
    close("count + window loss dz", &gg, &g, ELEMENTWISE);
}

#[test]
fn adam_steps_match_the_cpu() {
    let Some((_g, d, _dev)) = gpu("adam") else {
        return;
    };
    let mut r = Rng(12);
    let dims = [3, 5, 7, 11];
    let mut p = r.tensor(&dims, 1.0, 0.0);
    let (mut m, mut v) = (
        Tensor::zeros(&dims, &Device::Cpu),
        Tensor::zeros(&dims, &Device::Cpu),
    );
    let (mut pg, mut mg, mut vg) = (on(&p, &d), on(&m, &d), on(&v, &d));
    for t in 1..=3u64 {
        let g = r.tensor(&dims, 0.1, 0.0);
        let h = AdamStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            bias_correction1: (1.0 - 0.9f64.powf(t as f64)) as f32,
            bias_correction2: (1.0 - 0.999f64.powf(t as f64)) as f32,
        };
        update_tensor(&mut p, &g, &mut m, &mut v, &h).unwrap();
        update_tensor(&mut pg, &on(&g, &d), &mut mg, &mut vg, &h).unwrap();
    }
    close("adam p", &pg, &p, ELEMENTWISE);
    close("adam m", &mg, &m, ELEMENTWISE);
    close("adam v", &vg, &v, ELEMENTWISE);
}

// ------------------------------------------------------------------------------------------
// full training steps

fn small_config(model: ModelKind) -> ModelConfig {
    ModelConfig {
        model,
        width_mult: 0.125,
        ..ModelConfig::default()
    }
}

/// Loss and every parameter's gradient (by name) of one counter step, without the update.
fn counter_grads(net: &Counter, images: &Tensor, counts: &[f32]) -> (f32, Vec<(String, Tensor)>) {
    let tape = Tape::new();
    let bound = net.store.bind(&tape, true);
    let f = Forward::new(&tape, &bound, &net.store, true);
    let z = net.forward(&f, &Var::constant(images.clone())).unwrap();
    let loss = count_l1_loss(&tape, &z, counts).unwrap();
    let l = loss.value().item().unwrap();
    let mut g = tape.backward(&loss).unwrap();
    let grads = bound.take_grads(&mut g);
    let named = net
        .store
        .iter()
        .zip(grads)
        .filter_map(|((_, p), g)| g.map(|g| (p.name.clone(), g)))
        .collect();
    (l, named)
}

fn compare_steps(
    what: &str,
    (l, g): (f32, Vec<(String, Tensor)>),
    (lg, gg): (f32, Vec<(String, Tensor)>),
) {
    close_vals(&format!("{what} loss"), &[lg], &[l], REDUCTION);
    assert_eq!(g.len(), gg.len(), "{what}: gradients");
    assert!(!g.is_empty());
    for ((n, a), (ng, b)) in g.iter().zip(&gg) {
        assert_eq!(n, ng);
        let tol = if n.contains("gmp.offset") {
            STEP_TOL_GMP_OFFSETS
        } else {
            STEP_TOL
        };
        let e = close(&format!("{what} d{n}"), b, a, tol);
        eprintln!("{what} d{n}: normwise error {e:.2e}");
    }
}

#[test]
fn counter_training_step_matches_the_cpu() {
    let Some((_g, d, _dev)) = gpu("counter step") else {
        return;
    };
    let mut r = Rng(13);
    let cfg = small_config(ModelKind::Counter);
    let cpu_net = Counter::new(&cfg, 5).unwrap();
    let mut gpu_net = Counter::new(&cfg, 5).unwrap();
    gpu_net.store.to_device(&d).unwrap();
    let images = r.tensor(&[2, 3, 64, 64], 1.0, 0.0);
    // counts far above the predicted Σ|z| of a fresh net: the loss's sign is unambiguous
    let counts = [500.0, 800.0];
    let cpu = counter_grads(&cpu_net, &images, &counts);
    let gpu = counter_grads(&gpu_net, &on(&images, &d), &counts);
    compare_steps("counter", cpu, gpu);
}

#[test]
fn localizer_training_step_matches_the_cpu() {
    let Some((_g, d, _dev)) = gpu("localizer step") else {
        return;
    };
    let mut r = Rng(14);
    let cfg = small_config(ModelKind::Localizer);
    let cpu_net = Localizer::new(&cfg, 6).unwrap();
    let mut gpu_net = Localizer::new(&cfg, 6).unwrap();
    gpu_net.store.to_device(&d).unwrap();
    let images = r.tensor(&[2, 3, 64, 64], 1.0, 0.0);
    // the frozen counter's map (a constant input of the localizer)
    let z = r.tensor(&[2, 1, 8, 8], 0.5, 0.0);
    let target = r.tensor(&[2, 1, 64, 64], 1.0, 1.0);
    let run = |net: &Localizer, dev: &Device| {
        let tape = Tape::new();
        let bound = net.store.bind(&tape, true);
        let f = Forward::new(&tape, &bound, &net.store, true);
        let pred = net
            .forward(
                &f,
                &Var::constant(on(&images, dev)),
                &Var::constant(on(&z, dev)),
            )
            .unwrap();
        let loss = mse_loss(&tape, &pred, &on(&target, dev)).unwrap();
        let l = loss.value().item().unwrap();
        let mut g = tape.backward(&loss).unwrap();
        let grads = bound.take_grads(&mut g);
        let named: Vec<(String, Tensor)> = net
            .store
            .iter()
            .zip(grads)
            .filter_map(|((_, p), g)| g.map(|g| (p.name.clone(), g)))
            .collect();
        (l, named)
    };
    let cpu = run(&cpu_net, &Device::Cpu);
    let gpu = run(&gpu_net, &d);
    compare_steps("localizer", cpu, gpu);
}

/// After warm-up, a full counter training step (forward, loss, backward, Adam, BN running
/// statistics) requests the same allocations every step, all served from the memory pool: the
/// pool's reserved size does not grow.
#[test]
fn no_new_device_memory_after_warm_up() {
    let Some((_g, d, dev)) = gpu("allocations") else {
        return;
    };
    let mut r = Rng(15);
    let mut net = Counter::new(&small_config(ModelKind::Counter), 7).unwrap();
    net.store.to_device(&d).unwrap();
    let mut adam = Adam::new(AdamConfig::default(), &net.store).unwrap();
    let images = on(&r.tensor(&[2, 3, 64, 64], 1.0, 0.0), &d);
    let counts = [30.0, 40.0];
    let mut step = || {
        let tape = Tape::new();
        let (grads, updates) = {
            let bound = net.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &net.store, true);
            let z = net.forward(&f, &Var::constant(images.clone())).unwrap();
            let loss = count_l1_loss(&tape, &z, &counts).unwrap();
            assert!(loss.value().item().unwrap().is_finite());
            let mut g = tape.backward(&loss).unwrap();
            (bound.take_grads(&mut g), f.take_bn_updates())
        };
        adam.update(&mut net.store, &grads, 1e-4).unwrap();
        apply_bn_updates(&mut net.store, updates).unwrap();
        drop(grads);
        dev.synchronize().unwrap();
    };
    for _ in 0..3 {
        step();
    }
    let (calls0, bytes0) = (dev.alloc_count(), dev.alloc_bytes());
    let reserved0 = dev.pool_reserved_bytes().unwrap();
    step();
    let (per_step, bytes_per_step) = (dev.alloc_count() - calls0, dev.alloc_bytes() - bytes0);
    assert!(per_step > 0);
    for _ in 0..5 {
        step();
    }
    assert_eq!(
        dev.alloc_count() - calls0,
        6 * per_step,
        "a step's allocations are fixed"
    );
    assert_eq!(dev.alloc_bytes() - bytes0, 6 * bytes_per_step);
    let reserved = dev.pool_reserved_bytes().unwrap();
    eprintln!(
        "allocations per step {per_step} ({bytes_per_step} bytes), pool reserved {reserved0:?} -> {reserved:?}"
    );
    if dev.info().stream_ordered_pool {
        assert_eq!(reserved, reserved0, "the memory pool grew after warm-up");
    } else {
        eprintln!("no stream-ordered pool on this device: only the request counts are checked");
    }
}

// ------------------------------------------------------------------------------------------
// bench on the GPU, small

#[test]
fn bench_kernels_runs_on_the_gpu() {
    let Some((_g, d, _dev)) = gpu("bench kernels") else {
        return;
    };
    let rep = run_kernel_bench(&KernelBenchOptions {
        device: d,
        batch: 2,
        size: 32,
        width_mult: 0.125,
        reps: 2,
        warmup: 1,
        gmp_points: 8,
        notes: vec![],
    })
    .unwrap();
    for v in GmpKernel::ALL {
        let op = format!("gmp_sample {}", v.name());
        assert!(rep.rows.iter().any(|r| r.op == op), "{op} missing");
    }
    for row in &rep.rows {
        assert!(
            row.median_ms.is_finite() && row.median_ms > 0.0,
            "{} {}: {}",
            row.op,
            row.pass,
            row.median_ms
        );
    }
    assert!(rep.ceilings.copy_gb_per_s > 0.0 && rep.ceilings.gemm_tflop_per_s > 0.0);
}
