//! `dcl bench kernels`: every op forward and backward at the networks' own layer shapes (the
//! paper's: batch 8, 256x256, full width), timed on the device (CUDA events around each rep on
//! a GPU, `Instant` on the CPU; warm-up reps first, the median reported), with the achieved
//! GB/s (bytes that must move) or TFLOP/s next to ceilings measured in the same run: a large
//! copy and a large SGEMM. Convolutions also report their GEMMs against a plain GEMM of the same
//! shape and im2col / col2im on their own; GMP runs its three CUDA versions side by side; and
//! one full counter and localizer training step is timed.
use std::time::Instant;

use serde::Serialize;

use crate::autograd::{Tape, Var};
use crate::device::{CudaDevice, Device};
use crate::error::{Error, Result};
use crate::nn::layers::scaled;
use crate::nn::{apply_bn_updates, Counter, Forward, Localizer, ModelConfig, ModelKind};
use crate::ops::batch_norm2d::{batch_norm2d_train_backward, batch_norm2d_train_forward};
use crate::ops::concat::{concat_channels_backward, concat_channels_forward};
use crate::ops::conv2d::{conv2d_backward, conv2d_forward, Conv2dArgs, Conv2dGeometry};
use crate::ops::gmp::{cuda as gmp_cuda, gmp_sample_backward, gmp_sample_forward, GmpKernel};
use crate::ops::loss::{
    count_l1_loss, count_l1_loss_backward, count_l1_loss_forward, mse_loss, mse_loss_backward,
    mse_loss_forward,
};
use crate::ops::max_pool2d::{max_pool2d_backward, max_pool2d_forward};
use crate::ops::relu::{relu_backward, relu_forward};
use crate::ops::upsample_bilinear::{upsample_bilinear_backward, upsample_bilinear_forward};
use crate::optim::{Adam, AdamConfig};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// What to run.
#[derive(Clone, Debug)]
pub struct KernelBenchOptions {
    pub device: Device,
    pub batch: usize,
    /// Input side in pixels (a multiple of 16).
    pub size: usize,
    pub width_mult: f32,
    /// Timed repetitions per measurement (the median is reported).
    pub reps: usize,
    /// Untimed repetitions first (NVRTC compilation, pool warm-up, caches).
    pub warmup: usize,
    /// K of the GMP layer.
    pub gmp_points: usize,
    /// Lines printed above the table (why a size or rep count was chosen, etc.).
    pub notes: Vec<String>,
}

/// Median and minimum of the timed reps, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub reps: usize,
}

/// One measured op and pass.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub op: String,
    pub pass: String,
    pub shape: String,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Bytes that must move (each input read once, each output written once).
    pub bytes: Option<f64>,
    pub flops: Option<f64>,
    pub gb_per_s: Option<f64>,
    pub tflop_per_s: Option<f64>,
    /// Achieved rate as a percentage of the run's copy (GB/s) or GEMM (TFLOP/s) ceiling.
    pub pct_of_ceiling: Option<f64>,
    pub note: String,
}

/// The device's ceilings, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// Read + write bandwidth of a large copy.
    pub copy_gb_per_s: f64,
    pub copy_bytes: f64,
    pub gemm_tflop_per_s: f64,
    pub gemm_shape: String,
    /// "fp32", "tf32" (cuBLAS math mode) or "gemm crate fp32" on the CPU.
    pub gemm_math: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub device: String,
    pub device_info: String,
    pub timing: String,
    pub batch: usize,
    pub size: usize,
    pub width_mult: f32,
    pub reps: usize,
    pub warmup: usize,
    pub notes: Vec<String>,
    pub ceilings: Ceilings,
    pub rows: Vec<Row>,
}

/// Times closures on one device.
struct Bench<'a> {
    dev: &'a Device,
    reps: usize,
    warmup: usize,
}

