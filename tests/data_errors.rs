//! Bad input: every problem is an error naming the file, or with skip_bad a warning entry;
//! nothing is silently dropped.
use std::path::Path;

use dcl::data::{DataOptions, Dataset};
use dcl::Error;
use image::{ImageBuffer, Luma, Rgb};

fn vgg_pair(dir: &Path, stem: &str, dots: &[(u32, u32)]) {
    ImageBuffer::from_fn(32, 32, |x, y| Rgb([0u8, 0, (x + y) as u8]))
        .save(dir.join(format!("{stem}cell.png")))
        .unwrap();
    ImageBuffer::from_fn(32, 32, |x, y| {
        Rgb(if dots.contains(&(x, y)) {
            [255u8, 0, 0]
        } else {
            [0, 0, 0]
        })
    })
    .save(dir.join(format!("{stem}dots.png")))
    .unwrap();
}

/// Opens `dir` and returns the error's file and message.
fn open_err(dir: &Path, opts: &DataOptions) -> (String, String) {
    match Dataset::open(dir, opts) {
        Ok(_) => panic!("{} should not open", dir.display()),
        Err(Error::File { path, msg }) => (path.display().to_string(), msg),
        Err(e) => panic!("expected a file error, got {e}"),
    }
}

#[test]
fn truncated_image_names_the_file() {
    let d = tempfile::tempdir().unwrap();
    vgg_pair(d.path(), "001", &[(1, 1)]);
    vgg_pair(d.path(), "002", &[(1, 1)]);
    let p = d.path().join("002cell.png");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(file.ends_with("002cell.png"), "{file}");
    assert!(msg.contains("cannot decode image"), "{msg}");
    // With skip_bad the good pair is kept and the bad one listed.
    let ds = Dataset::open(
        d.path(),
        &DataOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].0.ends_with("002cell.png"));
}

#[test]
fn garbage_file_is_unreadable() {
    let d = tempfile::tempdir().unwrap();
    vgg_pair(d.path(), "001", &[(1, 1)]);
    std::fs::write(d.path().join("001dots.png"), b"not an image at all").unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(file.ends_with("001dots.png"), "{file}: {msg}");
}

#[test]
fn missing_and_orphan_annotations() {
    let d = tempfile::tempdir().unwrap();
    vgg_pair(d.path(), "001", &[(1, 1)]);
    vgg_pair(d.path(), "002", &[(1, 1)]);
    vgg_pair(d.path(), "003", &[(1, 1)]);
    std::fs::remove_file(d.path().join("002dots.png")).unwrap();
    std::fs::remove_file(d.path().join("003cell.png")).unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(
        file.ends_with("002cell.png")
            && msg.contains("annotation missing")
            && msg.contains("002dots"),
        "{file}: {msg}"
    );
    let ds = Dataset::open(
        d.path(),
        &DataOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 1);
    let skipped: Vec<String> = ds
        .skipped()
        .iter()
        .map(|(p, m)| format!("{}: {m}", p.display()))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|s| s.contains("003dots.png") && s.contains("without an image")),
        "{skipped:?}"
    );
}

#[test]
fn annotation_of_another_size() {
    let d = tempfile::tempdir().unwrap();
    vgg_pair(d.path(), "001", &[(1, 1)]);
    ImageBuffer::from_fn(31, 32, |x, y| {
        Rgb(if (x, y) == (1, 1) {
            [255u8, 0, 0]
        } else {
            [0, 0, 0]
        })
    })
    .save(d.path().join("001dots.png"))
    .unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(
        file.ends_with("001dots.png") && msg.contains("31x32") && msg.contains("32x32"),
        "{file}: {msg}"
    );
}

#[test]
fn annotation_without_dots() {
    let d = tempfile::tempdir().unwrap();
    vgg_pair(d.path(), "001", &[]);
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(
        file.ends_with("001dots.png") && msg.contains("no recognisable dots"),
        "{file}: {msg}"
    );
}

#[test]
fn csv_rows_that_do_not_parse_or_fall_outside() {
    let d = tempfile::tempdir().unwrap();
    ImageBuffer::from_fn(20, 10, |_, _| Luma([7u8]))
        .save(d.path().join("a.png"))
        .unwrap();
    for (text, want) in [
        ("x,y\n1,2\n3,abc\n", "line 3: 'abc' is not a number"),
        ("1,2\n4\n", "line 2: expected x,y"),
        ("1,2\n20,5\n", "outside the 20x10 image"),
        ("1,2\n5,-0.6\n", "outside"),
        ("1,2\nnan,1\n", "outside"),
    ] {
        std::fs::write(d.path().join("a.csv"), text).unwrap();
        let (file, msg) = open_err(d.path(), &DataOptions::default());
        assert!(
            file.ends_with("a.csv") && msg.contains(want),
            "{text:?}: {file}: {msg}"
        );
    }
    // Edge of the image and a header-only file (zero cells) are fine.
    std::fs::write(d.path().join("a.csv"), "x,y\n19.4,9.4\n-0.5,0\n").unwrap();
    assert_eq!(
        Dataset::open(d.path(), &DataOptions::default())
            .unwrap()
            .images()[0]
            .count,
        2
    );
    std::fs::write(d.path().join("a.csv"), "x,y\n").unwrap();
    assert_eq!(
        Dataset::open(d.path(), &DataOptions::default())
            .unwrap()
            .images()[0]
            .count,
        0
    );
}

#[test]
fn empty_folder_unknown_layout_and_not_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(msg.contains("empty folder"), "{file}: {msg}");
    ImageBuffer::from_fn(8, 8, |_, _| Luma([7u8]))
        .save(d.path().join("lonely.png"))
        .unwrap();
    let (_, msg) = open_err(d.path(), &DataOptions::default());
    assert!(
        msg.contains("unknown layout") && msg.contains("--format"),
        "{msg}"
    );
    let (file, msg) = open_err(&d.path().join("nope"), &DataOptions::default());
    assert!(
        file.ends_with("nope") && msg.contains("not a folder"),
        "{msg}"
    );
}

#[test]
fn skip_bad_with_nothing_left_is_still_an_error() {
    let d = tempfile::tempdir().unwrap();
    vgg_pair(d.path(), "001", &[]);
    let (_, msg) = open_err(
        d.path(),
        &DataOptions {
            skip_bad: true,
            ..Default::default()
        },
    );
    assert!(msg.contains("no usable images (1 skipped)"), "{msg}");
}

#[test]
fn bad_options_are_errors() {
    assert!("grid:x".parse::<dcl::data::Preprocess>().is_err());
    assert!("purple".parse::<dcl::data::DotRule>().is_err());
    assert!(dcl::data::SplitSpec::parse_ratios("10:9").is_err());
    assert!(dcl::data::SplitSpec::parse_ratios("1:-1:1").is_err());
    assert_eq!(
        dcl::data::SplitSpec::parse_ratios("10:9:1").unwrap(),
        [10.0, 9.0, 1.0]
    );
    assert!(Dataset::open_arg("synthetic:0", &DataOptions::default()).is_err());
    assert!(Dataset::open_arg("synthetic:x", &DataOptions::default()).is_err());
}
