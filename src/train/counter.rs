//! Training the counter with the count loss (Eq. 1), optionally plus the count loss on a grid of
//! windows (`--window-grid`).
use crate::autograd::Var;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::nn::{Counter, Forward, ModelKind};
use crate::ops::elementwise::{add, scale};
use crate::ops::loss::{count_l1_loss, window_count_l1_loss, window_sums};
use crate::train::fit::{count_scores, fit, Job, Scores, Summary};
use crate::train::{RunData, TrainOptions};

pub struct CounterJob {
    pub net: Counter,
    /// The window grid and the window loss's weight; None: Eq. 1 alone.
    pub windows: Option<(usize, f32)>,
}

impl Job for CounterJob {
    type Net = Counter;
    fn net(&self) -> &Counter {
        &self.net
    }
    fn net_mut(&mut self) -> &mut Counter {
        &mut self.net
    }
    fn loss(&self, f: &Forward, batch: Batch) -> Result<Var> {
        let z = self.net.forward(f, &Var::constant(batch.images))?;
        let loss = count_l1_loss(f.tape, &z, &batch.counts)?;
        let Some((grid, weight)) = self.windows else {
            return Ok(loss);
        };
        // from the density map, whose sum is the count target (mosaic crops included)
        let targets = window_sums(&batch.density, grid)?;
        let win = window_count_l1_loss(f.tape, &z, grid, &targets)?;
        add(f.tape, &loss, &scale(f.tape, &win, weight)?)
    }
    fn validate(&self, data: &RunData, batch_size: usize) -> Result<Scores> {
        count_scores(&self.net, data, batch_size)
    }
}

/// Trains a counter per `opts`; writes RUNDIR/counter.safetensors (last),
/// counter.best.safetensors, the snapshot and metrics.jsonl.
pub fn train_counter(opts: &TrainOptions, data: &RunData, resume: bool) -> Result<Summary> {
    check_windows(opts, data)?;
    let mut cfg = opts.model_config(ModelKind::Counter);
    cfg.input_scale = crate::train::input_scale(&data.train.0);
    let mut job = CounterJob {
        net: Counter::new(&cfg, opts.seed)?,
        windows: (opts.window_grid > 1).then_some((opts.window_grid, opts.window_weight)),
    };
    job.net.store.to_device(&opts.device)?;
    fit(&mut job, opts, data, resume)
}

/// `--window-grid` must cut the training patches' coarse maps into equal square windows.
pub(crate) fn check_windows(opts: &TrainOptions, data: &RunData) -> Result<()> {
    if opts.window_grid <= 1 {
        return Ok(());
    }
    let (ds, idx) = &data.train;
    let Some(&i) = idx.first() else {
        return Ok(());
    };
    let s = ds.try_sample(i)?;
    let (h, w) = (s.height, s.width);
    let coarse = h / Counter::STRIDE;
    if h != w || !coarse.is_multiple_of(opts.window_grid) {
        return Err(Error::Invalid(format!(
            "--window-grid {}: training patches of {w}x{h} have a {coarse}x{coarse} coarse map, \
             which a {0}x{0} grid does not cut into equal square windows",
            opts.window_grid
        )));
    }
    Ok(())
}
