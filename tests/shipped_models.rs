//! The models built into dcl: `dcl models` lists, shows and exports them; `count --model` and
//! `eval --model` use them with no training, exactly as their exported files through
//! `--counter`/`--localizer`; each counts the fixtures of its own data set.
use std::path::Path;
use std::process::{Command, Output};

fn dcl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
}

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{cmd:?} failed:\n{o}\n{e}");
    o
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (o, e) = text(&out);
    assert!(!out.status.success(), "{cmd:?} should fail:\n{o}");
    assert!(!e.contains("panicked"), "{e}");
    e
}

#[test]
fn models_are_listed_and_their_cards_shown() {
    let list = ok(dcl().arg("models"));
    for name in ["vgg-cells", "adi-adipocytes", "mbm-bone-marrow"] {
        assert!(list.contains(name), "{list}");
        let card = ok(dcl().args(["models", name]));
        assert!(card.starts_with(&format!("# {name}\n")), "{card}");
        assert!(
            card.contains("dcl train"),
            "{name}: the card gives its recipe"
        );
        assert!(card.contains("MAE"), "{name}: the card gives its metrics");
    }
    let e = fails(dcl().args(["models", "cells"]));
    assert!(
        e.contains("no shipped model called 'cells'") && e.contains("vgg-cells"),
        "{e}"
    );
    let e = fails(dcl().args(["count", "--model", "vgg", "x.png"]));
    assert!(e.contains("adi-adipocytes"), "{e}");
}

/// `dcl eval --model NAME` on the fixtures of each model's own data set: its MAE is within
/// `tolerance` of the mean count, and under 3/4 of either other model's there (a model
/// under the wrong name, or a broken one, fails). Its localizer is scored too.
#[test]
fn each_model_counts_its_own_data_set_best() {
    let sets = [
        ("vgg-cells", "vgg", 0.10),
        ("adi-adipocytes", "adi", 0.30),
        ("mbm-bone-marrow", "mbm", 0.30),
    ];
    let eval = |model: &str, data: &str, counter_only: bool| -> (f64, f64, String) {
        let mut cmd = dcl();
        cmd.args(["eval", "--model", model, "--data"])
            .arg(fixture(data));
        if counter_only {
            cmd.arg("--counter-only");
        }
        let out = ok(&mut cmd);
        let (mut err, mut truth, mut n) = (0.0, 0.0, 0.0);
        for line in out.lines().skip(1).take_while(|l| !l.starts_with("images")) {
            let f: Vec<&str> = line.rsplitn(4, ',').collect();
            let (pred, t): (f64, f64) = (f[2].parse().unwrap(), f[1].parse().unwrap());
            err += (pred - t).abs();
            truth += t;
            n += 1.0;
        }
        assert!(n > 0.0, "{out}");
        (err / n, truth / n, out)
    };
    for (name, data, tolerance) in sets {
        let (mae, mean, out) = eval(name, data, false);
        assert!(
            mae <= tolerance * mean,
            "{name} on {data}: MAE {mae} of {mean}:\n{out}"
        );
        assert!(
            out.contains("F1"),
            "{name}: its localizer is scored:\n{out}"
        );
        for (other, _, _) in sets.iter().filter(|s| s.0 != name) {
            let (other_mae, _, _) = eval(other, data, true);
            assert!(
                mae < 0.75 * other_mae,
                "{data}: {name} MAE {mae}, {other} {other_mae}"
            );
        }
    }
}

/// A shipped model counts exactly as its exported checkpoints do through `--counter` and
/// `--localizer` (same counts, same points, same hash in counts.csv); `--counter-only`
/// counts the same without locating.
#[test]
fn shipped_and_exported_models_count_identically() {
    let d = tempfile::tempdir().unwrap();
    let exported = d.path().join("vgg-cells");
    let listed = ok(dcl()
        .args(["models", "vgg-cells", "--export"])
        .arg(&exported));
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // exporting again over the same files is fine; over another file it is refused
    ok(dcl()
        .args(["models", "vgg-cells", "--export"])
        .arg(&exported));
    let other = d.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("localizer.safetensors"), b"mine").unwrap();
    let e = fails(dcl().args(["models", "vgg-cells", "--export"]).arg(&other));
    assert!(e.contains("not overwritten"), "{e}");
    assert_eq!(
        std::fs::read(other.join("localizer.safetensors")).unwrap(),
        b"mine"
    );

    let img = fixture("vgg/001cell.png");
    let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
    ok(dcl()
        .args(["count", "--quiet", "--model", "vgg-cells", "--out"])
        .arg(&a)
        .arg(&img));
    ok(dcl()
        .args(["count", "--quiet", "--counter"])
        .arg(exported.join("counter.safetensors"))
        .arg("--localizer")
        .arg(exported.join("localizer.safetensors"))
        .arg("--out")
        .arg(&b)
        .arg(&img));
    ok(dcl()
        .args([
            "count",
            "--quiet",
            "--model",
            "vgg-cells",
            "--counter-only",
            "--out",
        ])
        .arg(&c)
        .arg(&img));
    let read = |dir: &Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read(&a, "counts.csv"), read(&b, "counts.csv"));
    assert_eq!(read(&a, "counts.csv"), read(&c, "counts.csv"));
    let points = read(&a, "points/001cell.csv");
    assert_eq!(points, read(&b, "points/001cell.csv"));
    assert!(points.lines().count() > 100, "{points}");
    assert!(!c.join("points/001cell.csv").exists());
    let report = read(&a, "report.html");
    assert!(
        report.contains("model vgg-cells (localizer)"),
        "the report names the model"
    );

    let e = fails(
        dcl()
            .args(["count", "--model", "vgg-cells", "--counter"])
            .arg(exported.join("counter.safetensors"))
            .arg(&img),
    );
    assert!(e.contains("cannot be used with"), "{e}");
    let e = fails(dcl().arg("count").arg(&img));
    assert!(e.contains("--model") && e.contains("--counter"), "{e}");
}
