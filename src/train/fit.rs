//! The training loop shared by both networks: SGDR-scheduled Adam steps over shuffled,
//! augmented batches, a validation score and checkpoints every epoch, exact resume.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::autograd::{Profile, Tape, Var};
use crate::checkpoint::save_network;
use crate::data::{Batch, Loader};
use crate::error::{Error, Result};
use crate::nn::{apply_bn_updates, Forward, Network};
use crate::optim::{Adam, Sgdr};
use crate::progress::progress_bar;
use crate::tensor::HostValues;
use crate::train::run::{load_snapshot, save_snapshot, EpochRecord, Progress, RunLog};
use crate::train::{RunData, TrainOptions};

/// Set by the Ctrl-C handler: the loop saves a snapshot after the current step and stops.
pub static INTERRUPT: AtomicBool = AtomicBool::new(false);

/// Validation scores of one epoch; `key` (lower is better) picks the best checkpoint.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scores {
    pub key: f64,
    pub mae: Option<f64>,
    pub rmse: Option<f64>,
    pub mse: Option<f64>,
}

/// A network being trained, as the loop sees it: the network (which names the run's files,
/// and whose parameters are stepped and saved), its loss and its validation.
pub trait Job {
    type Net: Network;
    fn net(&self) -> &Self::Net;
    fn net_mut(&mut self) -> &mut Self::Net;
    /// The scalar training loss of a batch, recorded on `f.tape`.
    fn loss(&self, f: &Forward, batch: Batch) -> Result<Var>;
    /// Scores on the validation data.
    fn validate(&self, data: &RunData, batch_size: usize) -> Result<Scores>;
}

/// Validation of a network that counts (the counter, the coupled baseline): count MAE per
/// source image, the key, with RMSE beside it.
pub(crate) fn count_scores(
    net: &impl crate::nn::ImageCounts,
    data: &RunData,
    batch_size: usize,
) -> Result<Scores> {
    let Some((ds, idx)) = &data.val else {
        return Ok(Scores::default());
    };
    let counts = crate::infer::dataset::predict_counts(net, ds, idx, batch_size)?;
    let pairs: Vec<(f64, f64)> = counts.iter().map(|c| (c.predicted, c.truth)).collect();
    let m = crate::metrics::count_metrics(&pairs);
    Ok(Scores {
        key: m.mae,
        mae: Some(m.mae),
        rmse: Some(m.rmse),
        mse: None,
    })
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub last: EpochRecord,
    pub best: Option<(f64, usize)>,
    pub checkpoint: PathBuf,
    pub best_checkpoint: PathBuf,
    /// Per-op times of every training step of this run (`--profile`; empty without it).
    pub profile: Profile,
}

