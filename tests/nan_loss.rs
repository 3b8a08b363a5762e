//! A non-finite loss stops training with an error naming the epoch and step, and the last
//! good checkpoint (the previous epoch's) is kept intact.
use std::cell::Cell;

use dcl::autograd::Var;
use dcl::checkpoint::load_counter;
use dcl::data::Batch;
use dcl::error::Error;
use dcl::nn::{Counter, Forward, ModelKind};
use dcl::train::{fit, open_data, CounterJob, Job, RunData, Scores, TrainOptions};

/// The counter's job, except that the loss of optimiser step `poison` is NaN.
struct Poisoned {
    inner: CounterJob,
    calls: Cell<usize>,
    poison: usize,
}

impl Job for Poisoned {
    type Net = Counter;
    fn net(&self) -> &Counter {
        self.inner.net()
    }
    fn net_mut(&mut self) -> &mut Counter {
        self.inner.net_mut()
    }
    fn loss(&self, f: &Forward, batch: Batch) -> dcl::Result<Var> {
        self.calls.set(self.calls.get() + 1);
        let loss = self.inner.loss(f, batch)?;
        if self.calls.get() == self.poison {
            return dcl::ops::elementwise::scale(f.tape, &loss, f32::NAN);
        }
        Ok(loss)
    }
    fn validate(&self, data: &RunData, batch_size: usize) -> dcl::Result<Scores> {
        self.inner.validate(data, batch_size)
    }
}

#[test]
fn nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        synthetic_n: 4,
        synthetic_size: 32,
        out: dir.path().to_path_buf(),
        epochs: 5,
        batch_size: 2,
        width_mult: 1.0 / 16.0,
        gmp_points: 2,
        quiet: true,
        ..TrainOptions::default()
    };
    let data = open_data(&opts).unwrap();
    let per_epoch = data.train.1.len().div_ceil(2);
    let cfg = opts.model_config(ModelKind::Counter);
    let mut job = Poisoned {
        inner: CounterJob {
            net: Counter::new(&cfg, 0).unwrap(),
            windows: None,
        },
        calls: Cell::new(0),
        poison: per_epoch + 1, // the first step of epoch 2
    };
    let err = fit(&mut job, &opts, &data, false).unwrap_err();
    match &err {
        Error::NonFiniteLoss { epoch, step, value } => {
            assert_eq!((*epoch, *step), (2, 1));
            assert!(value.is_nan());
        }
        other => panic!("expected a non-finite loss error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("epoch 2") && msg.contains("step 1"), "{msg}");
    // epoch 1's checkpoint is still there and loads
    let (net, steps) = load_counter(&dir.path().join("counter.safetensors")).unwrap();
    assert_eq!(steps as usize, per_epoch);
    assert!(net
        .store
        .iter()
        .all(|(_, p)| p.value.to_vec().iter().all(|v| v.is_finite())));
}
