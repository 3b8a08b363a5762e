//! The CPU fast path of bilinear resizing: separable, planes in parallel, vectorised for the
//! instruction set chosen at run time. The forward interpolates each input row horizontally
//! once (`h[r][x] = l0·row[i0] + l1·row[i1]`, the reference's inner pair) and then each output
//! row as `t.l0·h[i0] + t.l1·h[i1]` over whole rows: the reference's arithmetic operation for
//! operation, so bit for bit. The backward is the adjoint in the same two steps (whole-row
//! AXPYs vertically, then each row's horizontal scatter, computed as a gather per input
//! column: [`Gather`]), which sums in another order than the reference's per-output scatter.
//! Outputs are written once each, never zero-filled first.
use rayon::prelude::*;

use super::cpu::{axis_taps, AxisTap};
use super::UpsampleBilinearGeometry;
use crate::device::cpu::simd::{with_isa, Isa};

fn sizes(g: &UpsampleBilinearGeometry) -> (usize, usize, usize, usize) {
    (g.ih as usize, g.iw as usize, g.oh as usize, g.ow as usize)
}

/// The horizontal taps as arrays (index, weight) the loops can vectorise over.
struct Cols {
    i0: Vec<u32>,
    i1: Vec<u32>,
    l0: Vec<f32>,
    l1: Vec<f32>,
}

/// `t`'s taps, each index checked to be below `input` (the loops below index unchecked).
fn cols(t: &[AxisTap], input: usize) -> Cols {
    assert!(
        t.iter().all(|s| s.i0 < input && s.i1 < input),
        "taps outside the input row"
    );
    Cols {
        i0: t.iter().map(|s| s.i0 as u32).collect(),
        i1: t.iter().map(|s| s.i1 as u32).collect(),
        l0: t.iter().map(|s| s.l0).collect(),
        l1: t.iter().map(|s| s.l1).collect(),
    }
}

/// `h[x] = l0[x]·row[i0[x]] + l1[x]·row[i1[x]]` (multiplies, then the add: the reference's
/// operations) for the first outputs of `h`, a vector at a time with the instruction set's
/// gathers; returns how many it wrote (a multiple of 8), the caller does the rest. The
/// compiler kept this loop scalar.
fn gather_row(isa: Isa, row: &[f32], t: &Cols, h: &mut [f32]) -> usize {
    let n = h.len();
    assert!(t.i0.len() >= n && t.i1.len() >= n && t.l0.len() >= n && t.l1.len() >= n);
    let (i0, i1, l0, l1) = (t.i0.as_ptr(), t.i1.as_ptr(), t.l0.as_ptr(), t.l1.as_ptr());
    let (r, o) = (row.as_ptr(), h.as_mut_ptr());
    match isa {
        // SAFETY: the set is available (isa() never names one this CPU lacks); the taps are
        // below row.len() (`cols` checked) and every other access is below n (asserted).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { gather_x86::avx512(r, i0, i1, l0, l1, o, n) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { gather_x86::avx2(r, i0, i1, l0, l1, o, n) },
        _ => 0,
    }
}

#[cfg(target_arch = "x86_64")]
mod gather_x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(
        row: *const f32,
        i0: *const u32,
        i1: *const u32,
        l0: *const f32,
        l1: *const f32,
        h: *mut f32,
        n: usize,
    ) -> usize {
        let mut x = 0;
        while x + 16 <= n {
            let a = _mm512_i32gather_ps::<4>(_mm512_loadu_si512(i0.add(x).cast()), row.cast());
            let b = _mm512_i32gather_ps::<4>(_mm512_loadu_si512(i1.add(x).cast()), row.cast());
            let (pa, pb) = (
                _mm512_mul_ps(_mm512_loadu_ps(l0.add(x)), a),
                _mm512_mul_ps(_mm512_loadu_ps(l1.add(x)), b),
            );
            _mm512_storeu_ps(h.add(x), _mm512_add_ps(pa, pb));
            x += 16;
        }
        x + avx2(
            row,
            i0.add(x),
            i1.add(x),
            l0.add(x),
            l1.add(x),
            h.add(x),
            n - x,
        )
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2(
        row: *const f32,
        i0: *const u32,
        i1: *const u32,
        l0: *const f32,
        l1: *const f32,
        h: *mut f32,
        n: usize,
    ) -> usize {
        let mut x = 0;
        while x + 8 <= n {
            let a = _mm256_i32gather_ps::<4>(row, _mm256_loadu_si256(i0.add(x).cast()));
            let b = _mm256_i32gather_ps::<4>(row, _mm256_loadu_si256(i1.add(x).cast()));
            let (pa, pb) = (
                _mm256_mul_ps(_mm256_loadu_ps(l0.add(x)), a),
                _mm256_mul_ps(_mm256_loadu_ps(l1.add(x)), b),
            );
            _mm256_storeu_ps(h.add(x), _mm256_add_ps(pa, pb));
            x += 8;
        }
        x
    }
}

