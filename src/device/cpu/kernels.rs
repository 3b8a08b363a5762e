//! SIMD micro-kernels of the CPU fast paths, one set per instruction set, chosen at run time
//! ([`super::simd::isa`]). They know no op: the convolution (ops/conv2d/cpu_fast.rs) lays out
//! its operands and calls them.
//!
//! [`GemmKernel`] is the register tile of a GEMM, `C[mr × nr] (+)= Σ_k a_k ⊗ b_k`: per
//! reduction step k, `mr` values of A broadcast and `nr` values of B loaded as `nr / lanes`
//! vectors, `mr · nr / lanes` FMAs. Two ways to feed it:
//! - [`GemmKernel::gather`]: A packed `[k][mr]`, B row k read in place at `base + offs[k]` (a
//!   shifted row of a padded image: no column matrix), C rows written through [`Span`]s, so a
//!   vector whose lanes cover positions that are not outputs (the padding columns of a flat
//!   view) stores only its valid lanes, compacted;
//! - [`GemmKernel::rows`]: A as `mr` row pointers read one float per step, B contiguous with a
//!   row stride, C a plain tile.
//!
//! Tiles (AVX-512: 8 × 32; AVX2: 6 × 16, or 4 × 16 when the rows are few): in measurements on
//! this project's machines a 2-vector-wide tile ran at 82–90% of the FMA peak from L1, where
//! wider ones (8 × 48, 4 × 24) lost 10–30% to their extra vector loads, which are unaligned
//! when B rows are shifted image rows.
//!
//! Every element's arithmetic depends only on its own operands and on the reduction length
//! (never on the tile or thread that computed it), so results do not change with the thread
//! count.
use super::simd::Isa;

/// Where one vector of every C row of a tile goes: `off` floats from the row's start, and
/// only the lanes set in `mask` (bit l = lane l), stored compacted (the first set lane at
/// `off`, the next one after it, …). A full mask is a plain vector store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub off: usize,
    pub mask: u32,
}

/// How a kernel starts its accumulators.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// From zero.
    Zero,
    /// From the tile's current C values (a later block of the reduction).
    Load,
    /// Row i from the scalar at `ptr + i` (a bias per output row).
    Bias(*const f32),
}

/// Asks the CPU to bring the cache line holding `p` into L1 ahead of use (a hint: no effect on
/// results, none at all off x86-64). `p` need not be dereferenceable.
#[inline(always)]
pub fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // Safety: prefetching never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// One instruction set's GEMM register tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmKernel {
    pub isa: Isa,
    /// Rows of the tile (A values broadcast per step).
    pub mr: usize,
    /// Columns of the tile (B values loaded as vectors per step): two vectors.
    pub nr: usize,
}

impl GemmKernel {
    /// The tile of `isa` for a GEMM with `rows` rows of C (the tile height that wastes least),
    /// or `None` for [`Isa::Scalar`] or a set this CPU lacks.
    pub fn for_isa(isa: Isa, rows: usize) -> Option<GemmKernel> {
        if !isa.available() {
            return None;
        }
        let mr = match isa {
            Isa::Avx512 => 8,
            // 6 × 16 runs ~10% faster than 4 × 16; take it unless it pads the rows by more.
            Isa::Avx2 => {
                let pad = |m: usize| rows.div_ceil(m) * m;
                if pad(6) as f64 * 0.9 <= pad(4) as f64 {
                    6
                } else {
                    4
                }
            }
            Isa::Scalar => return None,
        };
        Some(GemmKernel {
            isa,
            mr,
            nr: 2 * isa.lanes(),
        })
    }

    /// f32 lanes of one vector.
    pub fn lanes(&self) -> usize {
        self.isa.lanes()
    }

