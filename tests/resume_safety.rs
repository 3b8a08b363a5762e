//! Resuming only ever continues the same run, exactly: snapshots are bound to their run,
//! their counters and tensors are checked, paths resolve from any working directory, a run
//! folder is locked while a run writes it, nothing is written before the data is checked,
//! temporary files of crashed runs are removed, and a diverged network never replaces the
//! last good checkpoint.
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcl::autograd::Var;
use dcl::checkpoint::{load_counter, read_tensors};
use dcl::data::Batch;
use dcl::nn::{Counter, Forward, ModelKind};
use dcl::train::{fit, open_data, CounterJob, Job, RunData, Scores, TrainOptions};
use safetensors::tensor::{Dtype, TensorView};

fn dcl_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `dcl train --model counter` of tiny networks on 4 synthetic 32x32 images.
fn train(cwd: &Path, out: &str, epochs: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        "counter",
        "--synthetic-n",
        "4",
        "--synthetic-size",
        "32",
        "--width-mult",
        "0.0625",
        "--gmp-points",
        "2",
        "--batch-size",
        "2",
        "--quiet",
        "--epochs",
        epochs,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    dcl_in(cwd, &args)
}

fn resume(cwd: &Path, run: &Path) -> Output {
    dcl_in(
        cwd,
        &["train", "--quiet", "--resume", run.to_str().unwrap()],
    )
}

/// A tiny VGG-layout folder: NNNcell.png + NNNdots.png, 32x32, a few dots each.
fn vgg_folder(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, (i * 40) as u8])
        })
        .save(dir.join(format!("{i:03}cell.png")))
        .unwrap();
        image::RgbImage::from_fn(32, 32, |x, y| {
            if (x + 3 * y + i as u32).is_multiple_of(97) {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 0])
            }
        })
        .save(dir.join(format!("{i:03}dots.png")))
        .unwrap();
    }
}

/// Rewrites a snapshot with `edit` applied to its metadata and tensors, bypassing the writer's
/// own checks (an attacker's or a bit flip's file).
fn rewrite(
    path: &Path,
    edit: impl FnOnce(&mut HashMap<String, String>, &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) {
    let (mut meta, mut floats, _) = read_tensors(path).unwrap();
    edit(&mut meta, &mut floats);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = floats
        .iter()
        .map(|(n, (d, v))| (n.clone(), d.clone(), bytemuck::cast_slice(v).to_vec()))
        .collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(n, d, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, d.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn progress_of(path: &Path) -> serde_json::Value {
    let (meta, _, _) = read_tensors(path).unwrap();
    serde_json::from_str(&meta["dcl.progress"]).unwrap()
}

/// Another run's snapshot (more epochs done) copied into a run folder is refused, and so are
/// edited counters and NaN optimiser moments; the untouched snapshot still resumes.
#[test]
fn only_the_runs_own_consistent_snapshot_resumes() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    assert!(train(d.path(), "a", "3", &[]).status.success());
    assert!(train(d.path(), "b", "2", &[]).status.success());
    let snap = b.join("counter.snapshot.safetensors");
    let good = std::fs::read(&snap).unwrap();
    // b's config.json asks for one more epoch, so a resume has work to do
    let cfg = std::fs::read_to_string(b.join("config.json")).unwrap();
    std::fs::write(
        b.join("config.json"),
        cfg.replace("\"epochs\": 2", "\"epochs\": 3"),
    )
    .unwrap();

    std::fs::copy(a.join("counter.snapshot.safetensors"), &snap).unwrap();
    let o = resume(d.path(), &b);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("belongs to another run") && e.contains("snapshot"),
        "{e}"
    );

    for (what, key, value) in [
        ("batches done", "batches_done", serde_json::json!(1_000_000)),
        ("epochs done", "epochs_done", serde_json::json!(7)),
        ("optimiser steps", "steps", serde_json::json!(9999)),
        ("loss sum", "epoch_loss_sum", serde_json::json!(-3.0)),
        ("best score", "best", serde_json::json!([-1.0, 1])),
    ] {
        std::fs::write(&snap, &good).unwrap();
        rewrite(&snap, |meta, _| {
            let mut p: serde_json::Value = serde_json::from_str(&meta["dcl.progress"]).unwrap();
            p[key] = value;
            meta.insert("dcl.progress".into(), p.to_string());
        });
        let o = resume(d.path(), &b);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {e}");
        assert!(
            e.contains("snapshot counters") && e.contains("not resumed"),
            "{what}: {e}"
        );
    }

    std::fs::write(&snap, &good).unwrap();
    rewrite(&snap, |_, floats| {
        for (name, (_, v)) in floats.iter_mut() {
            if name.starts_with("adam_v.") {
                v.iter_mut().for_each(|x| *x = f32::NAN);
            }
        }
    });
    let o = resume(d.path(), &b);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("non-finite") && e.contains("adam_v."), "{e}");
    assert!(load_counter(&b.join("counter.safetensors")).is_ok());

    std::fs::write(&snap, &good).unwrap();
    let o = resume(d.path(), &b);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(progress_of(&snap)["epochs_done"], 3);
}

