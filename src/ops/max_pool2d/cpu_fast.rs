//! The CPU fast path of 2x2 max pooling: the reference's scan (cpu.rs: row-major, a later
//! value wins only if strictly greater or NaN) as vector compares and blends over a row's
//! outputs, a vector of them at a time (the window's column pairs de-interleaved by shuffles;
//! the backward's four gradients interleaved back), for the instruction set chosen at run
//! time (`simd_rows`), with planes in parallel; a row's last outputs that fill no vector take
//! the same steps in scalar code. Outputs are written once each, never zero-filled first: the
//! backward writes every input position (the argmax's gradient or zero, the odd last row and
//! column that the floor drops zero).
//!
//! History: the first version (and a second, on lane arrays) left vectorising to the
//! compiler, which kept the per-output selects scalar, with branches (`cargo bench --bench
//! mem_ops -- max_pool2d`: 3–16 GB/s, 7–46% of copy).
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::MaxPool2dGeometry;
use crate::device::cpu::simd::{with_isa, Isa};

/// `len` floats that `fill` writes every one of, given planes of `plane` floats in parallel.
fn filled(
    len: usize,
    plane: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut v = Vec::<f32>::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(plane.max(1))
        .enumerate()
        .for_each(|(p, d)| fill(p, d));
    // Safety: `fill` wrote every element of every plane (each caller's loops cover the plane).
    unsafe { v.set_len(len) };
    v
}

/// The reference's choice among a window's four values, in scan order.
#[inline(always)]
fn pick(best: &mut f32, arg: &mut u32, v: f32, at: u32) {
    let take = (v > *best) | v.is_nan(); // `|`, not `||`: no branch, so it vectorises
    *best = if take { v } else { *best };
    *arg = if take { at } else { *arg };
}

/// As `cpu::forward`: (y, argmax within the input plane).
pub fn forward(x: &[f32], g: &MaxPool2dGeometry, isa: Isa) -> (Vec<f32>, Vec<u32>) {
    let (h, w, oh, ow) = (g.h as usize, g.w as usize, g.oh as usize, g.ow as usize);
    let (len, out_plane) = (g.out_len(), (oh * ow).max(1));
    let mut y = Vec::<f32>::with_capacity(len);
    let mut idx = Vec::<u32>::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(out_plane)
        .zip(idx.spare_capacity_mut()[..len].par_chunks_mut(out_plane))
        .zip(x.par_chunks(h * w))
        .for_each(|((yp, ip), xp)| {
            with_isa(
                isa,
                #[inline(always)]
                || {
                    let (down, diag) = (w as u32, w as u32 + 1);
                    for i in 0..oh {
                        let r0 = &xp[2 * i * w..][..2 * ow];
                        let r1 = &xp[(2 * i + 1) * w..][..2 * ow];
                        let yr = &mut yp[i * ow..][..ow];
                        let ir = &mut ip[i * ow..][..ow];
                        let base = (2 * i * w) as u32;
                        let j = simd_rows::forward(isa, r0, r1, yr, ir, base, w as u32);
                        for jj in j..ow {
                            let (mut best, mut arg) = (r0[2 * jj], 0);
                            pick(&mut best, &mut arg, r0[2 * jj + 1], 1);
                            pick(&mut best, &mut arg, r1[2 * jj], down);
                            pick(&mut best, &mut arg, r1[2 * jj + 1], diag);
                            yr[jj].write(best);
                            ir[jj].write(base + 2 * jj as u32 + arg);
                        }
                    }
                },
            )
        });
    // Safety: every output of every plane was written above (rows 0..oh, columns 0..ow).
    unsafe {
        y.set_len(len);
        idx.set_len(len);
    }
    (y, idx)
}

