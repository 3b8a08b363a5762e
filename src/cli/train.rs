//! `dcl train`.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::autograd::Profile;
use crate::train::{open_data, train_counter, train_coupled, train_localizer, TrainOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainModel {
    Counter,
    Localizer,
    /// The counter, then the localizer on the frozen best counter, into one run folder.
    All,
    /// The coupled baseline: one UNet learning the density map from the image alone (MSE),
    /// its count the map's sum: what the paper compares DCL against (its Table 2).
    Coupled,
}

/// `dcl train`: which networks, a run to resume, the training options, and the device.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Which network to train.
    #[arg(long, value_enum, default_value = "all")]
    pub model: TrainModel,
    /// Continue the interrupted run in this folder with its saved settings.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    #[command(flatten)]
    pub options: TrainOptions,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub gpu: super::gpu::GpuArgs,
}

/// What config.json holds: every setting, the version and the networks trained.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunConfig {
    version: String,
    model: TrainModel,
    device: String,
    options: TrainOptions,
}

/// Ctrl-C asks the training loop to save and stop after the current step; a second Ctrl-C
/// exits at once.
pub(crate) fn install_interrupt_handler() {
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
            let text = crate::fsutil::read_own_file(&path)
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .with_context(|| {
                    format!(
                        "{}: cannot resume: no readable config.json (not a run folder, or \
                         incomplete)",
                        dir.display()
                    )
                })?;
            let rc: RunConfig = serde_json::from_str(&text)
                .with_context(|| format!("{}: cannot resume: bad config.json", path.display()))?;
            let mut o = rc.options;
            o.out = dir.clone();
            crate::train::resolve_paths(&mut o, dir);
            (o, rc.model, true)
        }
        None => {
            let mut o = a.options.clone();
            crate::train::absolute_paths(&mut o)?;
            o.run_id = Some(crate::train::new_run_id(&o.out));
            (o, a.model, false)
        }
    };
    opts.device = device;
    opts.profile = a.options.profile;
    opts.quiet = a.options.quiet;
    opts.validate()?;
    if model == TrainModel::Localizer && opts.counter.is_none() {
        bail!("--model localizer needs --counter CKPT (or use --model all)");
    }
    // Everything the data and the given counter decide is checked before the run folder is
    // touched. Opened once: with --model all both networks train on the same decoded data.
    let data = open_data(&opts)?;
    crate::train::check_data(&opts, &data)?;
    if model == TrainModel::Localizer {
        let counter = opts.counter.as_deref().expect("checked above");
        crate::checkpoint::load_counter(counter)?;
    }
    // The run folder: marked (never read as input), cleaned of temporary files a crash left,
    // and locked, so a second `dcl train` of this run is refused while this one runs.
    crate::fsutil::prepare_output_dir(&opts.out, "train")?;
    let _lock = crate::fsutil::DirLock::acquire(&opts.out)?;
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
    if model == TrainModel::Coupled {
        let s = train_coupled(&opts, &data, resume)?;
        profile.entries.extend(s.profile.entries);
        println!(
            "coupled: {} (best: {})",
            s.checkpoint.display(),
            s.best_checkpoint.display()
        );
    }
    if opts.profile {
        eprint!("{}", crate::report::profile_table(&profile));
    }
    Ok(())
}
