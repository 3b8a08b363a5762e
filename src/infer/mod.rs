//! Inference on images of any size: the image is resized by the checkpoint's `input_scale`,
//! padded to a multiple of 16, cut into overlapping network-sized tiles, and the tiles' maps
//! are blended with weights that sum to one everywhere (see `tiling`), so the count is the sum
//! of one seamless map. Memory stays bounded: the image is kept in its decoded pixel type and
//! converted a tile at a time; the counter's map is 1/8 of the image per side.
//!
//! `dataset` runs the networks over an annotated data set patch by patch instead (validation
//! and evaluation).
pub mod dataset;
pub mod points;
pub mod resample;
pub mod stream;
pub mod tiling;

use image::DynamicImage;

use crate::autograd::Var;
use crate::data::normalize_imagenet;
use crate::error::{Error, Result};
use crate::nn::{Counter, Localizer};
use crate::tensor::Tensor;
use points::{find_points, Point};
use tiling::{axis_weights, tile_starts};

/// The most network pixels (after `input_scale`) one image may have: its maps alone take
/// 4 bytes a pixel (8 with a localizer).
pub const MAX_NETWORK_PIXELS: u64 = 1 << 30;

#[derive(Clone, Copy, Debug)]
pub struct InferOptions {
    /// Tile side in network pixels (the training patch size).
    pub tile: usize,
    /// Minimum overlap between neighbouring tiles.
    pub overlap: usize,
    /// Tiles per forward pass.
    pub batch: usize,
}

impl InferOptions {
    /// The tile side actually used (a multiple of 16, at least 16), checked against the overlap:
    /// tiles must advance, so the overlap must be smaller than the tile.
    pub fn checked_tile(&self) -> Result<usize> {
        let tile = self.tile.max(16) / 16 * 16;
        if self.overlap >= tile {
            return Err(Error::Invalid(format!(
                "tile overlap {} must be smaller than the tile side {tile} (the tile is rounded \
                 down to a multiple of 16, at least 16)",
                self.overlap
            )));
        }
        Ok(tile)
    }
}

impl Default for InferOptions {
    fn default() -> Self {
        InferOptions {
            tile: 256,
            overlap: 32,
            batch: 4,
        }
    }
}

/// A single-channel map, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Map {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Map {
    pub fn zeros(width: usize, height: usize) -> Map {
        Map {
            width,
            height,
            data: vec![0.0; width * height],
        }
    }
    pub fn sum(&self) -> f64 {
        self.data.iter().map(|&v| v as f64).sum()
    }
}

/// What the networks say about one image.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub count: f64,
    /// Image size as read.
    pub width: usize,
    pub height: usize,
    /// Network pixels per image pixel.
    pub scale: f32,
    /// The counter's |z|, cells per coarse pixel (8x8 network pixels); sums to `count`.
    pub coarse: Map,
    /// The localizer's density, cells per network pixel, cropped to the scaled image.
    pub density: Option<Map>,
}

impl Prediction {
    /// The cells located in the localizer's map (see `points::find_points`), in image pixel
    /// coordinates; None without a localizer.
    pub fn points(&self, threshold: f32, min_distance: f32) -> Option<Vec<Point>> {
        let d = self.density.as_ref()?;
        let pts = find_points(d, self.count, threshold, min_distance);
        Some(
            pts.into_iter()
                .map(|q| Point {
                    x: q.x / self.scale,
                    y: q.y / self.scale,
                    score: q.score,
                })
                .collect(),
        )
    }
}

/// Counts (and with a localizer, maps) one decoded image.
pub fn predict(
    counter: &Counter,
    localizer: Option<&Localizer>,
    img: &DynamicImage,
    opts: &InferOptions,
) -> Result<Prediction> {
    let coarse_of = |images: Tensor| -> Result<Vec<f32>> {
        let z = counter.infer(images)?.value().to_host()?;
        Ok(z.into_iter().map(f32::abs).collect())
    };
    predict_with(coarse_of, counter.config.input_scale, localizer, img, opts)
}

