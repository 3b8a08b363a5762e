//! TIFF and BigTIFF region by region: the chunks (tiles or strips) covering one band of rows
//! are decoded at a time by the `tiff` crate (the decoder `image` uses, so every compression
//! it reads and the same pixels), and only that band is held. The first image of the file is
//! read: level 0 of a pyramidal or OME-TIFF.
//!
//! `probe` walks the chain of directories itself, seeking (never reading the file whole):
//! every tag's values must lie inside the file and number at most 2^22, as `image_io` checks
//! for TIFFs decoded in memory, so a crafted directory never makes the decoder reserve memory.
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use image::ColorType;
use tiff::decoder::{ChunkType, Decoder, DecodingResult};
use tiff::tags::Tag;

use super::{Probe, RowSource};

/// The largest chunk (tile or strip) decoded at once: the `tiff` crate's own buffer limit.
const MAX_CHUNK_BYTES: u64 = 256 << 20;

/// One directory entry: tag, type, count and the value field's offset in the file.
struct Entry {
    tag: u16,
    ty: u16,
    count: u64,
    /// Where the values are: inline in the entry or at the offset it holds.
    at: u64,
}

fn type_size(ty: u16) -> u64 {
    match ty {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => 1,
    }
}

struct Reader<'a, R> {
    f: &'a mut R,
    le: bool,
    len: u64,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn uint(&mut self, at: u64, n: usize) -> Option<u64> {
        if at.checked_add(n as u64)? > self.len {
            return None;
        }
        self.f.seek(SeekFrom::Start(at)).ok()?;
        let mut b = [0u8; 8];
        self.f.read_exact(&mut b[..n]).ok()?;
        let b = &b[..n];
        Some(if self.le {
            b.iter().rev().fold(0u64, |v, &x| v << 8 | x as u64)
        } else {
            b.iter().fold(0u64, |v, &x| v << 8 | x as u64)
        })
    }
    /// Value `i` of an entry of type SHORT, LONG or LONG8.
    fn value(&mut self, e: &Entry, i: u64) -> Option<u64> {
        let size = type_size(e.ty);
        if !matches!(e.ty, 1 | 3 | 4 | 16) || i >= e.count {
            return None;
        }
        self.uint(e.at + i * size, size as usize)
    }
}

