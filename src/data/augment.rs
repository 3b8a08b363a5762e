//! Augmentation (paper §3.1): horizontal flip, vertical flip, rotation by ±90°, applied
//! identically to the image planes, the density map and the dots.
//!
//! A transform is hflip, then vflip, then the rotation. Point maps (W, H: size before the step):
//! hflip (x, y) -> (W - x, y); vflip (x, y) -> (x, H - y); +90° (counter-clockwise, numpy's
//! `rot90`) (x, y) -> (y, W - x); -90° (clockwise) (x, y) -> (H - y, x). Pixels follow the same
//! maps applied to their centres, so a dot stays on the pixel it marked.
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    pub hflip: bool,
    pub vflip: bool,
    /// 0: none, +1: +90° (counter-clockwise), -1: -90° (clockwise).
    pub rot: i8,
}

impl Augment {
    pub const IDENTITY: Augment = Augment {
        hflip: false,
        vflip: false,
        rot: 0,
    };

    /// Each flip with probability 1/2 and a rotation of 0, +90° or -90° with probability 1/3
    /// each (rotations only when `square`, so the batch shape is kept). Together they reach all
    /// eight symmetries of the square.
    pub fn random(rng: &mut Rng, square: bool) -> Augment {
        let hflip = rng.below(2) == 1;
        let vflip = rng.below(2) == 1;
        let r = rng.below(3);
        Augment {
            hflip,
            vflip,
            rot: if square { [0, 1, -1][r] } else { 0 },
        }
    }

    /// Output size (width, height) for an input of `w` x `h`.
    pub fn out_size(&self, w: usize, h: usize) -> (usize, usize) {
        if self.rot == 0 {
            (w, h)
        } else {
            (h, w)
        }
    }

    /// Maps a point of a `w` x `h` image.
    pub fn map_point(&self, (mut x, mut y): (f32, f32), w: usize, h: usize) -> (f32, f32) {
        let (wf, hf) = (w as f32, h as f32);
        if self.hflip {
            x = wf - x;
        }
        if self.vflip {
            y = hf - y;
        }
        match self.rot {
            1 => (y, wf - x),
            -1 => (hf - y, x),
            _ => (x, y),
        }
    }

    /// Where output pixels come from: the source offset of output pixel (i, j) is
    /// `base + i * di + j * dj`. The map on pixel indices is affine with a signed permutation
    /// matrix A (forward: d = A s + t, found by mapping three pixel centres), so its inverse is
    /// s = A^T (d - t).
    fn gather_map(&self, w: usize, h: usize) -> (isize, isize, isize) {
        let fwd = |r: usize, c: usize| {
            let (x, y) = self.map_point((c as f32 + 0.5, r as f32 + 0.5), w, h);
            (y.floor() as isize, x.floor() as isize)
        };
        let t = fwd(0, 0);
        let (a_r, a_c) = (fwd(1, 0), fwd(0, 1));
        // Columns of A: images of the unit steps in r and c.
        let (a00, a10) = (a_r.0 - t.0, a_r.1 - t.1);
        let (a01, a11) = (a_c.0 - t.0, a_c.1 - t.1);
        // s = A^T (d - t): r = a00 (i - t0) + a10 (j - t1), c = a01 (i - t0) + a11 (j - t1).
        let wi = w as isize;
        let r0 = -a00 * t.0 - a10 * t.1;
        let c0 = -a01 * t.0 - a11 * t.1;
        (r0 * wi + c0, a00 * wi + a01, a10 * wi + a11)
    }

    /// Appends the transformed `w` x `h` plane to `out` (output row-major), writing `f(v)`
    /// for each value: rows are gathered in output order, so `out` is written once,
    /// sequentially, with no zero-fill.
    pub fn extend_plane_with(
        &self,
        src: &[f32],
        w: usize,
        h: usize,
        out: &mut Vec<f32>,
        f: impl Fn(f32) -> f32,
    ) {
        assert_eq!(src.len(), w * h, "augment: source plane size");
        let (ow, oh) = self.out_size(w, h);
        let (base, di, dj) = self.gather_map(w, h);
        out.reserve(ow * oh);
        for i in 0..oh {
            let row0 = base + i as isize * di;
            match dj {
                1 => {
                    let r = row0 as usize;
                    out.extend(src[r..r + ow].iter().map(|&v| f(v)));
                }
                -1 => {
                    let r = (row0 + 1 - ow as isize) as usize;
                    out.extend(src[r..r + ow].iter().rev().map(|&v| f(v)));
                }
                _ => out.extend((0..ow as isize).map(|j| f(src[(row0 + j * dj) as usize]))),
            }
        }
    }

