//! 2-D convolution, NCHW: x [N, C, H, W] ⊛ w [O, C, kh, kw] (+ b [O]) → [N, O, OH, OW] with
//! OH = (H + 2p − kh)/s + 1 (floor), zero padding, as PyTorch's `F.conv2d` (groups = 1,
//! dilation = 1). CPU: im2col + GEMM per image (`cpu.rs`); CUDA: im2col / col2im kernels
//! around cuBLAS in two versions kept side by side ([`ConvVersion`]: `cuda.rs` has v1 and the
//! dispatch, `cuda_v2.rs` v2). Both backends take one [`Conv2dGeometry`], checked once here.
//!
//! The op's own GPU switches, process-wide: which version runs ([`set_version`], default v2)
//! and the GEMMs' arithmetic ([`set_math`], default [`ConvMath::Auto`]: TF32 on compute
//! capability 8.0 and later, as PyTorch's cuDNN convolutions, strict FP32 before).
pub mod cpu;
pub mod cpu_fast;
pub mod cuda;
pub mod cuda_v2;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::autograd::{Backward, Tape, Var};
use crate::device::cuda::gemm::GemmMath;
use crate::device::cuda::{dim_u32, numel, CudaDeviceInfo, KernelParam};
use crate::error::{Error, Result};
use crate::tensor::{device_mismatch, expect_rank, same_device, Storage, Tensor};

const OP: &str = "conv2d";

/// The CUDA implementation of conv2d (`--conv-kernel`; the CPU has one reference).
/// - `v1`: the first version, kept as the baseline: im2col / col2im with 64-bit runtime
///   divisions per element, columns per image `[C·kh·kw, OH·OW]`, one GEMM per image for dW
///   (beta = 1), a separate bias pass, separate column and dcol workspaces;
/// - `v2`: division-free im2col / col2im (2-D grids, precomputed u32 magic-number division,
///   float4 stores), one column buffer per tile of images laid out `[C·kh·kw (+ ones row),
///   images·OH·OW]`, the bias folded into the forward GEMM as a row of ones (or a
///   division-free bias pass where the folded weight would cost more), dW of a tile in one
///   GEMM over `images·OH·OW` (dy repacked) or one strided-batched GEMM plus a deterministic
///   reduction, whichever moves fewer bytes, db from the same pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum ConvVersion {
    V1,
    #[default]
    V2,
}

impl ConvVersion {
    pub const ALL: [ConvVersion; 2] = [ConvVersion::V1, ConvVersion::V2];
    pub fn name(&self) -> &'static str {
        match self {
            ConvVersion::V1 => "v1",
            ConvVersion::V2 => "v2",
        }
    }
}

impl FromStr for ConvVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ConvVersion::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown convolution kernel '{s}' (expected v1 or v2)"
                ))
            })
    }
}

/// The arithmetic of the convolution GEMMs on a GPU (`--fp32`, `--tf32`, `--bf16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum ConvMath {
    /// TF32 on compute capability ≥ 8.0 (PyTorch's `cudnn.allow_tf32 = True` default), FP32
    /// before and in the host emulation.
    #[default]
    Auto,
    /// Strict FP32.
    Fp32,
    /// TF32 tensor cores (FP32 accumulation).
    Tf32,
    /// bf16 operands, FP32 accumulation (v2 only; compute capability ≥ 8.0). Pointwise (1x1)
    /// convolutions, memory-bound at these sizes, stay in TF32.
    Bf16,
}

impl ConvMath {
    pub const ALL: [ConvMath; 4] = [
        ConvMath::Auto,
        ConvMath::Fp32,
        ConvMath::Tf32,
        ConvMath::Bf16,
    ];
    pub fn name(&self) -> &'static str {
        match self {
            ConvMath::Auto => "auto",
            ConvMath::Fp32 => "fp32",
            ConvMath::Tf32 => "tf32",
            ConvMath::Bf16 => "bf16",
        }
    }

    /// What the GEMMs do on `dev`. `Auto` is TF32 from compute capability 8.0 on (the
    /// emulation reports 0.0, so it is FP32 there); bf16 needs 8.0 on a GPU.
    pub fn resolve(&self, dev: &CudaDeviceInfo) -> Result<GemmMath> {
        let ampere = dev.compute_capability.0 >= 8;
        Ok(match self {
            ConvMath::Auto if ampere => GemmMath::Tf32,
            ConvMath::Auto | ConvMath::Fp32 => GemmMath::Fp32,
            ConvMath::Tf32 => GemmMath::Tf32,
            ConvMath::Bf16 if ampere || dev.emulated => GemmMath::Bf16,
            ConvMath::Bf16 => {
                return Err(Error::Device(format!(
                    "conv2d: bf16 GEMMs need compute capability 8.0 or later, {} has {}.{}",
                    dev.name, dev.compute_capability.0, dev.compute_capability.1
                )))
            }
        })
    }
}

