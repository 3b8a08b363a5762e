//! Reading images and annotations (dots images, CSV point lists) and writing PNG / float TIFF.
//!
//! Inputs and how they are normalised to [0, 1] before the networks see them (RGB; grey is
//! replicated to three channels, alpha is dropped, no colour management):
//!
//! | input | normalisation |
//! |---|---|
//! | 8-bit PNG, JPEG, TIFF (grey, grey+alpha, RGB, RGBA, palette) | value / 255 |
//! | 16-bit PNG, TIFF (grey, grey+alpha, RGB, RGBA) | value / 65535 (the full 16-bit range: a 12-bit camera's images are dark, as in other tools that do not stretch) |
//! | float TIFF (16/32/64-bit) whose values all lie in [0, 1] | as they are |
//! | other float TIFF | (value - min) / (max - min) over the image's finite colour samples |
//! | signed integer TIFF (8 to 64-bit), 32/64-bit unsigned TIFF | (value - min) / (max - min) over the image (these types have no full scale that images use) |
//!
//! NaN and infinite samples become 0, a constant image in the rescaled kinds becomes 0, and
//! alpha never enters min and max. TIFFs may be chunky or planar, with 1 to 4 samples a pixel
//! (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA); the first page of a multi-page file is read.
//! Rescaled and float images are held at 16 bits per sample (1/65535 steps).
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

/// What decoding one image may allocate. A file whose header declares more is refused before
/// its pixels are decoded, so a crafted header (a PNG "declaring" 10⁶ x 10⁶ pixels) is a clean
/// error, never an allocation failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width or height.
    pub max_side: u32,
    /// Largest decoded buffer in bytes (width x height x channels x bytes per channel), also
    /// the largest file read.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    /// 65535 pixels a side (JPEG's own limit) and 2 GiB decoded (e.g. 26000 x 26000 RGB at
    /// 8 bits).
    fn default() -> Self {
        DecodeLimits {
            max_side: 65535,
            max_bytes: 2 << 30,
        }
    }
}

/// The limits of images in annotated data sets (training, evaluation, statistics), which are
/// then held as 32-bit floats (12 bytes a pixel): 32768 pixels a side, 512 MiB decoded.
pub const DATASET_LIMITS: DecodeLimits = DecodeLimits {
    max_side: 32768,
    max_bytes: 512 << 20,
};

/// Decodes any PNG / JPEG / TIFF within the default `DecodeLimits`; the error names the file
/// (missing, unreadable, truncated, corrupt, too large).
pub fn decode(path: &Path) -> Result<DynamicImage> {
    decode_with(path, &DecodeLimits::default())
}

