//! The CUDA conv rows of `dcl bench kernels`: for one 3x3 layer, every convolution version
//! (v1, v2) forward and backward and each of its parts, issued as its launcher issues them
//! (the same tiles, plans and GEMM descriptions), beside plain GEMMs of the same m, n, k over
//! the whole batch with random operands, all in the arithmetic of the op's switch
//! (`ops::conv2d::math`: `--fp32`, `--tf32`, `--bf16`, TF32 by default from compute
//! capability 8.0). One device call then picks the winner per layer by measurement: the rows
//! `<layer> v1` / `<layer> v2` pass `fwd` / `bwd` carry "rate vs plain", the plain GEMMs'
//! time over the version's (im2col, col2im, bias and the reductions included).
use super::not_cuda;
use super::timing::{random_values, Bench, Rows, Timing, F32};
use crate::device::cuda::gemm::{gemm_bf16, gemm_f32, GemmMath, RowMajorGemm};
use crate::device::cuda::{DeviceScalar, GpuBuffer};
use crate::device::CudaDevice;
use crate::error::Result;
use crate::ops::conv2d::cuda::{self, tiles, ConvRun, Unfold};
use crate::ops::conv2d::cuda_v2::{self, BiasRoute, DwRoute, Operand};
use crate::ops::conv2d::{Conv2dGeometry, Conv2dNeeds, ConvVersion};
use crate::tensor::Tensor;

/// One layer's operands on the GPU.
pub(super) struct Layer<'a> {
    pub name: &'a str,
    pub shape: &'a str,
    pub g: &'a Conv2dGeometry,
    pub x: &'a Tensor,
    pub w: &'a Tensor,
    pub b: Option<&'a Tensor>,
    pub dy: &'a Tensor,
}

const ALL: Conv2dNeeds = Conv2dNeeds {
    dx: true,
    dw: true,
    db: true,
};

/// Every version's rows and the plain GEMMs' for one layer.
pub(super) fn rows(b: &Bench, r: &mut Rows, d: &CudaDevice, l: &Layer) -> Result<()> {
    let g = l.g;
    let (x, w, dy) = (
        l.x.gpu_buffer().ok_or_else(|| not_cuda("x"))?,
        l.w.gpu_buffer().ok_or_else(|| not_cuda("w"))?,
        l.dy.gpu_buffer().ok_or_else(|| not_cuda("dy"))?,
    );
    let bias =
        l.b.map(|t| t.gpu_buffer().ok_or_else(|| not_cuda("b")))
            .transpose()?;
    let math = crate::ops::conv2d::math();
    let flops = g.forward_flops() as f64;
    let plain = plain_gemms(b, d, g, math.resolve(d.info())?)?;
    let plain_op = format!("{} plain GEMM", l.name);
    let m = plain.math.name();
    r.flop(
        &plain_op,
        "fwd",
        l.shape,
        plain.fwd,
        flops,
        format!("{m}: W·B, B [C·9, N·P] random"),
    );
    r.flop(
        &plain_op,
        "dW",
        l.shape,
        plain.dw,
        flops,
        format!("{m}: C·Bᵀ"),
    );
    r.flop(
        &plain_op,
        "dX",
        l.shape,
        plain.dx,
        flops,
        format!("{m}: Wᵀ·C"),
    );
    let needs = Conv2dNeeds {
        db: bias.is_some(),
        ..ALL
    };
    for v in ConvVersion::ALL {
        let run = ConvRun::of(d, v, math)?;
        if v == ConvVersion::V1 && run.math == GemmMath::Bf16 {
            continue; // v1 has no bf16 GEMMs
        }
        let op = format!("{} {}", l.name, v.name());
        let tf = b.time(|| cuda::forward_run(d, x, w, bias, g, &run).map(drop))?;
        let tb = b.time(|| cuda::backward_run(d, x, w, dy, g, needs, &run).map(drop))?;
        let how = match v {
            ConvVersion::V1 => v1_parts(b, r, d, l, &op, run.math)?,
            ConvVersion::V2 => v2_parts(b, r, d, l, &op, &run)?,
        };
        let rate = |plain_ms: f64, t: Timing| plain_ms / t.median_ms;
        r.flop(
            &op,
            "fwd",
            l.shape,
            tf,
            flops,
            format!(
                "{}: {how}; rate vs plain GEMM {:.2}",
                run.math.name(),
                rate(plain.fwd.median_ms, tf)
            ),
        );
        r.flop(
            &op,
            "bwd",
            l.shape,
            tb,
            2.0 * flops,
            format!(
                "{}: dx, dW{}; rate vs plain dW + dX GEMMs {:.2}",
                run.math.name(),
                if bias.is_some() { ", db" } else { "" },
                rate(plain.dw.median_ms + plain.dx.median_ms, tb)
            ),
        );
    }
    Ok(())
}