    /// `C[i][·] = init_i + Σ_{k<kc} a[k·mr + i] · B_k` for the tile's rows i < `valid` (≤ mr;
    /// the others are computed and dropped), where
    /// `B_k = base[offs[k] .. offs[k] + nr]` and row i of C is at `c + i·ldc`, its vector v
    /// written through `spans[v]` (see [`Span`]); the sum runs in k order, one rounding per
    /// FMA. With [`Init::Load`] the accumulators start from C read back through the same
    /// spans.
    ///
    /// # Safety
    /// `a` readable for `kc·mr` floats; `offs` for `kc` offsets with `base + offs[k]` readable
    /// for `nr` floats; for every row i < mr and span v, `c + i·ldc + spans[v].off` readable
    /// and writable for `popcount(spans[v].mask)` floats (rows i < valid only); with
    /// `Init::Bias(p)`, `p` readable for `valid` floats; the instruction set available (it is when the kernel came from
    /// [`GemmKernel::for_isa`]).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gather(
        &self,
        kc: usize,
        a: *const f32,
        base: *const f32,
        offs: *const usize,
        c: *mut f32,
        ldc: usize,
        valid: usize,
        spans: &[Span; 2],
        init: Init,
    ) {
        let t = (c, ldc, valid.min(self.mr));
        match (self.isa, self.mr) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 8) => x86::gather512::<8>(kc, a, base, offs, t, spans, init),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 6) => x86::gather256::<6>(kc, a, base, offs, t, spans, init),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 4) => x86::gather256::<4>(kc, a, base, offs, t, spans, init),
            _ => unreachable!("no kernel {self:?}"),
        }
    }

    /// `C[i][j] = init_i + Σ_{q<len} rows[i][q] · b[q·ldb + j]` for i < mr, j < nr, C row i
    /// at `c + i·ldc` (plain, every lane stored), in q order.
    ///
    /// # Safety
    /// `rows[i]` readable for `len` floats for i < mr; `b + q·ldb` readable for `nr` floats for
    /// q < len; `c + i·ldc` readable and writable for `nr` floats; the instruction set
    /// available.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        &self,
        len: usize,
        rows: &[*const f32],
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        init: Init,
    ) {
        assert!(rows.len() >= self.mr);
        match (self.isa, self.mr) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 8) => x86::rows512::<8>(len, rows, b, ldb, c, ldc, init),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 6) => x86::rows256::<6>(len, rows, b, ldb, c, ldc, init),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 4) => x86::rows256::<4>(len, rows, b, ldb, c, ldc, init),
            _ => unreachable!("no kernel {self:?}"),
        }
    }
}

/// Repeats of a dot product's rows at fixed strides (see [`DotKernel::run_lanes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub a_stride: usize,
    pub b_stride: usize,
}

impl Segments {
    /// One segment.
    pub const ONE: Segments = Segments {
        count: 1,
        a_stride: 0,
        b_stride: 0,
    };
}

/// A tile of dot products over long rows, `out[i][j] += Σ_q a_i[q]·b_j[q]`, vectorised along q
/// with the partial sums kept per lane (AVX-512: 4 × 6 rows, AVX2: 4 × 3): for reductions whose
/// operands have no long dimension besides the one summed over (the weight gradient of a
/// convolution with few channels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DotKernel {
    pub isa: Isa,
    /// Rows of the first operand per tile.
    pub ta: usize,
    /// Rows of the second operand per tile.
    pub tb: usize,
}

impl DotKernel {
    pub fn for_isa(isa: Isa) -> Option<DotKernel> {
        if !isa.available() {
            return None;
        }
        match isa {
            Isa::Avx512 => Some(DotKernel { isa, ta: 4, tb: 6 }),
            Isa::Avx2 => Some(DotKernel { isa, ta: 4, tb: 3 }),
            Isa::Scalar => None,
        }
    }