/// As `cpu::backward`: dx[argmax] = dy, every other input position 0.
pub fn backward(dy: &[f32], idx: &[u32], g: &MaxPool2dGeometry, isa: Isa) -> Vec<f32> {
    let (h, w, oh, ow) = (g.h as usize, g.w as usize, g.oh as usize, g.ow as usize);
    filled(g.in_len(), h * w, |p, dxp| {
        let (dyp, ip) = (
            &dy[p * oh * ow..][..oh * ow],
            &idx[p * oh * ow..][..oh * ow],
        );
        with_isa(
            isa,
            #[inline(always)]
            || {
                let (down, diag) = (w as u32, w as u32 + 1);
                for i in 0..oh {
                    let base = (2 * i * w) as u32;
                    let (d, ix) = (&dyp[i * ow..][..ow], &ip[i * ow..][..ow]);
                    let (top, bottom) = dxp[2 * i * w..(2 * i + 2) * w].split_at_mut(w);
                    let j = simd_rows::backward(isa, d, ix, top, bottom, base, w as u32);
                    for jj in j..ow {
                        let rel = ix[jj].wrapping_sub(base + 2 * jj as u32);
                        let g = d[jj];
                        top[2 * jj].write(if rel == 0 { g } else { 0.0 });
                        top[2 * jj + 1].write(if rel == 1 { g } else { 0.0 });
                        bottom[2 * jj].write(if rel == down { g } else { 0.0 });
                        bottom[2 * jj + 1].write(if rel == diag { g } else { 0.0 });
                    }
                    // the odd last column, dropped by the floor
                    for row in [top, bottom] {
                        for v in &mut row[2 * ow..] {
                            v.write(0.0);
                        }
                    }
                }
                // the odd last row, dropped by the floor
                for v in &mut dxp[2 * oh * w..] {
                    v.write(0.0);
                }
            },
        )
    })
}

/// One row's outputs, a vector of them at a time, with the instruction set's intrinsics: each
/// returns how many outputs (from the row's start) it wrote, a multiple of 8 (AVX-512 ends with
/// one AVX2 step where 8 or more remain); the caller does the rest. Row slices as in
/// `forward`/`backward`: `r0`, `r1` (and `top`, `bottom`) the window's two input rows from the
/// row's start, `base` the flat index of `r0[0]` within the plane, `w` the input width.
mod simd_rows {
    use std::mem::MaybeUninit;

    use crate::device::cpu::simd::Isa;

