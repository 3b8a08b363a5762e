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
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return Ok(());
        };
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
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::file(&self.path, format!("cannot open: {e}")))?;
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

/// Writes model tensors, Adam moments and progress into one file, atomically.
pub fn save_snapshot(
    path: &Path,
    store: &ParamStore,
    adam: &Adam,
    progress: &Progress,
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
    write_tensors(path, &names, &[], meta)
}

/// Restores a snapshot written by `save_snapshot` into a freshly built model and optimiser.
pub fn load_snapshot(path: &Path, store: &mut ParamStore, adam: &mut Adam) -> Result<Progress> {
    let err = |msg: String| Error::Checkpoint {
        path: path.into(),
        msg,
    };
    let (meta, mut floats, _) = read_tensors(path)?;
    let progress: Progress = meta
        .get("dcl.progress")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| err("no training progress in the snapshot: incomplete run".into()))?;
    adam.step = meta
        .get("dcl.adam_step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err("no optimiser step in the snapshot".into()))?;
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
