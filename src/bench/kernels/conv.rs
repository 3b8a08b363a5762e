//! Convolution rows of `dcl bench kernels`: the networks' 3x3 layers, whole and in parts; on
//! a GPU every CUDA version side by side (`conv_cuda.rs`).
use super::conv_cuda;
use super::timing::{nchw, randn, random_values, Bench, Rows, Timing, F32};
use super::KernelBenchOptions;
use crate::device::cpu::sgemm as cpu_sgemm;
use crate::error::Result;
use crate::nn::layers::scaled;
use crate::ops::conv2d::cuda::tiles;
use crate::ops::conv2d::{conv2d_backward, conv2d_forward, cpu, Conv2dArgs, Conv2dGeometry};
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
        if let Some(d) = dev.cuda() {
            let layer = conv_cuda::Layer {
                name: &name,
                shape: &shape,
                g: &g,
                x: &x,
                w: &w,
                b: bias.as_ref(),
                dy: &dy,
            };
            conv_cuda::rows(b, r, d, &layer)?;
            continue;
        }
        let flops = g.forward_flops() as f64;
        let tf = b.time(|| conv2d_forward(&x, &w, bias.as_ref(), args).map(drop))?;
        let tb = b.time(|| conv2d_backward(&x, &w, &dy, args, true, true, l.bias).map(drop))?;
        let parts = conv_parts(b, n, CpuSteps::new(&g, &x, &w, &dy)?)?;
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

/// One device's calls for the steps [`conv_parts`] times, issued as that device's conv2d
/// issues them, over column tiles of images (the CPU reference's tiles are single images).
trait ConvSteps {
    /// Images per column tile.
    fn tile(&self) -> usize;
    /// im2col of the `nb` images from `n0` into the column workspace.
    fn im2col(&mut self, n0: usize, nb: usize) -> Result<()>;
    /// `Y = W · col` for the tile.
    fn fwd_gemm(&mut self, n0: usize, nb: usize) -> Result<()>;
    /// `dW (+)= dY · colᵀ` for image `n0 + i`, the `i`-th of its tile.
    fn dw_gemm(&mut self, n0: usize, i: usize) -> Result<()>;
    /// `dcol = Wᵀ · dY` for the tile, into the column workspace.
    fn dx_gemm(&mut self, n0: usize, nb: usize) -> Result<()>;
    /// col2im of the tile from the column workspace.
    fn col2im(&mut self, n0: usize, nb: usize) -> Result<()>;
    /// Frees the column workspace and allocates, zeroed, the plain GEMMs' operands over the
    /// whole batch: B [rows, N·P] and C [O, N·P].
    fn start_plain(&mut self) -> Result<()>;
    /// `C = W · B`, one GEMM.
    fn plain_fwd(&mut self) -> Result<()>;
    /// `dW = C · Bᵀ`, one GEMM.
    fn plain_dw(&mut self) -> Result<()>;
    /// `B = Wᵀ · C`, one GEMM.
    fn plain_dx(&mut self) -> Result<()>;
    /// How the convolution's GEMMs are issued, for the notes.
    fn how(&self) -> String;
}

/// Times the steps of `s` one kind at a time over every tile of the batch's `n` images, then
/// the plain GEMMs with the same m, n, k over the whole batch.
fn conv_parts<S: ConvSteps>(b: &Bench, n: usize, mut s: S) -> Result<ConvParts> {
    let tiles: Vec<(usize, usize)> = tiles(n, s.tile()).collect();
    let mut over_tiles = |step: fn(&mut S, usize, usize) -> Result<()>| {
        b.time(|| tiles.iter().try_for_each(|&(n0, nb)| step(&mut s, n0, nb)))
    };
    let im2col = over_tiles(S::im2col)?;
    let fwd_gemm = over_tiles(S::fwd_gemm)?;
    let dw_gemm = over_tiles(|s, n0, nb| (0..nb).try_for_each(|i| s.dw_gemm(n0, i)))?;
    // The column workspace doubles as dcol from here on (its values do not matter for timing).
    let dx_gemm = over_tiles(S::dx_gemm)?;
    let col2im = over_tiles(S::col2im)?;
    s.start_plain()?;
    let plain_fwd = b.time(|| s.plain_fwd())?;
    let plain_dw = b.time(|| s.plain_dw())?;
    let plain_dx = b.time(|| s.plain_dx())?;
    Ok(ConvParts {
        im2col,
        col2im,
        fwd_gemm,
        plain_fwd,
        dw_gemm,
        plain_dw,
        dx_gemm,
        plain_dx,
        how: s.how(),
    })
}

