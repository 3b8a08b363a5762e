//! Counting images of any size with overlapping tiles whose maps are blended with weights
//! summing to one: no cell is counted twice or lost at a seam.
//!
//! - With a counter whose map is local (each coarse pixel depends only on its own 8x8 block),
//!   a stitched image counts exactly as the sum of its parts: this checks the tiling itself.
//! - With a real trained counter (the shipped vgg-cells model, models/vgg-cells), four VGG images
//!   stitched into one 512x512 image count as the sum of their separate counts within 2%; the
//!   difference left is the counter's own context dependence, not the tiling's. With
//!   `DCL_VGG_VAL=DIR`, the same on groups of held-out images.
//! - With the localizer fixture, the cells located in the stitched image are the cells located
//!   in the four images separately.
//! - `dcl count --out` writes every output and reports a bad file with a non-zero exit.
use std::path::{Path, PathBuf};
use std::process::Command;

use dcl::checkpoint::{load_counter, load_localizer};
use dcl::data::image_io::read_dots_image;
use dcl::data::DotRule;
use dcl::infer::{predict, predict_with, InferOptions};
use dcl::metrics::match_points;
use dcl::nn::CountNet;
use dcl::tensor::Tensor;
use image::{DynamicImage, GenericImage};

/// A network of the shipped `vgg-cells` model (models/vgg-cells), trained on VGG cells.
fn vgg_cells(net: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/vgg-cells")
        .join(format!("{net}.safetensors"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn vgg_images() -> Vec<DynamicImage> {
    ["001", "005", "007", "008"]
        .iter()
        .map(|n| image::open(fixture(&format!("vgg/{n}cell.png"))).unwrap())
        .collect()
}

fn stitch(images: &[DynamicImage]) -> DynamicImage {
    let mut rgb = image::RgbImage::new(512, 512);
    for (k, im) in images.iter().enumerate() {
        rgb.copy_from(&im.to_rgb8(), 256 * (k as u32 % 2), 256 * (k as u32 / 2))
            .unwrap();
    }
    DynamicImage::ImageRgb8(rgb)
}

/// A "counter" whose coarse map is local: the mean of the normalised green channel over each
/// 8x8 block, shifted to be positive.
fn local_map(images: Tensor) -> dcl::Result<Vec<f32>> {
    let d = images.dims().to_vec();
    let (n, h, w) = (d[0], d[2], d[3]);
    let v = images.to_vec();
    let mut out = Vec::with_capacity(n * (h / 8) * (w / 8));
    for k in 0..n {
        let g = &v[(k * 3 + 1) * h * w..(k * 3 + 2) * h * w];
        for by in 0..h / 8 {
            for bx in 0..w / 8 {
                let mut s = 0.0;
                for y in by * 8..by * 8 + 8 {
                    for x in bx * 8..bx * 8 + 8 {
                        s += g[y * w + x];
                    }
                }
                out.push(s / 64.0 + 3.0);
            }
        }
    }
    Ok(out)
}

#[test]
fn blended_tiles_count_each_cell_once() {
    let images = vgg_images();
    let big = stitch(&images);
    for overlap in [16, 32, 64, 128] {
        let opts = InferOptions {
            overlap,
            ..InferOptions::default()
        };
        let separate: f64 = images
            .iter()
            .map(|im| predict_with(local_map, 1.0, None, im, &opts).unwrap().count)
            .sum();
        let stitched = predict_with(local_map, 1.0, None, &big, &opts)
            .unwrap()
            .count;
        assert!(
            (stitched - separate).abs() <= 1e-5 * separate,
            "overlap {overlap}: stitched {stitched} vs separate {separate}"
        );
    }
    // An odd size: the blended count equals the local map summed once over the padded image.
    let odd = big.crop_imm(13, 29, 437, 301);
    let got = predict_with(local_map, 1.0, None, &odd, &InferOptions::default()).unwrap();
    let whole = predict_with(
        local_map,
        1.0,
        None,
        &odd,
        &InferOptions {
            tile: 448, // one tile covering the whole padded image
            ..InferOptions::default()
        },
    )
    .unwrap();
    assert_eq!((got.coarse.width, got.coarse.height), (56, 38));
    assert!(
        (got.count - whole.count).abs() <= 1e-5 * whole.count,
        "{} vs {}",
        got.count,
        whole.count
    );
}

#[test]
fn stitched_vgg_images_count_as_the_sum_of_their_parts() {
    let counter = CountNet::Counter(load_counter(&vgg_cells("counter")).unwrap().0);
    let images = vgg_images();
    let opts = InferOptions::default();
    let separate: f64 = images
        .iter()
        .map(|im| predict(&counter, None, im, &opts).unwrap().count)
        .sum();
    let big = stitch(&images);
    let stitched = predict(&counter, None, &big, &opts).unwrap();
    let rel = (stitched.count - separate).abs() / separate;
    eprintln!(
        "separate {separate:.2}, stitched {:.2} ({:.2}%), annotated 522",
        stitched.count,
        100.0 * rel
    );
    // Measured -0.14% with this width-1/8 CPU counter, trained with the window count loss
    // (--window-grid 4) on mosaic crops; 2.9% before, trained on image counts alone (see
    // BENCHMARKS.md, "Tiled counting").
    assert!(
        rel <= 0.02,
        "stitched {} vs separate {separate}",
        stitched.count
    );
    assert_eq!((stitched.coarse.width, stitched.coarse.height), (64, 64));

    // The command line on a folder holding the stitched image and a broken file.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    big.save(input.join("stitched.png")).unwrap();
    std::fs::write(input.join("broken.png"), b"\x89PNG not really").unwrap();
    let out = dir.path().join("out");
    let res = Command::new(env!("CARGO_BIN_EXE_dcl"))
        .args(["count", "--quiet", "--counter"])
        .arg(vgg_cells("counter"))
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
    // at the image's size, summing to its count
    assert_eq!((w, h), (512, 512));
    let sum: f64 = d.iter().map(|&v| v as f64).sum();
    assert!((sum - stitched.count).abs() < 1e-3 * stitched.count.max(1.0));
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        stdout.starts_with("image,count\n") && stdout.contains("stitched.png"),
        "{stdout}"
    );
}

/// The same check on held-out images: with `DCL_VGG_VAL=DIR` (a VGG validation folder, e.g.
/// ../shared/data/vgg/val, not shipped with the repository), groups of four of its images are
/// stitched and counted, and the mean relative difference between stitched and separate counts
/// is held to 2%. Prints one line per group with the annotated count for reference.
#[test]
fn stitched_validation_images_count_as_the_sum_of_their_parts() {
    let Ok(dir) = std::env::var("DCL_VGG_VAL") else {
        eprintln!("DCL_VGG_VAL not set: skipped");
        return;
    };
    let dir = PathBuf::from(dir);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().into_string().unwrap();
            n.strip_suffix("cell.png").map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 4,
        "{}: fewer than 4 VGG images",
        dir.display()
    );
    let counter = CountNet::Counter(load_counter(&vgg_cells("counter")).unwrap().0);
    let opts = InferOptions::default();
    let annotated = |n: &str| vgg_dots(&dir.join(format!("{n}dots.png"))).len();
    // every image in two groups: consecutive fours, then the list rotated by two
    let k = names.len() / 4 * 4;
    let rotated: Vec<String> = names[2..].iter().chain(&names[..2]).cloned().collect();
    let mut diffs = Vec::new();
    for group in names[..k].chunks(4).chain(rotated[..k].chunks(4)) {
        let images: Vec<DynamicImage> = group
            .iter()
            .map(|n| image::open(dir.join(format!("{n}cell.png"))).unwrap())
            .collect();
        let separate: f64 = images
            .iter()
            .map(|im| predict(&counter, None, im, &opts).unwrap().count)
            .sum();
        let stitched = predict(&counter, None, &stitch(&images), &opts)
            .unwrap()
            .count;
        let truth: usize = group.iter().map(|n| annotated(n)).sum();
        let rel = (stitched - separate) / separate;
        eprintln!(
            "{}: annotated {truth}, separate {separate:.1}, stitched {stitched:.1} ({:+.2}%)",
            group.join("+"),
            100.0 * rel
        );
        diffs.push(rel.abs());
    }
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    eprintln!(
        "mean |stitched - separate| / separate: {:.2}%",
        100.0 * mean
    );
    assert!(mean <= 0.02, "mean relative difference {mean}");
}

/// The dots of a VGG annotation image, pixel centres (the data module's reader).
fn vgg_dots(path: &Path) -> Vec<(f32, f32)> {
    read_dots_image(path, DotRule::PureRed).unwrap().points
}

/// Located cells across seams: the localizer fixture (trained on the counter fixture's maps)
/// finds the same cells in the stitched image as in the four images separately, and about as
/// many of the annotated ones.
#[test]
fn stitched_vgg_images_locate_the_same_cells() {
    let counter = CountNet::Counter(load_counter(&vgg_cells("counter")).unwrap().0);
    let (localizer, _) = load_localizer(&vgg_cells("localizer")).unwrap();
    let (threshold, min_distance) = (
        localizer.config.point_threshold,
        localizer.config.min_distance,
    );
    let opts = InferOptions::default();
    let located = |im: &DynamicImage| {
        let p = predict(&counter, Some(&localizer), im, &opts).unwrap();
        p.points(threshold, min_distance)
            .unwrap()
            .into_iter()
            .map(|q| (q.x, q.y))
            .collect::<Vec<_>>()
    };
    let names = ["001", "005", "007", "008"];
    let images = vgg_images();
    let (mut separate, mut truth) = (Vec::new(), Vec::new());
    for (k, (im, n)) in images.iter().zip(names).enumerate() {
        let (dx, dy) = (256.0 * (k % 2) as f32, 256.0 * (k / 2) as f32);
        separate.extend(located(im).into_iter().map(|(x, y)| (x + dx, y + dy)));
        truth.extend(
            vgg_dots(&fixture(&format!("vgg/{n}dots.png")))
                .into_iter()
                .map(|(x, y)| (x + dx, y + dy)),
        );
    }
    let stitched = located(&stitch(&images));
    let radius = 1.25 * localizer.config.sigma;
    let same = match_points(&stitched, &separate, radius);
    let vs_truth = (
        match_points(&separate, &truth, radius),
        match_points(&stitched, &truth, radius),
    );
    eprintln!(
        "{} points separately, {} stitched: F1 {:.3} between them; against {} dots F1 {:.3} \
         separately, {:.3} stitched",
        separate.len(),
        stitched.len(),
        same.f1(),
        truth.len(),
        vs_truth.0.f1(),
        vs_truth.1.f1()
    );
    assert!(same.f1() >= 0.97, "stitched vs separate F1 {}", same.f1());
    assert!(
        vs_truth.1.f1() >= vs_truth.0.f1() - 0.02 && vs_truth.1.f1() >= 0.85,
        "F1 against the dots: stitched {} separate {}",
        vs_truth.1.f1(),
        vs_truth.0.f1()
    );
}
