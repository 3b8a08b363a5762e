//! Readers and preprocessing on real fixtures and generated files: exact counts, layouts,
//! image conversions, patches, density sums.
use std::path::{Path, PathBuf};

use dcl::data::{layout, read_image_rgb, DataOptions, Dataset, Format, Preprocess, Sample};
use image::{ImageBuffer, Luma, Rgb, Rgba};

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
}

fn density_sum(s: &Sample) -> f64 {
    s.density.iter().map(|&v| v as f64).sum()
}

/// Checks the invariants every sample and image must satisfy.
fn check_invariants(ds: &Dataset) {
    for im in ds.images() {
        let patch_sum: usize = im.samples.clone().map(|i| ds.sample(i).points.len()).sum();
        assert_eq!(
            patch_sum,
            im.count,
            "{}: patch counts must sum to the image count",
            im.path.display()
        );
    }
    for i in 0..ds.len() {
        let s = ds.sample(i);
        assert_eq!(s.image.len(), 3 * s.width * s.height);
        assert_eq!(s.density.len(), s.width * s.height);
        assert!(
            (density_sum(&s) - s.count() as f64).abs() < 1e-3,
            "{}: density sums to {}, count {}",
            s.name,
            density_sum(&s),
            s.count()
        );
        assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
        for &(x, y) in &s.points {
            assert!(
                x >= 0.0 && y >= 0.0 && x < s.width as f32 && y < s.height as f32,
                "{}: dot ({x},{y}) outside",
                s.name
            );
        }
        assert_eq!(ds.count(i), s.count());
    }
}

fn counts(ds: &Dataset) -> Vec<(String, usize)> {
    ds.images()
        .iter()
        .map(|i| (i.stem.clone(), i.count))
        .collect()
}

#[test]
fn vgg_counts_red_pixels_and_is_used_as_is() {
    let ds = Dataset::open(&fixtures("vgg"), &DataOptions::default()).unwrap();
    assert_eq!(ds.format(), Some(&Format::Vgg));
    assert_eq!(
        counts(&ds),
        [
            ("001cell".to_string(), 135),
            ("005cell".to_string(), 96),
            ("007cell".to_string(), 169),
            ("008cell".to_string(), 122)
        ]
    );
    assert_eq!(ds.len(), 4);
    let s = ds.sample(0);
    assert_eq!((s.name.as_str(), s.width, s.height), ("001cell", 256, 256));
    assert!(s.source.ends_with("001cell.png"));
    // As is: the pixels are the file's.
    let raw = read_image_rgb(&fixtures("vgg/001cell.png")).unwrap();
    assert_eq!(raw.data, s.image);
    // Dots sit at pixel centres.
    assert!(s
        .points
        .iter()
        .all(|&(x, y)| x.fract() == 0.5 && y.fract() == 0.5));
    check_invariants(&ds);
}

#[test]
fn adi_counts_jpeg_red_dots_and_resizes_to_256() {
    let ds = Dataset::open(&fixtures("adi"), &DataOptions::default()).unwrap();
    assert_eq!(ds.format(), Some(&Format::Adi));
    assert_eq!(
        counts(&ds),
        [
            ("0-11900_GTEX-13QJC_Adipose-Subcutaneous".to_string(), 142),
            ("8500-22100_GTEX-11WQC_Adipose-Subcutaneous".to_string(), 71)
        ]
    );
    assert_eq!(ds.len(), 2);
    let s = ds.sample(1);
    assert_eq!((s.width, s.height), (256, 256));
    assert_eq!((ds.images()[1].width, ds.images()[1].height), (150, 150));
    // Dots are rescaled by 256/150 from pixel centres.
    let scale = 256.0 / 150.0;
    for &(x, _) in &s.points {
        let src = x / scale - 0.5;
        assert!(
            (src - src.round()).abs() < 1e-3,
            "x {x} is not a rescaled pixel centre"
        );
    }
    check_invariants(&ds);
}

