//! PNG row by row (the `png` crate, set up as `image` sets it up, so the rows are the in-memory
//! decoder's rows): only one row is held. Interlaced (Adam7) PNGs are decoded whole.
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use image::ColorType;

use super::{Probe, RowSource};

/// The header (IHDR) of a PNG whose 8-byte signature has been read.
pub(super) fn probe<R: Read + Seek>(f: &mut R) -> Result<Probe, String> {
    let bad = || "cannot decode image (corrupt or truncated PNG): no IHDR header".to_string();
    f.seek(SeekFrom::Start(0)).map_err(|_| bad())?;
    let mut h = [0u8; 29];
    f.read_exact(&mut h).map_err(|_| bad())?;
    if &h[..8] != b"\x89PNG\r\n\x1a\n" || &h[12..16] != b"IHDR" {
        return Err(bad());
    }
    let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    let (width, height) = (be(16), be(20));
    let (depth, color, interlace) = (h[24], h[25], h[28]);
    // channels after expansion (palette to RGB(A), tRNS to alpha: at most 4)
    let channels: u64 = match color {
        0 => 1,
        2 => 3,
        3 => 4,
        4 => 2,
        6 => 4,
        _ => {
            return Err(format!(
                "cannot decode image: PNG colour type {color} is not valid"
            ))
        }
    };
    let bytes = if depth == 16 { 2 } else { 1 };
    Ok(Probe {
        format: "PNG",
        width,
        height,
        decoded_bytes: width
            .saturating_mul(height)
            .saturating_mul(channels * bytes),
        streamable: if interlaced(interlace) {
            Err("interlaced (Adam7) PNGs are decoded whole".into())
        } else {
            Ok(())
        },
    })
}

fn interlaced(method: u8) -> bool {
    method != 0
}

/// A non-interlaced PNG, row by row.
pub struct PngRows {
    reader: png::Reader<BufReader<std::fs::File>>,
    width: u32,
    height: u32,
    color: ColorType,
    next: u32,
    finished: bool,
}

impl PngRows {
    pub fn open(path: &Path) -> Result<PngRows, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("cannot open image: {e}"))?;
        let bad = |e: png::DecodingError| format!("cannot decode image (corrupt PNG): {e}");
        // the row buffers only (a few rows): 64 MiB is the png crate's default
        let mut dec = png::Decoder::new_with_limits(BufReader::new(f), png::Limits::default());
        dec.set_transformations(png::Transformations::EXPAND);
        let reader = dec.read_info().map_err(bad)?;
        let info = reader.info();
        if info.interlaced {
            return Err("interlaced (Adam7) PNGs are decoded whole".into());
        }
        let (width, height) = (info.width, info.height);
        use png::{BitDepth::*, ColorType as P};
        let color = match reader.output_color_type() {
            (P::Grayscale, Eight) => ColorType::L8,
            (P::Grayscale, Sixteen) => ColorType::L16,
            (P::GrayscaleAlpha, Eight) => ColorType::La8,
            (P::GrayscaleAlpha, Sixteen) => ColorType::La16,
            (P::Rgb, Eight) => ColorType::Rgb8,
            (P::Rgb, Sixteen) => ColorType::Rgb16,
            (P::Rgba, Eight) => ColorType::Rgba8,
            (P::Rgba, Sixteen) => ColorType::Rgba16,
            other => return Err(format!("unsupported image: PNG output type {other:?}")),
        };
        Ok(PngRows {
            reader,
            width,
            height,
            color,
            next: 0,
            finished: false,
        })
    }
}

impl RowSource for PngRows {
    fn width(&self) -> u32 {
        self.width
    }
    fn height(&self) -> u32 {
        self.height
    }
    fn color(&self) -> ColorType {
        self.color
    }
    fn read_rows(&mut self, n: u32, out: &mut Vec<u8>) -> Result<u32, String> {
        let bad =
            |e: png::DecodingError| format!("cannot decode image (corrupt or truncated PNG): {e}");
        let want = n.min(self.height - self.next);
        let sixteen = self.color.bytes_per_pixel() / self.color.channel_count() == 2;
        let row_len = self.width as usize * self.color.bytes_per_pixel() as usize;
        for _ in 0..want {
            let row = self.reader.next_row().map_err(bad)?.ok_or_else(|| {
                format!(
                    "the image ends at row {} of {} (truncated)",
                    self.next, self.height
                )
            })?;
            let data = row.data();
            if data.len() != row_len {
                return Err(format!(
                    "cannot decode image: PNG row of {} bytes, expected {row_len}",
                    data.len()
                ));
            }
            if sixteen {
                // PNG samples are big-endian; the in-memory decoder gives native order
                out.extend(
                    data.chunks_exact(2)
                        .flat_map(|c| u16::from_be_bytes([c[0], c[1]]).to_ne_bytes()),
                );
            } else {
                out.extend_from_slice(data);
            }
            self.next += 1;
        }
        if self.next == self.height && !self.finished {
            // the rest of the file to its IEND, every chunk's CRC checked: a file cut after
            // its image data is an error, as in memory
            self.finished = true;
            self.reader.finish().map_err(bad)?;
        }
        Ok(want)
    }
}
