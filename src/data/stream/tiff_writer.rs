//! A TIFF written row by row as 256x256 tiles (Deflate), never held whole: single-channel 32-bit
//! float (density maps: 10 GB as floats at 50000x50000, of which one row of tiles is held) or
//! 8-bit RGB (`dcl data synth` whole-slide images).
//! BigTIFF when the raw map would pass 3.5 GB (classic TIFF's offsets are 32-bit). The file
//! appears complete or not at all (`fsutil::AtomicFile`). QuPath, ImageJ/Fiji (Bio-Formats),
//! tifffile and `image_io::read_tiff_f32` read it.
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use rayon::prelude::*;

use super::scratch::ScratchMap;
use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;

pub const TILE: usize = 256;

/// Raw maps above this are written as BigTIFF.
const CLASSIC_MAX_RAW: u64 = 3_500_000_000;

/// The samples of a tiled TIFF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Samples {
    /// One 32-bit IEEE float a pixel.
    GreyF32,
    /// Three 8-bit samples a pixel.
    Rgb8,
}

impl Samples {
    fn bytes(self) -> usize {
        match self {
            Samples::GreyF32 => 4,
            Samples::Rgb8 => 3,
        }
    }
}

/// A float map, tiled (see the module).
pub type TiledF32Writer = TiledWriter;

pub struct TiledWriter {
    samples: Samples,
    out: BufWriter<std::fs::File>,
    file: Option<AtomicFile>,
    width: usize,
    height: usize,
    big: bool,
    /// One row of tiles being filled: TILE rows of the width padded to whole tiles, as bytes.
    rows: Vec<u8>,
    filled: usize,
    rows_written: usize,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    pos: u64,
}

impl TiledWriter {
    /// A float map.
    pub fn create(path: &Path, width: usize, height: usize) -> Result<TiledWriter> {
        Self::create_with(path, width, height, Samples::GreyF32)
    }

    /// A map of `samples`, BigTIFF when it is large.
    pub fn create_with(
        path: &Path,
        width: usize,
        height: usize,
        samples: Samples,
    ) -> Result<TiledWriter> {
        let big = (width as u64 * height as u64 * samples.bytes() as u64) > CLASSIC_MAX_RAW;
        Self::create_as(path, width, height, samples, big)
    }

    /// `create_with`, as BigTIFF or not.
    pub fn create_as(
        path: &Path,
        width: usize,
        height: usize,
        samples: Samples,
        big: bool,
    ) -> Result<TiledWriter> {
        if width == 0 || height == 0 || width > u32::MAX as usize || height > u32::MAX as usize {
            return Err(Error::file(
                path,
                format!("cannot write a {width}x{height} TIFF"),
            ));
        }
        let mut file = AtomicFile::create(path)?;
        let f = file
            .file()
            .try_clone()
            .map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        let mut w = TiledWriter {
            samples,
            out: BufWriter::with_capacity(1 << 20, f),
            file: Some(file),
            width,
            height,
            big,
            rows: vec![0; TILE * width.div_ceil(TILE) * TILE * samples.bytes()],
            filled: 0,
            rows_written: 0,
            offsets: Vec::new(),
            counts: Vec::new(),
            pos: 0,
        };
        // the header; the first directory's offset is filled in by `finish`
        let header: Vec<u8> = if big {
            [
                b"II".as_slice(),
                &43u16.to_le_bytes(),
                &8u16.to_le_bytes(),
                &0u16.to_le_bytes(),
                &0u64.to_le_bytes(),
            ]
            .concat()
        } else {
            [b"II".as_slice(), &42u16.to_le_bytes(), &0u32.to_le_bytes()].concat()
        };
        w.write(&header)?;
        Ok(w)
    }

