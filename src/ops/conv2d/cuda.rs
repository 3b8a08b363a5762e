//! 2-D convolution on the GPU: the dispatch between the versions kept side by side
//! ([`ConvVersion`], `--conv-kernel`) and v1 itself, the baseline: im2col / col2im kernels
//! (kernels/conv2d.cu) around cuBLAS. v2 is in `cuda_v2.rs`.
//! v1 forward, per tile of images (the column buffer is bounded by [`COL_WORKSPACE_FLOATS`]):
//! `Y_n[O, OH·OW] = W[O, C·kh·kw] · col_n`, one strided-batched GEMM per tile with the weight
//! broadcast (stride 0), then a bias pass. Backward: `dW += dY_n · col_nᵀ` per image
//! (beta = 1), `dcol = Wᵀ·dY_n` batched, then col2im. A 1x1, stride-1, unpadded convolution
//! uses x itself as the columns. The GEMM descriptions are pure functions of the geometry, so
//! the tests run them on the host against a direct convolution. Every GEMM of both versions
//! runs in the arithmetic the op's switch resolves to ([`ConvMath`], `GemmMath`).
use std::ops::Range;

use super::cuda_v2::{self, BiasRoute, DwRoute};
use super::{math, version, Conv2dGeometry, Conv2dGrads, Conv2dNeeds, ConvMath, ConvVersion};
use crate::device::cuda::gemm::{gemm_f32, GemmMath, RowMajorGemm};
use crate::device::cuda::{
    check_len, launch, CudaDevice, GpuBuffer, GpuRead, GpuWrite, Kernel, KernelFile,
};
use crate::error::{Error, Result};

const FILE: &str = "conv2d.cu";
const IM2COL: Kernel = Kernel::new(FILE, "im2col_f32");
const COL2IM: Kernel = Kernel::new(FILE, "col2im_f32");
const BIAS_ADD: Kernel = Kernel::new(FILE, "conv_bias_add_f32");
pub(super) const BIAS_GRAD: Kernel = Kernel::new(FILE, "conv_bias_grad_f32");
pub const KERNELS: KernelFile = KernelFile::new(FILE, &[IM2COL, COL2IM, BIAS_ADD, BIAS_GRAD]);

/// Upper bound of the column workspace, in floats (256 MiB): conv1_2 of VGG at 256x256 needs
/// 576 x 65536 floats per image, so a tile holds a few images, not the whole batch.
pub const COL_WORKSPACE_FLOATS: usize = 64 << 20;

const OP: &str = "conv2d (cuda)";

/// Images per column tile: as many as fit in `cap` floats, at least one.
pub fn images_per_tile(col_floats_per_image: usize, n: usize, cap: usize) -> usize {
    (cap / col_floats_per_image.max(1)).clamp(1, n.max(1))
}

/// The tiles of `n` images, `tile` at a time, as (first image, images in the tile).
pub fn tiles(n: usize, tile: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(tile.max(1))
        .map(move |n0| (n0, tile.min(n - n0)))
}

/// The elements of images `n0..n0 + nb` in a batched buffer of `per_image` floats per image.
pub fn images(n0: usize, nb: usize, per_image: usize) -> Range<usize> {
    n0 * per_image..(n0 + nb) * per_image
}

/// `Y_i = W · B_i` for the `g.n` images of a tile, B the column matrices (or x when pointwise).
pub fn forward_gemm(g: &Conv2dGeometry) -> RowMajorGemm {
    let (rows, p) = (g.col_rows(), g.col_cols());
    let m = RowMajorGemm::packed(g.o(), p, rows, false, false);
    weight_broadcast(m, g.n(), rows * p, g.o() * p)
}

/// `dW += dY_i · B_iᵀ` for one image (beta = 1 accumulates over the batch).
pub fn weight_grad_gemm(g: &Conv2dGeometry) -> RowMajorGemm {
    let mut m = RowMajorGemm::packed(g.o(), g.col_rows(), g.col_cols(), false, true);
    m.beta = 1.0;
    m
}

