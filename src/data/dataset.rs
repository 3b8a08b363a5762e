//! A data set: the preprocessed patches of a folder (or of the synthetic generator), decoded
//! once and cached in memory up to a byte budget; splits with group keys.
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::data::density::check_sigma;
use crate::data::layout::{self, Item};
use crate::data::{synthetic, DataOptions, Format, Preprocess, Sample};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// One source image of a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInfo {
    pub path: PathBuf,
    /// File stem: the split group key is taken from it.
    pub stem: String,
    /// Size of the original image.
    pub width: usize,
    pub height: usize,
    /// Cells annotated in the original image (= the sum of its patches' counts).
    pub count: usize,
    /// Its samples (patches), a range of sample indices.
    pub samples: Range<usize>,
}

/// Where samples come from when they are not in the cache.
enum Origin {
    Files(Vec<Item>),
    Synthetic { seed: u64, size: usize },
}

/// A sample's place and ground truth, always in memory.
struct Entry {
    image: usize,
    patch: usize,
    count: usize,
}

/// A sample, borrowed from the cache or decoded again (past the cache budget).
pub enum SampleRef<'a> {
    Cached(&'a Sample),
    Decoded(Box<Sample>),
}

impl Deref for SampleRef<'_> {
    type Target = Sample;
    fn deref(&self) -> &Sample {
        match self {
            SampleRef::Cached(s) => s,
            SampleRef::Decoded(s) => s,
        }
    }
}

/// Sample indices of a split.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<usize>,
    pub test: Vec<usize>,
    pub val: Vec<usize>,
}

/// How to split: a seeded permutation of groups, cut by the ratios (train:test:val).
#[derive(Clone, Debug, PartialEq)]
pub struct SplitSpec {
    pub seed: u64,
    /// train : test : val, the paper's 10:9:1 by default.
    pub ratios: [f64; 3],
    /// Regex on the source image's file stem; its first capture group (or whole match) is the
    /// group key, so samples of one group never straddle splits. None: the layout's default
    /// (MBM: the slide), else the source image (patches of one image always stay together).
    pub group: Option<String>,
}

impl Default for SplitSpec {
    fn default() -> Self {
        SplitSpec {
            seed: 0,
            ratios: [10.0, 9.0, 1.0],
            group: None,
        }
    }
}

impl SplitSpec {
    /// Parses `A:B:C` ratios (`--split 10:9:1`).
    pub fn parse_ratios(s: &str) -> Result<[f64; 3]> {
        let bad = || Error::Invalid(format!("split '{s}': expected train:test:val, e.g. 10:9:1"));
        let v: Vec<f64> = s
            .split(':')
            .map(|p| p.trim().parse::<f64>().map_err(|_| bad()))
            .collect::<Result<_>>()?;
        if v.len() != 3
            || v.iter().any(|x| !x.is_finite() || *x < 0.0)
            || v.iter().sum::<f64>() <= 0.0
        {
            return Err(bad());
        }
        Ok([v[0], v[1], v[2]])
    }
}

pub struct Dataset {
    format: Option<Format>,
    origin: Origin,
    preprocess: Preprocess,
    sigma: f32,
    images: Vec<ImageInfo>,
    entries: Vec<Entry>,
    cache: Vec<Option<Sample>>,
    cached_bytes: usize,
    skipped: Vec<(PathBuf, String)>,
}

/// The most memory the in-memory synthetic set may take.
pub const MAX_SYNTHETIC_BYTES: u64 = 16 << 30;

/// Images decoded in parallel per chunk: bounds the memory of patches in flight.
const CHUNK: usize = 16;

fn progress_bar(n: usize, show: bool, what: &str) -> indicatif::ProgressBar {
    if show && std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(n as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed}<{eta}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb.set_message(what.to_string());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    }
}