    fn fail(&self, e: impl std::fmt::Display) -> Error {
        let p = self
            .file
            .as_ref()
            .map(|f| f.path().to_path_buf())
            .unwrap_or_default();
        Error::file(p, format!("cannot write: {e}"))
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(|e| self.fail(e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Appends the next row of a float map (`width` values).
    pub fn push_row(&mut self, row: &[f32]) -> Result<()> {
        if self.samples != Samples::GreyF32 {
            return Err(self.fail("float row for a map of other samples"));
        }
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.push_row_bytes(&bytes)
    }

    /// Appends the next row as bytes (`width` pixels of the samples, little-endian).
    pub fn push_row_bytes(&mut self, row: &[u8]) -> Result<()> {
        let bpp = self.samples.bytes();
        if row.len() != self.width * bpp || self.rows_written + self.filled >= self.height {
            return Err(self.fail(format!(
                "row {} of {} bytes for a {}x{} map of {bpp} bytes a pixel",
                self.rows_written + self.filled,
                row.len(),
                self.width,
                self.height
            )));
        }
        let rb = self.width.div_ceil(TILE) * TILE * bpp;
        self.rows[self.filled * rb..self.filled * rb + row.len()].copy_from_slice(row);
        self.filled += 1;
        if self.filled == TILE || self.rows_written + self.filled == self.height {
            self.flush_tiles()?;
        }
        Ok(())
    }

    /// Compresses and writes the row of tiles (in parallel), zero-padded.
    fn flush_tiles(&mut self) -> Result<()> {
        let bpp = self.samples.bytes();
        let rb = self.width.div_ceil(TILE) * TILE * bpp;
        for r in self.filled..TILE {
            self.rows[r * rb..(r + 1) * rb].fill(0);
        }
        let rows = &self.rows;
        let tb = TILE * bpp;
        let tiles: Vec<std::io::Result<Vec<u8>>> = (0..rb / tb)
            .into_par_iter()
            .map(|t| {
                let mut z = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(TILE * tb / 4),
                    flate2::Compression::fast(),
                );
                for r in 0..TILE {
                    z.write_all(&rows[r * rb + t * tb..r * rb + (t + 1) * tb])?;
                }
                z.finish()
            })
            .collect();
        for t in tiles {
            let t = t.map_err(|e| self.fail(e))?;
            self.offsets.push(self.pos);
            self.counts.push(t.len() as u64);
            self.write(&t)?;
        }
        self.rows_written += self.filled;
        self.filled = 0;
        Ok(())
    }

    fn check_complete(&self) -> Result<()> {
        if self.rows_written != self.height {
            return Err(self.fail(format!(
                "{} of {} rows pushed",
                self.rows_written, self.height
            )));
        }
        Ok(())
    }

    /// The tiles written, kept in the temporary file to be read back (no TIFF directory is
    /// written and nothing appears at the path); every row must have been pushed.
    pub fn into_scratch(mut self) -> Result<ScratchMap> {
        self.check_complete()?;
        if self.samples != Samples::GreyF32 {
            return Err(self.fail("a scratch map holds floats"));
        }
        self.out.flush().map_err(|e| self.fail(e))?;
        Ok(ScratchMap {
            file: self.file.take().expect("not yet committed"),
            width: self.width,
            height: self.height,
            tile: TILE,
            tiles: self
                .offsets
                .iter()
                .copied()
                .zip(self.counts.iter().copied())
                .collect(),
        })
    }

    /// Writes the directory and renames the file into place; every row must have been pushed.
    pub fn finish(mut self) -> Result<()> {
        self.check_complete()?;
        if !self.pos.is_multiple_of(2) {
            self.write(&[0])?;
        }
        let big = self.big;
        let n = self.offsets.len() as u64;
        // the arrays of offsets and byte counts, when they do not fit in their entries
        let word: u64 = if big { 8 } else { 4 };
        let array = |v: &[u64]| -> Vec<u8> {
            if big {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect()
            }
        };
        let (off_bytes, cnt_bytes) = (array(&self.offsets), array(&self.counts));
        let inline = n * word <= word;
        let (mut off_at, mut cnt_at) = (0, 0);
        if !inline {
            off_at = self.pos;
            self.write(&off_bytes)?;
            cnt_at = self.pos;
            self.write(&cnt_bytes)?;
        }
        const SHORT: u16 = 3;
        let long_ty: u16 = if big { 16 } else { 4 }; // LONG8 or LONG
                                                     // (tag, type, count, value): values of SHORT and LONG fit in the entry
        let value_of = |bytes: &[u8], at: u64| -> u64 {
            if inline {
                let mut b = [0u8; 8];
                b[..bytes.len()].copy_from_slice(bytes);
                u64::from_le_bytes(b)
            } else {
                at
            }
        };
        let (spp, bits, photometric, format) = match self.samples {
            Samples::GreyF32 => (1u64, 32u64, 1u64, 3u64), // BlackIsZero, IEEE float
            Samples::Rgb8 => (3, 8, 2, 1),                 // RGB, unsigned integer
        };
        // BitsPerSample holds one SHORT per sample: three do not fit a classic entry
        let bits_value = if spp * 2 <= word {
            (0..spp).fold(0u64, |v, k| v | bits << (16 * k))
        } else {
            let at = self.pos;
            let b: Vec<u8> = (0..spp).flat_map(|_| (bits as u16).to_le_bytes()).collect();
            self.write(&b)?;
            at
        };
        let ifd_at = self.pos;
        let entries: Vec<(u16, u16, u64, u64)> = vec![
            (256, 4, 1, self.width as u64),
            (257, 4, 1, self.height as u64),
            (258, SHORT, spp, bits_value),
            (259, SHORT, 1, 8), // Adobe Deflate (zlib)
            (262, SHORT, 1, photometric),
            (277, SHORT, 1, spp),
            (284, SHORT, 1, 1),
            (322, SHORT, 1, TILE as u64),
            (323, SHORT, 1, TILE as u64),
            (324, long_ty, n, value_of(&off_bytes, off_at)),
            (325, long_ty, n, value_of(&cnt_bytes, cnt_at)),
            (339, SHORT, 1, format),
        ];
        let mut ifd = Vec::new();
        if big {
            ifd.extend((entries.len() as u64).to_le_bytes());
        } else {
            ifd.extend((entries.len() as u16).to_le_bytes());
        }
        for (tag, ty, count, value) in entries {
            ifd.extend(tag.to_le_bytes());
            ifd.extend(ty.to_le_bytes());
            if big {
                ifd.extend(count.to_le_bytes());
                ifd.extend(value.to_le_bytes());
            } else {
                ifd.extend((count as u32).to_le_bytes());
                // one SHORT value is left-justified in the 4-byte field
                let v = if ty == SHORT && count == 1 {
                    (value as u16 as u32).to_le_bytes()
                } else {
                    (value as u32).to_le_bytes()
                };
                ifd.extend(v);
            }
        }
        ifd.extend(if big { vec![0u8; 8] } else { vec![0u8; 4] });
        self.write(&ifd)?;
        self.out.flush().map_err(|e| self.fail(e))?;
        let f = self.out.get_mut();
        let patched = if big {
            f.seek(SeekFrom::Start(8))
                .and_then(|_| f.write_all(&ifd_at.to_le_bytes()))
        } else {
            f.seek(SeekFrom::Start(4))
                .and_then(|_| f.write_all(&(ifd_at as u32).to_le_bytes()))
        };
        patched.map_err(|e| self.fail(e))?;
        self.file.take().expect("not yet committed").commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(w: usize, h: usize) -> Vec<f32> {
        (0..w * h)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.25)
            .collect()
    }

    /// Written row by row, read back by the `tiff` decoder exactly, at sizes that are and are
    /// not whole tiles, with one tile and many.
    #[test]
    fn tiled_maps_read_back_exactly() {
        let d = tempfile::tempdir().unwrap();
        for (w, h, big) in [
            (1, 1, false),
            (256, 256, false),
            (300, 70, false),
            (513, 600, false),
            (1, 1, true),
            (513, 600, true),
        ] {
            let p = d.path().join(format!("m{w}x{h}{big}.tif"));
            let m = map(w, h);
            let mut wr = TiledF32Writer::create_as(&p, w, h, Samples::GreyF32, big).unwrap();
            for r in m.chunks(w) {
                wr.push_row(r).unwrap();
            }
            wr.finish().unwrap();
            let (rw, rh, back) = crate::data::image_io::read_tiff_f32(&p).unwrap();
            assert_eq!((rw, rh), (w, h));
            assert_eq!(back, m, "{w}x{h}");
        }
    }

    /// RGB: read back by the in-memory decoder and by the streamed reader.
    #[test]
    fn tiled_rgb_reads_back_exactly() {
        let d = tempfile::tempdir().unwrap();
        for (w, h, big) in [(300usize, 70usize, false), (513, 600, true)] {
            let p = d.path().join(format!("rgb{big}.tif"));
            let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 31 % 251) as u8).collect();
            let mut wr = TiledWriter::create_as(&p, w, h, Samples::Rgb8, big).unwrap();
            for r in rgb.chunks(w * 3) {
                wr.push_row_bytes(r).unwrap();
            }
            wr.finish().unwrap();
            let want = image::DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(w as u32, h as u32, rgb).unwrap(),
            );
            if !big {
                assert!(crate::data::image_io::decode(&p).unwrap() == want);
            }
            let mut src = crate::data::stream::open(&p).unwrap();
            let mut bytes = Vec::new();
            while src.read_rows(100, &mut bytes).unwrap() > 0 {}
            assert_eq!(bytes, want.as_bytes());
        }
    }

    #[test]
    fn an_unfinished_map_leaves_no_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.tif");
        let mut wr = TiledF32Writer::create(&p, 10, 10).unwrap();
        wr.push_row(&[0.0; 10]).unwrap();
        assert!(wr.finish().is_err());
        drop(TiledF32Writer::create(&p, 10, 10).unwrap());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    /// Rows read back are the rows written, at sizes that are and are not whole tiles; nothing
    /// appears at the path, and the temporary file goes with the map.
    #[test]
    fn scratch_maps_read_back_exactly_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.tif");
        for (w, h) in [(1, 1), (256, 256), (300, 70), (513, 600)] {
            let map: Vec<f32> = (0..w * h)
                .map(|i| ((i * 7919) % 1013) as f32 * 1e-3 - 0.3)
                .collect();
            let mut wr = TiledWriter::create(&path, w, h).unwrap();
            for row in map.chunks_exact(w) {
                wr.push_row(row).unwrap();
            }
            let mut s = wr.into_scratch().unwrap();
            let mut back = Vec::new();
            s.for_each_row(&mut |r: &[f32]| {
                back.extend_from_slice(r);
                Ok(())
            })
            .unwrap();
            assert!(back == map, "{w}x{h}");
            assert!(!path.exists());
            assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
            drop(s);
            assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        }
    }
}