    /// Transforms one `w` x `h` plane into `dst` (same length), writing `f(v)` for each value.
    pub fn apply_plane_with(
        &self,
        src: &[f32],
        w: usize,
        h: usize,
        dst: &mut [f32],
        f: impl Fn(f32) -> f32,
    ) {
        assert_eq!(dst.len(), w * h, "augment: destination plane size");
        let mut v = Vec::with_capacity(w * h);
        self.extend_plane_with(src, w, h, &mut v, f);
        dst.copy_from_slice(&v);
    }

    pub fn apply_plane(&self, src: &[f32], w: usize, h: usize, dst: &mut [f32]) {
        self.apply_plane_with(src, w, h, dst, |v| v)
    }

    /// Transforms a set of points.
    pub fn apply_points(&self, pts: &[(f32, f32)], w: usize, h: usize) -> Vec<(f32, f32)> {
        pts.iter().map(|&p| self.map_point(p, w, h)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Augment> {
        let mut v = Vec::new();
        for hflip in [false, true] {
            for vflip in [false, true] {
                for rot in [0, 1, -1] {
                    v.push(Augment { hflip, vflip, rot });
                }
            }
        }
        v
    }

    #[test]
    fn rot90_matches_numpy_convention() {
        // 2x3 image, values = index: [[0,1,2],[3,4,5]]. np.rot90 (CCW) gives
        // [[2,5],[1,4],[0,3]]; clockwise gives [[3,0],[4,1],[5,2]].
        let src: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let mut dst = vec![0.0; 6];
        Augment {
            rot: 1,
            ..Augment::IDENTITY
        }
        .apply_plane(&src, 3, 2, &mut dst);
        assert_eq!(dst, [2., 5., 1., 4., 0., 3.]);
        Augment {
            rot: -1,
            ..Augment::IDENTITY
        }
        .apply_plane(&src, 3, 2, &mut dst);
        assert_eq!(dst, [3., 0., 4., 1., 5., 2.]);
        Augment {
            hflip: true,
            ..Augment::IDENTITY
        }
        .apply_plane(&src, 3, 2, &mut dst);
        assert_eq!(dst, [2., 1., 0., 5., 4., 3.]);
        Augment {
            vflip: true,
            ..Augment::IDENTITY
        }
        .apply_plane(&src, 3, 2, &mut dst);
        assert_eq!(dst, [3., 4., 5., 0., 1., 2.]);
    }

    #[test]
    fn every_transform_is_a_permutation_and_points_follow_pixels() {
        let (w, h) = (5, 4);
        for a in all() {
            let src: Vec<f32> = (0..w * h).map(|v| v as f32).collect();
            let mut dst = vec![-1.0; w * h];
            a.apply_plane(&src, w, h, &mut dst);
            let mut sorted = dst.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, src, "{a:?} is not a permutation");
            let (ow, _) = a.out_size(w, h);
            for r in 0..h {
                for c in 0..w {
                    let (x, y) = a.map_point((c as f32 + 0.5, r as f32 + 0.5), w, h);
                    let o = y.floor() as usize * ow + x.floor() as usize;
                    assert_eq!(dst[o], (r * w + c) as f32, "{a:?} at ({r},{c})");
                }
            }
        }
    }

    #[test]
    fn random_is_deterministic_and_covers_all() {
        let mut seen = std::collections::HashSet::new();
        let mut a = Rng::new(3);
        let mut b = Rng::new(3);
        for _ in 0..200 {
            let x = Augment::random(&mut a, true);
            assert_eq!(x, Augment::random(&mut b, true));
            seen.insert((x.hflip, x.vflip, x.rot));
            assert_eq!(Augment::random(&mut a, false).rot, 0);
            Augment::random(&mut b, false);
        }
        assert_eq!(seen.len(), 12);
    }
}