/// The CPU reference's steps (`ops/conv2d/cpu.rs`: per image im2col, GEMM, col2im through the
/// `gemm` crate).
struct CpuSteps<'a> {
    g: &'a Conv2dGeometry,
    x: &'a [f32],
    w: &'a [f32],
    dy: &'a [f32],
    col: Vec<f32>,
    y: Vec<f32>,
    dw: Vec<f32>,
    dx: Vec<f32>,
    /// The plain GEMMs' B and C; empty until `start_plain`.
    big_b: Vec<f32>,
    big_c: Vec<f32>,
}

impl<'a> CpuSteps<'a> {
    fn new(g: &'a Conv2dGeometry, x: &'a Tensor, w: &'a Tensor, dy: &'a Tensor) -> Result<Self> {
        Ok(CpuSteps {
            g,
            x: x.as_cpu()?,
            w: w.as_cpu()?,
            dy: dy.as_cpu()?,
            col: vec![0.0; g.col_image()],
            y: vec![0.0; g.y_len()],
            dw: vec![0.0; g.w_len()],
            dx: vec![0.0; g.x_len()],
            big_b: Vec::new(),
            big_c: Vec::new(),
        })
    }
}

/// The CPU steps take single images: `(n0, 1)` tiles.
impl ConvSteps for CpuSteps<'_> {
    fn tile(&self) -> usize {
        1
    }
    fn im2col(&mut self, n0: usize, _: usize) -> Result<()> {
        let chw = self.g.x_image();
        cpu::im2col(&self.x[n0 * chw..][..chw], self.g, &mut self.col);
        Ok(())
    }
    fn fwd_gemm(&mut self, n0: usize, _: usize) -> Result<()> {
        let (o, k, p) = (self.g.o(), self.g.col_rows(), self.g.col_cols());
        let yn = &mut self.y[n0 * o * p..][..o * p];
        cpu_sgemm(
            o, p, k, self.w, k as isize, 1, &self.col, p as isize, 1, yn, 0.0,
        );
        Ok(())
    }
    fn dw_gemm(&mut self, n0: usize, i: usize) -> Result<()> {
        let (o, k, p) = (self.g.o(), self.g.col_rows(), self.g.col_cols());
        let image = n0 + i;
        let beta = if image == 0 { 0.0 } else { 1.0 };
        let dyn_ = &self.dy[image * o * p..][..o * p];
        let (col, dw) = (&self.col, &mut self.dw);
        cpu_sgemm(o, k, p, dyn_, p as isize, 1, col, 1, p as isize, dw, beta);
        Ok(())
    }
    fn dx_gemm(&mut self, n0: usize, _: usize) -> Result<()> {
        let (o, k, p) = (self.g.o(), self.g.col_rows(), self.g.col_cols());
        let dyn_ = &self.dy[n0 * o * p..][..o * p];
        let col = &mut self.col;
        cpu_sgemm(
            k, p, o, self.w, 1, k as isize, dyn_, p as isize, 1, col, 0.0,
        );
        Ok(())
    }
    fn col2im(&mut self, n0: usize, _: usize) -> Result<()> {
        let chw = self.g.x_image();
        cpu::col2im(&self.col, self.g, &mut self.dx[n0 * chw..][..chw]);
        Ok(())
    }
    fn start_plain(&mut self) -> Result<()> {
        self.col = Vec::new();
        let np = self.g.n() * self.g.col_cols();
        self.big_b = random_values(self.g.col_rows() * np, 4);
        self.big_c = random_values(self.g.o() * np, 5);
        Ok(())
    }
    fn plain_fwd(&mut self) -> Result<()> {
        let (o, k, np) = plain_sizes(self.g);
        let (b, c) = (&self.big_b, &mut self.big_c);
        cpu_sgemm(o, np, k, self.w, k as isize, 1, b, np as isize, 1, c, 0.0);
        Ok(())
    }
    fn plain_dw(&mut self) -> Result<()> {
        let (o, k, np) = plain_sizes(self.g);
        let (b, c, dw) = (&self.big_b, &self.big_c, &mut self.dw);
        cpu_sgemm(o, k, np, c, np as isize, 1, b, 1, np as isize, dw, 0.0);
        Ok(())
    }
    fn plain_dx(&mut self) -> Result<()> {
        let (o, k, np) = plain_sizes(self.g);
        let (b, c) = (&mut self.big_b, &self.big_c);
        cpu_sgemm(k, np, o, self.w, 1, k as isize, c, np as isize, 1, b, 0.0);
        Ok(())
    }
    fn how(&self) -> String {
        "per image: im2col, GEMM, col2im (gemm crate)".into()
    }
}

/// O, C·kh·kw and N·OH·OW: the plain GEMMs' sizes.
fn plain_sizes(g: &Conv2dGeometry) -> (usize, usize, usize) {
    (g.o(), g.col_rows(), g.n() * g.col_cols())
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
