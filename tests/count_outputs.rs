//! `dcl count --out` never loses a row and never writes outside its folder: concurrent runs
//! are refused, successive runs merge, a failed run leaves no header-only file, planted links
//! are not followed, earlier outputs are not input, names are quoted (RFC 4180) or refused
//! (not UTF-8), and non-finite counts are errors.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcl::checkpoint::save_network;
use dcl::cli::parse_csv;
use dcl::nn::{Counter, ModelConfig};

fn dcl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
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
    image::RgbImage::from_fn(40, 24, |x, y| image::Rgb([x as u8 * 5, y as u8 * 9, 30]))
        .save(path)
        .unwrap();
}

fn count(counter: &str, out: &Path, inputs: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dcl"));
    c.args(["count", "--quiet", "--counter", counter, "--out"])
        .arg(out)
        .args(inputs);
    c.output().unwrap()
}

/// The `image` column of counts.csv.
fn rows(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("counts.csv")).unwrap();
    let (recs, complete) = parse_csv(&text).unwrap();
    assert!(complete);
    assert_eq!(
        recs[0].join(","),
        "image,count,width,height,counter_hash",
        "{text}"
    );
    recs[1..].iter().map(|r| r[0].clone()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Two runs with different inputs into one folder, one after the other: both runs' rows are
/// in counts.csv (the second used to replace the first's). Counting an image again replaces
/// its row; another image whose outputs would take an existing name is refused before work.
#[test]
fn successive_runs_merge_their_rows() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    for n in ["1", "2"] {
        png(&a.join(format!("a{n}.png")));
        png(&b.join(format!("b{n}.png")));
    }
    let out = d.path().join("out");
    for input in [&a, &b] {
        let o = count(&c, &out, &[input]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let all = sorted(rows(&out));
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.iter().any(|r| r.ends_with("a1.png")) && all.iter().any(|r| r.ends_with("b2.png")));
    // again, by another path to the same files: rows replaced, not doubled
    let again = d.path().join("a/../a");
    let o = count(&c, &out, &[&again]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows(&out).len(), 4, "{:?}", rows(&out));
    // another a1.png (same output name 'a1'): refused, nothing changed
    png(&d.path().join("other/a1.png"));
    let before = std::fs::read(out.join("counts.csv")).unwrap();
    let o = count(&c, &out, &[&d.path().join("other")]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("'a1'") && e.contains("another --out"), "{e}");
    assert_eq!(std::fs::read(out.join("counts.csv")).unwrap(), before);
    // every overlay has its row
    let overlays = std::fs::read_dir(out.join("overlays")).unwrap().count();
    assert_eq!(overlays, rows(&out).len());
}

/// A second run while one holds the folder is refused (no lost update); runs started together
/// either succeed with every row kept or are refused with the lock message.
#[test]
fn concurrent_runs_never_lose_rows() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    png(&d.path().join("x/x1.png"));
    // this process holds the lock: a run is refused, clearly, and writes nothing
    let held = dcl::fsutil::DirLock::acquire(&out).unwrap();
    let o = count(&c, &out, &[&d.path().join("x")]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("another dcl run") && e.contains(&std::process::id().to_string()),
        "{e}"
    );
    assert!(!out.join("counts.csv").exists());
    drop(held);

    let inputs: Vec<PathBuf> = (0..3).map(|k| d.path().join(format!("in{k}"))).collect();
    for (k, dir) in inputs.iter().enumerate() {
        for n in 0..3 {
            png(&dir.join(format!("i{k}_{n}.png")));
        }
    }
    let children: Vec<_> = inputs
        .iter()
        .map(|dir| {
            Command::new(env!("CARGO_BIN_EXE_dcl"))
                .args(["count", "--quiet", "--counter", &c, "--out"])
                .arg(&out)
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut expected = Vec::new();
    for (k, ch) in children.into_iter().enumerate() {
        let o = ch.wait_with_output().unwrap();
        if o.status.success() {
            expected.extend((0..3).map(|n| format!("i{k}_{n}.png")));
        } else {
            assert!(stderr(&o).contains("another dcl run"), "{}", stderr(&o));
        }
    }
    assert!(!expected.is_empty());
    let got = rows(&out);
    for want in &expected {
        assert!(
            got.iter().any(|r| r.ends_with(want.as_str())),
            "{want} lost: {got:?}"
        );
    }
}

/// A run whose every image fails writes no header-only counts.csv, and leaves an existing one
/// as it was.
#[test]
fn a_failed_run_writes_no_empty_counts() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let bad = d.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let out = d.path().join("out");
    let o = count(&c, &out, &[&bad]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.png"), "{}", stderr(&o));
    assert!(!out.join("counts.csv").exists());
    png(&d.path().join("good/g.png"));
    assert!(count(&c, &out, &[&d.path().join("good")]).status.success());
    let before = std::fs::read(out.join("counts.csv")).unwrap();
    assert_eq!(count(&c, &out, &[&bad]).status.code(), Some(1));
    assert_eq!(std::fs::read(out.join("counts.csv")).unwrap(), before);
}

/// The attack of the reliability issue: links planted in a shared output folder at the old
/// temporary names of every likely PID, at counts.csv, at the journal and at a sub-folder.
/// Nothing outside the folder is ever written; a run either succeeds with regular files or is
/// refused naming the planted file.
#[cfg(unix)]
#[test]
fn planted_links_in_the_output_folder_write_nothing_outside() {
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    png(&d.path().join("in/a.png"));
    let victim = d.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let out = d.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The links are planted by the very process that then becomes dcl (`exec` keeps its
    // PID), at every name the old writer would have used.
    let _ = symlink(&victim, out.join(".dcl-write-test"));
    let plant: String = ["counts.csv", ".dcl-output", "a.png", "a.tif"]
        .iter()
        .map(|n| {
            format!(
                "ln -s '{}' '{}/.{n}.tmp'$$; ",
                victim.display(),
                out.display()
            )
        })
        .collect();
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{plant} exec '{}' count --quiet --counter '{c}' --out '{}' '{}'",
            env!("CARGO_BIN_EXE_dcl"),
            out.display(),
            d.path().join("in").display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let planted = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".tmp")
        })
        .count();
    assert_eq!(planted, 4, "the links were planted");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let m = std::fs::symlink_metadata(out.join("counts.csv")).unwrap();
    assert!(m.file_type().is_file());

    for (planted, is_dir) in [
        ("counts.csv", false),
        (".counts.journal.csv", false),
        (".dcl.lock", false),
        ("overlays", true),
    ] {
        let out = d.path().join(format!("out-{planted}"));
        std::fs::create_dir_all(&out).unwrap();
        let target = if is_dir { &outside } else { &victim };
        symlink(target, out.join(planted)).unwrap();
        let o = count(&c, &out, &[&d.path().join("in")]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{planted}: {e}");
        assert!(e.contains(planted), "{planted}: {e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}

/// An earlier run's output folder inside the input tree (marked, or written before markers
/// with its counts.csv) is not counted as input; given as the input, it is refused.
#[test]
fn earlier_outputs_are_never_input() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let input = d.path().join("in");
    png(&input.join("a.png"));
    let first = input.join("first-out");
    assert!(count(&c, &first, &[&input]).status.success());
    // an old-style output folder: counts.csv and overlays, no marker
    let old = input.join("old-out");
    png(&old.join("overlays/a.png"));
    std::fs::write(
        old.join("counts.csv"),
        "image,count,width,height,counter_hash\nin/a.png,1.000,40,24,00\n",
    )
    .unwrap();
    let second = d.path().join("second-out");
    let o = count(&c, &second, &[&input]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(rows(&second).len(), 1, "{:?}", rows(&second));
    let o = dcl(&["count", "--quiet", "--counter", &c, first.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("first-out") && e.contains("outputs of an earlier dcl run"),
        "{e}"
    );
}

/// File names with a comma, quotes, a carriage return or a line feed round-trip through
/// counts.csv (RFC 4180); a name that is not UTF-8 is refused naming it.
#[test]
fn csv_rows_quote_every_name_and_refuse_non_utf8() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let input = d.path().join("in");
    let names = [
        "plain.png",
        "com,ma.png",
        "quo\"te.png",
        "car\rret.png",
        "new\nline.png",
    ];
    for n in names {
        png(&input.join(n));
    }
    let out = d.path().join("out");
    let o = count(&c, &out, &[&input]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = sorted(
        rows(&out)
            .iter()
            .map(|r| r.rsplit('/').next().unwrap().to_string())
            .collect(),
    );
    assert_eq!(got, sorted(names.iter().map(|s| s.to_string()).collect()));
    // stdout too
    let (recs, _) = parse_csv(&String::from_utf8_lossy(&o.stdout)).unwrap();
    assert_eq!(recs.len(), names.len() + 1);
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = input.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
        png(&bad);
        let o = count(&c, &d.path().join("out2"), &[&input]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("not valid UTF-8"), "{e}");
    }
}

/// Weights that overflow give an error for each image, not a `NaN`/`inf` row; NaN weights are
/// refused at load.
#[test]
fn non_finite_counts_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        width_mult: 1.0 / 16.0,
        gmp_points: 2,
        ..ModelConfig::default()
    };
    let mut net = Counter::new(&cfg, 0).unwrap();
    // head weights and bias of 3e38: finite, but the coarse map overflows to infinity
    for name in ["counter.head.weight", "counter.head.bias"] {
        let id = net.store.find(name).unwrap();
        let n = net.store.value(id).numel();
        let dims = net.store.value(id).dims().to_vec();
        net.store
            .set(
                id,
                dcl::tensor::Tensor::from_vec(vec![3e38; n], &dims).unwrap(),
            )
            .unwrap();
    }
    let huge = d.path().join("huge.safetensors");
    save_network(&huge, &net, 0).unwrap();
    png(&d.path().join("in/a.png"));
    let out = d.path().join("out");
    let o = count(huge.to_str().unwrap(), &out, &[&d.path().join("in")]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("non-finite count") && e.contains("a.png"), "{e}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("inf"));
    assert!(!out.join("counts.csv").exists());
}
