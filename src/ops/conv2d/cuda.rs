//! 2-D convolution on the GPU: im2col / col2im kernels (kernels/conv.cu) around cuBLAS SGEMM.
//! Forward, per tile of images (the column buffer is bounded by [`COL_WORKSPACE_FLOATS`]):
//! `Y_n[O, OH·OW] = W[O, C·kh·kw] · col_n`, one strided-batched GEMM per tile with the weight
//! broadcast (stride 0). Backward: `dW += dY_n · col_nᵀ` per image (beta = 1), `dcol = Wᵀ·dY_n`
//! batched, then col2im. A 1x1, stride-1, unpadded convolution uses x itself as the columns.
//! The GEMM descriptions are pure functions, tested on the host against a direct convolution.
use crate::device::cuda::gemm::{sgemm, RowMajorGemm};
use crate::device::cuda::{
    check_len, dim_u32, launch, numel, CudaDevice, GpuBuffer, GpuRead, GpuWrite, Kernel,
    KernelFile, KernelParam,
};
use crate::error::{Error, Result};

const FILE: &str = "conv2d.cu";
const IM2COL: Kernel = Kernel::new(FILE, "im2col_f32");
const COL2IM: Kernel = Kernel::new(FILE, "col2im_f32");
const BIAS_ADD: Kernel = Kernel::new(FILE, "conv_bias_add_f32");
const BIAS_GRAD: Kernel = Kernel::new(FILE, "conv_bias_grad_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[IM2COL, COL2IM, BIAS_ADD, BIAS_GRAD]);

/// Upper bound of the column workspace, in floats (256 MiB): conv1_2 of VGG at 256x256 needs
/// 576 x 65536 floats per image, so a tile holds a few images, not the whole batch.
pub const COL_WORKSPACE_FLOATS: usize = 64 << 20;

/// Mirrors `struct ConvParams` in kernels/conv2d.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride: u32,
    pub pad: u32,
    pub oh: u32,
    pub ow: u32,
    pub images: u32,
}
// Safety: ten u32, as `struct ConvParams` in the kernel.
unsafe impl KernelParam for ConvParams {}
const _: () = assert!(std::mem::size_of::<ConvParams>() == 40);

const OP: &str = "conv2d (cuda)";

/// Shapes of a convolution: x `[n, c, h, w]`, weight `[o, c, kh, kw]`, same stride and padding
/// in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2dShape {
    /// Output size `(h + 2p − kh)/s + 1` (floor), refusing a kernel larger than the padded
    /// input and a zero stride.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        if self.stride == 0 || self.kh == 0 || self.kw == 0 {
            return Err(Error::shape(
                OP,
                format!("zero stride or kernel size in {self:?}"),
            ));
        }
        let (ph, pw) = (self.h + 2 * self.pad, self.w + 2 * self.pad);
        if ph < self.kh || pw < self.kw {
            return Err(Error::shape(
                OP,
                format!(
                    "kernel {}x{} larger than the padded input {ph}x{pw}",
                    self.kh, self.kw
                ),
            ));
        }
        Ok((
            (ph - self.kh) / self.stride + 1,
            (pw - self.kw) / self.stride + 1,
        ))
    }
    /// Rows of the column matrix, C·kh·kw.
    pub fn col_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Columns of the column matrix (output positions), OH·OW.
    pub fn col_cols(&self) -> Result<usize> {
        let (oh, ow) = self.out_hw()?;
        Ok(oh * ow)
    }
    /// 1x1, stride 1, no padding: x is its own column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    pub fn params(&self, images: usize) -> Result<ConvParams> {
        let (oh, ow) = self.out_hw()?;
        numel(
            OP,
            &[self.n, self.c, self.h + 2 * self.pad, self.w + 2 * self.pad],
        )?;
        numel(OP, &[self.n, self.col_rows(), oh, ow])?;
        numel(OP, &[self.n, self.o, oh, ow])?;
        Ok(ConvParams {
            c: dim_u32(OP, "C", self.c)?,
            h: dim_u32(OP, "H", self.h)?,
            w: dim_u32(OP, "W", self.w)?,
            kh: dim_u32(OP, "kh", self.kh)?,
            kw: dim_u32(OP, "kw", self.kw)?,
            stride: dim_u32(OP, "stride", self.stride)?,
            pad: dim_u32(OP, "padding", self.pad)?,
            oh: dim_u32(OP, "OH", oh)?,
            ow: dim_u32(OP, "OW", ow)?,
            images: dim_u32(OP, "images", images)?,
        })
    }
    fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    fn w_len(&self) -> usize {
        self.o * self.col_rows()
    }
}

