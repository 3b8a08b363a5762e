//! Inference on images of any size: the image is resized by the checkpoint's `input_scale`,
//! padded to a multiple of 16, cut into overlapping network-sized tiles, and the tiles' maps
//! are blended with weights that sum to one everywhere (see `tiling`), so the count is the sum
//! of one seamless map. Memory stays bounded: the image is kept in its decoded pixel type and
//! converted a tile at a time; the counter's map is 1/8 of the image per side.
//!
//! `dataset` runs the networks over an annotated data set patch by patch instead (validation
//! and evaluation).
pub mod dataset;
pub mod image_density;
pub mod points;
pub mod resample;
pub mod stream;
pub mod tiling;

use image::DynamicImage;

use crate::autograd::Var;
use crate::data::normalize_imagenet;
use crate::error::{Error, Result};
use crate::nn::{CountNet, Counter, Localizer};
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

/// Counts (and with a localizer, maps) one decoded image. The coupled baseline maps it by
/// itself: its density map is its output, and its coarse map that density summed over 8×8.
pub fn predict(
    model: &CountNet,
    localizer: Option<&Localizer>,
    img: &DynamicImage,
    opts: &InferOptions,
) -> Result<Prediction> {
    match model {
        CountNet::Counter(counter) => {
            let coarse_of = |images: Tensor| -> Result<Vec<f32>> {
                let z = counter.infer(images)?.value().to_host()?;
                Ok(z.into_iter().map(f32::abs).collect())
            };
            predict_with(coarse_of, counter.config.input_scale, localizer, img, opts)
        }
        CountNet::Coupled(net) => {
            if localizer.is_some() {
                return Err(Error::Invalid(
                    "the coupled baseline makes its own density map: it takes no localizer".into(),
                ));
            }
            let layout = Layout::new(net.config.input_scale, img, opts)?;
            let dmap = layout.density(|images, _| net.density(images), None)?;
            let coarse = sum_pool(&dmap, Counter::STRIDE);
            Ok(layout.prediction(coarse, Some(dmap)))
        }
    }
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
    let layout = Layout::new(scale, img, opts)?;
    let coarse = layout.coarse(coarse_of)?;
    // The localizer's map, on the same tiles; its 4th input channel is the tile's crop of the
    // blended counter map, so the two networks see one consistent coarse map.
    let density = match localizer {
        None => None,
        Some(loc) => {
            let inv = 1.0 / loc.config.density_scale;
            let density_of = |images: Tensor, z: Option<Tensor>| -> Result<Vec<f32>> {
                let z = z
                    .expect("a coarse map is given")
                    .into_device(&loc.store.device())?;
                let mut dv = loc.infer(images, &Var::constant(z))?.value().to_host()?;
                dv.iter_mut().for_each(|v| *v = v.max(0.0) * inv);
                Ok(dv)
            };
            Some(layout.density(density_of, Some(&coarse))?)
        }
    };
    Ok(layout.prediction(coarse, density))
}

/// How one image is cut for the networks: resized by the input scale, padded to a multiple
/// of 16, and covered by overlapping tiles whose blending weights sum to one.
struct Layout<'a> {
    img: std::borrow::Cow<'a, DynamicImage>,
    /// Image size as read, and the network size (scaled, before padding).
    size: (usize, usize),
    net: (usize, usize),
    scale: f32,
    /// Padded size, tile size, tile starts along x and y.
    padded: (usize, usize),
    tile: (usize, usize),
    xs: Vec<usize>,
    ys: Vec<usize>,
    pad: [f32; 3],
    batch: usize,
}