#[test]
fn mbm_counts_nonzero_pixels_and_cuts_four_patches() {
    let ds = Dataset::open(&fixtures("mbm"), &DataOptions::default()).unwrap();
    assert_eq!(ds.format(), Some(&Format::Mbm));
    assert_eq!(counts(&ds), [("BM_GRAZ_HE_0001_01_001".to_string(), 88)]);
    assert_eq!(ds.len(), 4);
    let names: Vec<String> = (0..4).map(|i| ds.sample(i).name.clone()).collect();
    assert_eq!(
        names,
        [
            "BM_GRAZ_HE_0001_01_001#r0c0",
            "BM_GRAZ_HE_0001_01_001#r0c1",
            "BM_GRAZ_HE_0001_01_001#r1c0",
            "BM_GRAZ_HE_0001_01_001#r1c1"
        ]
    );
    for i in 0..4 {
        assert_eq!((ds.sample(i).width, ds.sample(i).height), (256, 256));
    }
    check_invariants(&ds);
    // Same dots by hand: a dot at pixel (r, c) of the 600x600 crop goes to quadrant
    // (r >= 300, c >= 300) at ((c - 300q + 0.5) * 256/300, ...).
    let d = dcl::data::image_io::read_dots_image(
        &fixtures("mbm/BM_GRAZ_HE_0001_01_dots_001.png"),
        dcl::data::DotRule::NonZero,
    )
    .unwrap();
    let mut expect: Vec<Vec<(f32, f32)>> = vec![Vec::new(); 4];
    for &(x, y) in &d.points {
        let (qc, qr) = ((x >= 300.0) as usize, (y >= 300.0) as usize);
        expect[qr * 2 + qc].push((
            (x - 300.0 * qc as f32) * 256.0 / 300.0,
            (y - 300.0 * qr as f32) * 256.0 / 300.0,
        ));
    }
    for (q, e) in expect.iter().enumerate() {
        let got = &ds.sample(q).points;
        assert_eq!(got.len(), e.len());
        for (a, b) in got.iter().zip(e) {
            assert!((a.0 - b.0).abs() < 1e-3 && (a.1 - b.1).abs() < 1e-3);
        }
    }
}

