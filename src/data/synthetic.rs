//! The built-in synthetic fluorescence set, in the spirit of SIMCEP (the simulator behind the
//! VGG cells): textured blobs of varied size, shape and brightness, clustered and overlapping,
//! with out-of-focus blur, uneven illumination, background autofluorescence and noise. One dot
//! per cell, exactly, at the pixel of its centre (centres never share a pixel). Written in the
//! VGG layout (`NNNcell.png`, `NNNdots.png`), so every tool reads it; image i of seed s depends
//! only on (s, i), and the in-memory set equals what reading the written files gives.
use std::io::IsTerminal;
use std::path::Path;

use rayon::prelude::*;

use crate::data::density::density_map;
use crate::data::image_io::{encode_png_rgb8, write_png_rgb8};
use crate::data::Sample;
use crate::error::{Error, Result};
use crate::fsutil::atomic_write;
use crate::rng::Rng;

/// Images in the default synthetic set (`--data synthetic`).
pub const DEFAULT_N: usize = 200;

/// One rendered image: interleaved 8-bit RGB and the dot pixels (column, row), row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthImage {
    pub size: usize,
    pub rgb: Vec<u8>,
    pub dots: Vec<(usize, usize)>,
}

pub fn check_size(size: usize) -> Result<()> {
    if (32..=4096).contains(&size) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "synthetic image size must be 32..=4096 pixels, got {size}"
        )))
    }
}

/// File stem of image `i` (`001cell`, ...).
pub fn stem(i: usize) -> String {
    format!("{:03}cell", i + 1)
}

/// The `source` of an in-memory synthetic image.
pub fn source(seed: u64, i: usize) -> String {
    format!("synthetic(seed={seed})/{}.png", stem(i))
}

/// One cell's parameters.
struct Cell {
    x: f32,
    y: f32,
    /// Semi-axes and orientation.
    a: f32,
    b: f32,
    theta: f32,
    /// Boundary wobble: amplitude and phase of harmonics 2 and 3.
    wob: [(f32, f32); 2],
    bright: f32,
    /// Share of the signal in the green channel (blue/green-ish hues).
    green: f32,
    /// Edge softness in pixels (out of focus cells are softer).
    soft: f32,
    /// Brighter or dimmer core (nucleus-like texture).
    core: f32,
}

/// Separable Gaussian blur of one plane in place.
fn blur(plane: &mut [f32], n: usize, sigma: f32, tmp: &mut Vec<f32>) {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / s).collect();
    tmp.clear();
    tmp.resize(n * n, 0.0);
    let ni = n as isize;
    // Rows, clamping at the borders.
    for y in 0..n {
        let row = &plane[y * n..(y + 1) * n];
        for x in 0..ni {
            let mut acc = 0.0;
            for (j, &w) in k.iter().enumerate() {
                let xx = (x + j as isize - r).clamp(0, ni - 1) as usize;
                acc += w * row[xx];
            }
            tmp[y * n + x as usize] = acc;
        }
    }
    // Columns.
    plane.iter_mut().for_each(|v| *v = 0.0);
    for y in 0..ni {
        for (j, &w) in k.iter().enumerate() {
            let yy = (y + j as isize - r).clamp(0, ni - 1) as usize;
            let (src, dst) = (
                &tmp[yy * n..(yy + 1) * n],
                &mut plane[y as usize * n..(y as usize + 1) * n],
            );
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += w * s;
            }
        }
    }
}

/// A smooth random field in about [-1, 1]: a coarse grid of random values, bilinearly upsampled.
fn smooth_field(rng: &mut Rng, n: usize, cells: usize) -> Vec<f32> {
    let g = cells + 2;
    let grid: Vec<f32> = (0..g * g).map(|_| rng.range(-1.0, 1.0)).collect();
    let mut out = vec![0.0; n * n];
    let step = cells as f32 / n as f32;
    for y in 0..n {
        let gy = y as f32 * step + 0.5;
        let (iy, fy) = (gy as usize, gy.fract());
        for x in 0..n {
            let gx = x as f32 * step + 0.5;
            let (ix, fx) = (gx as usize, gx.fract());
            let v = |a: usize, b: usize| grid[a * g + b];
            out[y * n + x] = (v(iy, ix) * (1.0 - fx) + v(iy, ix + 1) * fx) * (1.0 - fy)
                + (v(iy + 1, ix) * (1.0 - fx) + v(iy + 1, ix + 1) * fx) * fy;
        }
    }
    out
}

