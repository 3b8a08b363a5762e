//! `dcl experiment`: trains and scores a grid of {configuration} x {data set} x {seed} x
//! {fold} by k-fold cross-validation, one cell at a time, each cell's result written as it
//! finishes, so an interrupted grid resumes where it stopped (and a finished cell is never
//! trained twice). The table of results is rewritten after every cell.
//!
//! Each fold's models train on the other folds with the given recipe and are scored at their
//! last epoch (no checkpoint is chosen on the held-out fold, which would leak it into the
//! score); a data set's `val/` folder, never trained on, scores every model again as a final
//! check.
mod cell;
mod table;

pub use cell::{CellKey, CellResult, Scores};
pub use table::{summarize, write_tables, Row};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::train::TrainOptions;

/// A configuration of the grid: what the paper compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// DCL: the counter with GMP, and a localizer on its frozen maps.
    Decoupled,
    /// DCL without global message passing (the paper's Table 3 ablation).
    NoGmp,
    /// One UNet learning the density map (MSE), its count the map's sum (Table 2's baseline).
    Coupled,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Decoupled => "decoupled",
            Config::NoGmp => "no-gmp",
            Config::Coupled => "coupled",
        }
    }
}

/// One data set of the grid: its training folder (cut into folds) and, when there is one, its
/// validation folder (the final check).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SetSpec {
    pub name: String,
    pub train: PathBuf,
    pub val: Option<PathBuf>,
}

impl SetSpec {
    /// A folder with `train/` (and `val/`) inside, named by the folder; or an annotated
    /// folder itself, with no final check.
    pub fn from_dir(dir: &Path) -> Result<SetSpec> {
        let dir = std::path::absolute(dir)
            .map_err(|e| Error::file(dir, format!("cannot make the path absolute: {e}")))?;
        if !dir.is_dir() {
            return Err(Error::file(&dir, "is not a folder"));
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into());
        let (train, val) = (dir.join("train"), dir.join("val"));
        Ok(if train.is_dir() {
            SetSpec {
                name,
                train,
                val: val.is_dir().then_some(val),
            }
        } else {
            SetSpec {
                name,
                train: dir,
                val: None,
            }
        })
    }
}

/// What an experiment folder was started with (its experiment.json). The recipe, the folds
/// and the localizer's epochs decide every cell's result, so a resumed grid must keep them;
/// data sets, configurations and seeds may be added (their cells are new).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExperimentSpec {
    pub version: String,
    /// The command line that started the grid, for the table.
    #[serde(default)]
    pub command: String,
    /// The command lines of later runs that added sets, configurations or seeds, in order:
    /// the first command alone does not say how the whole grid was made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extended_by: Vec<String>,
    pub sets: Vec<SetSpec>,
    pub configs: Vec<Config>,
    pub seeds: Vec<u64>,
    pub folds: usize,
    /// Seed of the fold assignment: the same folds for every configuration and seed, so
    /// configurations are compared on the same images (paired).
    pub fold_seed: u64,
    /// Epochs of each localizer (0: no localizers, hence no F1); its schedule is the
    /// counter's, scaled to these epochs.
    pub localizer_epochs: usize,
    /// Every training setting; its paths and seed are set per cell.
    pub recipe: TrainOptions,
}

impl ExperimentSpec {
    /// The cells in the order they run: seed by seed, then fold by fold, so that a grid
    /// stopped early has every data set and configuration on the same folds.
    pub fn cells(&self) -> Vec<CellKey> {
        let mut out = Vec::new();
        for &seed in &self.seeds {
            for fold in 0..self.folds {
                for set in &self.sets {
                    for &config in &self.configs {
                        out.push(CellKey {
                            set: set.name.clone(),
                            config,
                            seed,
                            fold,
                        });
                    }
                }
            }
        }
        out
    }

    /// The settings a resumed grid must share with the one that started the folder.
    fn fixed_part(&self) -> serde_json::Value {
        serde_json::json!({
            "folds": self.folds,
            "fold_seed": self.fold_seed,
            "localizer_epochs": self.localizer_epochs,
            "recipe": self.recipe,
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.recipe.validate()?;
        if self.folds < 2 {
            return Err(Error::Invalid(format!(
                "--folds must be at least 2, got {}",
                self.folds
            )));
        }
        if self.sets.is_empty() || self.configs.is_empty() || self.seeds.is_empty() {
            return Err(Error::Invalid(
                "an experiment needs at least one data set, configuration and seed".into(),
            ));
        }
        let mut names: Vec<&str> = self.sets.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Invalid(format!(
                "two data sets are named '{}': cells are keyed by the folder's name",
                w[0]
            )));
        }
        Ok(())
    }
}

/// A data set opened for the grid: its images, folds and final-check images.
pub struct OpenSet {
    pub spec: SetSpec,
    pub train: Arc<Dataset>,
    pub folds: Vec<Vec<usize>>,
    pub val: Option<Arc<Dataset>>,
}