/// `predict` with the counter given as a function from a batch of normalised tiles
/// [n,3,h,w] to their coarse maps [n,h/8,w/8] (cells per coarse pixel).
pub fn predict_with(
    coarse_of: impl Fn(Tensor) -> Result<Vec<f32>>,
    scale: f32,
    localizer: Option<&Localizer>,
    img: &DynamicImage,
    opts: &InferOptions,
) -> Result<Prediction> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(Error::Invalid("empty image".into()));
    }
    let (nw, nh) = (
        ((width as f32 * scale).round() as usize).max(1),
        ((height as f32 * scale).round() as usize).max(1),
    );
    if !scale.is_finite() || (nw as u64).saturating_mul(nh as u64) > MAX_NETWORK_PIXELS {
        return Err(Error::Invalid(format!(
            "a {width}x{height} image scaled by the checkpoint's input_scale {scale} is \
             {nw}x{nh} network pixels, more than the {} million one image may have",
            MAX_NETWORK_PIXELS >> 20
        )));
    }
    let resized;
    let img = if (nw, nh) != (width, height) {
        resized = img.resize_exact(nw as u32, nh as u32, image::imageops::FilterType::Triangle);
        &resized
    } else {
        img
    };
    let (pw, ph) = (nw.div_ceil(16) * 16, nh.div_ceil(16) * 16);
    let tile = opts.checked_tile()?;
    let (tw, th) = (tile.min(pw), tile.min(ph));
    let c = Counter::STRIDE;
    let (zw, zh) = (tw / c, th / c);
    let xs = tile_starts(pw, tw, opts.overlap, c);
    let ys = tile_starts(ph, th, opts.overlap, c);
    let coarse_starts = |v: &[usize]| v.iter().map(|s| s / c).collect::<Vec<_>>();
    let (cwx, cwy) = (
        axis_weights(pw / c, &coarse_starts(&xs), zw),
        axis_weights(ph / c, &coarse_starts(&ys), zh),
    );
    let pad = border_mean(img);
    let tiles: Vec<(usize, usize)> = (0..ys.len())
        .flat_map(|ty| (0..xs.len()).map(move |tx| (ty, tx)))
        .collect();

    // The counter's map: every tile's map blended with weights that sum to one at each coarse
    // pixel, so the sum over the image counts each cell once.
    let mut coarse = Map::zeros(pw / c, ph / c);
    for group in tiles.chunks(opts.batch.max(1)) {
        let mut buf = Vec::with_capacity(group.len() * 3 * tw * th);
        for &(ty, tx) in group {
            buf.extend(tile_input(img, xs[tx], ys[ty], tw, th, pad));
        }
        let maps = coarse_of(Tensor::from_vec(buf, &[group.len(), 3, th, tw])?)?;
        for (k, &(ty, tx)) in group.iter().enumerate() {
            let plane = &maps[k * zh * zw..(k + 1) * zh * zw];
            let (x0, y0) = (xs[tx] / c, ys[ty] / c);
            blend(&mut coarse, plane, zw, zh, x0, y0, &cwx[tx], &cwy[ty]);
        }
    }

    // The localizer's map, on the same tiles; its 4th input channel is the tile's crop of the
    // blended counter map, so the two networks see one consistent coarse map.
    let mut density = None;
    if let Some(loc) = localizer {
        let (wx, wy) = (axis_weights(pw, &xs, tw), axis_weights(ph, &ys, th));
        let mut dmap = Map::zeros(pw, ph);
        let inv = 1.0 / loc.config.density_scale;
        for group in tiles.chunks(opts.batch.max(1)) {
            let mut buf = Vec::with_capacity(group.len() * 3 * tw * th);
            let mut zbuf = Vec::with_capacity(group.len() * zw * zh);
            for &(ty, tx) in group {
                buf.extend(tile_input(img, xs[tx], ys[ty], tw, th, pad));
                for i in 0..zh {
                    let row = (ys[ty] / c + i) * coarse.width + xs[tx] / c;
                    zbuf.extend_from_slice(&coarse.data[row..row + zw]);
                }
            }
            let n = group.len();
            let images = Tensor::from_vec(buf, &[n, 3, th, tw])?;
            // built on the host from the blended map; it must live where the localizer does
            let z = Tensor::from_vec(zbuf, &[n, 1, zh, zw])?.into_device(&loc.store.device())?;
            let z = Var::constant(z);
            let mut dv = loc.infer(images, &z)?.value().to_host()?;
            dv.iter_mut().for_each(|v| *v = v.max(0.0) * inv);
            for (k, &(ty, tx)) in group.iter().enumerate() {
                let plane = &dv[k * th * tw..(k + 1) * th * tw];
                blend(&mut dmap, plane, tw, th, xs[tx], ys[ty], &wx[tx], &wy[ty]);
            }
        }
        density = Some(crop(&dmap, nw, nh));
    }
    let count = coarse.sum();
    Ok(Prediction {
        count,
        width,
        height,
        scale,
        coarse,
        density,
    })
}

