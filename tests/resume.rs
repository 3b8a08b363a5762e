//! A training run killed mid-way (SIGKILL) or interrupted (SIGINT, as Ctrl-C) and resumed with
//! `--resume` ends with exactly the weights of an uninterrupted run.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dcl::checkpoint::read_tensors;

fn train_args(out: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        "counter",
        "--data",
        "synthetic",
        "--synthetic-n",
        "6",
        "--synthetic-size",
        "64",
        "--width-mult",
        "0.0625",
        "--gmp-points",
        "4",
        "--epochs",
        "5",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--seed",
        "5",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn dcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (_, ta, ia) = read_tensors(a).unwrap();
    let (_, tb, ib) = read_tensors(b).unwrap();
    assert_eq!(ta.len(), tb.len());
    assert_eq!(ia, ib, "num_batches_tracked differ");
    for ((na, (_, va)), (nb, (_, vb))) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} differs after resume"
        );
    }
}

/// Waits until `path` exists (the run has saved at least once), then signals the process.
fn interrupt_when(path: &Path, child: &mut std::process::Child, signal: Option<&str>) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no snapshot appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended before it could be interrupted: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match signal {
        None => child.kill().unwrap(),
        Some(sig) => {
            let ok = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }
}

fn epochs_in(metrics: &Path) -> Vec<u64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn killed_and_interrupted_runs_resume_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let (full, killed, ctrl_c) = (
        dir.path().join("full"),
        dir.path().join("killed"),
        dir.path().join("ctrlc"),
    );

    let st = dcl().args(train_args(&full)).status().unwrap();
    assert!(st.success());

    // SIGKILL after the first epoch's snapshot: resume redoes the epoch in progress.
    let mut child = dcl()
        .args(train_args(&killed))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    interrupt_when(
        &killed.join("counter.snapshot.safetensors"),
        &mut child,
        None,
    );
    child.wait().unwrap();
    let st = dcl()
        .args(["train", "--quiet", "--resume"])
        .arg(&killed)
        .status()
        .unwrap();
    assert!(st.success());
    assert_same_weights(
        &full.join("counter.safetensors"),
        &killed.join("counter.safetensors"),
    );
    assert_same_weights(
        &full.join("counter.best.safetensors"),
        &killed.join("counter.best.safetensors"),
    );
    assert_eq!(
        epochs_in(&killed.join("metrics.jsonl")),
        vec![1, 2, 3, 4, 5]
    );

    // SIGINT (Ctrl-C) while training: a snapshot mid-epoch, exit code 130, a clear message.
    let mut child = dcl()
        .args(train_args(&ctrl_c))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    interrupt_when(&ctrl_c.join("config.json"), &mut child, Some("-INT"));
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(130) {
        assert!(err.contains("--resume"), "{err}");
    } else {
        // the signal came before the handler was installed: the process simply died
        assert!(!out.status.success(), "{err}");
    }
    let st = dcl()
        .args(["train", "--quiet", "--resume"])
        .arg(&ctrl_c)
        .status()
        .unwrap();
    assert!(st.success());
    assert_same_weights(
        &full.join("counter.safetensors"),
        &ctrl_c.join("counter.safetensors"),
    );
}

#[test]
fn resuming_a_folder_that_is_not_a_run_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dcl()
        .args(["train", "--resume"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot resume") && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