fn open_set(spec: &SetSpec, e: &ExperimentSpec) -> Result<OpenSet> {
    let data_opts = e.recipe.data_options()?;
    let train = Arc::new(Dataset::open(&spec.train, &data_opts)?);
    let folds = train
        .folds(e.folds, e.fold_seed, e.recipe.group.as_deref())
        .map_err(|err| Error::file(&spec.train, err.to_string()))?;
    let val = spec
        .val
        .as_deref()
        .map(|v| Dataset::open(v, &data_opts).map(Arc::new))
        .transpose()?;
    Ok(OpenSet {
        spec: spec.clone(),
        train,
        folds,
        val,
    })
}

/// What `run` did.
pub struct Outcome {
    pub done_before: usize,
    pub trained: usize,
    pub rows: Vec<Row>,
}

/// Runs every cell of `spec` not yet in `dir`: starts the folder (experiment.json) or checks
/// that it was started with the same recipe and folds, trains and scores the missing cells in
/// order, and rewrites results.md and results.csv after each.
pub fn run(spec: &ExperimentSpec, dir: &Path, quiet: bool) -> Result<Outcome> {
    spec.validate()?;
    crate::fsutil::prepare_output_dir(dir, "experiment")?;
    let _lock = crate::fsutil::DirLock::acquire(dir)?;
    let spec_path = dir.join("experiment.json");
    let mut stored = match crate::fsutil::read_own_file(&spec_path)? {
        Some(bytes) => {
            let old: ExperimentSpec = serde_json::from_slice(&bytes)
                .map_err(|e| Error::file(&spec_path, format!("bad experiment.json: {e}")))?;
            if old.fixed_part() != spec.fixed_part() {
                return Err(Error::file(
                    &spec_path,
                    format!(
                        "this experiment was started with another recipe or other folds:\n  \
                         then: {}\n  now:  {}\nrun it with the same settings, or choose \
                         another --out",
                        old.fixed_part(),
                        spec.fixed_part()
                    ),
                ));
            }
            old
        }
        None => spec.clone(),
    };
    // what this run adds to the grid (sets, configurations, seeds), recorded before it runs
    let before = (stored.sets.len(), stored.configs.len(), stored.seeds.len());
    for s in &spec.sets {
        match stored.sets.iter().find(|o| o.name == s.name) {
            Some(o) if o != s => {
                return Err(Error::file(
                    &spec_path,
                    format!(
                        "data set '{}' was {} then and is {} now",
                        s.name,
                        o.train.display(),
                        s.train.display()
                    ),
                ))
            }
            Some(_) => {}
            None => stored.sets.push(s.clone()),
        }
    }
    for c in &spec.configs {
        if !stored.configs.contains(c) {
            stored.configs.push(*c);
        }
    }
    for s in &spec.seeds {
        if !stored.seeds.contains(s) {
            stored.seeds.push(*s);
        }
    }
    let extended = before != (stored.sets.len(), stored.configs.len(), stored.seeds.len());
    if extended && !spec.command.is_empty() && !stored.extended_by.contains(&spec.command) {
        stored.extended_by.push(spec.command.clone());
    }
    crate::fsutil::atomic_write(
        &spec_path,
        serde_json::to_string_pretty(&stored)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .as_bytes(),
    )?;

    let cells_dir = dir.join("cells");
    std::fs::create_dir_all(&cells_dir)
        .map_err(|e| Error::file(&cells_dir, format!("cannot create: {e}")))?;
    let wanted = spec.cells();
    let mut done = Vec::with_capacity(wanted.len());
    for key in &wanted {
        done.push(cell::read(&cells_dir, key)?.is_some());
    }
    let done_before = done.iter().filter(|d| **d).count();
    let mut sets: Vec<OpenSet> = Vec::new();
    let mut trained = 0;
    for (i, key) in wanted.iter().enumerate() {
        if done[i] {
            continue;
        }
        if !sets.iter().any(|s| s.spec.name == key.set) {
            let s = spec
                .sets
                .iter()
                .find(|s| s.name == key.set)
                .expect("cells come from the sets");
            sets.push(open_set(s, spec)?);
        }
        let set = sets
            .iter()
            .find(|s| s.spec.name == key.set)
            .expect("opened above");
        let result = cell::train_and_score(spec, set, key, &dir.join("runs"), quiet)?;
        cell::write(&cells_dir, &result)?;
        trained += 1;
        println!("[{}/{}] {}", i + 1, wanted.len(), result.summary_line());
        write_tables(&stored, dir)?;
    }
    let rows = write_tables(&stored, dir)?;
    Ok(Outcome {
        done_before,
        trained,
        rows,
    })
}

/// Process CPU seconds so far (user + system, all threads); None where unknown.
pub fn cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes the struct it is given and reads nothing else.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
            return None;
        }
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
        Some(t(u.ru_utime) + t(u.ru_stime))
    }
    #[cfg(not(unix))]
    {
        None
    }
}