/// `dB_i = Wᵀ · dY_i` for the `g.n` images of a tile (dB = dcol, or dx when pointwise).
pub fn input_grad_gemm(g: &Conv2dGeometry) -> RowMajorGemm {
    let (rows, p) = (g.col_rows(), g.col_cols());
    let m = RowMajorGemm::packed(rows, p, g.o(), true, false);
    weight_broadcast(m, g.n(), g.o() * p, rows * p)
}

/// `m` batched over `batch` images, the weight (A) broadcast and B, C strided per image.
fn weight_broadcast(
    mut m: RowMajorGemm,
    batch: usize,
    stride_b: usize,
    stride_c: usize,
) -> RowMajorGemm {
    m.batch = batch;
    m.stride_a = 0;
    m.stride_b = stride_b;
    m.stride_c = stride_c;
    m
}

/// The two kernels between images and column matrices: the same geometry, opposite
/// directions, each launched over the `g.n` images of a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfold {
    /// x → col, zero padding.
    Im2col,
    /// col → dx, the adjoint of im2col as a gather (overwrites dx).
    Col2im,
}

impl Unfold {
    /// Runs the kernel from `src` into `dst` (one thread per element written), after checking
    /// that both hold the tile's images.
    pub fn run(
        self,
        dev: &CudaDevice,
        g: &Conv2dGeometry,
        src: &impl GpuRead<f32>,
        dst: &mut impl GpuWrite<f32>,
    ) -> Result<()> {
        let (kernel, what, image_len, col_len, written) = match self {
            Unfold::Im2col => (IM2COL, "im2col: x", src.len(), dst.len(), g.col_len()),
            Unfold::Col2im => (COL2IM, "col2im: dx", dst.len(), src.len(), g.x_len()),
        };
        let (img, cols) = (g.x_len(), g.col_len());
        if image_len < img || col_len < cols {
            return Err(Error::shape(
                OP,
                format!("{what} view {image_len} / col {col_len} floats, need {img} / {cols}"),
            ));
        }
        dev.launch(kernel)
            .arg(g)
            .buf(src)
            .out(dst)
            .run(dev.cfg(written as u64))
    }
}

pub(super) fn check_inputs(
    g: &Conv2dGeometry,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
) -> Result<()> {
    check_len(OP, "x", x, g.x_len())?;
    check_len(OP, "weight", w, g.w_len())?;
    if let Some(b) = b {
        check_len(OP, "bias", b, g.o())?;
    }
    Ok(())
}

/// What one convolution runs on a GPU: the version, the GEMMs' arithmetic (resolved for the
/// device), the workspace bound, and (v2) routes forced instead of chosen by the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvRun {
    pub version: ConvVersion,
    pub math: GemmMath,
    /// Bound of the column workspace in floats (v2 counts every per-tile buffer in it).
    pub workspace_floats: usize,
    /// v2: the forward's bias route instead of the plan's choice.
    pub bias: Option<BiasRoute>,
    /// v2: the backward's dW route instead of the plan's choice.
    pub dw: Option<DwRoute>,
}

impl ConvRun {
    /// The op's switches now ([`version`], [`math`]) on `dev`, the default workspace.
    pub fn current(dev: &CudaDevice) -> Result<Self> {
        Self::of(dev, version(), math())
    }

    /// `version` with `m` resolved for `dev`, the default workspace, the plan's routes.
    pub fn of(dev: &CudaDevice, version: ConvVersion, m: ConvMath) -> Result<Self> {
        Ok(ConvRun {
            version,
            math: m.resolve(dev.info())?,
            workspace_floats: COL_WORKSPACE_FLOATS,
            bias: None,
            dw: None,
        })
    }

    pub fn workspace(mut self, floats: usize) -> Self {
        self.workspace_floats = floats;
        self
    }
}

