//! What a run leaves in its folder: metrics.jsonl (one JSON object per epoch), config.json, and
//! a training snapshot (model, optimiser moments, counters) for exact resume, all written so
//! that an interrupted run never leaves a half-written file.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{read_tensors, write_tensors, Loaded};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::optim::Adam;
use crate::tensor::Tensor;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    pub model: String,
    pub epoch: usize,
    pub steps: usize,
    pub lr: f64,
    pub train_loss: f64,
    /// Counter: validation MAE of image counts. Localizer: also reported (from its counter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_mae: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_rmse: Option<f64>,
    /// Localizer: validation MSE of density × density_scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_mse: Option<f64>,
    pub seconds: f64,
}

/// The one line printed after each epoch.
impl std::fmt::Display for EpochRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} epoch {:>3}  steps {:>6}  lr {:.2e}  loss {:.4}",
            self.model, self.epoch, self.steps, self.lr, self.train_loss
        )?;
        if let Some(m) = self.val_mae {
            write!(f, "  val MAE {m:.2}")?;
        }
        if let Some(m) = self.val_rmse {
            write!(f, "  val RMSE {m:.2}")?;
        }
        if let Some(m) = self.val_mse {
            write!(f, "  val MSE {m:.5}")?;
        }
        write!(f, "  ({:.1}s)", self.seconds)
    }
}

/// Appends epoch records to RUNDIR/metrics.jsonl.
pub struct RunLog {
    path: PathBuf,
}

impl RunLog {
    pub fn new(dir: &Path) -> RunLog {
        RunLog {
            path: dir.join("metrics.jsonl"),
        }
    }

    /// Drops records of `model` after `epochs_done` (a resumed run rewrites them), atomically.
    pub fn truncate(&self, model: &str, epochs_done: usize) -> Result<()> {
        let Some(bytes) = crate::fsutil::read_own_file(&self.path)? else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&bytes);
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<EpochRecord>(l)
                    .map(|r| r.model != model || r.epoch <= epochs_done)
                    .unwrap_or(true)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::fsutil::atomic_write(&self.path, kept.as_bytes())
    }

    pub fn append(&self, r: &EpochRecord) -> Result<()> {
        let line = serde_json::to_string(r).expect("record serialises");
        // never through a link planted at metrics.jsonl
        let mut f = crate::fsutil::open_append(&self.path)?;
        writeln!(f, "{line}").map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }

    pub fn read(dir: &Path) -> Result<Vec<EpochRecord>> {
        let path = dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::file(&path, format!("cannot read: {e}")))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| Error::file(&path, format!("line {}: {e}", i + 1)))
            })
            .collect()
    }
}

/// Counters restored on resume.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Epochs fully done.
    pub epochs_done: usize,
    /// Batches done of the epoch after those (a run interrupted mid-epoch), with their loss.
    #[serde(default)]
    pub batches_done: usize,
    #[serde(default)]
    pub epoch_loss_sum: f64,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Best validation score so far (lower is better) and its epoch.
    pub best: Option<(f64, usize)>,
}

impl Progress {
    /// Checks restored counters against the run they are resumed into: `per_epoch` batches an
    /// epoch, `epochs` in all, and the optimiser's step count. A snapshot of another run or
    /// with edited counters would otherwise skip epochs or log a loss of 0.
    pub fn check(&self, per_epoch: usize, epochs: usize, adam_step: u64) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid(format!("snapshot counters: {msg}")));
        if self.epochs_done > epochs {
            return bad(format!(
                "{} epochs done, but the run has {epochs}",
                self.epochs_done
            ));
        }
        if self.batches_done >= per_epoch.max(1)
            || (self.batches_done > 0 && self.epochs_done == epochs)
        {
            return bad(format!(
                "{} batches done of epoch {}, which has {per_epoch}",
                self.batches_done,
                self.epochs_done + 1
            ));
        }
        let most = (self.epochs_done as u64)
            .saturating_mul(per_epoch as u64)
            .saturating_add(self.batches_done as u64);
        if self.steps as u64 > most {
            return bad(format!(
                "{} optimiser steps, more than the {most} batches of {} epochs and {} batches",
                self.steps, self.epochs_done, self.batches_done
            ));
        }
        if adam_step != self.steps as u64 {
            return bad(format!(
                "{} steps, but the optimiser took {adam_step}",
                self.steps
            ));
        }
        if !(self.epoch_loss_sum.is_finite() && self.epoch_loss_sum >= 0.0)
            || (self.batches_done == 0 && self.epoch_loss_sum != 0.0)
        {
            return bad(format!(
                "loss sum {} for {} batches",
                self.epoch_loss_sum, self.batches_done
            ));
        }
        if let Some((score, epoch)) = self.best {
            if !(score.is_finite() && score >= 0.0) || epoch == 0 || epoch > self.epochs_done {
                return bad(format!(
                    "best score {score} at epoch {epoch} of {} done",
                    self.epochs_done
                ));
            }
        }
        Ok(())
    }
}