#[test]
fn formats_parse_and_forced_format_is_used() {
    assert_eq!(
        "dots:_ann".parse::<Format>().unwrap(),
        Format::Dots {
            suffix: "_ann".into()
        }
    );
    assert_eq!("points-csv".parse::<Format>().unwrap(), Format::PointsCsv);
    assert!("jpeg".parse::<Format>().is_err());
    // Forcing MBM's layout on the VGG folder pairs nothing: every image is reported.
    let err = Dataset::open(
        &fixtures("vgg"),
        &DataOptions {
            format: Some(Format::Mbm),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("does not fit the mbm layout"),
        "{err}"
    );
}

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    ImageBuffer::from_fn(w, h, |x, y| Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

#[test]
fn image_conversions_grey_alpha_16bit() {
    let d = tempfile::tempdir().unwrap();
    let grey16 = d.path().join("g16.png");
    ImageBuffer::from_fn(3, 2, |x, y| Luma([(x * 20000 + y * 100) as u16]))
        .save(&grey16)
        .unwrap();
    let g = read_image_rgb(&grey16).unwrap();
    assert_eq!((g.width, g.height), (3, 2));
    for c in 0..3 {
        assert!(
            (g.data[c * 6 + 2] - 40000.0 / 65535.0).abs() < 1e-6,
            "grey replicated and 16-bit scaled"
        );
        assert!((g.data[c * 6 + 4] - 20100.0 / 65535.0).abs() < 1e-6);
    }
    let rgba = d.path().join("a.png");
    ImageBuffer::from_fn(2, 1, |x, _| Rgba([10 * x as u8, 128, 255, 7]))
        .save(&rgba)
        .unwrap();
    let a = read_image_rgb(&rgba).unwrap();
    assert_eq!(
        a.data,
        [0.0, 10.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0, 1.0, 1.0],
        "alpha dropped, not blended"
    );
    let tif = d.path().join("t.tif");
    ImageBuffer::from_fn(2, 2, |x, y| {
        Rgb([(x * 65535) as u16, (y * 65535) as u16, 0])
    })
    .save(&tif)
    .unwrap();
    let t = read_image_rgb(&tif).unwrap();
    assert_eq!(
        t.data,
        [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn dots_layout_with_16bit_grey_tiff_and_grid_patches() {
    let d = tempfile::tempdir().unwrap();
    // A 600x300 16-bit grey TIFF with a grey dots PNG: padded to 600x600, resized to 512x512
    // (nearest multiple of 256), cut into 2x2 patches.
    let (w, h) = (600u32, 300u32);
    ImageBuffer::from_fn(w, h, |x, y| Luma([((x * 97 + y * 31) % 65536) as u16]))
        .save(d.path().join("slide.tif"))
        .unwrap();
    // Dots near the patch borders, on both sides: the padded square is 600 wide, patch
    // borders fall at 300 (in 600-pixel units).
    let dots = [
        (0u32, 0u32),
        (299, 10),
        (300, 10),
        (599, 299),
        (150, 298),
        (450, 150),
        (10, 299),
    ];
    ImageBuffer::from_fn(w, h, |x, y| {
        Luma([if dots.contains(&(x, y)) { 255u8 } else { 0 }])
    })
    .save(d.path().join("slide_dots.png"))
    .unwrap();
    let ds = Dataset::open(d.path(), &DataOptions::default()).unwrap();
    assert_eq!(
        ds.format(),
        Some(&Format::Dots {
            suffix: "_dots".into()
        })
    );
    assert_eq!(ds.preprocess(), Preprocess::Grid { patch: 256 });
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.images()[0].count, dots.len());
    check_invariants(&ds);
    // Each dot in exactly one patch: the one holding its pixel.
    let per_patch: Vec<usize> = (0..4).map(|i| ds.sample(i).points.len()).collect();
    assert_eq!(
        per_patch,
        [4, 3, 0, 0],
        "top row holds every dot (y < 300 of 600), x < 300 left"
    );
    // The bottom patches are the black padding (below their first row, which the resampling
    // filter mixes with the image's last row).
    let s = ds.sample(3);
    for c in 0..3 {
        let plane = &s.image[c * 256 * 256..(c + 1) * 256 * 256];
        assert!(plane[256..].iter().all(|&v| v == 0.0));
    }
    let top = ds.sample(1);
    assert!(top.image.iter().any(|&v| v > 0.0));
}

#[test]
fn points_csv_layout_header_optional_and_named_columns() {
    let d = tempfile::tempdir().unwrap();
    save_rgb(&d.path().join("a.png"), 200, 100, |x, y| {
        [x as u8, y as u8, 0]
    });
    std::fs::write(
        d.path().join("a.csv"),
        "y,x\n10,20\n\n# comment\n99.4, 199.2\n",
    )
    .unwrap();
    save_rgb(&d.path().join("b.jpg"), 64, 64, |_, _| [9, 9, 9]);
    std::fs::write(d.path().join("b.csv"), "1,2\n3,4\n5.5,6.5\n").unwrap();
    let ds = Dataset::open(d.path(), &DataOptions::default()).unwrap();
    assert_eq!(ds.format(), Some(&Format::PointsCsv));
    assert_eq!(counts(&ds), [("a".to_string(), 2), ("b".to_string(), 3)]);
    check_invariants(&ds);
    // a: 200x100 padded to 200x200, k = round(200/256) = 1, resized to 256: scale 1.28.
    let s = ds.sample(0);
    assert_eq!(s.name, "a#r0c0");
    let (x, y) = s.points[0];
    assert!(
        (x - 20.5 * 1.28).abs() < 1e-3 && (y - 10.5 * 1.28).abs() < 1e-3,
        "({x},{y})"
    );
    // Stats alone (layout pairing) find both.
    let scan = layout::scan(d.path(), None, None).unwrap();
    assert_eq!(scan.items.len(), 2);
    assert!(scan.problems.is_empty());
}

#[test]
fn rgba_dots_image_with_custom_suffix() {
    let d = tempfile::tempdir().unwrap();
    save_rgb(&d.path().join("x.png"), 40, 30, |_, _| [50, 60, 70]);
    ImageBuffer::from_fn(40, 30, |x, y| {
        if (x, y) == (3, 4) || (x, y) == (4, 4) {
            Rgba([250u8, 10, 10, 255])
        } else {
            Rgba([0, 0, 0, 0])
        }
    })
    .save(d.path().join("x-ann.png"))
    .unwrap();
    let opts = DataOptions {
        format: Some("dots:-ann".parse().unwrap()),
        preprocess: Some(Preprocess::AsIs),
        ..Default::default()
    };
    let ds = Dataset::open(d.path(), &opts).unwrap();
    // Touching dots are two cells.
    assert_eq!(ds.images()[0].count, 2);
    assert_eq!(ds.sample(0).points, [(3.5, 4.5), (4.5, 4.5)]);
    check_invariants(&ds);
}

#[test]
fn sigma_is_configurable_and_checked() {
    let narrow = Dataset::open(
        &fixtures("vgg"),
        &DataOptions {
            sigma: 1.0,
            ..Default::default()
        },
    )
    .unwrap();
    let wide = Dataset::open(
        &fixtures("vgg"),
        &DataOptions {
            sigma: 6.0,
            ..Default::default()
        },
    )
    .unwrap();
    let peak = |ds: &Dataset| ds.sample(1).density.iter().cloned().fold(0.0f32, f32::max);
    assert!(peak(&narrow) > 4.0 * peak(&wide));
    check_invariants(&wide);
    assert!(Dataset::open(
        &fixtures("vgg"),
        &DataOptions {
            sigma: -1.0,
            ..Default::default()
        }
    )
    .is_err());
}