/// The header of a TIFF or BigTIFF file (byte-order mark already seen).
pub(super) fn probe<R: Read + Seek>(f: &mut R, len: u64) -> Result<Probe, String> {
    let bad = |what: String| format!("cannot decode image (corrupt TIFF): {what}");
    f.seek(SeekFrom::Start(0)).map_err(|e| bad(e.to_string()))?;
    let mut bom = [0u8; 2];
    f.read_exact(&mut bom)
        .map_err(|_| bad("no byte-order mark".into()))?;
    let le = &bom == b"II";
    let mut r = Reader { f, le, len };
    let big = match r.uint(2, 2) {
        Some(42) => false,
        Some(43) => true,
        _ => return Err(bad("not a TIFF version (42) or BigTIFF (43)".into())),
    };
    let (word, entry, first) = if big { (8, 20u64, 8) } else { (4, 12, 4) };
    let count_size = if big { 8 } else { 2 };
    let mut ifd = r
        .uint(first, word)
        .ok_or("cannot decode image (truncated TIFF)")?;
    let mut seen = std::collections::HashSet::new();
    let mut level0: Option<Vec<Entry>> = None;
    while ifd != 0 {
        if !seen.insert(ifd) || seen.len() > 256 {
            return Err(bad("its chain of directories loops or is too long".into()));
        }
        let Some(n) = r.uint(ifd, count_size) else {
            return Err(bad(format!("directory at byte {ifd} lies past the end")));
        };
        if n > 4096 {
            return Err(bad(format!("directory at byte {ifd} declares {n} tags")));
        }
        let entries = ifd + count_size as u64;
        let mut list = Vec::new();
        for k in 0..n {
            let e = entries + k * entry;
            let (Some(tag), Some(ty), Some(count), Some(offset)) = (
                r.uint(e, 2),
                r.uint(e + 2, 2),
                r.uint(e + 4, word),
                r.uint(e + 4 + word as u64, word),
            ) else {
                return Err(bad(format!("directory at byte {ifd} runs past the end")));
            };
            let (tag, ty) = (tag as u16, ty as u16);
            if count > 1 << 22 {
                return Err(bad(format!("tag {tag} declares {count} values")));
            }
            let total = count * type_size(ty);
            let at = if total > word as u64 {
                if offset.checked_add(total).is_none_or(|end| end > len) {
                    return Err(bad(format!(
                        "the {count} values of tag {tag} lie past the end of the file"
                    )));
                }
                offset
            } else {
                e + 4 + word as u64
            };
            list.push(Entry { tag, ty, count, at });
        }
        if level0.is_none() {
            level0 = Some(list);
        }
        ifd = r
            .uint(entries + n * entry, word)
            .ok_or("cannot decode image (truncated TIFF): no next-directory offset")?;
    }
    let entries = level0.ok_or_else(|| bad("no image directory".into()))?;
    let mut get = |tag: u16, i: u64| -> Option<u64> {
        let e = entries.iter().find(|e| e.tag == tag)?;
        r.value(e, i)
    };
    let (Some(width), Some(height)) = (get(256, 0), get(257, 0)) else {
        return Err(bad("no image width or length".into()));
    };
    let samples = get(277, 0).unwrap_or(1);
    let bits = get(258, 0).unwrap_or(1);
    let format = get(339, 0).unwrap_or(1);
    let planar = get(284, 0).unwrap_or(1);
    let tile = (get(322, 0), get(323, 0));
    let chunk_bytes = |cw: u64, ch: u64| {
        cw.saturating_mul(ch)
            .saturating_mul(samples)
            .saturating_mul(bits.div_ceil(8))
    };
    let chunk = match tile {
        (Some(tw), Some(th)) => chunk_bytes(tw, th),
        _ => chunk_bytes(width, get(278, 0).unwrap_or(height).min(height)),
    };
    let streamable = if !(bits == 8 || bits == 16) || format != 1 {
        Err(format!(
            "TIFFs of {bits}-bit {} samples are decoded whole",
            match format {
                2 => "signed integer",
                3 => "floating-point",
                _ => "unsigned integer",
            }
        ))
    } else if !(1..=4).contains(&samples) {
        Err(format!(
            "TIFFs of {samples} samples a pixel are decoded whole"
        ))
    } else if planar != 1 {
        Err("planar (one plane per channel) TIFFs are decoded whole".into())
    } else if chunk > MAX_CHUNK_BYTES {
        Err(format!(
            "its {} of {chunk} bytes is too large to decode a region at a time (at most \
             {MAX_CHUNK_BYTES}; save it as a tiled TIFF)",
            if tile.0.is_some() { "tile" } else { "strip" }
        ))
    } else {
        Ok(())
    };
    Ok(Probe {
        format: if big { "BigTIFF" } else { "TIFF" },
        width,
        height,
        decoded_bytes: width
            .saturating_mul(height)
            .saturating_mul(samples)
            .saturating_mul(bits.div_ceil(8)),
        streamable,
    })
}

/// The first image of a TIFF, a band of chunks at a time.
pub struct TiffRows {
    dec: Decoder<BufReader<std::fs::File>>,
    width: u32,
    height: u32,
    color: ColorType,
    bpp: usize,
    chunk_w: u32,
    chunk_h: u32,
    tiled: bool,
    across: u32,
    chunks: u64,
    next: u32,
    /// Rows [cache_y0, cache_y0 + cache_rows) of the current row of chunks.
    cache: Vec<u8>,
    cache_y0: u32,
    cache_rows: u32,
}

