//! Convolution v2 on the GPU (kernels/conv2d_v2.cu), beside v1 (`cuda.rs`), selected by
//! [`super::set_version`] / `--conv-kernel v2`:
//! - im2col / col2im without runtime division: 2-D grids (a uniform row or channel per
//!   `blockIdx.y`), every index split by u32 magic-number division ([`FastDiv`]), four column
//!   entries per thread with float4 stores where aligned;
//! - one column buffer per tile of images, laid out `[rows, images·OH·OW]` (the image inside
//!   the row), reused as dcol in the backward;
//! - the bias folded into the forward GEMM (a row of ones in the columns, the bias as an extra
//!   weight column: [`BiasRoute::Folded`]) where packing the weight costs less than a pass over
//!   y, else a division-free bias pass ([`BiasRoute::Pass`]);
//! - dW of a tile as one GEMM over `images·OH·OW` after repacking dy to `[O, images·OH·OW]`
//!   (db from the same pass, dcol then one GEMM too: [`DwRoute::Repack`]), or one
//!   strided-batched GEMM into per-image partials and a deterministic reduction (db from the
//!   columns' ones row: [`DwRoute::Partials`]), whichever moves fewer bytes;
//! - GEMMs in FP32, TF32 or with bf16 operands (FP32 accumulation), as the run says; the bf16
//!   operands are written as bf16 by the kernels that produce them (columns, weight, dy).
//!
//! [`forward_plan`] and [`backward_plan`] fix every choice from the geometry, the gradients
//! asked for, the arithmetic and the workspace; the launchers, the tests and the bench use the
//! same plans. Sizes beyond the kernels' 31-bit index math (a tile of one image with more than
//! 2^31 positions) run v1 instead.
use std::any::Any;

use cudarc::driver::LaunchConfig;

use super::cuda::{
    bias_grad, check_inputs, forward_gemm, images, images_per_tile, input_grad_gemm, tiles, ConvRun,
};
use super::{Conv2dGeometry, Conv2dGrads, Conv2dNeeds, ConvVersion};
use crate::device::cuda::gemm::{gemm_bf16, gemm_f32, GemmMath, RowMajorGemm};
use crate::device::cuda::{
    check_len, launch, CudaDevice, DeviceScalar, GpuBuffer, GpuRead, GpuWrite, Kernel, KernelFile,
    KernelParam,
};
use crate::error::Result;

const FILE: &str = "conv2d_v2.cu";
const IM2COL_F32: Kernel = Kernel::new(FILE, "im2col_v2_f32");
const IM2COL_BF16: Kernel = Kernel::new(FILE, "im2col_v2_bf16");
const COL2IM: Kernel = Kernel::new(FILE, "col2im_v2_f32");
const BIAS_ADD: Kernel = Kernel::new(FILE, "conv_bias_add_v2_f32");
const PACK_F32: Kernel = Kernel::new(FILE, "conv_pack_weight_v2_f32");
const PACK_BF16: Kernel = Kernel::new(FILE, "conv_pack_weight_v2_bf16");
const REPACK_F32: Kernel = Kernel::new(FILE, "conv_repack_dy_v2_f32");
const REPACK_BF16: Kernel = Kernel::new(FILE, "conv_repack_dy_v2_bf16");
const DW_REDUCE: Kernel = Kernel::new(FILE, "conv_dw_reduce_v2_f32");
const TO_BF16: Kernel = Kernel::new(FILE, "conv_to_bf16");
pub const KERNELS: KernelFile = KernelFile::new(
    FILE,
    &[
        IM2COL_F32,
        IM2COL_BF16,
        COL2IM,
        BIAS_ADD,
        PACK_F32,
        PACK_BF16,
        REPACK_F32,
        REPACK_BF16,
        DW_REDUCE,
        TO_BF16,
    ],
);

/// Numerators of every [`FastDiv`] the kernels use stay below this.
const INDEX_LIMIT: usize = 1 << 31;

/// `n / d` as `(n · mul) >> shift`, exact for every `n < 2^31` (the kernels' `FastDiv`): with
/// `l = ⌈log2 d⌉`, `shift = 31 + l` and `mul = ⌈2^shift / d⌉ < 2^32`, the error of
/// `n·mul / 2^shift` against `n/d` is below `n / 2^shift · d/d < 1/d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastDiv {
    mul: u32,
    shift: u32,
}

impl FastDiv {
    /// The divisor `d`, `1 <= d < 2^31`.
    pub fn new(d: u32) -> Self {
        assert!(
            d >= 1 && (d as usize) < INDEX_LIMIT,
            "FastDiv of {d}: out of range"
        );
        let l = 32 - (d - 1).leading_zeros();
        let shift = 31 + l;
        let mul = (1u128 << shift).div_ceil(d as u128);
        let mul = u32::try_from(mul).expect("the multiplier fits u32 for d < 2^31");
        FastDiv { mul, shift }
    }

    /// `n / d` for `n < 2^31`, as the kernels compute it.
    pub fn div(&self, n: u32) -> u32 {
        ((n as u64 * self.mul as u64) >> self.shift) as u32
    }
}

