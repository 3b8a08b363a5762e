//! Reading images and annotations (dots images, CSV point lists) and writing PNG / float TIFF.
//!
//! Coordinates: pixel (row r, column c) is the unit square [c, c+1) x [r, r+1), so the dot of an
//! annotated pixel lies at its centre (c + 0.5, r + 0.5). Resizing by a factor s then maps a
//! point to (x s, y s), flips to (W - x, y), and a dot lies in pixel (floor y, floor x).
use std::io::Cursor;
use std::path::Path;

use image::DynamicImage;

use crate::error::{Error, Result};
use crate::fsutil::atomic_write;

/// An RGB image in [0, 1], planar CHW (3 * height * width values).
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize) -> RgbImage {
        RgbImage {
            width,
            height,
            data: vec![0.0; 3 * width * height],
        }
    }
}

/// Image file extensions the readers accept (lower case).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Decodes any PNG / JPEG / TIFF; the error names the file (missing, unreadable, truncated).
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::file(path, format!("cannot open image: {e}")))?
        .with_guessed_format()
        .map_err(|e| Error::file(path, format!("cannot read image: {e}")))?;
    let img = reader.decode().map_err(|e| {
        Error::file(
            path,
            format!("cannot decode image (unreadable or truncated): {e}"),
        )
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::file(path, "image has no pixels"));
    }
    Ok(img)
}

/// Width x height from the file's header, without decoding it; None when unreadable.
pub fn header_pixels(path: &Path) -> Option<u64> {
    let (w, h) = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    Some(w as u64 * h as u64)
}

/// Reads an image as RGB in [0, 1], CHW: grey is replicated to RGB, alpha dropped, 16-bit
/// scaled by 1/65535, float images clamped to [0, 1].
pub fn read_image_rgb(path: &Path) -> Result<RgbImage> {
    Ok(to_rgb_chw(&decode(path)?))
}

/// Planar RGB in [0, 1] from any decoded image (explicit per layout: no colour management).
pub fn to_rgb_chw(img: &DynamicImage) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let n = w * h;
    let mut out = RgbImage::new(w, h);
    let (r, rest) = out.data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    // `put(i, [r, g, b])` for every pixel i in row-major order.
    let mut put = |i: usize, v: [f32; 3]| {
        r[i] = v[0];
        g[i] = v[1];
        b[i] = v[2];
    };
    const S8: f32 = 1.0 / 255.0;
    const S16: f32 = 1.0 / 65535.0;
    match img {
        DynamicImage::ImageLuma8(p) => p.as_raw().iter().enumerate().for_each(|(i, &v)| {
            let v = v as f32 * S8;
            put(i, [v, v, v])
        }),
        DynamicImage::ImageLumaA8(p) => {
            p.as_raw().chunks_exact(2).enumerate().for_each(|(i, c)| {
                let v = c[0] as f32 * S8;
                put(i, [v, v, v])
            })
        }
        DynamicImage::ImageRgb8(p) => p
            .as_raw()
            .chunks_exact(3)
            .enumerate()
            .for_each(|(i, c)| put(i, [c[0] as f32 * S8, c[1] as f32 * S8, c[2] as f32 * S8])),
        DynamicImage::ImageRgba8(p) => p
            .as_raw()
            .chunks_exact(4)
            .enumerate()
            .for_each(|(i, c)| put(i, [c[0] as f32 * S8, c[1] as f32 * S8, c[2] as f32 * S8])),
        DynamicImage::ImageLuma16(p) => p.as_raw().iter().enumerate().for_each(|(i, &v)| {
            let v = v as f32 * S16;
            put(i, [v, v, v])
        }),
        DynamicImage::ImageLumaA16(p) => {
            p.as_raw().chunks_exact(2).enumerate().for_each(|(i, c)| {
                let v = c[0] as f32 * S16;
                put(i, [v, v, v])
            })
        }
        DynamicImage::ImageRgb16(p) => {
            p.as_raw().chunks_exact(3).enumerate().for_each(|(i, c)| {
                put(i, [c[0] as f32 * S16, c[1] as f32 * S16, c[2] as f32 * S16])
            })
        }
        DynamicImage::ImageRgba16(p) => {
            p.as_raw().chunks_exact(4).enumerate().for_each(|(i, c)| {
                put(i, [c[0] as f32 * S16, c[1] as f32 * S16, c[2] as f32 * S16])
            })
        }
        other => {
            let f = other.to_rgb32f();
            f.as_raw().chunks_exact(3).enumerate().for_each(|(i, c)| {
                put(
                    i,
                    [
                        c[0].clamp(0.0, 1.0),
                        c[1].clamp(0.0, 1.0),
                        c[2].clamp(0.0, 1.0),
                    ],
                )
            })
        }
    }
    out
}