/// Adds `w`·plane into `map` at (x0, y0).
#[allow(clippy::too_many_arguments)]
pub(crate) fn blend(
    map: &mut Map,
    plane: &[f32],
    pw: usize,
    ph: usize,
    x0: usize,
    y0: usize,
    wx: &[f32],
    wy: &[f32],
) {
    for i in 0..ph {
        let row = &mut map.data[(y0 + i) * map.width + x0..][..pw];
        for (j, out) in row.iter_mut().enumerate() {
            *out += wy[i] * wx[j] * plane[i * pw + j];
        }
    }
}

fn crop(m: &Map, w: usize, h: usize) -> Map {
    let mut data = Vec::with_capacity(w * h);
    for y in 0..h {
        data.extend_from_slice(&m.data[y * m.width..y * m.width + w]);
    }
    Map {
        width: w,
        height: h,
        data,
    }
}

/// Mean colour of the image border, in [0,1]: the padding colour, so padding looks like
/// background rather than adding edges the network might count.
fn border_mean(img: &DynamicImage) -> [f32; 3] {
    let rgb = |x: u32, y: u32| {
        let p = img.crop_imm(x, y, 1, 1).to_rgb32f();
        p.get_pixel(0, 0).0
    };
    mean_of(
        border_samples(img.width(), img.height())
            .into_iter()
            .map(|(x, y)| rgb(x, y)),
    )
}

/// The border pixels `border_mean` averages, in the order it adds them.
pub(crate) fn border_samples(w: u32, h: u32) -> Vec<(u32, u32)> {
    let step = ((w + h) / 256).max(1);
    let mut out = Vec::new();
    for x in (0..w).step_by(step as usize) {
        out.push((x, 0));
        out.push((x, h - 1));
    }
    for y in (0..h).step_by(step as usize) {
        out.push((0, y));
        out.push((w - 1, y));
    }
    out
}

/// The mean of colours, accumulated in f64 in the order given.
pub(crate) fn mean_of(colours: impl Iterator<Item = [f32; 3]>) -> [f32; 3] {
    let mut acc = [0f64; 3];
    let mut n = 0f64;
    for p in colours {
        for c in 0..3 {
            acc[c] += p[c] as f64;
        }
        n += 1.0;
    }
    [
        (acc[0] / n) as f32,
        (acc[1] / n) as f32,
        (acc[2] / n) as f32,
    ]
}

/// One normalised [3, th, tw] tile starting at (x0, y0), padded with `pad` beyond the image.
fn tile_input(
    img: &DynamicImage,
    x0: usize,
    y0: usize,
    tw: usize,
    th: usize,
    pad: [f32; 3],
) -> Vec<f32> {
    let region = |x: u32, y: u32, w: u32, h: u32| img.crop_imm(x, y, w, h).to_rgb32f();
    let (w, h) = (img.width() as usize, img.height() as usize);
    tile_input_from(&region, (w, h), x0, y0, tw, th, pad)
}

/// `tile_input` of a `size` image whose pixels `region(x, y, w, h)` gives (a whole image, or
/// the band of rows a streamed image holds).
pub(crate) fn tile_input_from(
    region: &dyn Fn(u32, u32, u32, u32) -> image::Rgb32FImage,
    size: (usize, usize),
    x0: usize,
    y0: usize,
    tw: usize,
    th: usize,
    pad: [f32; 3],
) -> Vec<f32> {
    let (w, h) = size;
    let (cw, ch) = (tw.min(w.saturating_sub(x0)), th.min(h.saturating_sub(y0)));
    let mut chw = vec![0f32; 3 * tw * th];
    for (c, p) in pad.iter().enumerate() {
        chw[c * tw * th..(c + 1) * tw * th].fill(*p);
    }
    if cw > 0 && ch > 0 {
        let part = region(x0 as u32, y0 as u32, cw as u32, ch as u32);
        for (x, y, px) in part.enumerate_pixels() {
            for c in 0..3 {
                chw[c * tw * th + y as usize * tw + x as usize] = px.0[c];
            }
        }
    }
    let mut out = vec![0f32; chw.len()];
    normalize_imagenet(&chw, &mut out);
    out
}