/// The v2 kernels' parameters: the geometry of the launch's tile, the rows of the buffer the
/// kernel writes, whether its 4-element groups are aligned, and the divisors its index math
/// needs. Mirrors `ConvV2Params` in kernels/conv2d_v2.cu field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvV2Params {
    g: Conv2dGeometry,
    rows: u32,
    vec: u32,
    plane: FastDiv,
    ow: FastDiv,
    khkw: FastDiv,
    kw: FastDiv,
    in_plane: FastDiv,
    w: FastDiv,
    stride: FastDiv,
}
// Safety: u32 fields only (the geometry's eleven, two, then seven pairs), as the kernel's
// struct; checked by size here and by a static_assert there.
unsafe impl KernelParam for ConvV2Params {}
const _: () = assert!(std::mem::size_of::<ConvV2Params>() == 108);

impl ConvV2Params {
    /// `g` (one tile) writing `rows` rows; the caller has checked [`fits`].
    fn new(g: &Conv2dGeometry, rows: usize) -> Self {
        let d = |v: usize| FastDiv::new(v as u32);
        ConvV2Params {
            g: *g,
            rows: rows as u32,
            vec: 0,
            plane: d(g.col_cols()),
            ow: d(g.ow()),
            khkw: d(g.kh() * g.kw()),
            kw: d(g.kw()),
            in_plane: d(g.h() * g.w()),
            w: d(g.w()),
            stride: d(g.stride()),
        }
    }

    fn vec(mut self, on: bool) -> Self {
        self.vec = on as u32;
        self
    }
}

/// Whether tiles of `nb` images stay inside the kernels' 31-bit index math: positions of a
/// tile's column row, input positions of a tile, padded sides, rows.
fn fits(g: &Conv2dGeometry, nb: usize, rows: usize) -> bool {
    let ok = |v: Option<usize>| v.is_some_and(|v| v < INDEX_LIMIT);
    ok(nb.checked_mul(g.col_cols()))
        && ok(nb.checked_mul(g.h() * g.w()))
        && ok(g.h().checked_add(g.pad()))
        && ok(g.w().checked_add(g.pad()))
        && ok(Some(rows.max(g.col_rows())))
        && ok(g.o().checked_mul(rows.max(g.col_rows())))
}

/// The most images a tile may hold for [`fits`].
fn index_cap(g: &Conv2dGeometry) -> usize {
    let per = g.col_cols().max(g.h() * g.w()).max(1);
    ((INDEX_LIMIT - 1) / per).max(1)
}

fn round4(v: usize) -> usize {
    v.div_ceil(4) * 4
}

/// How the forward adds the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BiasRoute {
    /// No bias.
    None,
    /// A row of ones in the columns and the bias as the packed weight's column R: the GEMM adds
    /// it (the weight is packed once per call, |W| read and written).
    Folded,
    /// A division-free pass over y after the GEMMs (|y| read and written).
    Pass,
}

/// How the backward computes dW of a tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DwRoute {
    /// dW not asked for.
    None,
    /// dy of the tile repacked to `[O, images·OH·OW]` (db summed in the same pass), then dW
    /// one GEMM over images·OH·OW and dcol one GEMM too. Moves 2·|dy tile| extra.
    Repack,
    /// One strided-batched GEMM into per-image partials `[images, O, R(+1)]`, then a
    /// deterministic reduction over the images (db from the columns' ones row). Moves
    /// 2·images·|W| extra.
    Partials,
}

/// The forward of one convolution under v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardPlan {
    /// The GEMMs' arithmetic (bf16 becomes TF32 for a pointwise convolution).
    pub math: GemmMath,
    /// Images per tile (the whole batch when pointwise: x is its own column matrix).
    pub tile: usize,
    /// Rows of the column buffer, and K of the forward GEMM.
    pub rows: usize,
    pub bias: BiasRoute,
    /// Whether the weight is packed (bias column, bf16) before the GEMMs.
    pub pack: bool,
}

/// The backward of one convolution under v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackwardPlan {
    pub math: GemmMath,
    pub tile: usize,
    /// Rows of the column buffer (R, or past the ones row when db comes from the partials).
    pub rows: usize,
    pub dw: DwRoute,
    /// db from the dW route (the repack pass, or the partials' ones column unless the operands
    /// are bf16), not a pass of its own over dy.
    pub db_with_dw: bool,
    /// Row stride of the partials.
    pub partial_ld: usize,
}

fn pointwise_math(m: GemmMath) -> GemmMath {
    if m == GemmMath::Bf16 {
        GemmMath::Tf32
    } else {
        m
    }
}

fn elem_floats(m: GemmMath, elems: usize) -> usize {
    if m == GemmMath::Bf16 {
        elems.div_ceil(2)
    } else {
        elems
    }
}

