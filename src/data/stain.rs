//! Stain jitter for H&E histology ("HED-light", Tellez et al. 2018): each pixel's colour is
//! split into haematoxylin, eosin and DAB optical densities by colour deconvolution (Ruifrok
//! & Johnston 2001, the stain matrix of scikit-image's `rgb2hed`), each stain is scaled by
//! α ~ U(1 − σ, 1 + σ) and shifted by β ~ U(−σ, σ), and the colour is rebuilt. Sections
//! stained more faintly or darkly, or by another lab, then look like training images. Counts
//! and density maps are untouched.
use crate::rng::Rng;

/// Rows: the RGB optical density of one unit of H, E and DAB (scikit-image's `rgb_from_hed`).
const RGB_FROM_HED: [[f32; 3]; 3] = [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]];
/// Darkest intensity the log is taken of; scikit-image's stain units are OD / −ln(this).
const MIN_INTENSITY: f32 = 1e-6;

/// One draw of the jitter: per stain, a scale and a shift (in scikit-image's stain units).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StainJitter {
    pub alpha: [f32; 3],
    pub beta: [f32; 3],
}

impl StainJitter {
    pub const IDENTITY: StainJitter = StainJitter {
        alpha: [1.0; 3],
        beta: [0.0; 3],
    };

    pub fn random(rng: &mut Rng, sigma: f32) -> StainJitter {
        let mut j = StainJitter::IDENTITY;
        for k in 0..3 {
            j.alpha[k] = rng.range(1.0 - sigma, 1.0 + sigma);
            j.beta[k] = rng.range(-sigma, sigma);
        }
        j
    }

    /// The jittered copy of a planar RGB image in [0, 1] (`3 * plane` values), clamped to
    /// [0, 1]. The identity returns the image unchanged (up to rounding).
    pub fn apply(&self, rgb_chw: &[f32], plane: usize) -> Vec<f32> {
        assert_eq!(
            rgb_chw.len(),
            3 * plane,
            "stain jitter: not a 3-channel image"
        );
        let hed_from_rgb = invert(RGB_FROM_HED);
        let unit = -MIN_INTENSITY.ln();
        // od' = od + Σ_k ((α_k − 1) s_k + β_k unit) · RGB_FROM_HED[k], with s = od · hed_from_rgb:
        // od' = od · T + c, one 3x3 matrix and an offset for the whole image.
        let mut t = [[0f32; 3]; 3];
        let mut c = [0f32; 3];
        for (i, row) in t.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (i == j) as u8 as f32
                    + (0..3)
                        .map(|k| hed_from_rgb[i][k] * (self.alpha[k] - 1.0) * RGB_FROM_HED[k][j])
                        .sum::<f32>();
            }
        }
        for (j, cj) in c.iter_mut().enumerate() {
            *cj = (0..3)
                .map(|k| self.beta[k] * unit * RGB_FROM_HED[k][j])
                .sum();
        }
        let mut out = vec![0f32; rgb_chw.len()];
        let (r, rest) = rgb_chw.split_at(plane);
        let (g, b) = rest.split_at(plane);
        for p in 0..plane {
            let od = [r[p], g[p], b[p]].map(|v| -v.max(MIN_INTENSITY).ln());
            for j in 0..3 {
                let odj = od[0] * t[0][j] + od[1] * t[1][j] + od[2] * t[2][j] + c[j];
                out[j * plane + p] = (-odj).exp().clamp(0.0, 1.0);
            }
        }
        out
    }
}

fn invert(m: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let mut inv = [[0f32; 3]; 3];
    for (i, row) in inv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            // cofactor of m[j][i]
            let (a, b) = ((j + 1) % 3, (j + 2) % 3);
            let (c, d) = ((i + 1) % 3, (i + 2) % 3);
            *v = (m[a][c] * m[b][d] - m[a][d] * m[b][c]) / det;
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(plane: usize) -> Vec<f32> {
        let mut rng = Rng::new(3);
        (0..3 * plane).map(|_| rng.range(0.05, 1.0)).collect()
    }

    #[test]
    fn the_stain_matrix_inverse_is_an_inverse() {
        let inv = invert(RGB_FROM_HED);
        for (i, row) in RGB_FROM_HED.iter().enumerate() {
            for j in 0..3 {
                let p: f32 = row.iter().zip(&inv).map(|(r, v)| r * v[j]).sum();
                assert!((p - (i == j) as u8 as f32).abs() < 1e-5, "{i} {j}: {p}");
            }
        }
    }

    #[test]
    fn identity_keeps_the_image_and_white_stays_white_under_scaling() {
        let img = image(37);
        let same = StainJitter::IDENTITY.apply(&img, 37);
        for (a, b) in img.iter().zip(&same) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // scaling a stain changes stained pixels only: white (no stain) is left white
        let more_h = StainJitter {
            alpha: [1.3, 1.0, 1.0],
            beta: [0.0; 3],
        };
        let white = vec![1.0f32; 3];
        assert_eq!(more_h.apply(&white, 1), white);
        // a haematoxylin-stained (blue-purple) pixel gets darker with more haematoxylin
        let od = RGB_FROM_HED[0].map(|v| v * 0.8);
        let px: Vec<f32> = od.iter().map(|o| (-o).exp()).collect();
        let darker = more_h.apply(&px, 1);
        for c in 0..3 {
            assert!(darker[c] < px[c], "channel {c}: {} !< {}", darker[c], px[c]);
        }
        // the darker pixel is what 1.3 times the stain gives
        for c in 0..3 {
            let want = (-od[c] * 1.3).exp();
            assert!((darker[c] - want).abs() < 1e-4, "{} vs {want}", darker[c]);
        }
    }

    #[test]
    fn draws_are_seeded_and_bounded() {
        let a = StainJitter::random(&mut Rng::new(9), 0.05);
        assert_eq!(a, StainJitter::random(&mut Rng::new(9), 0.05));
        assert_ne!(a, StainJitter::random(&mut Rng::new(10), 0.05));
        for k in 0..3 {
            assert!((0.95..1.05).contains(&a.alpha[k]) && a.beta[k].abs() <= 0.05);
        }
        let out = StainJitter::random(&mut Rng::new(1), 0.5).apply(&image(50), 50);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
