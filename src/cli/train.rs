//! `dcl train`.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::autograd::Profile;
use crate::nn::Backbone;
use crate::train::{open_data, train_counter, train_localizer, TrainOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainModel {
    Counter,
    Localizer,
    /// The counter, then the localizer on the frozen best counter, into one run folder.
    All,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Which network to train.
    #[arg(long, value_enum, default_value = "all")]
    pub model: TrainModel,
    /// Training data: a folder in a known layout, or `synthetic` for the built-in set.
    #[arg(long, default_value = "synthetic")]
    pub data: String,
    /// Validation folder (default: a seeded tenth of the training images is held out).
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Run folder: checkpoints, metrics.jsonl, config.json.
    #[arg(long, default_value = "runs/latest")]
    pub out: PathBuf,
    /// Continue the interrupted run in this folder with its saved settings.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
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
    #[arg(long, default_value_t = 1.0)]
    pub width_mult: f32,
    /// Base width of the localizer's UNet (before --width-mult).
    #[arg(long, default_value_t = 64)]
    pub unet_width: usize,
    #[arg(long, value_enum, default_value = "vgg19_bn")]
    pub backbone: Backbone,
    /// K, the number of GMP sampling points.
    #[arg(long, default_value_t = 8)]
    pub gmp_points: usize,
    /// Ablation: replace global message passing by the identity.
    #[arg(long)]
    pub no_gmp: bool,
    /// σ in pixels of the ground-truth Gaussians.
    #[arg(long, default_value_t = 3.0)]
    pub sigma: f32,
    /// Density maps are multiplied by this for the localizer.
    #[arg(long, default_value_t = 100.0)]
    pub density_scale: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Turn off flips and rotations.
    #[arg(long)]
    pub no_augment: bool,
    /// Probability that a training sample is a random crop across a 2x2 mosaic of patches, so
    /// counts do not depend on where a tile's edge falls (tiled counting of large images);
    /// 0 trains with the paper's flips and rotations only.
    #[arg(long, default_value_t = 0.5)]
    pub mosaic: f32,
    /// Counter: also train the count of each window of a GRID x GRID grid over the patch (counts
    /// only, not in the paper), so the coarse map's mass sits where the cells are and tiled
    /// counts of large images add up; 0 or 1: the paper's image count loss alone.
    #[arg(long, default_value_t = 0, value_name = "GRID")]
    pub window_grid: usize,
    /// Weight of the window count loss.
    #[arg(long, default_value_t = 1.0)]
    pub window_weight: f32,
    /// Images generated for `--data synthetic`.
    #[arg(long, default_value_t = 64)]
    pub synthetic_n: usize,
    /// Side in pixels of the synthetic images (a multiple of 16).
    #[arg(long, default_value_t = 256)]
    pub synthetic_size: usize,
    /// Stop after this many optimiser steps per network.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Folder layout: vgg, adi, mbm, dots[:SUFFIX] or points-csv (default: detected).
    #[arg(long)]
    pub format: Option<String>,
    /// Continue past unreadable or badly annotated files, listing them.
    #[arg(long)]
    pub skip_bad: bool,
    /// Without --val: train:test:val ratios of a seeded split of --data (the paper's 10:9:1;
    /// default 9:0:1). Whole images, or groups (--group), stay on one side.
    #[arg(long)]
    pub split: Option<String>,
    /// Regex on file stems whose first group keeps related files together in splits
    /// (default: MBM by slide, else per image).
    #[arg(long)]
    pub group: Option<String>,
    /// Localizer only: the frozen counter checkpoint.
    #[arg(long)]
    pub counter: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuArgs,
    /// Print a per-op time breakdown of the training steps at the end.
    #[arg(long)]
    pub profile: bool,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

/// What config.json holds: every setting, the version and the networks trained.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunConfig {
    version: String,
    model: TrainModel,
    device: String,
    options: TrainOptions,
}

impl TrainArgs {
    /// The settings `dcl train` uses when given no flags.
    pub fn defaults() -> TrainArgs {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            a: TrainArgs,
        }
        <Wrap as clap::Parser>::parse_from(["dcl"]).a
    }
}