/// The forward's plan; `force` replaces the automatic bias route (`None` stays `None`
/// without a bias).
pub fn forward_plan(
    g: &Conv2dGeometry,
    has_bias: bool,
    math: GemmMath,
    workspace_floats: usize,
    force: Option<BiasRoute>,
) -> ForwardPlan {
    let (r, p) = (g.col_rows(), g.col_cols());
    let auto = if r < g.n() * p {
        BiasRoute::Folded
    } else {
        BiasRoute::Pass
    };
    let bias = match (has_bias, force) {
        (false, _) | (true, Some(BiasRoute::None)) => BiasRoute::None,
        (true, Some(f)) => f,
        (true, None) => auto,
    };
    if g.is_pointwise() {
        let bias = if bias == BiasRoute::None {
            BiasRoute::None
        } else {
            BiasRoute::Pass
        };
        return ForwardPlan {
            math: pointwise_math(math),
            tile: g.n().max(1),
            rows: r,
            bias,
            pack: false,
        };
    }
    let rows = if bias == BiasRoute::Folded {
        round4(r + 1)
    } else {
        r
    };
    let per_image = elem_floats(math, rows * p);
    let tile = images_per_tile(per_image, g.n(), workspace_floats).min(index_cap(g));
    ForwardPlan {
        math,
        tile,
        rows,
        bias,
        pack: bias == BiasRoute::Folded || math == GemmMath::Bf16,
    }
}

/// The backward's plan; `force` replaces the automatic dW route when dW is asked for.
pub fn backward_plan(
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    math: GemmMath,
    workspace_floats: usize,
    force: Option<DwRoute>,
) -> BackwardPlan {
    let (r, p, o) = (g.col_rows(), g.col_cols(), g.o());
    if g.is_pointwise() {
        let dw = if needs.dw {
            DwRoute::Partials
        } else {
            DwRoute::None
        };
        let ld = round4(r);
        let tile = images_per_tile(o * ld, g.n(), workspace_floats);
        return BackwardPlan {
            math: pointwise_math(math),
            tile,
            rows: r,
            dw,
            db_with_dw: false,
            partial_ld: ld,
        };
    }
    let auto = if p < round4(r + 1) {
        DwRoute::Repack
    } else {
        DwRoute::Partials
    };
    let dw = match (needs.dw, force) {
        (false, _) => DwRoute::None,
        (true, Some(DwRoute::None) | None) => auto,
        (true, Some(f)) => f,
    };
    let bf16 = math == GemmMath::Bf16;
    // db from the repack pass (an f32 sum), or from the partials' ones column in f32 or TF32;
    // with bf16 operands that column would sum bf16-rounded dy, so db gets its own pass.
    let db_with_dw = needs.db
        && match dw {
            DwRoute::Repack => true,
            DwRoute::Partials => !bf16,
            DwRoute::None => false,
        };
    let rows = if dw == DwRoute::Partials && db_with_dw {
        round4(r + 1)
    } else {
        r
    };
    let partial_ld = round4(if db_with_dw { r + 1 } else { r });
    // Per image, every buffer a tile holds: the columns (f32 ones double as dcol), dcol of its
    // own with bf16 columns, the repacked or converted dy, the partials.
    let mut per = 0;
    if needs.dw {
        per += elem_floats(math, rows * p);
    }
    if needs.dx && (bf16 || !needs.dw) {
        per += r * p;
    }
    if dw == DwRoute::Repack || (bf16 && (needs.dx || dw == DwRoute::Partials)) {
        per += elem_floats(math, o * p);
    }
    if dw == DwRoute::Partials {
        per += o * partial_ld;
    }
    let tile = images_per_tile(per, g.n(), workspace_floats).min(index_cap(g));
    BackwardPlan {
        math,
        tile,
        rows,
        dw,
        db_with_dw,
        partial_ld,
    }
}

/// An element type of GEMM operands: f32, or bf16 as u16 bit patterns.
pub trait Operand: DeviceScalar + 'static {
    const IM2COL: Kernel;
    const PACK: Kernel;
    const REPACK: Kernel;
    /// `C = op(A)·op(B)` as `g` describes, in `math` (f32 operands) or bf16.
    fn gemm(
        dev: &CudaDevice,
        g: &RowMajorGemm,
        math: GemmMath,
        a: &impl GpuRead<Self>,
        b: &impl GpuRead<Self>,
        c: &mut impl GpuWrite<f32>,
    ) -> Result<()>;
}

impl Operand for f32 {
    const IM2COL: Kernel = IM2COL_F32;
    const PACK: Kernel = PACK_F32;
    const REPACK: Kernel = REPACK_F32;
    fn gemm(
        dev: &CudaDevice,
        g: &RowMajorGemm,
        math: GemmMath,
        a: &impl GpuRead<f32>,
        b: &impl GpuRead<f32>,
        c: &mut impl GpuWrite<f32>,
    ) -> Result<()> {
        gemm_f32(dev, g, math, a, b, c)
    }
}

impl Operand for u16 {
    const IM2COL: Kernel = IM2COL_BF16;
    const PACK: Kernel = PACK_BF16;
    const REPACK: Kernel = REPACK_BF16;
    fn gemm(
        dev: &CudaDevice,
        g: &RowMajorGemm,
        _: GemmMath,
        a: &impl GpuRead<u16>,
        b: &impl GpuRead<u16>,
        c: &mut impl GpuWrite<f32>,
    ) -> Result<()> {
        gemm_bf16(dev, g, a, b, c)
    }
}

