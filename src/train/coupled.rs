//! Training the coupled baseline: one UNet on the image alone, MSE on the density map; its
//! count is the map's sum, validated by count MAE as the counter is (the paper's Table 2).
use crate::autograd::Var;
use crate::data::Batch;
use crate::error::Result;
use crate::nn::{Coupled, Forward, ModelKind};
use crate::ops::elementwise::scale_tensor;
use crate::ops::loss::mse_loss;
use crate::train::fit::{count_scores, fit, Job, Scores, Summary};
use crate::train::{RunData, TrainOptions};

pub struct CoupledJob {
    pub net: Coupled,
}

impl Job for CoupledJob {
    type Net = Coupled;
    fn net(&self) -> &Coupled {
        &self.net
    }
    fn net_mut(&mut self) -> &mut Coupled {
        &mut self.net
    }
    fn loss(&self, f: &Forward, batch: Batch) -> Result<Var> {
        let pred = self.net.forward(f, &Var::constant(batch.images))?;
        let target = scale_tensor(&batch.density, self.net.config.density_scale)?;
        mse_loss(f.tape, &pred, &target)
    }
    fn validate(&self, data: &RunData, batch_size: usize) -> Result<Scores> {
        count_scores(&self.net, data, batch_size)
    }
}

/// Trains a coupled baseline per `opts`; writes RUNDIR/coupled.safetensors (last),
/// coupled.best.safetensors, the snapshot and metrics.jsonl.
pub fn train_coupled(opts: &TrainOptions, data: &RunData, resume: bool) -> Result<Summary> {
    let mut cfg = opts.model_config(ModelKind::Coupled);
    cfg.input_scale = crate::train::input_scale(&data.train.0);
    cfg.gmp_points = 0; // no GMP in this network; recorded as such
    let mut job = CoupledJob {
        net: Coupled::new(&cfg, opts.seed ^ 0xC0DE)?,
    };
    job.net.store.to_device(&opts.device)?;
    fit(&mut job, opts, data, resume)
}