pub fn fit<J: Job>(
    job: &mut J,
    opts: &TrainOptions,
    data: &RunData,
    resume: bool,
) -> Result<Summary> {
    opts.validate()?;
    let name = J::Net::KIND.name();
    let dir = &opts.out;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::file(dir, format!("cannot create the run folder: {e}")))?;
    let last_path = dir.join(format!("{name}.safetensors"));
    let best_path = dir.join(format!("{name}.best.safetensors"));
    let snap_path = dir.join(format!("{name}.snapshot.safetensors"));
    let log = RunLog::new(dir);
    let run_id = opts.run_id.as_deref();

    let mut adam = Adam::new(opts.adam(), job.net().store())?;
    let sched = Sgdr::new(opts.lr, opts.sgdr_t0, opts.sgdr_t_mult, opts.eta_min);
    let (ds, idx) = &data.train;
    let loader = Loader::new(
        ds.clone(),
        idx.clone(),
        opts.batch_size,
        true,
        opts.augment,
        opts.seed,
    )
    .with_mosaic(opts.mosaic)
    .with_stain_jitter(opts.stain_jitter)
    .with_scale_jitter(opts.scale_jitter);
    let per_epoch = loader.batches_per_epoch().max(1);
    let mut progress = Progress::default();
    if resume && snap_path.exists() {
        progress = load_snapshot(&snap_path, job.net_mut().store_mut(), &mut adam, run_id)?;
        progress
            .check(per_epoch, opts.epochs, adam.step)
            .map_err(|e| Error::file(&snap_path, format!("{e}: not resumed")))?;
    }
    log.truncate(name, progress.epochs_done)?;
    let mut last = None;
    let mut profile = Profile::default();

    for epoch in progress.epochs_done..opts.epochs {
        if opts.max_steps.is_some_and(|m| progress.steps >= m) {
            break;
        }
        let t0 = Instant::now();
        let bar = progress_bar(
            per_epoch as u64,
            &format!("{name} epoch {}", epoch + 1),
            opts.quiet,
        );
        // A run resumed mid-epoch starts after the batches it had done.
        let start = std::mem::take(&mut progress.batches_done);
        bar.set_position(start as u64);
        let mut loss_sum = std::mem::take(&mut progress.epoch_loss_sum);
        let (mut n_loss, mut lr) = (start, opts.lr);
        // The loss of the step before, still on its way to the host: a GPU step is not kept
        // waiting for its own loss, which is read (and checked) once the next one is queued.
        let mut pending: Option<PendingLoss> = None;
        for (i, batch) in (start..).zip(loader.epoch_from(epoch, start)) {
            if opts.max_steps.is_some_and(|m| progress.steps >= m) {
                break;
            }
            if INTERRUPT.load(Ordering::SeqCst) {
                bar.finish_and_clear();
                if let Some(p) = pending.take() {
                    loss_sum += p.wait(epoch)? as f64;
                }
                progress.epochs_done = epoch;
                progress.batches_done = i;
                progress.epoch_loss_sum = loss_sum;
                check_finite(job.net().store(), &adam, epoch + 1, progress.steps, dir)?;
                save_network(&last_path, job.net(), progress.steps as u64)?;
                save_snapshot(&snap_path, job.net().store(), &adam, &progress, run_id)?;
                return Err(Error::Interrupted(dir.clone()));
            }
            lr = sched.lr(epoch as f64 + i as f64 / per_epoch as f64);
            let loss = step(
                job,
                &mut adam,
                batch?,
                lr as f32,
                opts.profile,
                &mut profile,
            )?;
            if let Some(p) = pending.take() {
                loss_sum += p.wait(epoch)? as f64;
            }
            let this = PendingLoss { loss, step: i };
            // A loss already on the host (the CPU) is checked at once: no step runs on a
            // diverged network.
            if this.loss.is_ready() {
                loss_sum += this.wait(epoch)? as f64;
            } else {
                pending = Some(this);
            }
            // one training forward per step: also BatchNorm's num_batches_tracked
            progress.steps += 1;
            n_loss += 1;
            bar.inc(1);
        }
        bar.finish_and_clear();
        if let Some(p) = pending.take() {
            loss_sum += p.wait(epoch)? as f64;
        }
        // The last update of the epoch made no loss yet: its parameters are checked before
        // anything is saved, so a diverged network never replaces the last good checkpoint.
        check_finite(job.net().store(), &adam, epoch + 1, progress.steps, dir)?;
        let scores = job.validate(data, opts.batch_size)?;
        let has_val = data.val.is_some();
        if has_val && !scores.key.is_finite() {
            return Err(Error::Invalid(format!(
                "the validation score after epoch {} is {}: the network diverged; training \
                 stopped, the last good checkpoint is kept in {}",
                epoch + 1,
                scores.key,
                dir.display()
            )));
        }
        progress.epochs_done = epoch + 1;
        let improved = progress.best.is_none_or(|(b, _)| scores.key < b);
        if has_val && improved {
            progress.best = Some((scores.key, epoch + 1));
        }
        save_network(&last_path, job.net(), progress.steps as u64)?;
        if !has_val || improved {
            save_network(&best_path, job.net(), progress.steps as u64)?;
        }
        let rec = EpochRecord {
            model: name.to_string(),
            epoch: epoch + 1,
            steps: progress.steps,
            lr,
            train_loss: if n_loss > 0 {
                loss_sum / n_loss as f64
            } else {
                f64::NAN
            },
            val_mae: scores.mae,
            val_rmse: scores.rmse,
            val_mse: scores.mse,
            seconds: t0.elapsed().as_secs_f64(),
        };
        log.append(&rec)?;
        // The snapshot goes last: a crash before it resumes from the previous epoch, and the
        // files and the metrics record written above are simply rewritten.
        save_snapshot(&snap_path, job.net().store(), &adam, &progress, run_id)?;
        if !opts.quiet {
            eprintln!("{rec}");
        }
        last = Some(rec);
    }
    let last = match last {
        Some(r) => r,
        None => {
            // Nothing left to do (a finished run resumed): report its last record.
            RunLog::read(dir)?
                .into_iter()
                .rev()
                .find(|r| r.model == name)
                .ok_or_else(|| Error::Invalid(format!("{}: no epoch was trained", dir.display())))?
        }
    };
    Ok(Summary {
        last,
        best: progress.best,
        checkpoint: last_path,
        best_checkpoint: best_path,
        profile,
    })
}

