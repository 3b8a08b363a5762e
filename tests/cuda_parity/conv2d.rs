//! Convolution: every CUDA version (v1, v2 with each of its routes) against the CPU reference,
//! forward and all three gradients, with the column workspace at its default and at one
//! image per tile (tiles accumulate dW and db), at odd sizes, batches of 1, 2 and 3, strides
//! 2 and 3, 1x1, 2x2 and 5x5 kernels; then TF32 and bf16 arithmetic at their own bounds.
use super::*;
use dcl::device::cuda::gemm::GemmMath;
use dcl::ops::conv2d::cuda::ConvRun;
use dcl::ops::conv2d::cuda_v2::{self, BiasRoute, DwRoute};
use dcl::ops::conv2d::{Conv2dGeometry, Conv2dGrads, Conv2dNeeds};

/// bf16 operands (8-bit mantissa) with FP32 accumulation, normwise: each product is off by up
/// to 2·2^-9 relative, 8x TF32's; the host emulation's worst is 3.8e-3 (TF32's 8.6e-4), db
/// is summed in f32 (a bf16 ones column gave 2.5e-2 on a channel whose dy nearly cancels).
const BF16: f64 = 1.5e-2;

/// (x dims, out channels, kernel, stride, padding, bias).
type Case = ([usize; 4], usize, usize, usize, usize, bool);

const CASES: [Case; 10] = [
    ([3, 2, 9, 7], 5, 3, 1, 1, true), // odd sizes, dW by partials, unaligned rows
    ([1, 3, 6, 11], 4, 3, 2, 1, true), // batch 1, stride 2
    ([3, 4, 5, 6], 7, 1, 1, 0, true), // pointwise: x is its own column matrix
    ([2, 1, 8, 8], 3, 2, 3, 0, false), // 2x2 kernel, stride 3, no padding
    ([1, 17, 13, 19], 33, 3, 1, 1, false),
    ([3, 17, 5, 4], 6, 3, 1, 1, true), // positions < rows: dW by repacking dy; float4 rows
    ([2, 2, 12, 12], 3, 3, 1, 1, true), // positions > rows, float4 rows and bias pass
    ([2, 3, 7, 9], 4, 3, 2, 2, true),  // stride 2, padding 2
    ([1, 2, 9, 9], 3, 5, 2, 2, false), // 5x5, stride 2: two taps per residue in col2im
    ([3, 3, 11, 5], 2, 1, 2, 0, true), // 1x1 with stride 2: not pointwise, through im2col
];

const ALL: Conv2dNeeds = Conv2dNeeds {
    dx: true,
    dw: true,
    db: true,
};

/// Every way a GPU version may run one convolution: v1, and v2 with its own choices and with
/// each bias and dW route forced; each at the default workspace and at one image per tile.
fn runs(dev: &CudaDevice, math: ConvMath) -> Vec<(String, ConvRun)> {
    let mut out = Vec::new();
    for ws in [None, Some(1)] {
        let tag = if ws.is_some() { ", 1-image tiles" } else { "" };
        let sized = |r: ConvRun| match ws {
            Some(w) => r.workspace(w),
            None => r,
        };
        if math != ConvMath::Bf16 {
            let v1 = ConvRun::of(dev, ConvVersion::V1, math).unwrap();
            out.push((format!("v1{tag}"), sized(v1)));
        }
        let v2 = sized(ConvRun::of(dev, ConvVersion::V2, math).unwrap());
        out.push((format!("v2{tag}"), v2));
        for (bias, dw) in [
            (BiasRoute::Folded, DwRoute::Repack),
            (BiasRoute::Pass, DwRoute::Partials),
        ] {
            let r = ConvRun {
                bias: Some(bias),
                dw: Some(dw),
                ..v2
            };
            out.push((format!("v2 {bias:?}/{dw:?}{tag}"), r));
        }
    }
    out
}

struct Reference {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    dy: Tensor,
    y: Tensor,
    grads: Conv2dGrads,
    geo: Conv2dGeometry,
    args: Conv2dArgs,
    tag: String,
}

fn reference(r: &mut Rng, case: Case) -> Reference {
    let (xd, o, k, stride, padding, bias) = case;
    let args = Conv2dArgs { stride, padding };
    let x = r.tensor(&xd, 1.0, 0.0);
    let w = r.tensor(&[o, xd[1], k, k], 0.5, 0.0);
    let b = bias.then(|| r.tensor(&[o], 0.5, 0.0));
    let y = conv2d_forward(&x, &w, b.as_ref(), args).unwrap();
    let dy = r.tensor(y.dims(), 1.0, 0.0);
    let grads = conv2d_backward(&x, &w, &dy, args, true, true, bias).unwrap();
    let geo = Conv2dGeometry::new(&x, &w, args).unwrap();
    let tag = format!("x {xd:?} w {:?} s{stride} p{padding}", w.dims());
    Reference {
        x,
        w,
        b,
        dy,
        y,
        grads,
        geo,
        args,
        tag,
    }
}

