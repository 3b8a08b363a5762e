//! Row-major SGEMM on cuBLAS (column-major) through the operand swap: a row-major matrix
//! `X[r×c]` with row stride `ld` is, read column-major, `Xᵀ[c×r]` with leading dimension `ld`.
//! So `C = op(A)·op(B)` (row-major) is `Cᵀ = op(B)ᵀ·op(A)ᵀ` (column-major): cuBLAS gets
//! B as its first operand, A as its second, and m ↔ n swapped. [`to_cublas`] is that mapping
//! as a pure function, unit-tested against a CPU GEMM that follows cuBLAS's index math.
use super::{CudaDevice, GpuRead, GpuWrite};
use crate::error::{Error, Result};

/// `C[b] = alpha·op(A[b])·op(B[b]) + beta·C[b]` for `b < batch`, all row-major.
/// `op(A)` is `m×k`: A is stored `m×k` (row stride `lda`), or `k×m` when `trans_a`.
/// `op(B)` is `k×n`: B is stored `k×n` (row stride `ldb`), or `n×k` when `trans_b`.
/// C is `m×n` with row stride `ldc`. Batch strides are in elements; 0 broadcasts an operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowMajorGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl RowMajorGemm {
    /// Densely packed operands, alpha 1, beta 0, one matrix.
    pub fn packed(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        RowMajorGemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldc: n,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }

    /// (rows, cols) of A and B as stored.
    fn stored_a(&self) -> (usize, usize) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }
    fn stored_b(&self) -> (usize, usize) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }

    /// Elements an operand buffer must hold.
    fn required(rows: usize, cols: usize, ld: usize, batch: usize, stride: usize) -> usize {
        if rows == 0 || cols == 0 || batch == 0 {
            return 0;
        }
        (batch - 1) * stride + (rows - 1) * ld + cols
    }
    pub fn required_len_a(&self) -> usize {
        let (r, c) = self.stored_a();
        Self::required(r, c, self.lda, self.batch, self.stride_a)
    }
    pub fn required_len_b(&self) -> usize {
        let (r, c) = self.stored_b();
        Self::required(r, c, self.ldb, self.batch, self.stride_b)
    }
    pub fn required_len_c(&self) -> usize {
        Self::required(self.m, self.n, self.ldc, self.batch, self.stride_c)
    }
}

/// Arguments of `cublasSgemm(StridedBatched)` (column-major), first operand = our B.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CublasGemm {
    pub transa: bool,
    pub transb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    pub alpha: f32,
    pub beta: f32,
    pub batch: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
}

fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::shape("sgemm", format!("{what} = {v} exceeds cuBLAS's i32")))
}
fn to_i64(what: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::shape("sgemm", format!("{what} = {v} exceeds i64")))
}

/// The row-major → cuBLAS mapping, with the leading dimensions validated (each at least the
/// stored row length and at least 1, as cuBLAS requires) and every size checked to fit.
pub fn to_cublas(g: &RowMajorGemm) -> Result<CublasGemm> {
    let (_, a_cols) = g.stored_a();
    let (_, b_cols) = g.stored_b();
    for (name, ld, cols) in [
        ("lda", g.lda, a_cols),
        ("ldb", g.ldb, b_cols),
        ("ldc", g.ldc, g.n),
    ] {
        if ld < cols.max(1) {
            return Err(Error::shape(
                "sgemm",
                format!(
                    "{name} = {ld} is smaller than the stored row length {cols} (m={}, n={}, k={})",
                    g.m, g.n, g.k
                ),
            ));
        }
    }
    if g.batch == 0 {
        return Err(Error::shape("sgemm", "batch of 0 matrices"));
    }
    Ok(CublasGemm {
        transa: g.trans_b,
        transb: g.trans_a,
        m: to_i32("n", g.n)?,
        n: to_i32("m", g.m)?,
        k: to_i32("k", g.k)?,
        lda: to_i32("ldb", g.ldb)?,
        ldb: to_i32("lda", g.lda)?,
        ldc: to_i32("ldc", g.ldc)?,
        alpha: g.alpha,
        beta: g.beta,
        batch: to_i32("batch", g.batch)?,
        stride_a: to_i64("stride_b", g.stride_b)?,
        stride_b: to_i64("stride_a", g.stride_a)?,
        stride_c: to_i64("stride_c", g.stride_c)?,
    })
}

/// The arithmetic of a GEMM issued with an explicit compute type (`cublasGemmStridedBatchedEx`),
/// whatever the handle's math mode: the convolutions choose theirs per call (`ops::conv2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmMath {
    /// FP32 operands, FP32 products and sums (`CUBLAS_COMPUTE_32F`; SIMT on every GPU).
    Fp32,
    /// FP32 operands read as TF32 by tensor cores (10-bit mantissa), FP32 accumulation
    /// (`CUBLAS_COMPUTE_32F_FAST_TF32`; compute capability 8.0 and later).
    Tf32,
    /// bf16 operands (8-bit mantissa, converted by the caller), FP32 accumulation and output
    /// (`CUDA_R_16BF` A and B, `CUBLAS_COMPUTE_32F`; compute capability 8.0 and later).
    Bf16,
}

