//! Whole-slide-sized synthetic images for benchmarks (`dcl data synth --size N`, N > 4096): a
//! mosaic of independently rendered 2048x2048 synthetic fields (`synthetic::render`), written a
//! row of blocks at a time as a tiled 8-bit RGB TIFF (BigTIFF above 3.5 GB), with its cells as
//! a points CSV beside it (`NNNcell.csv`: 0-based `x,y` pixel indices, the points-csv layout).
//! Memory: one row of blocks (25 blocks, 300 MB, for 50000 pixels a side).
use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;

use super::stream::tiff_writer::{Samples, TiledWriter};
use super::synthetic::{render, stem};
use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;

/// Side of one rendered block.
pub const BLOCK: usize = 2048;
/// The largest mosaic side.
pub const MAX_SIZE: usize = 200_000;

/// Writes `n` mosaics of `size` x `size` pixels into `out_dir`; returns the cells written.
pub fn generate(out_dir: &Path, n: usize, seed: u64, size: usize) -> Result<usize> {
    generate_blocks(out_dir, n, seed, size, BLOCK)
}

/// `generate` with blocks of `block` pixels (tests use small ones).
pub fn generate_blocks(
    out_dir: &Path,
    n: usize,
    seed: u64,
    size: usize,
    block: usize,
) -> Result<usize> {
    if size > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "synthetic image size must be at most {MAX_SIZE} pixels, got {size}"
        )));
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Error::file(out_dir, format!("cannot create folder: {e}")))?;
    let nb = size.div_ceil(block);
    let mut cells = 0;
    for i in 0..n {
        let cell = out_dir.join(format!("{}.tif", stem(i)));
        let csv = out_dir.join(format!("{}.csv", stem(i)));
        let mut tif = TiledWriter::create_with(&cell, size, size, Samples::Rgb8)?;
        let mut pts = AtomicFile::create(&csv)?;
        {
            let mut w = BufWriter::new(pts.file());
            let io = |e: std::io::Error| Error::file(&csv, format!("cannot write: {e}"));
            w.write_all(b"x,y\n").map_err(io)?;
            for by in 0..nb {
                let blocks: Vec<_> = (0..nb)
                    .into_par_iter()
                    .map(|bx| render(seed, (i * nb + by) * nb + bx, block))
                    .collect();
                let rows = block.min(size - by * block);
                let mut row = Vec::with_capacity(size * 3);
                for r in 0..rows {
                    row.clear();
                    for (bx, b) in blocks.iter().enumerate() {
                        let cols = block.min(size - bx * block);
                        row.extend_from_slice(&b.rgb[r * block * 3..][..cols * 3]);
                    }
                    tif.push_row_bytes(&row)?;
                }
                for (bx, b) in blocks.iter().enumerate() {
                    for &(x, y) in &b.dots {
                        let (x, y) = (bx * block + x, by * block + y);
                        if x < size && y < size {
                            writeln!(w, "{x},{y}").map_err(io)?;
                            cells += 1;
                        }
                    }
                }
            }
            w.flush().map_err(io)?;
        }
        tif.finish()?;
        pts.commit()?;
    }
    Ok(cells)
}