    /// `out[(i·tb + j)·L + l] += Σ_{q<len, q ≡ l mod L} a[i][q] · b[j][q]` for i < ta, j < tb
    /// and the L = `isa.lanes()` lanes, in q order (a zero-padded tail step last); the caller
    /// sums the lanes once at the end. With `seg.count` > 1 the sums run over that many
    /// segments of `len`, segment s of each row starting `s·seg.a_stride` (first operand) or
    /// `s·seg.b_stride` floats later (the same rows of the next image, say).
    ///
    /// # Safety
    /// Each of the first `ta` pointers in `a` and `tb` in `b`, advanced by every segment's
    /// stride, must be readable for `len` floats; the instruction set available.
    #[inline]
    pub unsafe fn run_lanes(
        &self,
        len: usize,
        seg: Segments,
        a: &[*const f32],
        b: &[*const f32],
        out: &mut [f32],
    ) {
        assert!(a.len() >= self.ta && b.len() >= self.tb);
        assert!(out.len() >= self.ta * self.tb * self.isa.lanes());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::dot512(len, seg, a, b, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::dot256(len, seg, a, b, out),
            _ => unreachable!("no dot kernel for {:?}", self.isa),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Init, Segments, Span};
    use std::arch::x86_64::*;

    /// C of a tile: first row, row stride, rows stored.
    type Tile = (*mut f32, usize, usize);

    const FULL512: u32 = 0xffff;
    const FULL256: u32 = 0xff;

    #[target_feature(enable = "avx512f")]
    unsafe fn load512(p: *const f32, mask: u32) -> __m512 {
        if mask == FULL512 {
            _mm512_loadu_ps(p)
        } else {
            let n = mask.count_ones();
            let packed = _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p);
            _mm512_maskz_expand_ps(mask as __mmask16, packed)
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn store512(p: *mut f32, mask: u32, v: __m512) {
        if mask == FULL512 {
            _mm512_storeu_ps(p, v)
        } else if mask != 0 {
            let n = mask.count_ones();
            let packed = _mm512_maskz_compress_ps(mask as __mmask16, v);
            _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, packed)
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn init512<const MR: usize>(
        (c, ldc, valid): Tile,
        spans: &[Span; 2],
        init: Init,
    ) -> [[__m512; 2]; MR] {
        let mut r = [[_mm512_setzero_ps(); 2]; MR];
        match init {
            Init::Zero => {}
            Init::Load => {
                for (i, row) in r.iter_mut().enumerate().take(valid) {
                    for (v, s) in row.iter_mut().zip(spans) {
                        *v = load512(c.add(i * ldc + s.off), s.mask);
                    }
                }
            }
            Init::Bias(p) => {
                for (i, row) in r.iter_mut().enumerate().take(valid) {
                    *row = [_mm512_set1_ps(*p.add(i)); 2];
                }
            }
        }
        r
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather512<const MR: usize>(
        kc: usize,
        a: *const f32,
        base: *const f32,
        offs: *const usize,
        tile: Tile,
        spans: &[Span; 2],
        init: Init,
    ) {
        let mut r = init512::<MR>(tile, spans, init);
        let (c, ldc, valid) = tile;
        let mut a = a;
        for k in 0..kc {
            let b = base.add(*offs.add(k));
            let bv = [_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16))];
            for (i, row) in r.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(i));
                row[0] = _mm512_fmadd_ps(av, bv[0], row[0]);
                row[1] = _mm512_fmadd_ps(av, bv[1], row[1]);
            }
            a = a.add(MR);
        }
        for (i, row) in r.iter().enumerate().take(valid) {
            for (v, s) in row.iter().zip(spans) {
                store512(c.add(i * ldc + s.off), s.mask, *v);
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows512<const MR: usize>(
        len: usize,
        rows: &[*const f32],
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        init: Init,
    ) {
        let full = [
            Span {
                off: 0,
                mask: FULL512,
            },
            Span {
                off: 16,
                mask: FULL512,
            },
        ];
        let mut r = init512::<MR>((c, ldc, MR), &full, init);
        let p: [*const f32; MR] = std::array::from_fn(|i| rows[i]);
        let mut b = b;
        for q in 0..len {
            let bv = [_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16))];
            for (i, row) in r.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*p[i].add(q));
                row[0] = _mm512_fmadd_ps(av, bv[0], row[0]);
                row[1] = _mm512_fmadd_ps(av, bv[1], row[1]);
            }
            b = b.add(ldb);
        }
        for (i, row) in r.iter().enumerate() {
            _mm512_storeu_ps(c.add(i * ldc), row[0]);
            _mm512_storeu_ps(c.add(i * ldc + 16), row[1]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn load256(p: *const f32, mask: u32) -> __m256 {
        if mask == FULL256 {
            return _mm256_loadu_ps(p);
        }
        let mut t = [0.0f32; 8];
        let mut k = 0;
        for (l, v) in t.iter_mut().enumerate() {
            if mask >> l & 1 == 1 {
                *v = *p.add(k);
                k += 1;
            }
        }
        _mm256_loadu_ps(t.as_ptr())
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn store256(p: *mut f32, mask: u32, v: __m256) {
        if mask == FULL256 {
            return _mm256_storeu_ps(p, v);
        }
        let mut t = [0.0f32; 8];
        _mm256_storeu_ps(t.as_mut_ptr(), v);
        let mut k = 0;
        for (l, &x) in t.iter().enumerate() {
            if mask >> l & 1 == 1 {
                *p.add(k) = x;
                k += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn init256<const MR: usize>(
        (c, ldc, valid): Tile,
        spans: &[Span; 2],
        init: Init,
    ) -> [[__m256; 2]; MR] {
        let mut r = [[_mm256_setzero_ps(); 2]; MR];
        match init {
            Init::Zero => {}
            Init::Load => {
                for (i, row) in r.iter_mut().enumerate().take(valid) {
                    for (v, s) in row.iter_mut().zip(spans) {
                        *v = load256(c.add(i * ldc + s.off), s.mask);
                    }
                }
            }
            Init::Bias(p) => {
                for (i, row) in r.iter_mut().enumerate().take(valid) {
                    *row = [_mm256_set1_ps(*p.add(i)); 2];
                }
            }
        }
        r
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gather256<const MR: usize>(
        kc: usize,
        a: *const f32,
        base: *const f32,
        offs: *const usize,
        tile: Tile,
        spans: &[Span; 2],
        init: Init,
    ) {
        let mut r = init256::<MR>(tile, spans, init);
        let (c, ldc, valid) = tile;
        let mut a = a;
        for k in 0..kc {
            let b = base.add(*offs.add(k));
            let bv = [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))];
            for (i, row) in r.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(i));
                row[0] = _mm256_fmadd_ps(av, bv[0], row[0]);
                row[1] = _mm256_fmadd_ps(av, bv[1], row[1]);
            }
            a = a.add(MR);
        }
        for (i, row) in r.iter().enumerate().take(valid) {
            for (v, s) in row.iter().zip(spans) {
                store256(c.add(i * ldc + s.off), s.mask, *v);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rows256<const MR: usize>(
        len: usize,
        rows: &[*const f32],
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        init: Init,
    ) {
        let full = [
            Span {
                off: 0,
                mask: FULL256,
            },
            Span {
                off: 8,
                mask: FULL256,
            },
        ];
        let mut r = init256::<MR>((c, ldc, MR), &full, init);
        let p: [*const f32; MR] = std::array::from_fn(|i| rows[i]);
        let mut b = b;
        for q in 0..len {
            let bv = [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))];
            for (i, row) in r.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*p[i].add(q));
                row[0] = _mm256_fmadd_ps(av, bv[0], row[0]);
                row[1] = _mm256_fmadd_ps(av, bv[1], row[1]);
            }
            b = b.add(ldb);
        }
        for (i, row) in r.iter().enumerate() {
            _mm256_storeu_ps(c.add(i * ldc), row[0]);
            _mm256_storeu_ps(c.add(i * ldc + 8), row[1]);
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot512(
        len: usize,
        seg: Segments,
        a: &[*const f32],
        b: &[*const f32],
        out: &mut [f32],
    ) {
        const TA: usize = 4;
        const TB: usize = 6;
        let mut r = [[_mm512_setzero_ps(); TB]; TA];
        for s in 0..seg.count {
            let a: [*const f32; TA] = std::array::from_fn(|i| a[i].add(s * seg.a_stride));
            let b: [*const f32; TB] = std::array::from_fn(|j| b[j].add(s * seg.b_stride));
            let mut q = 0;
            while q + 16 <= len {
                let bv: [__m512; TB] = std::array::from_fn(|j| _mm512_loadu_ps(b[j].add(q)));
                for (i, row) in r.iter_mut().enumerate() {
                    let av = _mm512_loadu_ps(a[i].add(q));
                    for (v, &bj) in row.iter_mut().zip(&bv) {
                        *v = _mm512_fmadd_ps(av, bj, *v);
                    }
                }
                q += 16;
            }
            if q < len {
                let mask = ((1u32 << (len - q)) - 1) as __mmask16;
                let bv: [__m512; TB] =
                    std::array::from_fn(|j| _mm512_maskz_loadu_ps(mask, b[j].add(q)));
                for (i, row) in r.iter_mut().enumerate() {
                    let av = _mm512_maskz_loadu_ps(mask, a[i].add(q));
                    for (v, &bj) in row.iter_mut().zip(&bv) {
                        *v = _mm512_fmadd_ps(av, bj, *v);
                    }
                }
            }
        }
        for (i, row) in r.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let o = out.as_mut_ptr().add((i * TB + j) * 16);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), *v));
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot256(
        len: usize,
        seg: Segments,
        a: &[*const f32],
        b: &[*const f32],
        out: &mut [f32],
    ) {
        const TA: usize = 4;
        const TB: usize = 3;
        let mut r = [[_mm256_setzero_ps(); TB]; TA];
        for s in 0..seg.count {
            let a: [*const f32; TA] = std::array::from_fn(|i| a[i].add(s * seg.a_stride));
            let b: [*const f32; TB] = std::array::from_fn(|j| b[j].add(s * seg.b_stride));
            let mut q = 0;
            while q + 8 <= len {
                let bv: [__m256; TB] = std::array::from_fn(|j| _mm256_loadu_ps(b[j].add(q)));
                for (i, row) in r.iter_mut().enumerate() {
                    let av = _mm256_loadu_ps(a[i].add(q));
                    for (v, &bj) in row.iter_mut().zip(&bv) {
                        *v = _mm256_fmadd_ps(av, bj, *v);
                    }
                }
                q += 8;
            }
            if q < len {
                // The tail through zero-padded copies: the same lane-wise FMA as a full step.
                let rest = len - q;
                let mut bt = [[0.0f32; 8]; TB];
                for (j, t) in bt.iter_mut().enumerate() {
                    std::ptr::copy_nonoverlapping(b[j].add(q), t.as_mut_ptr(), rest);
                }
                let bv: [__m256; TB] = std::array::from_fn(|j| _mm256_loadu_ps(bt[j].as_ptr()));
                for (i, row) in r.iter_mut().enumerate() {
                    let mut at = [0.0f32; 8];
                    std::ptr::copy_nonoverlapping(a[i].add(q), at.as_mut_ptr(), rest);
                    let av = _mm256_loadu_ps(at.as_ptr());
                    for (v, &bj) in row.iter_mut().zip(&bv) {
                        *v = _mm256_fmadd_ps(av, bj, *v);
                    }
                }
            }
        }
        for (i, row) in r.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let o = out.as_mut_ptr().add((i * TB + j) * 8);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), *v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    fn kernels() -> Vec<GemmKernel> {
        let mut v = Vec::new();
        for isa in Isa::ALL {
            for rows in [4, 6, 64] {
                if let Some(k) = GemmKernel::for_isa(isa, rows) {
                    if !v.contains(&k) {
                        v.push(k);
                    }
                }
            }
        }
        v
    }

    /// Every kernel against plain loops (the same FMAs in the same order, so bit for bit):
    /// gathered B rows at odd offsets, spans that skip lanes, each way to start.
    #[test]
    fn gather_kernels_match_plain_loops() {
        for k in kernels() {
            let l = k.lanes();
            let kc = 37;
            let src = data(5000, 4);
            let offs: Vec<usize> = (0..kc).map(|i| (i * 263 + i * i) % 4000).collect();
            let a = data(kc * k.mr, 5);
            let bias = data(k.mr, 7);
            let full = (1u32 << l) - 1;
            // Vector 0 skips lanes 2 and 3 (as the padding columns of a flat view), vector 1
            // is stored whole 3 floats later than packed.
            let m0 = full & !0b1100;
            let spans = [
                Span { off: 1, mask: m0 },
                Span {
                    off: 1 + m0.count_ones() as usize + 3,
                    mask: full,
                },
            ];
            let ldc = 2 * l + 9;
            for (init, valid) in [
                (Init::Zero, k.mr),
                (Init::Load, k.mr),
                (Init::Bias(bias.as_ptr()), k.mr - 1),
            ] {
                let c0 = data(k.mr * ldc, 6);
                let mut c = c0.clone();
                unsafe {
                    k.gather(
                        kc,
                        a.as_ptr(),
                        src.as_ptr(),
                        offs.as_ptr(),
                        c.as_mut_ptr(),
                        ldc,
                        valid,
                        &spans,
                        init,
                    )
                };
                let mut want = c0.clone();
                for i in 0..valid {
                    for (v, s) in spans.iter().enumerate() {
                        let mut slot = 0;
                        for lane in 0..l {
                            if s.mask >> lane & 1 == 0 {
                                continue;
                            }
                            let at = i * ldc + s.off + slot;
                            slot += 1;
                            let mut acc = match init {
                                Init::Zero => 0.0,
                                Init::Load => c0[at],
                                Init::Bias(_) => bias[i],
                            };
                            for kk in 0..kc {
                                acc = a[kk * k.mr + i].mul_add(src[offs[kk] + v * l + lane], acc);
                            }
                            want[at] = acc;
                        }
                    }
                }
                assert_eq!(c, want, "{k:?} {init:?}");
            }
        }
    }

    #[test]
    fn rows_kernels_match_plain_loops() {
        for k in kernels() {
            let len = 29;
            let ldb = k.nr + 3;
            let rows: Vec<Vec<f32>> = (0..k.mr).map(|i| data(len, 10 + i as u32)).collect();
            let ptrs: Vec<*const f32> = rows.iter().map(|r| r.as_ptr()).collect();
            let b = data(len * ldb, 20);
            let ldc = k.nr + 5;
            for init in [Init::Zero, Init::Load] {
                let c0 = data(k.mr * ldc, 30);
                let mut c = c0.clone();
                unsafe { k.rows(len, &ptrs, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, init) };
                for i in 0..k.mr {
                    for j in 0..ldc {
                        let want = if j >= k.nr {
                            c0[i * ldc + j]
                        } else {
                            let mut s = if matches!(init, Init::Load) {
                                c0[i * ldc + j]
                            } else {
                                0.0
                            };
                            for q in 0..len {
                                s = rows[i][q].mul_add(b[q * ldb + j], s);
                            }
                            s
                        };
                        assert_eq!(c[i * ldc + j], want, "{k:?} ({i},{j})");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod dot_tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn dot_kernels_match_plain_sums() {
        for isa in Isa::ALL {
            let Some(k) = DotKernel::for_isa(isa) else {
                continue;
            };
            let lanes = isa.lanes();
            for (len, count) in [(1, 1), (5, 3), (16, 1), (37, 2), (100, 1)] {
                let stride = len + 7;
                let rows_a: Vec<Vec<f32>> = (0..k.ta)
                    .map(|i| data(stride * count, 10 + i as u32))
                    .collect();
                let rows_b: Vec<Vec<f32>> = (0..k.tb)
                    .map(|j| data(stride * count, 20 + j as u32))
                    .collect();
                let pa: Vec<*const f32> = rows_a.iter().map(|r| r.as_ptr()).collect();
                let pb: Vec<*const f32> = rows_b.iter().map(|r| r.as_ptr()).collect();
                let seg = Segments {
                    count,
                    a_stride: stride,
                    b_stride: stride,
                };
                let mut out = vec![0.5f32; k.ta * k.tb * lanes];
                unsafe { k.run_lanes(len, seg, &pa, &pb, &mut out) };
                for i in 0..k.ta {
                    for j in 0..k.tb {
                        let mut want = 0.5 * lanes as f64;
                        for s in 0..count {
                            for q in 0..len {
                                let at = s * stride + q;
                                want += rows_a[i][at] as f64 * rows_b[j][at] as f64;
                            }
                        }
                        let l = &out[(i * k.tb + j) * lanes..][..lanes];
                        let got: f64 = l.iter().map(|&v| v as f64).sum();
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{isa:?} {len}"
                        );
                    }
                }
            }
        }
    }
}
