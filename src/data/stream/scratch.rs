//! A float map written row by row and read back row by row, held on disk meanwhile: the tiles
//! of a `TiledWriter` (square, Deflate) kept in its temporary file, without a TIFF directory,
//! and read back in order, a row of tiles at a time. A streamed image's density map goes through
//! one when the map must be scaled by a sum known only once it is complete
//! (`cli::count_scale`). The file is removed when the map is dropped (or by
//! `fsutil::clean_stale_temps` after a crash: it bears the temporary-file name).
use std::io::{Read, Seek, SeekFrom};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;

pub struct ScratchMap {
    pub(super) file: AtomicFile,
    pub(super) width: usize,
    pub(super) height: usize,
    /// The side of the square tiles.
    pub(super) tile: usize,
    /// Offset and length of each tile, row of tiles by row of tiles.
    pub(super) tiles: Vec<(u64, u64)>,
}

impl ScratchMap {
    fn fail(&self, e: impl std::fmt::Display) -> Error {
        Error::file(
            self.file.path(),
            format!("cannot read back its temporary map: {e}"),
        )
    }

    /// Hands `f` every row, top to bottom.
    pub fn for_each_row(&mut self, f: &mut dyn FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let t = self.tile;
        let across = self.width.div_ceil(t);
        let mut row = vec![0f32; self.width];
        for (r, y0) in (0..self.height).step_by(t).enumerate() {
            let mut packed = Vec::with_capacity(across);
            for &(at, len) in &self.tiles[r * across..(r + 1) * across] {
                let mut b = vec![0u8; len as usize];
                let file = self.file.file();
                file.seek(SeekFrom::Start(at))
                    .and_then(|_| file.read_exact(&mut b))
                    .map_err(|e| self.fail(e))?;
                packed.push(b);
            }
            let tiles: Vec<std::io::Result<Vec<f32>>> = packed
                .par_iter()
                .map(|z| {
                    let mut raw = Vec::with_capacity(t * t * 4);
                    flate2::read::ZlibDecoder::new(&z[..]).read_to_end(&mut raw)?;
                    if raw.len() != t * t * 4 {
                        return Err(std::io::Error::other("a tile of the wrong size"));
                    }
                    Ok(raw
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect())
                })
                .collect();
            let tiles = tiles
                .into_iter()
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| self.fail(e))?;
            for k in 0..t.min(self.height - y0) {
                for (i, tile) in tiles.iter().enumerate() {
                    let x0 = i * t;
                    let n = t.min(self.width - x0);
                    row[x0..x0 + n].copy_from_slice(&tile[k * t..k * t + n]);
                }
                f(&row)?;
            }
        }
        Ok(())
    }
}