/// `run` on the GPU against the CPU's forward and gradients, within `tol`; then each gradient
/// alone and dW with db but no dx. Returns the worst normwise error.
fn check_run(
    dev: &CudaDevice,
    d: &Device,
    c: &Reference,
    name: &str,
    run: &ConvRun,
    tol: f64,
) -> f64 {
    let (xg, wg, dyg) = (on(&c.x, d), on(&c.w, d), on(&c.dy, d));
    let bg = c.b.as_ref().map(|b| on(b, d));
    let (xb, wb, dyb) = (
        xg.gpu_buffer().unwrap(),
        wg.gpu_buffer().unwrap(),
        dyg.gpu_buffer().unwrap(),
    );
    let bb = bg.as_ref().map(|b| b.gpu_buffer().unwrap());
    let tag = format!("{name}: {}", c.tag);
    let y = conv_cuda::forward_run(dev, xb, wb, bb, &c.geo, run).unwrap();
    let worst = std::cell::Cell::new(0.0f64);
    let cmp = |what: &str, got: &[f32], want: &[f32]| {
        worst.set(worst.get().max(close_vals(what, got, want, tol)));
    };
    cmp(
        &format!("conv y {tag}"),
        &dev.dtoh(&y).unwrap(),
        &c.y.to_vec(),
    );
    let has_bias = c.b.is_some();
    let want = |g: &Option<Tensor>| g.as_ref().unwrap().to_vec();
    let compare =
        |what: &str, got: &Conv2dGrads<dcl::device::cuda::GpuBuffer<f32>>, n: Conv2dNeeds| {
            assert_eq!(got.dx.is_some(), n.dx, "{what} dx {tag}");
            assert_eq!(got.dw.is_some(), n.dw, "{what} dw {tag}");
            assert_eq!(got.db.is_some(), n.db, "{what} db {tag}");
            if let Some(dx) = &got.dx {
                let v = dev.dtoh(dx).unwrap();
                cmp(&format!("conv dx {what} {tag}"), &v, &want(&c.grads.dx));
            }
            if let Some(dw) = &got.dw {
                let v = dev.dtoh(dw).unwrap();
                cmp(&format!("conv dw {what} {tag}"), &v, &want(&c.grads.dw));
            }
            if let Some(db) = &got.db {
                let v = dev.dtoh(db).unwrap();
                cmp(&format!("conv db {what} {tag}"), &v, &want(&c.grads.db));
            }
        };
    let all = Conv2dNeeds {
        db: has_bias,
        ..ALL
    };
    let mut subsets = vec![
        ("all", all),
        (
            "dx alone",
            Conv2dNeeds {
                dx: true,
                dw: false,
                db: false,
            },
        ),
        (
            "dw alone",
            Conv2dNeeds {
                dx: false,
                dw: true,
                db: false,
            },
        ),
    ];
    if has_bias {
        subsets.push((
            "db alone",
            Conv2dNeeds {
                dx: false,
                dw: false,
                db: true,
            },
        ));
        subsets.push((
            "dw and db",
            Conv2dNeeds {
                dx: false,
                dw: true,
                db: true,
            },
        ));
    }
    for (what, n) in subsets {
        let got = conv_cuda::backward_run(dev, xb, wb, dyb, &c.geo, n, run).unwrap();
        compare(what, &got, n);
    }
    worst.get()
}

