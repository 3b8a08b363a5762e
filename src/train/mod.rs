//! Training loops for the counter (count loss only), the localizer (MSE on density maps,
//! counter frozen) and the coupled baseline (MSE on density maps from the image alone), with
//! per-epoch checkpoints, metrics.jsonl and exact resume.
mod counter;
mod coupled;
mod fit;
mod localizer;
mod run;

pub use counter::{train_counter, CounterJob};
pub use coupled::{train_coupled, CoupledJob};
pub use fit::{fit, Job, Scores, Summary, INTERRUPT};
pub use localizer::train_localizer;
pub use run::{
    load_snapshot, load_snapshot_bytes, save_snapshot, EpochRecord, Progress, RunLog, RUN_ID_KEY,
};

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::{DataOptions, Dataset, SplitSpec};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Backbone, ModelConfig, ModelKind};
use crate::optim::AdamConfig;

/// Everything a training run needs: the flags of `dcl train` (clap) and the run's config.json
/// (serde), so each setting, its help and its default are written once, here. The defaults of
/// the networks' settings are `ModelConfig::default()`'s. A field that config.json files
/// written before it existed lack takes its serde default: what those runs did (e.g. no
/// mosaic crops), which need not be the flag's default.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct TrainOptions {
    /// Training data: a folder in a known layout, or `synthetic` for the built-in set.
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// Validation folder (default: a seeded tenth of the training images is held out).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Run folder: checkpoints, metrics.jsonl, config.json.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// L2 weight decay of Adam.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// SGDR: epochs of the first cosine cycle.
    #[arg(long, default_value_t = 10.0)]
    pub sgdr_t0: f64,
    /// SGDR: growth of each cycle's length.
    #[arg(long, default_value_t = 2.0)]
    pub sgdr_t_mult: f64,
    /// SGDR: lowest learning rate.
    #[arg(long, default_value_t = 1e-6)]
    pub eta_min: f64,
    /// Scales every channel count of both networks (1 = the paper's widths).
    #[arg(long, default_value_t = ModelConfig::default().width_mult)]
    pub width_mult: f32,
    /// Base width of the localizer's UNet (before --width-mult).
    #[arg(long, default_value_t = ModelConfig::default().unet_width)]
    pub unet_width: usize,
    #[arg(long, value_enum, default_value_t = ModelConfig::default().backbone)]
    pub backbone: Backbone,
    /// K, the number of GMP sampling points.
    #[arg(long, default_value_t = ModelConfig::default().gmp_points)]
    pub gmp_points: usize,
    /// Ablation: replace global message passing by the identity.
    // Wins over gmp_points (see `model_config`). Older config.json files folded it into
    // gmp_points = 0 instead, which reads the same.
    #[arg(long)]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_gmp: bool,
    /// σ in pixels of the ground-truth Gaussians.
    #[arg(long, default_value_t = ModelConfig::default().sigma)]
    pub sigma: f32,
    /// Density maps are multiplied by this for the localizer.
    #[arg(long, default_value_t = ModelConfig::default().density_scale)]
    pub density_scale: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Turn off flips and rotations.
    #[arg(long = "no-augment", action = clap::ArgAction::SetFalse)]
    pub augment: bool,
    /// Probability that a training sample is a random crop across a 2x2 mosaic of patches, so
    /// counts do not depend on where a tile's edge falls (tiled counting of large images);
    /// 0 trains with the paper's flips and rotations only.
    // See `Loader::with_mosaic`.
    #[arg(long, default_value_t = 0.5)]
    #[serde(default)]
    pub mosaic: f32,
    /// σ of an H&E stain jitter of each training patch (haematoxylin, eosin and DAB densities
    /// each scaled by U(1-σ, 1+σ) and shifted by U(-σ, σ)), for histology; 0: none. 0.05 is
    /// the usual strength.
    // See `data::stain`.
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub stain_jitter: f32,
    /// Zoom each mosaic window (--mosaic) by a factor drawn log-uniformly from [1/A, A], A in
    /// [1, 2]: the window covers (W/s) x (H/s) pixels of the 2x2 mosaic, resized to the patch,
    /// so the networks see cells larger and smaller than the preprocessing makes them; 1: none.
    // See `Loader::with_scale_jitter`.
    #[arg(long, default_value_t = 1.0, value_name = "A")]
    #[serde(
        default = "default_scale_jitter",
        skip_serializing_if = "is_default_scale_jitter"
    )]
    pub scale_jitter: f32,
    /// Counter: also train the count of each window of a GRID x GRID grid over the patch (counts
    /// only, not in the paper), so the coarse map's mass sits where the cells are and tiled
    /// counts of large images add up; 0 or 1: the paper's image count loss alone.
    // See `ops::loss::window_count_l1_loss`.
    #[arg(long, default_value_t = 0, value_name = "GRID")]
    #[serde(default)]
    pub window_grid: usize,
    /// Weight of the window count loss.
    #[arg(long, default_value_t = default_window_weight())]
    #[serde(default = "default_window_weight")]
    pub window_weight: f32,
    /// Images generated for `--data synthetic`.
    #[arg(long, default_value_t = 64)]
    pub synthetic_n: usize,
    /// Side in pixels of the synthetic images (a multiple of 16).
    #[arg(long, default_value_t = default_synthetic_size())]
    #[serde(default = "default_synthetic_size")]
    pub synthetic_size: usize,
    /// Stop after this many optimiser steps per network.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Localizer only: the frozen counter checkpoint.
    #[arg(long)]
    pub counter: Option<PathBuf>,
    /// Folder layout: vgg, adi, mbm, dots[:SUFFIX] or points-csv (default: detected).
    #[arg(long)]
    #[serde(default)]
    pub format: Option<String>,
    /// Continue past unreadable or badly annotated files, listing them.
    #[arg(long)]
    #[serde(default)]
    pub skip_bad: bool,
    /// Without --val: train:test:val ratios of a seeded split of --data (the paper's 10:9:1;
    /// default 9:0:1). Whole images, or groups (--group), stay on one side.
    #[arg(long)]
    #[serde(default)]
    pub split: Option<String>,
    /// Regex on file stems whose first group keeps related files together in splits
    /// (default: MBM by slide, else per image).
    #[arg(long)]
    #[serde(default)]
    pub group: Option<String>,
    /// The run's id, set by `dcl train` when a run starts: its config.json and every snapshot
    /// carry it, so a snapshot of another run is never resumed (None: runs from before ids).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    // Not part of a run's settings: where and how this process runs it (a resumed run takes
    // them from its own command line).
    #[arg(skip)]
    #[serde(skip)]
    pub device: Device,
    /// Print a per-op time breakdown of the training steps at the end.
    #[arg(long)]
    #[serde(skip)]
    pub profile: bool,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
}

