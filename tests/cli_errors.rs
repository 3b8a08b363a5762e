//! Bad input on the command line: one clear line naming the file and the problem, exit 1.
use std::path::Path;
use std::process::{Command, Output};

fn dcl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(args)
        .output()
        .unwrap()
}

/// `dcl train --model MODEL` for one epoch on 4 synthetic 32x32 images with tiny networks.
fn train_tiny(model: &str, out: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        model,
        "--data",
        "synthetic",
        "--synthetic-n",
        "4",
        "--synthetic-size",
        "32",
        "--width-mult",
        "0.0625",
        "--gmp-points",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--quiet",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    dcl(&args)
}

/// A random tiny counter checkpoint (`dcl init-checkpoint`) at `out`.
fn init_tiny_counter(out: &str, seed: &str) {
    let st = dcl(&[
        "init-checkpoint",
        "--model",
        "counter",
        "--width-mult",
        "0.0625",
        "--gmp-points",
        "2",
        "--seed",
        seed,
        "--out",
        out,
    ]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    err
}

#[test]
fn count_refuses_mismatched_checkpoints_and_unwritable_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let run = d("run");
    let st = train_tiny("all", &run, &[]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let counter = format!("{run}/counter.best.safetensors");
    let localizer = format!("{run}/localizer.best.safetensors");
    let other = d("other.safetensors");
    init_tiny_counter(&other, "9");
    let img = d("img.png");
    image::RgbImage::new(40, 24).save(&img).unwrap();

    // a localizer trained on another counter
    let err = one_line_error(&dcl(&[
        "count",
        "--counter",
        &other,
        "--localizer",
        &localizer,
        &img,
    ]));
    assert!(
        err.contains("another counter") && err.contains("localizer.best.safetensors"),
        "{err}"
    );
    // a localizer given as the counter
    let err = one_line_error(&dcl(&["count", "--counter", &localizer, &img]));
    assert!(
        err.contains("holds a localizer")
            && err.contains("--localizer")
            && err.contains("localizer.best.safetensors"),
        "{err}"
    );
    // an output folder that cannot be created (a file stands in the way)
    let blocked = format!("{img}/out");
    let err = one_line_error(&dcl(&[
        "count",
        "--counter",
        &counter,
        "--out",
        &blocked,
        &img,
    ]));
    assert!(err.contains(&blocked), "{err}");
    // a path that does not exist
    let err = one_line_error(&dcl(&["count", "--counter", &counter, &d("missing.png")]));
    assert!(err.contains("missing.png"), "{err}");
    // and the happy path still works on an image of an odd size
    let o = dcl(&[
        "count",
        "--quiet",
        "--counter",
        &counter,
        "--localizer",
        &localizer,
        &img,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("img.png"));
    assert!(Path::new(&localizer).exists());
}

/// `--window-grid` trains with the window count loss when the grid cuts the patches' coarse
/// maps into equal windows, is recorded in config.json, and is refused up front otherwise.
#[test]
fn window_grid_trains_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run").display().to_string();
    let train = |grid: &str| train_tiny("counter", &run, &["--window-grid", grid]);
    let st = train("2");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{run}/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["options"]["window_grid"], 2, "{config}");
    // 32x32 patches have a 4x4 coarse map: a 3x3 grid does not divide it
    let err = one_line_error(&train("3"));
    assert!(
        err.contains("--window-grid 3") && err.contains("32x32"),
        "{err}"
    );
}

/// `dcl count` refuses, before any work: a tile overlap that leaves tiles no room to advance, a
/// non-finite point threshold, and two inputs whose outputs would overwrite each other; and a
/// second run does not count the first run's outputs kept inside the input folder.
#[test]
fn count_checks_tiling_names_and_skips_its_own_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let counter = d("counter.safetensors");
    init_tiny_counter(&counter, "0");
    std::fs::create_dir_all(d("in")).unwrap();
    image::RgbImage::new(40, 24).save(d("in/a.png")).unwrap();
    image::RgbImage::new(40, 24).save(d("in/a.tif")).unwrap();
    let out = d("in/out");
    let count = |extra: &[&str]| {
        let mut args = vec!["count", "--quiet", "--counter", &counter];
        args.extend_from_slice(extra);
        dcl(&args)
    };

    let err = one_line_error(&count(&["--tile", "32", "--overlap", "32", &d("in/a.png")]));
    assert!(
        err.contains("overlap 32") && err.contains("tile side 32"),
        "{err}"
    );
    let err = one_line_error(&count(&["--threshold", "NaN", &d("in/a.png")]));
    assert!(err.contains("--threshold"), "{err}");
    let err = one_line_error(&count(&["--out", &out, &d("in")]));
    assert!(
        err.contains("a.png") && err.contains("a.tif") && err.contains("'a'"),
        "{err}"
    );
    assert!(
        !Path::new(&out).exists(),
        "nothing written before the check"
    );

    std::fs::remove_file(d("in/a.tif")).unwrap();
    for _ in 0..2 {
        let st = count(&["--out", &out, &d("in")]);
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let csv = std::fs::read_to_string(format!("{out}/counts.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        2,
        "the overlay of the first run was counted: {csv}"
    );
}