impl GemmMath {
    pub fn name(&self) -> &'static str {
        match self {
            GemmMath::Fp32 => "fp32",
            GemmMath::Tf32 => "tf32",
            GemmMath::Bf16 => "bf16",
        }
    }
}

/// Checks the operand buffers against what `g` addresses.
fn check_operands(g: &RowMajorGemm, a: usize, b: usize, c: usize) -> Result<()> {
    for (name, have, need) in [
        ("A", a, g.required_len_a()),
        ("B", b, g.required_len_b()),
        ("C", c, g.required_len_c()),
    ] {
        if have < need {
            return Err(Error::shape(
                "sgemm (cuda)",
                format!("operand {name} holds {have} elements, needs {need} for {g:?}"),
            ));
        }
    }
    Ok(())
}

/// `g` with FP32 operands and output in `math` (`Fp32` or `Tf32`), through
/// `cublasGemmStridedBatchedEx`, whatever the handle's math mode ([`CudaDevice::set_tf32`],
/// which governs [`sgemm`]): `Fp32` stays strict FP32 even when the handle allows TF32.
pub fn gemm_f32(
    dev: &CudaDevice,
    g: &RowMajorGemm,
    math: GemmMath,
    a: &impl GpuRead<f32>,
    b: &impl GpuRead<f32>,
    c: &mut impl GpuWrite<f32>,
) -> Result<()> {
    if math == GemmMath::Bf16 {
        return Err(Error::Device(
            "gemm_f32: bf16 math needs bf16 operands (gemm_bf16)".into(),
        ));
    }
    gemm_ex(dev, g, math, (a.addr(), a.len()), (b.addr(), b.len()), c)
}

/// `g` with bf16 operands (`u16` bit patterns, as `ops::conv2d`'s kernels write them) and an
/// FP32 output, FP32 accumulation.
pub fn gemm_bf16(
    dev: &CudaDevice,
    g: &RowMajorGemm,
    a: &impl GpuRead<u16>,
    b: &impl GpuRead<u16>,
    c: &mut impl GpuWrite<f32>,
) -> Result<()> {
    gemm_ex(
        dev,
        g,
        GemmMath::Bf16,
        (a.addr(), a.len()),
        (b.addr(), b.len()),
        c,
    )
}

fn gemm_ex(
    dev: &CudaDevice,
    g: &RowMajorGemm,
    math: GemmMath,
    a: (u64, usize),
    b: (u64, usize),
    c: &mut impl GpuWrite<f32>,
) -> Result<()> {
    let cb = to_cublas(g)?;
    check_operands(g, a.1, b.1, c.len())?;
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    // Safety: as in `sgemm`; the element type of A and B is the one `math` names.
    unsafe { dev.gemm_ex_col_major(&cb, math, b.0, a.0, c.addr()) }
}

