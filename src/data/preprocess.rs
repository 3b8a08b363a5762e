//! Preprocessing rules of DESIGN §2, one per data set, turning an image and its dots into
//! network-resolution patches. Dots follow the pixels: a dot goes to the patch holding the pixel
//! it lies in (so each dot lands in exactly one patch) and is rescaled with it, so the patches'
//! counts add up to the image's count.
use crate::data::density::density_map;
use crate::data::image_io::RgbImage;
use crate::data::Sample;
use crate::error::{Error, Result};

/// How an image becomes patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preprocess {
    /// Used as is, at native size (VGG: 256x256).
    AsIs,
    /// Resized to `size` x `size` (ADI: 150x150 -> 256x256).
    Resize { size: usize },
    /// Cut into four quadrants, each resized to `size` x `size` (MBM: 600x600 -> 4 x 300x300 ->
    /// 256x256).
    Quad { size: usize },
    /// Shorter side padded (black, right / bottom) to a square, resized to the nearest multiple
    /// k of `patch` (k >= 1), cut into a k x k grid (DCC and users' data).
    Grid { patch: usize },
}

impl std::str::FromStr for Preprocess {
    type Err = Error;
    /// `as-is`, `resize[:N]`, `quad[:N]`, `grid[:N]` (N defaults to 256).
    fn from_str(s: &str) -> Result<Preprocess> {
        let (kind, n) = match s.split_once(':') {
            Some((k, n)) => {
                let n: usize = n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    Error::Invalid(format!("preprocess '{s}': size must be a positive integer"))
                })?;
                (k, n)
            }
            None => (s, 256),
        };
        match kind {
            "as-is" | "asis" | "none" => Ok(Preprocess::AsIs),
            "resize" => Ok(Preprocess::Resize { size: n }),
            "quad" => Ok(Preprocess::Quad { size: n }),
            "grid" => Ok(Preprocess::Grid { patch: n }),
            _ => Err(Error::Invalid(format!(
                "unknown preprocessing '{s}' (expected as-is, resize[:N], quad[:N] or grid[:N])"
            ))),
        }
    }
}

impl std::fmt::Display for Preprocess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Preprocess::AsIs => write!(f, "as-is"),
            Preprocess::Resize { size } => write!(f, "resize:{size}"),
            Preprocess::Quad { size } => write!(f, "quad:{size}"),
            Preprocess::Grid { patch } => write!(f, "grid:{patch}"),
        }
    }
}

/// Separable resampling weights for one axis: for each output index, the first input index
/// and its weights. Triangle (bilinear) filter with half-pixel centres (align_corners=False),
/// widened by the scale when shrinking so downsampling averages instead of aliasing (as PIL).
struct Axis {
    taps: Vec<(usize, Vec<f32>)>,
}

impl Axis {
    fn new(n_in: usize, n_out: usize) -> Axis {
        let scale = n_in as f64 / n_out as f64;
        let support = scale.max(1.0);
        let taps = (0..n_out)
            .map(|o| {
                let centre = (o as f64 + 0.5) * scale;
                let lo = ((centre - support).floor().max(0.0)) as usize;
                let hi = ((centre + support).ceil() as usize).min(n_in);
                let mut w: Vec<f32> = Vec::with_capacity(hi - lo);
                let mut sum = 0.0f64;
                for i in lo..hi {
                    let t = 1.0 - ((i as f64 + 0.5 - centre) / support).abs();
                    let t = t.max(0.0);
                    w.push(t as f32);
                    sum += t;
                }
                if sum <= 0.0 {
                    // Cannot happen for n_in >= 1 (the nearest pixel always has weight > 0).
                    let k = 1.0 / w.len() as f32;
                    w.iter_mut().for_each(|v| *v = k);
                } else {
                    w.iter_mut().for_each(|v| *v = (*v as f64 / sum) as f32);
                }
                // Trim zero weights at both ends.
                let first = w.iter().position(|&v| v > 0.0).unwrap_or(0);
                let last = w.iter().rposition(|&v| v > 0.0).unwrap_or(0);
                (lo + first, w[first..=last].to_vec())
            })
            .collect();
        Axis { taps }
    }
}