/// The metadata key of the run a snapshot belongs to (also in the run's config.json).
pub const RUN_ID_KEY: &str = "dcl.run_id";

/// Writes model tensors, Adam moments and progress into one file, atomically, with the id of
/// the run it belongs to.
pub fn save_snapshot(
    path: &Path,
    store: &ParamStore,
    adam: &Adam,
    progress: &Progress,
    run_id: Option<&str>,
) -> Result<()> {
    let mut names: Vec<(String, &Tensor)> = Vec::new();
    for (id, p) in store.iter() {
        names.push((format!("param.{}", p.name), p.value.as_ref()));
        if let Some((m, v)) = &adam.moments[id.0] {
            names.push((format!("adam_m.{}", p.name), m));
            names.push((format!("adam_v.{}", p.name), v));
        }
    }
    let mut meta = HashMap::new();
    meta.insert(
        "dcl.progress".into(),
        serde_json::to_string(progress).expect("serialises"),
    );
    meta.insert("dcl.adam_step".into(), adam.step.to_string());
    if let Some(id) = run_id {
        meta.insert(RUN_ID_KEY.into(), id.to_string());
    }
    write_tensors(path, &names, &[], meta)
}

/// Restores a snapshot written by `save_snapshot` into a freshly built model and optimiser.
/// The snapshot must belong to the run `run_id` (None: a run from before run ids, whose
/// snapshots have none either), and every tensor must be finite. The counters are returned
/// unchecked (see `Progress::check`).
pub fn load_snapshot(
    path: &Path,
    store: &mut ParamStore,
    adam: &mut Adam,
    run_id: Option<&str>,
) -> Result<Progress> {
    restore_snapshot(path, read_tensors(path)?, store, adam, run_id)
}

/// `load_snapshot` of a snapshot held in memory; `name` names it in errors.
pub fn load_snapshot_bytes(
    bytes: &[u8],
    name: &Path,
    store: &mut ParamStore,
    adam: &mut Adam,
    run_id: Option<&str>,
) -> Result<Progress> {
    let contents = crate::checkpoint::parse_tensors(bytes).map_err(|msg| Error::Checkpoint {
        path: name.into(),
        msg,
    })?;
    restore_snapshot(name, contents, store, adam, run_id)
}

fn restore_snapshot(
    path: &Path,
    (meta, mut floats, _): crate::checkpoint::Contents,
    store: &mut ParamStore,
    adam: &mut Adam,
    run_id: Option<&str>,
) -> Result<Progress> {
    let err = |msg: String| Error::Checkpoint {
        path: path.into(),
        msg,
    };
    let theirs = meta.get(RUN_ID_KEY).map(String::as_str);
    if theirs != run_id {
        return Err(err(format!(
            "belongs to another run (run id {}, this run's config.json says {}): not resumed",
            theirs.unwrap_or("none"),
            run_id.unwrap_or("none")
        )));
    }
    let progress: Progress = match meta.get("dcl.progress") {
        None => {
            return Err(err(
                "no training progress in the snapshot: incomplete run".into()
            ))
        }
        Some(s) => serde_json::from_str(s)
            .map_err(|e| err(format!("bad training progress in the snapshot: {e}")))?,
    };
    adam.step = meta
        .get("dcl.adam_step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err("no optimiser step in the snapshot".into()))?;
    if let Some((name, bad, n)) = crate::checkpoint::first_non_finite(&floats) {
        return Err(err(format!(
            "tensor {name} holds {bad} non-finite values (NaN or infinite) of {n}: not resumed"
        )));
    }
    let mut take = |name: String, like: &Tensor| -> Result<Tensor> {
        let (dims, vals): Loaded = floats
            .remove(&name)
            .ok_or_else(|| err(format!("missing tensor {name}")))?;
        if dims != like.dims() {
            return Err(err(format!(
                "tensor {name} has shape {dims:?}, expected {:?}",
                like.dims()
            )));
        }
        Tensor::from_vec(vals, &dims)?.to_device(&like.device())
    };
    let ids: Vec<_> = store.iter().map(|(id, p)| (id, p.name.clone())).collect();
    for (id, name) in ids {
        let p = take(format!("param.{name}"), store.value(id))?;
        store.set(id, p)?;
        if let Some((m, v)) = adam.moments[id.0].as_mut() {
            *m = take(format!("adam_m.{name}"), m)?;
            *v = take(format!("adam_v.{name}"), v)?;
        }
    }
    if let Some(extra) = floats.keys().next() {
        return Err(err(format!("unexpected tensor {extra}")));
    }
    Ok(progress)
}