/// config.json stores absolute paths, so a run started with a relative `--data` resumes from
/// another working directory.
#[test]
fn a_run_resumes_from_any_working_directory() {
    let d = tempfile::tempdir().unwrap();
    let work = d.path().join("work");
    vgg_folder(&work.join("data"), 4);
    let o = train(&work, "run", "1", &["--data", "data", "--split", "3:0:1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = work.join("run");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let data = cfg["options"]["data"].as_str().unwrap();
    assert!(Path::new(data).is_absolute(), "{data}");
    let text = std::fs::read_to_string(run.join("config.json")).unwrap();
    std::fs::write(
        run.join("config.json"),
        text.replace("\"epochs\": 1", "\"epochs\": 2"),
    )
    .unwrap();
    let elsewhere = d.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let o = resume(&elsewhere, &run);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        progress_of(&run.join("counter.snapshot.safetensors"))["epochs_done"],
        2
    );

    // a config.json from before absolute paths: relative to the run folder works too
    let text = std::fs::read_to_string(run.join("config.json")).unwrap();
    std::fs::write(
        run.join("config.json"),
        text.replace(data, "../data")
            .replace("\"epochs\": 2", "\"epochs\": 3"),
    )
    .unwrap();
    let o = resume(&elsewhere, &run);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Nothing is written into `--out` before the data is checked; a run folder being written is
/// locked; temporary files of a crashed run are removed at the next start.
#[test]
fn run_folders_are_checked_locked_and_cleaned() {
    let d = tempfile::tempdir().unwrap();
    let o = train(d.path(), "missing", "1", &["--data", "no-such-folder"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no-such-folder"), "{}", stderr(&o));
    assert!(!d.path().join("missing").exists());
    let o = train(d.path(), "grid", "1", &["--window-grid", "3"]);
    assert!(stderr(&o).contains("--window-grid 3"), "{}", stderr(&o));
    assert!(!d.path().join("grid").exists());

    let run = d.path().join("run");
    assert!(train(d.path(), "run", "1", &[]).status.success());
    let held = dcl::fsutil::DirLock::acquire(&run).unwrap();
    let o = resume(d.path(), &run);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("another dcl run"), "{e}");
    drop(held);

    // a writer killed mid-write left its temporary file (3.8 MB in the campaign)
    let dead = u32::MAX - 11;
    let stale: Vec<PathBuf> = ["counter.safetensors", "counter.snapshot.safetensors"]
        .iter()
        .map(|n| run.join(format!(".{n}.dcl-tmp.{dead}.AbCd1234")))
        .collect();
    for s in &stale {
        std::fs::write(s, vec![0u8; 1 << 16]).unwrap();
    }
    let o = resume(d.path(), &run);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stale.iter().all(|s| !s.exists()));
    let left: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The counter's job, except that the parameters become NaN in the optimiser step `poison`
/// (as a NaN made by an update would), which the loss of that step cannot show.
struct NanUpdate {
    inner: CounterJob,
    calls: Cell<usize>,
    poison: usize,
}

impl Job for NanUpdate {
    type Net = Counter;
    fn net(&self) -> &Counter {
        self.inner.net()
    }
    fn net_mut(&mut self) -> &mut Counter {
        // called once per optimiser step, to update the parameters
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() == self.poison {
            let store = &mut self.inner.net.store;
            let id = store.find("counter.head.bias").unwrap();
            store
                .set(
                    id,
                    dcl::tensor::Tensor::from_vec(vec![f32::NAN], &[1]).unwrap(),
                )
                .unwrap();
        }
        self.inner.net_mut()
    }
    fn loss(&self, f: &Forward, batch: Batch) -> dcl::Result<Var> {
        self.inner.loss(f, batch)
    }
    fn validate(&self, data: &RunData, batch_size: usize) -> dcl::Result<Scores> {
        self.inner.validate(data, batch_size)
    }
}

/// A NaN made by the last update of an epoch (no loss after it to catch it) stops training
/// before anything is saved: the previous epoch's checkpoint and snapshot stay.
#[test]
fn a_nan_from_an_epochs_last_update_is_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        synthetic_n: 4,
        synthetic_size: 32,
        out: dir.path().to_path_buf(),
        epochs: 4,
        batch_size: 2,
        width_mult: 1.0 / 16.0,
        gmp_points: 2,
        quiet: true,
        ..TrainOptions::default()
    };
    let data = open_data(&opts).unwrap();
    let per_epoch = data.train.1.len().div_ceil(2);
    let mut job = NanUpdate {
        inner: CounterJob {
            net: Counter::new(&opts.model_config(ModelKind::Counter), 0).unwrap(),
            windows: None,
        },
        calls: Cell::new(0),
        poison: 2 * per_epoch, // the last step of epoch 2
    };
    let e = fit(&mut job, &opts, &data, false).unwrap_err().to_string();
    assert!(
        e.contains("non-finite") && e.contains("counter.head.bias") && e.contains("epoch 2"),
        "{e}"
    );
    let (net, steps) = load_counter(&dir.path().join("counter.safetensors")).unwrap();
    assert_eq!(steps as usize, per_epoch);
    assert!(net
        .store
        .iter()
        .all(|(_, p)| p.value.to_vec().iter().all(|v| v.is_finite())));
    assert_eq!(
        progress_of(&dir.path().join("counter.snapshot.safetensors"))["epochs_done"],
        1
    );
}
