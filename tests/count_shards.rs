//! Counting a collection on several machines: `dcl count --shard K/N` counts image i of the
//! sorted listing when i mod N = K, and `dcl merge` joins the shards' folders into the
//! counts.csv one unsharded run writes, refusing missing shards, overlaps and mixed runs.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcl::checkpoint::save_network;
use dcl::nn::{Counter, ModelConfig};

fn dcl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The one-line error of a failed command.
fn err(o: Output) -> String {
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    e
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

/// A folder of 10 small images of varied sizes and content, two of them in a sub-folder.
fn collection(dir: &Path) -> PathBuf {
    let root = dir.join("images");
    for i in 0..10u32 {
        let sub = if i >= 8 {
            root.join("sub")
        } else {
            root.clone()
        };
        std::fs::create_dir_all(&sub).unwrap();
        let (w, h) = (24 + 4 * i, 40 - 2 * i);
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + i * 13) as u8, (y * 11) as u8, (x * y + i) as u8])
        })
        .save(sub.join(format!("img{i:02}.png")))
        .unwrap();
    }
    root
}

fn count(c: &str, images: &Path, out: &Path, shard: Option<&str>) -> Output {
    let mut args = vec!["count", "--quiet", "--counter", c, "--out"];
    let (out, images) = (out.to_str().unwrap(), images.to_str().unwrap());
    args.push(out);
    if let Some(s) = shard {
        args.extend(["--shard", s]);
    }
    args.push(images);
    dcl(&args)
}

fn csv(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("counts.csv")).unwrap()
}

/// The merged folder's report.html shows every image of the unsharded run, and each of its
/// links (overlays and thumbnails, in the shard folders) reaches a file.
fn check_merged_report(merged: &Path, whole: &Path) {
    let page = std::fs::read_to_string(merged.join("report.html")).unwrap();
    let mut links = 0;
    for attr in ["href=\"", "src=\""] {
        for part in page.split(attr).skip(1) {
            let url = &part[..part.find('"').unwrap()];
            if url.starts_with('#') || url.starts_with("data:") || url.contains("://") {
                continue;
            }
            let rel = url.replace("%20", " ");
            assert!(merged.join(&rel).is_file(), "{url} does not reach a file");
            links += 1;
        }
    }
    let images = csv(whole).lines().count() - 1;
    // each image: a thumbnail and its overlay; the histogram
    assert!(links >= 2 * images, "{links} links for {images} images");
    for line in csv(whole).lines().skip(1) {
        let image = line.split(',').next().unwrap();
        let shown = image.rsplit(['/', '\\']).next().unwrap();
        assert!(page.contains(shown), "{image} not in the merged report");
    }
}

