//! Training the counter with the count loss only (Eq. 1).
use crate::autograd::Var;
use crate::data::Batch;
use crate::error::Result;
use crate::eval::{count_metrics, predict_counts};
use crate::nn::{Counter, Forward, ModelConfig, ModelKind, ParamStore};
use crate::ops::loss::count_l1_loss;
use crate::train::fit::{fit, Job, Scores, Summary};
use crate::train::{RunData, TrainOptions};

pub struct CounterJob {
    pub net: Counter,
}

impl Job for CounterJob {
    fn name(&self) -> &'static str {
        "counter"
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
        let z = self.net.forward(f, &Var::constant(batch.images))?;
        count_l1_loss(f.tape, &z, &batch.counts)
    }
    fn validate(&self, data: &RunData, batch_size: usize) -> Result<Scores> {
        let Some((ds, idx)) = &data.val else {
            return Ok(Scores::default());
        };
        let counts = predict_counts(&self.net, ds, idx, batch_size)?;
        let pairs: Vec<(f64, f64)> = counts.iter().map(|c| (c.predicted, c.truth)).collect();
        let m = count_metrics(&pairs);
        Ok(Scores {
            key: m.mae,
            mae: Some(m.mae),
            rmse: Some(m.rmse),
            mse: None,
        })
    }
}

/// Trains a counter per `opts`; writes RUNDIR/counter.safetensors (last),
/// counter.best.safetensors, the snapshot and metrics.jsonl.
pub fn train_counter(opts: &TrainOptions, data: &RunData, resume: bool) -> Result<Summary> {
    let mut cfg = opts.model_config(ModelKind::Counter);
    cfg.input_scale = crate::train::input_scale(&data.train.0);
    let mut job = CounterJob {
        net: Counter::new(&cfg, opts.seed)?,
    };
    job.net.store.to_device(&opts.device)?;
    fit(&mut job, opts, data, resume)
}
