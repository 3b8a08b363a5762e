//! Ground-truth density maps (DESIGN §1): a Gaussian of σ per dot, truncated at 4σ and
//! renormalised inside the image so that every dot contributes exactly 1.
//!
//! The truncation window is the square |dx|, |dy| <= 4σ (as scipy's `gaussian_filter` with
//! `truncate=4`), which makes the kernel separable: the renormalisation of a dot cut by the image
//! border is the product of its row and column sums, and a flip or a 90° rotation of the map
//! equals the map of the flipped / rotated dots, so augmentation can transform the cached map.
use crate::error::{Error, Result};

/// Checks σ: finite and positive.
pub fn check_sigma(sigma: f32) -> Result<()> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "sigma must be a positive number of pixels, got {sigma}"
        )))
    }
}

/// Weights of one axis for a dot at continuous coordinate `c` (pixel k's centre is k + 0.5),
/// over the pixels inside [0, n): returns the first pixel and the normalised weights.
fn axis_weights(c: f32, n: usize, sigma: f32, buf: &mut Vec<f32>) -> usize {
    let r = 4.0 * sigma;
    // Pixels whose centre k + 0.5 lies within [c - r, c + r].
    let lo = (c - r - 0.5).ceil().max(0.0) as usize;
    let hi = ((c + r - 0.5).floor() as isize).min(n as isize - 1);
    buf.clear();
    if hi < lo as isize {
        // A dot so close to a tiny image's border that no centre is within reach: fall back
        // to the pixel containing it, so the dot still counts 1.
        buf.push(1.0);
        return (c.floor().max(0.0) as usize).min(n - 1);
    }
    let inv = 1.0 / (2.0 * sigma * sigma);
    let mut sum = 0.0f64;
    for k in lo..=hi as usize {
        let d = k as f32 + 0.5 - c;
        let v = (-d * d * inv).exp();
        buf.push(v);
        sum += v as f64;
    }
    let s = (1.0 / sum) as f32;
    buf.iter_mut().for_each(|v| *v *= s);
    lo
}

/// Adds the density of `points` to `map` (height x width, row-major).
pub fn add_density(
    map: &mut [f32],
    width: usize,
    height: usize,
    points: &[(f32, f32)],
    sigma: f32,
) {
    debug_assert_eq!(map.len(), width * height);
    if width == 0 || height == 0 {
        return;
    }
    let (mut wx, mut wy) = (Vec::new(), Vec::new());
    for &(x, y) in points {
        let x0 = axis_weights(x, width, sigma, &mut wx);
        let y0 = axis_weights(y, height, sigma, &mut wy);
        for (dy, &vy) in wy.iter().enumerate() {
            let row = &mut map[(y0 + dy) * width + x0..][..wx.len()];
            for (m, &vx) in row.iter_mut().zip(&wx) {
                *m += vy * vx;
            }
        }
    }
}

/// The density map of `points` in a `width` x `height` image; sums to `points.len()`.
pub fn density_map(width: usize, height: usize, points: &[(f32, f32)], sigma: f32) -> Vec<f32> {
    let mut map = vec![0.0; width * height];
    add_density(&mut map, width, height, points, sigma);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(m: &[f32]) -> f64 {
        m.iter().map(|&v| v as f64).sum()
    }

    #[test]
    fn each_dot_contributes_one_even_at_borders() {
        let pts: [(f32, f32); 5] = [
            (0.5, 0.5),
            (31.9, 16.0),
            (16.0, 16.0),
            (0.01, 23.99),
            (10.2, 3.7),
        ];
        for sigma in [0.5, 3.0, 8.0] {
            let m = density_map(32, 24, &pts[..4], sigma);
            assert!((sum(&m) - 4.0).abs() < 1e-4, "sigma {sigma}: {}", sum(&m));
            assert!(m.iter().all(|v| *v >= 0.0));
        }
        let one = density_map(32, 32, &pts[4..], 3.0);
        assert!((sum(&one) - 1.0).abs() < 1e-5);
        // The peak is the pixel containing the dot, and the map is zero beyond 4σ.
        let argmax = one
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!((argmax % 32, argmax / 32), (10, 3));
        assert_eq!(one[20 * 32 + 10], 0.0);
    }

    #[test]
    fn interior_dot_matches_the_analytic_gaussian() {
        let s = 2.0f32;
        let m = density_map(40, 40, &[(20.5, 20.5)], s);
        // Centre pixel vs its neighbour: ratio exp(-1/(2σ²)).
        let r = m[20 * 40 + 21] / m[20 * 40 + 20];
        assert!((r - (-1.0 / (2.0 * s * s)).exp()).abs() < 1e-5);
        // Symmetric in x and y.
        assert_eq!(m[20 * 40 + 23], m[23 * 40 + 20]);
    }

    #[test]
    fn bad_sigma_is_an_error() {
        assert!(check_sigma(0.0).is_err());
        assert!(check_sigma(f32::NAN).is_err());
        assert!(check_sigma(3.0).is_ok());
    }
}
