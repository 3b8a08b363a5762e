//! Training the localizer on the frozen counter's coarse maps (MSE on density maps).
use std::path::Path;

use crate::autograd::Var;
use crate::checkpoint::{file_hash, load_counter};
use crate::data::Batch;
use crate::error::Result;
use crate::eval::{counter_z, localizer_mse};
use crate::nn::{Counter, Forward, Localizer, ModelConfig, ModelKind, ParamStore};
use crate::ops::elementwise::scale_tensor;
use crate::ops::loss::mse_loss;
use crate::train::fit::{fit, Job, Scores, Summary};
use crate::train::{open_data, RunData, TrainOptions};

pub struct LocalizerJob {
    pub net: Localizer,
    pub counter: Counter,
}

impl Job for LocalizerJob {
    fn name(&self) -> &'static str {
        "localizer"
    }
    fn config(&self) -> &ModelConfig {
        &self.net.config
    }
    fn store(&self) -> &ParamStore {
        &self.net.store
    }
    fn store_mut(&mut self) -> &mut ParamStore {
        &mut self.net.store
    }
    fn loss(&self, f: &Forward, batch: Batch) -> Result<Var> {
        // The counter is frozen: its map comes from an inference pass, a constant here.
        let z = counter_z(&self.counter, batch.images.clone())?;
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
pub fn train_localizer(opts: &TrainOptions, counter_path: &Path, resume: bool) -> Result<Summary> {
    let (mut counter, _) = load_counter(counter_path)?;
    counter.store.to_device(&opts.device)?;
    let data = open_data(opts)?;
    let mut cfg = opts.model_config(ModelKind::Localizer);
    cfg.counter_hash = Some(file_hash(counter_path)?);
    cfg.input_scale = counter.config.input_scale;
    let mut job = LocalizerJob {
        net: Localizer::new(&cfg, opts.seed ^ 0x10CA)?,
        counter,
    };
    job.net.store.to_device(&opts.device)?;
    fit(&mut job, opts, &data, resume)
}