    pub fn forward(
        isa: Isa,
        r0: &[f32],
        r1: &[f32],
        y: &mut [MaybeUninit<f32>],
        idx: &mut [MaybeUninit<u32>],
        base: u32,
        w: u32,
    ) -> usize {
        let n = y.len();
        assert!(r0.len() >= 2 * n && r1.len() >= 2 * n && idx.len() >= n);
        let (a, b, yp, ip) = (
            r0.as_ptr(),
            r1.as_ptr(),
            y.as_mut_ptr().cast(),
            idx.as_mut_ptr().cast(),
        );
        match isa {
            // Safety: the set is available (isa() never names one this CPU lacks); every
            // access stays within the slices' lengths asserted above (blocks of whole vectors).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe {
                // then one AVX2 step for the last 8-15 (rows of 8 outputs are common)
                let j = x86::forward_avx512(a, b, yp, ip, n, base, w);
                let (a, b, yp, ip) = (a.add(2 * j), b.add(2 * j), yp.add(j), ip.add(j));
                j + x86::forward_avx2(a, b, yp, ip, n - j, base + 2 * j as u32, w)
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::forward_avx2(a, b, yp, ip, n, base, w) },
            _ => 0,
        }
    }

    pub fn backward(
        isa: Isa,
        dy: &[f32],
        idx: &[u32],
        top: &mut [MaybeUninit<f32>],
        bottom: &mut [MaybeUninit<f32>],
        base: u32,
        w: u32,
    ) -> usize {
        let n = dy.len();
        assert!(idx.len() >= n && top.len() >= 2 * n && bottom.len() >= 2 * n);
        let (d, ix, t, b) = (
            dy.as_ptr(),
            idx.as_ptr(),
            top.as_mut_ptr().cast(),
            bottom.as_mut_ptr().cast(),
        );
        match isa {
            // Safety: as in `forward`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe {
                let j = x86::backward_avx512(d, ix, t, b, n, base, w);
                let (d, ix, t, b) = (d.add(j), ix.add(j), t.add(2 * j), b.add(2 * j));
                j + x86::backward_avx2(d, ix, t, b, n - j, base + 2 * j as u32, w)
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::backward_avx2(d, ix, t, b, n, base, w) },
            _ => 0,
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        /// 16 outputs per step: the window's four values as four vectors (the rows' even and
        /// odd columns), then the reference's three steps of "take if greater or NaN".
        #[target_feature(enable = "avx512f")]
        pub unsafe fn forward_avx512(
            r0: *const f32,
            r1: *const f32,
            y: *mut f32,
            idx: *mut u32,
            n: usize,
            base: u32,
            w: u32,
        ) -> usize {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
            let (right, down, diag) = (
                _mm512_set1_epi32(1),
                _mm512_set1_epi32(w as i32),
                _mm512_set1_epi32(w as i32 + 1),
            );
            let mut first = _mm512_add_epi32(_mm512_set1_epi32(base as i32), even);
            let step = _mm512_set1_epi32(32);
            let mut j = 0;
            while j + 16 <= n {
                let (a0, a1) = (
                    _mm512_loadu_ps(r0.add(2 * j)),
                    _mm512_loadu_ps(r0.add(2 * j + 16)),
                );
                let (b0, b1) = (
                    _mm512_loadu_ps(r1.add(2 * j)),
                    _mm512_loadu_ps(r1.add(2 * j + 16)),
                );
                let mut best = _mm512_permutex2var_ps(a0, even, a1);
                let mut arg = _mm512_setzero_si512();
                for (v, at) in [
                    (_mm512_permutex2var_ps(a0, odd, a1), right),
                    (_mm512_permutex2var_ps(b0, even, b1), down),
                    (_mm512_permutex2var_ps(b0, odd, b1), diag),
                ] {
                    let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                        | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    best = _mm512_mask_mov_ps(best, take, v);
                    arg = _mm512_mask_mov_epi32(arg, take, at);
                }
                _mm512_storeu_ps(y.add(j), best);
                _mm512_storeu_si512(idx.add(j).cast(), _mm512_add_epi32(first, arg));
                first = _mm512_add_epi32(first, step);
                j += 16;
            }
            j
        }

        /// 8 outputs per step, as `forward_avx512`; the de-interleave is a shuffle within
        /// 128-bit lanes and a permute of 64-bit pairs.
        #[target_feature(enable = "avx2")]
        pub unsafe fn forward_avx2(
            r0: *const f32,
            r1: *const f32,
            y: *mut f32,
            idx: *mut u32,
            n: usize,
            base: u32,
            w: u32,
        ) -> usize {
            #[inline(always)]
            unsafe fn split(p: *const f32) -> (__m256, __m256) {
                let (lo, hi) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                let order = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)))
                };
                (
                    order(_mm256_shuffle_ps::<0x88>(lo, hi)),
                    order(_mm256_shuffle_ps::<0xDD>(lo, hi)),
                )
            }
            let (right, down, diag) = (
                _mm256_set1_epi32(1),
                _mm256_set1_epi32(w as i32),
                _mm256_set1_epi32(w as i32 + 1),
            );
            let mut first = _mm256_add_epi32(
                _mm256_set1_epi32(base as i32),
                _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14),
            );
            let step = _mm256_set1_epi32(16);
            let mut j = 0;
            while j + 8 <= n {
                let (a_even, a_odd) = split(r0.add(2 * j));
                let (b_even, b_odd) = split(r1.add(2 * j));
                let mut best = a_even;
                let mut arg = _mm256_setzero_si256();
                for (v, at) in [(a_odd, right), (b_even, down), (b_odd, diag)] {
                    let take = _mm256_or_ps(
                        _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                        _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                    );
                    best = _mm256_blendv_ps(best, v, take);
                    arg = _mm256_castps_si256(_mm256_blendv_ps(
                        _mm256_castsi256_ps(arg),
                        _mm256_castsi256_ps(at),
                        take,
                    ));
                }
                _mm256_storeu_ps(y.add(j), best);
                _mm256_storeu_si256(idx.add(j).cast(), _mm256_add_epi32(first, arg));
                first = _mm256_add_epi32(first, step);
                j += 8;
            }
            j
        }

        /// 16 outputs per step: each output's gradient into the one of its window's four
        /// positions its argmax names, zeros elsewhere, interleaved into the two input rows.
        #[target_feature(enable = "avx512f")]
        pub unsafe fn backward_avx512(
            dy: *const f32,
            idx: *const u32,
            top: *mut f32,
            bottom: *mut f32,
            n: usize,
            base: u32,
            w: u32,
        ) -> usize {
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
            let (right, down, diag) = (
                _mm512_set1_epi32(1),
                _mm512_set1_epi32(w as i32),
                _mm512_set1_epi32(w as i32 + 1),
            );
            let mut first = _mm512_add_epi32(
                _mm512_set1_epi32(base as i32),
                _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
            );
            let step = _mm512_set1_epi32(32);
            let mut j = 0;
            while j + 16 <= n {
                let g = _mm512_loadu_ps(dy.add(j));
                let rel = _mm512_sub_epi32(_mm512_loadu_si512(idx.add(j).cast()), first);
                let at = |code: __m512i| _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(rel, code), g);
                let (t0, t1) = (at(_mm512_setzero_si512()), at(right));
                let (b0, b1) = (at(down), at(diag));
                _mm512_storeu_ps(top.add(2 * j), _mm512_permutex2var_ps(t0, lo, t1));
                _mm512_storeu_ps(top.add(2 * j + 16), _mm512_permutex2var_ps(t0, hi, t1));
                _mm512_storeu_ps(bottom.add(2 * j), _mm512_permutex2var_ps(b0, lo, b1));
                _mm512_storeu_ps(bottom.add(2 * j + 16), _mm512_permutex2var_ps(b0, hi, b1));
                first = _mm512_add_epi32(first, step);
                j += 16;
            }
            j
        }

        /// 8 outputs per step, as `backward_avx512`; the interleave is an unpack within
        /// 128-bit lanes and a swap of lanes.
        #[target_feature(enable = "avx2")]
        pub unsafe fn backward_avx2(
            dy: *const f32,
            idx: *const u32,
            top: *mut f32,
            bottom: *mut f32,
            n: usize,
            base: u32,
            w: u32,
        ) -> usize {
            #[inline(always)]
            unsafe fn store_pairs(p: *mut f32, even: __m256, odd: __m256) {
                let (lo, hi) = (_mm256_unpacklo_ps(even, odd), _mm256_unpackhi_ps(even, odd));
                _mm256_storeu_ps(p, _mm256_permute2f128_ps::<0x20>(lo, hi));
                _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
            }
            let (right, down, diag) = (
                _mm256_set1_epi32(1),
                _mm256_set1_epi32(w as i32),
                _mm256_set1_epi32(w as i32 + 1),
            );
            let mut first = _mm256_add_epi32(
                _mm256_set1_epi32(base as i32),
                _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14),
            );
            let step = _mm256_set1_epi32(16);
            let mut j = 0;
            while j + 8 <= n {
                let g = _mm256_loadu_ps(dy.add(j));
                let rel = _mm256_sub_epi32(_mm256_loadu_si256(idx.add(j).cast()), first);
                let at = |code: __m256i| {
                    _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(rel, code)), g)
                };
                store_pairs(top.add(2 * j), at(_mm256_setzero_si256()), at(right));
                store_pairs(bottom.add(2 * j), at(down), at(diag));
                first = _mm256_add_epi32(first, step);
                j += 8;
            }
            j
        }
    }
}