impl Dataset {
    /// Reads a folder: detects (or takes) its layout, decodes every image once, preprocesses it
    /// into patches with density maps and caches them (up to `opts.cache_bytes`).
    pub fn open(path: &Path, opts: &DataOptions) -> Result<Dataset> {
        check_sigma(opts.sigma)?;
        let scan = layout::scan(path, opts.format.as_ref(), opts.dot_rule)?;
        let mut skipped = Vec::new();
        if let Some((p, msg)) = scan.problems.first() {
            if !opts.skip_bad {
                return Err(Error::file(p, msg));
            }
            skipped.extend(scan.problems.iter().cloned());
        }
        let preprocess = opts
            .preprocess
            .unwrap_or_else(|| scan.format.default_preprocess());
        let mut ds = Dataset {
            format: Some(scan.format.clone()),
            origin: Origin::Files(Vec::new()),
            preprocess,
            sigma: opts.sigma,
            images: Vec::new(),
            entries: Vec::new(),
            cache: Vec::new(),
            cached_bytes: 0,
            skipped,
        };
        let pb = progress_bar(scan.items.len(), opts.progress, "decoding");
        let mut kept = Vec::new();
        for chunk in scan.items.chunks(CHUNK) {
            // Decoded in parallel, kept in file order (so the first error is deterministic).
            let loaded: Vec<Result<Decoded>> = chunk
                .par_iter()
                .map(|item| {
                    let l = layout::load(item)?;
                    let src = item.image.to_string_lossy();
                    let samples =
                        preprocess.apply(&l.image, &l.points, &item.stem, &src, opts.sigma)?;
                    Ok((l.image.width, l.image.height, l.points.len(), samples))
                })
                .collect();
            for (item, r) in chunk.iter().zip(loaded) {
                pb.inc(1);
                match r {
                    Ok((w, h, n, samples)) => {
                        ds.push_image(
                            item.image.clone(),
                            item.stem.clone(),
                            w,
                            h,
                            n,
                            samples,
                            opts.cache_bytes,
                        );
                        kept.push(item.clone());
                    }
                    Err(e) if opts.skip_bad => {
                        let (p, msg) = match e {
                            Error::File { path, msg } => (path, msg),
                            other => (item.image.clone(), other.to_string()),
                        };
                        ds.skipped.push((p, msg));
                    }
                    Err(e) => {
                        pb.finish_and_clear();
                        return Err(e);
                    }
                }
            }
        }
        pb.finish_and_clear();
        if ds.images.is_empty() {
            return Err(Error::file(
                path,
                format!("no usable images ({} skipped)", ds.skipped.len()),
            ));
        }
        ds.origin = Origin::Files(kept);
        Ok(ds)
    }

    /// `synthetic`, `synthetic:N` or `synthetic:N:SEED` (in memory, 256x256), else a folder.
    pub fn open_arg(arg: &str, opts: &DataOptions) -> Result<Dataset> {
        if let Some(rest) = arg.strip_prefix("synthetic") {
            if rest.is_empty() || rest.starts_with(':') {
                let parts: Vec<&str> = rest.split(':').skip(1).collect();
                let bad = || Error::Invalid(format!("'{arg}': expected synthetic[:N[:SEED]]"));
                let n = parts
                    .first()
                    .map(|s| s.parse::<usize>().map_err(|_| bad()))
                    .transpose()?
                    .unwrap_or(synthetic::DEFAULT_N);
                let seed = parts
                    .get(1)
                    .map(|s| s.parse::<u64>().map_err(|_| bad()))
                    .transpose()?
                    .unwrap_or(0);
                if parts.len() > 2 || n == 0 {
                    return Err(bad());
                }
                return Dataset::synthetic(n, seed, 256, opts.sigma);
            }
        }
        Dataset::open(Path::new(arg), opts)
    }