/// Blocks of 256 threads: `x_threads` along x (capped, the kernels loop), `y` items along y.
fn grid2(x_threads: usize, y: usize) -> Option<LaunchConfig> {
    if x_threads == 0 || y == 0 {
        return None;
    }
    let gx = x_threads.div_ceil(launch::BLOCK as usize).clamp(1, 65_535) as u32;
    let gy = y.clamp(1, 65_535) as u32;
    Some(LaunchConfig {
        grid_dim: (gx, gy, 1),
        block_dim: (launch::BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn aligned<T>(b: &impl GpuRead<T>, elems: usize) -> bool {
    b.addr() % (elems * std::mem::size_of::<T>()) as u64 == 0
}

/// The column buffer `[rows, nb·P]` of tile `gt` from its images `x`.
pub fn im2col<T: Operand>(
    dev: &CudaDevice,
    gt: &Conv2dGeometry,
    rows: usize,
    x: &impl GpuRead<f32>,
    col: &mut impl GpuWrite<T>,
) -> Result<()> {
    let len = gt.n() * gt.col_cols();
    check_len_at_least("im2col: x", x.len(), gt.x_len())?;
    check_len_at_least("im2col: columns", col.len(), rows * len)?;
    let p = ConvV2Params::new(gt, rows).vec(len.is_multiple_of(4) && aligned(col, 4));
    dev.launch(T::IM2COL)
        .arg(&p)
        .buf(x)
        .out(col)
        .run(grid2(len.div_ceil(4), rows))
}

/// dx of tile `gt` (overwritten) from dcol, whose first C·kh·kw rows are `[·, nb·P]`.
pub fn col2im(
    dev: &CudaDevice,
    gt: &Conv2dGeometry,
    dcol: &impl GpuRead<f32>,
    dx: &mut impl GpuWrite<f32>,
) -> Result<()> {
    check_len_at_least("col2im: dcol", dcol.len(), gt.col_len())?;
    check_len_at_least("col2im: dx", dx.len(), gt.x_len())?;
    let p = ConvV2Params::new(gt, gt.col_rows());
    dev.launch(COL2IM)
        .arg(&p)
        .buf(dcol)
        .out(dx)
        .run(grid2(gt.n() * gt.h() * gt.w(), gt.c()))
}

/// y `[n, O, P]` += b (the whole batch of `g`).
pub fn bias_add(
    dev: &CudaDevice,
    g: &Conv2dGeometry,
    y: &mut GpuBuffer<f32>,
    b: &GpuBuffer<f32>,
) -> Result<()> {
    let p = ConvV2Params::new(g, 0).vec(g.col_cols().is_multiple_of(4) && aligned(y, 4));
    let len = g.n() * g.col_cols();
    dev.launch(BIAS_ADD)
        .arg(&p)
        .out(y)
        .buf(b)
        .run(grid2(len.div_ceil(4), g.o()))
}

/// The weight `[O, rows]`: w, the bias in column R (when given), zeros.
pub fn pack_weight<T: Operand>(
    dev: &CudaDevice,
    g: &Conv2dGeometry,
    rows: usize,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
) -> Result<GpuBuffer<T>> {
    let mut wp = dev.alloc::<T>(g.o() * rows)?;
    let p = ConvV2Params::new(g, rows);
    let has = b.is_some() as u32;
    dev.launch(T::PACK)
        .arg(&p)
        .buf(w)
        .buf(b.unwrap_or(w))
        .arg(&has)
        .out(&mut wp)
        .run(grid2(rows, g.o()))?;
    Ok(wp)
}

/// dy of tile `gt` as `[O, nb·P]` (in T), and db (+= when `accumulate`) when given.
pub fn repack_dy<T: Operand>(
    dev: &CudaDevice,
    gt: &Conv2dGeometry,
    dy: &impl GpuRead<f32>,
    dyr: &mut impl GpuWrite<T>,
    db: Option<&mut GpuBuffer<f32>>,
    accumulate: bool,
) -> Result<()> {
    check_len_at_least("repack: dy", dy.len(), gt.y_len())?;
    check_len_at_least("repack: dyr", dyr.len(), gt.y_len())?;
    let p = ConvV2Params::new(gt, 0);
    let (want, acc) = (db.is_some() as u32, accumulate as u32);
    let mut none = dev.alloc::<f32>(0)?;
    dev.launch(T::REPACK)
        .arg(&p)
        .buf(dy)
        .arg(&want)
        .arg(&acc)
        .out(dyr)
        .out(db.unwrap_or(&mut none))
        .run(launch::per_item(gt.o() as u64))
}

/// dw `[O, R]` (and db from column R when given) = Σ over the tile's images of the partials
/// `[nb, O, ld]`, added to what they hold when `accumulate`.
pub fn dw_reduce(
    dev: &CudaDevice,
    gt: &Conv2dGeometry,
    part: &impl GpuRead<f32>,
    ld: usize,
    dw: &mut GpuBuffer<f32>,
    db: Option<&mut GpuBuffer<f32>>,
    accumulate: bool,
) -> Result<()> {
    let r = gt.col_rows();
    check_len_at_least("dW reduce: partials", part.len(), gt.n() * gt.o() * ld)?;
    let p = ConvV2Params::new(gt, 0);
    let (want, acc, ld32) = (db.is_some() as u32, accumulate as u32, ld as u32);
    let mut none = dev.alloc::<f32>(0)?;
    let cols = r + want as usize;
    dev.launch(DW_REDUCE)
        .arg(&p)
        .buf(part)
        .arg(&ld32)
        .arg(&want)
        .arg(&acc)
        .out(dw)
        .out(db.unwrap_or(&mut none))
        .run(grid2(cols, gt.o()))
}

/// `out = bf16(x)`, elementwise.
pub fn to_bf16(
    dev: &CudaDevice,
    x: &impl GpuRead<f32>,
    out: &mut impl GpuWrite<u16>,
) -> Result<()> {
    check_len_at_least("to_bf16: out", out.len(), x.len())?;
    let n = x.len() as u64;
    dev.launch(TO_BF16).buf(x).arg(&n).out(out).run(dev.cfg(n))
}

fn check_len_at_least(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(crate::error::Error::shape(
            "conv2d v2 (cuda)",
            format!("{what} holds {have} elements, needs {need}"),
        ));
    }
    Ok(())
}

/// `Y_i[O, P] = A[O, K] · col_i` for the `nb` images of a tile, the columns `[rows, nb·P]`
/// (image i at column offset i·P), A the weight (or its packed form) with row stride `lda`.
pub fn forward_gemm_v2(gt: &Conv2dGeometry, k: usize, lda: usize) -> RowMajorGemm {
    let (nb, p, o) = (gt.n(), gt.col_cols(), gt.o());
    let mut m = RowMajorGemm::packed(o, p, k, false, false);
    m.lda = lda;
    m.ldb = nb * p;
    m.batch = nb;
    m.stride_a = 0;
    m.stride_b = p;
    m.stride_c = o * p;
    m
}

/// `dW[O, R] = dyr[O, nb·P] · col[0..R]ᵀ`, one GEMM over the tile (beta 1 after the first).
pub fn dw_gemm_repacked(gt: &Conv2dGeometry, accumulate: bool) -> RowMajorGemm {
    let len = gt.n() * gt.col_cols();
    let mut m = RowMajorGemm::packed(gt.o(), gt.col_rows(), len, false, true);
    m.beta = if accumulate { 1.0 } else { 0.0 };
    m
}

/// `part_i[O, cols] = dY_i[O, P] · col_i[0..cols]ᵀ` for the tile's images (strided batch);
/// `col_ld` is the columns' row stride (nb·P, or P when x is its own column matrix, whose
/// images are then `img_stride` apart).
pub fn dw_gemm_partials(
    gt: &Conv2dGeometry,
    cols: usize,
    ld: usize,
    col_ld: usize,
    img_stride: usize,
) -> RowMajorGemm {
    let (nb, p, o) = (gt.n(), gt.col_cols(), gt.o());
    let mut m = RowMajorGemm::packed(o, cols, p, false, true);
    m.ldb = col_ld;
    m.ldc = ld;
    m.batch = nb;
    m.stride_a = o * p;
    m.stride_b = img_stride;
    m.stride_c = o * ld;
    m
}

/// `dcol[R, nb·P] = Wᵀ · dyr[O, nb·P]`, one GEMM (W with row stride `lda`).
pub fn dx_gemm_repacked(gt: &Conv2dGeometry, lda: usize) -> RowMajorGemm {
    let len = gt.n() * gt.col_cols();
    let mut m = RowMajorGemm::packed(gt.col_rows(), len, gt.o(), true, false);
    m.lda = lda;
    m
}

/// `dcol_i[R, P] = Wᵀ · dY_i` for the tile's images into the columns' layout.
pub fn dx_gemm_batched(gt: &Conv2dGeometry, lda: usize) -> RowMajorGemm {
    let (nb, p, o, r) = (gt.n(), gt.col_cols(), gt.o(), gt.col_rows());
    let mut m = RowMajorGemm::packed(r, p, o, true, false);
    m.lda = lda;
    m.ldc = nb * p;
    m.batch = nb;
    m.stride_a = 0;
    m.stride_b = o * p;
    m.stride_c = p;
    m
}

/// The [`ConvRun`] of v1 with the plan's arithmetic and the same workspace, for sizes v2
/// cannot index (v1 refuses bf16 with a clear error).
fn v1(run: &ConvRun, math: GemmMath) -> ConvRun {
    ConvRun {
        version: ConvVersion::V1,
        math,
        ..*run
    }
}

/// y `[n, o, oh, ow]` = conv(x, w) + b, v2.
pub fn forward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    g: &Conv2dGeometry,
    run: &ConvRun,
) -> Result<GpuBuffer<f32>> {
    check_inputs(g, x, w, b)?;
    let plan = forward_plan(g, b.is_some(), run.math, run.workspace_floats, run.bias);
    if !fits(g, plan.tile, plan.rows) {
        return super::cuda::forward_run(dev, x, w, b, g, &v1(run, plan.math));
    }
    if plan.math == GemmMath::Bf16 {
        forward_with::<u16>(dev, x, w, b, g, &plan)
    } else {
        forward_with::<f32>(dev, x, w, b, g, &plan)
    }
}

fn forward_with<T: Operand>(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    b: Option<&GpuBuffer<f32>>,
    g: &Conv2dGeometry,
    plan: &ForwardPlan,
) -> Result<GpuBuffer<f32>> {
    let mut y = dev.alloc::<f32>(g.y_len())?;
    if g.n() > 0 {
        if g.is_pointwise() {
            gemm_f32(dev, &forward_gemm(g), plan.math, w, x, &mut y)?;
        } else {
            let (ximg, yimg, p) = (g.x_image(), g.y_image(), g.col_cols());
            let folded = plan.bias == BiasRoute::Folded;
            let wp = plan
                .pack
                .then(|| pack_weight::<T>(dev, g, plan.rows, w, b.filter(|_| folded)))
                .transpose()?;
            let (k, lda) = match wp {
                Some(_) if folded => (plan.rows, plan.rows),
                Some(_) => (g.col_rows(), plan.rows),
                None => (g.col_rows(), g.col_rows()),
            };
            let mut col = dev.alloc::<T>(plan.rows * plan.tile * p)?;
            for (n0, nb) in tiles(g.n(), plan.tile) {
                let gt = g.tile(nb);
                im2col(
                    dev,
                    &gt,
                    plan.rows,
                    &x.view(images(n0, nb, ximg))?,
                    &mut col,
                )?;
                let mut yv = y.view_mut(images(n0, nb, yimg))?;
                let gemm = forward_gemm_v2(&gt, k, lda);
                match &wp {
                    Some(wp) => T::gemm(dev, &gemm, plan.math, wp, &col, &mut yv)?,
                    None => {
                        let w = as_operand::<T>(w).expect("f32 when the weight is not packed");
                        T::gemm(dev, &gemm, plan.math, w, &col, &mut yv)?
                    }
                }
            }
        }
    }
    if let (BiasRoute::Pass, Some(b)) = (plan.bias, b) {
        bias_add(dev, g, &mut y, b)?;
    }
    Ok(y)
}

/// `b` as a buffer of T when T is f32.
fn as_operand<T: Operand>(b: &GpuBuffer<f32>) -> Option<&GpuBuffer<T>> {
    (b as &dyn Any).downcast_ref::<GpuBuffer<T>>()
}

/// Backward of [`forward`] given dy `[n, o, oh, ow]`, v2.
pub fn backward(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    run: &ConvRun,
) -> Result<Conv2dGrads<GpuBuffer<f32>>> {
    check_inputs(g, x, w, None)?;
    check_len("conv2d (cuda)", "dy", dy, g.y_len())?;
    let plan = backward_plan(g, needs, run.math, run.workspace_floats, run.dw);
    if !fits(g, plan.tile, plan.rows) {
        return super::cuda::backward_run(dev, x, w, dy, g, needs, &v1(run, plan.math));
    }
    if g.is_pointwise() {
        return backward_pointwise(dev, x, w, dy, g, needs, &plan);
    }
    if plan.math == GemmMath::Bf16 {
        backward_with::<u16>(dev, x, w, dy, g, needs, &plan)
    } else {
        backward_with::<f32>(dev, x, w, dy, g, needs, &plan)
    }
}

/// dW (partials over tiles of images, x as the columns), dX (one batched GEMM), db (a pass).
fn backward_pointwise(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    plan: &BackwardPlan,
) -> Result<Conv2dGrads<GpuBuffer<f32>>> {
    let (ximg, yimg, p, c) = (g.x_image(), g.y_image(), g.col_cols(), g.c());
    let mut dw = None;
    if needs.dw {
        let mut d = dev.alloc_zeros::<f32>(g.w_len())?;
        let mut part = dev.alloc::<f32>(plan.tile * g.o() * plan.partial_ld)?;
        for (n0, nb) in tiles(g.n(), plan.tile) {
            let gt = g.tile(nb);
            let gemm = dw_gemm_partials(&gt, c, plan.partial_ld, p, c * p);
            let (dyv, xv) = (
                dy.view(images(n0, nb, yimg))?,
                x.view(images(n0, nb, ximg))?,
            );
            gemm_f32(dev, &gemm, plan.math, &dyv, &xv, &mut part)?;
            dw_reduce(dev, &gt, &part, plan.partial_ld, &mut d, None, n0 > 0)?;
        }
        dw = Some(d);
    }
    let mut dx = None;
    if needs.dx {
        let mut d = dev.alloc::<f32>(g.x_len())?;
        if g.n() > 0 {
            gemm_f32(dev, &input_grad_gemm(g), plan.math, w, dy, &mut d)?;
        }
        dx = Some(d);
    }
    let db = needs.db.then(|| bias_grad(dev, dy, g)).transpose()?;
    Ok(Conv2dGrads { dx, dw, db })
}

#[allow(clippy::too_many_arguments)]
fn backward_with<T: Operand>(
    dev: &CudaDevice,
    x: &GpuBuffer<f32>,
    w: &GpuBuffer<f32>,
    dy: &GpuBuffer<f32>,
    g: &Conv2dGeometry,
    needs: Conv2dNeeds,
    plan: &BackwardPlan,
) -> Result<Conv2dGrads<GpuBuffer<f32>>> {
    let (ximg, yimg, p, r, o) = (g.x_image(), g.y_image(), g.col_cols(), g.col_rows(), g.o());
    let (tile, bf16) = (plan.tile, plan.math == GemmMath::Bf16);
    let empty = g.n() == 0;
    let alloc = |n: usize| {
        if empty {
            dev.alloc_zeros::<f32>(n)
        } else {
            dev.alloc::<f32>(n)
        }
    };
    let mut dw = needs.dw.then(|| alloc(g.w_len())).transpose()?;
    let mut db = plan.db_with_dw.then(|| alloc(o)).transpose()?;
    let mut dx = needs.dx.then(|| dev.alloc::<f32>(g.x_len())).transpose()?;
    if !empty && (needs.dw || needs.dx) {
        let repack = plan.dw == DwRoute::Repack;
        let mut col = needs
            .dw
            .then(|| dev.alloc::<T>(plan.rows * tile * p))
            .transpose()?;
        let share = col.is_some() && !bf16;
        let mut dcol_own = (needs.dx && !share)
            .then(|| dev.alloc::<f32>(r * tile * p))
            .transpose()?;
        // dy of a tile in T: repacked [O, nb·P], or (bf16 only) converted in place of layout
        let mut dyt = (repack || (bf16 && (needs.dx || plan.dw == DwRoute::Partials)))
            .then(|| dev.alloc::<T>(o * tile * p))
            .transpose()?;
        let mut part = (plan.dw == DwRoute::Partials)
            .then(|| dev.alloc::<f32>(tile * o * plan.partial_ld))
            .transpose()?;
        // The weight as a dX operand: as is (f32), or bf16 [O, R].
        let w16 = (bf16 && needs.dx)
            .then(|| pack_weight::<T>(dev, g, r, w, None))
            .transpose()?;
        for (n0, nb) in tiles(g.n(), tile) {
            let gt = g.tile(nb);
            let acc = n0 > 0;
            let dyv = dy.view(images(n0, nb, yimg))?;
            if let Some(dyt) = dyt.as_mut() {
                if repack {
                    repack_dy::<T>(dev, &gt, &dyv, dyt, db.as_mut(), acc)?;
                } else {
                    let t = as_operand_mut::<u16, T>(dyt).expect("converted dy is bf16");
                    to_bf16(dev, &dyv, t)?;
                }
            }
            if let (Some(dw), Some(col)) = (dw.as_mut(), col.as_mut()) {
                im2col(dev, &gt, plan.rows, &x.view(images(n0, nb, ximg))?, col)?;
                if repack {
                    let dyr = dyt.as_ref().expect("repacked dy");
                    T::gemm(dev, &dw_gemm_repacked(&gt, acc), plan.math, dyr, col, dw)?;
                } else {
                    let part = part.as_mut().expect("partials");
                    let cols = if plan.db_with_dw { r + 1 } else { r };
                    let gemm = dw_gemm_partials(&gt, cols, plan.partial_ld, nb * p, p);
                    match dyt.as_ref() {
                        Some(d16) => T::gemm(dev, &gemm, plan.math, d16, col, part)?,
                        None => {
                            let dyv = as_operand::<T>(dy).expect("f32 dy");
                            let dyv = dyv.view(images(n0, nb, yimg))?;
                            T::gemm(dev, &gemm, plan.math, &dyv, col, part)?
                        }
                    }
                    dw_reduce(dev, &gt, part, plan.partial_ld, dw, db.as_mut(), acc)?;
                }
            }
            if let Some(dx) = dx.as_mut() {
                let dcol: &mut GpuBuffer<f32> = match dcol_own.as_mut() {
                    Some(d) => d,
                    None => as_operand_mut::<f32, T>(col.as_mut().expect("columns"))
                        .expect("f32 columns double as dcol"),
                };
                let lda = r;
                match (repack, dyt.as_ref(), w16.as_ref()) {
                    (true, Some(dyr), Some(w16)) => {
                        T::gemm(dev, &dx_gemm_repacked(&gt, lda), plan.math, w16, dyr, dcol)?
                    }
                    (true, Some(dyr), None) => {
                        let w = as_operand::<T>(w).expect("f32 weight");
                        T::gemm(dev, &dx_gemm_repacked(&gt, lda), plan.math, w, dyr, dcol)?
                    }
                    (false, Some(d16), Some(w16)) => {
                        T::gemm(dev, &dx_gemm_batched(&gt, lda), plan.math, w16, d16, dcol)?
                    }
                    _ => {
                        let gemm = dx_gemm_batched(&gt, lda);
                        gemm_f32(dev, &gemm, plan.math, w, &dyv, dcol)?
                    }
                }
                col2im(dev, &gt, dcol, &mut dx.view_mut(images(n0, nb, ximg))?)?;
            }
        }
    }
    if needs.db && !plan.db_with_dw {
        db = Some(bias_grad(dev, dy, g)?);
    }
    Ok(Conv2dGrads {
        dx,
        dw,
        db: db.filter(|_| needs.db),
    })
}

/// `b` (a buffer of T) as a buffer of U when U is T.
fn as_operand_mut<U: DeviceScalar + 'static, T: Operand>(
    b: &mut GpuBuffer<T>,
) -> Option<&mut GpuBuffer<U>> {
    (b as &mut dyn Any).downcast_mut::<GpuBuffer<U>>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_division_is_exact_below_2_pow_31() {
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut divisors: Vec<u32> = (1..=1100).collect();
        divisors.extend([
            (1 << 16) - 1,
            1 << 16,
            (1 << 16) + 1,
            65_536 * 3,
            (1 << 30) + 1,
        ]);
        divisors.extend([(1u32 << 31) - 1, (1 << 31) - 2, 46_341, 1 << 30]);
        for _ in 0..2000 {
            divisors.push((next() % ((1 << 31) - 1)) as u32 + 1);
        }
        for &d in &divisors {
            let f = FastDiv::new(d);
            let check = |n: u32| assert_eq!(f.div(n), n / d, "{n} / {d}");
            for n in [0, 1, d - 1, d, d + 1, (1 << 31) - 1, (1 << 31) - 2] {
                if (n as usize) < INDEX_LIMIT {
                    check(n);
                }
            }
            for k in [1u64, 2, 3, 1000, 65_535] {
                for e in [-1i64, 0, 1] {
                    let n = k as i64 * d as i64 + e;
                    if n >= 0 && (n as usize) < INDEX_LIMIT {
                        check(n as u32);
                    }
                }
            }
            for _ in 0..50 {
                check((next() % INDEX_LIMIT as u64) as u32);
            }
        }
    }

    fn geo(x: [usize; 4], o: usize, k: usize, stride: usize, padding: usize) -> Conv2dGeometry {
        Conv2dGeometry::from_dims(
            x,
            [o, x[1], k, k],
            super::super::Conv2dArgs { stride, padding },
        )
        .unwrap()
    }

    #[test]
    fn plans_fold_the_bias_and_pick_the_cheaper_dw_route() {
        let needs = Conv2dNeeds {
            dx: true,
            dw: true,
            db: true,
        };
        // VGG conv1_2 at batch 8: the weight is tiny beside y, positions outnumber rows
        let g = geo([8, 64, 256, 256], 64, 3, 1, 1);
        let f = forward_plan(&g, true, GemmMath::Tf32, 64 << 20, None);
        assert_eq!((f.bias, f.rows, f.pack), (BiasRoute::Folded, 580, true));
        assert_eq!(
            f.tile, 1,
            "one image of 580 x 65536 columns fills the workspace"
        );
        let b = backward_plan(&g, needs, GemmMath::Tf32, 64 << 20, None);
        assert_eq!((b.dw, b.rows, b.db_with_dw), (DwRoute::Partials, 580, true));
        // with bf16 operands db is summed in f32 by its own pass, not by a bf16 ones column
        let b = backward_plan(&g, needs, GemmMath::Bf16, 64 << 20, None);
        assert_eq!(
            (b.dw, b.rows, b.db_with_dw),
            (DwRoute::Partials, 576, false)
        );
        // conv5 at 16x16: the weight outweighs y, rows outnumber positions
        let g = geo([8, 512, 16, 16], 512, 3, 1, 1);
        let f = forward_plan(&g, true, GemmMath::Tf32, 64 << 20, None);
        assert_eq!((f.bias, f.rows, f.pack), (BiasRoute::Pass, 4608, false));
        assert_eq!(f.tile, 8);
        let b = backward_plan(&g, needs, GemmMath::Tf32, 64 << 20, None);
        assert_eq!((b.dw, b.rows, b.tile), (DwRoute::Repack, 4608, 8));
        // no bias: nothing packed in f32, the weight packed to bf16 otherwise
        let f = forward_plan(&g, false, GemmMath::Fp32, 64 << 20, None);
        assert_eq!((f.bias, f.pack), (BiasRoute::None, false));
        let f = forward_plan(&g, false, GemmMath::Bf16, 64 << 20, None);
        assert_eq!((f.bias, f.pack, f.rows), (BiasRoute::None, true, 4608));
        // forced routes, and bf16 columns take half the workspace
        let f = forward_plan(&g, true, GemmMath::Bf16, 64 << 20, Some(BiasRoute::Folded));
        assert_eq!((f.bias, f.rows), (BiasRoute::Folded, 4612));
        let b = backward_plan(&g, needs, GemmMath::Fp32, 64 << 20, Some(DwRoute::Partials));
        assert_eq!(
            (b.dw, b.rows, b.partial_ld),
            (DwRoute::Partials, 4612, 4612)
        );
        // a pointwise convolution: x is the column matrix, bf16 runs in TF32
        let g = geo([8, 512, 32, 32], 16, 1, 1, 0);
        let f = forward_plan(&g, true, GemmMath::Bf16, 64 << 20, None);
        assert_eq!(
            (f.bias, f.math, f.tile),
            (BiasRoute::Pass, GemmMath::Tf32, 8)
        );
        let b = backward_plan(&g, needs, GemmMath::Bf16, 64 << 20, None);
        assert_eq!(
            (b.dw, b.math, b.db_with_dw),
            (DwRoute::Partials, GemmMath::Tf32, false)
        );
    }

    #[test]
    fn tiles_respect_the_workspace_and_the_index_range() {
        let g = geo([3, 17, 13, 19], 33, 3, 1, 1);
        let needs = Conv2dNeeds {
            dx: true,
            dw: true,
            db: false,
        };
        let f = forward_plan(&g, false, GemmMath::Fp32, g.col_image(), None);
        assert_eq!(f.tile, 1);
        let b = backward_plan(&g, needs, GemmMath::Fp32, 1, None);
        assert_eq!(b.tile, 1, "at least one image");
        let b = backward_plan(&g, needs, GemmMath::Fp32, usize::MAX, None);
        assert_eq!(b.tile, 3);
        assert!(fits(&g, 3, b.rows));
        // 2^31 positions in one image cannot be indexed by the v2 kernels
        let big = geo([1, 1, 1 << 16, 1 << 15], 1, 3, 1, 1);
        assert!(!fits(&big, 1, 9));
        assert_eq!(index_cap(&big), 1);
    }
}
