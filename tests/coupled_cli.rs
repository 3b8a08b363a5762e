//! The coupled baseline goes through the tool like the other networks: `dcl train --model
//! coupled`, then `dcl eval` and `dcl count` with its checkpoint as `--counter`; a localizer
//! beside it is refused naming the file.
use std::path::{Path, PathBuf};
use std::process::Command;

fn dcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
}

/// A network of the shipped `vgg-cells` model (models/vgg-cells), trained on VGG cells.
fn vgg_cells(net: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/vgg-cells")
        .join(format!("{net}.safetensors"))
}

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{o}\n{e}");
    (o, e)
}

#[test]
fn coupled_trains_evaluates_and_counts_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("run");
    run(dcl()
        .args(["train", "--model", "coupled", "--data", "synthetic"])
        .args([
            "--synthetic-n",
            "4",
            "--synthetic-size",
            "32",
            "--width-mult",
            "0.0625",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&runs));
    let ckpt = runs.join("coupled.safetensors");
    assert!(ckpt.exists() && runs.join("coupled.best.safetensors").exists());

    let (o, _) = run(dcl()
        .args(["eval", "--counter"])
        .arg(&ckpt)
        .arg("--data")
        .arg(fixture("vgg")));
    assert!(o.contains("MAE"), "{o}");

    let out = dir.path().join("counted");
    run(dcl()
        .args(["count", "--quiet", "--counter"])
        .arg(&ckpt)
        .arg("--out")
        .arg(&out)
        .arg(fixture("vgg/001cell.png")));
    let csv = std::fs::read_to_string(out.join("counts.csv")).unwrap();
    assert!(csv.lines().any(|l| l.contains("001cell.png,")), "{csv}");
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // its own density map gives located cells and density maps, as a localizer would
    for want in ["points", "density", "overlays"] {
        assert!(files.iter().any(|f| f == want), "{want} missing: {files:?}");
    }

    // a coupled model makes its own map: a localizer beside it is refused, naming the file
    let bad = dcl()
        .args(["count", "--counter"])
        .arg(&ckpt)
        .arg("--localizer")
        .arg(vgg_cells("localizer"))
        .arg(fixture("vgg/001cell.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("coupled.safetensors") && err.contains("no --localizer"),
        "{err}"
    );
}
