//! `dcl experiment`: the cross-validated grid of `crate::experiment`.
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::experiment::{Config, ExperimentSpec, SetSpec};
use crate::train::TrainOptions;

/// `dcl experiment SET...`: data sets, the grid, and the recipe (every `dcl train` option).
#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// Data sets: folders holding `train/` (cut into folds) and `val/` (the final check), e.g.
    /// ../shared/data/vgg; or annotated folders (no final check). Named by the folder.
    #[arg(required = true)]
    pub sets: Vec<PathBuf>,
    /// Configurations to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "decoupled,no-gmp,coupled"
    )]
    pub configs: Vec<Config>,
    /// Number of seeds: --seed, --seed + 1, ...
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// k of k-fold cross-validation.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Seed of the fold assignment (the same folds for every configuration and seed).
    #[arg(long, default_value_t = 0)]
    pub fold_seed: u64,
    /// Epochs of each localizer; 0 trains none (no F1).
    #[arg(long, default_value_t = 20)]
    pub localizer_epochs: usize,
    #[command(flatten)]
    pub recipe: TrainOptions,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuArgs,
}

pub fn run(a: ExperimentArgs) -> anyhow::Result<()> {
    let r = &a.recipe;
    // the grid sets these per cell
    if r.data != "synthetic" || r.val.is_some() || r.split.is_some() || r.counter.is_some() {
        bail!(
            "dcl experiment takes its data sets as arguments and cuts them into folds itself: \
             --data, --val, --split and --counter do not apply"
        );
    }
    if r.no_gmp {
        bail!("dcl experiment: use --configs no-gmp, not --no-gmp");
    }
    let device = super::gpu::open_device(&a.device, &a.gpu)?;
    super::train::install_interrupt_handler();
    let sets = a
        .sets
        .iter()
        .map(|d| SetSpec::from_dir(d))
        .collect::<crate::Result<Vec<_>>>()?;
    let out = std::path::absolute(&r.out)?;
    let mut recipe = r.clone();
    // per-cell settings, blanked so the stored recipe says only what every cell shares
    recipe.out = PathBuf::new();
    recipe.data = String::new();
    recipe.seed = 0;
    recipe.device = device;
    let spec = ExperimentSpec {
        version: env!("CARGO_PKG_VERSION").into(),
        command: std::iter::once("dcl".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        extended_by: Vec::new(),
        sets,
        configs: a.configs.clone(),
        seeds: (r.seed..r.seed + a.seeds).collect(),
        folds: a.folds,
        fold_seed: a.fold_seed,
        localizer_epochs: a.localizer_epochs,
        recipe,
    };
    let total = spec.cells().len();
    println!(
        "experiment in {}: {} cells ({} sets x {} configurations x {} seeds x {} folds)",
        out.display(),
        total,
        spec.sets.len(),
        spec.configs.len(),
        spec.seeds.len(),
        spec.folds
    );
    let o = crate::experiment::run(&spec, &out, r.quiet)?;
    println!(
        "{} cells were done before, {} trained now; table: {}",
        o.done_before,
        o.trained,
        out.join("results.md").display()
    );
    Ok(())
}