#[test]
fn three_shards_merge_into_the_unsharded_counts() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let images = collection(d.path());
    let whole = d.path().join("whole");
    ok(count(&c, &images, &whole, None));
    let shards: Vec<PathBuf> = (0..3).map(|k| d.path().join(format!("s{k}"))).collect();
    let mut rows = 0;
    for (k, s) in shards.iter().enumerate() {
        ok(count(&c, &images, s, Some(&format!("{k}/3"))));
        let n = csv(s).lines().count() - 1;
        assert_eq!(n, [4, 3, 3][k], "shard {k}: {}", csv(s));
        rows += n;
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(s.join("shard.json")).unwrap()).unwrap();
        assert_eq!(
            (rec["shard"].as_u64(), rec["shards"].as_u64()),
            (Some(k as u64), Some(3))
        );
        assert_eq!(rec["listing_images"], 10);
    }
    assert_eq!(rows, 10);
    let merged = d.path().join("merged");
    let mut args = vec!["merge", "--out", merged.to_str().unwrap()];
    // any order of the folders
    args.extend(shards.iter().rev().map(|s| s.to_str().unwrap()));
    ok(dcl(&args));
    assert_eq!(csv(&merged), csv(&whole));
    check_merged_report(&merged, &whole);
    // merging again into the same folder is fine; the merged folder is never input
    ok(dcl(&args));
    assert_eq!(csv(&merged), csv(&whole));

    // a missing shard is named
    let two = d.path().join("two");
    let e = err(dcl(&[
        "merge",
        "--out",
        two.to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[2].to_str().unwrap(),
    ]));
    assert!(e.contains("1 of 3 shards missing: 1/3"), "{e}");
    assert!(!two.join("counts.csv").exists());
    // ... and --partial merges what there is
    let o = ok(dcl(&[
        "merge",
        "--partial",
        "--out",
        two.to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[2].to_str().unwrap(),
    ]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: 1 of 3 shards missing"));
    assert_eq!(csv(&two).lines().count(), 1 + 7);

    // an overlap: the same shard counted into two folders
    let again = d.path().join("again");
    ok(count(&c, &images, &again, Some("1/3")));
    let e = err(dcl(&[
        "merge",
        "--out",
        d.path().join("m2").to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
        again.to_str().unwrap(),
        shards[2].to_str().unwrap(),
    ]));
    assert!(
        e.contains("shard 1/3 is given twice") && e.contains("overlap"),
        "{e}"
    );

    // a shard of another listing (one more image) is refused
    image::RgbImage::new(30, 30)
        .save(images.join("zz.png"))
        .unwrap();
    let other = d.path().join("other");
    ok(count(&c, &images, &other, Some("2/3")));
    let e = err(dcl(&[
        "merge",
        "--out",
        d.path().join("m3").to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
        other.to_str().unwrap(),
    ]));
    assert!(
        e.contains("listing of 11 images") && e.contains("different runs"),
        "{e}"
    );
    // ... and so is counting it into a folder that holds another listing's shard
    let e = err(count(&c, &images, &shards[0], Some("0/3")));
    assert!(
        e.contains("holds shard 0/3 of a listing of 10 images"),
        "{e}"
    );
    // a plain run never writes into a shard's folder, a shard never into a plain run's
    let e = err(count(&c, &images, &shards[1], None));
    assert!(e.contains("holds shard 1/3 of a sharded run"), "{e}");
    let e = err(count(&c, &images, &whole, Some("0/2")));
    assert!(e.contains("unsharded run"), "{e}");
    // a folder that is not a shard
    let e = err(dcl(&[
        "merge",
        "--out",
        d.path().join("m4").to_str().unwrap(),
        whole.to_str().unwrap(),
    ]));
    assert!(e.contains("not the output folder of a sharded run"), "{e}");
}

/// Shards of a listing with fewer images than shards are empty and still complete; a failed
/// image is named by merge.
#[test]
fn empty_shards_and_failed_images() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    let images = d.path().join("few");
    std::fs::create_dir_all(&images).unwrap();
    image::RgbImage::new(32, 32)
        .save(images.join("a.png"))
        .unwrap();
    std::fs::write(images.join("b.png"), b"not a png").unwrap();
    let shards: Vec<PathBuf> = (0..4).map(|k| d.path().join(format!("s{k}"))).collect();
    for (k, s) in shards.iter().enumerate() {
        let o = count(&c, &images, s, Some(&format!("{k}/4")));
        // shard 1 holds the broken file
        assert_eq!(o.status.success(), k != 1, "{k}");
    }
    let merged = d.path().join("merged");
    let mut args = vec!["merge", "--out", merged.to_str().unwrap()];
    args.extend(shards.iter().map(|s| s.to_str().unwrap()));
    let e = err(dcl(&args));
    assert!(
        e.contains("shard 1/4")
            && e.contains("no count for 1 of its 1 images")
            && e.contains("b.png"),
        "{e}"
    );
    args.insert(1, "--partial");
    ok(dcl(&args));
    let text = csv(&merged);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("a.png"));
}

#[test]
fn bad_shard_specs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let c = counter(d.path());
    for bad in ["3/3", "0/0", "x/2", "2"] {
        let o = dcl(&["count", "--counter", &c, "--shard", bad, "."]);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("K/N") && e.contains(bad), "{bad}: {e}");
    }
}