/// Images per column tile: as many as fit in `cap` floats, at least one.
pub fn images_per_tile(col_floats_per_image: usize, n: usize, cap: usize) -> usize {
    (cap / col_floats_per_image.max(1)).clamp(1, n.max(1))
}

/// `Y[n0..n0+nb] = W · B_i` for `nb` images, B the column matrices (or x when pointwise).
pub fn forward_gemm(s: &Conv2dShape, nb: usize) -> Result<RowMajorGemm> {
    let (rows, p) = (s.col_rows(), s.col_cols()?);
    let mut g = RowMajorGemm::packed(s.o, p, rows, false, false);
    g.batch = nb;
    g.stride_a = 0; // the weight, broadcast over the tile
    g.stride_b = rows * p;
    g.stride_c = s.o * p;
    Ok(g)
}

/// `dW += dY_i · B_iᵀ` for one image (beta = 1 accumulates over the batch).
pub fn weight_grad_gemm(s: &Conv2dShape) -> Result<RowMajorGemm> {
    let (rows, p) = (s.col_rows(), s.col_cols()?);
    let mut g = RowMajorGemm::packed(s.o, rows, p, false, true);
    g.beta = 1.0;
    Ok(g)
}

/// `dB_i = Wᵀ · dY_i` for `nb` images (dB = dcol, or dx when pointwise).
pub fn input_grad_gemm(s: &Conv2dShape, nb: usize) -> Result<RowMajorGemm> {
    let (rows, p) = (s.col_rows(), s.col_cols()?);
    let mut g = RowMajorGemm::packed(rows, p, s.o, true, false);
    g.batch = nb;
    g.stride_a = 0;
    g.stride_b = s.o * p;
    g.stride_c = rows * p;
    Ok(g)
}

/// Checks an image-side buffer of `image_len` floats and a column buffer of `col_len` floats
/// hold `p.images` images; returns the floats of all images and of all column matrices.
fn check_unfold_buffers(
    what: &str,
    p: &ConvParams,
    image_len: usize,
    col_len: usize,
) -> Result<(usize, usize)> {
    let images = p.images as usize;
    let img = images * p.c as usize * p.h as usize * p.w as usize;
    let cols =
        images * p.c as usize * p.kh as usize * p.kw as usize * p.oh as usize * p.ow as usize;
    if image_len < img || col_len < cols {
        return Err(Error::shape(
            OP,
            format!("{what} view {image_len} / col {col_len} floats, need {img} / {cols}"),
        ));
    }
    Ok((img, cols))
}

/// im2col of `p.images` consecutive images of `x` into `col`.
pub fn im2col(
    dev: &CudaDevice,
    p: &ConvParams,
    x: &impl GpuRead<f32>,
    col: &mut impl GpuWrite<f32>,
) -> Result<()> {
    let (_, cols) = check_unfold_buffers("im2col: x", p, x.len(), col.len())?;
    dev.launch(IM2COL)
        .arg(p)
        .buf(x)
        .out(col)
        .run(dev.cfg(cols as u64))
}

/// col2im (gather, overwrite) of `p.images` column matrices into `dx`.
pub fn col2im(
    dev: &CudaDevice,
    p: &ConvParams,
    col: &impl GpuRead<f32>,
    dx: &mut impl GpuWrite<f32>,
) -> Result<()> {
    let (img, _) = check_unfold_buffers("col2im: dx", p, dx.len(), col.len())?;
    dev.launch(COL2IM)
        .arg(p)
        .buf(col)
        .out(dx)
        .run(dev.cfg(img as u64))
}