/// Every parameter, BatchNorm statistic and optimiser moment must be finite before it is
/// saved; otherwise training stops naming the tensor, epoch and step, and the files of the
/// last good epoch stay as they are.
fn check_finite(
    store: &crate::nn::ParamStore,
    adam: &Adam,
    epoch: usize,
    steps: usize,
    dir: &std::path::Path,
) -> Result<()> {
    let stop = |what: String| {
        Err(Error::Invalid(format!(
            "non-finite values (NaN or infinite) in {what} at epoch {epoch}, after optimiser \
             step {steps}: training stopped, the last good checkpoint is kept in {}",
            dir.display()
        )))
    };
    for (id, p) in store.iter() {
        if p.value.to_host()?.iter().any(|v| !v.is_finite()) {
            return stop(format!("parameter {}", p.name));
        }
        if let Some((m, v)) = &adam.moments[id.0] {
            for (t, which) in [(m, "first"), (v, "second")] {
                if t.to_host()?.iter().any(|v| !v.is_finite()) {
                    return stop(format!("the optimiser's {which} moment of {}", p.name));
                }
            }
        }
    }
    Ok(())
}

/// A step's loss on its way to the host, with the step it belongs to (batch index in the
/// epoch), so a non-finite value names the step that made it.
struct PendingLoss {
    loss: HostValues,
    step: usize,
}

impl PendingLoss {
    /// The loss, or the error of a non-finite one. Nothing is saved between a step and this
    /// check, so a diverged step never reaches a checkpoint.
    fn wait(self, epoch: usize) -> Result<f32> {
        let value = self.loss.wait()?[0];
        if !value.is_finite() {
            return Err(Error::NonFiniteLoss {
                value,
                epoch: epoch + 1,
                step: self.step + 1,
            });
        }
        Ok(value)
    }
}

/// One optimiser step; returns its loss, on its way to the host. With `profiling`, the
/// step's per-op times are added to `profile`.
fn step(
    job: &mut impl Job,
    adam: &mut Adam,
    mut batch: Batch,
    lr: f32,
    profiling: bool,
    profile: &mut Profile,
) -> Result<HostValues> {
    let device = job.net().store().device();
    batch.images = batch.images.into_device(&device)?;
    batch.density = batch.density.into_device(&device)?;
    let tape = Tape::new();
    tape.set_profiling(profiling);
    let (loss, grads, updates) = {
        let store = job.net().store();
        let bound = store.bind(&tape, true);
        let f = Forward::new(&tape, &bound, store, true);
        let loss = job.loss(&f, batch)?;
        let value = loss.value().to_host_async()?;
        let mut grads = tape.backward(&loss)?;
        (value, bound.take_grads(&mut grads), f.take_bn_updates())
    };
    // `bound` is gone, so parameters are updated in place rather than copied.
    let store = job.net_mut().store_mut();
    adam.update(store, &grads, lr)?;
    apply_bn_updates(store, updates)?;
    if profiling {
        profile.entries.extend(tape.take_profile().entries);
    }
    Ok(loss)
}
