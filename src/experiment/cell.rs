//! One cell of the grid: a configuration trained on all folds of a data set but one, with one
//! seed, scored on the held-out fold and on the set's `val/` folder.
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_count_net, load_pair};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::evaluate;
use crate::experiment::{cpu_seconds, Config, ExperimentSpec, OpenSet};
use crate::infer::dataset::ImageCount;
use crate::train::{train_counter, train_coupled, train_localizer, RunData};

/// Which cell: data set, configuration, seed and held-out fold.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CellKey {
    pub set: String,
    pub config: Config,
    pub seed: u64,
    pub fold: usize,
}

impl CellKey {
    /// The cell's file stem and run folder name.
    pub fn name(&self) -> String {
        format!(
            "{}-{}-seed{}-fold{}",
            self.set,
            self.config.name(),
            self.seed,
            self.fold
        )
    }
}

/// Scores of one model on a set of images.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scores {
    pub mae: f64,
    pub rmse: f64,
    /// Per source image, so folds pool into one cross-validated figure per seed.
    pub images: Vec<ImageCount>,
    /// Located cells matched within 1.25 σ (a localizer's configurations only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<[usize; 3]>,
}

impl Scores {
    pub fn f1(&self) -> Option<f64> {
        self.matches.map(|[tp, fp, fn_]| f1(tp, fp, fn_))
    }
}

pub fn f1(tp: usize, fp: usize, fn_: usize) -> f64 {
    let d = 2 * tp + fp + fn_;
    if d == 0 {
        1.0
    } else {
        2.0 * tp as f64 / d as f64
    }
}

/// What a finished cell records (cells/NAME.json).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellResult {
    pub key: CellKey,
    pub version: String,
    /// Training images (source images, not patches) and held-out ones.
    pub train_images: usize,
    pub held_out: Scores,
    /// The set's `val/` folder, when it has one.
    pub val: Option<Scores>,
    pub wall_seconds: f64,
    /// Process CPU seconds of this cell (training and scoring, all threads).
    pub cpu_seconds: Option<f64>,
}

impl CellResult {
    pub fn summary_line(&self) -> String {
        let f1 = |s: &Scores| s.f1().map(|f| format!(", F1 {f:.3}")).unwrap_or_default();
        let val = self
            .val
            .as_ref()
            .map(|v| format!("; val MAE {:.2}{}", v.mae, f1(v)))
            .unwrap_or_default();
        format!(
            "{}: held-out MAE {:.2} RMSE {:.2} ({} images){}{val} — {:.1} min{}",
            self.key.name(),
            self.held_out.mae,
            self.held_out.rmse,
            self.held_out.images.len(),
            f1(&self.held_out),
            self.wall_seconds / 60.0,
            self.cpu_seconds
                .map(|c| format!(", {:.1} CPU min", c / 60.0))
                .unwrap_or_default()
        )
    }
}

fn cell_path(dir: &Path, key: &CellKey) -> std::path::PathBuf {
    dir.join(format!("{}.json", key.name()))
}

/// A finished cell's result, if there is one; a file that does not parse or belongs to another
/// cell is an error naming it (never silently retrained over).
pub fn read(dir: &Path, key: &CellKey) -> Result<Option<CellResult>> {
    let path = cell_path(dir, key);
    let Some(bytes) = crate::fsutil::read_own_file(&path)? else {
        return Ok(None);
    };
    let r: CellResult = serde_json::from_slice(&bytes).map_err(|e| {
        Error::file(
            &path,
            format!("not a cell result: {e} (remove it to rerun)"),
        )
    })?;
    if r.key != *key {
        return Err(Error::file(&path, "holds the result of another cell"));
    }
    Ok(Some(r))
}

pub fn write(dir: &Path, r: &CellResult) -> Result<()> {
    crate::fsutil::atomic_write(
        &cell_path(dir, &r.key),
        serde_json::to_string_pretty(r)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .as_bytes(),
    )
}

/// Trains the cell's networks in RUNS/NAME (resuming what an interrupted grid left there) and
/// scores their last epoch.
pub fn train_and_score(
    spec: &ExperimentSpec,
    set: &OpenSet,
    key: &CellKey,
    runs: &Path,
    quiet: bool,
) -> Result<CellResult> {
    let (t0, c0) = (Instant::now(), cpu_seconds());
    let held: Vec<usize> = set.folds[key.fold].clone();
    let train_idx: Vec<usize> = set
        .folds
        .iter()
        .enumerate()
        .filter(|(f, _)| *f != key.fold)
        .flat_map(|(_, idx)| idx.iter().copied())
        .collect();
    let mut opts = spec.recipe.clone();
    opts.seed = key.seed;
    opts.no_gmp = key.config == Config::NoGmp;
    opts.out = runs.join(key.name());
    opts.data = set.spec.train.display().to_string();
    opts.val = None;
    opts.run_id = Some(key.name());
    opts.quiet = quiet;
    opts.validate()?;
    // no validation images: the held-out fold must not choose the checkpoint
    let data = RunData {
        train: (set.train.clone(), train_idx.clone()),
        val: None,
    };
    let batch = opts.batch_size;
    let eval_on = |model: &crate::nn::CountNet,
                   loc: Option<&crate::nn::Localizer>,
                   ds: &Arc<Dataset>,
                   idx: &[usize]|
     -> Result<Scores> {
        let e = evaluate(model, loc, ds, idx, batch, None)?;
        Ok(Scores {
            mae: e.metrics.mae,
            rmse: e.metrics.rmse,
            images: e.counts,
            matches: e.localization.map(|(_, m)| [m.tp, m.fp, m.fn_]),
        })
    };
    let (model, localizer) = match key.config {
        Config::Decoupled | Config::NoGmp => {
            let c = train_counter(&opts, &data, true)?;
            let loc = if spec.localizer_epochs > 0 {
                let mut lo = opts.clone();
                lo.epochs = spec.localizer_epochs;
                lo.sgdr_t0 = opts.sgdr_t0 * spec.localizer_epochs as f64 / opts.epochs as f64;
                Some(train_localizer(&lo, &c.checkpoint, &data, true)?.checkpoint)
            } else {
                None
            };
            let (m, l, _) = load_pair(&c.checkpoint, loc.as_deref(), &opts.device)?;
            (m, l)
        }
        Config::Coupled => {
            let c = train_coupled(&opts, &data, true)?;
            let mut m = load_count_net(&c.checkpoint)?;
            m.store_mut().to_device(&opts.device)?;
            (m, None)
        }
    };
    let held_out = eval_on(&model, localizer.as_ref(), &set.train, &held)?;
    let val = match &set.val {
        Some(v) => Some(eval_on(
            &model,
            localizer.as_ref(),
            v,
            &(0..v.len()).collect::<Vec<_>>(),
        )?),
        None => None,
    };
    let train_images = train_idx
        .iter()
        .map(|&i| &set.train.image_of(i).path)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(CellResult {
        key: key.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        train_images,
        held_out,
        val,
        wall_seconds: t0.elapsed().as_secs_f64(),
        cpu_seconds: match (c0, cpu_seconds()) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
    })
}
