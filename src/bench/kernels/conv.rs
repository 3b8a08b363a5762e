//! Convolution rows of `dcl bench kernels`: the networks' 3x3 layers, whole and in parts.
use super::timing::{nchw, randn, Bench, Rows, Timing, F32};
use super::{not_cuda, KernelBenchOptions};
use crate::device::CudaDevice;
use crate::error::Result;
use crate::nn::layers::scaled;
use crate::ops::conv2d::{conv2d_backward, conv2d_forward, Conv2dArgs, Conv2dGeometry};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Every distinct 3x3 convolution of the two networks, forward and backward, with its GEMMs
/// against a plain GEMM of the same shape and im2col / col2im on their own.
pub(super) fn rows(b: &Bench, r: &mut Rows, o: &KernelBenchOptions, rng: &mut Rng) -> Result<()> {
    let dev = b.dev;
    let (n, s, wm) = (o.batch, o.size, o.width_mult);
    let args = Conv2dArgs {
        stride: 1,
        padding: 1,
    };
    for l in conv_layers(s, wm) {
        let x = randn(&[n, l.c_in, l.size, l.size], 1.0, rng, dev)?;
        let w = randn(&[l.c_out, l.c_in, 3, 3], 0.05, rng, dev)?;
        let bias = if l.bias {
            Some(randn(&[l.c_out], 0.1, rng, dev)?)
        } else {
            None
        };
        let g = Conv2dGeometry::new(&x, &w, args)?;
        let dy = randn(&g.out_dims(), 1.0, rng, dev)?;
        let name = format!("conv3x3 {}->{}", l.c_in, l.c_out);
        let shape = format!("{} ({})", nchw(x.dims()), l.nets);
        let flops = g.forward_flops() as f64;
        let tf = b.time(|| conv2d_forward(&x, &w, bias.as_ref(), args).map(drop))?;
        let tb = b.time(|| conv2d_backward(&x, &w, &dy, args, true, true, l.bias).map(drop))?;
        let parts = match dev.cuda() {
            Some(d) => conv_parts_cuda(b, d, &g, &x, &w, &dy)?,
            None => conv_parts_cpu(b, &g, &x, &w, &dy)?,
        };
        r.flop(&name, "fwd", &shape, tf, flops, String::new());
        r.flop(&name, "bwd", &shape, tb, 2.0 * flops, "dx, dW, db".into());
        r.flop(
            &name,
            "fwd GEMM",
            &shape,
            parts.fwd_gemm,
            flops,
            ratio_note(&parts.how, parts.plain_fwd, parts.fwd_gemm),
        );
        r.flop(
            &name,
            "dW GEMM",
            &shape,
            parts.dw_gemm,
            flops,
            ratio_note("per image, beta 1", parts.plain_dw, parts.dw_gemm),
        );
        r.flop(
            &name,
            "dX GEMM",
            &shape,
            parts.dx_gemm,
            flops,
            ratio_note("Wᵀ·dY", parts.plain_dx, parts.dx_gemm),
        );
        let col_bytes = g.col_len() as f64 * F32;
        let x_bytes = x.numel() as f64 * F32;
        r.bw(
            &name,
            "im2col",
            &shape,
            parts.im2col,
            x_bytes + col_bytes,
            format!(
                "{:.0}% of fwd",
                100.0 * parts.im2col.median_ms / tf.median_ms
            ),
        );
        r.bw(
            &name,
            "col2im",
            &shape,
            parts.col2im,
            x_bytes + col_bytes,
            format!(
                "{:.0}% of bwd",
                100.0 * parts.col2im.median_ms / tb.median_ms
            ),
        );
    }

    Ok(())
}

/// A 3x3, padding-1 convolution layer of one of the networks.
#[derive(Clone, Debug, PartialEq)]
struct ConvLayer {
    c_in: usize,
    c_out: usize,
    size: usize,
    bias: bool,
    nets: String,
}

/// The distinct 3x3 convolutions of the counter (VGG-19, with bias) and the localizer (UNet
/// DoubleConvs, no bias), in network order.
fn conv_layers(size: usize, wm: f32) -> Vec<ConvLayer> {
    let mut out: Vec<ConvLayer> = Vec::new();
    let mut add = |c_in: usize, c_out: usize, size: usize, bias: bool, net: &str| {
        if let Some(l) = out
            .iter_mut()
            .find(|l| (l.c_in, l.c_out, l.size, l.bias) == (c_in, c_out, size, bias))
        {
            if !l.nets.contains(net) {
                l.nets += "+";
                l.nets += net;
            }
            return;
        }
        out.push(ConvLayer {
            c_in,
            c_out,
            size,
            bias,
            nets: net.into(),
        });
    };
    let mut c_in = 3;
    let mut s = size;
    for stage in [
        vec![64, 64],
        vec![128, 128],
        vec![256; 4],
        vec![512; 4],
        vec![512; 4],
    ] {
        for c in stage {
            let c_out = scaled(c, wm);
            add(c_in, c_out, s, true, "counter");
            c_in = c_out;
        }
        s /= 2;
    }
    let w = scaled(64, wm);
    let double = |add: &mut dyn FnMut(usize, usize, usize, bool, &str), a, m, b, s| {
        add(a, m, s, false, "localizer");
        add(m, b, s, false, "localizer");
    };
    double(&mut add, 4, w, w, size);
    double(&mut add, w, 2 * w, 2 * w, size / 2);
    double(&mut add, 2 * w, 4 * w, 4 * w, size / 4);
    double(&mut add, 4 * w, 8 * w, 8 * w, size / 8);
    double(&mut add, 8 * w, 8 * w, 8 * w, size / 16);
    double(&mut add, 16 * w, 8 * w, 4 * w, size / 8);
    double(&mut add, 8 * w, 4 * w, 2 * w, size / 4);
    double(&mut add, 4 * w, 2 * w, w, size / 2);
    double(&mut add, 2 * w, w, w, size);
    out
}