struct Plain {
    math: GemmMath,
    fwd: Timing,
    dw: Timing,
    dx: Timing,
}

/// Plain GEMMs of the convolution's m, n, k over the whole batch (one call each, packed
/// random operands): the rate a convolution is measured against.
fn plain_gemms(b: &Bench, d: &CudaDevice, g: &Conv2dGeometry, math: GemmMath) -> Result<Plain> {
    let (o, k, np) = (g.o(), g.col_rows(), g.n() * g.col_cols());
    let fwd = RowMajorGemm::packed(o, np, k, false, false);
    let dw = RowMajorGemm::packed(o, k, np, false, true);
    let dx = RowMajorGemm::packed(k, np, o, true, false);
    let (mut c_ok, mut c_o_np, mut c_k_np) = (
        d.alloc::<f32>(o * k)?,
        d.alloc::<f32>(o * np)?,
        d.alloc::<f32>(k * np)?,
    );
    let times = if math == GemmMath::Bf16 {
        let wt = d.htod(&bf16_values(o * k, 6))?;
        let bt = d.htod(&bf16_values(k * np, 4))?;
        let ct = d.htod(&bf16_values(o * np, 5))?;
        (
            b.time(|| gemm_bf16(d, &fwd, &wt, &bt, &mut c_o_np))?,
            b.time(|| gemm_bf16(d, &dw, &ct, &bt, &mut c_ok))?,
            b.time(|| gemm_bf16(d, &dx, &wt, &ct, &mut c_k_np))?,
        )
    } else {
        let wt = d.htod(&random_values(o * k, 6))?;
        let bt = d.htod(&random_values(k * np, 4))?;
        let ct = d.htod(&random_values(o * np, 5))?;
        (
            b.time(|| gemm_f32(d, &fwd, math, &wt, &bt, &mut c_o_np))?,
            b.time(|| gemm_f32(d, &dw, math, &ct, &bt, &mut c_ok))?,
            b.time(|| gemm_f32(d, &dx, math, &wt, &ct, &mut c_k_np))?,
        )
    };
    Ok(Plain {
        math,
        fwd: times.0,
        dw: times.1,
        dx: times.2,
    })
}

/// Random values in [-1, 1) as bf16 bit patterns (truncated: only their spread matters).
fn bf16_values(n: usize, seed: u64) -> Vec<u16> {
    random_values(n, seed)
        .into_iter()
        .map(|v| (v.to_bits() >> 16) as u16)
        .collect()
}

/// Times `step` over every tile of the batch.
fn over_tiles(
    b: &Bench,
    n: usize,
    tile: usize,
    mut step: impl FnMut(usize, usize) -> Result<()>,
) -> Result<Timing> {
    let ts: Vec<(usize, usize)> = tiles(n, tile).collect();
    b.time(|| ts.iter().try_for_each(|&(n0, nb)| step(n0, nb)))
}

