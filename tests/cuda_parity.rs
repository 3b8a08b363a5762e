//! GPU kernels against small CPU references written here for the purpose (the real CPU ops
//! replace them at integration). Runs only with `DCL_TEST_CUDA=1` on a machine with a GPU;
//! otherwise every test prints a note and passes. Inputs are random and never zero, with odd
//! sizes (H != W, counts not multiples of the 256-thread block), batches of 1 and 3, and GMP
//! samples outside the map. Errors are normwise: max |gpu − cpu| / max |cpu|, at most 1e-5 for
//! elementwise ops, pooling, resizing and copies, 1e-4 for reductions and GEMM-based ops.
//!
//! Written on a machine without a GPU: compiled, never run yet (see src/device/cuda/mod.rs).
use std::sync::{Mutex, MutexGuard};

use dcl::device::cuda::batch_norm2d as bn;
use dcl::device::cuda::conv2d::{self as conv, Conv2dShape};
use dcl::device::cuda::gemm::{sgemm, RowMajorGemm};
use dcl::device::cuda::gmp::{self, GmpKernel, GmpShape};
use dcl::device::cuda::{
    adam, concat, elementwise as ew, loss, max_pool2d as pool, relu, upsample_bilinear as up,
    CudaDevice,
};

const ELEMENTWISE: f64 = 1e-5;
const REDUCTION: f64 = 1e-4;

/// GPU tests run one at a time: the allocation test reads device-wide pool counters.
static GPU: Mutex<()> = Mutex::new(());

fn gpu(test: &str) -> Option<(MutexGuard<'static, ()>, CudaDevice)> {
    if std::env::var("DCL_TEST_CUDA").ok().as_deref() != Some("1") {
        eprintln!("{test}: skipped (set DCL_TEST_CUDA=1 on a machine with a GPU)");
        return None;
    }
    let guard = GPU.lock().unwrap_or_else(|p| p.into_inner());
    let dev = CudaDevice::shared(0).unwrap_or_else(|e| panic!("DCL_TEST_CUDA=1 but: {e}"));
    eprintln!("{test}: {}", dev.info());
    Some((guard, dev))
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
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
    fn vec_scaled(&mut self, n: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale + shift).collect()
    }
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let mut worst = (0.0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g}");
        let e = (*g as f64 - w).abs() / scale;
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
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ------------------------------------------------------------------------------------------
// sgemm

#[test]
fn sgemm_3x5_times_5x7_and_variants() {
    let Some((_g, dev)) = gpu("sgemm") else {
        return;
    };
    let mut r = Rng(1);
    let (m, k, n) = (3, 5, 7);
    let a = r.vec(m * k);
    let b = r.vec(k * n);
    let mut want = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k)
                .map(|l| a[i * k + l] as f64 * b[l * n + j] as f64)
                .sum();
        }
    }
    let (ad, bd) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
    let mut cd = dev.alloc::<f32>(m * n).unwrap();
    sgemm(
        &dev,
        &RowMajorGemm::packed(m, n, k, false, false),
        &ad,
        &bd,
        &mut cd,
    )
    .unwrap();
    assert_close(
        "C = A·B (3x5·5x7)",
        &dev.dtoh(&cd).unwrap(),
        &want,
        REDUCTION,
    );

    // Aᵀ stored, Bᵀ stored, beta = 1 on top of the previous result, batch of 2 with A broadcast
    let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect(); // [k×m]
    let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // [n×k]
    let (atd, btd) = (dev.htod(&at).unwrap(), dev.htod(&bt).unwrap());
    let mut g = RowMajorGemm::packed(m, n, k, true, true);
    g.beta = 1.0;
    sgemm(&dev, &g, &atd, &btd, &mut cd).unwrap();
    let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
    assert_close("C += Aᵀᵀ·Bᵀᵀ", &dev.dtoh(&cd).unwrap(), &twice, REDUCTION);

    let b2: Vec<f32> = b.iter().copied().chain(b.iter().map(|v| -v)).collect();
    let b2d = dev.htod(&b2).unwrap();
    let mut c2 = dev.alloc::<f32>(2 * m * n).unwrap();
    let mut g = RowMajorGemm::packed(m, n, k, false, false);
    g.batch = 2;
    g.stride_a = 0;
    let neg: Vec<f64> = want
        .iter()
        .copied()
        .chain(want.iter().map(|v| -v))
        .collect();
    sgemm(&dev, &g, &ad, &b2d, &mut c2).unwrap();
    assert_close(
        "batched, A broadcast",
        &dev.dtoh(&c2).unwrap(),
        &neg,
        REDUCTION,
    );

    // undersized operand: an error, no launch
    let small = dev.alloc::<f32>(3).unwrap();
    let e = sgemm(
        &dev,
        &RowMajorGemm::packed(m, n, k, false, false),
        &small,
        &bd,
        &mut cd,
    );
    assert!(e.unwrap_err().to_string().contains("operand A"));
}

