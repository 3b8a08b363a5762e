//! Counting images of any size: four VGG images stitched into one 512x512 image count as the
//! sum of their separate counts (tiles overlap and blend without double counting or losing
//! cells at seams), and `dcl count --out` writes every output and reports a bad file.
use std::path::{Path, PathBuf};
use std::process::Command;

use dcl::checkpoint::load_counter;
use dcl::infer::{predict, InferOptions};
use dcl::train::{train_counter, TrainOptions};
use image::GenericImage;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn stitched_image_counts_as_the_sum_of_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        data: fixture("vgg").display().to_string(),
        out: dir.path().join("run"),
        epochs: 1000,
        max_steps: Some(120),
        batch_size: 2,
        lr: 2e-3,
        sgdr_t0: 1000.0,
        sgdr_t_mult: 1.0,
        width_mult: 1.0 / 16.0,
        gmp_points: 4,
        seed: 1,
        quiet: true,
        ..TrainOptions::default()
    };
    let summary = train_counter(&opts, false).unwrap();
    let (counter, _) = load_counter(&summary.checkpoint).unwrap();

    let names = ["001", "005", "007", "008"];
    let images: Vec<image::DynamicImage> = names
        .iter()
        .map(|n| image::open(fixture(&format!("vgg/{n}cell.png"))).unwrap())
        .collect();
    let opts = InferOptions::default();
    let separate: f64 = images
        .iter()
        .map(|im| predict(&counter, None, im, &opts).unwrap().count)
        .sum();
    let mut rgb = image::RgbImage::new(512, 512);
    for (k, im) in images.iter().enumerate() {
        rgb.copy_from(&im.to_rgb8(), 256 * (k as u32 % 2), 256 * (k as u32 / 2))
            .unwrap();
    }
    let big = image::DynamicImage::ImageRgb8(rgb);
    let stitched = predict(&counter, None, &big, &opts).unwrap();
    let rel = (stitched.count - separate).abs() / separate;
    eprintln!(
        "separate {separate:.2}, stitched {:.2} ({:.2}%), truth 522",
        stitched.count,
        100.0 * rel
    );
    assert!(
        rel <= 0.02,
        "stitched {} vs separate {separate}",
        stitched.count
    );
    assert_eq!((stitched.coarse.width, stitched.coarse.height), (64, 64));

    // The command line on a folder holding the stitched image and a broken file.
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    big.save(input.join("stitched.png")).unwrap();
    std::fs::write(input.join("broken.png"), b"\x89PNG not really").unwrap();
    let out = dir.path().join("out");
    let res = Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(["count", "--quiet", "--counter"])
        .arg(&summary.checkpoint)
        .arg("--out")
        .arg(&out)
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("broken.png"), "{stderr}");
    let csv = std::fs::read_to_string(out.join("counts.csv")).unwrap();
    assert!(
        csv.starts_with("image,count,width,height,counter_hash\n"),
        "{csv}"
    );
    let row = csv.lines().find(|l| l.contains("stitched.png")).unwrap();
    let count: f64 = row.split(',').nth(1).unwrap().parse().unwrap();
    assert!((count - stitched.count).abs() < 1e-2, "{row}");
    assert!(row.contains(",512,512,"), "{row}");
    assert!(out.join("overlays/stitched.png").exists());
    let (w, h, d) = dcl::data::image_io::read_tiff_f32(&out.join("density/stitched.tif")).unwrap();
    assert_eq!((w, h), (64, 64));
    let sum: f64 = d.iter().map(|&v| v as f64).sum();
    assert!((sum - stitched.count).abs() < 1e-3 * stitched.count.max(1.0));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.starts_with("image,count\n") && stdout.contains("stitched.png"),
        "{stdout}"
    );
}