/// The backward's horizontal step turned around: per input column, the output columns whose
/// taps name it and their weights, in the order the scatter `dx[i0[x]] += l0[x]·h[x]; dx[i1[x]]
/// += l1[x]·h[x]` (x ascending) adds them, so each column's sum is that scatter's, bit for bit,
/// but kept in a register instead of a chain of stores and reloads of one element (the
/// scatter's neighbouring x share their taps).
struct Gather {
    /// Column c's terms are `x[start[c]..start[c + 1]]`, `w[..]` likewise.
    start: Vec<usize>,
    x: Vec<u32>,
    w: Vec<f32>,
}

fn gather(t: &Cols, input: usize) -> Gather {
    let mut start = vec![0usize; input + 1];
    for (&a, &b) in t.i0.iter().zip(&t.i1) {
        start[a as usize + 1] += 1;
        start[b as usize + 1] += 1;
    }
    for c in 0..input {
        start[c + 1] += start[c];
    }
    let mut next = start.clone();
    let (mut x, mut w) = (vec![0u32; 2 * t.i0.len()], vec![0.0f32; 2 * t.i0.len()]);
    for (o, ((&a, &b), (&l0, &l1))) in
        t.i0.iter()
            .zip(&t.i1)
            .zip(t.l0.iter().zip(&t.l1))
            .enumerate()
    {
        for (c, l) in [(a as usize, l0), (b as usize, l1)] {
            x[next[c]] = o as u32;
            w[next[c]] = l;
            next[c] += 1;
        }
    }
    Gather { start, x, w }
}

/// As `cpu::forward`.
pub fn forward(x: &[f32], g: &UpsampleBilinearGeometry, isa: Isa) -> Vec<f32> {
    let (in_h, in_w, out_h, out_w) = sizes(g);
    let ty = axis_taps(in_h, out_h, g.align_corners());
    let tx = cols(&axis_taps(in_w, out_w, g.align_corners()), in_w);
    let len = g.out_len();
    let mut out = Vec::<f32>::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(out_h * out_w)
        .zip(x.par_chunks(in_h * in_w))
        .for_each_init(Vec::new, |h, (o, xp)| {
            h.resize(in_h * out_w, 0.0);
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for (hr, row) in h.chunks_mut(out_w).zip(xp.chunks(in_w)) {
                        let done = gather_row(isa, row, &tx, hr);
                        for (x, v) in hr.iter_mut().enumerate().skip(done) {
                            let (a, b) = (tx.i0[x] as usize, tx.i1[x] as usize);
                            *v = tx.l0[x] * row[a] + tx.l1[x] * row[b];
                        }
                    }
                    for (orow, t) in o.chunks_mut(out_w).zip(&ty) {
                        let (h0, h1) = (&h[t.i0 * out_w..][..out_w], &h[t.i1 * out_w..][..out_w]);
                        for ((v, &a), &b) in orow.iter_mut().zip(h0).zip(h1) {
                            v.write(t.l0 * a + t.l1 * b);
                        }
                    }
                },
            )
        });
    // SAFETY: every plane's out_h rows of out_w were written above.
    unsafe { out.set_len(len) };
    out
}

/// As `cpu::backward` (the adjoint of `forward`).
pub fn backward(dy: &[f32], g: &UpsampleBilinearGeometry, isa: Isa) -> Vec<f32> {
    let (in_h, in_w, out_h, out_w) = sizes(g);
    let ty = axis_taps(in_h, out_h, g.align_corners());
    let tx = gather(
        &cols(&axis_taps(in_w, out_w, g.align_corners()), in_w),
        in_w,
    );
    let len = g.in_len();
    let mut dx = Vec::<f32>::with_capacity(len);
    dx.spare_capacity_mut()[..len]
        .par_chunks_mut(in_h * in_w)
        .zip(dy.par_chunks(out_h * out_w))
        .for_each_init(Vec::new, |dh, (d, gp)| {
            dh.clear();
            dh.resize(in_h * out_w, 0.0);
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for (grow, t) in gp.chunks(out_w).zip(&ty) {
                        for (v, &gv) in dh[t.i0 * out_w..][..out_w].iter_mut().zip(grow) {
                            *v += t.l0 * gv;
                        }
                        for (v, &gv) in dh[t.i1 * out_w..][..out_w].iter_mut().zip(grow) {
                            *v += t.l1 * gv;
                        }
                    }
                    for (drow, hrow) in d.chunks_mut(in_w).zip(dh.chunks(out_w)) {
                        for (c, v) in drow.iter_mut().enumerate() {
                            let terms = tx.start[c]..tx.start[c + 1];
                            let mut acc = 0.0f32;
                            for (&x, &w) in tx.x[terms.clone()].iter().zip(&tx.w[terms]) {
                                acc += w * hrow[x as usize];
                            }
                            v.write(acc);
                        }
                    }
                },
            )
        });
    // SAFETY: every plane's in_h rows of in_w were written above.
    unsafe { dx.set_len(len) };
    dx
}