fn check_inputs(
    s: &Conv2dShape,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    check_len(OP, "x", x, s.x_len())?;
    check_len(OP, "weight", w, s.w_len())?;
    if let Some(b) = b {
        check_len(OP, "bias", b, s.o)?;
    }
    Ok(())
}

/// y `[n, o, oh, ow]` = conv(x, w) + b.
pub fn forward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    s: &Conv2dShape,
) -> Result<GpuBuffer<f32>> {
    forward_ws(dev, x, w, b, s, COL_WORKSPACE_FLOATS)
}

/// [`forward`] with the column workspace bounded by `workspace_floats` (tests use a
/// small bound to exercise tiling; benches compare tile sizes).
pub fn forward_ws(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    s: &Conv2dShape,
    workspace_floats: usize,
) -> Result<GpuBuffer<f32>> {
    let p_all = s.params(s.n)?;
    check_inputs(s, x, w, b)?;
    let (rows, p) = (s.col_rows(), s.col_cols()?);
    let ximg = s.c * s.h * s.w;
    let mut y = dev.alloc::<f32>(s.n * s.o * p)?;
    if s.n > 0 {
        if s.is_pointwise() {
            sgemm(dev, &forward_gemm(s, s.n)?, w, x, &mut y)?;
        } else {
            let tile = images_per_tile(rows * p, s.n, workspace_floats);
            let mut col = dev.alloc::<f32>(tile * rows * p)?;
            for n0 in (0..s.n).step_by(tile) {
                let nb = tile.min(s.n - n0);
                let pt = ConvParams {
                    images: nb as u32,
                    ..p_all
                };
                im2col(dev, &pt, &x.view(n0 * ximg..(n0 + nb) * ximg)?, &mut col)?;
                let mut yv = y.view_mut(n0 * s.o * p..(n0 + nb) * s.o * p)?;
                sgemm(dev, &forward_gemm(s, nb)?, w, &col, &mut yv)?;
            }
        }
    }
    if let Some(bias) = b {
        let total = (s.n * s.o * p) as u64;
        let (channels, plane) = (dim_u32(OP, "O", s.o)?, p as u64);
        dev.launch(BIAS_ADD)
            .out(&mut y)
            .buf(bias)
            .arg(&total)
            .arg(&channels)
            .arg(&plane)
            .run(dev.cfg(total))?;
    }
    Ok(y)
}

/// db `[o]` = Σ over n, positions of dy (one block per channel, deterministic).
pub fn bias_grad(
    dev: &CudaDevice,
    dy: &GpuBuffer<f32>,
    n: usize,
    o: usize,
    plane: usize,
) -> Result<GpuBuffer<f32>> {
    check_len(OP, "dy", dy, numel(OP, &[n, o, plane])?)?;
    let mut db = dev.alloc_zeros::<f32>(o)?;
    let (images, channels, plane) = (dim_u32(OP, "N", n)?, dim_u32(OP, "O", o)?, plane as u64);
    dev.launch(BIAS_GRAD)
        .buf(dy)
        .out(&mut db)
        .arg(&images)
        .arg(&channels)
        .arg(&plane)
        .run(launch::per_item(o as u64))?;
    Ok(db)
}

/// Gradients of a convolution; each is `None` unless asked for.
pub struct Conv2dGrads {
    /// `[n, c, h, w]`.
    pub dx: Option<GpuBuffer<f32>>,
    /// `[o, c, kh, kw]`.
    pub dw: Option<GpuBuffer<f32>>,
    /// `[o]`.
    pub db: Option<GpuBuffer<f32>>,
}

/// Which gradients a backward computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvNeeds {
    pub dx: bool,
    pub dw: bool,
    pub db: bool,
}

/// Backward of [`forward`] given dy `[n, o, oh, ow]`.
pub fn backward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    s: &Conv2dShape,
    needs: ConvNeeds,
) -> Result<Conv2dGrads> {
    backward_ws(dev, x, w, dy, s, needs, COL_WORKSPACE_FLOATS)
}