/// Resizes a region (x0, y0, w, h) of a CHW image with `channels` planes to `ow` x `oh`.
pub fn resize_region(
    src: &[f32],
    sw: usize,
    sh: usize,
    channels: usize,
    (x0, y0, w, h): (usize, usize, usize, usize),
    ow: usize,
    oh: usize,
) -> Vec<f32> {
    assert!(x0 + w <= sw && y0 + h <= sh && src.len() == channels * sw * sh);
    let mut out = vec![0.0f32; channels * ow * oh];
    if w == ow && h == oh {
        for c in 0..channels {
            for r in 0..h {
                let s = &src[c * sw * sh + (y0 + r) * sw + x0..][..w];
                out[c * ow * oh + r * ow..][..ow].copy_from_slice(s);
            }
        }
        return out;
    }
    let ax = Axis::new(w, ow);
    let ay = Axis::new(h, oh);
    let mut tmp = vec![0.0f32; h * ow];
    for c in 0..channels {
        let plane = &src[c * sw * sh..(c + 1) * sw * sh];
        // Horizontal pass over the region's rows.
        for r in 0..h {
            let row = &plane[(y0 + r) * sw + x0..][..w];
            for (o, (start, wts)) in ax.taps.iter().enumerate() {
                tmp[r * ow + o] = row[*start..][..wts.len()]
                    .iter()
                    .zip(wts)
                    .map(|(a, b)| a * b)
                    .sum();
            }
        }
        // Vertical pass.
        let dst = &mut out[c * ow * oh..(c + 1) * ow * oh];
        for (o, (start, wts)) in ay.taps.iter().enumerate() {
            let drow = &mut dst[o * ow..(o + 1) * ow];
            for (k, &wt) in wts.iter().enumerate() {
                let srow = &tmp[(start + k) * ow..][..ow];
                for (d, &s) in drow.iter_mut().zip(srow) {
                    *d += wt * s;
                }
            }
        }
    }
    out
}

/// One patch of the source image: the region it comes from and its output size.
#[derive(Clone, Copy, Debug)]
struct Patch {
    row: usize,
    col: usize,
    region: (usize, usize, usize, usize),
    out: (usize, usize),
}

impl Preprocess {
    /// Whether patch names carry a grid position (`<stem>#r<row>c<col>`).
    fn patched(&self) -> bool {
        matches!(self, Preprocess::Quad { .. } | Preprocess::Grid { .. })
    }