/// Runs `g` on the device's cuBLAS handle (its one stream). Operand sizes are checked first.
pub fn sgemm(
    dev: &CudaDevice,
    g: &RowMajorGemm,
    a: &impl GpuRead<f32>,
    b: &impl GpuRead<f32>,
    c: &mut impl GpuWrite<f32>,
) -> Result<()> {
    let cb = to_cublas(g)?;
    check_operands(g, a.len(), b.len(), c.len())?;
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    // Column-major: cuBLAS's first operand is our B, its second our A (module docs).
    // Safety: the buffers hold at least what the dimensions, leading dimensions and strides
    // address (checked above); all three are on the device's stream.
    unsafe { dev.sgemm_col_major(&cb, b.addr(), a.addr(), c.addr()) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// cuBLAS's column-major strided-batched SGEMM, index for index (the semantics the device
    /// call has): `C = alpha·op(A)·op(B) + beta·C`, C not read when beta is 0.
    pub(crate) fn cublas_reference(g: &CublasGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
        let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
        for p in 0..g.batch as usize {
            let (ao, bo, co) = (
                p * g.stride_a as usize,
                p * g.stride_b as usize,
                p * g.stride_c as usize,
            );
            for j in 0..n {
                for i in 0..m {
                    let mut s = 0.0f64;
                    for l in 0..k {
                        let av = if g.transa {
                            a[ao + l + i * lda]
                        } else {
                            a[ao + i + l * lda]
                        };
                        let bv = if g.transb {
                            b[bo + j + l * ldb]
                        } else {
                            b[bo + l + j * ldb]
                        };
                        s += av as f64 * bv as f64;
                    }
                    let dst = &mut c[co + i + j * ldc];
                    let old = if g.beta == 0.0 {
                        0.0
                    } else {
                        g.beta as f64 * *dst as f64
                    };
                    *dst = (g.alpha as f64 * s + old) as f32;
                }
            }
        }
    }

    /// The row-major definition, directly.
    fn row_major_reference(g: &RowMajorGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        for p in 0..g.batch {
            let (ao, bo, co) = (p * g.stride_a, p * g.stride_b, p * g.stride_c);
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0.0f64;
                    for l in 0..g.k {
                        let av = if g.trans_a {
                            a[ao + l * g.lda + i]
                        } else {
                            a[ao + i * g.lda + l]
                        };
                        let bv = if g.trans_b {
                            b[bo + j * g.ldb + l]
                        } else {
                            b[bo + l * g.ldb + j]
                        };
                        s += av as f64 * bv as f64;
                    }
                    let dst = &mut c[co + i * g.ldc + j];
                    let old = if g.beta == 0.0 {
                        0.0
                    } else {
                        g.beta as f64 * *dst as f64
                    };
                    *dst = (g.alpha as f64 * s + old) as f32;
                }
            }
        }
    }

    fn fill(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    /// Runs the mapped call through the cuBLAS reference (B first, then A) and compares with
    /// the row-major definition.
    fn check(g: RowMajorGemm) {
        let cb = to_cublas(&g).unwrap();
        let a = fill(g.required_len_a(), 1);
        let b = fill(g.required_len_b(), 2);
        let c0 = fill(g.required_len_c(), 3);
        let (mut c_row, mut c_blas) = (c0.clone(), c0.clone());
        row_major_reference(&g, &a, &b, &mut c_row);
        cublas_reference(&cb, &b, &a, &mut c_blas);
        for (i, (x, y)) in c_row.iter().zip(&c_blas).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{g:?}: element {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn mapping_matches_row_major_for_all_transposes_and_shapes() {
        for (m, n, k) in [(3, 7, 5), (1, 4, 9), (6, 1, 2), (4, 4, 1)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(RowMajorGemm::packed(m, n, k, ta, tb));
                    // padded leading dimensions, alpha/beta, a batch with a broadcast A
                    let mut g = RowMajorGemm::packed(m, n, k, ta, tb);
                    g.lda += 2;
                    g.ldb += 3;
                    g.ldc += 1;
                    g.alpha = 0.5;
                    g.beta = -1.5;
                    let (one_b, one_c) = (g.required_len_b(), g.required_len_c());
                    g.batch = 3;
                    g.stride_a = 0;
                    g.stride_b = one_b + 4;
                    g.stride_c = one_c + 2;
                    check(g);
                }
            }
        }
    }

    #[test]
    fn the_3x5_times_5x7_case() {
        // the first device check planned in CUDARC.md, here through the reference
        let g = RowMajorGemm::packed(3, 7, 5, false, false);
        let cb = to_cublas(&g).unwrap();
        assert_eq!(
            (cb.m, cb.n, cb.k, cb.lda, cb.ldb, cb.ldc),
            (7, 3, 5, 7, 5, 7)
        );
        assert!(!cb.transa && !cb.transb);
        check(g);
    }

    #[test]
    fn mapping_swaps_operands_and_transposes() {
        let mut g = RowMajorGemm::packed(2, 3, 4, true, false);
        g.stride_a = 0;
        g.batch = 5;
        let cb = to_cublas(&g).unwrap();
        assert!(
            cb.transb && !cb.transa,
            "A's transpose becomes cuBLAS's second operand's"
        );
        assert_eq!((cb.stride_a, cb.stride_b), (12, 0));
        assert_eq!(cb.batch, 5);
    }

    #[test]
    fn bad_leading_dimensions_and_sizes_are_refused() {
        let mut g = RowMajorGemm::packed(3, 4, 5, false, false);
        g.lda = 4;
        assert!(to_cublas(&g).unwrap_err().to_string().contains("lda"));
        let mut g = RowMajorGemm::packed(3, 4, 5, false, true);
        g.ldb = 4;
        assert!(to_cublas(&g).unwrap_err().to_string().contains("ldb"));
        let g = RowMajorGemm::packed(3, 1 << 31, 5, false, false);
        assert!(to_cublas(&g).unwrap_err().to_string().contains("i32"));
        let mut g = RowMajorGemm::packed(3, 4, 5, false, false);
        g.batch = 0;
        assert!(to_cublas(&g).is_err());
        // an empty matrix still needs ld >= 1
        let g = RowMajorGemm::packed(0, 0, 0, false, false);
        assert!(to_cublas(&g).is_err());
    }

    #[test]
    fn required_lengths() {
        let mut g = RowMajorGemm::packed(3, 4, 5, false, true);
        assert_eq!(
            (g.required_len_a(), g.required_len_b(), g.required_len_c()),
            (15, 20, 12)
        );
        g.batch = 2;
        g.stride_a = 0;
        assert_eq!(g.required_len_a(), 15);
        assert_eq!(g.required_len_b(), 40);
    }
}