impl TiffRows {
    pub fn open(path: &Path) -> Result<TiffRows, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("cannot open image: {e}"))?;
        let bad = |e: tiff::TiffError| format!("cannot decode image (corrupt TIFF): {e}");
        let mut dec = Decoder::new(BufReader::new(f)).map_err(bad)?;
        let (width, height) = dec.dimensions().map_err(bad)?;
        use tiff::ColorType as T;
        let color = match dec.colortype().map_err(bad)? {
            T::Gray(8) => ColorType::L8,
            T::Gray(16) => ColorType::L16,
            T::GrayA(8) => ColorType::La8,
            T::GrayA(16) => ColorType::La16,
            T::RGB(8) => ColorType::Rgb8,
            T::RGB(16) => ColorType::Rgb16,
            T::RGBA(8) => ColorType::Rgba8,
            T::RGBA(16) => ColorType::Rgba16,
            other => return Err(format!("TIFFs of colour type {other:?} are decoded whole")),
        };
        if let Some(f) = dec
            .find_tag_unsigned_vec::<u16>(Tag::SampleFormat)
            .map_err(bad)?
        {
            if f.iter().any(|&v| v != 1) {
                return Err("TIFFs of signed or floating-point samples are decoded whole".into());
            }
        }
        if dec
            .find_tag_unsigned::<u16>(Tag::PlanarConfiguration)
            .map_err(bad)?
            .is_some_and(|p| p != 1)
        {
            return Err("planar (one plane per channel) TIFFs are decoded whole".into());
        }
        let (chunk_w, chunk_h) = dec.chunk_dimensions();
        let tiled = dec.get_chunk_type() == ChunkType::Tile;
        let across = if tiled {
            width.div_ceil(chunk_w.max(1))
        } else {
            1
        };
        let down = height.div_ceil(chunk_h.max(1));
        let chunks = if tiled {
            dec.tile_count().map_err(bad)? as u64
        } else {
            dec.find_tag_unsigned_vec::<u64>(Tag::StripOffsets)
                .map_err(bad)?
                .map_or(0, |v| v.len() as u64)
        };
        if chunk_w == 0 || chunk_h == 0 || chunks < across as u64 * down as u64 {
            return Err(format!(
                "cannot decode image (corrupt TIFF): {chunks} {} for a {width}x{height} image \
                 in {chunk_w}x{chunk_h} chunks",
                if tiled { "tiles" } else { "strips" }
            ));
        }
        Ok(TiffRows {
            dec,
            width,
            height,
            color,
            bpp: color.bytes_per_pixel() as usize,
            chunk_w,
            chunk_h,
            tiled,
            across,
            chunks,
            next: 0,
            cache: Vec::new(),
            cache_y0: 0,
            cache_rows: 0,
        })
    }

    /// Decodes the row of chunks holding row `y`.
    fn load(&mut self, y: u32) -> Result<(), String> {
        let r = y / self.chunk_h;
        let y0 = r * self.chunk_h;
        let rows = self.chunk_h.min(self.height - y0);
        let rb = self.width as usize * self.bpp;
        self.cache.clear();
        self.cache.resize(rows as usize * rb, 0);
        for c in 0..self.across {
            let idx = r * self.across + c;
            if idx as u64 >= self.chunks {
                return Err("cannot decode image (corrupt TIFF): a chunk is missing".into());
            }
            let dec = &mut self.dec;
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let dims = dec.chunk_data_dimensions(idx);
                dec.read_chunk(idx).map(|d| (dims, d))
            }))
            .map_err(|_| "cannot decode image: the decoder failed on this file".to_string())?;
            let ((dw, dh), data) = read.map_err(|e| {
                format!(
                    "cannot decode image (corrupt or truncated TIFF): {} {idx}: {e}",
                    if self.tiled { "tile" } else { "strip" }
                )
            })?;
            let bytes: &[u8] = match &data {
                DecodingResult::U8(v) => v,
                DecodingResult::U16(v) => bytemuck::cast_slice(v),
                _ => return Err("cannot decode image: unexpected TIFF sample type".into()),
            };
            let x0 = c * self.chunk_w;
            let want_w = if self.tiled {
                self.chunk_w.min(self.width - x0)
            } else {
                self.width
            };
            let cb = dw as usize * self.bpp;
            if dw != want_w || dh < rows || bytes.len() < rows as usize * cb {
                return Err(format!(
                    "cannot decode image (corrupt TIFF): chunk {idx} holds {dw}x{dh} pixels, \
                     expected {want_w}x{rows}"
                ));
            }
            for k in 0..rows as usize {
                let dst = k * rb + x0 as usize * self.bpp;
                self.cache[dst..dst + cb].copy_from_slice(&bytes[k * cb..(k + 1) * cb]);
            }
        }
        self.cache_y0 = y0;
        self.cache_rows = rows;
        Ok(())
    }
}

impl RowSource for TiffRows {
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
        let want = n.min(self.height - self.next);
        let rb = self.width as usize * self.bpp;
        for _ in 0..want {
            let y = self.next;
            if !(self.cache_y0..self.cache_y0 + self.cache_rows).contains(&y) {
                self.load(y)?;
            }
            let k = (y - self.cache_y0) as usize;
            out.extend_from_slice(&self.cache[k * rb..(k + 1) * rb]);
            self.next += 1;
        }
        Ok(want)
    }
}