#[test]
fn tf32_switch_round_trips() {
    let Some((_g, dev)) = gpu("tf32") else { return };
    let mut r = Rng(2);
    let (m, k, n) = (64, 96, 80);
    let a = r.vec(m * k);
    let b = r.vec(k * n);
    let want: Vec<f64> = (0..m * n)
        .map(|ij| {
            (0..k)
                .map(|l| a[(ij / n) * k + l] as f64 * b[l * n + ij % n] as f64)
                .sum()
        })
        .collect();
    let (ad, bd) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
    let mut cd = dev.alloc::<f32>(m * n).unwrap();
    dev.set_tf32(true).unwrap();
    assert!(dev.tf32());
    sgemm(
        &dev,
        &RowMajorGemm::packed(m, n, k, false, false),
        &ad,
        &bd,
        &mut cd,
    )
    .unwrap();
    let tf = dev.dtoh(&cd).unwrap();
    dev.set_tf32(false).unwrap();
    assert_close("tf32 gemm (10-bit mantissa inputs)", &tf, &want, 1e-2);
    sgemm(
        &dev,
        &RowMajorGemm::packed(m, n, k, false, false),
        &ad,
        &bd,
        &mut cd,
    )
    .unwrap();
    let fp = dev.dtoh(&cd).unwrap();
    assert_close("fp32 gemm after switching back", &fp, &want, REDUCTION);
    // informational: cuBLAS may still pick a non-tensor-core kernel for a small shape
    eprintln!("tf32 result differs from fp32: {}", tf != fp);
}

// ------------------------------------------------------------------------------------------
// elementwise, relu

#[test]
fn elementwise_and_relu() {
    let Some((_g, dev)) = gpu("elementwise") else {
        return;
    };
    let mut r = Rng(3);
    let n = 1000 * 3 + 7; // not a multiple of 256
    let a = r.vec(n);
    let b = r.vec(n);
    let (ad, bd) = (dev.htod(&a).unwrap(), dev.htod(&b).unwrap());
    let sum_ab: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| *x as f64 + *y as f64)
        .collect();
    assert_close(
        "add",
        &dev.dtoh(&ew::add(&dev, &ad, &bd).unwrap()).unwrap(),
        &sum_ab,
        ELEMENTWISE,
    );
    let mut acc = dev.htod(&a).unwrap();
    ew::add_assign(&dev, &mut acc, &bd).unwrap();
    assert_close("add_assign", &dev.dtoh(&acc).unwrap(), &sum_ab, ELEMENTWISE);
    let sc: Vec<f64> = a.iter().map(|x| -2.5 * *x as f64).collect();
    assert_close(
        "scale",
        &dev.dtoh(&ew::scale(&dev, &ad, -2.5).unwrap()).unwrap(),
        &sc,
        ELEMENTWISE,
    );
    let ab: Vec<f64> = a.iter().map(|x| x.abs() as f64).collect();
    assert_close(
        "abs",
        &dev.dtoh(&ew::abs(&dev, &ad).unwrap()).unwrap(),
        &ab,
        ELEMENTWISE,
    );
    // sign(0) = 0: plant zeros in the input of the abs backward
    let mut az = a.clone();
    az[5] = 0.0;
    az[n - 1] = 0.0;
    let azd = dev.htod(&az).unwrap();
    let gb: Vec<f64> = az
        .iter()
        .zip(&b)
        .map(|(x, g)| {
            if *x > 0.0 {
                *g as f64
            } else if *x < 0.0 {
                -*g as f64
            } else {
                0.0
            }
        })
        .collect();
    assert_close(
        "abs backward",
        &dev.dtoh(&ew::abs_backward(&dev, &azd, &bd).unwrap())
            .unwrap(),
        &gb,
        ELEMENTWISE,
    );
    let total: f64 = a.iter().map(|v| *v as f64).sum();
    let s = ew::sum(&dev, &ad).unwrap();
    assert_close(
        "sum",
        &dev.dtoh(&s).unwrap(),
        &[total],
        REDUCTION * a.len() as f64 / total.abs().max(1.0),
    );
    // determinism: same input, same bits
    assert_eq!(
        dev.dtoh(&ew::sum(&dev, &ad).unwrap()).unwrap(),
        dev.dtoh(&s).unwrap()
    );
    assert_close(
        "fill",
        &dev.dtoh(&ew::fill(&dev, 517, 0.25).unwrap()).unwrap(),
        &vec![0.25; 517],
        0.0,
    );
    let bc = ew::broadcast_scalar(&dev, &s, 300).unwrap();
    assert_close(
        "broadcast scalar",
        &dev.dtoh(&bc).unwrap(),
        &vec![dev.dtoh(&s).unwrap()[0] as f64; 300],
        0.0,
    );
    assert!(ew::add(&dev, &ad, &dev.htod(&b[..10]).unwrap()).is_err());

    let y: Vec<f64> = a.iter().map(|v| v.max(0.0) as f64).collect();
    let yd = relu::relu_forward(&dev, &ad).unwrap();
    assert_close("relu", &dev.dtoh(&yd).unwrap(), &y, 0.0);
    let dx: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, g)| if *x > 0.0 { *g as f64 } else { 0.0 })
        .collect();
    assert_close(
        "relu backward",
        &dev.dtoh(&relu::relu_backward(&dev, &yd, &bd).unwrap())
            .unwrap(),
        &dx,
        0.0,
    );
}

// ------------------------------------------------------------------------------------------
// max pool

