//! Training loops for the counter (count loss only) and the localizer (MSE on density maps,
//! counter frozen), with per-epoch checkpoints, metrics.jsonl and exact resume.
mod counter;
mod fit;
mod localizer;
mod run;

pub use counter::train_counter;
pub use fit::{Job, Scores, Summary, INTERRUPT};
pub use localizer::train_localizer;
pub use run::{EpochRecord, Progress, RunLog};

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{DataOptions, Dataset};
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
    /// Number of synthetic images when `data` is `synthetic`.
    pub synthetic_n: usize,
    /// Side of the synthetic images (a multiple of 16).
    #[serde(default = "default_synthetic_size")]
    pub synthetic_size: usize,
    /// Stop after this many optimiser steps in total (tests and quick demos).
    pub max_steps: Option<usize>,
    /// Localizer only: the frozen counter's checkpoint.
    pub counter: Option<PathBuf>,
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
            synthetic_n: 64,
            synthetic_size: 256,
            max_steps: None,
            counter: None,
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
        if self.sgdr_t0 <= 0.0 || self.sgdr_t_mult < 1.0 {
            return Err(Error::Invalid("SGDR needs T_0 > 0 and T_mult >= 1".into()));
        }
        Ok(())
    }
}

/// The training and validation data of a run: (data set, indices) for each.
pub struct RunData {
    pub train: (Arc<Dataset>, Vec<usize>),
    pub val: Option<(Arc<Dataset>, Vec<usize>)>,
}

/// Opens the run's data: an explicit `--val` folder, or else a seeded hold-out of about a tenth
/// of the training images (at least one) when there are enough of them.
pub fn open_data(opts: &TrainOptions) -> Result<RunData> {
    let data_opts = DataOptions {
        sigma: opts.sigma,
        ..DataOptions::default()
    };
    let ds = if opts.data == "synthetic" {
        Dataset::synthetic(opts.synthetic_n, opts.seed, opts.synthetic_size, opts.sigma)?
    } else {
        Dataset::open(std::path::Path::new(&opts.data), &data_opts)?
    };
    let ds = Arc::new(ds);
    if let Some(v) = &opts.val {
        let val = Arc::new(Dataset::open(v, &data_opts)?);
        let vi = (0..val.len()).collect();
        return Ok(RunData {
            train: (ds.clone(), (0..ds.len()).collect()),
            val: Some((val, vi)),
        });
    }
    let (train, val) = holdout(&ds, opts.seed);
    Ok(RunData {
        train: (ds.clone(), train),
        val: (!val.is_empty()).then_some((ds, val)),
    })
}

/// Splits sample indices by source image: every tenth source (seeded order) is held out, so
/// patches of one image never straddle the split. Fewer than 5 sources: no hold-out.
fn holdout(ds: &Dataset, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut sources: Vec<String> = (0..ds.len()).map(|i| ds.sample(i).source.clone()).collect();
    sources.sort();
    sources.dedup();
    if sources.len() < 5 {
        return ((0..ds.len()).collect(), vec![]);
    }
    crate::rng::Rng::new(seed ^ 0x7A11).shuffle(&mut sources);
    let n_val = sources.len().div_ceil(10);
    let held: std::collections::HashSet<&String> = sources[..n_val].iter().collect();
    (0..ds.len()).partition(|&i| !held.contains(&ds.sample(i).source))
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