fn options(a: &TrainArgs) -> TrainOptions {
    TrainOptions {
        data: a.data.clone(),
        val: a.val.clone(),
        out: a.out.clone(),
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        sgdr_t0: a.sgdr_t0,
        sgdr_t_mult: a.sgdr_t_mult,
        eta_min: a.eta_min,
        width_mult: a.width_mult,
        unet_width: a.unet_width,
        backbone: a.backbone,
        gmp_points: if a.no_gmp { 0 } else { a.gmp_points },
        sigma: a.sigma,
        density_scale: a.density_scale,
        seed: a.seed,
        augment: !a.no_augment,
        mosaic: a.mosaic,
        window_grid: a.window_grid,
        window_weight: a.window_weight,
        synthetic_n: a.synthetic_n,
        synthetic_size: a.synthetic_size,
        max_steps: a.max_steps,
        counter: a.counter.clone(),
        format: a.format.clone(),
        skip_bad: a.skip_bad,
        split: a.split.clone(),
        group: a.group.clone(),
        device: Default::default(),
        profile: a.profile,
        quiet: a.quiet,
    }
}

/// Ctrl-C asks the training loop to save and stop after the current step; a second Ctrl-C
/// exits at once.
fn install_interrupt_handler() {
    use crate::train::INTERRUPT;
    use std::sync::atomic::Ordering;
    let _ = ctrlc::set_handler(|| {
        if INTERRUPT.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted twice: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving after this step (Ctrl-C again to exit at once)");
    });
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let device = super::gpu::open_device(&a.device, &a.gpu)?;
    install_interrupt_handler();
    let (mut opts, model, resume) = match &a.resume {
        Some(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "{}: cannot resume: no readable config.json (not a run folder, or incomplete)",
                    dir.display()
                )
            })?;
            let rc: RunConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: cannot resume: bad config.json", path.display()))?;
            let mut o = rc.options;
            o.out = dir.clone();
            (o, rc.model, true)
        }
        None => (options(&a), a.model, false),
    };
    opts.device = device;
    opts.profile = a.profile;
    opts.quiet = a.quiet;
    opts.validate()?;
    if model == TrainModel::Localizer && opts.counter.is_none() {
        bail!("--model localizer needs --counter CKPT (or use --model all)");
    }
    if !resume {
        let rc = RunConfig {
            version: env!("CARGO_PKG_VERSION").into(),
            model,
            device: a.device.clone(),
            options: opts.clone(),
        };
        crate::fsutil::atomic_write(
            &opts.out.join("config.json"),
            serde_json::to_string_pretty(&rc)?.as_bytes(),
        )?;
    }
    // Opened once: with --model all both networks train on the same decoded data.
    let data = open_data(&opts)?;
    let mut profile = Profile::default();
    if matches!(model, TrainModel::Counter | TrainModel::All) {
        let s = train_counter(&opts, &data, resume)?;
        profile.entries.extend(s.profile.entries);
        println!(
            "counter: {} (best: {})",
            s.checkpoint.display(),
            s.best_checkpoint.display()
        );
        if model == TrainModel::All {
            opts.counter = Some(s.best_checkpoint);
        }
    }
    if matches!(model, TrainModel::Localizer | TrainModel::All) {
        let counter = opts.counter.clone().expect("checked above");
        let s = train_localizer(&opts, &counter, &data, resume)?;
        profile.entries.extend(s.profile.entries);
        println!(
            "localizer: {} (best: {})",
            s.checkpoint.display(),
            s.best_checkpoint.display()
        );
    }
    if opts.profile {
        eprint!("{}", crate::report::profile_table(&profile));
    }
    Ok(())
}