static VERSION: AtomicU8 = AtomicU8::new(ConvVersion::V2 as u8);
static MATH: AtomicU8 = AtomicU8::new(ConvMath::Auto as u8);

/// Selects the CUDA implementation of every later conv2d call.
pub fn set_version(v: ConvVersion) {
    VERSION.store(v as u8, Ordering::Relaxed);
}

/// The CUDA implementation conv2d runs now.
pub fn version() -> ConvVersion {
    let code = VERSION.load(Ordering::Relaxed);
    ConvVersion::ALL
        .into_iter()
        .find(|v| *v as u8 == code)
        .unwrap_or_default()
}

/// Selects the arithmetic of every later conv2d GEMM on a GPU.
pub fn set_math(m: ConvMath) {
    MATH.store(m as u8, Ordering::Relaxed);
}

/// The arithmetic conv2d's GEMMs use now (before [`ConvMath::resolve`]).
pub fn math() -> ConvMath {
    let code = MATH.load(Ordering::Relaxed);
    ConvMath::ALL
        .into_iter()
        .find(|m| *m as u8 == code)
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dArgs {
    pub stride: usize,
    pub padding: usize,
}

/// Every size of one convolution, derived and checked once from the operand shapes: x
/// [n, c, h, w], w [o, c, kh, kw], the same stride and zero padding in both directions, y
/// [n, o, oh, ow]. The CPU loops and the CUDA launchers take it instead of re-deriving sizes,
/// and, `#[repr(C)]`, it is the im2col / col2im kernels' parameter struct (kernels/conv2d.cu),
/// field for field; a launch over a tile of the batch passes [`Conv2dGeometry::tile`].
///
/// The fields are `u32`, as the kernels read them, and private, so every geometry is one the
/// constructor checked; the methods of the same names give them as `usize`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    o: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
}
// Safety: eleven u32, as `struct Conv2dGeometry` in the kernel.
unsafe impl KernelParam for Conv2dGeometry {}
const _: () = assert!(std::mem::size_of::<Conv2dGeometry>() == 44);