/// Renders image `index` of `seed` at `size` x `size`.
pub fn render(seed: u64, index: usize, size: usize) -> SynthImage {
    let mut rng = Rng::new(seed).fork(index as u64);
    let n = size;
    let nf = n as f32;
    let area = (nf * nf) / (256.0 * 256.0);
    // Cell count spans the VGG range (74-317) a little more widely.
    let count = ((rng.range(50.0, 300.0) * area).round() as usize).max(1);
    // Clusters: a share of the cells gathers around a few centres, the rest is scattered.
    let n_clusters = 1 + rng.below(5);
    let clusters: Vec<(f32, f32, f32)> = (0..n_clusters)
        .map(|_| {
            (
                rng.range(0.1, 0.9) * nf,
                rng.range(0.1, 0.9) * nf,
                rng.range(15.0, 45.0) * nf / 256.0,
            )
        })
        .collect();
    let clustered = rng.range(0.15, 0.5);
    let mean_r = rng.range(3.5, 5.0);
    let defocus = rng.range(0.0, 1.0);
    let mut occupied = vec![false; n * n];
    let mut cells = Vec::with_capacity(count);
    let mut tries = 0;
    while cells.len() < count && tries < count * 50 {
        tries += 1;
        let (x, y) = if rng.uniform() < clustered {
            let (cx, cy, s) = clusters[rng.below(n_clusters)];
            (cx + s * rng.normal(), cy + s * rng.normal())
        } else {
            (rng.range(0.0, nf), rng.range(0.0, nf))
        };
        if !(x >= 1.0 && y >= 1.0 && x < nf - 1.0 && y < nf - 1.0) {
            continue;
        }
        let p = y as usize * n + x as usize;
        if occupied[p] {
            continue;
        }
        occupied[p] = true;
        let r = (mean_r * (1.0 + 0.22 * rng.normal())).clamp(0.5 * mean_r, 1.8 * mean_r);
        let ecc = rng.range(0.7, 1.0);
        cells.push(Cell {
            x,
            y,
            a: r,
            b: r * ecc,
            theta: rng.range(0.0, std::f32::consts::PI),
            wob: [
                (rng.range(0.0, 0.08), rng.range(0.0, 6.3)),
                (rng.range(0.0, 0.05), rng.range(0.0, 6.3)),
            ],
            bright: rng.range(0.5, 1.0),
            green: rng.range(0.0, 0.12),
            soft: rng.range(0.4, 1.0) + defocus * rng.range(0.0, 1.5),
            core: rng.range(-0.3, 0.4),
        });
    }
    // Two signal planes: blue (the stain) and green (hue varies per cell).
    let mut blue = vec![0.0f32; n * n];
    let mut green = vec![0.0f32; n * n];
    for c in &cells {
        let reach = c.a * 1.25 + 3.0 * c.soft;
        let (x0, x1) = (
            (c.x - reach).floor().max(0.0) as usize,
            ((c.x + reach).ceil() as usize).min(n - 1),
        );
        let (y0, y1) = (
            (c.y - reach).floor().max(0.0) as usize,
            ((c.y + reach).ceil() as usize).min(n - 1),
        );
        let (ct, st) = (c.theta.cos(), c.theta.sin());
        for py in y0..=y1 {
            for px in x0..=x1 {
                let (dx, dy) = (px as f32 + 0.5 - c.x, py as f32 + 0.5 - c.y);
                let (u, v) = (dx * ct + dy * st, -dx * st + dy * ct);
                let ang = v.atan2(u);
                let wobble = 1.0
                    + c.wob[0].0 * (2.0 * ang + c.wob[0].1).sin()
                    + c.wob[1].0 * (3.0 * ang + c.wob[1].1).sin();
                let rho = ((u / c.a).powi(2) + (v / c.b).powi(2)).sqrt() / wobble;
                // Soft edge at rho = 1, then a brighter or dimmer core, then texture.
                let edge = 1.0 / (1.0 + ((rho - 1.0) * c.a / c.soft).exp());
                if edge < 1e-3 {
                    continue;
                }
                let profile = 1.0 + c.core * (1.0 - rho * rho).max(0.0);
                let texture = 0.75 + 0.5 * rng.uniform();
                let s = c.bright * edge * profile * texture;
                let i = py * n + px;
                blue[i] += s * (1.0 - c.green);
                green[i] += s * c.green;
            }
        }
    }
    // Optics: blur (stronger when the field is out of focus).
    let mut tmp = Vec::new();
    let sigma = 0.9 + defocus * rng.range(0.2, 0.7);
    blur(&mut blue, n, sigma, &mut tmp);
    blur(&mut green, n, sigma, &mut tmp);
    // Uneven illumination: a smooth multiplicative field between about 0.45 and 1.35, plus a
    // slow gradient across the image.
    let illum = smooth_field(&mut rng, n, 2);
    let (gx, gy) = (rng.range(-0.4, 0.4), rng.range(-0.4, 0.4));
    let gain = rng.range(0.75, 1.0);
    // Background autofluorescence: dim, smooth, mostly blue.
    let bg = smooth_field(&mut rng, n, 6);
    let bg_level = rng.range(0.1, 0.25);
    let read_noise = rng.range(0.004, 0.015);
    let shot = rng.range(0.01, 0.03);
    let mut rgb = vec![0u8; 3 * n * n];
    for y in 0..n {
        for x in 0..n {
            let i = y * n + x;
            let l =
                (0.9 + 0.35 * illum[i] + gx * (x as f32 / nf - 0.5) + gy * (y as f32 / nf - 0.5))
                    .max(0.3)
                    * gain;
            let b0 = bg_level * (1.0 + 0.3 * bg[i]);
            // Overlapping cells add up, then the detector saturates softly.
            let sb = (1.3 * (1.0 - (-1.3 * blue[i]).exp()) + b0) * l;
            let sg = (green[i] + 0.03 * b0) * l;
            let sr = 0.02 * b0 * l;
            let mut px = [sr, sg, sb];
            for v in &mut px {
                *v += rng.normal() * (read_noise + shot * v.max(0.0).sqrt());
            }
            for c in 0..3 {
                rgb[3 * i + c] = (px[c].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    let mut dots: Vec<(usize, usize)> =
        cells.iter().map(|c| (c.x as usize, c.y as usize)).collect();
    dots.sort_by_key(|&(x, y)| (y, x));
    SynthImage { size: n, rgb, dots }
}

/// Image `index` of `seed` as a sample (as read back from the written files, VGG rule: as is).
pub fn sample(seed: u64, index: usize, size: usize, sigma: f32) -> Result<Sample> {
    check_size(size)?;
    let im = render(seed, index, size);
    let n = size * size;
    let mut image = vec![0.0f32; 3 * n];
    for i in 0..n {
        for c in 0..3 {
            image[c * n + i] = im.rgb[3 * i + c] as f32 * (1.0 / 255.0);
        }
    }
    let points: Vec<(f32, f32)> = im
        .dots
        .iter()
        .map(|&(x, y)| (x as f32 + 0.5, y as f32 + 0.5))
        .collect();
    let density = density_map(size, size, &points, sigma);
    Ok(Sample {
        name: stem(index),
        source: source(seed, index),
        height: size,
        width: size,
        image,
        points,
        density,
    })
}

/// The dots image of a rendered image: pure red (255, 0, 0) at each cell, black elsewhere.
pub fn dots_rgb8(im: &SynthImage) -> Vec<u8> {
    let mut d = vec![0u8; im.rgb.len()];
    for &(x, y) in &im.dots {
        d[3 * (y * im.size + x)] = 255;
    }
    d
}

/// Writes `n` images of `seed` to `out_dir` in the VGG layout (`NNNcell.png`, `NNNdots.png`);
/// above 4096 pixels a side, mosaics as tiled TIFF with a points CSV (`synthetic_large`).
pub fn generate(out_dir: &Path, n: usize, seed: u64, size: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::Invalid("synthetic set: n must be at least 1".into()));
    }
    if size > 4096 {
        // whole-slide sizes: tiled TIFF mosaics with a points CSV
        return super::synthetic_large::generate(out_dir, n, seed, size).map(|_| ());
    }
    check_size(size)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Error::file(out_dir, format!("cannot create folder: {e}")))?;
    let pb = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(n as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let r = (0..n).into_par_iter().try_for_each(|i| {
        let im = render(seed, i, size);
        let cell = out_dir.join(format!("{}.png", stem(i)));
        let dots = out_dir.join(format!("{:03}dots.png", i + 1));
        write_png_rgb8(&cell, size, size, &im.rgb)?;
        let bytes = encode_png_rgb8(size, size, &dots_rgb8(&im))
            .map_err(|e| Error::file(&dots, e.to_string()))?;
        atomic_write(&dots, &bytes)?;
        pb.inc(1);
        Ok(())
    });
    pb.finish_and_clear();
    r
}
