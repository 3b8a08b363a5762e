//! `dcl data stats | density | synth` end to end through the binary.
use std::path::{Path, PathBuf};
use std::process::Command;

fn dcl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(args)
        .output()
        .expect("run dcl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
}

#[test]
fn stats_csv_rows_and_summary() {
    let p = fixtures("adi");
    let (ok, out, err) = dcl(&["data", "stats", p.to_str().unwrap(), "--csv"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "image,count,width,height");
    assert!(
        lines[1].ends_with("0-11900_GTEX-13QJC_Adipose-Subcutaneous.jpeg,142,150,150"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with("8500-22100_GTEX-11WQC_Adipose-Subcutaneous.jpeg,71,150,150"),
        "{}",
        lines[2]
    );
    assert_eq!(lines.len(), 3);
    assert!(
        err.contains("n 2  count 106.5 ± 50.2 (sample std)  min 71  max 142  total 213"),
        "{err}"
    );
}

#[test]
fn stats_of_a_split_folder_and_bad_input() {
    let d = tempfile::tempdir().unwrap();
    for part in ["train", "val"] {
        let (ok, _, err) = dcl(&[
            "data",
            "synth",
            "--out",
            d.path().join(part).to_str().unwrap(),
            "--n",
            "2",
            "--size",
            "64",
            "--seed",
            if part == "train" { "1" } else { "2" },
        ]);
        assert!(ok, "{err}");
    }
    let (ok, out, err) = dcl(&["data", "stats", d.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("train: n 2") && out.contains("val: n 2") && out.contains("all: n 4"),
        "{out}"
    );
    // A bad file: an error naming it, or a warning with --skip-bad.
    std::fs::write(d.path().join("train/002dots.png"), b"junk").unwrap();
    let (ok, _, err) = dcl(&["data", "stats", d.path().join("train").to_str().unwrap()]);
    assert!(!ok && err.contains("002dots.png"), "{err}");
    let (ok, out, err) = dcl(&[
        "data",
        "stats",
        d.path().join("train").to_str().unwrap(),
        "--skip-bad",
    ]);
    assert!(
        ok && out.contains("n 1")
            && err.contains("skipped 1 bad file")
            && err.contains("002dots.png"),
        "{out}{err}"
    );
    let (ok, _, err) = dcl(&[
        "data",
        "stats",
        d.path().to_str().unwrap(),
        "--format",
        "nope",
    ]);
    assert!(!ok && err.contains("unknown format"), "{err}");
}

#[test]
fn density_writes_traceable_patches_and_float_tiffs() {
    let out = tempfile::tempdir().unwrap();
    let p = fixtures("mbm");
    let (ok, _, err) = dcl(&[
        "data",
        "density",
        p.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--sigma",
        "2",
    ]);
    assert!(ok, "{err}");
    let index = std::fs::read_to_string(out.path().join("index.csv")).unwrap();
    let rows: Vec<&str> = index.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{index}");
    let mut total = 0usize;
    for (k, row) in rows.iter().enumerate() {
        let f: Vec<&str> = row.split(',').collect();
        let (r, c) = (k / 2, k % 2);
        assert_eq!(f[0], format!("BM_GRAZ_HE_0001_01_001_r{r}c{c}"));
        assert!(f[1].ends_with("BM_GRAZ_HE_0001_01_001.png"));
        assert_eq!(
            (f[2], f[3]),
            (r.to_string().as_str(), c.to_string().as_str())
        );
        let count: usize = f[4].parse().unwrap();
        total += count;
        let (w, h, dens) =
            dcl::data::image_io::read_tiff_f32(&out.path().join(format!("{}_density.tif", f[0])))
                .unwrap();
        assert_eq!((w, h), (256, 256));
        let sum: f64 = dens.iter().map(|&v| v as f64).sum();
        assert!(
            (sum - count as f64).abs() < 1e-3,
            "{}: {sum} vs {count}",
            f[0]
        );
        let png = dcl::data::read_image_rgb(&out.path().join(format!("{}.png", f[0]))).unwrap();
        assert_eq!((png.width, png.height), (256, 256));
    }
    assert_eq!(total, 88);
}

#[test]
fn synth_is_deterministic_through_the_cli() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&a, &b] {
        let (ok, _, err) = dcl(&[
            "data",
            "synth",
            "--out",
            d.path().to_str().unwrap(),
            "--n",
            "2",
            "--seed",
            "5",
            "--size",
            "48",
        ]);
        assert!(ok, "{err}");
    }
    for f in ["001cell.png", "002dots.png"] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap()
        );
    }
    let (ok, _, err) = dcl(&[
        "data",
        "synth",
        "--out",
        a.path().to_str().unwrap(),
        "--size",
        "8",
    ]);
    assert!(!ok && err.contains("32..=4096"), "{err}");
}
