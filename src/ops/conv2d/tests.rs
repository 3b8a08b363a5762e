//! conv2d against direct loops: the op through `Tensor` on the CPU (forward, backward,
//! gradients, shape errors), then the CUDA launchers' plans run on the host: the im2col /
//! col2im kernels' index math and the GEMM descriptions, in the order the launchers issue them.
//! Both halves share one direct convolution.
use super::cuda::{self, images, images_per_tile, tiles, COL_WORKSPACE_FLOATS};
use super::*;
use crate::device::cuda::gemm::tests::cublas_reference;
use crate::device::cuda::gemm::{to_cublas, RowMajorGemm};
use crate::ops::gradcheck::{check_gradients, random_input};

/// Calls `f(yi, xi, wi)` with the flat indices of every product of the direct convolution,
/// y[n, o, oh, ow] += x[n, c, oh·s + ki − p, ow·s + kj − p] · w[o, c, ki, kj], that reads
/// inside the image; output by output, each in (c, ki, kj) order.
fn for_each_tap(g: &Conv2dGeometry, mut f: impl FnMut(usize, usize, usize)) {
    let (s, p) = (g.stride() as isize, g.pad() as isize);
    for n in 0..g.n() {
        for o in 0..g.o() {
            for oh in 0..g.oh() {
                for ow in 0..g.ow() {
                    let yi = ((n * g.o() + o) * g.oh() + oh) * g.ow() + ow;
                    for c in 0..g.c() {
                        for ki in 0..g.kh() {
                            for kj in 0..g.kw() {
                                let ih = oh as isize * s + ki as isize - p;
                                let iw = ow as isize * s + kj as isize - p;
                                if ih < 0 || iw < 0 || ih >= g.h() as isize || iw >= g.w() as isize
                                {
                                    continue;
                                }
                                let xi =
                                    ((n * g.c() + c) * g.h() + ih as usize) * g.w() + iw as usize;
                                let wi = ((o * g.c() + c) * g.kh() + ki) * g.kw() + kj;
                                f(yi, xi, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Direct convolution, the textbook sum in f64 (independent of im2col).
fn direct_conv(g: &Conv2dGeometry, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0.0f64; g.y_len()];
    if let Some(b) = b {
        for (i, v) in y.iter_mut().enumerate() {
            *v = b[(i / g.col_cols()) % g.o()] as f64;
        }
    }
    for_each_tap(g, |yi, xi, wi| y[yi] += x[xi] as f64 * w[wi] as f64);
    y.into_iter().map(|v| v as f32).collect()
}

fn naive_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, a: Conv2dArgs) -> Vec<f32> {
    let g = Conv2dGeometry::new(x, w, a).unwrap();
    let b = b.map(Tensor::to_vec);
    direct_conv(&g, &x.to_vec(), &w.to_vec(), b.as_deref())
}

fn args(stride: usize, padding: usize) -> Conv2dArgs {
    Conv2dArgs { stride, padding }
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

// (x dims, w dims, stride, padding): 3x3 pad 1, 1x1 fast path, stride 2, H != W, odd
// sizes that leave a trailing row unused, a kernel wider than high.
const CONFIGS: &[([usize; 4], [usize; 4], usize, usize)] = &[
    ([2, 3, 6, 6], [4, 3, 3, 3], 1, 1),
    ([2, 5, 4, 3], [3, 5, 1, 1], 1, 0),
    ([2, 3, 7, 6], [4, 3, 3, 3], 2, 1),
    ([1, 2, 5, 8], [3, 2, 3, 3], 1, 1),
    ([2, 2, 6, 5], [2, 2, 2, 3], 2, 0),
    ([1, 3, 4, 4], [2, 3, 1, 1], 2, 1),
];

#[test]
fn forward_matches_direct_convolution() {
    for (i, &(xd, wd, s, p)) in CONFIGS.iter().enumerate() {
        let x = random_input(&xd, 100 + i as u64);
        let w = random_input(&wd, 200 + i as u64);
        let b = random_input(&[wd[0]], 300 + i as u64);
        let y = conv2d_forward(&x, &w, Some(&b), args(s, p)).unwrap();
        assert_close(
            &y.to_vec(),
            &naive_conv(&x, &w, Some(&b), args(s, p)),
            1e-5,
            "y",
        );
        let y = conv2d_forward(&x, &w, None, args(s, p)).unwrap();
        assert_close(
            &y.to_vec(),
            &naive_conv(&x, &w, None, args(s, p)),
            1e-5,
            "y",
        );
    }
}

#[test]
fn forward_hand_computed() {
    // x = 1..9 as a 3x3 image.
    let x = Tensor::from_vec((1..=9).map(|v| v as f32).collect(), &[1, 1, 3, 3]).unwrap();
    // 2x2 kernel [[1,2],[3,4]], bias 0.5, stride 1, no padding:
    // top-left 1·1 + 2·2 + 3·4 + 4·5 = 37, then 47, 67, 77.
    let w = Tensor::from_vec(vec![1., 2., 3., 4.], &[1, 1, 2, 2]).unwrap();
    let b = Tensor::from_vec(vec![0.5], &[1]).unwrap();
    let y = conv2d_forward(&x, &w, Some(&b), args(1, 0)).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    assert_eq!(y.to_vec(), vec![37.5, 47.5, 67.5, 77.5]);
    // 3x3 box filter, padding 1, stride 2: windows centred on the corners sum the 2x2
    // corner blocks: 1+2+4+5, 2+3+5+6, 4+5+7+8, 5+6+8+9.
    let w = Tensor::full(&[1, 1, 3, 3], 1.0, &crate::device::Device::Cpu);
    let y = conv2d_forward(&x, &w, None, args(2, 1)).unwrap();
    assert_eq!(y.dims(), &[1, 1, 2, 2]);
    assert_eq!(y.to_vec(), vec![12., 16., 24., 28.]);
}

/// All gradient elements (not just probes) against direct loops: dX and dW are correlations
/// of dY with W and X, db the sum of dY.
#[test]
fn backward_matches_direct_loops() {
    for (i, &(xd, wd, s, p)) in CONFIGS.iter().enumerate() {
        let a = args(s, p);
        let x = random_input(&xd, 400 + i as u64);
        let w = random_input(&wd, 500 + i as u64);
        let g = Conv2dGeometry::new(&x, &w, a).unwrap();
        let dy = random_input(&g.out_dims(), 600 + i as u64);
        let (xs, ws, dys) = (x.to_vec(), w.to_vec(), dy.to_vec());
        let mut dx = vec![0.0f64; xs.len()];
        let mut dw = vec![0.0f64; ws.len()];
        let mut db = vec![0.0f64; g.o()];
        for (yi, &d) in dys.iter().enumerate() {
            db[(yi / g.col_cols()) % g.o()] += d as f64;
        }
        for_each_tap(&g, |yi, xi, wi| {
            let d = dys[yi] as f64;
            dx[xi] += d * ws[wi] as f64;
            dw[wi] += d * xs[xi] as f64;
        });
        let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
        let gr = conv2d_backward(&x, &w, &dy, a, true, true, true).unwrap();
        assert_close(&gr.dx.unwrap().to_vec(), &f(dx), 1e-4, "dx");
        assert_close(&gr.dw.unwrap().to_vec(), &f(dw), 1e-4, "dw");
        assert_close(&gr.db.unwrap().to_vec(), &f(db), 1e-4, "db");
        // Only what is asked for is computed.
        let gr = conv2d_backward(&x, &w, &dy, a, false, true, false).unwrap();
        assert!(gr.dx.is_none() && gr.db.is_none() && gr.dw.is_some());
    }
}

#[test]
fn gradcheck_conv2d() {
    for (i, &(xd, wd, s, p)) in CONFIGS.iter().enumerate() {
        let a = args(s, p);
        let x = random_input(&xd, 10 + i as u64);
        let w = random_input(&wd, 20 + i as u64);
        let b = random_input(&[wd[0]], 30 + i as u64);
        check_gradients(
            &format!("conv2d {i} with bias"),
            vec![x.clone(), w.clone(), b],
            |t, v| conv2d(t, &v[0], &v[1], Some(&v[2]), a),
        )
        .unwrap();
        check_gradients(&format!("conv2d {i} no bias"), vec![x, w], |t, v| {
            conv2d(t, &v[0], &v[1], None, a)
        })
        .unwrap();
    }
}

/// The first conv of a network: the input is a constant, so only dW and db come back.
#[test]
fn constant_input_gets_no_gradient() {
    let tape = Tape::new();
    let x = Var::constant(random_input(&[1, 3, 5, 5], 1));
    let w = tape.leaf(random_input(&[2, 3, 3, 3], 2));
    let b = tape.leaf(random_input(&[2], 3));
    let y = conv2d(&tape, &x, &w, Some(&b), args(1, 1)).unwrap();
    let loss = crate::ops::elementwise::sum(&tape, &y).unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert_eq!(grads.len(), 2);
    // d(Σy)/db = number of output positions per channel.
    assert_eq!(grads.get(&b).unwrap().to_vec(), vec![25.0, 25.0]);
    assert!(grads.get(&w).is_some());
}

#[test]
fn shape_errors_name_conv2d() {
    let x = random_input(&[1, 3, 5, 5], 1);
    let cases: Vec<(Tensor, Tensor, Option<Tensor>, &str)> = vec![
        (x.clone(), random_input(&[2, 4, 3, 3], 2), None, "channels"),
        (
            random_input(&[3, 5, 5], 1),
            random_input(&[2, 3, 3, 3], 2),
            None,
            "rank 4",
        ),
        (x.clone(), random_input(&[2, 3, 3], 2), None, "rank 4"),
        (
            x.clone(),
            random_input(&[2, 3, 3, 3], 2),
            Some(random_input(&[3], 3)),
            "bias",
        ),
        (x.clone(), random_input(&[2, 3, 7, 7], 2), None, "larger"),
    ];
    for (x, w, b, needle) in cases {
        let e = conv2d_forward(&x, &w, b.as_ref(), args(1, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv2d") && e.contains(needle), "{e}");
    }
    let w = random_input(&[2, 3, 3, 3], 2);
    let e = conv2d_forward(&x, &w, None, args(0, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv2d") && e.contains("stride"), "{e}");
    let bad_dy = random_input(&[1, 2, 4, 4], 3);
    let e = conv2d_backward(&x, &w, &bad_dy, args(1, 0), true, true, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv2d") && e.contains("dy"), "{e}");
}

// The CUDA launchers' plans, on the host.

/// (x dims, w dims, stride, padding): 3x3 pad 1, a 3x2 kernel with stride 2, the pointwise
/// path, stride 3 larger than the kernel.
const PLANS: [([usize; 4], [usize; 4], usize, usize); 4] = [
    ([3, 2, 5, 7], [4, 2, 3, 3], 1, 1),
    ([1, 3, 6, 5], [2, 3, 3, 2], 2, 1),
    ([2, 4, 3, 4], [5, 4, 1, 1], 1, 0),
    ([2, 1, 4, 4], [3, 1, 2, 2], 3, 0),
];

fn plan(i: usize) -> Conv2dGeometry {
    let (xd, wd, s, p) = PLANS[i];
    Conv2dGeometry::from_dims(xd, wd, args(s, p)).unwrap()
}

/// im2col with the kernel's index decomposition (flat index → image, row, column).
fn im2col_host(g: &Conv2dGeometry, x: &[f32]) -> Vec<f32> {
    let (ohw, rows) = (g.col_cols(), g.col_rows());
    (0..g.col_len())
        .map(|i| {
            let q = i % ohw;
            let r = (i / ohw) % rows;
            let img = i / (ohw * rows);
            let (oy, ox) = (q / g.ow(), q % g.ow());
            let kj = r % g.kw();
            let ki = (r / g.kw()) % g.kh();
            let ch = r / (g.kw() * g.kh());
            let iy = (oy * g.stride() + ki) as i64 - g.pad() as i64;
            let ix = (ox * g.stride() + kj) as i64 - g.pad() as i64;
            if iy >= 0 && iy < g.h() as i64 && ix >= 0 && ix < g.w() as i64 {
                x[((img * g.c() + ch) * g.h() + iy as usize) * g.w() + ix as usize]
            } else {
                0.0
            }
        })
        .collect()
}

/// col2im with the kernel's gather formulation.
fn col2im_host(g: &Conv2dGeometry, col: &[f32]) -> Vec<f32> {
    let (c, h, w) = (g.c() as i64, g.h() as i64, g.w() as i64);
    let (s, pad) = (g.stride() as i64, g.pad() as i64);
    let (oh, ow) = (g.oh() as i64, g.ow() as i64);
    let (kh, kw) = (g.kh() as i64, g.kw() as i64);
    let ohw = oh * ow;
    let rows = c * kh * kw;
    (0..g.x_len() as i64)
        .map(|i| {
            let xx = i % w;
            let yy = (i / w) % h;
            let ch = (i / (w * h)) % c;
            let img = i / (w * h * c);
            let mut acc = 0.0f32;
            for ki in 0..kh {
                let ty = yy + pad - ki;
                if ty < 0 || ty % s != 0 || ty / s >= oh {
                    continue;
                }
                for kj in 0..kw {
                    let tx = xx + pad - kj;
                    if tx < 0 || tx % s != 0 || tx / s >= ow {
                        continue;
                    }
                    let r = (ch * kh + ki) * kw + kj;
                    let q = (ty / s) * ow + tx / s;
                    acc += col[(img * rows * ohw + r * ohw + q) as usize];
                }
            }
            acc
        })
        .collect()
}

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs a RowMajorGemm plan exactly as `sgemm` hands it to cuBLAS, on the host.
fn run(g: &RowMajorGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let cb = to_cublas(g).unwrap();
    assert!(a.len() >= g.required_len_a() && b.len() >= g.required_len_b());
    assert!(c.len() >= g.required_len_c());
    cublas_reference(&cb, b, a, c);
}

/// The launcher's forward plan (tiles of 2 images, im2col, GEMM) equals a direct convolution.
#[test]
fn forward_plan_matches_direct_convolution() {
    for g in (0..PLANS.len()).map(plan) {
        let x = rand(g.x_len(), 1);
        let w = rand(g.w_len(), 2);
        let mut y = vec![f32::NAN; g.y_len()];
        let tile = images_per_tile(g.col_image(), g.n(), 2 * g.col_image());
        for (n0, nb) in tiles(g.n(), tile) {
            let xt = &x[images(n0, nb, g.x_image())];
            let b = if g.is_pointwise() {
                xt.to_vec()
            } else {
                im2col_host(&g.tile(nb), xt)
            };
            let gemm = cuda::forward_gemm(&g.tile(nb));
            run(&gemm, &w, &b, &mut y[images(n0, nb, g.y_image())]);
        }
        let want = direct_conv(&g, &x, &w, None);
        assert_close(&y, &want, 1e-4, &format!("forward {g:?}"));
    }
}

/// The backward plan gives the adjoints of the forward: <dY, conv(dX-direction)> checks via
/// finite linear algebra — dW and dx equal the exact gradients of Σ dY ⊙ conv(x, w).
#[test]
fn backward_plan_matches_exact_gradients() {
    for g in (0..PLANS.len()).map(plan) {
        let x = rand(g.x_len(), 3);
        let w = rand(g.w_len(), 4);
        let (cimg, yimg) = (g.col_image(), g.y_image());
        let dy = rand(g.y_len(), 5);
        // plan, as backward runs it
        let mut dw = vec![0.0f32; g.w_len()];
        let col = if g.is_pointwise() {
            x.clone()
        } else {
            im2col_host(&g, &x)
        };
        for i in 0..g.n() {
            let (dyi, coli) = (&dy[images(i, 1, yimg)], &col[images(i, 1, cimg)]);
            run(&cuda::weight_grad_gemm(&g), dyi, coli, &mut dw);
        }
        let mut dcol = vec![f32::NAN; g.col_len()];
        run(&cuda::input_grad_gemm(&g), &w, &dy, &mut dcol);
        let dx = if g.is_pointwise() {
            dcol
        } else {
            col2im_host(&g, &dcol)
        };
        // exact gradients: the loss Σ dy·y is linear in w and in x, so its gradient
        // entry j is the loss at the unit vector e_j
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            direct_conv(&g, x, w, None)
                .iter()
                .zip(&dy)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        let unit = |len: usize, j: usize| {
            let mut e = vec![0.0f32; len];
            e[j] = 1.0;
            e
        };
        let want_dw: Vec<f32> = (0..g.w_len())
            .map(|j| loss(&x, &unit(g.w_len(), j)) as f32)
            .collect();
        let want_dx: Vec<f32> = (0..g.x_len())
            .map(|j| loss(&unit(g.x_len(), j), &w) as f32)
            .collect();
        assert_close(&dw, &want_dw, 1e-4, &format!("dW {g:?}"));
        assert_close(&dx, &want_dx, 1e-4, &format!("dx {g:?}"));
    }
}

#[test]
fn shapes_and_tiles() {
    let g = plan(0);
    assert_eq!((g.oh(), g.ow()), (5, 7));
    assert_eq!((plan(1).oh(), plan(1).ow()), (3, 3));
    assert_eq!((plan(3).oh(), plan(3).ow()), (1, 1));
    let (xd, _, s, p) = PLANS[0];
    let bad = Conv2dGeometry::from_dims(xd, [4, 2, 9, 3], args(s, p));
    assert!(bad.unwrap_err().to_string().contains("conv2d"));
    assert!(Conv2dGeometry::from_dims(xd, [4, 2, 3, 3], args(0, p)).is_err());
    assert_eq!(images_per_tile(576 * 65536, 8, COL_WORKSPACE_FLOATS), 1);
    assert_eq!(images_per_tile(1000, 8, COL_WORKSPACE_FLOATS), 8);
    assert_eq!(images_per_tile(10, 8, 25), 2);
    assert_eq!(images_per_tile(100, 8, 5), 1);
    assert!(plan(2).is_pointwise() && !plan(0).is_pointwise());
}

/// The geometry is the kernels' parameter struct: every size must fit its u32 fields, and a
/// tile is the same convolution over fewer images.
#[test]
fn sizes_beyond_u32_are_refused_and_tiles_keep_the_rest() {
    let e = Conv2dGeometry::from_dims([1 << 32, 1, 1, 1], [1, 1, 1, 1], args(1, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("N = 4294967296 exceeds u32"),
        "{e}"
    );
    let e = Conv2dGeometry::from_dims([1, 1, 1, 1], [1, 1, 1, 1], args(1, usize::MAX))
        .unwrap_err()
        .to_string();
    assert!(e.contains("conv2d") && e.contains("padding"), "{e}");
    let e = Conv2dGeometry::from_dims(
        [1 << 20, 1 << 20, 1 << 20, 1 << 20],
        [1, 1 << 20, 1, 1],
        args(1, 0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("conv2d") && e.contains("overflows usize"), "{e}");
    let g = plan(0);
    let t = g.tile(2);
    assert_eq!(
        (t.n(), t.x_len(), t.y_len()),
        (2, 2 * g.x_image(), 2 * g.y_image())
    );
    assert_eq!(Conv2dGeometry { n: g.n, ..t }, g);
    assert_eq!(tiles(5, 2).collect::<Vec<_>>(), [(0, 2), (2, 2), (4, 1)]);
}

/// The direct loops' dx, dw, db of `g` for dy, in f64.
fn direct_grads(g: &Conv2dGeometry, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f32>; 3] {
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let mut db = vec![0.0f64; g.o()];
    for (yi, &d) in dy.iter().enumerate() {
        db[(yi / g.col_cols()) % g.o()] += d as f64;
    }
    for_each_tap(g, |yi, xi, wi| {
        let d = dy[yi] as f64;
        dx[xi] += d * w[wi] as f64;
        dw[wi] += d * x[xi] as f64;
    });
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
    [f(dx), f(dw), f(db)]
}

/// The SIMD fast path (both instruction sets where the CPU has them, the AVX2 one forced on
/// an AVX-512 machine) against the direct loops and against im2col + GEMM, at odd sizes: maps
/// narrower than a vector, positions spanning several tasks and dW chunks, channel counts
/// that are not multiples of the register tiles, reductions longer than one packed block,
/// a 5x5 kernel, and both ways of computing dW (dot products for few output channels, the
/// transposed dY for more).
#[test]
fn fast_path_matches_reference_loops() {
    use crate::device::cpu::simd::Isa;
    let configs: &[([usize; 4], usize, usize)] = &[
        ([2, 3, 7, 9], 5, 3),
        ([1, 13, 5, 4], 9, 3),
        ([3, 4, 17, 6], 17, 3),
        ([1, 2, 41, 37], 3, 3),
        ([2, 30, 3, 3], 11, 3),
        ([1, 37, 6, 5], 2, 3),
        ([2, 3, 9, 11], 3, 5),
        ([1, 1, 1, 1], 1, 3),
        // output channels at least a tile wide: dW through the transposed dY
        ([2, 5, 9, 7], 33, 3),
        ([1, 3, 6, 19], 40, 3),
        ([2, 2, 5, 6], 32, 5),
    ];
    let mut ran = 0;
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.available() {
            eprintln!("{isa:?} not on this CPU: its fast path is not tested here");
            continue;
        }
        for (i, &(xd, o, k)) in configs.iter().enumerate() {
            let wd = [o, xd[1], k, k];
            let a = args(1, k / 2);
            let seed = 700 + 10 * i as u64;
            let (x, w) = (random_input(&xd, seed), random_input(&wd, seed + 1));
            let b = random_input(&[o], seed + 2);
            let g = Conv2dGeometry::new(&x, &w, a).unwrap();
            assert!(cpu_fast::supported(&g));
            let dy = random_input(&g.out_dims(), seed + 3);
            let (xs, ws, bs, dys) = (x.to_vec(), w.to_vec(), b.to_vec(), dy.to_vec());
            let what = format!("{isa:?} x {xd:?} w {wd:?}");
            for bias in [Some(&bs[..]), None] {
                let y = cpu_fast::forward(&xs, &ws, bias, &g, isa);
                assert_close(
                    &y,
                    &direct_conv(&g, &xs, &ws, bias),
                    1e-5,
                    &format!("{what} y"),
                );
                let y2 = cpu::forward_im2col(&xs, &ws, bias, &g);
                assert_close(&y, &y2, 1e-5, &format!("{what} y vs im2col"));
            }
            let all = Conv2dNeeds {
                dx: true,
                dw: true,
                db: true,
            };
            let gr = cpu_fast::backward(&xs, &ws, &dys, &g, all, isa);
            let [dx, dw, db] = direct_grads(&g, &xs, &ws, &dys);
            assert_close(gr.dx.as_ref().unwrap(), &dx, 1e-4, &format!("{what} dx"));
            assert_close(gr.dw.as_ref().unwrap(), &dw, 1e-4, &format!("{what} dw"));
            assert_close(gr.db.as_ref().unwrap(), &db, 1e-4, &format!("{what} db"));
            let r = cpu::backward_im2col(&xs, &ws, &dys, &g, all);
            assert_close(gr.dx.as_ref().unwrap(), &r.dx.unwrap(), 1e-4, &what);
            assert_close(gr.dw.as_ref().unwrap(), &r.dw.unwrap(), 1e-4, &what);
            // Only what is asked for, and the same bits when asked alone.
            let only_dw = Conv2dNeeds {
                dx: false,
                dw: true,
                db: false,
            };
            let g2 = cpu_fast::backward(&xs, &ws, &dys, &g, only_dw, isa);
            assert!(g2.dx.is_none() && g2.db.is_none());
            assert_eq!(g2.dw, gr.dw, "{what}: dW alone");
            ran += 1;
        }
    }
    if ran == 0 {
        eprintln!("no SIMD fast path on this CPU: nothing to compare");
    }
}

/// The fast path gives the same bits at every thread count (tasks own whole outputs and sum
/// in a fixed order).
#[test]
fn fast_path_is_independent_of_threads() {
    let Some(isa) = crate::device::cpu::simd::Isa::ALL
        .into_iter()
        .rev()
        .find(|i| crate::device::cpu::kernels::GemmKernel::for_isa(*i, 8).is_some())
    else {
        return;
    };
    let (x, w) = (
        random_input(&[2, 19, 23, 21], 1),
        random_input(&[13, 19, 3, 3], 2),
    );
    let g = Conv2dGeometry::new(&x, &w, args(1, 1)).unwrap();
    let dy = random_input(&g.out_dims(), 3);
    let (xs, ws, dys) = (x.to_vec(), w.to_vec(), dy.to_vec());
    let all = Conv2dNeeds {
        dx: true,
        dw: true,
        db: true,
    };
    same_bits_at_every_thread_count(|| {
        let y = cpu_fast::forward(&xs, &ws, None, &g, isa);
        let gr = cpu_fast::backward(&xs, &ws, &dys, &g, all, isa);
        (y, gr.dx.unwrap(), gr.dw.unwrap())
    });
}

/// Runs `pass` (y, dx, dW) on pools of 1, 2, 3 and 5 threads and asserts identical bits;
/// returns the 1-thread result.
fn same_bits_at_every_thread_count(
    pass: impl Fn() -> (Vec<f32>, Vec<f32>, Vec<f32>) + Sync,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(&pass)
    };
    let one = run(1);
    for t in [2, 3, 5] {
        assert!(run(t) == one, "{t} threads differ from 1");
    }
    one
}

/// Late layers take im2col + the gemm crate (`cpu::forward`'s dispatch); that path too gives
/// the same bits at every thread count, so training stays reproducible whatever the machine.
#[test]
fn gemm_path_of_late_layers_is_independent_of_threads() {
    let (x, w) = (
        random_input(&[2, 128, 7, 9], 4),
        random_input(&[20, 128, 3, 3], 5),
    );
    let g = Conv2dGeometry::new(&x, &w, args(1, 1)).unwrap();
    let dy = random_input(&g.out_dims(), 6);
    let (xs, ws, dys) = (x.to_vec(), w.to_vec(), dy.to_vec());
    let all = Conv2dNeeds {
        dx: true,
        dw: true,
        db: true,
    };
    let one = same_bits_at_every_thread_count(|| {
        let y = cpu::forward(&xs, &ws, None, &g);
        let gr = cpu::backward(&xs, &ws, &dys, &g, all);
        (y, gr.dx.unwrap(), gr.dw.unwrap())
    });
    assert_eq!(
        one.0,
        cpu::forward_im2col(&xs, &ws, None, &g),
        "not the GEMM path"
    );
}