/// [`backward`] with the column workspace (and the same again for dcol) bounded by
/// `workspace_floats`.
pub fn backward_ws(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    s: &Conv2dShape,
    needs: ConvNeeds,
    workspace_floats: usize,
) -> Result<Conv2dGrads> {
    let p_all = s.params(s.n)?;
    check_inputs(s, x, w, None)?;
    let (rows, p) = (s.col_rows(), s.col_cols()?);
    check_len(OP, "dy", dy, s.n * s.o * p)?;
    let ximg = s.c * s.h * s.w;
    let yimg = s.o * p;
    // Zeroed so every image accumulates with beta = 1 (and a batch of 0 gives 0).
    let mut dw = if needs.dw {
        Some(dev.alloc_zeros::<f32>(s.w_len())?)
    } else {
        None
    };
    let mut dx = if needs.dx {
        Some(dev.alloc::<f32>(s.x_len())?)
    } else {
        None
    };
    let gw = weight_grad_gemm(s)?;
    if s.n > 0 && (needs.dx || needs.dw) {
        if s.is_pointwise() {
            if let Some(dw) = dw.as_mut() {
                for i in 0..s.n {
                    let dyv = dy.view(i * yimg..(i + 1) * yimg)?;
                    let xv = x.view(i * ximg..(i + 1) * ximg)?;
                    sgemm(dev, &gw, &dyv, &xv, dw)?;
                }
            }
            if let Some(dx) = dx.as_mut() {
                sgemm(dev, &input_grad_gemm(s, s.n)?, w, dy, dx)?;
            }
        } else {
            let tile = images_per_tile(rows * p, s.n, workspace_floats);
            let mut col = if needs.dw {
                Some(dev.alloc::<f32>(tile * rows * p)?)
            } else {
                None
            };
            let mut dcol = if needs.dx {
                Some(dev.alloc::<f32>(tile * rows * p)?)
            } else {
                None
            };
            for n0 in (0..s.n).step_by(tile) {
                let nb = tile.min(s.n - n0);
                let pt = ConvParams {
                    images: nb as u32,
                    ..p_all
                };
                if let (Some(dw), Some(col)) = (dw.as_mut(), col.as_mut()) {
                    im2col(dev, &pt, &x.view(n0 * ximg..(n0 + nb) * ximg)?, col)?;
                    for i in 0..nb {
                        let dyv = dy.view((n0 + i) * yimg..(n0 + i + 1) * yimg)?;
                        let cv = col.view(i * rows * p..(i + 1) * rows * p)?;
                        sgemm(dev, &gw, &dyv, &cv, dw)?;
                    }
                }
                if let (Some(dx), Some(dcol)) = (dx.as_mut(), dcol.as_mut()) {
                    let dyv = dy.view(n0 * yimg..(n0 + nb) * yimg)?;
                    sgemm(dev, &input_grad_gemm(s, nb)?, w, &dyv, dcol)?;
                    let mut dxv = dx.view_mut(n0 * ximg..(n0 + nb) * ximg)?;
                    col2im(dev, &pt, dcol, &mut dxv)?;
                }
            }
        }
    }
    let db = if needs.db {
        Some(bias_grad(dev, dy, s.n, s.o, p)?)
    } else {
        None
    };
    Ok(Conv2dGrads { dx, dw, db })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::cuda::gemm::tests::cublas_reference;
    use crate::device::cuda::gemm::to_cublas;

    /// im2col with the kernel's index decomposition (flat index → image, row, column).
    fn im2col_host(p: &ConvParams, x: &[f32]) -> Vec<f32> {
        let ohw = (p.oh * p.ow) as usize;
        let rows = (p.c * p.kh * p.kw) as usize;
        let total = p.images as usize * rows * ohw;
        (0..total)
            .map(|i| {
                let q = i % ohw;
                let r = (i / ohw) % rows;
                let img = i / (ohw * rows);
                let (oy, ox) = (q / p.ow as usize, q % p.ow as usize);
                let kj = r % p.kw as usize;
                let ki = (r / p.kw as usize) % p.kh as usize;
                let ch = r / (p.kw * p.kh) as usize;
                let iy = (oy * p.stride as usize + ki) as i64 - p.pad as i64;
                let ix = (ox * p.stride as usize + kj) as i64 - p.pad as i64;
                if iy >= 0 && iy < p.h as i64 && ix >= 0 && ix < p.w as i64 {
                    x[((img * p.c as usize + ch) * p.h as usize + iy as usize) * p.w as usize
                        + ix as usize]
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// col2im with the kernel's gather formulation.
    fn col2im_host(p: &ConvParams, col: &[f32]) -> Vec<f32> {
        let (c, h, w) = (p.c as i64, p.h as i64, p.w as i64);
        let ohw = (p.oh * p.ow) as i64;
        let rows = c * (p.kh * p.kw) as i64;
        let total = p.images as i64 * c * h * w;
        (0..total)
            .map(|i| {
                let xx = i % w;
                let yy = (i / w) % h;
                let ch = (i / (w * h)) % c;
                let img = i / (w * h * c);
                let mut acc = 0.0f32;
                for ki in 0..p.kh as i64 {
                    let ty = yy + p.pad as i64 - ki;
                    if ty < 0 || ty % p.stride as i64 != 0 || ty / p.stride as i64 >= p.oh as i64 {
                        continue;
                    }
                    for kj in 0..p.kw as i64 {
                        let tx = xx + p.pad as i64 - kj;
                        if tx < 0
                            || tx % p.stride as i64 != 0
                            || tx / p.stride as i64 >= p.ow as i64
                        {
                            continue;
                        }
                        let r = (ch * p.kh as i64 + ki) * p.kw as i64 + kj;
                        let q = (ty / p.stride as i64) * p.ow as i64 + tx / p.stride as i64;
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

    fn direct_conv(s: &Conv2dShape, x: &[f32], w: &[f32]) -> Vec<f32> {
        let (oh, ow) = s.out_hw().unwrap();
        let mut y = vec![0.0f32; s.n * s.o * oh * ow];
        for n in 0..s.n {
            for o in 0..s.o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0.0f64;
                        for c in 0..s.c {
                            for ki in 0..s.kh {
                                for kj in 0..s.kw {
                                    let iy = (oy * s.stride + ki) as i64 - s.pad as i64;
                                    let ix = (ox * s.stride + kj) as i64 - s.pad as i64;
                                    if iy < 0 || ix < 0 || iy >= s.h as i64 || ix >= s.w as i64 {
                                        continue;
                                    }
                                    acc += (x
                                        [((n * s.c + c) * s.h + iy as usize) * s.w + ix as usize]
                                        * w[((o * s.c + c) * s.kh + ki) * s.kw + kj])
                                        as f64;
                                }
                            }
                        }
                        y[((n * s.o + o) * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
        }
        y
    }

    /// Runs a RowMajorGemm plan exactly as `sgemm` hands it to cuBLAS, on the host.
    fn run(g: &RowMajorGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        let cb = to_cublas(g).unwrap();
        assert!(a.len() >= g.required_len_a() && b.len() >= g.required_len_b());
        assert!(c.len() >= g.required_len_c());
        cublas_reference(&cb, b, a, c);
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    const SHAPES: [Conv2dShape; 4] = [
        Conv2dShape {
            n: 3,
            c: 2,
            h: 5,
            w: 7,
            o: 4,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 1,
        },
        Conv2dShape {
            n: 1,
            c: 3,
            h: 6,
            w: 5,
            o: 2,
            kh: 3,
            kw: 2,
            stride: 2,
            pad: 1,
        },
        Conv2dShape {
            n: 2,
            c: 4,
            h: 3,
            w: 4,
            o: 5,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
        },
        Conv2dShape {
            n: 2,
            c: 1,
            h: 4,
            w: 4,
            o: 3,
            kh: 2,
            kw: 2,
            stride: 3,
            pad: 0,
        },
    ];

    /// The launcher's forward plan (tiles of 2 images, im2col, GEMM) equals a direct convolution.
    #[test]
    fn forward_plan_matches_direct_convolution() {
        for s in SHAPES {
            let x = rand(s.x_len(), 1);
            let w = rand(s.w_len(), 2);
            let (rows, p) = (s.col_rows(), s.col_cols().unwrap());
            let mut y = vec![f32::NAN; s.n * s.o * p];
            let tile = images_per_tile(rows * p, s.n, 2 * rows * p);
            for n0 in (0..s.n).step_by(tile) {
                let nb = tile.min(s.n - n0);
                let ximg = s.c * s.h * s.w;
                let b = if s.is_pointwise() {
                    x[n0 * ximg..(n0 + nb) * ximg].to_vec()
                } else {
                    im2col_host(&s.params(nb).unwrap(), &x[n0 * ximg..(n0 + nb) * ximg])
                };
                run(
                    &forward_gemm(&s, nb).unwrap(),
                    &w,
                    &b,
                    &mut y[n0 * s.o * p..(n0 + nb) * s.o * p],
                );
            }
            close(&y, &direct_conv(&s, &x, &w), &format!("forward {s:?}"));
        }
    }

    /// The backward plan gives the adjoints of the forward: <dY, conv(dX-direction)> checks via
    /// finite linear algebra — dW and dx equal the exact gradients of Σ dY ⊙ conv(x, w).
    #[test]
    fn backward_plan_matches_exact_gradients() {
        for s in SHAPES {
            let x = rand(s.x_len(), 3);
            let w = rand(s.w_len(), 4);
            let (rows, p) = (s.col_rows(), s.col_cols().unwrap());
            let dy = rand(s.n * s.o * p, 5);
            // plan, as backward runs it
            let mut dw = vec![0.0f32; s.w_len()];
            let mut dx = vec![f32::NAN; s.x_len()];
            let pa = s.params(s.n).unwrap();
            let col = if s.is_pointwise() {
                x.clone()
            } else {
                im2col_host(&pa, &x)
            };
            for i in 0..s.n {
                run(
                    &weight_grad_gemm(&s).unwrap(),
                    &dy[i * s.o * p..(i + 1) * s.o * p],
                    &col[i * rows * p..(i + 1) * rows * p],
                    &mut dw,
                );
            }
            let mut dcol = vec![f32::NAN; s.n * rows * p];
            run(&input_grad_gemm(&s, s.n).unwrap(), &w, &dy, &mut dcol);
            if s.is_pointwise() {
                dx.copy_from_slice(&dcol);
            } else {
                dx = col2im_host(&pa, &dcol);
            }
            // exact gradients: the loss Σ dy·y is linear in w and in x, so its gradient
            // entry j is the loss at the unit vector e_j
            let loss = |x: &[f32], w: &[f32]| -> f64 {
                direct_conv(&s, x, w)
                    .iter()
                    .zip(&dy)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum()
            };
            let want_dw: Vec<f32> = (0..s.w_len())
                .map(|j| {
                    let mut e = vec![0.0f32; s.w_len()];
                    e[j] = 1.0;
                    loss(&x, &e) as f32
                })
                .collect();
            let want_dx: Vec<f32> = (0..s.x_len())
                .map(|j| {
                    let mut e = vec![0.0f32; s.x_len()];
                    e[j] = 1.0;
                    loss(&e, &w) as f32
                })
                .collect();
            close(&dw, &want_dw, &format!("dW {s:?}"));
            close(&dx, &want_dx, &format!("dx {s:?}"));
        }
    }

    #[test]
    fn shapes_and_tiles() {
        let s = SHAPES[0];
        assert_eq!(s.out_hw().unwrap(), (5, 7));
        assert_eq!(SHAPES[1].out_hw().unwrap(), (3, 3));
        assert_eq!(SHAPES[3].out_hw().unwrap(), (1, 1));
        let bad = Conv2dShape { kh: 9, ..s };
        assert!(bad.out_hw().unwrap_err().to_string().contains("conv2d"));
        assert!(Conv2dShape { stride: 0, ..s }.out_hw().is_err());
        assert_eq!(images_per_tile(576 * 65536, 8, COL_WORKSPACE_FLOATS), 1);
        assert_eq!(images_per_tile(1000, 8, COL_WORKSPACE_FLOATS), 8);
        assert_eq!(images_per_tile(10, 8, 25), 2);
        assert_eq!(images_per_tile(100, 8, 5), 1);
        assert!(SHAPES[2].is_pointwise() && !SHAPES[0].is_pointwise());
    }
}
