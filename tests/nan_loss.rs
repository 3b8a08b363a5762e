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

/// Trains on `device` with the loss of step `step` of epoch 2 poisoned; checks the error and
/// that epoch 1's checkpoint is intact.
fn nan_loss_case(device: &str, step: usize) {
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        synthetic_n: 6,
        synthetic_size: 32,
        out: dir.path().to_path_buf(),
        epochs: 5,
        batch_size: 2,
        width_mult: 1.0 / 16.0,
        gmp_points: 2,
        quiet: true,
        device: dcl::device::Device::parse(device).unwrap(),
        ..TrainOptions::default()
    };
    let data = open_data(&opts).unwrap();
    let per_epoch = data.train.1.len().div_ceil(2);
    assert!(step <= per_epoch, "{step} of {per_epoch}");
    let cfg = opts.model_config(ModelKind::Counter);
    let mut net = Counter::new(&cfg, 0).unwrap();
    net.store.to_device(&opts.device).unwrap();
    let mut job = Poisoned {
        inner: CounterJob { net, windows: None },
        calls: Cell::new(0),
        poison: per_epoch + step,
    };
    let err = fit(&mut job, &opts, &data, false).unwrap_err();
    match &err {
        Error::NonFiniteLoss {
            epoch,
            step: s,
            value,
        } => {
            assert_eq!((*epoch, *s), (2, step), "{device}");
            assert!(value.is_nan());
        }
        other => panic!("expected a non-finite loss error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("epoch 2") && msg.contains(&format!("step {step}")),
        "{msg}"
    );
    // epoch 1's checkpoint is still there and loads
    let (net, steps) = load_counter(&dir.path().join("counter.safetensors")).unwrap();
    assert_eq!(steps as usize, per_epoch);
    assert!(net
        .store
        .iter()
        .all(|(_, p)| p.value.to_vec().iter().all(|v| v.is_finite())));
}

#[test]
fn nan_loss_stops_with_epoch_and_step_and_keeps_the_last_checkpoint() {
    nan_loss_case("cpu", 1);
}

/// On a CUDA device a step's loss is read once the next step is queued: the error must still
/// name the step that made it, in the middle and at the end of an epoch.
#[test]
fn nan_loss_on_a_cuda_device_names_its_step_though_read_a_step_later() {
    if std::env::var("DCL_TEST_CUDA").ok().as_deref() != Some("host") {
        eprintln!("skipped (DCL_TEST_CUDA=host runs it on the host emulation)");
        return;
    }
    nan_loss_case("cuda-host", 2);
    nan_loss_case("cuda-host", 3);
}