#[test]
pub(crate) fn conv2d_every_version_and_route_matches_the_cpu() {
    let Some((_g, d, dev)) = gpu("conv2d") else {
        return;
    };
    let mut r = Rng(5);
    let cases: Vec<Reference> = CASES.iter().map(|&c| reference(&mut r, c)).collect();
    let mut worst = 0.0f64;
    for c in &cases {
        for (name, run) in runs(&dev, ConvMath::Fp32) {
            worst = worst.max(check_run(&dev, &d, c, &name, &run, REDUCTION));
        }
    }
    eprintln!("conv2d fp32: worst normwise error {worst:.2e} (bound {REDUCTION:.0e})");
    // the routes the plans chose on their own include both of each
    let plans: Vec<_> = cases
        .iter()
        .map(|c| {
            let f = cuda_v2::forward_plan(&c.geo, c.b.is_some(), GemmMath::Fp32, 1 << 26, None);
            let b = cuda_v2::backward_plan(&c.geo, ALL, GemmMath::Fp32, 1 << 26, None);
            (f.bias, b.dw)
        })
        .collect();
    for want in [BiasRoute::Folded, BiasRoute::Pass] {
        assert!(
            plans.iter().any(|p| p.0 == want),
            "no case folds as {want:?}"
        );
    }
    for want in [DwRoute::Repack, DwRoute::Partials] {
        assert!(plans.iter().any(|p| p.1 == want), "no case takes {want:?}");
    }

    // Through the tensor API with the op's switches: each version, tiled and not.
    for v in ConvVersion::ALL {
        dcl::ops::conv2d::set_version(v);
        for c in &cases {
            let tag = format!("{} (set_version): {}", v.name(), c.tag);
            let (xg, wg) = (on(&c.x, &d), on(&c.w, &d));
            let bg = c.b.as_ref().map(|b| on(b, &d));
            let y = conv2d_forward(&xg, &wg, bg.as_ref(), c.args).unwrap();
            close(&format!("conv y {tag}"), &y, &c.y, REDUCTION);
            let g = conv2d_backward(&xg, &wg, &on(&c.dy, &d), c.args, true, true, c.b.is_some())
                .unwrap();
            close(
                &format!("conv dx {tag}"),
                g.dx.as_ref().unwrap(),
                c.grads.dx.as_ref().unwrap(),
                REDUCTION,
            );
            close(
                &format!("conv dw {tag}"),
                g.dw.as_ref().unwrap(),
                c.grads.dw.as_ref().unwrap(),
                REDUCTION,
            );
            let yt = conv_cuda::forward_ws(
                &dev,
                xg.gpu_buffer().unwrap(),
                wg.gpu_buffer().unwrap(),
                bg.as_ref().map(|b| b.gpu_buffer().unwrap()),
                &c.geo,
                c.geo.col_image(),
            )
            .unwrap();
            close_vals(
                &format!("conv y, 1-image tiles {tag}"),
                &dev.dtoh(&yt).unwrap(),
                &c.y.to_vec(),
                REDUCTION,
            );
            let needs = Conv2dNeeds {
                db: c.b.is_some(),
                ..ALL
            };
            let gt = conv_cuda::backward_ws(
                &dev,
                xg.gpu_buffer().unwrap(),
                wg.gpu_buffer().unwrap(),
                on(&c.dy, &d).gpu_buffer().unwrap(),
                &c.geo,
                needs,
                1,
            )
            .unwrap();
            close_vals(
                &format!("conv dw, 1-image tiles {tag}"),
                &dev.dtoh(gt.dw.as_ref().unwrap()).unwrap(),
                &c.grads.dw.as_ref().unwrap().to_vec(),
                REDUCTION,
            );
        }
    }
    dcl::ops::conv2d::set_version(ConvVersion::default());

    // TF32: both versions, every case and route.
    dcl::ops::conv2d::set_math(ConvMath::Tf32);
    let mut worst = 0.0f64;
    for c in &cases {
        for (name, run) in runs(&dev, ConvMath::Tf32) {
            assert_eq!(run.math, GemmMath::Tf32);
            worst = worst.max(check_run(&dev, &d, c, &format!("tf32 {name}"), &run, TF32));
        }
    }
    eprintln!("conv2d tf32: worst normwise error {worst:.2e} (bound {TF32:.0e})");
    let c = &cases[4];
    let y = conv2d_forward(&on(&c.x, &d), &on(&c.w, &d), None, c.args).unwrap();
    close("conv y (tf32 switch)", &y, &c.y, TF32);
    // bf16 operands: v2 only, every case and route; v1 refuses with one line.
    dcl::ops::conv2d::set_math(ConvMath::Bf16);
    let mut worst = 0.0f64;
    for c in &cases {
        for (name, run) in runs(&dev, ConvMath::Bf16) {
            assert_eq!(run.math, GemmMath::Bf16);
            worst = worst.max(check_run(&dev, &d, c, &format!("bf16 {name}"), &run, BF16));
        }
    }
    eprintln!("conv2d bf16: worst normwise error {worst:.2e} (bound {BF16:.1e})");
    dcl::ops::conv2d::set_version(ConvVersion::V1);
    let e = conv2d_forward(&on(&c.x, &d), &on(&c.w, &d), None, c.args)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bf16") && e.contains("v2") && !e.contains('\n'),
        "{e}"
    );
    dcl::ops::conv2d::set_version(ConvVersion::default());
    dcl::ops::conv2d::set_math(ConvMath::Fp32);
}
