//! A single-channel 32-bit float TIFF written row by row as 256x256 tiles (Deflate), never held
//! whole: a whole-slide density map (10 GB as floats at 50000x50000) takes one row of tiles.
//! BigTIFF when the raw map would pass 3.5 GB (classic TIFF's offsets are 32-bit). The file
//! appears complete or not at all (`fsutil::AtomicFile`). QuPath, ImageJ/Fiji (Bio-Formats),
//! tifffile and `image_io::read_tiff_f32` read it.
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;

pub const TILE: usize = 256;

/// Raw maps above this are written as BigTIFF.
const CLASSIC_MAX_RAW: u64 = 3_500_000_000;

pub struct TiledF32Writer {
    out: BufWriter<std::fs::File>,
    file: Option<AtomicFile>,
    width: usize,
    height: usize,
    big: bool,
    /// One row of tiles being filled: TILE rows of the width padded to whole tiles.
    rows: Vec<f32>,
    filled: usize,
    rows_written: usize,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    pos: u64,
}

impl TiledF32Writer {
    pub fn create(path: &Path, width: usize, height: usize) -> Result<TiledF32Writer> {
        let big = (width as u64 * height as u64 * 4) > CLASSIC_MAX_RAW;
        Self::create_as(path, width, height, big)
    }

    /// `create`, as BigTIFF or not.
    pub fn create_as(
        path: &Path,
        width: usize,
        height: usize,
        big: bool,
    ) -> Result<TiledF32Writer> {
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
        let mut w = TiledF32Writer {
            out: BufWriter::with_capacity(1 << 20, f),
            file: Some(file),
            width,
            height,
            big,
            rows: vec![0.0; TILE * width.div_ceil(TILE) * TILE],
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

    /// Appends the next row (`width` values).
    pub fn push_row(&mut self, row: &[f32]) -> Result<()> {
        if row.len() != self.width || self.rows_written + self.filled >= self.height {
            return Err(self.fail(format!(
                "row {} of {} values for a {}x{} map",
                self.rows_written + self.filled,
                row.len(),
                self.width,
                self.height
            )));
        }
        let pw = self.width.div_ceil(TILE) * TILE;
        self.rows[self.filled * pw..self.filled * pw + self.width].copy_from_slice(row);
        self.filled += 1;
        if self.filled == TILE || self.rows_written + self.filled == self.height {
            self.flush_tiles()?;
        }
        Ok(())
    }

    /// Compresses and writes the row of tiles (in parallel), zero-padded.
    fn flush_tiles(&mut self) -> Result<()> {
        let pw = self.width.div_ceil(TILE) * TILE;
        for r in self.filled..TILE {
            self.rows[r * pw..(r + 1) * pw].fill(0.0);
        }
        let rows = &self.rows;
        let tiles: Vec<std::io::Result<Vec<u8>>> = (0..pw / TILE)
            .into_par_iter()
            .map(|t| {
                let mut raw = Vec::with_capacity(TILE * TILE * 4);
                for r in 0..TILE {
                    let s = &rows[r * pw + t * TILE..r * pw + (t + 1) * TILE];
                    raw.extend(s.iter().flat_map(|v| v.to_le_bytes()));
                }
                let mut z =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                z.write_all(&raw)?;
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

    /// Writes the directory and renames the file into place; every row must have been pushed.
    pub fn finish(mut self) -> Result<()> {
        if self.rows_written != self.height {
            return Err(self.fail(format!(
                "{} of {} rows pushed",
                self.rows_written, self.height
            )));
        }
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
        let ifd_at = self.pos;
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
        let entries: Vec<(u16, u16, u64, u64)> = vec![
            (256, 4, 1, self.width as u64),
            (257, 4, 1, self.height as u64),
            (258, SHORT, 1, 32),
            (259, SHORT, 1, 8), // Adobe Deflate (zlib)
            (262, SHORT, 1, 1), // BlackIsZero
            (277, SHORT, 1, 1),
            (284, SHORT, 1, 1),
            (322, SHORT, 1, TILE as u64),
            (323, SHORT, 1, TILE as u64),
            (324, long_ty, n, value_of(&off_bytes, off_at)),
            (325, long_ty, n, value_of(&cnt_bytes, cnt_at)),
            (339, SHORT, 1, 3), // IEEE floating point
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
                // SHORT values are left-justified in the 4-byte field
                let v = if ty == SHORT {
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
            let mut wr = TiledF32Writer::create_as(&p, w, h, big).unwrap();
            for r in m.chunks(w) {
                wr.push_row(r).unwrap();
            }
            wr.finish().unwrap();
            let (rw, rh, back) = crate::data::image_io::read_tiff_f32(&p).unwrap();
            assert_eq!((rw, rh), (w, h));
            assert_eq!(back, m, "{w}x{h}");
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
}
