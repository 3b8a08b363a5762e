//! Element-wise maps over f32 buffers in parallel chunks, each chunk's loop compiled for the
//! instruction set chosen at run time ([`super::simd::with_isa`]): the building block of the
//! memory-bound ops' fast paths (ReLU, the element-wise ops, Adam). The value of each element
//! depends on its own inputs only, so results are the plain loop's, bit for bit.
use rayon::prelude::*;

use super::simd::{with_isa, Isa};

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
pub const CHUNK: usize = 1 << 15;

/// `f` over `x` into a new buffer.
pub fn map(isa: Isa, x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = Vec::<f32>::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for (d, &v) in d.iter_mut().zip(s) {
                        d.write(f(v));
                    }
                },
            )
        });
    // Safety: every element was written above.
    unsafe { y.set_len(x.len()) };
    y
}

/// `f` over pairs of `a` and `b` (equal lengths) into a new buffer.
pub fn map2(isa: Isa, a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map2: lengths differ");
    let mut y = Vec::<f32>::with_capacity(a.len());
    y.spare_capacity_mut()[..a.len()]
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (sa, sb))| {
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for ((d, &u), &v) in d.iter_mut().zip(sa).zip(sb) {
                        d.write(f(u, v));
                    }
                },
            )
        });
    // Safety: every element was written above.
    unsafe { y.set_len(a.len()) };
    y
}

/// `a[i] = f(a[i], b[i])` in place (equal lengths).
pub fn update2(isa: Isa, a: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert_eq!(a.len(), b.len(), "update2: lengths differ");
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(sa, sb)| {
            with_isa(
                isa,
                #[inline(always)]
                || {
                    for (u, &v) in sa.iter_mut().zip(sb) {
                        *u = f(*u, v);
                    }
                },
            )
        });
}

/// Per matrix of `count` row-major `rows × cols` matrices stored one after another, its
/// transpose (`cols × rows`), in 16 × 16 blocks, blocks of columns in parallel: e.g. NCHW
/// images `[C][H·W]` to channels-last `[H·W][C]`.
pub fn transpose(isa: Isa, src: &[f32], count: usize, rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 16;
    let per = rows * cols;
    assert_eq!(src.len(), count * per, "transpose: length");
    let mut dst = vec![0.0f32; src.len()];
    if per == 0 {
        return dst;
    }
    // Tasks: one matrix's B output rows (= B input columns); within a task, B × B blocks.
    dst.par_chunks_mut(per)
        .zip(src.par_chunks(per))
        .for_each(|(d, s)| {
            d.par_chunks_mut(B * rows)
                .enumerate()
                .for_each(|(cb, dblk)| {
                    let c0 = cb * B;
                    let cw = B.min(cols - c0);
                    with_isa(
                        isa,
                        #[inline(always)]
                        || {
                            for r0 in (0..rows).step_by(B) {
                                let rh = B.min(rows - r0);
                                for c in 0..cw {
                                    let drow = &mut dblk[c * rows + r0..][..rh];
                                    for (r, v) in drow.iter_mut().enumerate() {
                                        *v = s[(r0 + r) * cols + c0 + c];
                                    }
                                }
                            }
                        },
                    )
                });
        });
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_equal_plain_loops() {
        let a: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..100_003).map(|i| (i as f32 * 0.11).cos()).collect();
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let f = |u: f32, v: f32| u.mul_add(v, 0.5).max(0.0);
            assert_eq!(
                map(isa, &a, |v| v.max(0.0)),
                a.iter().map(|v| v.max(0.0)).collect::<Vec<_>>()
            );
            let want: Vec<f32> = a.iter().zip(&b).map(|(&u, &v)| f(u, v)).collect();
            assert_eq!(map2(isa, &a, &b, f), want);
            let mut c = a.clone();
            update2(isa, &mut c, &b, f);
            assert_eq!(c, want);
            let (count, rows, cols) = (3, 37, 21);
            let src = &a[..count * rows * cols];
            let t = transpose(isa, src, count, rows, cols);
            for m in 0..count {
                for r in 0..rows {
                    for c in 0..cols {
                        let per = rows * cols;
                        assert_eq!(t[m * per + c * rows + r], src[m * per + r * cols + c]);
                    }
                }
            }
        }
    }
}