/// Which pixels of a dot-annotation image are cells. One annotated pixel is one cell: dots
/// touch in VGG and MBM, so connected components would undercount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotRule {
    /// Exactly (255, 0, 0) at 8 bits (VGG).
    PureRed,
    /// R > 127, G < 100, B < 100 at 8 bits: red dots that survived JPEG (ADI).
    Red,
    /// Any channel nonzero (MBM's 1-bit masks; grey dot images).
    NonZero,
    /// Grey images: `NonZero`; colour images: `Red` (users' dots images).
    Auto,
}

impl std::str::FromStr for DotRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<DotRule> {
        match s.to_ascii_lowercase().as_str() {
            "pure-red" => Ok(DotRule::PureRed),
            "red" => Ok(DotRule::Red),
            "nonzero" => Ok(DotRule::NonZero),
            "auto" => Ok(DotRule::Auto),
            _ => Err(Error::Invalid(format!(
                "unknown dot rule '{s}' (expected pure-red, red, nonzero or auto)"
            ))),
        }
    }
}

impl DotRule {
    fn describe(self) -> &'static str {
        match self {
            DotRule::PureRed => "pure red (255,0,0) pixels",
            DotRule::Red => "red pixels (R>127, G<100, B<100)",
            DotRule::NonZero => "nonzero pixels",
            DotRule::Auto => "nonzero (grey) or red (colour) pixels",
        }
    }
}

/// A dot-annotation image's size and its dots.
#[derive(Clone, Debug, PartialEq)]
pub struct DotsImage {
    pub width: usize,
    pub height: usize,
    pub points: Vec<(f32, f32)>,
}

/// Reads a dot-annotation image: one point per annotated pixel at its centre, row-major order.
/// Returns the image size too, so callers can check it against the image's.
pub fn read_dots_image(path: &Path, rule: DotRule) -> Result<DotsImage> {
    let img = decode(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let grey = !img.color().has_color();
    let rule = match rule {
        DotRule::Auto if grey => DotRule::NonZero,
        DotRule::Auto => DotRule::Red,
        r => r,
    };
    let mut pts = Vec::new();
    let mut push = |i: usize| pts.push(((i % w) as f32 + 0.5, (i / w) as f32 + 0.5));
    match rule {
        DotRule::NonZero => {
            // 16 bits so that a faint nonzero 16-bit value is not rounded away.
            let p = img.to_rgb16();
            for (i, c) in p.as_raw().chunks_exact(3).enumerate() {
                if c[0] != 0 || c[1] != 0 || c[2] != 0 {
                    push(i)
                }
            }
        }
        DotRule::PureRed | DotRule::Red => {
            let p = img.to_rgb8();
            let pure = rule == DotRule::PureRed;
            for (i, c) in p.as_raw().chunks_exact(3).enumerate() {
                let hit = if pure {
                    c[0] == 255 && c[1] == 0 && c[2] == 0
                } else {
                    c[0] > 127 && c[1] < 100 && c[2] < 100
                };
                if hit {
                    push(i)
                }
            }
        }
        DotRule::Auto => unreachable!("resolved above"),
    }
    if pts.is_empty() {
        return Err(Error::file(
            path,
            format!(
                "annotation has no recognisable dots (looked for {})",
                rule.describe()
            ),
        ));
    }
    Ok(DotsImage {
        width: w,
        height: h,
        points: pts,
    })
}

/// Reads a CSV of points: one `x,y` row per cell (x = column, y = row, 0-based pixel indices
/// whose centres are at integers, fractions allowed). A first line that is not numeric is a
/// header; if it names columns `x` and `y` those are used, otherwise the first two. Blank lines
/// and lines starting with '#' are skipped. Every point must lie inside the `width` x `height`
/// image (-0.5 <= x < width - 0.5). A file with a header and no rows means zero cells.
/// Returned points use the pixel-square convention of this module (index + 0.5).
pub fn read_points_csv(path: &Path, width: usize, height: usize) -> Result<Vec<(f32, f32)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read CSV: {e}")))?;
    let mut cols = (0usize, 1usize);
    let mut pts = Vec::new();
    let mut first = true;
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"').trim())
            .collect();
        if first {
            first = false;
            if fields.iter().any(|f| f.parse::<f64>().is_err()) {
                let pos = |n: &str| fields.iter().position(|f| f.eq_ignore_ascii_case(n));
                if let (Some(x), Some(y)) = (pos("x"), pos("y")) {
                    cols = (x, y);
                }
                continue;
            }
        }
        let get = |c: usize| -> Result<f64> {
            let f = fields.get(c).ok_or_else(|| {
                Error::file(
                    path,
                    format!("line {}: expected x,y but found '{line}'", ln + 1),
                )
            })?;
            f.parse::<f64>().map_err(|_| {
                Error::file(
                    path,
                    format!("line {}: '{f}' is not a number ('{line}')", ln + 1),
                )
            })
        };
        let (x, y) = (get(cols.0)?, get(cols.1)?);
        let inside = |v: f64, n: usize| v.is_finite() && v >= -0.5 && v < n as f64 - 0.5;
        if !inside(x, width) || !inside(y, height) {
            return Err(Error::file(
                path,
                format!(
                    "line {}: point ({x}, {y}) lies outside the {width}x{height} image",
                    ln + 1
                ),
            ));
        }
        pts.push(((x + 0.5) as f32, (y + 0.5) as f32));
    }
    Ok(pts)
}