/// The parts of one convolution measured on their own.
struct ConvParts {
    im2col: Timing,
    col2im: Timing,
    fwd_gemm: Timing,
    plain_fwd: Timing,
    dw_gemm: Timing,
    plain_dw: Timing,
    dx_gemm: Timing,
    plain_dx: Timing,
    /// How the convolution's GEMMs are issued, for the notes.
    how: String,
}

/// The CUDA launcher's im2col, GEMM and col2im steps issued exactly as `conv2d::cuda::forward` /
/// `backward` issue them (tiles of images, the weight broadcast), and plain GEMMs with
/// the same m, n, k over the whole batch.
fn conv_parts_cuda(
    b: &Bench,
    d: &CudaDevice,
    g: &Conv2dGeometry,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> Result<ConvParts> {
    use crate::device::cuda::gemm::{sgemm, RowMajorGemm};
    use crate::ops::conv2d::cuda as cc;
    let (rows, p, n, o) = (g.col_rows(), g.col_cols(), g.n(), g.o());
    let tile = cc::images_per_tile(rows * p, n, cc::COL_WORKSPACE_FLOATS);
    let (ximg, yimg) = (g.x_image(), g.y_image());
    let xs = x.gpu_buffer().ok_or_else(|| not_cuda("x"))?;
    let ws = w.gpu_buffer().ok_or_else(|| not_cuda("w"))?;
    let dys = dy.gpu_buffer().ok_or_else(|| not_cuda("dy"))?;
    let mut col = d.alloc::<f32>(tile * rows * p)?;
    let mut y = d.alloc::<f32>(n * yimg)?;
    let mut dw = d.alloc_zeros::<f32>(o * rows)?;
    let mut dx = d.alloc::<f32>(n * ximg)?;
    let tiles: Vec<(usize, usize)> = (0..n)
        .step_by(tile)
        .map(|n0| (n0, tile.min(n - n0)))
        .collect();
    let im2col = b.time(|| {
        for &(n0, nb) in &tiles {
            let xv = xs.view(n0 * ximg..(n0 + nb) * ximg)?;
            cc::Unfold::Im2col.run(d, &g.tile(nb), &xv, &mut col)?;
        }
        Ok(())
    })?;
    let fwd_gemm = b.time(|| {
        for &(n0, nb) in &tiles {
            let mut yv = y.view_mut(n0 * yimg..(n0 + nb) * yimg)?;
            sgemm(d, &cc::forward_gemm(&g.tile(nb)), ws, &col, &mut yv)?;
        }
        Ok(())
    })?;
    let gw = cc::weight_grad_gemm(g);
    let dw_gemm = b.time(|| {
        for &(n0, nb) in &tiles {
            for i in 0..nb {
                let dyv = dys.view((n0 + i) * yimg..(n0 + i + 1) * yimg)?;
                let cv = col.view(i * rows * p..(i + 1) * rows * p)?;
                sgemm(d, &gw, &dyv, &cv, &mut dw)?;
            }
        }
        Ok(())
    })?;
    // col doubles as dcol from here on (its values do not matter for timing).
    let dx_gemm = b.time(|| {
        for &(n0, nb) in &tiles {
            let dyv = dys.view(n0 * yimg..(n0 + nb) * yimg)?;
            sgemm(d, &cc::input_grad_gemm(&g.tile(nb)), ws, &dyv, &mut col)?;
        }
        Ok(())
    })?;
    let col2im = b.time(|| {
        for &(n0, nb) in &tiles {
            let mut dxv = dx.view_mut(n0 * ximg..(n0 + nb) * ximg)?;
            cc::Unfold::Col2im.run(d, &g.tile(nb), &col, &mut dxv)?;
        }
        Ok(())
    })?;
    drop(col);
    // Plain GEMMs over the whole batch: B [rows, N·P], C [O, N·P].
    let np = n * p;
    let big_b = d.alloc_zeros::<f32>(rows * np)?;
    let mut big_c = d.alloc_zeros::<f32>(o * np)?;
    let plain_fwd = b.time(|| {
        sgemm(
            d,
            &RowMajorGemm::packed(o, np, rows, false, false),
            ws,
            &big_b,
            &mut big_c,
        )
    })?;
    let plain_dw = b.time(|| {
        sgemm(
            d,
            &RowMajorGemm::packed(o, rows, np, false, true),
            &big_c,
            &big_b,
            &mut dw,
        )
    })?;
    let mut big_b = big_b;
    let plain_dx = b.time(|| {
        sgemm(
            d,
            &RowMajorGemm::packed(rows, np, o, true, false),
            ws,
            &big_c,
            &mut big_b,
        )
    })?;
    Ok(ConvParts {
        im2col,
        col2im,
        fwd_gemm,
        plain_fwd,
        dw_gemm,
        plain_dw,
        dx_gemm,
        plain_dx,
        how: format!(
            "tiles of {tile} image(s): fwd and dX one strided-batched GEMM per tile, dW one GEMM per image"
        ),
    })
}

/// The CPU reference's steps (`ops/conv2d/cpu.rs`: per image im2col, GEMM, col2im through the
/// `gemm` crate) and plain GEMMs with the same m, n, k over the whole batch.
fn conv_parts_cpu(
    b: &Bench,
    g: &Conv2dGeometry,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
) -> Result<ConvParts> {
    use crate::device::cpu::sgemm;
    use crate::ops::conv2d::cpu;
    let (k, p, n, o) = (g.col_rows(), g.col_cols(), g.n(), g.o());
    let (chw, op) = (g.x_image(), o * p);
    let (xs, ws, dys) = (x.as_cpu()?, w.as_cpu()?, dy.as_cpu()?);
    let mut col = vec![0.0f32; k * p];
    let mut y = vec![0.0f32; n * op];
    let mut dw = vec![0.0f32; o * k];
    let mut dx = vec![0.0f32; n * chw];
    let im2col = b.time(|| {
        for i in 0..n {
            cpu::im2col(&xs[i * chw..][..chw], g, &mut col);
        }
        Ok(())
    })?;
    let fwd_gemm = b.time(|| {
        for yn in y.chunks_mut(op) {
            sgemm(o, p, k, ws, k as isize, 1, &col, p as isize, 1, yn, 0.0);
        }
        Ok(())
    })?;
    let dw_gemm = b.time(|| {
        for i in 0..n {
            let beta = if i == 0 { 0.0 } else { 1.0 };
            let dyn_ = &dys[i * op..][..op];
            sgemm(
                o, k, p, dyn_, p as isize, 1, &col, 1, p as isize, &mut dw, beta,
            );
        }
        Ok(())
    })?;
    let dx_gemm = b.time(|| {
        for i in 0..n {
            let dyn_ = &dys[i * op..][..op];
            sgemm(
                k, p, o, ws, 1, k as isize, dyn_, p as isize, 1, &mut col, 0.0,
            );
        }
        Ok(())
    })?;
    let col2im = b.time(|| {
        for i in 0..n {
            cpu::col2im(&col, g, &mut dx[i * chw..][..chw]);
        }
        Ok(())
    })?;
    let np = n * p;
    let mut big_b = vec![0.0f32; k * np];
    let mut big_c = vec![0.0f32; o * np];
    let plain_fwd = b.time(|| {
        sgemm(
            o,
            np,
            k,
            ws,
            k as isize,
            1,
            &big_b,
            np as isize,
            1,
            &mut big_c,
            0.0,
        );
        Ok(())
    })?;
    let plain_dw = b.time(|| {
        sgemm(
            o,
            k,
            np,
            &big_c,
            np as isize,
            1,
            &big_b,
            1,
            np as isize,
            &mut dw,
            0.0,
        );
        Ok(())
    })?;
    let plain_dx = b.time(|| {
        sgemm(
            k,
            np,
            o,
            ws,
            1,
            k as isize,
            &big_c,
            np as isize,
            1,
            &mut big_b,
            0.0,
        );
        Ok(())
    })?;
    Ok(ConvParts {
        im2col,
        col2im,
        fwd_gemm,
        plain_fwd,
        dw_gemm,
        plain_dw,
        dx_gemm,
        plain_dx,
        how: "per image: im2col, GEMM, col2im (gemm crate)".into(),
    })
}

fn ratio_note(what: &str, plain: Timing, ours: Timing) -> String {
    format!(
        "{what}: plain GEMM {:.3} ms, rate vs plain {:.2}",
        plain.median_ms,
        plain.median_ms / ours.median_ms
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_layers_cover_both_networks_once() {
        let l = conv_layers(256, 1.0);
        assert_eq!(
            l[0],
            ConvLayer {
                c_in: 3,
                c_out: 64,
                size: 256,
                bias: true,
                nets: "counter".into()
            }
        );
        // VGG-19: 9 distinct 3x3 shapes; the UNet adds its own (bias-free) ones
        assert_eq!(l.iter().filter(|l| l.bias).count(), 9);
        assert!(l
            .iter()
            .any(|l| (l.c_in, l.c_out, l.size) == (1024, 512, 32)));
        assert!(l.iter().any(|l| (l.c_in, l.c_out, l.size) == (4, 64, 256)));
        for (i, a) in l.iter().enumerate() {
            for b in &l[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