/// v1's parts as `cuda.rs` issues them: tiles bounded by its column workspace, im2col, the
/// forward GEMM per tile, the bias pass, dW one GEMM per image, dX per tile, col2im, db.
fn v1_parts(
    b: &Bench,
    r: &mut Rows,
    d: &CudaDevice,
    l: &Layer,
    op: &str,
    math: GemmMath,
) -> Result<String> {
    let g = l.g;
    let (x, w, dy) = (
        l.x.gpu_buffer().ok_or_else(|| not_cuda("x"))?,
        l.w.gpu_buffer().ok_or_else(|| not_cuda("w"))?,
        l.dy.gpu_buffer().ok_or_else(|| not_cuda("dy"))?,
    );
    let (ximg, yimg, cimg) = (g.x_image(), g.y_image(), g.col_image());
    let tile = cuda::images_per_tile(cimg, g.n(), cuda::COL_WORKSPACE_FLOATS);
    let mut col = d.alloc::<f32>(tile * cimg)?;
    let mut y = d.alloc::<f32>(g.y_len())?;
    let mut dw = d.alloc_zeros::<f32>(g.w_len())?;
    let mut dx = d.alloc::<f32>(g.x_len())?;
    let n = g.n();
    let im2col = over_tiles(b, n, tile, |n0, nb| {
        let xv = x.view(cuda::images(n0, nb, ximg))?;
        Unfold::Im2col.run(d, &g.tile(nb), &xv, &mut col)
    })?;
    let fwd_gemm = over_tiles(b, n, tile, |n0, nb| {
        let mut yv = y.view_mut(cuda::images(n0, nb, yimg))?;
        gemm_f32(d, &cuda::forward_gemm(&g.tile(nb)), math, w, &col, &mut yv)
    })?;
    let gw = cuda::weight_grad_gemm(g);
    let dw_gemm = over_tiles(b, n, tile, |n0, nb| {
        (0..nb).try_for_each(|i| {
            let dyv = dy.view(cuda::images(n0 + i, 1, yimg))?;
            let cv = col.view(cuda::images(i, 1, cimg))?;
            gemm_f32(d, &gw, math, &dyv, &cv, &mut dw)
        })
    })?;
    // The column workspace doubles as dcol from here on (its values do not matter for timing).
    let dx_gemm = over_tiles(b, n, tile, |n0, nb| {
        let dyv = dy.view(cuda::images(n0, nb, yimg))?;
        gemm_f32(
            d,
            &cuda::input_grad_gemm(&g.tile(nb)),
            math,
            w,
            &dyv,
            &mut col,
        )
    })?;
    let col2im = over_tiles(b, n, tile, |n0, nb| {
        let mut dxv = dx.view_mut(cuda::images(n0, nb, ximg))?;
        Unfold::Col2im.run(d, &g.tile(nb), &col, &mut dxv)
    })?;
    let flops = g.forward_flops() as f64;
    let (x_bytes, col_bytes, y_bytes) = (
        g.x_len() as f64 * F32,
        g.col_len() as f64 * F32,
        g.y_len() as f64 * F32,
    );
    r.bw(
        op,
        "im2col",
        l.shape,
        im2col,
        x_bytes + col_bytes,
        String::new(),
    );
    r.flop(
        op,
        "fwd GEMM",
        l.shape,
        fwd_gemm,
        flops,
        format!("per tile of {tile}"),
    );
    r.flop(
        op,
        "dW GEMM",
        l.shape,
        dw_gemm,
        flops,
        "per image, beta 1".into(),
    );
    r.flop(
        op,
        "dX GEMM",
        l.shape,
        dx_gemm,
        flops,
        format!("per tile of {tile}"),
    );
    r.bw(
        op,
        "col2im",
        l.shape,
        col2im,
        x_bytes + col_bytes,
        String::new(),
    );
    if let Some(bias) = l.b {
        let bias = bias.gpu_buffer().ok_or_else(|| not_cuda("b"))?;
        let t = b.time(|| cuda::bias_add(d, g, &mut y, bias))?;
        r.bw(
            op,
            "bias",
            l.shape,
            t,
            2.0 * y_bytes,
            "a pass over y".into(),
        );
        let t = b.time(|| cuda::bias_grad(d, dy, g).map(drop))?;
        r.bw(op, "db", l.shape, t, y_bytes, "a pass over dy".into());
    }
    Ok(format!(
        "tiles of {tile} image(s): fwd and dX one strided-batched GEMM per tile, dW one GEMM \
         per image"
    ))
}

