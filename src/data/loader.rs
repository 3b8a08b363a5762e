//! Batches for the networks: augmented, ImageNet-normalised images with their density maps,
//! prepared on background threads ahead of the training step.
//!
//! Determinism: an epoch's order is a permutation drawn from (seed, epoch) and the augmentation
//! of the sample at position p from (seed, epoch, p), so batch b of epoch e is a pure function
//! of (seed, e, b) whatever the number of threads, and a resumed run sees the batches an
//! uninterrupted one would.
//!
//! Memory: at most `workers * prefetch` finished batches wait in the queues, plus one being
//! built per worker (a batch of 8 at 256x256 is 8 MiB: images and density in f32).
use std::borrow::Cow;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::data::stain::StainJitter;
use crate::data::{Augment, Dataset};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `(v - mean[c]) / std[c]` per channel (DESIGN §1) for a CHW image in [0, 1].
pub fn normalize_imagenet(rgb01_chw: &[f32], out: &mut [f32]) {
    assert_eq!(
        rgb01_chw.len(),
        out.len(),
        "normalize_imagenet: input and output lengths differ"
    );
    assert_eq!(
        rgb01_chw.len() % 3,
        0,
        "normalize_imagenet: not a 3-channel image"
    );
    let n = rgb01_chw.len() / 3;
    for c in 0..3 {
        let (m, s) = (IMAGENET_MEAN[c], 1.0 / IMAGENET_STD[c]);
        for (o, &v) in out[c * n..(c + 1) * n]
            .iter_mut()
            .zip(&rgb01_chw[c * n..(c + 1) * n])
        {
            *o = (v - m) * s;
        }
    }
}

/// A batch ready for the networks.
#[derive(Debug)]
pub struct Batch {
    /// [N, 3, H, W], ImageNet-normalised.
    pub images: Tensor,
    /// [N, 1, H, W], cells per pixel (not yet times density_scale).
    pub density: Tensor,
    /// Per sample, = points.len().
    pub counts: Vec<f32>,
    pub names: Vec<String>,
    /// Per sample, the dots after augmentation (for localisation metrics).
    pub points: Vec<Vec<(f32, f32)>>,
}

pub struct Loader {
    ds: Arc<Dataset>,
    indices: Vec<usize>,
    batch_size: usize,
    shuffle: bool,
    augment: bool,
    seed: u64,
    workers: usize,
    prefetch: usize,
    /// Probability that a training sample is a mosaic crop (see `mosaic`).
    mosaic: f32,
    /// σ of the stain jitter of each augmented patch (0: none; see `with_stain_jitter`).
    stain_jitter: f32,
    /// Largest zoom factor of a mosaic window, in and out (1: none; see `with_scale_jitter`).
    scale_jitter: f32,
}

/// A mosaic window: normalised image planes, density and dots.
type MosaicCrop = (Vec<f32>, Vec<f32>, Vec<(f32, f32)>);

/// Stream ids of the per-epoch generator.
const ORDER_STREAM: u64 = 0;
/// Marks the generator streams of mosaic choices, apart from the per-sample augmentations.
const MOSAIC_STREAM: u64 = 1 << 40;
/// Marks the generator streams of stain jitter (so runs without it draw what they drew).
const STAIN_STREAM: u64 = 1 << 39;
/// Marks the generator streams of the mosaic windows' zoom factors.
const SCALE_STREAM: u64 = 1 << 37;
/// The largest zoom `with_scale_jitter` accepts: a window zoomed out by 2 is the whole 2x2
/// mosaic.
pub const MAX_SCALE_JITTER: f32 = 2.0;

impl Loader {
    /// A loader over `indices` of `ds`. Background workers default to the cores available
    /// less one (at most 4, at least 1), each keeping up to 2 batches ready.
    pub fn new(
        ds: Arc<Dataset>,
        indices: Vec<usize>,
        batch_size: usize,
        shuffle: bool,
        augment: bool,
        seed: u64,
    ) -> Loader {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Loader {
            ds,
            indices,
            batch_size: batch_size.max(1),
            shuffle,
            augment,
            seed,
            workers: cores.saturating_sub(1).clamp(1, 4),
            prefetch: 2,
            mosaic: 0.0,
            stain_jitter: 0.0,
            scale_jitter: 1.0,
        }
    }