/// `pub fn f(&self) -> usize` for each field `f`, with its doc line.
macro_rules! usize_getters {
    ($($f:ident: $doc:literal),* $(,)?) => {
        $(#[doc = $doc] pub fn $f(&self) -> usize { self.$f as usize })*
    };
}

impl Conv2dGeometry {
    /// Checks x [N, C, H, W] against w [O, C, kh, kw]; errors name conv2d and both shapes.
    pub fn new(x: &Tensor, w: &Tensor, args: Conv2dArgs) -> Result<Self> {
        let xd = expect_rank(OP, "input x [N, C, H, W]", x, 4)?;
        let wd = expect_rank(OP, "weight w [O, C, kh, kw]", w, 4)?;
        Self::from_dims(
            [xd[0], xd[1], xd[2], xd[3]],
            [wd[0], wd[1], wd[2], wd[3]],
            args,
        )
    }

    /// [`Conv2dGeometry::new`] from the dims alone. Besides the shapes' agreement, checks that
    /// every size fits the kernels' `u32` and every element count (the padded input, the column
    /// matrices, the output) fits `usize`.
    pub fn from_dims(x: [usize; 4], w: [usize; 4], args: Conv2dArgs) -> Result<Self> {
        let ([n, c, h, wi], [o, wc, kh, kw]) = (x, w);
        if args.stride == 0 {
            return Err(Error::shape(OP, "stride must be at least 1"));
        }
        if wc != c {
            return Err(Error::shape(
                OP,
                format!("input x {x:?} has {c} channels but weight w {w:?} expects {wc}"),
            ));
        }
        if c == 0 || h == 0 || wi == 0 || o == 0 || kh == 0 || kw == 0 {
            return Err(Error::shape(
                OP,
                format!("empty dimension in input x {x:?} or weight w {w:?}"),
            ));
        }
        let padded = |s: usize| {
            args.padding
                .checked_mul(2)
                .and_then(|p| p.checked_add(s))
                .ok_or_else(|| {
                    Error::shape(OP, format!("padding {} overflows usize", args.padding))
                })
        };
        let (ph, pw) = (padded(h)?, padded(wi)?);
        if ph < kh || pw < kw {
            return Err(Error::shape(
                OP,
                format!(
                    "kernel {kh}x{kw} larger than padded input {ph}x{pw} (x {x:?}, padding {})",
                    args.padding
                ),
            ));
        }
        let (oh, ow) = ((ph - kh) / args.stride + 1, (pw - kw) / args.stride + 1);
        numel(OP, &[n, c, ph, pw])?;
        numel(OP, &[n, c, kh, kw, oh, ow])?;
        numel(OP, &[n, o, oh, ow])?;
        let u = |what: &str, v: usize| dim_u32(OP, what, v);
        Ok(Conv2dGeometry {
            n: u("N", n)?,
            c: u("C", c)?,
            h: u("H", h)?,
            w: u("W", wi)?,
            o: u("O", o)?,
            kh: u("kh", kh)?,
            kw: u("kw", kw)?,
            stride: u("stride", args.stride)?,
            pad: u("padding", args.padding)?,
            oh: u("OH", oh)?,
            ow: u("OW", ow)?,
        })
    }

    usize_getters! {
        n: "Images: the batch, or in a [`Conv2dGeometry::tile`] the images of one launch.",
        c: "Input channels.",
        h: "Input height.",
        w: "Input width.",
        o: "Output channels.",
        kh: "Kernel height.",
        kw: "Kernel width.",
        stride: "Stride, in both directions.",
        pad: "Zero padding on each side, in both directions.",
        oh: "Output height, (H + 2·pad − kh)/stride + 1.",
        ow: "Output width, (W + 2·pad − kw)/stride + 1.",
    }

    /// The same convolution over `images` of the batch's images (a launch over one tile).
    pub fn tile(&self, images: usize) -> Self {
        assert!(
            images <= self.n(),
            "a tile of {images} of {} images",
            self.n
        );
        Conv2dGeometry {
            n: images as u32,
            ..*self
        }
    }

    /// Rows of the column matrix: C·kh·kw.
    pub fn col_rows(&self) -> usize {
        self.c() * self.kh() * self.kw()
    }

    /// Columns of the column matrix (output positions): OH·OW.
    pub fn col_cols(&self) -> usize {
        self.oh() * self.ow()
    }

    /// Floats of one image of x, [C, H, W].
    pub fn x_image(&self) -> usize {
        self.c() * self.h() * self.w()
    }

    /// Floats of one image of y, [O, OH, OW].
    pub fn y_image(&self) -> usize {
        self.o() * self.col_cols()
    }

    /// Floats of one image's column matrix, [C·kh·kw, OH·OW].
    pub fn col_image(&self) -> usize {
        self.col_rows() * self.col_cols()
    }

    /// Floats of x, all `n` images.
    pub fn x_len(&self) -> usize {
        self.n() * self.x_image()
    }

    /// Floats of the weight, [O, C, kh, kw].
    pub fn w_len(&self) -> usize {
        self.o() * self.col_rows()
    }

    /// Floats of y, all `n` images.
    pub fn y_len(&self) -> usize {
        self.n() * self.y_image()
    }

    /// Floats of the column matrices of all `n` images.
    pub fn col_len(&self) -> usize {
        self.n() * self.col_image()
    }

    /// 1x1, stride 1, no padding: the input plane is already the column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    pub fn out_dims(&self) -> [usize; 4] {
        [self.n(), self.o(), self.oh(), self.ow()]
    }

    /// Multiply-adds ×2 of the forward pass (the backward's dX and dW are as much again each).
    pub fn forward_flops(&self) -> u64 {
        2 * (self.y_len() * self.col_rows()) as u64
    }
}

/// Which gradients a backward computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dNeeds {
    pub dx: bool,
    pub dw: bool,
    pub db: bool,
}

/// Gradients of conv2d, each `None` unless asked for: tensors from [`conv2d_backward`], the
/// backends' buffers from `cpu::backward` / `cuda::backward`.
#[derive(Debug)]
pub struct Conv2dGrads<T = Tensor> {
    /// `[n, c, h, w]`.
    pub dx: Option<T>,
    /// `[o, c, kh, kw]`.
    pub dw: Option<T>,
    /// `[o]`.
    pub db: Option<T>,
}

impl<T> Conv2dGrads<T> {
    fn map<U>(self, f: impl Fn(T) -> U) -> Conv2dGrads<U> {
        Conv2dGrads {
            dx: self.dx.map(&f),
            dw: self.dw.map(&f),
            db: self.db.map(&f),
        }
    }
}

