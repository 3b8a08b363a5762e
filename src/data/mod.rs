//! Data: readers for the benchmark layouts and users' annotations, the paper's preprocessing,
//! density maps, augmentation, splits, a background loader and a synthetic fluorescence set.
//!
//! Flow: `layout` pairs images with annotations in a folder; `image_io` decodes them;
//! `preprocess` cuts and resizes them into network-resolution patches (`Sample`s) with dots and
//! density maps (`density`); `Dataset` caches those patches; `Loader` turns them into
//! augmented (`augment`, `stain`), ImageNet-normalised batches on background threads.
pub mod augment;
pub mod dataset;
pub mod density;
pub mod files;
pub mod image_io;
pub mod layout;
pub mod loader;
pub mod preprocess;
pub mod stain;
pub mod stream;
pub mod synthetic;
pub mod synthetic_large;

pub use augment::Augment;
pub use dataset::{Dataset, ImageInfo, SampleRef, Split, SplitSpec};
pub use density::density_map;
pub use image_io::{read_image_rgb, DotRule, RgbImage};
pub use loader::{normalize_imagenet, Batch, Loader, IMAGENET_MEAN, IMAGENET_STD};
pub use preprocess::Preprocess;

use crate::error::{Error, Result};

/// A folder layout (`--format`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// `NNNcell.png` + `NNNdots.png`, one pure red pixel per cell.
    Vgg,
    /// `images/NAME` + `annotations/NAME`, red JPEG dots (R>127, G<100, B<100).
    Adi,
    /// `*_NNN.png` + `*_dots_NNN.png`, nonzero pixel per cell.
    Mbm,
    /// Any image `STEM.ext` with a dots image `STEM<suffix>.ext` beside it.
    Dots { suffix: String },
    /// Any image `STEM.ext` with a CSV `STEM.csv` of x,y rows beside it.
    PointsCsv,
}

impl std::str::FromStr for Format {
    type Err = Error;
    /// `vgg`, `adi`, `mbm`, `dots` (suffix `_dots`), `dots:SUFFIX`, `points-csv` (or `csv`).
    fn from_str(s: &str) -> Result<Format> {
        match s.to_ascii_lowercase().as_str() {
            "vgg" => Ok(Format::Vgg),
            "adi" => Ok(Format::Adi),
            "mbm" => Ok(Format::Mbm),
            "dots" => Ok(Format::Dots {
                suffix: "_dots".into(),
            }),
            "points-csv" | "csv" => Ok(Format::PointsCsv),
            _ => match s.split_once(':') {
                Some((k, suffix)) if k.eq_ignore_ascii_case("dots") && !suffix.is_empty() => {
                    Ok(Format::Dots {
                        suffix: suffix.to_string(),
                    })
                }
                _ => Err(Error::Invalid(format!(
                    "unknown format '{s}' (expected vgg, adi, mbm, dots, dots:SUFFIX or points-csv)"
                ))),
            },
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Vgg => write!(f, "vgg"),
            Format::Adi => write!(f, "adi"),
            Format::Mbm => write!(f, "mbm"),
            Format::Dots { suffix } => write!(f, "dots:{suffix}"),
            Format::PointsCsv => write!(f, "points-csv"),
        }
    }
}

impl Format {
    /// The data set's preprocessing rule (DESIGN §2).
    pub fn default_preprocess(&self) -> Preprocess {
        match self {
            Format::Vgg => Preprocess::AsIs,
            Format::Adi => Preprocess::Resize { size: 256 },
            Format::Mbm => Preprocess::Quad { size: 256 },
            Format::Dots { .. } | Format::PointsCsv => Preprocess::Grid { patch: 256 },
        }
    }

    /// The rule that recognises dots in this layout's annotation images.
    pub fn default_dot_rule(&self) -> DotRule {
        match self {
            Format::Vgg => DotRule::PureRed,
            Format::Adi => DotRule::Red,
            Format::Mbm => DotRule::NonZero,
            Format::Dots { .. } | Format::PointsCsv => DotRule::Auto,
        }
    }

    /// The default split group key (a regex on the image file stem, first capture group):
    /// MBM's crops `<slide>_<nn>_<k>` are grouped by source slide `<slide>_<nn>`.
    pub fn default_group(&self) -> Option<&'static str> {
        match self {
            Format::Mbm => Some(r"^(.+)_\d+$"),
            _ => None,
        }
    }
}

/// How a folder is read and preprocessed.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// None: detected from the folder's layout.
    pub format: Option<Format>,
    /// Gaussian σ of the density maps, in network-resolution pixels (DESIGN §1: 3).
    pub sigma: f32,
    /// Continue past bad files, listing them in `Dataset::skipped`; otherwise the first bad
    /// file is an error.
    pub skip_bad: bool,
    /// None: the data set's rule (`Format::default_preprocess`).
    pub preprocess: Option<Preprocess>,
    /// None: the layout's rule (`Format::default_dot_rule`).
    pub dot_rule: Option<DotRule>,
    /// Memory budget of the patch cache in bytes. Patches past it are not kept and are decoded
    /// again from their file when used, so a data set's memory is at most this plus its
    /// metadata (about 1 MiB per cached 256x256 patch: image and density in f32).
    pub cache_bytes: usize,
    /// Show a progress bar while decoding (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            format: None,
            sigma: 3.0,
            skip_bad: false,
            preprocess: None,
            dot_rule: None,
            cache_bytes: 4 << 30,
            progress: true,
        }
    }
}

/// One preprocessed patch with its ground truth.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// `<image file stem>`, or `<stem>#r<row>c<col>` for a patch of a cut image.
    pub name: String,
    /// The original image's path (patch counts sum per source).
    pub source: String,
    pub height: usize,
    pub width: usize,
    /// RGB in [0,1], planar CHW, 3 * height * width.
    pub image: Vec<f32>,
    /// (x, y) dot coordinates in this patch's pixels; pixel (r, c) spans [c, c+1) x [r, r+1).
    pub points: Vec<(f32, f32)>,
    /// height * width, cells per pixel; sums to `points.len()`.
    pub density: Vec<f32>,
}

impl Sample {
    /// The ground-truth count (number of dots).
    pub fn count(&self) -> f32 {
        self.points.len() as f32
    }

    /// Bytes held by the sample's buffers.
    pub fn nbytes(&self) -> usize {
        4 * (self.image.len() + self.density.len()) + 8 * self.points.len() + self.name.len()
    }
}