/// `decode` within `limits`.
pub fn decode_with(path: &Path, limits: &DecodeLimits) -> Result<DynamicImage> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::file(path, format!("cannot open image: {e}")))?;
    if !meta.is_file() {
        return Err(Error::file(path, "cannot open image: not a regular file"));
    }
    if meta.len() > limits.max_bytes {
        return Err(Error::file(
            path,
            format!(
                "image file of {} bytes is larger than the limit of {} bytes",
                meta.len(),
                limits.max_bytes
            ),
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read image: {e}")))?;
    decode_bytes(&bytes, limits).map_err(|e| Error::file(path, e))
}

/// Decodes an image held in memory; the error is the problem alone (callers name the file).
///
/// Strict: a decoding error or an early end of data is an error, never a partly filled image.
/// PNG and TIFF go through the `image` crate (which fails on a truncated or corrupt stream,
/// and checks PNG checksums); JPEG through `zune-jpeg` in strict mode (`image` runs it lenient,
/// which fills a truncated scan with grey and reports nothing).
pub fn decode_bytes(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> std::result::Result<DynamicImage, String> {
    let format = image::guess_format(bytes)
        .map_err(|_| "not a PNG, JPEG or TIFF image (unknown content)".to_string())?;
    // A panic in a decoder on a crafted file is reported as this file's error.
    let decoded = std::panic::catch_unwind(|| match format {
        image::ImageFormat::Jpeg => decode_jpeg_strict(bytes, limits),
        image::ImageFormat::Png | image::ImageFormat::Tiff => {
            if format == image::ImageFormat::Png {
                check_png_chunks(bytes)?;
            } else {
                check_tiff_tags(bytes)?;
                if let Some(img) = decode_tiff_samples(bytes, limits)? {
                    return Ok(img);
                }
            }
            let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
            let mut l = image::Limits::default();
            l.max_image_width = Some(limits.max_side);
            l.max_image_height = Some(limits.max_side);
            l.max_alloc = Some(limits.max_bytes);
            reader.limits(l);
            reader.decode().map_err(|e| match e {
                image::ImageError::Limits(e) => format!(
                    "image too large ({e}; at most {} pixels a side and {} bytes decoded)",
                    limits.max_side, limits.max_bytes
                ),
                image::ImageError::Unsupported(e) => format!("unsupported image: {e}"),
                e => format!("cannot decode image (corrupt or truncated): {e}"),
            })
        }
        other => Err(format!(
            "{other:?} images are not supported (PNG, JPEG or TIFF)"
        )),
    })
    .unwrap_or_else(|_| Err("cannot decode image: the decoder failed on this file".into()))?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err("image has no pixels".into());
    }
    Ok(decoded)
}

/// TIFFs the `image` crate does not read, or does not scale as documented, decoded with the
/// `tiff` crate: float (16/32/64-bit), signed integer (8 to 64-bit) and 32/64-bit unsigned
/// samples, and grey+alpha at any depth, chunky or planar, 1 to 4 samples a pixel. None for the
/// TIFFs `image` decodes itself (8- and 16-bit unsigned grey, RGB and RGBA; palette, CMYK,
/// YCbCr, bilevel). How samples are normalised: see the module's documentation.
fn decode_tiff_samples(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> std::result::Result<Option<DynamicImage>, String> {
    use tiff::decoder::{Decoder, DecodingResult, Limits};
    use tiff::tags::Tag;
    use tiff::ColorType;
    let bad = |e: tiff::TiffError| format!("cannot decode image (corrupt or truncated TIFF): {e}");
    let mut tl = Limits::default();
    tl.decoding_buffer_size = usize::try_from(limits.max_bytes).unwrap_or(usize::MAX);
    let mut dec = Decoder::new(Cursor::new(bytes))
        .map_err(bad)?
        .with_limits(tl);
    let color = dec.colortype().map_err(bad)?;
    // one value per sample (often written once for all): the first one
    let sample_format = match dec.find_tag(Tag::SampleFormat).map_err(bad)? {
        None => 1,
        Some(v) => v.into_u16_vec().map_err(bad)?.first().copied().unwrap_or(1),
    };
    let bits = color.bit_depth();
    let (spp, grey_alpha) = match color {
        ColorType::Gray(_) => (1, false),
        ColorType::GrayA(_) => (2, true),
        ColorType::RGB(_) => (3, false),
        ColorType::RGBA(_) => (4, false),
        ColorType::Multiband { num_samples, .. } if (1..=4).contains(&num_samples) => {
            (num_samples as usize, num_samples == 2)
        }
        ColorType::Multiband { num_samples, .. } => {
            return Err(format!(
                "unsupported image: TIFF with {num_samples} samples a pixel (grey, grey+alpha, \
                 RGB or RGBA are read)"
            ))
        }
        _ => return Ok(None),
    };
    let plain = sample_format == 1
        && matches!(bits, 8 | 16)
        && matches!(
            color,
            ColorType::Gray(_) | ColorType::RGB(_) | ColorType::RGBA(_)
        );
    if plain || bits < 8 {
        return Ok(None);
    }
    let (w, h) = dec.dimensions().map_err(bad)?;
    if w == 0 || h == 0 {
        return Err("image has no pixels".into());
    }
    let need = w as u64 * h as u64 * spp as u64 * (bits as u64).div_ceil(8);
    if w > limits.max_side || h > limits.max_side || need > limits.max_bytes {
        return Err(format!(
            "image too large ({w}x{h}, {spp} samples of {bits} bits; at most {} pixels a side \
             and {} bytes decoded)",
            limits.max_side, limits.max_bytes
        ));
    }
    let planar = dec
        .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
        .map_err(bad)?
        == Some(2);
    let mut data = DecodingResult::U8(Vec::new());
    dec.read_image_to_buffer(&mut data).map_err(bad)?;
    let n = w as usize * h as usize;
    // samples as f64, chunky (pixel after pixel)
    let values: Vec<f64> = match &data {
        DecodingResult::U8(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::U16(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::U32(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::U64(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::I8(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::I16(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::I32(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::I64(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::F16(v) => v.iter().map(|&x| x.to_f64()).collect(),
        DecodingResult::F32(v) => v.iter().map(|&x| x as f64).collect(),
        DecodingResult::F64(v) => v.clone(),
    };
    if values.len() < n * spp {
        return Err(format!(
            "cannot decode image (truncated TIFF): {} of {} samples",
            values.len(),
            n * spp
        ));
    }
    let sample = |i: usize, c: usize| {
        if planar {
            values[c * n + i]
        } else {
            values[i * spp + c]
        }
    };
    // 8- and 16-bit unsigned grey+alpha: kept as they are (alpha is dropped later)
    if grey_alpha && sample_format == 1 && matches!(bits, 8 | 16) {
        let px: Vec<u16> = (0..n)
            .flat_map(|i| [sample(i, 0), sample(i, 1)])
            .map(|v| v as u16)
            .collect();
        return Ok(Some(if bits == 8 {
            let px = px.into_iter().map(|v| v as u8).collect();
            DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, px).ok_or("bad buffer")?)
        } else {
            DynamicImage::ImageLumaA16(image::ImageBuffer::from_raw(w, h, px).ok_or("bad buffer")?)
        }));
    }
    // colour samples (alpha left out), normalised to [0, 1], held at 16 bits
    let colours = if spp >= 3 { 3 } else { 1 };
    let float = sample_format == 3;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for i in 0..n {
        for c in 0..colours {
            let v = sample(i, c);
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    let as_is = float && lo >= 0.0 && hi <= 1.0;
    let scale = |v: f64| -> u16 {
        let t = if !v.is_finite() {
            0.0
        } else if as_is {
            v
        } else if hi > lo {
            (v - lo) / (hi - lo)
        } else {
            0.0
        };
        (t.clamp(0.0, 1.0) * 65535.0).round() as u16
    };
    let px: Vec<u16> = (0..n)
        .flat_map(|i| (0..colours).map(move |c| (i, c)))
        .map(|(i, c)| scale(sample(i, c)))
        .collect();
    Ok(Some(if colours == 3 {
        DynamicImage::ImageRgb16(image::ImageBuffer::from_raw(w, h, px).ok_or("bad buffer")?)
    } else {
        DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, px).ok_or("bad buffer")?)
    }))
}

/// CRC-32 (ISO-HDLC, as PNG uses) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        std::array::from_fn(|n| {
            (0..8).fold(n as u32, |c, _| {
                if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
    });
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// A PNG's chunks, walked to its IEND: every chunk lies inside the file and its CRC matches.
/// The decoder stops reading once it has the pixels, so without this a file cut in (or
/// damaged after) its last image data would pass.
fn check_png_chunks(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut i = 8;
    loop {
        let Some(head) = bytes.get(i..i + 8) else {
            return Err(
                "cannot decode image (truncated PNG): it ends before its IEND chunk".into(),
            );
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        let end = (i + 8).saturating_add(len);
        let Some(crc) = bytes.get(end..end.saturating_add(4)) else {
            return Err(format!(
                "cannot decode image (truncated PNG): chunk {} at byte {i} runs past the end",
                String::from_utf8_lossy(kind)
            ));
        };
        let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32(&bytes[i + 4..end]) != want {
            return Err(format!(
                "cannot decode image (corrupt PNG): chunk {} at byte {i} fails its CRC check",
                String::from_utf8_lossy(kind)
            ));
        }
        if kind == b"IEND" {
            return Ok(());
        }
        i = end + 4;
    }
}

/// A TIFF's tags, walked through its chain of IFDs (classic and BigTIFF): every tag's values
/// must lie inside the file and number at most 2^22. The TIFF decoder reserves memory for a
/// tag's declared values before reading them (up to 256 MiB for a file of a few bytes), and
/// before any limit can be set; this bounds that by the file's size.
fn check_tiff_tags(bytes: &[u8]) -> std::result::Result<(), String> {
    const MAX_VALUES: u64 = 1 << 22;
    let bad = |what: String| Err(format!("cannot decode image (corrupt TIFF): {what}"));
    let le = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return bad("no byte-order mark".into()),
    };
    let uint = |at: usize, n: usize| -> Option<u64> {
        let b = bytes.get(at..at.checked_add(n)?)?;
        Some(if le {
            b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64)
        } else {
            b.iter().fold(0u64, |v, &x| v << 8 | x as u64)
        })
    };
    let big = match uint(2, 2) {
        Some(42) => false,
        Some(43) => true,
        _ => return bad("not a TIFF version (42) or BigTIFF (43)".into()),
    };
    let (word, entry, first) = if big { (8, 20, 8) } else { (4, 12, 4) };
    let mut ifd = uint(first, word).ok_or("cannot decode image (truncated TIFF)")?;
    let mut seen = std::collections::HashSet::new();
    while ifd != 0 {
        if !seen.insert(ifd) || seen.len() > 256 {
            return bad("its chain of directories loops or is too long".into());
        }
        let at = usize::try_from(ifd).map_err(|_| "corrupt TIFF".to_string())?;
        let count_size = if big { 8 } else { 2 };
        let Some(n) = uint(at, count_size) else {
            return bad(format!("directory at byte {at} lies past the end"));
        };
        if n > 4096 {
            return bad(format!("directory at byte {at} declares {n} tags"));
        }
        let entries = at + count_size;
        for k in 0..n as usize {
            let e = entries + k * entry;
            let (Some(tag), Some(ty), Some(count), Some(offset)) = (
                uint(e, 2),
                uint(e + 2, 2),
                uint(e + 4, word),
                uint(e + 4 + word, word),
            ) else {
                return bad(format!("directory at byte {at} runs past the end"));
            };
            let size = match ty {
                1 | 2 | 6 | 7 => 1,
                3 | 8 => 2,
                4 | 9 | 11 | 13 => 4,
                5 | 10 | 12 | 16 | 17 | 18 => 8,
                _ => 1,
            };
            if count > MAX_VALUES {
                return bad(format!("tag {tag} declares {count} values"));
            }
            let total = count * size;
            if total > word as u64
                && offset
                    .checked_add(total)
                    .is_none_or(|end| end > bytes.len() as u64)
            {
                return bad(format!(
                    "the {count} values of tag {tag} lie past the end of the file"
                ));
            }
        }
        ifd = uint(entries + n as usize * entry, word)
            .ok_or("cannot decode image (truncated TIFF): no next-directory offset")?;
    }
    Ok(())
}

/// Whether a JPEG holds an end-of-image marker (FF D9) after its first scan. The segments
/// before the scan are walked by their lengths (an EXIF thumbnail's own marker does not
/// count); inside entropy-coded data FF is always followed by 00 or a restart marker, so the
/// first FF D9 after the scan starts is the real one.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        match bytes[i + 1] {
            0xFF => i += 1,
            0xDA => return bytes[i..].windows(2).any(|w| w == [0xFF, 0xD9]),
            _ => i += 2 + u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize,
        }
    }
    false
}

/// A JPEG decoded by zune-jpeg in strict mode, to the colour types `image` gives (grey and
/// RGB, with alpha if any; CMYK and others converted to RGB).
fn decode_jpeg_strict(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> std::result::Result<DynamicImage, String> {
    use zune_core::colorspace::ColorSpace;
    let bad = |e: zune_jpeg::errors::DecodeErrors| {
        format!("cannot decode image (corrupt or truncated JPEG): {e}")
    };
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(limits.max_side as usize)
        .set_max_height(limits.max_side as usize);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    dec.decode_headers().map_err(bad)?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| "cannot decode image: no JPEG frame header".to_string())?;
    let out = match dec.input_colorspace() {
        Some(c @ (ColorSpace::RGB | ColorSpace::RGBA | ColorSpace::Luma | ColorSpace::LumaA)) => c,
        _ => ColorSpace::RGB,
    };
    let need = w as u64 * h as u64 * out.num_components() as u64;
    if need > limits.max_bytes {
        return Err(format!(
            "image too large ({w}x{h} needs {need} bytes decoded; at most {} bytes)",
            limits.max_bytes
        ));
    }
    dec.set_options(dec.options().jpeg_set_out_colorspace(out));
    let px = dec.decode().map_err(bad)?;
    // Strict mode still accepts a file cut in its last few bytes (the scan's final bits and
    // the end-of-image marker): the marker must be there.
    if !jpeg_has_end_marker(bytes) {
        return Err(
            "cannot decode image (corrupt or truncated JPEG): no end-of-image marker after the \
             image data"
                .into(),
        );
    }
    let (w, h) = (w as u32, h as u32);
    let short = || "cannot decode image: the JPEG decoder returned too few pixels".to_string();
    Ok(match out {
        ColorSpace::Luma => {
            DynamicImage::ImageLuma8(image::ImageBuffer::from_raw(w, h, px).ok_or_else(short)?)
        }
        ColorSpace::LumaA => {
            DynamicImage::ImageLumaA8(image::ImageBuffer::from_raw(w, h, px).ok_or_else(short)?)
        }
        ColorSpace::RGBA => {
            DynamicImage::ImageRgba8(image::ImageBuffer::from_raw(w, h, px).ok_or_else(short)?)
        }
        _ => DynamicImage::ImageRgb8(image::ImageBuffer::from_raw(w, h, px).ok_or_else(short)?),
    })
}

/// Width x height from the file's header, without decoding it; None when unreadable.
pub fn header_pixels(path: &Path) -> Option<u64> {
    // never opened when not a regular file (opening a FIFO waits for a writer)
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let (w, h) = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    Some(w as u64 * h as u64)
}

/// Reads an image as RGB in [0, 1], CHW, normalised as the module's table says (grey
/// replicated to RGB, alpha dropped, 16-bit scaled by 1/65535, float and other TIFF sample
/// types as documented there).
pub fn read_image_rgb(path: &Path) -> Result<RgbImage> {
    Ok(to_rgb_chw(&decode_with(path, &DATASET_LIMITS)?))
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

/// The most cells an annotation of a `width` x `height` image may mark: one per 4 pixels (at
/// least 64). More is not a dot annotation (an image given as one, a wrong mask) and would
/// be counted as nonsense; the paper's data sets mark 0.1 to 0.7 % of their pixels.
pub fn max_annotated(width: usize, height: usize) -> usize {
    (width * height / 4).max(64)
}

fn too_many_cells(w: usize, h: usize) -> String {
    format!(
        "annotation marks more than {} cells in a {w}x{h} image (more than one per 4 pixels): \
         not a dot annotation",
        max_annotated(w, h)
    )
}

/// Reads a dot-annotation image: one point per annotated pixel at its centre, row-major order.
/// Returns the image size too, so callers can check it against the image's.
pub fn read_dots_image(path: &Path, rule: DotRule) -> Result<DotsImage> {
    dots_of(&decode_with(path, &DATASET_LIMITS)?, rule).map_err(|e| Error::file(path, e))
}

/// The dots of a decoded annotation image (see `read_dots_image`); the error is the problem
/// alone (no recognisable dots).
pub fn dots_of(img: &DynamicImage, rule: DotRule) -> std::result::Result<DotsImage, String> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let grey = !img.color().has_color();
    let rule = match rule {
        DotRule::Auto if grey => DotRule::NonZero,
        DotRule::Auto => DotRule::Red,
        r => r,
    };
    let cap = max_annotated(w, h);
    let mut pts = Vec::new();
    let mut push = |i: usize| {
        pts.push(((i % w) as f32 + 0.5, (i / w) as f32 + 0.5));
        pts.len() <= cap
    };
    let within = match rule {
        DotRule::NonZero => {
            // 8-bit images as they are; others at 16 bits so that a faint nonzero 16-bit
            // value is not rounded away.
            let any = |c: &[u8]| c.iter().any(|&v| v != 0);
            match img {
                DynamicImage::ImageLuma8(p) => p
                    .as_raw()
                    .chunks_exact(1)
                    .enumerate()
                    .all(|(i, c)| !any(c) || push(i)),
                DynamicImage::ImageLumaA8(p) => p
                    .as_raw()
                    .chunks_exact(2)
                    .enumerate()
                    .all(|(i, c)| !any(&c[..1]) || push(i)),
                DynamicImage::ImageRgb8(p) => p
                    .as_raw()
                    .chunks_exact(3)
                    .enumerate()
                    .all(|(i, c)| !any(c) || push(i)),
                DynamicImage::ImageRgba8(p) => p
                    .as_raw()
                    .chunks_exact(4)
                    .enumerate()
                    .all(|(i, c)| !any(&c[..3]) || push(i)),
                other => other
                    .to_rgb16()
                    .as_raw()
                    .chunks_exact(3)
                    .enumerate()
                    .all(|(i, c)| c.iter().all(|&v| v == 0) || push(i)),
            }
        }
        DotRule::PureRed | DotRule::Red => {
            let converted;
            let p = match img.as_rgb8() {
                Some(p) => p,
                None => {
                    converted = img.to_rgb8();
                    &converted
                }
            };
            let pure = rule == DotRule::PureRed;
            p.as_raw().chunks_exact(3).enumerate().all(|(i, c)| {
                let hit = if pure {
                    c[0] == 255 && c[1] == 0 && c[2] == 0
                } else {
                    c[0] > 127 && c[1] < 100 && c[2] < 100
                };
                !hit || push(i)
            })
        }
        DotRule::Auto => true, // resolved above
    };
    if !within {
        return Err(too_many_cells(w, h));
    }
    if pts.is_empty() {
        return Err(format!(
            "annotation has no recognisable dots (looked for {})",
            rule.describe()
        ));
    }
    Ok(DotsImage {
        width: w,
        height: h,
        points: pts,
    })
}

/// The largest points CSV read (about 10 million points).
pub const MAX_CSV_BYTES: u64 = 256 << 20;

/// Reads a CSV of points: one `x,y` row per cell (x = column, y = row, 0-based pixel indices
/// whose centres are at integers, fractions allowed), parsed strictly (`parse_points_csv`).
/// Returned points use the pixel-square convention of this module (index + 0.5).
pub fn read_points_csv(path: &Path, width: usize, height: usize) -> Result<Vec<(f32, f32)>> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::file(path, format!("cannot read CSV: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_CSV_BYTES {
        return Err(Error::file(
            path,
            format!("cannot read CSV: not a regular file of at most {MAX_CSV_BYTES} bytes"),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read CSV: {e}")))?;
    parse_points_csv(&text, width, height).map_err(|e| Error::file(path, e))
}

/// Parses a points CSV. Strict, so that a damaged file is an error rather than fewer cells:
/// - blank lines and lines starting with '#' are skipped (a UTF-8 byte-order mark too);
/// - the first other line is a header only if it names the columns `x` and `y` (any case, in
///   any order, among other columns); then every row has as many fields as the header;
/// - without a header every row is exactly two fields;
/// - x and y of every row are finite numbers inside the `width` x `height` image
///   (-0.5 <= x < width - 0.5, the same for y);
/// - a file with neither a header nor a row (0 bytes, only comments) is an error; a header
///   alone means an image without cells.
///
/// Fields may be quoted ("1.5"). The error names the line.
pub fn parse_points_csv(
    text: &str,
    width: usize,
    height: usize,
) -> std::result::Result<Vec<(f32, f32)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let unquote = |f: &str| {
        let f = f.trim();
        f.strip_prefix('"')
            .and_then(|g| g.strip_suffix('"'))
            .unwrap_or(f)
            .trim()
            .to_string()
    };
    // (x column, y column, fields per row), set by the header or the first row
    let mut cols: Option<(usize, usize, usize)> = None;
    let mut header = false;
    let mut pts = Vec::new();
    let shown = |line: &str| -> String {
        let s: String = line.chars().take(60).collect();
        if s.len() < line.len() {
            format!("{s}...")
        } else {
            s
        }
    };
    for (ln, line) in text.split('\n').enumerate() {
        let ln = ln + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<String> = line.split(',').map(unquote).collect();
        let number = |f: &str| f.parse::<f64>().ok();
        if cols.is_none() {
            if fields.len() == 2 && fields.iter().all(|f| number(f).is_some()) {
                cols = Some((0, 1, 2));
            } else {
                let pos = |n: &str| fields.iter().position(|f| f.eq_ignore_ascii_case(n));
                match (pos("x"), pos("y")) {
                    (Some(x), Some(y)) => {
                        cols = Some((x, y, fields.len()));
                        header = true;
                        continue;
                    }
                    _ => {
                        return Err(format!(
                            "line {ln}: '{}' is neither a header naming the columns x and y \
                             nor a row of two numbers x,y",
                            shown(line)
                        ))
                    }
                }
            }
        }
        let (cx, cy, n) = cols.expect("set above");
        if fields.len() != n {
            return Err(format!(
                "line {ln}: expected {} but found '{}' ({} fields)",
                if header {
                    format!("{n} fields as in the header")
                } else {
                    "x,y".to_string()
                },
                shown(line),
                fields.len()
            ));
        }
        let get = |c: usize| -> std::result::Result<f64, String> {
            number(&fields[c]).ok_or_else(|| {
                format!(
                    "line {ln}: '{}' is not a number ('{}')",
                    shown(&fields[c]),
                    shown(line)
                )
            })
        };
        let (x, y) = (get(cx)?, get(cy)?);
        let inside = |v: f64, n: usize| v.is_finite() && v >= -0.5 && v < n as f64 - 0.5;
        if !inside(x, width) || !inside(y, height) {
            return Err(format!(
                "line {ln}: point ({x}, {y}) lies outside the {width}x{height} image"
            ));
        }
        pts.push(((x + 0.5) as f32, (y + 0.5) as f32));
        if pts.len() > max_annotated(width, height) {
            return Err(format!("line {ln}: {}", too_many_cells(width, height)));
        }
    }
    if cols.is_none() {
        return Err(
            "empty annotation: no header and no x,y rows (an image without cells is a file \
             holding the header x,y alone)"
                .into(),
        );
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
