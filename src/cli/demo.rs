//! `dcl demo`: the README's first command. Generates the built-in synthetic data, trains a
//! counter and a localizer (width-reduced on the CPU, full width on a GPU), evaluates them on
//! held-out images, counts that folder with overlays, and says where everything went.
use std::path::PathBuf;

use clap::Args;

use crate::cli::train::{TrainArgs, TrainModel};
use crate::train::TrainOptions;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the data, the run and the counts go.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N (default: cpu).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Synthetic training images.
    #[arg(long, default_value_t = 48)]
    pub train_images: usize,
    /// Held-out synthetic images to evaluate and count.
    #[arg(long, default_value_t = 8)]
    pub holdout_images: usize,
    /// Epochs of the counter (it trains fast: its loss needs only counts).
    #[arg(long, default_value_t = 30)]
    pub counter_epochs: usize,
    /// Epochs of the localizer.
    #[arg(long, default_value_t = 8)]
    pub localizer_epochs: usize,
    /// Channel width multiplier (default: 0.125 on the CPU, 1 on a GPU).
    #[arg(long)]
    pub width_mult: Option<f32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let device = super::parse_device(&a.device)?;
    let on_gpu = device != crate::device::Device::Cpu;
    let width_mult = a.width_mult.unwrap_or(if on_gpu { 1.0 } else { 0.125 });
    let train_dir = a.out.join("data/train");
    let holdout_dir = a.out.join("data/holdout");
    let run_dir = a.out.join("run");
    let count_dir = a.out.join("count");
    let t0 = std::time::Instant::now();
    eprintln!(
        "[1/4] generating synthetic fluorescence images in {}",
        a.out.join("data").display()
    );
    crate::data::synthetic::generate(&train_dir, a.train_images, a.seed, 256)?;
    crate::data::synthetic::generate(&holdout_dir, a.holdout_images, a.seed + 1_000_003, 256)?;

    eprintln!(
        "[2/4] training counter and localizer (width x{width_mult}) on {}",
        a.device
    );
    let mut options = TrainOptions {
        data: train_dir.display().to_string(),
        val: None, // validation: a seeded tenth of the training images; the held-out set stays unseen
        out: run_dir.clone(),
        epochs: a.counter_epochs,
        width_mult,
        sgdr_t0: a.counter_epochs as f64,
        sgdr_t_mult: 1.0,
        seed: a.seed,
        ..TrainOptions::default()
    };
    if !on_gpu {
        options.lr = 1e-3;
    }
    let mut args = TrainArgs {
        model: TrainModel::Counter,
        resume: None,
        options,
        device: a.device.clone(),
        gpu: Default::default(),
    };
    super::train::run(args.clone())?;
    args.model = TrainModel::Localizer;
    args.options.counter = Some(run_dir.join("counter.best.safetensors"));
    args.options.epochs = a.localizer_epochs;
    args.options.sgdr_t0 = a.localizer_epochs as f64;
    super::train::run(args)?;

    let counter = run_dir.join("counter.best.safetensors");
    let localizer = run_dir.join("localizer.best.safetensors");
    eprintln!("[3/4] evaluating on the held-out images");
    super::eval::run(super::eval::EvalArgs {
        nets: super::models::ModelChoice::files(&counter, Some(&localizer)),
        data: holdout_dir.clone(),
        format: None,
        split: None,
        part: "test".into(),
        split_seed: 0,
        skip_bad: false,
        radius: None,
        out: Some(a.out.join("eval")),
        batch_size: 8,
        device: a.device.clone(),
        gpu: Default::default(),
    })?;

    eprintln!("[4/4] counting the held-out folder");
    super::count::run(super::count::CountArgs {
        paths: vec![holdout_dir.clone()],
        nets: super::models::ModelChoice::files(&counter, Some(&localizer)),
        out: Some(count_dir.clone()),
        density_dir: None,
        glob: Some("*cell.png".into()),
        all_images: false,
        points: Default::default(),
        json: false,
        threshold: None,
        min_distance: None,
        tile: 256,
        overlap: 32,
        device: a.device.clone(),
        gpu: Default::default(),
        quiet: false,
        scale: Default::default(),
    })?;
    eprintln!("\ndone in {:.0}s:", t0.elapsed().as_secs_f64());
    eprintln!("  data        {}", a.out.join("data").display());
    eprintln!(
        "  checkpoints {} (counter, localizer; .best = best on validation)",
        run_dir.display()
    );
    eprintln!("  metrics     {}", run_dir.join("metrics.jsonl").display());
    eprintln!("  evaluation  {}", a.out.join("eval").display());
    eprintln!("  counts      {}", count_dir.join("counts.csv").display());
    eprintln!("  overlays    {}", count_dir.join("overlays").display());
    eprintln!(
        "\nwith no training at all: `dcl models` lists the models shipped with dcl, and \
         `dcl count --model vgg-cells IMAGES...` counts with one"
    );
    Ok(())
}