#[test]
fn max_pool_forward_backward() {
    let Some((_g, dev)) = gpu("max_pool") else {
        return;
    };
    for (n, c, h, w) in [(3, 2, 7, 5), (1, 3, 8, 11)] {
        let mut r = Rng(4 + n as u64);
        let x = r.vec(n * c * h * w);
        let (oh, ow) = (h / 2, w / 2);
        let mut y = vec![0.0f64; n * c * oh * ow];
        let mut arg = vec![0u32; y.len()];
        for pl in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = (f32::NEG_INFINITY, 0u32);
                    for dy in 0..2 {
                        for dx in 0..2 {
                            let idx = (2 * oy + dy) * w + 2 * ox + dx;
                            let v = x[pl * h * w + idx];
                            if v > best.0 {
                                best = (v, idx as u32);
                            }
                        }
                    }
                    y[(pl * oh + oy) * ow + ox] = best.0 as f64;
                    arg[(pl * oh + oy) * ow + ox] = best.1;
                }
            }
        }
        let xd = dev.htod(&x).unwrap();
        let (yd, ad) = pool::max_pool2d_forward(&dev, &xd, n, c, h, w).unwrap();
        assert_close("max_pool", &dev.dtoh(&yd).unwrap(), &y, 0.0);
        assert_eq!(dev.dtoh(&ad).unwrap(), arg, "argmax");
        let g = r.vec(y.len());
        let mut dx = vec![0.0f64; x.len()];
        for pl in 0..n * c {
            for o in 0..oh * ow {
                dx[pl * h * w + arg[pl * oh * ow + o] as usize] += g[pl * oh * ow + o] as f64;
            }
        }
        let dxd = pool::max_pool2d_backward(&dev, &dev.htod(&g).unwrap(), &ad, n, c, h, w).unwrap();
        assert_close("max_pool backward", &dev.dtoh(&dxd).unwrap(), &dx, 0.0);
    }
}

// ------------------------------------------------------------------------------------------
// conv2d

