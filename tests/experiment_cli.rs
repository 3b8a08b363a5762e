//! `dcl experiment`: a k-fold grid trains every cell once, pools each seed's held-out folds,
//! resumes without retraining, grows by seeds, and refuses a changed recipe or per-cell flags.
use std::path::Path;
use std::process::Command;

fn dcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{o}\n{e}");
    o
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn grid(set: &Path, out: &Path, seeds: &str, lr: &str) -> Command {
    grid_k(set, out, seeds, lr, "3")
}

fn grid_k(set: &Path, out: &Path, seeds: &str, lr: &str, folds: &str) -> Command {
    let mut c = dcl();
    c.arg("experiment")
        .arg(set)
        .args([
            "--configs",
            "decoupled,coupled",
            "--folds",
            folds,
            "--seeds",
            seeds,
        ])
        .args([
            "--epochs",
            "1",
            "--localizer-epochs",
            "1",
            "--max-steps",
            "1",
        ])
        .args([
            "--width-mult",
            "0.0625",
            "--unet-width",
            "8",
            "--batch-size",
            "4",
        ])
        .args(["--lr", lr, "--quiet", "--out"])
        .arg(out);
    c
}

#[test]
fn grid_trains_each_cell_once_resumes_and_refuses_another_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("cells9");
    run(dcl()
        .args(["data", "synth", "--n", "9", "--size", "64", "--out"])
        .arg(&set));
    let out = dir.path().join("exp");
    let first = run(&mut grid(&set, &out, "1", "1e-3"));
    assert!(
        first.contains("0 cells were done before, 6 trained now"),
        "{first}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    assert!(rows[0].starts_with("cells9,decoupled,3,3,1,"), "{csv}");
    assert!(rows[1].starts_with("cells9,coupled,3,3,1,"), "{csv}");
    // the three held-out folds of a seed are the nine images, each once
    let mut held: Vec<String> = Vec::new();
    for fold in 0..3 {
        let p = out.join(format!("cells/cells9-decoupled-seed0-fold{fold}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(v["train_images"], 6);
        assert!(v["held_out"]["matches"].is_array(), "a localizer gives F1");
        for im in v["held_out"]["images"].as_array().unwrap() {
            held.push(im["image"].as_str().unwrap().to_string());
        }
    }
    held.sort();
    held.dedup();
    assert_eq!(held.len(), 9, "{held:?}");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        md.contains("| cells9 | decoupled | 3/3 |") && md.contains("Claim 1"),
        "{md}"
    );

    // resumed: nothing retrained; one more seed trains only its cells
    let again = run(&mut grid(&set, &out, "1", "1e-3"));
    assert!(
        again.contains("6 cells were done before, 0 trained now"),
        "{again}"
    );
    let more = run(&mut grid(&set, &out, "2", "1e-3"));
    assert!(
        more.contains("6 cells were done before, 6 trained now"),
        "{more}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.contains("cells9,decoupled,6,6,2,"), "{csv}");
    // the table names the command that started the grid and the one that grew it
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let block = md.split("```").nth(1).unwrap();
    let commands: Vec<&str> = block.trim().lines().collect();
    assert_eq!(commands.len(), 2, "{md}");
    assert!(commands[0].contains("--seeds 1"), "{md}");
    assert!(commands[1].contains("--seeds 2"), "{md}");

    // another recipe in the same folder is refused, naming experiment.json
    let e = fails(&mut grid(&set, &out, "1", "2e-3"));
    assert!(
        e.contains("experiment.json") && e.contains("another recipe"),
        "{e}"
    );
    // per-cell flags do not apply
    let e = fails(grid(&set, &dir.path().join("x"), "1", "1e-3").args(["--val", "v"]));
    assert!(e.contains("--val"), "{e}");
    // more folds than images
    let e = fails(&mut grid_k(&set, &dir.path().join("y"), "1", "1e-3", "12"));
    assert!(e.contains("12-fold"), "{e}");
}