    /// Each mosaic window (see `with_mosaic`) is zoomed by a factor s drawn log-uniformly from
    /// [1/a, a] (a in [1, 2]; 1: none): a window of (w/s) x (h/s) pixels of the mosaic, resized
    /// to the patch size (bilinear, averaging when shrinking), so the networks see cells of
    /// other sizes than the preprocessing gives (a scanner's or a lab's other magnification).
    /// Its dots are mapped with the pixels and its density is made again from them with the
    /// data set's σ in the patch's pixels (the cells' Gaussians cut by the window, as an
    /// unzoomed window's are). Samples that are not mosaics are not zoomed.
    pub fn with_scale_jitter(mut self, a: f32) -> Loader {
        self.scale_jitter = if a.is_finite() {
            a.clamp(1.0, MAX_SCALE_JITTER)
        } else {
            1.0
        };
        self
    }

    /// Each augmented patch (every tile of a mosaic too) gets its own stain jitter of
    /// strength `sigma` (`data::stain`): for H&E histology, not for fluorescence.
    pub fn with_stain_jitter(mut self, sigma: f32) -> Loader {
        self.stain_jitter = sigma.max(0.0);
        self
    }

    /// Patch `s`'s RGB planes, stain-jittered by the generator stream `stream` when the loader
    /// jitters.
    fn colours<'a>(
        &self,
        image: &'a [f32],
        plane: usize,
        erng: &Rng,
        stream: u64,
    ) -> Cow<'a, [f32]> {
        if !(self.augment && self.stain_jitter > 0.0) {
            return Cow::Borrowed(image);
        }
        let mut rng = erng.fork(stream | STAIN_STREAM);
        Cow::Owned(StainJitter::random(&mut rng, self.stain_jitter).apply(image, plane))
    }

    /// With probability `p` a sample becomes a mosaic crop: its augmented patch and three
    /// others drawn from the loader's indices are laid out 2x2 and a patch-sized window at a
    /// random offset is cut out, with its dots and density. The count target of such a sample
    /// is the density inside the window (cells cut by the window count fractionally). Image
    /// borders then fall anywhere, even through cells, so the counter learns densities that do
    /// not depend on where a tile's edge is: what tiled inference of large images needs.
    pub fn with_mosaic(mut self, p: f32) -> Loader {
        self.mosaic = p.clamp(0.0, 1.0);
        self
    }

    /// Background threads (0: batches are built on the caller's thread, on demand).
    pub fn with_workers(mut self, workers: usize) -> Loader {
        self.workers = workers;
        self
    }

    /// Finished batches each worker may keep waiting (at least 1).
    pub fn with_prefetch(mut self, prefetch: usize) -> Loader {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Batches per epoch, the last partial batch kept.
    pub fn batches_per_epoch(&self) -> usize {
        self.indices.len().div_ceil(self.batch_size)
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.ds
    }

    fn epoch_rng(&self, epoch: usize) -> Rng {
        Rng::new(self.seed ^ 0x6C6F_6164_6572).fork(epoch as u64)
    }

    /// The sample order of an epoch.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut v = self.indices.clone();
        if self.shuffle {
            self.epoch_rng(epoch).fork(ORDER_STREAM).shuffle(&mut v);
        }
        v
    }

    /// Batch `b` of `epoch` (what the workers run; public for benches and tests).
    pub fn batch(&self, epoch: usize, b: usize) -> Result<Batch> {
        self.build(&self.order(epoch), epoch, b)
    }

    fn build(&self, order: &[usize], epoch: usize, b: usize) -> Result<Batch> {
        let lo = b * self.batch_size;
        if lo >= order.len() {
            return Err(Error::Invalid(format!(
                "batch {b} out of range ({} batches per epoch)",
                self.batches_per_epoch()
            )));
        }
        let pos = lo..(lo + self.batch_size).min(order.len());
        let n = pos.len();
        let erng = self.epoch_rng(epoch);
        let mut images = Vec::new();
        let mut density = Vec::new();
        let mut counts = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut points = Vec::with_capacity(n);
        let mut shape: Option<(usize, usize)> = None;
        for p in pos {
            let s = self.ds.try_sample(order[p])?;
            let (w, h) = (s.width, s.height);
            let aug = if self.augment {
                Augment::random(&mut erng.fork(p as u64 + 1), w == h)
            } else {
                Augment::IDENTITY
            };
            let (ow, oh) = aug.out_size(w, h);
            match shape {
                None => {
                    shape = Some((ow, oh));
                    images.reserve_exact(n * 3 * ow * oh);
                    density.reserve_exact(n * ow * oh);
                }
                Some(sh) if sh != (ow, oh) => {
                    return Err(Error::Invalid(format!(
                        "batch mixes sample sizes: '{}' is {ow}x{oh}, earlier samples {}x{}; use a preprocessing that gives one size",
                        s.name, sh.0, sh.1
                    )));
                }
                _ => {}
            }
            let plane = w * h;
            let mut mrng = erng.fork((p as u64 + 1) | MOSAIC_STREAM);
            if self.augment && self.mosaic > 0.0 && mrng.uniform() < self.mosaic {
                let (img, den, pts) = self.mosaic_sample(&s, aug, &mut mrng, &erng, p)?;
                images.extend_from_slice(&img);
                counts.push(den.iter().map(|&v| v as f64).sum::<f64>() as f32);
                density.extend_from_slice(&den);
                names.push(format!("{}+mosaic", s.name));
                points.push(pts);
                continue;
            }
            let image = self.colours(&s.image, plane, &erng, p as u64 + 1);
            for c in 0..3 {
                let (m, inv) = (IMAGENET_MEAN[c], 1.0 / IMAGENET_STD[c]);
                aug.extend_plane_with(&image[c * plane..(c + 1) * plane], w, h, &mut images, |v| {
                    (v - m) * inv
                });
            }
            aug.extend_plane_with(&s.density, w, h, &mut density, |v| v);
            counts.push(s.count());
            names.push(s.name.clone());
            points.push(aug.apply_points(&s.points, w, h));
        }
        let (w, h) = shape.unwrap_or((0, 0));
        Ok(Batch {
            images: Tensor::from_vec(images, &[n, 3, h, w])?,
            density: Tensor::from_vec(density, &[n, 1, h, w])?,
            counts,
            names,
            points,
        })
    }

    /// A mosaic crop around sample `s` (augmented by `aug`): normalised image planes, density
    /// and dots of the window.
    fn mosaic_sample(
        &self,
        s: &crate::data::Sample,
        aug: Augment,
        rng: &mut Rng,
        erng: &Rng,
        p: usize,
    ) -> Result<MosaicCrop> {
        if self.scale_jitter > 1.0 {
            return self.zoomed_mosaic_sample(s, aug, rng, erng, p);
        }
        let (w, h) = aug.out_size(s.width, s.height);
        let (ox, oy) = (rng.below(w + 1), rng.below(h + 1));
        let mut img = vec![0f32; 3 * w * h];
        let mut den = vec![0f32; w * h];
        let mut pts = Vec::new();
        for k in 0..4usize {
            let other = self.mosaic_partner(s, k, rng, erng, p, (w, h))?;
            let (t, taug): (&crate::data::Sample, Augment) = match &other {
                None => (s, aug),
                Some((o, a)) => (o, *a),
            };
            // Tile k sits at (tx, ty) of the 2w x 2h canvas; the window starts at (ox, oy).
            let (tx, ty) = ((k % 2) * w, (k / 2) * h);
            let (x0, x1) = (ox.max(tx), (ox + w).min(tx + w));
            let (y0, y1) = (oy.max(ty), (oy + h).min(ty + h));
            if x0 >= x1 || y0 >= y1 {
                continue;
            }
            let (tw, th) = (t.width, t.height);
            let image = self.colours(&t.image, tw * th, erng, tile_stream(p, k));
            let mut plane = vec![0f32; w * h];
            for c in 0..4 {
                let (src, out, m, inv): (&[f32], &mut [f32], f32, f32) = if c < 3 {
                    (
                        &image[c * tw * th..(c + 1) * tw * th],
                        &mut img[c * w * h..(c + 1) * w * h],
                        IMAGENET_MEAN[c],
                        1.0 / IMAGENET_STD[c],
                    )
                } else {
                    (&t.density, &mut den[..], 0.0, 1.0)
                };
                taug.apply_plane_with(src, tw, th, &mut plane, |v| (v - m) * inv);
                for y in y0..y1 {
                    let src_row = &plane[(y - ty) * w + (x0 - tx)..(y - ty) * w + (x1 - tx)];
                    out[(y - oy) * w + (x0 - ox)..(y - oy) * w + (x1 - ox)]
                        .copy_from_slice(src_row);
                }
            }
            for (x, y) in taug.apply_points(&t.points, tw, th) {
                let (cx, cy) = (x + tx as f32 - ox as f32, y + ty as f32 - oy as f32);
                if cx >= 0.0 && cy >= 0.0 && cx < w as f32 && cy < h as f32 {
                    pts.push((cx, cy));
                }
            }
        }
        Ok((img, den, pts))
    }

    /// Tile `k` of the mosaic around `s`: none for k = 0 (`s` itself), else a sample drawn from
    /// the loader's indices with its own flips, which must have the patch size `(w, h)`.
    fn mosaic_partner(
        &self,
        s: &crate::data::Sample,
        k: usize,
        rng: &mut Rng,
        erng: &Rng,
        p: usize,
        (w, h): (usize, usize),
    ) -> Result<Option<(crate::data::SampleRef<'_>, Augment)>> {
        if k == 0 {
            return Ok(None);
        }
        let pool = if self.indices.is_empty() {
            1
        } else {
            self.indices.len()
        };
        let i = self.indices.get(rng.below(pool)).copied().unwrap_or(0);
        let other = self.ds.try_sample(i)?;
        let a = Augment::random(
            &mut erng.fork(((p as u64 + 1) << 2 | k as u64) | MOSAIC_STREAM << 1),
            w == h,
        );
        if a.out_size(other.width, other.height) != (w, h) {
            return Err(Error::Invalid(format!(
                "mosaic: '{}' is {}x{}, '{}' {w}x{h}; mosaics need one patch size",
                other.name, other.width, other.height, s.name
            )));
        }
        Ok(Some((other, a)))
    }

    /// A mosaic window zoomed by a factor drawn from [1/a, a] (see `with_scale_jitter`): the
    /// 2x2 mosaic is laid out whole, a (w/s) x (h/s) window of it is resized to w x h, and the
    /// window's density is made from the mosaic's dots mapped into it.
    fn zoomed_mosaic_sample(
        &self,
        s: &crate::data::Sample,
        aug: Augment,
        rng: &mut Rng,
        erng: &Rng,
        p: usize,
    ) -> Result<MosaicCrop> {
        let (w, h) = aug.out_size(s.width, s.height);
        let ln_a = (self.scale_jitter as f64).ln();
        let zoom =
            (ln_a * (2.0 * erng.fork((p as u64 + 1) | SCALE_STREAM).uniform() as f64 - 1.0)).exp();
        let (ww, wh) = (
            ((w as f64 / zoom).round() as usize).clamp(1, 2 * w),
            ((h as f64 / zoom).round() as usize).clamp(1, 2 * h),
        );
        let (ox, oy) = (rng.below(2 * w - ww + 1), rng.below(2 * h - wh + 1));
        let (cw, ch) = (2 * w, 2 * h);
        let mut canvas = vec![0f32; 3 * cw * ch];
        let mut canvas_pts = Vec::new();
        let mut plane = vec![0f32; w * h];
        for k in 0..4usize {
            let other = self.mosaic_partner(s, k, rng, erng, p, (w, h))?;
            let (t, taug): (&crate::data::Sample, Augment) = match &other {
                None => (s, aug),
                Some((o, a)) => (o, *a),
            };
            let (tx, ty) = ((k % 2) * w, (k / 2) * h);
            let (tw, th) = (t.width, t.height);
            let image = self.colours(&t.image, tw * th, erng, tile_stream(p, k));
            for c in 0..3 {
                let (m, inv) = (IMAGENET_MEAN[c], 1.0 / IMAGENET_STD[c]);
                taug.apply_plane_with(
                    &image[c * tw * th..(c + 1) * tw * th],
                    tw,
                    th,
                    &mut plane,
                    |v| (v - m) * inv,
                );
                for y in 0..h {
                    canvas[c * cw * ch + (ty + y) * cw + tx..][..w]
                        .copy_from_slice(&plane[y * w..(y + 1) * w]);
                }
            }
            canvas_pts.extend(
                taug.apply_points(&t.points, tw, th)
                    .into_iter()
                    .map(|(x, y)| (x + tx as f32, y + ty as f32)),
            );
        }
        let img =
            crate::data::preprocess::resize_region(&canvas, cw, ch, 3, (ox, oy, ww, wh), w, h);
        // The window's dots in its resized pixels; the Gaussians of dots up to 4σ outside it
        // reach in, so the map is made on a frame 8σ wider on every side (where no Gaussian
        // that reaches the window is cut and renormalised) and the window cut out of it.
        let (sx, sy) = (w as f32 / ww as f32, h as f32 / wh as f32);
        let sigma = self.ds.sigma();
        let pad = (8.0 * sigma).ceil() as usize + 1;
        let (fw, fh) = (w + 2 * pad, h + 2 * pad);
        let mut framed = Vec::new();
        let mut pts = Vec::new();
        for (x, y) in canvas_pts {
            let (cx, cy) = ((x - ox as f32) * sx, (y - oy as f32) * sy);
            let (fx, fy) = (cx + pad as f32, cy + pad as f32);
            if fx >= 0.0 && fy >= 0.0 && fx < fw as f32 && fy < fh as f32 {
                framed.push((fx, fy));
            }
            if cx >= 0.0 && cy >= 0.0 && cx < w as f32 && cy < h as f32 {
                pts.push((cx, cy));
            }
        }
        let frame = crate::data::density::density_map(fw, fh, &framed, sigma);
        let mut den = Vec::with_capacity(w * h);
        for y in 0..h {
            den.extend_from_slice(&frame[(y + pad) * fw + pad..][..w]);
        }
        Ok((img, den, pts))
    }

    /// The batches of one epoch, in order. With workers, they are built ahead on background
    /// threads (worker k builds batches k, k + workers, ...) and handed over in order; dropping
    /// the iterator stops the workers.
    pub fn epoch(&self, epoch: usize) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `start` on (a run resumed mid-epoch).
    pub fn epoch_from(&self, epoch: usize, start: usize) -> EpochIter {
        let order = Arc::new(self.order(epoch));
        let total = self.batches_per_epoch();
        let start = start.min(total);
        let workers = self.workers.min(total - start);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for k in 0..workers {
            let (tx, rx) = sync_channel(self.prefetch);
            let me = self.clone_config();
            let order = Arc::clone(&order);
            handles.push(std::thread::spawn(move || {
                let mut b = start + k;
                while b < total {
                    let r = me.build(&order, epoch, b);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                    b += workers;
                }
            }));
            receivers.push(rx);
        }
        EpochIter {
            loader: if workers == 0 {
                Some(self.clone_config())
            } else {
                None
            },
            order,
            epoch,
            start,
            next: start,
            total,
            receivers,
            handles,
            failed: false,
        }
    }

    fn clone_config(&self) -> Loader {
        Loader {
            ds: Arc::clone(&self.ds),
            // workers need the indices only to draw mosaic partners
            indices: if self.mosaic > 0.0 {
                self.indices.clone()
            } else {
                Vec::new()
            },
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            augment: self.augment,
            stain_jitter: self.stain_jitter,
            scale_jitter: self.scale_jitter,
            seed: self.seed,
            workers: 0,
            prefetch: self.prefetch,
            mosaic: self.mosaic,
        }
    }
}

/// The stain jitter stream of mosaic tile `k` of the sample at position `p`.
fn tile_stream(p: usize, k: usize) -> u64 {
    (((p as u64 + 1) << 2) | k as u64) | 1 << 38
}

/// The batches of one epoch (see `Loader::epoch`).
pub struct EpochIter {
    loader: Option<Loader>,
    order: Arc<Vec<usize>>,
    epoch: usize,
    start: usize,
    next: usize,
    total: usize,
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    failed: bool,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.total || self.failed {
            return None;
        }
        let b = self.next;
        self.next += 1;
        let r = match &self.loader {
            Some(l) => l.build(&self.order, self.epoch, b),
            None => self.receivers[(b - self.start) % self.receivers.len()]
                .recv()
                .unwrap_or_else(|_| {
                    Err(Error::Invalid(format!(
                        "data loader worker for batch {b} stopped unexpectedly"
                    )))
                }),
        };
        // After an error the epoch ends: later batches would be out of step.
        self.failed = r.is_err();
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed {
            0
        } else {
            self.total - self.next
        };
        (left, Some(left))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing the queues makes blocked workers' sends fail, so they return.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