fn conv_ref(s: &Conv2dShape, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
    let (oh, ow) = s.out_hw().unwrap();
    let mut y = vec![0.0f64; s.n * s.o * oh * ow];
    for n in 0..s.n {
        for o in 0..s.o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[o] as f64;
                    for c in 0..s.c {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let iy = (oy * s.stride + ki) as i64 - s.pad as i64;
                                let ix = (ox * s.stride + kj) as i64 - s.pad as i64;
                                if iy >= 0 && ix >= 0 && iy < s.h as i64 && ix < s.w as i64 {
                                    acc += x
                                        [((n * s.c + c) * s.h + iy as usize) * s.w + ix as usize]
                                        as f64
                                        * w[((o * s.c + c) * s.kh + ki) * s.kw + kj] as f64;
                                }
                            }
                        }
                    }
                    y[((n * s.o + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

/// (dx, dw, db) of Σ dy ⊙ conv(x, w, b), by direct loops.
fn conv_grad_ref(
    s: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = s.out_hw().unwrap();
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; s.o];
    for n in 0..s.n {
        for o in 0..s.o {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[((n * s.o + o) * oh + oy) * ow + ox] as f64;
                    db[o] += g;
                    for c in 0..s.c {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let iy = (oy * s.stride + ki) as i64 - s.pad as i64;
                                let ix = (ox * s.stride + kj) as i64 - s.pad as i64;
                                if iy >= 0 && ix >= 0 && iy < s.h as i64 && ix < s.w as i64 {
                                    let xi =
                                        ((n * s.c + c) * s.h + iy as usize) * s.w + ix as usize;
                                    let wi = ((o * s.c + c) * s.kh + ki) * s.kw + kj;
                                    dx[xi] += g * w[wi] as f64;
                                    dw[wi] += g * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

#[test]
fn conv2d_forward_backward_all_paths() {
    let Some((_g, dev)) = gpu("conv2d") else {
        return;
    };
    let shapes = [
        Conv2dShape {
            n: 3,
            c: 3,
            h: 9,
            w: 7,
            o: 5,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        },
        Conv2dShape {
            n: 1,
            c: 2,
            h: 8,
            w: 11,
            o: 3,
            kh: 3,
            kw: 3,
            stride: 2,
            pad: 1,
        },
        Conv2dShape {
            n: 3,
            c: 4,
            h: 5,
            w: 6,
            o: 2,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
        },
        Conv2dShape {
            n: 3,
            c: 17,
            h: 13,
            w: 10,
            o: 9,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        },
    ];
    for (i, s) in shapes.iter().enumerate() {
        let mut r = Rng(10 + i as u64);
        let x = r.vec(s.n * s.c * s.h * s.w);
        let w = r.vec(s.o * s.c * s.kh * s.kw);
        let b = r.vec(s.o);
        let (oh, ow) = s.out_hw().unwrap();
        let dy = r.vec(s.n * s.o * oh * ow);
        let (xd, wd, bd, dyd) = (
            dev.htod(&x).unwrap(),
            dev.htod(&w).unwrap(),
            dev.htod(&b).unwrap(),
            dev.htod(&dy).unwrap(),
        );
        let want = conv_ref(s, &x, &w, &b);
        let (gx, gw, gb) = conv_grad_ref(s, &x, &w, &dy);
        let per_image = s.col_rows() * oh * ow;
        // whole batch in one tile, then tiles of 2 images (the last one partial)
        for ws in [conv::COL_WORKSPACE_FLOATS, 2 * per_image] {
            let tag = format!("{s:?} workspace {ws}");
            let y = conv::conv2d_forward_ws(&dev, &xd, &wd, Some(&bd), s, ws).unwrap();
            assert_close(
                &format!("conv forward {tag}"),
                &dev.dtoh(&y).unwrap(),
                &want,
                REDUCTION,
            );
            let g = conv::conv2d_backward_ws(&dev, &xd, &wd, &dyd, s, true, true, ws).unwrap();
            assert_close(
                &format!("conv dx {tag}"),
                &dev.dtoh(g.dx.as_ref().unwrap()).unwrap(),
                &gx,
                REDUCTION,
            );
            assert_close(
                &format!("conv dw {tag}"),
                &dev.dtoh(&g.dw).unwrap(),
                &gw,
                REDUCTION,
            );
            assert_close(
                &format!("conv db {tag}"),
                &dev.dtoh(g.db.as_ref().unwrap()).unwrap(),
                &gb,
                REDUCTION,
            );
        }
        let g = conv::conv2d_backward(&dev, &xd, &wd, &dyd, s, false, false).unwrap();
        assert!(g.dx.is_none() && g.db.is_none());
        assert_close(
            "conv dw without dx",
            &dev.dtoh(&g.dw).unwrap(),
            &gw,
            REDUCTION,
        );
        let nb: Vec<f64> = conv_ref(s, &x, &w, &vec![0.0; s.o]);
        let y = conv::conv2d_forward(&dev, &xd, &wd, None, s).unwrap();
        assert_close(
            "conv forward without bias",
            &dev.dtoh(&y).unwrap(),
            &nb,
            REDUCTION,
        );
    }
    let s = shapes[0];
    let x = dev.htod(&[1.0f32; 10]).unwrap();
    let w = dev.htod(&vec![1.0f32; s.o * s.c * 9]).unwrap();
    let e = conv::conv2d_forward(&dev, &x, &w, None, &s)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv2d") && e.contains("x holds 10"), "{e}");
}

// ------------------------------------------------------------------------------------------
// batch norm

#[test]
fn batch_norm_train_eval_running_and_backward() {
    let Some((_g, dev)) = gpu("batch_norm") else {
        return;
    };
    let eps = 1e-5f32;
    for (n, c, h, w) in [(3, 5, 7, 9), (1, 2, 17, 15)] {
        let d = bn::BnDims { n, c, h, w };
        let mut r = Rng(20 + n as u64);
        // a large common offset tests the numerical stability of the variance
        let x = r.vec_scaled(n * c * h * w, 2.0, 30.0);
        let gamma = r.vec(c);
        let beta = r.vec(c);
        let dy = r.vec(x.len());
        let m = (n * h * w) as f64;
        let hw = h * w;
        let idx = |img: usize, ch: usize, q: usize| (img * c + ch) * hw + q;
        let mut mean = vec![0.0f64; c];
        let mut var = vec![0.0f64; c];
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| (0..hw).map(move |q| (i, q)))
                .map(|(i, q)| x[idx(i, ch, q)] as f64)
                .collect();
            mean[ch] = vals.iter().sum::<f64>() / m;
            var[ch] = vals.iter().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / m;
        }
        let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect();
        let xhat =
            |i: usize, ch: usize, q: usize| (x[idx(i, ch, q)] as f64 - mean[ch]) * invstd[ch];
        let mut y = vec![0.0f64; x.len()];
        let (mut dgamma, mut dbeta) = (vec![0.0f64; c], vec![0.0f64; c]);
        for i in 0..n {
            for ch in 0..c {
                for q in 0..hw {
                    y[idx(i, ch, q)] = xhat(i, ch, q) * gamma[ch] as f64 + beta[ch] as f64;
                    dgamma[ch] += dy[idx(i, ch, q)] as f64 * xhat(i, ch, q);
                    dbeta[ch] += dy[idx(i, ch, q)] as f64;
                }
            }
        }
        let mut dx = vec![0.0f64; x.len()];
        for i in 0..n {
            for ch in 0..c {
                for q in 0..hw {
                    dx[idx(i, ch, q)] = gamma[ch] as f64 * invstd[ch] / m
                        * (m * dy[idx(i, ch, q)] as f64 - dbeta[ch] - xhat(i, ch, q) * dgamma[ch]);
                }
            }
        }
        let (xd, gd, bd, dyd) = (
            dev.htod(&x).unwrap(),
            dev.htod(&gamma).unwrap(),
            dev.htod(&beta).unwrap(),
            dev.htod(&dy).unwrap(),
        );
        let (yd, saved) = bn::batch_norm2d_train_forward(&dev, &xd, &gd, &bd, d, eps).unwrap();
        assert_close("bn train y", &dev.dtoh(&yd).unwrap(), &y, REDUCTION);
        assert_close("bn mean", &dev.dtoh(&saved.mean).unwrap(), &mean, REDUCTION);
        assert_close("bn var", &dev.dtoh(&saved.var).unwrap(), &var, REDUCTION);
        assert_close(
            "bn invstd",
            &dev.dtoh(&saved.invstd).unwrap(),
            &invstd,
            REDUCTION,
        );
        let gr = bn::batch_norm2d_train_backward(&dev, &xd, &dyd, &gd, &saved, d).unwrap();
        assert_close("bn dx", &dev.dtoh(&gr.dx).unwrap(), &dx, REDUCTION);
        assert_close(
            "bn dgamma",
            &dev.dtoh(&gr.dgamma).unwrap(),
            &dgamma,
            REDUCTION,
        );
        assert_close("bn dbeta", &dev.dtoh(&gr.dbeta).unwrap(), &dbeta, REDUCTION);

        // running update, momentum 0.1, unbiased variance
        let rm0 = r.vec(c);
        let rv0: Vec<f32> = r.vec(c).iter().map(|v| v.abs() + 0.5).collect();
        let (mut rm, mut rv) = (dev.htod(&rm0).unwrap(), dev.htod(&rv0).unwrap());
        bn::update_running_stats(&dev, &saved, &mut rm, &mut rv, d, 0.1).unwrap();
        let want_rm: Vec<f64> = (0..c)
            .map(|i| 0.9 * rm0[i] as f64 + 0.1 * mean[i])
            .collect();
        let want_rv: Vec<f64> = (0..c)
            .map(|i| 0.9 * rv0[i] as f64 + 0.1 * var[i] * m / (m - 1.0))
            .collect();
        assert_close("running mean", &dev.dtoh(&rm).unwrap(), &want_rm, REDUCTION);
        assert_close("running var", &dev.dtoh(&rv).unwrap(), &want_rv, REDUCTION);

        // eval mode with the (updated) running statistics
        let (rmh, rvh) = (dev.dtoh(&rm).unwrap(), dev.dtoh(&rv).unwrap());
        let einv: Vec<f64> = rvh
            .iter()
            .map(|v| 1.0 / (*v as f64 + eps as f64).sqrt())
            .collect();
        let mut ye = vec![0.0f64; x.len()];
        let mut dxe = vec![0.0f64; x.len()];
        let (mut dge, mut dbe) = (vec![0.0f64; c], vec![0.0f64; c]);
        for i in 0..n {
            for ch in 0..c {
                for q in 0..hw {
                    let k = idx(i, ch, q);
                    let xh = (x[k] as f64 - rmh[ch] as f64) * einv[ch];
                    ye[k] = xh * gamma[ch] as f64 + beta[ch] as f64;
                    dxe[k] = dy[k] as f64 * gamma[ch] as f64 * einv[ch];
                    dge[ch] += dy[k] as f64 * xh;
                    dbe[ch] += dy[k] as f64;
                }
            }
        }
        let yed = bn::batch_norm2d_eval_forward(&dev, &xd, &gd, &bd, &rm, &rv, d, eps).unwrap();
        assert_close("bn eval y", &dev.dtoh(&yed).unwrap(), &ye, REDUCTION);
        let ge = bn::batch_norm2d_eval_backward(&dev, &xd, &dyd, &gd, &rm, &rv, d, eps).unwrap();
        assert_close("bn eval dx", &dev.dtoh(&ge.dx).unwrap(), &dxe, ELEMENTWISE);
        assert_close(
            "bn eval dgamma",
            &dev.dtoh(&ge.dgamma).unwrap(),
            &dge,
            REDUCTION,
        );
        assert_close(
            "bn eval dbeta",
            &dev.dtoh(&ge.dbeta).unwrap(),
            &dbe,
            REDUCTION,
        );
    }
    let one = dev.htod(&[1.0f32]).unwrap();
    let d = bn::BnDims {
        n: 1,
        c: 1,
        h: 1,
        w: 1,
    };
    assert!(bn::batch_norm2d_train_forward(&dev, &one, &one, &one, d, eps).is_err());
}

// ------------------------------------------------------------------------------------------
// bilinear resize

/// PyTorch's source index for one axis, in f32 like the kernel.
fn src_index(dst: usize, input: usize, output: usize, align: bool) -> (usize, usize, f64) {
    let scale = up::source_scale(input, output, align);
    let s = if align {
        scale * dst as f32
    } else {
        (scale * (dst as f32 + 0.5) - 0.5).max(0.0)
    };
    let i0 = (s.floor() as usize).min(input - 1);
    let i1 = (i0 + 1).min(input - 1);
    (i0, i1, (s - i0 as f32) as f64)
}

#[test]
fn upsample_bilinear_both_modes_forward_backward() {
    let Some((_g, dev)) = gpu("upsample") else {
        return;
    };
    for (n, c, ih, iw, oh, ow) in [
        (3, 2, 5, 7, 10, 14),
        (1, 3, 5, 7, 9, 13),
        (3, 1, 7, 5, 4, 3),
        (1, 2, 6, 4, 1, 5),
    ] {
        for align in [false, true] {
            let mut r = Rng(30 + ih as u64 * 7 + oh as u64);
            let x = r.vec(n * c * ih * iw);
            let dy = r.vec(n * c * oh * ow);
            let mut y = vec![0.0f64; dy.len()];
            let mut dx = vec![0.0f64; x.len()];
            for pl in 0..n * c {
                for oy in 0..oh {
                    let (y0, y1, ly) = src_index(oy, ih, oh, align);
                    for ox in 0..ow {
                        let (x0, x1, lx) = src_index(ox, iw, ow, align);
                        let xp = |yy: usize, xx: usize| x[pl * ih * iw + yy * iw + xx] as f64;
                        let o = (pl * oh + oy) * ow + ox;
                        y[o] = (1.0 - ly) * ((1.0 - lx) * xp(y0, x0) + lx * xp(y0, x1))
                            + ly * ((1.0 - lx) * xp(y1, x0) + lx * xp(y1, x1));
                        let g = dy[o] as f64;
                        for (yy, xx, wgt) in [
                            (y0, x0, (1.0 - ly) * (1.0 - lx)),
                            (y0, x1, (1.0 - ly) * lx),
                            (y1, x0, ly * (1.0 - lx)),
                            (y1, x1, ly * lx),
                        ] {
                            dx[pl * ih * iw + yy * iw + xx] += g * wgt;
                        }
                    }
                }
            }
            let tag = format!("{n}x{c}x{ih}x{iw} -> {oh}x{ow} align_corners={align}");
            let yd = up::upsample_bilinear_forward(
                &dev,
                &dev.htod(&x).unwrap(),
                n,
                c,
                ih,
                iw,
                oh,
                ow,
                align,
            )
            .unwrap();
            assert_close(
                &format!("upsample {tag}"),
                &dev.dtoh(&yd).unwrap(),
                &y,
                ELEMENTWISE,
            );
            let dxd = up::upsample_bilinear_backward(
                &dev,
                &dev.htod(&dy).unwrap(),
                n,
                c,
                ih,
                iw,
                oh,
                ow,
                align,
            )
            .unwrap();
            assert_close(
                &format!("upsample backward {tag}"),
                &dev.dtoh(&dxd).unwrap(),
                &dx,
                ELEMENTWISE,
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// GMP

/// CPU reference of the GMP sampling and its gradients, pixel coordinates in f32 as the kernel.
struct GmpRef {
    a: Vec<f64>,
    dx: Vec<f64>,
    doff: Vec<f64>,
}

fn gmp_ref(s: &GmpShape, x: &[f32], off: &[f32], da: &[f32]) -> GmpRef {
    let (h, w, k) = (s.h, s.w, s.k);
    let hw = h * w;
    let mut a = vec![0.0f64; x.len()];
    let mut dx = vec![0.0f64; x.len()];
    let mut doff = vec![0.0f64; off.len()];
    for img in 0..s.n {
        for i in 0..h {
            for j in 0..w {
                let pos = i * w + j;
                for kk in 0..k {
                    let u = off[(img * 2 * k + 2 * kk) * hw + pos];
                    let v = off[(img * 2 * k + 2 * kk + 1) * hw + pos];
                    let (px, py) = (j as f32 + u, i as f32 + v);
                    let (fx0, fy0) = (px.floor(), py.floor());
                    let (fx, fy) = ((px - fx0) as f64, (py - fy0) as f64);
                    let (x0, y0) = (fx0 as i64, fy0 as i64);
                    let taps = [
                        (y0, x0, (1.0 - fx) * (1.0 - fy), -(1.0 - fy), -(1.0 - fx)),
                        (y0, x0 + 1, fx * (1.0 - fy), 1.0 - fy, -fx),
                        (y0 + 1, x0, (1.0 - fx) * fy, -fy, 1.0 - fx),
                        (y0 + 1, x0 + 1, fx * fy, fy, fx),
                    ];
                    for ch in 0..s.c {
                        let plane = (img * s.c + ch) * hw;
                        let g = da[plane + pos] as f64 / k as f64;
                        for &(ty, tx, wt, dwx, dwy) in &taps {
                            if ty < 0 || tx < 0 || ty >= h as i64 || tx >= w as i64 {
                                continue;
                            }
                            let t = plane + ty as usize * w + tx as usize;
                            let val = x[t] as f64;
                            a[plane + pos] += wt * val / k as f64;
                            dx[t] += g * wt;
                            doff[(img * 2 * k + 2 * kk) * hw + pos] += g * dwx * val;
                            doff[(img * 2 * k + 2 * kk + 1) * hw + pos] += g * dwy * val;
                        }
                    }
                }
            }
        }
    }
    GmpRef { a, dx, doff }
}

#[test]
fn gmp_three_versions_match_the_reference() {
    let Some((_g, dev)) = gpu("gmp") else { return };
    let shapes = [
        GmpShape {
            n: 3,
            c: 5,
            h: 5,
            w: 7,
            k: 3,
        },
        GmpShape {
            n: 1,
            c: 37,
            h: 6,
            w: 9,
            k: 8,
        }, // several channel groups in the fused kernels
        GmpShape {
            n: 3,
            c: 2,
            h: 11,
            w: 4,
            k: 16,
        },
    ];
    for (si, s) in shapes.iter().enumerate() {
        let mut r = Rng(40 + si as u64);
        let x = r.vec(s.n * s.c * s.h * s.w);
        // offsets up to ±4.5 pixels: many samples partly or wholly outside the map
        let off = r.vec_scaled(s.n * 2 * s.k * s.h * s.w, 4.5, 0.0);
        let da = r.vec(x.len());
        let want = gmp_ref(s, &x, &off, &da);
        let outside = off.iter().enumerate().filter(|(i, o)| {
            let pos = i % (s.h * s.w);
            let horizontal = (i / (s.h * s.w)) % 2 == 0;
            let base = if horizontal {
                (pos % s.w) as f32
            } else {
                (pos / s.w) as f32
            };
            let lim = if horizontal { s.w } else { s.h } as f32;
            base + **o < 0.0 || base + **o > lim - 1.0
        });
        assert!(
            outside.count() > off.len() / 10,
            "the test must sample outside the map"
        );
        let (xd, od, dad) = (
            dev.htod(&x).unwrap(),
            dev.htod(&off).unwrap(),
            dev.htod(&da).unwrap(),
        );
        for v in GmpKernel::ALL {
            let tag = format!("gmp {} {s:?}", v.name());
            let a = gmp::gmp_forward(&dev, v, &xd, &od, s).unwrap();
            assert_close(
                &format!("{tag} forward"),
                &dev.dtoh(&a).unwrap(),
                &want.a,
                ELEMENTWISE,
            );
            let (dx, doff) = gmp::gmp_backward(&dev, v, &xd, &od, &dad, s).unwrap();
            assert_close(
                &format!("{tag} dx"),
                &dev.dtoh(&dx).unwrap(),
                &want.dx,
                ELEMENTWISE,
            );
            assert_close(
                &format!("{tag} doffsets"),
                &dev.dtoh(&doff).unwrap(),
                &want.doff,
                REDUCTION,
            );
        }
    }
    let s = GmpShape {
        n: 1,
        c: 2,
        h: 3,
        w: 4,
        k: 17,
    };
    let x = dev.htod(&[1.0f32; 24]).unwrap();
    let o = dev.htod(&vec![0.5f32; 2 * 17 * 12]).unwrap();
    assert!(gmp::gmp_forward(&dev, GmpKernel::Fused, &x, &o, &s).is_err());
    assert!(gmp::gmp_forward(&dev, GmpKernel::Naive, &x, &o, &s).is_ok());
}

// ------------------------------------------------------------------------------------------
// concat, losses, adam

#[test]
fn concat_forward_backward() {
    let Some((_g, dev)) = gpu("concat") else {
        return;
    };
    let (n, h, w) = (3, 5, 7);
    let channels = [2usize, 1, 4];
    let mut r = Rng(50);
    let parts: Vec<Vec<f32>> = channels.iter().map(|c| r.vec(n * c * h * w)).collect();
    let total: usize = channels.iter().sum();
    let mut want = vec![0.0f64; n * total * h * w];
    for img in 0..n {
        let mut c0 = 0;
        for (p, &c) in parts.iter().zip(&channels) {
            for i in 0..c * h * w {
                want[(img * total + c0) * h * w + i] = p[img * c * h * w + i] as f64;
            }
            c0 += c;
        }
    }
    let dparts: Vec<_> = parts.iter().map(|p| dev.htod(p).unwrap()).collect();
    let args: Vec<_> = dparts.iter().zip(channels).collect();
    let y = concat::concat_channels_forward(
        &dev,
        &args.iter().map(|(d, c)| (*d, *c)).collect::<Vec<_>>(),
        n,
        h,
        w,
    )
    .unwrap();
    assert_close("concat", &dev.dtoh(&y).unwrap(), &want, 0.0);
    let back = concat::concat_channels_backward(&dev, &y, &channels, n, h, w).unwrap();
    for (i, (b, p)) in back.iter().zip(&parts).enumerate() {
        assert_close(
            &format!("concat backward part {i}"),
            &dev.dtoh(b).unwrap(),
            &f64s(p),
            0.0,
        );
    }
}

#[test]
fn count_l1_and_mse_losses() {
    let Some((_g, dev)) = gpu("losses") else {
        return;
    };
    for n in [1usize, 3] {
        let (h, w) = (33, 31);
        let mut r = Rng(60 + n as u64);
        let z = r.vec(n * h * w);
        let counts: Vec<f32> = (0..n).map(|i| 300.0 + 150.0 * i as f32).collect();
        let sums: Vec<f64> = (0..n)
            .map(|i| {
                z[i * h * w..(i + 1) * h * w]
                    .iter()
                    .map(|v| v.abs() as f64)
                    .sum()
            })
            .collect();
        let loss: f64 = sums
            .iter()
            .zip(&counts)
            .map(|(s, y)| (s - *y as f64).abs())
            .sum::<f64>()
            / n as f64;
        let (zd, cd) = (dev.htod(&z).unwrap(), dev.htod(&counts).unwrap());
        let (ld, sd) = loss::count_l1_forward(&dev, &zd, &cd, n).unwrap();
        assert_close("count l1 sums", &dev.dtoh(&sd).unwrap(), &sums, REDUCTION);
        assert_close("count l1 loss", &dev.dtoh(&ld).unwrap(), &[loss], REDUCTION);
        let dloss = 0.7f32;
        let dz: Vec<f64> = (0..z.len())
            .map(|i| {
                let r = i / (h * w);
                let sg = |v: f64| {
                    if v > 0.0 {
                        1.0
                    } else if v < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                };
                sg(sums[r] - counts[r] as f64) * sg(z[i] as f64) / n as f64 * dloss as f64
            })
            .collect();
        let dzd =
            loss::count_l1_backward(&dev, &zd, &sd, &cd, &dev.htod(&[dloss]).unwrap(), n).unwrap();
        assert_close(
            "count l1 backward",
            &dev.dtoh(&dzd).unwrap(),
            &dz,
            ELEMENTWISE,
        );
    }
    let mut r = Rng(61);
    let numel = 3 * 65 * 63;
    let p = r.vec(numel);
    let t = r.vec(numel);
    let mse: f64 = p
        .iter()
        .zip(&t)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        / numel as f64;
    let (pd, td) = (dev.htod(&p).unwrap(), dev.htod(&t).unwrap());
    let l = loss::mse_forward(&dev, &pd, &td).unwrap();
    assert_close("mse", &dev.dtoh(&l).unwrap(), &[mse], REDUCTION);
    assert_eq!(
        dev.dtoh(&loss::mse_forward(&dev, &pd, &td).unwrap())
            .unwrap(),
        dev.dtoh(&l).unwrap(),
        "deterministic"
    );
    let dp: Vec<f64> = p
        .iter()
        .zip(&t)
        .map(|(a, b)| 2.0 * (*a as f64 - *b as f64) / numel as f64 * 1.5)
        .collect();
    let dpd = loss::mse_backward(&dev, &pd, &td, &dev.htod(&[1.5f32]).unwrap()).unwrap();
    assert_close("mse backward", &dev.dtoh(&dpd).unwrap(), &dp, ELEMENTWISE);
}

#[test]
fn adam_steps_match_the_reference() {
    let Some((_g, dev)) = gpu("adam") else { return };
    let hyper = adam::AdamHyper {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
    };
    let n = 1000 + 13;
    let mut r = Rng(70);
    let mut p: Vec<f64> = f64s(&r.vec(n));
    let (mut m, mut v) = (vec![0.0f64; n], vec![0.0f64; n]);
    let mut pd = dev
        .htod(&p.iter().map(|x| *x as f32).collect::<Vec<_>>())
        .unwrap();
    let (mut md, mut vd) = (
        dev.alloc_zeros::<f32>(n).unwrap(),
        dev.alloc_zeros::<f32>(n).unwrap(),
    );
    for t in 1..=5u64 {
        let g = r.vec(n);
        let (b1, b2) = (hyper.beta1 as f64, hyper.beta2 as f64);
        let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        for i in 0..n {
            let gi = g[i] as f64 + hyper.weight_decay as f64 * p[i];
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            p[i] -= hyper.lr as f64 * (m[i] / bc1) / ((v[i] / bc2).sqrt() + hyper.eps as f64);
        }
        adam::adam_step(
            &dev,
            &mut pd,
            &dev.htod(&g).unwrap(),
            &mut md,
            &mut vd,
            &hyper,
            t,
        )
        .unwrap();
    }
    assert_close("adam params", &dev.dtoh(&pd).unwrap(), &p, ELEMENTWISE);
    assert_close("adam m", &dev.dtoh(&md).unwrap(), &m, REDUCTION);
    assert_close("adam v", &dev.dtoh(&vd).unwrap(), &v, REDUCTION);
}

// ------------------------------------------------------------------------------------------
// memory reuse

/// One small training-like step: conv → bn → relu → pool → upsample → gmp → losses and back.
fn step(dev: &CudaDevice, x: &cudarc::driver::CudaSlice<f32>, w: &cudarc::driver::CudaSlice<f32>) {
    let s = Conv2dShape {
        n: 3,
        c: 3,
        h: 16,
        w: 12,
        o: 8,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: 1,
    };
    let y = conv::conv2d_forward(dev, x, w, None, &s).unwrap();
    let gamma = ew::fill(dev, 8, 1.0).unwrap();
    let beta = ew::fill(dev, 8, 0.0).unwrap();
    let d = bn::BnDims {
        n: 3,
        c: 8,
        h: 16,
        w: 12,
    };
    let (yb, saved) = bn::batch_norm2d_train_forward(dev, &y, &gamma, &beta, d, 1e-5).unwrap();
    let yr = relu::relu_forward(dev, &yb).unwrap();
    let (yp, arg) = pool::max_pool2d_forward(dev, &yr, 3, 8, 16, 12).unwrap();
    let off = ew::fill(dev, 3 * 2 * 4 * 8 * 6, 0.75).unwrap();
    let gs = GmpShape {
        n: 3,
        c: 8,
        h: 8,
        w: 6,
        k: 4,
    };
    let a = gmp::gmp_forward(dev, GmpKernel::Fused, &yp, &off, &gs).unwrap();
    let l = loss::mse_forward(dev, &a, &yp).unwrap();
    let dl = ew::fill(dev, 1, 1.0).unwrap();
    let da = loss::mse_backward(dev, &a, &yp, &dl).unwrap();
    let (dyp, _doff) = gmp::gmp_backward(dev, GmpKernel::Fused, &yp, &off, &da, &gs).unwrap();
    let dyr = pool::max_pool2d_backward(dev, &dyp, &arg, 3, 8, 16, 12).unwrap();
    let dyb = relu::relu_backward(dev, &yr, &dyr).unwrap();
    let g = bn::batch_norm2d_train_backward(dev, &y, &dyb, &gamma, &saved, d).unwrap();
    let cg = conv::conv2d_backward(dev, x, w, &g.dx, &s, true, false).unwrap();
    drop((l, cg));
    dev.synchronize().unwrap();
}

#[test]
fn no_new_device_memory_after_warm_up() {
    let Some((_g, dev)) = gpu("allocations") else {
        return;
    };
    let mut r = Rng(80);
    let x = dev.htod(&r.vec(3 * 3 * 16 * 12)).unwrap();
    let w = dev.htod(&r.vec(8 * 3 * 9)).unwrap();
    for _ in 0..3 {
        step(&dev, &x, &w);
    }
    let (calls0, reserved0) = (dev.alloc_count(), dev.pool_reserved_bytes().unwrap());
    step(&dev, &x, &w);
    let per_step = dev.alloc_count() - calls0;
    assert!(per_step > 0);
    for _ in 0..10 {
        step(&dev, &x, &w);
    }
    assert_eq!(
        dev.alloc_count() - calls0,
        11 * per_step,
        "a step's allocations are fixed"
    );
    let reserved = dev.pool_reserved_bytes().unwrap();
    eprintln!("allocations per step {per_step}, pool reserved {reserved0:?} -> {reserved:?}");
    if dev.info().stream_ordered_pool {
        assert_eq!(reserved, reserved0, "the memory pool grew after warm-up");
    }
}
