//! `dcl count` on annotated folders counts the images, not their annotations: the four image
//! layouts (vgg, adi, mbm, dots) and points-csv, on the small fixtures and generated folders.
//! One line says how many annotation files were left out; `--all-images` counts every image
//! file; a plain folder of images is counted as before.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcl::checkpoint::save_network;
use dcl::cli::parse_csv;
use dcl::nn::{Counter, ModelConfig};

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
}

/// A tiny random counter checkpoint.
fn counter(dir: &Path) -> String {
    let p = dir.join("counter.safetensors");
    let cfg = ModelConfig {
        width_mult: 1.0 / 16.0,
        gmp_points: 2,
        ..ModelConfig::default()
    };
    save_network(&p, &Counter::new(&cfg, 0).unwrap(), 0).unwrap();
    p.display().to_string()
}

fn png(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 5, y as u8 * 9, 30]))
        .save(path)
        .unwrap();
}

/// A dots image: one red pixel.
fn dots(path: &Path) {
    let mut img = image::RgbImage::new(32, 24);
    img.put_pixel(5, 7, image::Rgb([255, 0, 0]));
    img.save(path).unwrap();
}

fn count(counter: &str, extra: &[&str], inputs: &[&Path]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(["count", "--quiet", "--counter", counter])
        .args(extra)
        .args(inputs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The file names counted (stdout's `image` column) and stderr.
fn counted(o: &Output) -> (Vec<String>, String) {
    let (recs, complete) = parse_csv(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert!(complete);
    assert_eq!(recs[0], ["image", "count"]);
    let mut names: Vec<String> = recs[1..]
        .iter()
        .map(|r| {
            Path::new(&r[0])
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    (names, String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn annotated_layouts_count_only_their_images() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    // vgg: NNNcell.png + NNNdots.png
    let (names, err) = counted(&count(&c, &[], &[&fixtures("vgg")]));
    assert_eq!(
        names,
        ["001cell.png", "005cell.png", "007cell.png", "008cell.png"]
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("skipped 4 annotation files")
            && err.contains("(vgg)")
            && err.contains("--all-images"),
        "{err}"
    );
    // --all-images: every image file, no note
    let (names, err) = counted(&count(&c, &["--all-images"], &[&fixtures("vgg")]));
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&"001dots.png".to_string()));
    assert!(err.is_empty(), "{err}");
    // adi: images/ + annotations/ with the same names
    let (names, err) = counted(&count(&c, &[], &[&fixtures("adi")]));
    assert_eq!(names.len(), 2, "{names:?}");
    let rows = String::from_utf8_lossy(&count(&c, &[], &[&fixtures("adi")]).stdout).into_owned();
    assert!(!rows.contains("annotations"), "{rows}");
    assert!(
        err.contains("skipped 2 annotation files") && err.contains("(adi)"),
        "{err}"
    );
    // mbm: *_NNN.png + *_dots_NNN.png
    let (names, err) = counted(&count(&c, &[], &[&fixtures("mbm")]));
    assert_eq!(names, ["BM_GRAZ_HE_0001_01_001.png"]);
    assert!(
        err.contains("skipped 1 annotation file ") && err.contains("(mbm)"),
        "{err}"
    );
    // dots: STEM.png + STEM_dots.png
    let dd = d.path().join("dots");
    for s in ["a", "b"] {
        png(&dd.join(format!("{s}.png")));
        dots(&dd.join(format!("{s}_dots.png")));
    }
    let (names, err) = counted(&count(&c, &[], &[&dd]));
    assert_eq!(names, ["a.png", "b.png"]);
    assert!(
        err.contains("skipped 2 annotation files") && err.contains("(dots:_dots)"),
        "{err}"
    );
    // points-csv: the CSVs are said to be left out, the images counted
    let pc = d.path().join("csv");
    png(&pc.join("a.png"));
    std::fs::write(pc.join("a.csv"), "x,y\n3,4\n").unwrap();
    let (names, err) = counted(&count(&c, &[], &[&pc]));
    assert_eq!(names, ["a.png"]);
    assert!(err.contains("(points-csv)"), "{err}");
}

/// A plain folder is counted as before (no note), and a tree holding an annotated folder and a
/// plain one leaves out the annotations of the first only; files named on the command line are
/// always counted.
#[test]
fn plain_folders_and_named_files_are_unchanged() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let plain = d.path().join("tree/plain");
    // names that look like a layout's, but unpaired: still images
    for s in ["x", "ydots", "z_dots_001"] {
        png(&plain.join(format!("{s}.png")));
    }
    let (names, err) = counted(&count(&c, &[], &[&plain]));
    assert_eq!(names, ["x.png", "ydots.png", "z_dots_001.png"]);
    assert!(err.is_empty(), "{err}");
    let vgg = d.path().join("tree/vgg");
    std::fs::create_dir_all(&vgg).unwrap();
    for n in ["001", "002"] {
        png(&vgg.join(format!("{n}cell.png")));
        dots(&vgg.join(format!("{n}dots.png")));
    }
    let (names, err) = counted(&count(&c, &[], &[&d.path().join("tree")]));
    assert_eq!(
        names,
        [
            "001cell.png",
            "002cell.png",
            "x.png",
            "ydots.png",
            "z_dots_001.png"
        ]
    );
    assert!(err.contains("skipped 2 annotation files"), "{err}");
    // an annotation named on the command line is counted
    let (names, err) = counted(&count(&c, &[], &[&vgg.join("001dots.png")]));
    assert_eq!(names, ["001dots.png"]);
    assert!(err.is_empty(), "{err}");
    // --glob narrows what is counted and what is said to be skipped
    let (names, err) = counted(&count(&c, &["--glob", "001*"], &[&vgg]));
    assert_eq!(names, ["001cell.png"]);
    assert!(err.contains("skipped 1 annotation file "), "{err}");
}