impl Bench<'_> {
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
        for _ in 0..self.warmup {
            f()?;
        }
        self.dev.synchronize()?;
        let mut ms = Vec::with_capacity(self.reps);
        match self.dev.cuda() {
            Some(d) => {
                let mut events = Vec::with_capacity(self.reps);
                for _ in 0..self.reps {
                    let a = d.record_event()?;
                    f()?;
                    let b = d.record_event()?;
                    events.push((a, b));
                }
                for (a, b) in &events {
                    ms.push(d.elapsed_ms(a, b)?);
                }
            }
            None => {
                for _ in 0..self.reps {
                    let t = Instant::now();
                    f()?;
                    ms.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        Ok(Timing {
            median_ms: median(&ms),
            min_ms: ms[0],
            reps: ms.len(),
        })
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// Builds rows against the ceilings.
struct Rows {
    ceil: Ceilings,
    rows: Vec<Row>,
}

impl Rows {
    fn bw(&mut self, op: &str, pass: &str, shape: &str, t: Timing, bytes: f64, note: String) {
        let gbs = bytes / (t.median_ms * 1e-3) / 1e9;
        self.rows.push(Row {
            op: op.into(),
            pass: pass.into(),
            shape: shape.into(),
            median_ms: t.median_ms,
            min_ms: t.min_ms,
            bytes: Some(bytes),
            flops: None,
            gb_per_s: Some(gbs),
            tflop_per_s: None,
            pct_of_ceiling: Some(100.0 * gbs / self.ceil.copy_gb_per_s),
            note,
        });
    }
    fn flop(&mut self, op: &str, pass: &str, shape: &str, t: Timing, flops: f64, note: String) {
        let tf = flops / (t.median_ms * 1e-3) / 1e12;
        self.rows.push(Row {
            op: op.into(),
            pass: pass.into(),
            shape: shape.into(),
            median_ms: t.median_ms,
            min_ms: t.min_ms,
            bytes: None,
            flops: Some(flops),
            gb_per_s: None,
            tflop_per_s: Some(tf),
            pct_of_ceiling: Some(100.0 * tf / self.ceil.gemm_tflop_per_s),
            note,
        });
    }
    fn plain(&mut self, op: &str, pass: &str, shape: &str, t: Timing, note: String) {
        self.rows.push(Row {
            op: op.into(),
            pass: pass.into(),
            shape: shape.into(),
            median_ms: t.median_ms,
            min_ms: t.min_ms,
            bytes: None,
            flops: None,
            gb_per_s: None,
            tflop_per_s: None,
            pct_of_ceiling: None,
            note,
        });
    }
}

const F32: f64 = 4.0;

fn randn(dims: &[usize], std: f32, rng: &mut Rng, dev: &Device) -> Result<Tensor> {
    Tensor::randn(dims, std, rng).into_device(dev)
}

fn nchw(d: &[usize]) -> String {
    format!("N{} C{} {}x{}", d[0], d[1], d[2], d[3])
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
    let s = g.cuda_shape();
    let (rows, p, n, o) = (g.col_rows(), g.col_cols(), g.n, g.o);
    let tile = cc::images_per_tile(rows * p, n, cc::COL_WORKSPACE_FLOATS);
    let p_all = s.params(n)?;
    let (ximg, yimg) = (g.c * g.h * g.w, o * p);
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
    let pt = |nb: usize| cc::ConvParams {
        images: nb as u32,
        ..p_all
    };
    let im2col = b.time(|| {
        for &(n0, nb) in &tiles {
            cc::im2col(d, &pt(nb), &xs.view(n0 * ximg..(n0 + nb) * ximg)?, &mut col)?;
        }
        Ok(())
    })?;
    let fwd_gemm = b.time(|| {
        for &(n0, nb) in &tiles {
            let mut yv = y.view_mut(n0 * yimg..(n0 + nb) * yimg)?;
            sgemm(d, &cc::forward_gemm(&s, nb)?, ws, &col, &mut yv)?;
        }
        Ok(())
    })?;
    let gw = cc::weight_grad_gemm(&s)?;
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
            sgemm(d, &cc::input_grad_gemm(&s, nb)?, ws, &dyv, &mut col)?;
        }
        Ok(())
    })?;
    let col2im = b.time(|| {
        for &(n0, nb) in &tiles {
            let mut dxv = dx.view_mut(n0 * ximg..(n0 + nb) * ximg)?;
            cc::col2im(d, &pt(nb), &col, &mut dxv)?;
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
    let (k, p, n, o) = (g.col_rows(), g.col_cols(), g.n, g.o);
    let (chw, op) = (g.c * g.h * g.w, o * p);
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

fn not_cuda(what: &str) -> Error {
    Error::Device(format!("bench: {what} is not on the GPU"))
}

fn measure_ceilings(b: &Bench) -> Result<Ceilings> {
    match b.dev.cuda() {
        Some(d) => {
            use crate::device::cuda::gemm::{sgemm, RowMajorGemm};
            let n = 128usize << 20; // 512 MiB each way
            let src = d.alloc_zeros::<f32>(n)?;
            let mut dst = d.alloc::<f32>(n)?;
            let t = b.time(|| d.copy_dtod(&src, &mut dst))?;
            drop((src, dst));
            let copy_bytes = 2.0 * n as f64 * F32;
            let m = 8192usize;
            let a = d.alloc_zeros::<f32>(m * m)?;
            let bb = d.alloc_zeros::<f32>(m * m)?;
            let mut c = d.alloc::<f32>(m * m)?;
            let g = RowMajorGemm::packed(m, m, m, false, false);
            let tg = b.time(|| sgemm(d, &g, &a, &bb, &mut c))?;
            Ok(Ceilings {
                copy_gb_per_s: copy_bytes / (t.median_ms * 1e-3) / 1e9,
                copy_bytes,
                gemm_tflop_per_s: 2.0 * (m as f64).powi(3) / (tg.median_ms * 1e-3) / 1e12,
                gemm_shape: format!("{m}x{m}x{m} cuBLAS SGEMM"),
                gemm_math: if d.tf32() { "tf32" } else { "fp32" }.into(),
            })
        }
        None => {
            use rayon::prelude::*;
            let n = 16usize << 20; // 64 MiB each way
            let src = vec![1.0f32; n];
            let mut dst = vec![0.0f32; n];
            let t = b.time(|| {
                dst.par_chunks_mut(1 << 16)
                    .zip(src.par_chunks(1 << 16))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                Ok(())
            })?;
            let copy_bytes = 2.0 * n as f64 * F32;
            let m = 1024usize;
            let a = vec![0.5f32; m * m];
            let bb = vec![0.25f32; m * m];
            let mut c = vec![0.0f32; m * m];
            let tg = b.time(|| {
                crate::device::cpu::sgemm(
                    m, m, m, &a, m as isize, 1, &bb, m as isize, 1, &mut c, 0.0,
                );
                Ok(())
            })?;
            Ok(Ceilings {
                copy_gb_per_s: copy_bytes / (t.median_ms * 1e-3) / 1e9,
                copy_bytes,
                gemm_tflop_per_s: 2.0 * (m as f64).powi(3) / (tg.median_ms * 1e-3) / 1e12,
                gemm_shape: format!("{m}x{m}x{m} gemm crate SGEMM"),
                gemm_math: "fp32".into(),
            })
        }
    }
}

fn ratio_note(what: &str, plain: Timing, ours: Timing) -> String {
    format!(
        "{what}: plain GEMM {:.3} ms, rate vs plain {:.2}",
        plain.median_ms,
        plain.median_ms / ours.median_ms
    )
}

/// Runs every measurement. Errors name the op that failed.
pub fn run_kernel_bench(o: &KernelBenchOptions) -> Result<KernelReport> {
    if o.size == 0 || !o.size.is_multiple_of(16) || o.batch == 0 || o.reps == 0 {
        return Err(Error::Invalid(format!(
            "bench kernels: --size must be a positive multiple of 16 and --batch, --reps positive \
             (got size {}, batch {}, reps {})",
            o.size, o.batch, o.reps
        )));
    }
    let dev = &o.device;
    if let Some(d) = dev.cuda() {
        crate::kernels::load_all(d)?;
    }
    let b = Bench {
        dev,
        reps: o.reps,
        warmup: o.warmup,
    };
    let ceil = measure_ceilings(&b)?;
    let mut r = Rows {
        ceil: ceil.clone(),
        rows: Vec::new(),
    };
    let (n, s, wm) = (o.batch, o.size, o.width_mult);
    let mut rng = Rng::new(2024);

    // Convolutions.
    let args = Conv2dArgs {
        stride: 1,
        padding: 1,
    };
    for l in conv_layers(s, wm) {
        let x = randn(&[n, l.c_in, l.size, l.size], 1.0, &mut rng, dev)?;
        let w = randn(&[l.c_out, l.c_in, 3, 3], 0.05, &mut rng, dev)?;
        let bias = if l.bias {
            Some(randn(&[l.c_out], 0.1, &mut rng, dev)?)
        } else {
            None
        };
        let g = Conv2dGeometry::new(&x, &w, args)?;
        let dy = randn(&g.out_dims(), 1.0, &mut rng, dev)?;
        let name = format!("conv3x3 {}->{}", l.c_in, l.c_out);
        let shape = format!("{} ({})", nchw(x.dims()), l.nets);
        let flops = g.forward_flops() as f64;
        let tf = b.time(|| conv2d_forward(&x, &w, bias.as_ref(), args).map(drop))?;
        let tb = b.time(|| conv2d_backward(&x, &w, &dy, args, true, true, l.bias).map(drop))?;
        let parts = match dev.cuda() {
            Some(d) => conv_parts_cuda(&b, d, &g, &x, &w, &dy)?,
            None => conv_parts_cpu(&b, &g, &x, &w, &dy)?,
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
        let col_bytes = (g.n * g.col_rows() * g.col_cols()) as f64 * F32;
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

    // Pooling, batch norm and ReLU at the counter's stages.
    let stages: Vec<(usize, usize)> = [
        (64, s),
        (128, s / 2),
        (256, s / 4),
        (512, s / 8),
        (512, s / 16),
    ]
    .iter()
    .map(|&(c, hw)| (scaled(c, wm), hw))
    .collect();
    for &(c, hw) in &stages[..4] {
        let x = randn(&[n, c, hw, hw], 1.0, &mut rng, dev)?;
        let shape = nchw(x.dims());
        let (_, idx) = max_pool2d_forward(&x)?;
        let dy = randn(&idx.out_dims(), 1.0, &mut rng, dev)?;
        let tf = b.time(|| max_pool2d_forward(&x).map(drop))?;
        let tb = b.time(|| max_pool2d_backward(&dy, &idx, x.dims()).map(drop))?;
        let (inb, outb) = (x.numel() as f64 * F32, dy.numel() as f64 * F32);
        r.bw(
            "max_pool2d",
            "fwd",
            &shape,
            tf,
            inb + 2.0 * outb,
            "y and u32 argmax".into(),
        );
        r.bw(
            "max_pool2d",
            "bwd",
            &shape,
            tb,
            inb + 2.0 * outb,
            String::new(),
        );
    }
    for &(c, hw) in &stages {
        let x = randn(&[n, c, hw, hw], 1.0, &mut rng, dev)?;
        let shape = nchw(x.dims());
        let gamma = randn(&[c], 0.5, &mut rng, dev)?;
        let beta = randn(&[c], 0.5, &mut rng, dev)?;
        let dy = randn(x.dims(), 1.0, &mut rng, dev)?;
        let (_, saved, _) = batch_norm2d_train_forward(&x, &gamma, &beta, 1e-5)?;
        let tf = b.time(|| batch_norm2d_train_forward(&x, &gamma, &beta, 1e-5).map(drop))?;
        let tb = b.time(|| {
            batch_norm2d_train_backward(&x, &gamma, &saved, &dy, true, true, true).map(drop)
        })?;
        let nb = x.numel() as f64 * F32;
        r.bw(
            "batch_norm2d (train)",
            "fwd",
            &shape,
            tf,
            2.0 * nb,
            "x read once, y written".into(),
        );
        r.bw(
            "batch_norm2d (train)",
            "bwd",
            &shape,
            tb,
            3.0 * nb,
            "x, dy read, dx written".into(),
        );
        let y = relu_forward(&x)?;
        let tf = b.time(|| relu_forward(&x).map(drop))?;
        let tb = b.time(|| relu_backward(&y, &dy).map(drop))?;
        r.bw("relu", "fwd", &shape, tf, 2.0 * nb, String::new());
        r.bw("relu", "bwd", &shape, tb, 3.0 * nb, String::new());
    }

    // Bilinear resizes: the counter's x2 (align_corners=false), the UNet decoder's x2
    // (align_corners=true) and the localizer's input map (S/8 -> S).
    let w64 = scaled(64, wm);
    let ups = [
        (scaled(512, wm), s / 16, s / 8, false, "counter x2"),
        (8 * w64, s / 16, s / 8, true, "localizer up1 x2"),
        (4 * w64, s / 8, s / 4, true, "localizer up2 x2"),
        (2 * w64, s / 4, s / 2, true, "localizer up3 x2"),
        (w64, s / 2, s, true, "localizer up4 x2"),
        (1, s / 8, s, false, "localizer input x8"),
    ];
    for (c, ih, oh, align, what) in ups {
        let x = randn(&[n, c, ih, ih], 1.0, &mut rng, dev)?;
        let dy = randn(&[n, c, oh, oh], 1.0, &mut rng, dev)?;
        let op = format!("upsample_bilinear align_corners={align}");
        let shape = format!("{} -> {oh}x{oh} ({what})", nchw(x.dims()));
        let bytes = (x.numel() + dy.numel()) as f64 * F32;
        let tf = b.time(|| upsample_bilinear_forward(&x, oh, oh, align).map(drop))?;
        let tb = b.time(|| upsample_bilinear_backward(&dy, ih, ih, align).map(drop))?;
        r.bw(&op, "fwd", &shape, tf, bytes, String::new());
        r.bw(
            &op,
            "bwd",
            &shape,
            tb,
            bytes,
            "atomic scatter on GPU".into(),
        );
    }

    gmp_rows(&b, &mut r, o, &mut rng)?;

    // Concatenations of the localizer: its input and each decoder level.
    let cats = [
        (3, 1, s, "localizer input"),
        (8 * w64, 8 * w64, s / 8, "up1"),
        (4 * w64, 4 * w64, s / 4, "up2"),
        (2 * w64, 2 * w64, s / 2, "up3"),
        (w64, w64, s, "up4"),
    ];
    for (ca, cb, hw, what) in cats {
        let a = randn(&[n, ca, hw, hw], 1.0, &mut rng, dev)?;
        let bb = randn(&[n, cb, hw, hw], 1.0, &mut rng, dev)?;
        let dy = randn(&[n, ca + cb, hw, hw], 1.0, &mut rng, dev)?;
        let shape = format!("N{n} C{ca}+{cb} {hw}x{hw} ({what})");
        let bytes = 2.0 * dy.numel() as f64 * F32;
        let tf = b.time(|| concat_channels_forward(&[&a, &bb]).map(drop))?;
        let tb = b.time(|| concat_channels_backward(&dy, &[ca, cb]).map(drop))?;
        r.bw("concat_channels", "fwd", &shape, tf, bytes, String::new());
        r.bw("concat_channels", "bwd", &shape, tb, bytes, String::new());
    }

    // Losses.
    let z = randn(&[n, 1, s / 8, s / 8], 0.1, &mut rng, dev)?;
    let counts: Vec<f32> = (0..n).map(|i| 10.0 + i as f32).collect();
    let shape = nchw(z.dims());
    let zb = z.numel() as f64 * F32;
    let tf = b.time(|| count_l1_loss_forward(&z, &counts).map(drop))?;
    let tb = b.time(|| count_l1_loss_backward(&z, &counts, 1.0).map(drop))?;
    r.bw(
        "count_l1_loss",
        "fwd",
        &shape,
        tf,
        zb,
        "includes reading the loss back".into(),
    );
    r.bw("count_l1_loss", "bwd", &shape, tb, 2.0 * zb, String::new());
    let pred = randn(&[n, 1, s, s], 1.0, &mut rng, dev)?;
    let target = randn(&[n, 1, s, s], 1.0, &mut rng, dev)?;
    let shape = nchw(pred.dims());
    let pb = pred.numel() as f64 * F32;
    let tf = b.time(|| mse_loss_forward(&pred, &target).map(drop))?;
    let tb = b.time(|| mse_loss_backward(&pred, &target, 1.0).map(drop))?;
    r.bw(
        "mse_loss",
        "fwd",
        &shape,
        tf,
        2.0 * pb,
        "includes reading the loss back".into(),
    );
    r.bw("mse_loss", "bwd", &shape, tb, 3.0 * pb, String::new());

    steps_and_adam(&b, &mut r, o, &mut rng)?;

    Ok(KernelReport {
        device: dev.name(),
        device_info: match dev.cuda() {
            Some(d) => d.info().to_string(),
            None => format!("CPU, {} rayon threads", rayon::current_num_threads()),
        },
        timing: match dev {
            Device::Cpu => "std::time::Instant around each rep".into(),
            Device::Cuda(_) => "CUDA events recorded on the stream around each rep".into(),
        },
        batch: n,
        size: s,
        width_mult: wm,
        reps: o.reps,
        warmup: o.warmup,
        notes: o.notes.clone(),
        ceilings: ceil,
        rows: r.rows,
    })
}

/// GMP at the counter's shape (N, C512, S/8, K): the three CUDA versions side by side with
/// speedups, or the CPU reference.
fn gmp_rows(b: &Bench, r: &mut Rows, o: &KernelBenchOptions, rng: &mut Rng) -> Result<()> {
    let dev = b.dev;
    let (n, c, hw, k) = (
        o.batch,
        scaled(512, o.width_mult),
        o.size / 8,
        o.gmp_points.max(1),
    );
    let x = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
    // Moves of a few pixels, some samples land outside the map.
    let off = randn(&[n, 2 * k, hw, hw], 3.0, rng, dev)?;
    let da = randn(&[n, c, hw, hw], 1.0, rng, dev)?;
    let shape = format!("{} K{k}", nchw(x.dims()));
    let (xb, ob) = (x.numel() as f64 * F32, off.numel() as f64 * F32);
    let fwd_bytes = 2.0 * xb + ob;
    let bwd_bytes = 3.0 * xb + 2.0 * ob;
    match dev.cuda() {
        None => {
            let tf = b.time(|| gmp_sample_forward(&x, &off).map(drop))?;
            let tb = b.time(|| gmp_sample_backward(&x, &off, &da, true, true).map(drop))?;
            let tfb = b.time(|| {
                gmp_sample_forward(&x, &off)?;
                gmp_sample_backward(&x, &off, &da, true, true).map(drop)
            })?;
            r.bw(
                "gmp_sample cpu",
                "fwd",
                &shape,
                tf,
                fwd_bytes,
                String::new(),
            );
            r.bw(
                "gmp_sample cpu",
                "bwd",
                &shape,
                tb,
                bwd_bytes,
                String::new(),
            );
            r.bw(
                "gmp_sample cpu",
                "fwd+bwd",
                &shape,
                tfb,
                fwd_bytes + bwd_bytes,
                "the CUDA naive/unfused/fused versions run with --device cuda".into(),
            );
        }
        Some(d) => {
            let gs = gmp_cuda::GmpShape {
                n,
                c,
                h: hw,
                w: hw,
                k,
            };
            let (xs, os, ds) = (
                x.gpu_buffer().ok_or_else(|| not_cuda("x"))?,
                off.gpu_buffer().ok_or_else(|| not_cuda("offsets"))?,
                da.gpu_buffer().ok_or_else(|| not_cuda("da"))?,
            );
            let mut both = Vec::new();
            for v in GmpKernel::ALL {
                if v == GmpKernel::Fused && k > gmp_cuda::FUSED_MAX_K {
                    continue;
                }
                let tf = b.time(|| gmp_cuda::forward(d, v, xs, os, &gs).map(drop))?;
                let tb = b.time(|| gmp_cuda::backward(d, v, xs, os, ds, &gs).map(drop))?;
                let tfb = b.time(|| {
                    gmp_cuda::forward(d, v, xs, os, &gs)?;
                    gmp_cuda::backward(d, v, xs, os, ds, &gs).map(drop)
                })?;
                let op = format!("gmp_sample {}", v.name());
                r.bw(&op, "fwd", &shape, tf, fwd_bytes, String::new());
                r.bw(&op, "bwd", &shape, tb, bwd_bytes, String::new());
                both.push((v, tf, tb, tfb, r.rows.len()));
                r.bw(
                    &op,
                    "fwd+bwd",
                    &shape,
                    tfb,
                    fwd_bytes + bwd_bytes,
                    String::new(),
                );
            }
            // Speedups of each version over the slower ones, on the fwd+bwd rows.
            for i in 0..both.len() {
                let (v, _, _, tfb, row) = both[i];
                let mut notes = Vec::new();
                for &(u, uf, ub, ufb, _) in &both {
                    if u != v {
                        notes.push(format!(
                            "{:.2}x vs {} (fwd {:.2}x, bwd {:.2}x)",
                            ufb.median_ms / tfb.median_ms,
                            u.name(),
                            uf.median_ms / both[i].1.median_ms,
                            ub.median_ms / both[i].2.median_ms,
                        ));
                    }
                }
                r.rows[row].note = format!(
                    "{}; % of the copy ceiling = share of the bandwidth floor",
                    notes.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// Adam over all counter parameters, and one full training step of each network.
fn steps_and_adam(b: &Bench, r: &mut Rows, o: &KernelBenchOptions, rng: &mut Rng) -> Result<()> {
    let dev = b.dev;
    let (n, s) = (o.batch, o.size);
    let cfg = ModelConfig {
        model: ModelKind::Counter,
        width_mult: o.width_mult,
        gmp_points: o.gmp_points,
        ..ModelConfig::default()
    };
    let mut counter = Counter::new(&cfg, 1)?;
    counter.store.to_device(dev)?;
    let mut adam = Adam::new(AdamConfig::default(), &counter.store)?;
    let params = counter.store.trainable_count();
    let tensors = counter
        .store
        .iter()
        .filter(|(_, p)| p.kind == crate::nn::ParamKind::Trainable)
        .count();

    let images = randn(&[n, 3, s, s], 1.0, rng, dev)?;
    let counts: Vec<f32> = (0..n).map(|i| 20.0 + 3.0 * i as f32).collect();
    // One step outside the timer gives the gradients for the Adam measurement.
    let counter_step = |net: &mut Counter, adam: &mut Adam| -> Result<Vec<Option<Tensor>>> {
        let tape = Tape::new();
        let (grads, updates) = {
            let bound = net.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &net.store, true);
            let z = net.forward(&f, &Var::constant(images.clone()))?;
            let loss = count_l1_loss(&tape, &z, &counts)?;
            let v = loss.value().item()?;
            if !v.is_finite() {
                return Err(Error::Invalid(format!("bench: counter loss {v}")));
            }
            let mut g = tape.backward(&loss)?;
            (bound.take_grads(&mut g), f.take_bn_updates())
        };
        adam.update(&mut net.store, &grads, 1e-6)?;
        apply_bn_updates(&mut net.store, updates)?;
        Ok(grads)
    };
    let grads = counter_step(&mut counter, &mut adam)?;
    let ta = b.time(|| adam.update(&mut counter.store, &grads, 1e-6))?;
    r.bw(
        "adam (all counter params)",
        "update",
        &format!("{params} parameters in {tensors} tensors"),
        ta,
        7.0 * params as f64 * F32,
        "fused per tensor; p, g, m, v read, p, m, v written".into(),
    );
    drop(grads);
    let tc = b.time(|| counter_step(&mut counter, &mut adam).map(drop))?;
    r.plain(
        "counter training step",
        "step",
        &format!("N{n} 3x{s}x{s} width x{}", o.width_mult),
        tc,
        format!(
            "fwd+loss+bwd+Adam+BN update, {:.1} images/s",
            n as f64 / (tc.median_ms * 1e-3)
        ),
    );

    let lcfg = ModelConfig {
        model: ModelKind::Localizer,
        width_mult: o.width_mult,
        gmp_points: o.gmp_points,
        ..ModelConfig::default()
    };
    let mut loc = Localizer::new(&lcfg, 2)?;
    loc.store.to_device(dev)?;
    let mut ladam = Adam::new(AdamConfig::default(), &loc.store)?;
    let density = randn(&[n, 1, s, s], 0.01, rng, dev)?;
    let tl = b.time(|| {
        // As the localizer's training step: the frozen counter's map, then the UNet.
        let z = crate::eval::counter_z(&counter, images.clone())?;
        let tape = Tape::new();
        let (grads, updates) = {
            let bound = loc.store.bind(&tape, true);
            let f = Forward::new(&tape, &bound, &loc.store, true);
            let pred = loc.forward(&f, &Var::constant(images.clone()), &z)?;
            let loss = mse_loss(&tape, &pred, &density)?;
            loss.value().item()?;
            let mut g = tape.backward(&loss)?;
            (bound.take_grads(&mut g), f.take_bn_updates())
        };
        ladam.update(&mut loc.store, &grads, 1e-6)?;
        apply_bn_updates(&mut loc.store, updates)
    })?;
    r.plain(
        "localizer training step",
        "step",
        &format!("N{n} 4x{s}x{s} width x{}", o.width_mult),
        tl,
        format!(
            "frozen counter fwd + UNet fwd+MSE+bwd+Adam, {:.1} images/s",
            n as f64 / (tl.median_ms * 1e-3)
        ),
    );
    Ok(())
}

/// The report as an aligned table.
pub fn format_table(rep: &KernelReport) -> String {
    let mut s = format!(
        "dcl bench kernels on {} ({})\nbatch {}, {}x{}, width x{}; {} timed reps after {} warm-up, median; timing: {}\n",
        rep.device, rep.device_info, rep.batch, rep.size, rep.size, rep.width_mult, rep.reps, rep.warmup, rep.timing
    );
    for n in &rep.notes {
        s += &format!("note: {n}\n");
    }
    let c = &rep.ceilings;
    s += &format!(
        "ceilings: copy {:.1} GB/s ({:.0} MiB read + written), GEMM {:.2} TFLOP/s ({}, {})\n",
        c.copy_gb_per_s,
        c.copy_bytes / (1u64 << 20) as f64,
        c.gemm_tflop_per_s,
        c.gemm_shape,
        c.gemm_math
    );
    let headers = [
        "op",
        "pass",
        "shape",
        "median ms",
        "min ms",
        "GB/s",
        "TFLOP/s",
        "% ceiling",
        "note",
    ];
    let cells: Vec<[String; 9]> = rep
        .rows
        .iter()
        .map(|r| {
            [
                r.op.clone(),
                r.pass.clone(),
                r.shape.clone(),
                format!("{:.4}", r.median_ms),
                format!("{:.4}", r.min_ms),
                r.gb_per_s.map(|v| format!("{v:.1}")).unwrap_or_default(),
                r.tflop_per_s.map(|v| format!("{v:.3}")).unwrap_or_default(),
                r.pct_of_ceiling
                    .map(|v| format!("{v:.0}%"))
                    .unwrap_or_default(),
                r.note.clone(),
            ]
        })
        .collect();
    let mut width = headers.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| -> String {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(width).enumerate() {
            let pad = w - c.chars().count();
            // text columns left-aligned, numbers right-aligned, the note last and unpadded
            if i == 8 {
                l += c;
            } else if (3..8).contains(&i) {
                l += &" ".repeat(pad);
                l += c;
                l += "  ";
            } else {
                l += c;
                l += &" ".repeat(pad + 2);
            }
        }
        l.trim_end().to_string() + "\n"
    };
    s += &line(&headers.map(String::from));
    for row in &cells {
        s += &line(row);
    }
    s
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

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), 3.0);
    }
}