fn check_bias(b: &Tensor, o: usize) -> Result<()> {
    if b.dims() != [o] {
        return Err(Error::shape(
            OP,
            format!(
                "bias b must have shape [{o}] (one per output channel), got {}",
                b.shape()
            ),
        ));
    }
    Ok(())
}

pub fn conv2d_forward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    args: Conv2dArgs,
) -> Result<Tensor> {
    let g = Conv2dGeometry::new(x, w, args)?;
    if let Some(b) = b {
        check_bias(b, g.o())?;
        same_device(OP, &[x, w, b])?;
    } else {
        same_device(OP, &[x, w])?;
    }
    let out = match (x.storage(), w.storage(), b.map(Tensor::storage)) {
        (Storage::Cpu(xs), Storage::Cpu(ws), None) => Storage::Cpu(cpu::forward(xs, ws, None, &g)),
        (Storage::Cpu(xs), Storage::Cpu(ws), Some(Storage::Cpu(bs))) => {
            Storage::Cpu(cpu::forward(xs, ws, Some(bs), &g))
        }
        (Storage::Cuda(xs), Storage::Cuda(ws), bs) => {
            let bs = match bs {
                None => None,
                Some(Storage::Cuda(b)) => Some(b),
                Some(Storage::Cpu(_)) => return Err(device_mismatch(OP, &[x, w])),
            };
            Storage::Cuda(cuda::forward(xs.device(), xs, ws, bs, &g)?)
        }
        _ => return Err(device_mismatch(OP, &[x, w])),
    };
    Ok(Tensor::from_storage(out, &g.out_dims()))
}

/// Gradients of conv2d from the forward operands and dy [N, O, OH, OW]; only the requested
/// ones are computed (the rest are `None`).
pub fn conv2d_backward(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    args: Conv2dArgs,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> Result<Conv2dGrads> {
    let g = Conv2dGeometry::new(x, w, args)?;
    if dy.dims() != g.out_dims() {
        return Err(Error::shape(
            OP,
            format!(
                "output gradient dy is {} but the output is {:?}",
                dy.shape(),
                g.out_dims()
            ),
        ));
    }
    same_device(OP, &[x, w, dy])?;
    let needs = Conv2dNeeds {
        dx: need_dx,
        dw: need_dw,
        db: need_db,
    };
    let grads = match (x.storage(), w.storage(), dy.storage()) {
        (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(dys)) => {
            cpu::backward(xs, ws, dys, &g, needs).map(Storage::Cpu)
        }
        (Storage::Cuda(xs), Storage::Cuda(ws), Storage::Cuda(dys)) => {
            cuda::backward(xs.device(), xs, ws, dys, &g, needs)?.map(Storage::Cuda)
        }
        _ => return Err(device_mismatch(OP, &[x, w, dy])),
    };
    Ok(Conv2dGrads {
        dx: grads.dx.map(|s| Tensor::from_storage(s, x.dims())),
        dw: grads.dw.map(|s| Tensor::from_storage(s, w.dims())),
        db: grads.db.map(|s| Tensor::from_storage(s, &[g.o()])),
    })
}

/// Saves the operands by `Arc` (shared with their producers, not copied).
struct Conv2dBackward {
    x: Arc<Tensor>,
    w: Arc<Tensor>,
    has_bias: bool,
    args: Conv2dArgs,
}

impl Backward for Conv2dBackward {
    fn backward(&self, dy: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let need_db = self.has_bias && needs.get(2).copied().unwrap_or(false);
        let g = conv2d_backward(&self.x, &self.w, dy, self.args, needs[0], needs[1], need_db)?;
        let mut out = vec![g.dx, g.dw];
        if self.has_bias {
            out.push(g.db);
        }
        Ok(out)
    }
    fn name(&self) -> &'static str {
        OP
    }
}

pub fn conv2d(tape: &Tape, x: &Var, w: &Var, b: Option<&Var>, args: Conv2dArgs) -> Result<Var> {
    let y = tape.timed(OP, || {
        conv2d_forward(x.value(), w.value(), b.map(Var::value), args)
    })?;
    let bw = Conv2dBackward {
        x: x.value_arc(),
        w: w.value_arc(),
        has_bias: b.is_some(),
        args,
    };
    Ok(match b {
        Some(b) => tape.record(y, &[x, w, b], bw),
        None => tape.record(y, &[x, w], bw),
    })
}