/// v2's parts, with the plans its launcher makes, in T (f32, or u16 for bf16 operands).
fn v2_parts(
    b: &Bench,
    r: &mut Rows,
    d: &CudaDevice,
    l: &Layer,
    op: &str,
    run: &ConvRun,
) -> Result<String> {
    if run.math == GemmMath::Bf16 && !l.g.is_pointwise() {
        v2_parts_in::<u16>(b, r, d, l, op, run)
    } else {
        v2_parts_in::<f32>(b, r, d, l, op, run)
    }
}

fn bytes_of<T: DeviceScalar>(elems: usize) -> f64 {
    (elems * std::mem::size_of::<T>()) as f64
}

fn v2_parts_in<T: Operand>(
    b: &Bench,
    r: &mut Rows,
    d: &CudaDevice,
    l: &Layer,
    op: &str,
    run: &ConvRun,
) -> Result<String> {
    let g = l.g;
    let (x, w, dy) = (
        l.x.gpu_buffer().ok_or_else(|| not_cuda("x"))?,
        l.w.gpu_buffer().ok_or_else(|| not_cuda("w"))?,
        l.dy.gpu_buffer().ok_or_else(|| not_cuda("dy"))?,
    );
    let bias =
        l.b.map(|t| t.gpu_buffer().ok_or_else(|| not_cuda("b")))
            .transpose()?;
    let needs = Conv2dNeeds {
        db: bias.is_some(),
        ..ALL
    };
    let fp = cuda_v2::forward_plan(g, bias.is_some(), run.math, run.workspace_floats, run.bias);
    let bp = cuda_v2::backward_plan(g, needs, run.math, run.workspace_floats, run.dw);
    let (ximg, yimg, p, rr, o, n) = (
        g.x_image(),
        g.y_image(),
        g.col_cols(),
        g.col_rows(),
        g.o(),
        g.n(),
    );
    let flops = g.forward_flops() as f64;
    let (x_bytes, y_bytes) = (g.x_len() as f64 * F32, g.y_len() as f64 * F32);
    let mut y = d.alloc::<f32>(g.y_len())?;
    let folded = fp.bias == BiasRoute::Folded;
    // forward: pack, im2col, GEMM per tile, bias pass
    if fp.pack {
        let t = b.time(|| {
            cuda_v2::pack_weight::<T>(d, g, fp.rows, w, bias.filter(|_| folded)).map(drop)
        })?;
        let bytes = g.w_len() as f64 * F32 + bytes_of::<T>(o * fp.rows);
        r.bw(
            op,
            "pack W",
            l.shape,
            t,
            bytes,
            "weight (+ bias column) for the GEMM".into(),
        );
    }
    let wp = fp
        .pack
        .then(|| cuda_v2::pack_weight::<T>(d, g, fp.rows, w, bias.filter(|_| folded)))
        .transpose()?;
    let col_rows = fp.rows.max(bp.rows);
    let mut col = d.alloc::<T>(col_rows * fp.tile.max(bp.tile) * p)?;
    let t = over_tiles(b, n, fp.tile, |n0, nb| {
        let xv = x.view(cuda::images(n0, nb, ximg))?;
        cuda_v2::im2col(d, &g.tile(nb), fp.rows, &xv, &mut col)
    })?;
    let col_bytes = bytes_of::<T>(fp.rows * n * p);
    r.bw(
        op,
        "im2col",
        l.shape,
        t,
        x_bytes + col_bytes,
        format!("{} rows", fp.rows),
    );
    let (k, lda) = match (&wp, folded) {
        (Some(_), true) => (fp.rows, fp.rows),
        (Some(_), false) => (rr, fp.rows),
        (None, _) => (rr, rr),
    };
    let w_t: Option<&GpuBuffer<T>> = (w as &dyn std::any::Any).downcast_ref::<GpuBuffer<T>>();
    let a_fwd = wp.as_ref().or(w_t).expect("a packed weight, or f32");
    let t = over_tiles(b, n, fp.tile, |n0, nb| {
        let mut yv = y.view_mut(cuda::images(n0, nb, yimg))?;
        let gemm = cuda_v2::forward_gemm_v2(&g.tile(nb), k, lda);
        T::gemm(d, &gemm, fp.math, a_fwd, &col, &mut yv)
    })?;
    r.flop(
        op,
        "fwd GEMM",
        l.shape,
        t,
        flops,
        format!("K {k}, tiles of {}", fp.tile),
    );
    if let (BiasRoute::Pass, Some(bias)) = (fp.bias, bias) {
        let t = b.time(|| cuda_v2::bias_add(d, g, &mut y, bias))?;
        r.bw(
            op,
            "bias",
            l.shape,
            t,
            2.0 * y_bytes,
            "division-free pass".into(),
        );
    }
    // backward: im2col (its rows), repack or partials + reduce, dW GEMM, dX GEMM, col2im
    let t = over_tiles(b, n, bp.tile, |n0, nb| {
        let xv = x.view(cuda::images(n0, nb, ximg))?;
        cuda_v2::im2col(d, &g.tile(nb), bp.rows, &xv, &mut col)
    })?;
    r.bw(
        op,
        "bwd im2col",
        l.shape,
        t,
        x_bytes + bytes_of::<T>(bp.rows * n * p),
        format!("{} rows", bp.rows),
    );
    let mut dw = d.alloc::<f32>(g.w_len())?;
    let mut db = d.alloc::<f32>(o)?;
    let mut dyt = d.alloc::<T>(o * bp.tile * p)?;
    let dy_t: Option<&GpuBuffer<T>> = (dy as &dyn std::any::Any).downcast_ref::<GpuBuffer<T>>();
    match bp.dw {
        DwRoute::Repack => {
            let t = over_tiles(b, n, bp.tile, |n0, nb| {
                let dyv = dy.view(cuda::images(n0, nb, yimg))?;
                let db = bp.db_with_dw.then_some(&mut db);
                cuda_v2::repack_dy::<T>(d, &g.tile(nb), &dyv, &mut dyt, db, n0 > 0)
            })?;
            let bytes = y_bytes + bytes_of::<T>(g.y_len());
            r.bw(
                op,
                "repack dy",
                l.shape,
                t,
                bytes,
                "dy to [O, N·P], db summed".into(),
            );
            let t = over_tiles(b, n, bp.tile, |n0, nb| {
                let gemm = cuda_v2::dw_gemm_repacked(&g.tile(nb), n0 > 0);
                T::gemm(d, &gemm, bp.math, &dyt, &col, &mut dw)
            })?;
            r.flop(
                op,
                "dW GEMM",
                l.shape,
                t,
                flops,
                format!("one GEMM per tile of {}", bp.tile),
            );
        }
        DwRoute::Partials | DwRoute::None => {
            let cols = if bp.db_with_dw { rr + 1 } else { rr };
            let mut part = d.alloc::<f32>(bp.tile * o * bp.partial_ld)?;
            if run.math == GemmMath::Bf16 {
                let t = over_tiles(b, n, bp.tile, |n0, nb| {
                    let dyv = dy.view(cuda::images(n0, nb, yimg))?;
                    let out = (&mut dyt as &mut dyn std::any::Any)
                        .downcast_mut::<GpuBuffer<u16>>()
                        .expect("bf16 dy");
                    cuda_v2::to_bf16(d, &dyv, out)
                })?;
                r.bw(op, "dy to bf16", l.shape, t, 1.5 * y_bytes, String::new());
            }
            let t = over_tiles(b, n, bp.tile, |n0, nb| {
                let gt = g.tile(nb);
                let gemm = cuda_v2::dw_gemm_partials(&gt, cols, bp.partial_ld, nb * p, p);
                match dy_t {
                    Some(dy_t) => {
                        let dyv = dy_t.view(cuda::images(n0, nb, yimg))?;
                        T::gemm(d, &gemm, bp.math, &dyv, &col, &mut part)
                    }
                    None => T::gemm(d, &gemm, bp.math, &dyt, &col, &mut part),
                }
            })?;
            r.flop(
                op,
                "dW GEMM",
                l.shape,
                t,
                flops,
                format!("strided batch of {} into partials", bp.tile),
            );
            let t = over_tiles(b, n, bp.tile, |n0, nb| {
                let db = bp.db_with_dw.then_some(&mut db);
                cuda_v2::dw_reduce(d, &g.tile(nb), &part, bp.partial_ld, &mut dw, db, n0 > 0)
            })?;
            let bytes = (n * o * bp.partial_ld) as f64 * F32 + g.w_len() as f64 * F32;
            r.bw(
                op,
                "dW reduce",
                l.shape,
                t,
                bytes,
                "partials over the tile's images".into(),
            );
        }
    }
    // dX: dcol then col2im (dcol in f32; in T = f32 the columns double as dcol)
    let mut dcol = d.alloc::<f32>(rr * bp.tile * p)?;
    let w16 = (run.math == GemmMath::Bf16)
        .then(|| cuda_v2::pack_weight::<T>(d, g, rr, w, None))
        .transpose()?;
    let a_dx = w16.as_ref().or(w_t).expect("bf16 weight, or f32");
    let t = over_tiles(b, n, bp.tile, |n0, nb| {
        let gt = g.tile(nb);
        if bp.dw == DwRoute::Repack {
            T::gemm(
                d,
                &cuda_v2::dx_gemm_repacked(&gt, rr),
                bp.math,
                a_dx,
                &dyt,
                &mut dcol,
            )
        } else {
            match dy_t {
                Some(dy_t) => {
                    let dyv = dy_t.view(cuda::images(n0, nb, yimg))?;
                    T::gemm(
                        d,
                        &cuda_v2::dx_gemm_batched(&gt, rr),
                        bp.math,
                        a_dx,
                        &dyv,
                        &mut dcol,
                    )
                }
                None => T::gemm(
                    d,
                    &cuda_v2::dx_gemm_batched(&gt, rr),
                    bp.math,
                    a_dx,
                    &dyt,
                    &mut dcol,
                ),
            }
        }
    })?;
    r.flop(op, "dX GEMM", l.shape, t, flops, String::new());
    let mut dx = d.alloc::<f32>(g.x_len())?;
    let t = over_tiles(b, n, bp.tile, |n0, nb| {
        let mut dxv = dx.view_mut(cuda::images(n0, nb, ximg))?;
        cuda_v2::col2im(d, &g.tile(nb), &dcol, &mut dxv)
    })?;
    r.bw(
        op,
        "col2im",
        l.shape,
        t,
        x_bytes + (rr * n * p) as f64 * F32,
        String::new(),
    );
    if needs.db && !bp.db_with_dw {
        let t = b.time(|| cuda::bias_grad(d, dy, g).map(drop))?;
        r.bw(op, "db", l.shape, t, y_bytes, "a pass over dy".into());
    }
    Ok(format!(
        "fwd tiles of {}, bias {:?}; bwd tiles of {}, dW {:?}{}",
        fp.tile,
        fp.bias,
        bp.tile,
        bp.dw,
        if bp.db_with_dw { " with db" } else { "" }
    ))
}