/// Quantises an RGB CHW [0,1] image to interleaved 8-bit.
pub fn to_rgb8_interleaved(img: &RgbImage) -> Vec<u8> {
    let n = img.width * img.height;
    let mut out = vec![0u8; 3 * n];
    for i in 0..n {
        for c in 0..3 {
            out[3 * i + c] = (img.data[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    out
}

/// Encodes interleaved 8-bit RGB as PNG bytes.
pub fn encode_png_rgb8(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    image::write_buffer_with_format(
        &mut buf,
        rgb,
        width as u32,
        height as u32,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    Ok(buf.into_inner())
}

/// Writes interleaved 8-bit RGB as a PNG file (atomically).
pub fn write_png_rgb8(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<()> {
    let bytes =
        encode_png_rgb8(width, height, rgb).map_err(|e| Error::file(path, e.to_string()))?;
    atomic_write(path, &bytes)
}

/// Writes a single-channel 32-bit float TIFF (atomically): density maps in cells per pixel.
pub fn write_tiff_f32(path: &Path, width: usize, height: usize, data: &[f32]) -> Result<()> {
    if data.len() != width * height {
        return Err(Error::file(
            path,
            format!("{} values for a {width}x{height} TIFF", data.len()),
        ));
    }
    let mut buf = Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut buf)
        .and_then(|mut enc| {
            enc.write_image::<tiff::encoder::colortype::Gray32Float>(
                width as u32,
                height as u32,
                data,
            )
        })
        .map_err(|e| Error::file(path, format!("TIFF encoding failed: {e}")))?;
    atomic_write(path, buf.get_ref())
}

/// Reads a single-channel 32-bit float TIFF written by `write_tiff_f32` (tests, tools).
pub fn read_tiff_f32(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let f =
        std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let mut dec = tiff::decoder::Decoder::new(std::io::BufReader::new(f))
        .map_err(|e| Error::file(path, format!("not a TIFF: {e}")))?;
    let (w, h) = dec
        .dimensions()
        .map_err(|e| Error::file(path, format!("bad TIFF: {e}")))?;
    match dec.read_image() {
        Ok(tiff::decoder::DecodingResult::F32(v)) => Ok((w as usize, h as usize, v)),
        Ok(_) => Err(Error::file(path, "TIFF is not 32-bit float")),
        Err(e) => Err(Error::file(path, format!("cannot decode TIFF: {e}"))),
    }
}