/// y `[n, o, oh, ow]` = conv(x, w) + b with the op's switches ([`ConvRun::current`]).
pub fn forward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    g: &Conv2dGeometry,
) -> Result<GpuBuffer<f32>> {
    forward_run(dev, x, w, b, g, &ConvRun::current(dev)?)
}

/// [`forward`] with the column workspace bounded by `workspace_floats` (tests use a
/// small bound to exercise tiling; benches compare tile sizes).
pub fn forward_ws(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    g: &Conv2dGeometry,
    workspace_floats: usize,
) -> Result<GpuBuffer<f32>> {
    let run = ConvRun::current(dev)?.workspace(workspace_floats);
    forward_run(dev, x, w, b, g, &run)
}

/// [`forward`] as `run` says.
pub fn forward_run(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    g: &Conv2dGeometry,
    run: &ConvRun,
) -> Result<GpuBuffer<f32>> {
    match run.version {
        ConvVersion::V1 => v1_forward(dev, x, w, b, g, v1_math(run.math)?, run.workspace_floats),
        ConvVersion::V2 => cuda_v2::forward(dev, x, w, b, g, run),
    }
}

fn v1_math(m: GemmMath) -> Result<GemmMath> {
    if m == GemmMath::Bf16 {
        return Err(Error::Invalid(
            "conv2d: bf16 GEMMs are a v2 option (--conv-kernel v2)".into(),
        ));
    }
    Ok(m)
}

fn v1_forward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    g: &Conv2dGeometry,
    math: GemmMath,
    workspace_floats: usize,
) -> Result<GpuBuffer<f32>> {
    check_inputs(g, x, w, b)?;
    let (ximg, yimg, cimg) = (g.x_image(), g.y_image(), g.col_image());
    let mut y = dev.alloc::<f32>(g.y_len())?;
    if g.n() > 0 {
        if g.is_pointwise() {
            gemm_f32(dev, &forward_gemm(g), math, w, x, &mut y)?;
        } else {
            let tile = images_per_tile(cimg, g.n(), workspace_floats);
            let mut col = dev.alloc::<f32>(tile * cimg)?;
            for (n0, nb) in tiles(g.n(), tile) {
                let gt = g.tile(nb);
                Unfold::Im2col.run(dev, &gt, &x.view(images(n0, nb, ximg))?, &mut col)?;
                let mut yv = y.view_mut(images(n0, nb, yimg))?;
                gemm_f32(dev, &forward_gemm(&gt), math, w, &col, &mut yv)?;
            }
        }
    }
    if let Some(bias) = b {
        bias_add(dev, g, &mut y, bias)?;
    }
    Ok(y)
}

/// y `[n, o, oh, ow]` += b, v1's pass (two 64-bit divisions per element).
pub fn bias_add(
    dev: &CudaDevice,
    g: &Conv2dGeometry,
    y: &mut GpuBuffer<f32>,
    bias: &GpuBuffer<f32>,
) -> Result<()> {
    let (total, plane) = (g.y_len() as u64, g.col_cols() as u64);
    dev.launch(BIAS_ADD)
        .out(y)
        .buf(bias)
        .arg(&total)
        .arg(&g.o)
        .arg(&plane)
        .run(dev.cfg(total))
}

/// db `[o]` = Σ over n, positions of dy (one block per channel, deterministic).
pub fn bias_grad(
    dev: &CudaDevice,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
) -> Result<GpuBuffer<f32>> {
    check_len(OP, "dy", dy, g.y_len())?;
    let mut db = dev.alloc_zeros::<f32>(g.o())?;
    dev.launch(BIAS_GRAD)
        .buf(dy)
        .out(&mut db)
        .arg(&g.n)
        .arg(&g.o)
        .arg(&(g.col_cols() as u64))
        .run(launch::per_item(g.o() as u64))?;
    Ok(db)
}

