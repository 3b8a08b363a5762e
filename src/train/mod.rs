//! Training loops for the counter (count loss only) and the localizer (MSE on density maps,
//! counter frozen), with per-epoch checkpoints, metrics.jsonl and exact resume.
mod counter;
mod fit;
mod localizer;
mod run;

pub use counter::{train_counter, CounterJob};
pub use fit::{fit, Job, Scores, Summary, INTERRUPT};
pub use localizer::train_localizer;
pub use run::{EpochRecord, Progress, RunLog};

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{DataOptions, Dataset, SplitSpec};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Backbone, ModelConfig, ModelKind};
use crate::optim::AdamConfig;

/// Everything a training run needs; saved as the run's config.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainOptions {
    /// A data folder, or `synthetic` for the built-in generated set.
    pub data: String,
    /// A validation folder; without it, validation uses a seeded split of `data`.
    pub val: Option<PathBuf>,
    pub out: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f32,
    /// SGDR: first cycle length in epochs, cycle growth factor and minimum learning rate.
    pub sgdr_t0: f64,
    pub sgdr_t_mult: f64,
    pub eta_min: f64,
    pub width_mult: f32,
    pub unet_width: usize,
    pub backbone: Backbone,
    pub gmp_points: usize,
    pub sigma: f32,
    pub density_scale: f32,
    pub seed: u64,
    pub augment: bool,
    /// Probability that a training sample is a mosaic crop across four patches (see
    /// `Loader::with_mosaic`); 0 gives the paper's flips and rotations only.
    #[serde(default)]
    pub mosaic: f32,
    /// Counter only: also hold the count of each window of a g x g grid over the patch (see
    /// `ops::loss::window_count_l1_loss`); 0 trains with the paper's image count loss only.
    #[serde(default)]
    pub window_grid: usize,
    /// Weight of the window count loss next to the image count loss.
    #[serde(default = "default_window_weight")]
    pub window_weight: f32,
    /// Number of synthetic images when `data` is `synthetic`.
    pub synthetic_n: usize,
    /// Side of the synthetic images (a multiple of 16).
    #[serde(default = "default_synthetic_size")]
    pub synthetic_size: usize,
    /// Stop after this many optimiser steps in total (tests and quick demos).
    pub max_steps: Option<usize>,
    /// Localizer only: the frozen counter's checkpoint.
    pub counter: Option<PathBuf>,
    /// Folder layout (vgg, adi, mbm, dots[:SUFFIX], points-csv); None: detected.
    #[serde(default)]
    pub format: Option<String>,
    /// Skip unreadable files with a warning instead of stopping.
    #[serde(default)]
    pub skip_bad: bool,
    /// train:test:val ratios when no `val` folder is given (default 9:0:1).
    #[serde(default)]
    pub split: Option<String>,
    /// Regex whose first group names a file's split group (default: per data set).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(skip)]
    pub device: Device,
    #[serde(skip)]
    pub profile: bool,
    #[serde(skip)]
    pub quiet: bool,
}

fn default_synthetic_size() -> usize {
    256
}

fn default_window_weight() -> f32 {
    1.0
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            data: "synthetic".into(),
            val: None,
            out: PathBuf::from("runs/latest"),
            epochs: 30,
            batch_size: 8,
            lr: 1e-4,
            weight_decay: 0.0,
            sgdr_t0: 10.0,
            sgdr_t_mult: 2.0,
            eta_min: 1e-6,
            width_mult: 1.0,
            unet_width: 64,
            backbone: Backbone::Vgg19Bn,
            gmp_points: 8,
            sigma: 3.0,
            density_scale: 100.0,
            seed: 0,
            augment: true,
            mosaic: 0.5,
            window_grid: 0,
            window_weight: default_window_weight(),
            synthetic_n: 64,
            synthetic_size: 256,
            max_steps: None,
            counter: None,
            format: None,
            skip_bad: false,
            split: None,
            group: None,
            device: Device::Cpu,
            profile: false,
            quiet: false,
        }
    }
}

impl TrainOptions {
    pub fn model_config(&self, model: ModelKind) -> ModelConfig {
        ModelConfig {
            model,
            backbone: self.backbone,
            gmp_points: self.gmp_points,
            width_mult: self.width_mult,
            unet_width: self.unet_width,
            density_scale: self.density_scale,
            sigma: self.sigma,
            ..ModelConfig::default()
        }
    }