fn default_synthetic_size() -> usize {
    256
}

fn default_window_weight() -> f32 {
    1.0
}

fn default_scale_jitter() -> f32 {
    1.0
}

// Recipes without zoom serialise as before, so experiment.json files and run configs written
// before the option compare equal to today's.
fn is_default_scale_jitter(a: &f32) -> bool {
    *a == default_scale_jitter()
}

/// The defaults of `dcl train` given no flags.
impl Default for TrainOptions {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct NoFlags {
            #[command(flatten)]
            options: TrainOptions,
        }
        <NoFlags as clap::Parser>::try_parse_from(["dcl"])
            .expect("every training option has a default")
            .options
    }
}

impl TrainOptions {
    pub fn model_config(&self, model: ModelKind) -> ModelConfig {
        ModelConfig {
            model,
            backbone: self.backbone,
            gmp_points: if self.no_gmp { 0 } else { self.gmp_points },
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
        if !(0.0..=0.5).contains(&self.stain_jitter) {
            return Err(Error::Invalid(format!(
                "--stain-jitter is a σ in [0, 0.5], got {}",
                self.stain_jitter
            )));
        }
        if !(1.0..=crate::data::loader::MAX_SCALE_JITTER).contains(&self.scale_jitter) {
            return Err(Error::Invalid(format!(
                "--scale-jitter is a largest zoom factor in [1, {}], got {}",
                crate::data::loader::MAX_SCALE_JITTER,
                self.scale_jitter
            )));
        }
        if self.scale_jitter > 1.0 && self.augment && self.mosaic == 0.0 {
            return Err(Error::Invalid(
                "--scale-jitter zooms the mosaic windows: it needs --mosaic above 0".into(),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Invalid(format!(
                "--weight-decay must be a number >= 0, got {}",
                self.weight_decay
            )));
        }
        let sgdr_ok = self.eta_min.is_finite()
            && self.eta_min >= 0.0
            && self.sgdr_t0.is_finite()
            && self.sgdr_t_mult.is_finite();
        if !sgdr_ok {
            return Err(Error::Invalid(format!(
                "SGDR needs finite T_0 and T_mult and eta_min >= 0, got T_0 {}, T_mult {}, \
                 eta_min {}",
                self.sgdr_t0, self.sgdr_t_mult, self.eta_min
            )));
        }
        if self.window_grid > 64 {
            return Err(Error::Invalid(format!(
                "--window-grid must be at most 64, got {}",
                self.window_grid
            )));
        }
        // the networks' settings, before any data is read
        self.model_config(ModelKind::Counter).validate()?;
        self.model_config(ModelKind::Localizer).validate()?;
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

/// The checks that need the opened data (e.g. that `--window-grid` divides the patches), so a
/// run can be refused before its folder is touched.
pub fn check_data(opts: &TrainOptions, data: &RunData) -> Result<()> {
    counter::check_windows(opts, data)
}

/// Makes a run's paths absolute (`--data`, `--val`, `--counter`), so its config.json resumes
/// from any working directory.
pub fn absolute_paths(opts: &mut TrainOptions) -> Result<()> {
    let abs = |p: &std::path::Path| {
        std::path::absolute(p)
            .map_err(|e| Error::file(p, format!("cannot make the path absolute: {e}")))
    };
    if opts.data != "synthetic" {
        opts.data = abs(std::path::Path::new(&opts.data))?.display().to_string();
    }
    for p in [&mut opts.val, &mut opts.counter].into_iter().flatten() {
        *p = abs(p)?;
    }
    Ok(())
}

/// Resolves the relative paths of a resumed run's config.json (runs from before paths were
/// stored absolute): as before, from the working directory when they exist there, otherwise
/// from the run folder.
pub fn resolve_paths(opts: &mut TrainOptions, run_dir: &std::path::Path) {
    let resolve = |p: &std::path::Path| -> PathBuf {
        if p.is_absolute() || p.exists() || !run_dir.join(p).exists() {
            p.to_path_buf()
        } else {
            run_dir.join(p)
        }
    };
    if opts.data != "synthetic" {
        opts.data = resolve(std::path::Path::new(&opts.data))
            .display()
            .to_string();
    }
    for p in [&mut opts.val, &mut opts.counter].into_iter().flatten() {
        *p = resolve(p);
    }
}

/// A new run's id: a hash of the time, the process and the run folder.
pub fn new_run_id(out: &std::path::Path) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = [
        t.to_le_bytes().to_vec(),
        std::process::id().to_le_bytes().to_vec(),
        out.display().to_string().into_bytes(),
    ]
    .concat();
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
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

#[cfg(test)]
mod tests {
    use super::TrainOptions;

    #[test]
    fn scale_jitter_is_checked_and_old_recipes_read_without_it() {
        let ok = TrainOptions {
            scale_jitter: 1.5,
            mosaic: 1.0,
            ..TrainOptions::default()
        };
        ok.validate().unwrap();
        for (a, mosaic, says) in [
            (2.5, 1.0, "in [1, 2]"),
            (0.5, 1.0, "in [1, 2]"),
            (f32::NAN, 1.0, "in [1, 2]"),
            (1.5, 0.0, "needs --mosaic"),
        ] {
            let e = TrainOptions {
                scale_jitter: a,
                mosaic,
                ..TrainOptions::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(e.contains("--scale-jitter") && e.contains(says), "{a}: {e}");
        }
        // a recipe without zoom serialises as before the option, and reads back as 1
        let plain = serde_json::to_value(TrainOptions::default()).unwrap();
        assert!(plain.get("scale_jitter").is_none(), "{plain}");
        let back: TrainOptions = serde_json::from_value(plain).unwrap();
        assert_eq!(back.scale_jitter, 1.0);
        let zoomed = serde_json::to_value(&ok).unwrap();
        assert_eq!(zoomed["scale_jitter"], 1.5);
    }
}