/// Backward of [`forward`] given dy `[n, o, oh, ow]`, with the op's switches.
pub fn backward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
) -> Result<Conv2dGrads<GpuBuffer<f32>>> {
    backward_run(dev, x, w, dy, g, needs, &ConvRun::current(dev)?)
}

/// [`backward`] with the column workspace bounded by `workspace_floats` (v1: the column and
/// dcol buffers each; v2: all its per-tile buffers together).
pub fn backward_ws(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    workspace_floats: usize,
) -> Result<Conv2dGrads<GpuBuffer<f32>>> {
    let run = ConvRun::current(dev)?.workspace(workspace_floats);
    backward_run(dev, x, w, dy, g, needs, &run)
}

/// [`backward`] as `run` says.
pub fn backward_run(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    run: &ConvRun,
) -> Result<Conv2dGrads<GpuBuffer<f32>>> {
    match run.version {
        ConvVersion::V1 => {
            let m = v1_math(run.math)?;
            v1_backward(dev, x, w, dy, g, needs, m, run.workspace_floats)
        }
        ConvVersion::V2 => cuda_v2::backward(dev, x, w, dy, g, needs, run),
    }
}

#[allow(clippy::too_many_arguments)]
fn v1_backward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    math: GemmMath,
    workspace_floats: usize,
) -> Result<Conv2dGrads<GpuBuffer<f32>>> {
    check_inputs(g, x, w, None)?;
    check_len(OP, "dy", dy, g.y_len())?;
    let (ximg, yimg, cimg) = (g.x_image(), g.y_image(), g.col_image());
    // Zeroed so every image accumulates with beta = 1 (and a batch of 0 gives 0).
    let mut dw = needs
        .dw
        .then(|| dev.alloc_zeros::<f32>(g.w_len()))
        .transpose()?;
    let mut dx = needs.dx.then(|| dev.alloc::<f32>(g.x_len())).transpose()?;
    let gw = weight_grad_gemm(g);
    if g.n() > 0 && (needs.dx || needs.dw) {
        if g.is_pointwise() {
            if let Some(dw) = dw.as_mut() {
                for i in 0..g.n() {
                    let dyv = dy.view(images(i, 1, yimg))?;
                    gemm_f32(dev, &gw, math, &dyv, &x.view(images(i, 1, ximg))?, dw)?;
                }
            }
            if let Some(dx) = dx.as_mut() {
                gemm_f32(dev, &input_grad_gemm(g), math, w, dy, dx)?;
            }
        } else {
            let tile = images_per_tile(cimg, g.n(), workspace_floats);
            let mut col = needs
                .dw
                .then(|| dev.alloc::<f32>(tile * cimg))
                .transpose()?;
            let mut dcol = needs
                .dx
                .then(|| dev.alloc::<f32>(tile * cimg))
                .transpose()?;
            for (n0, nb) in tiles(g.n(), tile) {
                let gt = g.tile(nb);
                if let (Some(dw), Some(col)) = (dw.as_mut(), col.as_mut()) {
                    Unfold::Im2col.run(dev, &gt, &x.view(images(n0, nb, ximg))?, col)?;
                    for i in 0..nb {
                        let dyv = dy.view(images(n0 + i, 1, yimg))?;
                        gemm_f32(dev, &gw, math, &dyv, &col.view(images(i, 1, cimg))?, dw)?;
                    }
                }
                if let (Some(dx), Some(dcol)) = (dx.as_mut(), dcol.as_mut()) {
                    let dyv = dy.view(images(n0, nb, yimg))?;
                    gemm_f32(dev, &input_grad_gemm(&gt), math, w, &dyv, dcol)?;
                    Unfold::Col2im.run(dev, &gt, dcol, &mut dx.view_mut(images(n0, nb, ximg))?)?;
                }
            }
        }
    }
    let db = needs.db.then(|| bias_grad(dev, dy, g)).transpose()?;
    Ok(Conv2dGrads { dx, dw, db })
}