    /// The built-in synthetic set, generated in memory: the same images and dots as
    /// `synthetic::generate` writes (8-bit quantised), read in the VGG way (as is).
    pub fn synthetic(n: usize, seed: u64, size: usize, sigma: f32) -> Result<Dataset> {
        check_sigma(sigma)?;
        synthetic::check_size(size)?;
        // every image and density map is held in memory (16 bytes a pixel)
        let bytes = (n as u128) * (size as u128).pow(2) * 16;
        if n == 0 || bytes > MAX_SYNTHETIC_BYTES as u128 {
            return Err(Error::Invalid(format!(
                "a synthetic set of {n} images of {size}x{size} pixels needs {:.1} GB in memory; \
                 1 to {} GB are allowed",
                bytes as f64 / 1e9,
                MAX_SYNTHETIC_BYTES >> 30
            )));
        }
        let mut ds = Dataset {
            format: None,
            origin: Origin::Synthetic { seed, size },
            preprocess: Preprocess::AsIs,
            sigma,
            images: Vec::new(),
            entries: Vec::new(),
            cache: Vec::new(),
            cached_bytes: 0,
            skipped: Vec::new(),
        };
        let made: Vec<Result<Sample>> = (0..n)
            .into_par_iter()
            .map(|i| synthetic::sample(seed, i, size, sigma))
            .collect();
        for (i, s) in made.into_iter().enumerate() {
            let s = s?;
            let (stem, n) = (synthetic::stem(i), s.points.len());
            ds.push_image(
                synthetic::source(seed, i).into(),
                stem,
                size,
                size,
                n,
                vec![s],
                usize::MAX,
            );
        }
        Ok(ds)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_image(
        &mut self,
        path: PathBuf,
        stem: String,
        width: usize,
        height: usize,
        count: usize,
        samples: Vec<Sample>,
        budget: usize,
    ) {
        let image = self.images.len();
        let start = self.entries.len();
        for (patch, s) in samples.into_iter().enumerate() {
            self.entries.push(Entry {
                image,
                patch,
                count: s.points.len(),
            });
            let b = s.nbytes();
            if self.cached_bytes.saturating_add(b) <= budget {
                self.cached_bytes += b;
                self.cache.push(Some(s));
            } else {
                self.cache.push(None);
            }
        }
        let samples = start..self.entries.len();
        self.images.push(ImageInfo {
            path,
            stem,
            width,
            height,
            count,
            samples,
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sample `i`.
    ///
    /// # Panics
    /// Only for a sample past the cache budget whose file can no longer be decoded (changed
    /// on disk after `open`); `try_sample` returns that as an error.
    pub fn sample(&self, i: usize) -> SampleRef<'_> {
        match self.try_sample(i) {
            Ok(s) => s,
            Err(e) => panic!("data set sample {i}: {e}"),
        }
    }

    /// Sample `i`, from the cache or decoded again from its file.
    pub fn try_sample(&self, i: usize) -> Result<SampleRef<'_>> {
        let e = self.entries.get(i).ok_or_else(|| {
            Error::Invalid(format!(
                "sample {i} out of range (data set of {})",
                self.len()
            ))
        })?;
        if let Some(s) = &self.cache[i] {
            return Ok(SampleRef::Cached(s));
        }
        let mut all = self.decode_image(e.image)?;
        if e.patch >= all.len() {
            return Err(Error::file(
                &self.images[e.image].path,
                "image changed since the data set was opened",
            ));
        }
        Ok(SampleRef::Decoded(Box::new(all.swap_remove(e.patch))))
    }

    /// All samples (patches) of image `img`, in patch order.
    pub fn image_samples(&self, img: usize) -> Result<Vec<Sample>> {
        let info = self
            .images
            .get(img)
            .ok_or_else(|| Error::Invalid(format!("image {img} out of range")))?;
        if info.samples.clone().all(|i| self.cache[i].is_some()) {
            return Ok(info
                .samples
                .clone()
                .filter_map(|i| self.cache[i].clone())
                .collect());
        }
        self.decode_image(img)
    }

    fn decode_image(&self, img: usize) -> Result<Vec<Sample>> {
        match &self.origin {
            Origin::Files(items) => {
                let item = &items[img];
                let l = layout::load(item)?;
                self.preprocess.apply(
                    &l.image,
                    &l.points,
                    &item.stem,
                    &item.image.to_string_lossy(),
                    self.sigma,
                )
            }
            Origin::Synthetic { seed, size } => {
                Ok(vec![synthetic::sample(*seed, img, *size, self.sigma)?])
            }
        }
    }

    /// The ground-truth count of sample `i` without touching its pixels.
    pub fn count(&self, i: usize) -> f32 {
        self.entries[i].count as f32
    }

    /// The source image of sample `i`.
    pub fn image_of(&self, i: usize) -> &ImageInfo {
        &self.images[self.entries[i].image]
    }

    pub fn images(&self) -> &[ImageInfo] {
        &self.images
    }

    /// The layout it was read in (None for the in-memory synthetic set).
    pub fn format(&self) -> Option<&Format> {
        self.format.as_ref()
    }

    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    pub fn sigma(&self) -> f32 {
        self.sigma
    }

    /// Bytes held by the patch cache.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Files skipped with `skip_bad`: (path, reason).
    pub fn skipped(&self) -> &[(PathBuf, String)] {
        &self.skipped
    }

    /// The split group of each image (see `SplitSpec::group`).
    pub fn group_keys(&self, group: Option<&str>) -> Result<Vec<String>> {
        let pattern = group.or_else(|| self.format.as_ref().and_then(|f| f.default_group()));
        let re = pattern
            .map(|p| {
                regex::Regex::new(p)
                    .map_err(|e| Error::Invalid(format!("group key regex '{p}': {e}")))
            })
            .transpose()?;
        Ok(self
            .images
            .iter()
            .map(
                |im| match re.as_ref().and_then(|re| re.captures(&im.stem)) {
                    Some(c) => c
                        .get(1)
                        .or_else(|| c.get(0))
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_default(),
                    // No match: the image is its own group.
                    None => format!("\u{0}{}", im.path.display()),
                },
            )
            .collect())
    }

    /// The samples of each group (see `group_keys`), the groups in a seeded random order:
    /// what splits and folds cut.
    fn shuffled_groups(&self, group: Option<&str>, seed: u64) -> Result<Vec<Vec<usize>>> {
        let keys = self.group_keys(group)?;
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (im, key) in self.images.iter().zip(&keys) {
            groups
                .entry(key.as_str())
                .or_default()
                .extend(im.samples.clone());
        }
        let mut order: Vec<Vec<usize>> = groups.into_values().collect();
        Rng::new(seed).shuffle(&mut order);
        Ok(order)
    }

    /// Cuts the samples into `k` folds for cross-validation by a seeded permutation of groups
    /// (as `split`: the patches of an image, or the images of a group such as an MBM slide,
    /// stay in one fold), each group going to the fold where the middle of its samples falls,
    /// so the folds hold as equal a number of samples as whole groups allow. Fails when there
    /// are fewer groups than folds.
    pub fn folds(&self, k: usize, seed: u64, group: Option<&str>) -> Result<Vec<Vec<usize>>> {
        let order = self.shuffled_groups(group, seed)?;
        if k < 2 || order.len() < k {
            return Err(Error::Invalid(format!(
                "{k}-fold cross-validation needs at least 2 folds and {k} groups of images; \
                 this data set has {} group(s)",
                order.len()
            )));
        }
        let n = self.len() as f64;
        let mut folds = vec![Vec::new(); k];
        let mut seen = 0usize;
        for g in order {
            let mid = seen as f64 + g.len() as f64 / 2.0;
            seen += g.len();
            let f = ((mid / n * k as f64) as usize).min(k - 1);
            folds[f].extend(g);
        }
        for f in &mut folds {
            f.sort_unstable();
        }
        if folds.iter().any(Vec::is_empty) {
            return Err(Error::Invalid(format!(
                "{k}-fold cross-validation: the groups of this data set are too uneven to fill \
                 {k} folds"
            )));
        }
        Ok(folds)
    }

    /// Splits the samples train:test:val by a seeded permutation of groups: each group goes to
    /// the part where the middle of its samples falls on the cumulative sample count, so the
    /// parts' sizes follow the ratios as closely as whole groups allow.
    pub fn split(&self, spec: &SplitSpec) -> Result<Split> {
        let [a, b, c] = spec.ratios;
        let total_ratio = a + b + c;
        if spec.ratios.iter().any(|r| !r.is_finite() || *r < 0.0) || total_ratio <= 0.0 {
            return Err(Error::Invalid(format!(
                "split ratios {:?} must be non-negative with a positive sum",
                spec.ratios
            )));
        }
        let order = self.shuffled_groups(spec.group.as_deref(), spec.seed)?;
        let n = self.len() as f64;
        let (cut1, cut2) = (n * a / total_ratio, n * (a + b) / total_ratio);
        let mut split = Split::default();
        let mut seen = 0usize;
        for g in order {
            let mid = seen as f64 + g.len() as f64 / 2.0;
            seen += g.len();
            let part = if mid < cut1 {
                &mut split.train
            } else if mid < cut2 {
                &mut split.test
            } else {
                &mut split.val
            };
            part.extend(g);
        }
        for p in [&mut split.train, &mut split.test, &mut split.val] {
            p.sort_unstable();
        }
        Ok(split)
    }
}

/// An image's original width, height and count, and its patches.
type Decoded = (usize, usize, usize, Vec<Sample>);
