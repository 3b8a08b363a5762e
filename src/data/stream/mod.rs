//! Reading large images a few rows at a time, so that a whole-slide image is never held whole:
//! tiled and striped TIFF and BigTIFF region by region (`tiff`: the chunks of one band of rows
//! at a time; pyramidal and OME-TIFF at level 0, the first image), PNG row by row (`png`).
//! Rows come as raw bytes of the pixel type the in-memory decoder (`image_io::decode`) gives
//! (8 or 16 bits, grey, grey+alpha, RGB or RGBA, native byte order), so a region built from
//! them (`Band::region`) is exactly the in-memory image's crop.
//!
//! `probe` reads a file's header only (size, format, whether it can be streamed, what decoding
//! it whole would take), so the limits are checked before any pixel is decoded.
pub mod band;
pub mod png;
pub mod scratch;
pub mod tiff;
pub mod tiff_writer;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use image::ColorType;

pub use band::{image_from_bytes, Band};

/// What a file's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// "PNG", "JPEG", "TIFF" or "BigTIFF".
    pub format: &'static str,
    pub width: u64,
    pub height: u64,
    /// Bytes the image takes decoded whole (the in-memory path).
    pub decoded_bytes: u64,
    /// Ok when it can be read a band of rows at a time, else why not.
    pub streamable: Result<(), String>,
}

impl Probe {
    pub fn pixels(&self) -> u64 {
        self.width.saturating_mul(self.height)
    }
    /// "20000x20000 PNG".
    pub fn describe(&self) -> String {
        format!("{}x{} {}", self.width, self.height, self.format)
    }
}

/// A source of rows, top to bottom.
pub trait RowSource: Send {
    fn width(&self) -> u32;
    fn height(&self) -> u32;
    /// One of L8, La8, Rgb8, Rgba8, L16, La16, Rgb16, Rgba16.
    fn color(&self) -> ColorType;
    /// Appends the next `n` rows (fewer at the end of the image) to `out` as raw bytes in
    /// native byte order; returns how many. The error is the problem alone.
    fn read_rows(&mut self, n: u32, out: &mut Vec<u8>) -> Result<u32, String>;
}

/// The pixel types a band may hold.
pub fn supported_color(c: ColorType) -> bool {
    use ColorType::*;
    matches!(c, L8 | La8 | Rgb8 | Rgba8 | L16 | La16 | Rgb16 | Rgba16)
}

/// Reads the header of a PNG, JPEG or TIFF file (never its pixels).
pub fn probe(path: &Path) -> Result<Probe, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot open image: {e}"))?;
    if !meta.is_file() {
        return Err("cannot open image: not a regular file".into());
    }
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).map_err(|e| format!("cannot open image: {e}"))?,
    );
    let mut head = [0u8; 8];
    let n = read_up_to(&mut f, &mut head).map_err(|e| format!("cannot read image: {e}"))?;
    let head = &head[..n];
    if head.starts_with(&[0x89, b'P', b'N', b'G']) {
        png::probe(&mut f)
    } else if head.starts_with(&[0xFF, 0xD8]) {
        probe_jpeg(&mut f)
    } else if head.starts_with(b"II") || head.starts_with(b"MM") {
        tiff::probe(&mut f, meta.len())
    } else {
        Err("not a PNG, JPEG or TIFF image (unknown content)".into())
    }
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A JPEG's frame header (SOFn): size and components. JPEG is always decoded whole.
fn probe_jpeg<R: Read + Seek>(f: &mut R) -> Result<Probe, String> {
    let bad = || "cannot decode image (corrupt or truncated JPEG): no frame header".to_string();
    f.seek(SeekFrom::Start(2)).map_err(|_| bad())?;
    let mut b = [0u8; 2];
    for _ in 0..100_000 {
        f.read_exact(&mut b[..1]).map_err(|_| bad())?;
        if b[0] != 0xFF {
            return Err(bad());
        }
        let mut marker = [0u8; 1];
        f.read_exact(&mut marker).map_err(|_| bad())?;
        let m = marker[0];
        if m == 0xFF {
            f.seek(SeekFrom::Current(-1)).map_err(|_| bad())?;
            continue;
        }
        if m == 0xD8 || (0xD0..=0xD7).contains(&m) || m == 0x01 {
            continue;
        }
        f.read_exact(&mut b).map_err(|_| bad())?;
        let len = u16::from_be_bytes(b) as i64;
        if len < 2 {
            return Err(bad());
        }
        let sof = (0xC0..=0xCF).contains(&m) && !matches!(m, 0xC4 | 0xC8 | 0xCC);
        if sof {
            let mut h = [0u8; 6];
            f.read_exact(&mut h).map_err(|_| bad())?;
            let (height, width) = (
                u16::from_be_bytes([h[1], h[2]]) as u64,
                u16::from_be_bytes([h[3], h[4]]) as u64,
            );
            let comps = h[5].max(1) as u64;
            return Ok(Probe {
                format: "JPEG",
                width,
                height,
                decoded_bytes: width * height * comps.min(4),
                streamable: Err("JPEG images are decoded whole".into()),
            });
        }
        if m == 0xDA || m == 0xD9 {
            return Err(bad());
        }
        f.seek(SeekFrom::Current(len - 2)).map_err(|_| bad())?;
    }
    Err(bad())
}

/// Opens a streamable image (see `Probe::streamable`) as a source of rows.
pub fn open(path: &Path) -> Result<Box<dyn RowSource>, String> {
    let p = probe(path)?;
    p.streamable.clone()?;
    match p.format {
        "PNG" => Ok(Box::new(png::PngRows::open(path)?)),
        _ => Ok(Box::new(tiff::TiffRows::open(path)?)),
    }
}

/// Bytes per pixel of a band's pixel type.
pub fn bytes_per_pixel(c: ColorType) -> usize {
    c.bytes_per_pixel() as usize
}
