//! Training the localizer on the frozen counter's coarse maps (MSE on density maps).
use std::path::Path;
use std::sync::Arc;

use crate::autograd::Var;
use crate::checkpoint::{file_hash, load_counter, load_localizer, save_network};
use crate::data::{Batch, Dataset};
use crate::error::Result;
use crate::infer::dataset::{localization_scores, localizer_mse};
use crate::nn::{Counter, Forward, Localizer, ModelKind};
use crate::ops::elementwise::scale_tensor;
use crate::ops::loss::mse_loss;
use crate::train::fit::{fit, Job, Scores, Summary};
use crate::train::{RunData, TrainOptions};

pub struct LocalizerJob {
    pub net: Localizer,
    pub counter: Counter,
}

impl Job for LocalizerJob {
    type Net = Localizer;
    fn net(&self) -> &Localizer {
        &self.net
    }
    fn net_mut(&mut self) -> &mut Localizer {
        &mut self.net
    }
    fn loss(&self, f: &Forward, batch: Batch) -> Result<Var> {
        // The counter is frozen: its map comes from an inference pass, a constant here.
        let z = self.counter.infer(batch.images.clone())?;
        let pred = self.net.forward(f, &Var::constant(batch.images), &z)?;
        let target = scale_tensor(&batch.density, self.net.config.density_scale)?;
        mse_loss(f.tape, &pred, &target)
    }
    fn validate(&self, data: &RunData, batch_size: usize) -> Result<Scores> {
        let Some((ds, idx)) = &data.val else {
            return Ok(Scores::default());
        };
        let mse = localizer_mse(&self.counter, &self.net, ds, idx, batch_size)?;
        Ok(Scores {
            key: mse,
            mse: Some(mse),
            ..Scores::default()
        })
    }
}

/// Trains a localizer on the frozen counter at `counter_path`.
pub fn train_localizer(
    opts: &TrainOptions,
    counter_path: &Path,
    data: &RunData,
    resume: bool,
) -> Result<Summary> {
    let (mut counter, _) = load_counter(counter_path)?;
    counter.store.to_device(&opts.device)?;
    let mut cfg = opts.model_config(ModelKind::Localizer);
    cfg.counter_hash = Some(file_hash(counter_path)?);
    // what the localizer is fed: maps of this very counter (checked again by `load_pair`)
    cfg.input_scale = counter.config.input_scale;
    cfg.gmp_points = counter.config.gmp_points;
    cfg.backbone = counter.config.backbone;
    let mut job = LocalizerJob {
        net: Localizer::new(&cfg, opts.seed ^ 0x10CA)?,
        counter,
    };
    job.net.store.to_device(&opts.device)?;
    let summary = fit(&mut job, opts, data, resume)?;
    let (ds, idx) = data.val.as_ref().unwrap_or(&data.train);
    for path in [&summary.best_checkpoint, &summary.checkpoint] {
        tune_point_readout(path, &job.counter, ds, idx, opts.batch_size, opts.quiet)?;
    }
    Ok(summary)
}

/// Chooses the point read-out settings (threshold, minimum distance) that give the best F1 on
/// the validation images and writes them into the checkpoint's configuration, so `dcl count`
/// and `dcl eval` use them by default.
fn tune_point_readout(
    path: &Path,
    counter: &Counter,
    ds: &Arc<Dataset>,
    idx: &[usize],
    batch_size: usize,
    quiet: bool,
) -> Result<()> {
    let (mut loc, bn_steps) = load_localizer(path)?;
    loc.store.to_device(&counter.store.device())?;
    let sigma = loc.config.sigma;
    // A lone Gaussian's peak; thresholds are fractions of it.
    let peak = 1.0 / (2.0 * std::f32::consts::PI * sigma * sigma);
    let mut candidates = Vec::new();
    for frac in [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6] {
        for md in [1.0, 0.5 * sigma, sigma, 1.5 * sigma] {
            candidates.push((frac * peak, md));
        }
    }
    let scores = localization_scores(
        counter,
        &loc,
        ds,
        idx,
        batch_size,
        &candidates,
        1.25 * sigma,
    )?;
    let (best, f1) = candidates
        .iter()
        .zip(&scores)
        .map(|(c, s)| (*c, s.f1()))
        .fold(
            ((0.0, 0.0), -1.0),
            |acc, x| if x.1 > acc.1 { x } else { acc },
        );
    loc.config.point_threshold = best.0;
    loc.config.min_distance = best.1;
    save_network(path, &loc, bn_steps)?;
    if !quiet {
        eprintln!(
            "point read-out for {}: threshold {:.4} cells/px, min distance {:.1} px (validation F1 {:.3})",
            path.display(),
            best.0,
            best.1,
            f1
        );
    }
    Ok(())
}