impl<'a> Layout<'a> {
    fn new(scale: f32, img: &'a DynamicImage, opts: &InferOptions) -> Result<Layout<'a>> {
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
        let img = if (nw, nh) != (width, height) {
            std::borrow::Cow::Owned(img.resize_exact(
                nw as u32,
                nh as u32,
                image::imageops::FilterType::Triangle,
            ))
        } else {
            std::borrow::Cow::Borrowed(img)
        };
        let (pw, ph) = (nw.div_ceil(16) * 16, nh.div_ceil(16) * 16);
        let tile = opts.checked_tile()?;
        let (tw, th) = (tile.min(pw), tile.min(ph));
        let c = Counter::STRIDE;
        let pad = border_mean(&img);
        Ok(Layout {
            size: (width, height),
            net: (nw, nh),
            scale,
            padded: (pw, ph),
            tile: (tw, th),
            xs: tile_starts(pw, tw, opts.overlap, c),
            ys: tile_starts(ph, th, opts.overlap, c),
            pad,
            batch: opts.batch.max(1),
            img,
        })
    }

    /// Every tile as (row, column) of the tile grid, row-major.
    fn tiles(&self) -> Vec<(usize, usize)> {
        (0..self.ys.len())
            .flat_map(|ty| (0..self.xs.len()).map(move |tx| (ty, tx)))
            .collect()
    }

    /// The normalised input of a group of tiles, [n,3,th,tw].
    fn inputs(&self, group: &[(usize, usize)]) -> Result<Tensor> {
        let (tw, th) = self.tile;
        let mut buf = Vec::with_capacity(group.len() * 3 * tw * th);
        for &(ty, tx) in group {
            buf.extend(tile_input(
                &self.img,
                self.xs[tx],
                self.ys[ty],
                tw,
                th,
                self.pad,
            ));
        }
        Tensor::from_vec(buf, &[group.len(), 3, th, tw])
    }

    /// The counter's map: every tile's map blended with weights that sum to one at each
    /// coarse pixel, so the sum over the image counts each cell once.
    fn coarse(&self, coarse_of: impl Fn(Tensor) -> Result<Vec<f32>>) -> Result<Map> {
        let c = Counter::STRIDE;
        let ((pw, ph), (tw, th)) = (self.padded, self.tile);
        let (zw, zh) = (tw / c, th / c);
        let coarse_starts = |v: &[usize]| v.iter().map(|s| s / c).collect::<Vec<_>>();
        let (cwx, cwy) = (
            axis_weights(pw / c, &coarse_starts(&self.xs), zw),
            axis_weights(ph / c, &coarse_starts(&self.ys), zh),
        );
        let mut coarse = Map::zeros(pw / c, ph / c);
        for group in self.tiles().chunks(self.batch) {
            let maps = coarse_of(self.inputs(group)?)?;
            for (k, &(ty, tx)) in group.iter().enumerate() {
                let plane = &maps[k * zh * zw..(k + 1) * zh * zw];
                let (x0, y0) = (self.xs[tx] / c, self.ys[ty] / c);
                blend(&mut coarse, plane, zw, zh, x0, y0, &cwx[tx], &cwy[ty]);
            }
        }
        Ok(coarse)
    }

    /// A full-resolution density map blended from every tile's, cells per network pixel
    /// (padded size). `density_of` maps a group's inputs, and with `coarse` the group's crops
    /// of it ([n,1,th/8,tw/8]), to their maps [n·th·tw].
    fn density(
        &self,
        density_of: impl Fn(Tensor, Option<Tensor>) -> Result<Vec<f32>>,
        coarse: Option<&Map>,
    ) -> Result<Map> {
        let c = Counter::STRIDE;
        let ((pw, ph), (tw, th)) = (self.padded, self.tile);
        let (zw, zh) = (tw / c, th / c);
        let (wx, wy) = (
            axis_weights(pw, &self.xs, tw),
            axis_weights(ph, &self.ys, th),
        );
        let mut dmap = Map::zeros(pw, ph);
        for group in self.tiles().chunks(self.batch) {
            let z = match coarse {
                None => None,
                Some(coarse) => {
                    let mut zbuf = Vec::with_capacity(group.len() * zw * zh);
                    for &(ty, tx) in group {
                        for i in 0..zh {
                            let row = (self.ys[ty] / c + i) * coarse.width + self.xs[tx] / c;
                            zbuf.extend_from_slice(&coarse.data[row..row + zw]);
                        }
                    }
                    Some(Tensor::from_vec(zbuf, &[group.len(), 1, zh, zw])?)
                }
            };
            let dv = density_of(self.inputs(group)?, z)?;
            for (k, &(ty, tx)) in group.iter().enumerate() {
                let plane = &dv[k * th * tw..(k + 1) * th * tw];
                blend(
                    &mut dmap,
                    plane,
                    tw,
                    th,
                    self.xs[tx],
                    self.ys[ty],
                    &wx[tx],
                    &wy[ty],
                );
            }
        }
        Ok(dmap)
    }

    /// The prediction of a coarse map and a padded density map (cropped to the scaled image).
    fn prediction(&self, coarse: Map, density: Option<Map>) -> Prediction {
        let (nw, nh) = self.net;
        Prediction {
            count: coarse.sum(),
            width: self.size.0,
            height: self.size.1,
            scale: self.scale,
            coarse,
            density: density.map(|d| crop(&d, nw, nh)),
        }
    }
}

/// `m` summed over s×s blocks (its sides are multiples of s).
fn sum_pool(m: &Map, s: usize) -> Map {
    let mut out = Map::zeros(m.width / s, m.height / s);
    for y in 0..out.height * s {
        for x in 0..out.width * s {
            out.data[(y / s) * out.width + x / s] += m.data[y * m.width + x];
        }
    }
    out
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