    pub fn adam(&self) -> AdamConfig {
        AdamConfig {
            weight_decay: self.weight_decay,
            ..AdamConfig::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.epochs == 0 {
            return Err(Error::Invalid(
                "--batch-size and --epochs must be positive".into(),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Invalid(format!(
                "--lr must be positive, got {}",
                self.lr
            )));
        }
        if !(self.sgdr_t0 > 0.0 && self.sgdr_t_mult >= 1.0) {
            return Err(Error::Invalid("SGDR needs T_0 > 0 and T_mult >= 1".into()));
        }
        if !(0.0..=1.0).contains(&self.mosaic) {
            return Err(Error::Invalid(format!(
                "--mosaic is a probability in [0, 1], got {}",
                self.mosaic
            )));
        }
        if !(self.window_weight.is_finite() && self.window_weight >= 0.0) {
            return Err(Error::Invalid(format!(
                "--window-weight must be a number >= 0, got {}",
                self.window_weight
            )));
        }
        Ok(())
    }
}

/// The training and validation data of a run: (data set, indices) for each.
pub struct RunData {
    pub train: (Arc<Dataset>, Vec<usize>),
    pub val: Option<(Arc<Dataset>, Vec<usize>)>,
}

impl TrainOptions {
    pub fn data_options(&self) -> Result<DataOptions> {
        Ok(DataOptions {
            format: self.format.as_deref().map(str::parse).transpose()?,
            sigma: self.sigma,
            skip_bad: self.skip_bad,
            ..DataOptions::default()
        })
    }
}

/// Opens the run's data: with `--val`, all of `data` trains and `val` validates; otherwise
/// `data` is split by seeded permutation of source images (or groups, e.g. MBM slides) into
/// train:test:val by `--split` (default 9:0:1), the test part being held back.
pub fn open_data(opts: &TrainOptions) -> Result<RunData> {
    let data_opts = opts.data_options()?;
    let ds = if opts.data == "synthetic" {
        Dataset::synthetic(opts.synthetic_n, opts.seed, opts.synthetic_size, opts.sigma)?
    } else {
        Dataset::open(std::path::Path::new(&opts.data), &data_opts)?
    };
    let ds = Arc::new(ds);
    warn_skipped(&ds);
    if let Some(v) = &opts.val {
        let val = Arc::new(Dataset::open(v, &data_opts)?);
        warn_skipped(&val);
        let vi = (0..val.len()).collect();
        return Ok(RunData {
            train: (ds.clone(), (0..ds.len()).collect()),
            val: Some((val, vi)),
        });
    }
    let spec = SplitSpec {
        seed: opts.seed,
        ratios: match &opts.split {
            Some(r) => SplitSpec::parse_ratios(r)?,
            None => [9.0, 0.0, 1.0],
        },
        group: opts.group.clone(),
    };
    let split = ds.split(&spec)?;
    if split.train.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the split {:?} leaves no training images",
            opts.data, spec.ratios
        )));
    }
    Ok(RunData {
        train: (ds.clone(), split.train),
        val: (!split.val.is_empty()).then_some((ds, split.val)),
    })
}

/// `--skip-bad`: what was left out, so nothing is dropped silently.
fn warn_skipped(ds: &Dataset) {
    for (path, why) in ds.skipped() {
        eprintln!("warning: skipped {}: {why}", path.display());
    }
}

/// Network pixels per original image pixel of a data set's preprocessing (the median over its
/// images), stored in checkpoints so `dcl count` resizes users' images the same way.
pub fn input_scale(ds: &Dataset) -> f32 {
    use crate::data::Preprocess;
    let mut scales: Vec<f32> = ds
        .images()
        .iter()
        .map(|im| {
            let (w, h) = (im.width as f32, im.height as f32);
            match ds.preprocess() {
                Preprocess::AsIs => 1.0,
                Preprocess::Resize { size } => size as f32 / w,
                Preprocess::Quad { size } => 2.0 * size as f32 / w,
                Preprocess::Grid { patch } => {
                    let side = w.max(h);
                    let k = (side / patch as f32).round().max(1.0);
                    k * patch as f32 / side
                }
            }
        })
        .collect();
    if scales.is_empty() {
        return 1.0;
    }
    scales.sort_by(f32::total_cmp);
    scales[scales.len() / 2]
}
