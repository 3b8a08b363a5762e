//! The synthetic set: deterministic, readable as VGG, one dot per cell, plausible statistics.
use dcl::data::{synthetic, DataOptions, Dataset, Format};

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synthetic::generate(a.path(), 3, 42, 64).unwrap();
    synthetic::generate(b.path(), 3, 42, 64).unwrap();
    synthetic::generate(c.path(), 3, 43, 64).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    let names: Vec<&str> = fa.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "001cell.png",
            "001dots.png",
            "002cell.png",
            "002dots.png",
            "003cell.png",
            "003dots.png"
        ]
    );
    assert_eq!(fa, fb, "same seed: byte-identical files");
    for (x, y) in fa.iter().zip(&fc) {
        assert_ne!(x.1, y.1, "{}: another seed gives other content", x.0);
    }
    // Image i does not depend on how many are generated.
    let d = tempfile::tempdir().unwrap();
    synthetic::generate(d.path(), 1, 42, 64).unwrap();
    assert_eq!(files(d.path())[..2], fa[..2]);
}

#[test]
fn written_set_reads_as_vgg_and_equals_the_in_memory_set() {
    let d = tempfile::tempdir().unwrap();
    synthetic::generate(d.path(), 3, 7, 64).unwrap();
    let disk = Dataset::open(d.path(), &DataOptions::default()).unwrap();
    assert_eq!(disk.format(), Some(&Format::Vgg));
    let mem = Dataset::synthetic(3, 7, 64, 3.0).unwrap();
    assert_eq!(disk.len(), 3);
    for i in 0..3 {
        let (a, b) = (disk.sample(i), mem.sample(i));
        assert_eq!(a.name, b.name);
        assert_eq!(a.image, b.image);
        assert_eq!(a.points, b.points);
        assert_eq!(a.density, b.density);
        assert_eq!(disk.images()[i].count, a.points.len());
    }
}

#[test]
fn one_dot_per_cell_and_vgg_like_statistics() {
    let mut counts = Vec::new();
    for i in 0..6 {
        let im = synthetic::render(3, i, 256);
        assert_eq!(im.rgb.len(), 3 * 256 * 256);
        let mut dots = im.dots.clone();
        dots.dedup();
        assert_eq!(dots.len(), im.dots.len(), "two cells on one pixel");
        assert!(
            im.dots
                .windows(2)
                .all(|w| (w[0].1, w[0].0) < (w[1].1, w[1].0)),
            "row-major order"
        );
        counts.push(im.dots.len());
        // Fluorescence-like: blue dominates, most pixels are dark background, cells are bright.
        let mean = |c: usize| {
            im.rgb
                .iter()
                .skip(c)
                .step_by(3)
                .map(|&v| v as f64)
                .sum::<f64>()
                / (256.0 * 256.0)
        };
        assert!(
            mean(2) > 2.0 * mean(1) && mean(1) >= mean(0),
            "channel means {} {} {}",
            mean(0),
            mean(1),
            mean(2)
        );
        let mut blue: Vec<u8> = im.rgb.iter().skip(2).step_by(3).copied().collect();
        blue.sort_unstable();
        let (p50, p99) = (blue[blue.len() / 2], blue[blue.len() * 99 / 100]);
        assert!(
            p50 < 90 && p99 > 120 && p99 > p50 + 60,
            "blue median {p50}, p99 {p99}"
        );
        // Cells are brighter at their dot than the image's median.
        let at_dots: f64 = im
            .dots
            .iter()
            .map(|&(x, y)| im.rgb[3 * (y * 256 + x) + 2] as f64)
            .sum::<f64>()
            / im.dots.len() as f64;
        assert!(
            at_dots > p50 as f64 + 30.0,
            "mean blue at dots {at_dots} vs median {p50}"
        );
    }
    assert!(
        counts.iter().all(|&n| (50..=300).contains(&n)),
        "{counts:?}"
    );
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() > 30,
        "counts vary: {counts:?}"
    );
}

#[test]
fn open_arg_gives_the_in_memory_set() {
    let ds = Dataset::open_arg("synthetic:4:9", &DataOptions::default()).unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.sample(0).width, 256);
    assert_eq!(ds.sample(2).name, "003cell");
    assert!(synthetic::check_size(8).is_err());
    assert!(synthetic::generate(std::path::Path::new("/nonexistent/x"), 0, 1, 64).is_err());
}

/// Whole-slide-sized mosaics (`dcl data synth --size N`, N > 4096) are tiled TIFFs of
/// independently rendered blocks with their cells in a points CSV; here with 256-pixel blocks
/// and a size that cuts the last ones.
#[test]
fn mosaics_are_tiled_tiffs_of_rendered_blocks_with_their_cells() {
    let d = tempfile::tempdir().unwrap();
    let (size, block) = (600usize, 256usize);
    let cells = dcl::data::synthetic_large::generate_blocks(d.path(), 1, 3, size, block).unwrap();
    let tif = d.path().join("001cell.tif");
    let img = dcl::data::image_io::decode(&tif).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (600, 600));
    // block (1, 2) is image index (0 * 3 + 2) * 3 + 1 of the seed, cut to 600 - 512 rows
    let b = dcl::data::synthetic::render(3, 7, block);
    for y in 0..(size - 2 * block) {
        for x in 0..block {
            let p = img.get_pixel((block + x) as u32, (2 * block + y) as u32).0;
            assert_eq!(p[..], b.rgb[3 * (y * block + x)..][..3], "({x},{y})");
        }
    }
    let csv = std::fs::read_to_string(d.path().join("001cell.csv")).unwrap();
    let pts = dcl::data::image_io::parse_points_csv(&csv, size, size).unwrap();
    assert_eq!(pts.len(), cells);
    assert!(cells > 500, "{cells}");
    // the streamed reader reads it too
    assert!(dcl::data::stream::probe(&tif).unwrap().streamable.is_ok());
}