    /// Cuts and resizes `img` with its `points` (pixel-square coordinates, see `image_io`),
    /// producing one `Sample` per patch with its density map (σ in output pixels).
    pub fn apply(
        &self,
        img: &RgbImage,
        points: &[(f32, f32)],
        stem: &str,
        source: &str,
        sigma: f32,
    ) -> Result<Vec<Sample>> {
        let (w, h) = (img.width, img.height);
        if w == 0 || h == 0 {
            return Err(Error::file(source, "image has no pixels"));
        }
        // The Grid rule works on a padded, resized copy; the others on the image itself.
        let padded;
        let (src, sw, sh, scale, patches) = match *self {
            Preprocess::AsIs | Preprocess::Resize { .. } => {
                let out = match *self {
                    Preprocess::Resize { size } => (size, size),
                    _ => (w, h),
                };
                let whole = Patch {
                    row: 0,
                    col: 0,
                    region: (0, 0, w, h),
                    out,
                };
                (img, w, h, 1.0, vec![whole])
            }
            Preprocess::Quad { size } => {
                if w < 2 || h < 2 {
                    return Err(Error::file(
                        source,
                        format!("a {w}x{h} image cannot be cut into quadrants"),
                    ));
                }
                let (hw, hh) = (w / 2, h / 2);
                let mut p = Vec::new();
                for (row, (y0, ph)) in [(0, hh), (hh, h - hh)].into_iter().enumerate() {
                    for (col, (x0, pw)) in [(0, hw), (hw, w - hw)].into_iter().enumerate() {
                        p.push(Patch {
                            row,
                            col,
                            region: (x0, y0, pw, ph),
                            out: (size, size),
                        });
                    }
                }
                (img, w, h, 1.0, p)
            }
            Preprocess::Grid { patch } => {
                let s = w.max(h);
                let k = ((s as f64 / patch as f64).round() as usize).max(1);
                let side = k * patch;
                let mut sq = vec![0.0f32; 3 * s * s];
                for c in 0..3 {
                    for r in 0..h {
                        sq[c * s * s + r * s..][..w]
                            .copy_from_slice(&img.data[c * w * h + r * w..][..w]);
                    }
                }
                let data = resize_region(&sq, s, s, 3, (0, 0, s, s), side, side);
                padded = RgbImage {
                    width: side,
                    height: side,
                    data,
                };
                let mut p = Vec::new();
                for row in 0..k {
                    for col in 0..k {
                        p.push(Patch {
                            row,
                            col,
                            region: (col * patch, row * patch, patch, patch),
                            out: (patch, patch),
                        });
                    }
                }
                (&padded, side, side, side as f32 / s as f32, p)
            }
        };
        let mut out = Vec::with_capacity(patches.len());
        for p in &patches {
            let (x0, y0, pw, ph) = p.region;
            let (ow, oh) = p.out;
            let (fx, fy) = (ow as f32 / pw as f32, oh as f32 / ph as f32);
            let mut pts = Vec::new();
            for &(x, y) in points {
                // Position in `src` pixels; the dot belongs to the patch holding its pixel.
                let (sx, sy) = (x * scale, y * scale);
                let (px, py) = (clamp_px(sx, sw), clamp_px(sy, sh));
                if px >= x0 && px < x0 + pw && py >= y0 && py < y0 + ph {
                    let nx = ((sx - x0 as f32) * fx).clamp(0.0, ow as f32 - 1e-3);
                    let ny = ((sy - y0 as f32) * fy).clamp(0.0, oh as f32 - 1e-3);
                    pts.push((nx, ny));
                }
            }
            let image = resize_region(&src.data, sw, sh, 3, p.region, ow, oh);
            let density = density_map(ow, oh, &pts, sigma);
            let name = if self.patched() {
                format!("{stem}#r{}c{}", p.row, p.col)
            } else {
                stem.to_string()
            };
            out.push(Sample {
                name,
                source: source.to_string(),
                height: oh,
                width: ow,
                image,
                points: pts,
                density,
            });
        }
        Ok(out)
    }
}

/// The pixel index holding continuous coordinate `v` in an axis of `n` pixels.
fn clamp_px(v: f32, n: usize) -> usize {
    (v.floor().max(0.0) as usize).min(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_preserves_constants_and_mean() {
        let (w, h) = (30, 20);
        let src: Vec<f32> = (0..3 * w * h)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        for (ow, oh) in [(16, 16), (64, 48), (30, 20)] {
            let out = resize_region(&vec![0.25; 3 * w * h], w, h, 3, (0, 0, w, h), ow, oh);
            assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6));
            let out = resize_region(&src, w, h, 3, (0, 0, w, h), ow, oh);
            let m_in: f32 = src.iter().sum::<f32>() / src.len() as f32;
            let m_out: f32 = out.iter().sum::<f32>() / out.len() as f32;
            assert!((m_in - m_out).abs() < 0.02, "{ow}x{oh}: {m_in} vs {m_out}");
        }
        // 2x upscaling of [0, 1] gives PyTorch's align_corners=False values.
        let out = resize_region(&[0.0, 1.0], 2, 1, 1, (0, 0, 2, 1), 4, 1);
        assert_eq!(out, [0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn parse_and_display() {
        for s in ["as-is", "resize:256", "quad:128", "grid:256"] {
            assert_eq!(s.parse::<Preprocess>().unwrap().to_string(), s);
        }
        assert_eq!(
            "grid".parse::<Preprocess>().unwrap(),
            Preprocess::Grid { patch: 256 }
        );
        assert!("grid:0".parse::<Preprocess>().is_err());
        assert!("tiles".parse::<Preprocess>().is_err());
    }
}
