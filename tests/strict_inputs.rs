//! Damaged input is refused, never read as a plausible wrong answer: truncated JPEGs (images
//! and ADI annotations), CSV annotations that are not two finite numbers per row, files named
//! in other encodings than UTF-8.
use std::path::{Path, PathBuf};

use dcl::data::image_io::{decode, decode_bytes, parse_points_csv, DecodeLimits};
use dcl::data::{DataOptions, Dataset};
use dcl::Error;
use image::{ImageBuffer, Luma};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

const ADI_STEM: &str = "0-11900_GTEX-13QJC_Adipose-Subcutaneous.jpeg";

/// The offset of the first byte after the first start-of-scan segment of a JPEG.
fn scan_start(jpeg: &[u8]) -> usize {
    let sos = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .expect("a JPEG has a scan");
    let len = u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]) as usize;
    sos + 2 + len
}

fn open_err(dir: &Path, opts: &DataOptions) -> (String, String) {
    match Dataset::open(dir, opts) {
        Ok(_) => panic!("{} should not open", dir.display()),
        Err(Error::File { path, msg }) => (path.display().to_string(), msg),
        Err(e) => panic!("expected a file error, got {e}"),
    }
}

/// The real ADI JPEGs decode strictly to exactly the pixels the lenient decoder gives.
#[test]
fn strict_jpeg_decoding_keeps_valid_files_pixel_exact() {
    for sub in ["images", "annotations"] {
        let p = fixture(&format!("adi/{sub}/{ADI_STEM}"));
        let strict = decode(&p).unwrap();
        let lenient = image::open(&p).unwrap();
        assert_eq!(strict, lenient, "{}", p.display());
    }
    // grey and colour JPEGs written by the image crate
    let d = tempfile::tempdir().unwrap();
    let grey = d.path().join("g.jpg");
    ImageBuffer::from_fn(33, 17, |x, y| Luma([(x * 7 + y) as u8]))
        .save(&grey)
        .unwrap();
    assert_eq!(decode(&grey).unwrap(), image::open(&grey).unwrap());
}

/// A JPEG cut inside its scan is an error (the lenient decoder fills the rest with grey and
/// counts on), at every cut; so is an ADI annotation cut the same way, with or without
/// `--skip-bad` (which skips it with the file named).
#[test]
fn jpegs_truncated_in_their_scan_are_errors() {
    let img = std::fs::read(fixture(&format!("adi/images/{ADI_STEM}"))).unwrap();
    let start = scan_start(&img);
    let limits = DecodeLimits::default();
    for cut in [
        start + 1,
        start + 100,
        (start + img.len()) / 2,
        img.len() - 3,
    ] {
        let lenient = image::load_from_memory(&img[..cut]);
        assert!(
            lenient.is_ok(),
            "the lenient decoder accepts the cut at {cut}"
        );
        let e = decode_bytes(&img[..cut], &limits).unwrap_err();
        assert!(e.contains("corrupt or truncated"), "{cut}: {e}");
    }

    let d = tempfile::tempdir().unwrap();
    for sub in ["images", "annotations"] {
        std::fs::create_dir_all(d.path().join(sub)).unwrap();
        for stem in [ADI_STEM, "8500-22100_GTEX-11WQC_Adipose-Subcutaneous.jpeg"] {
            std::fs::copy(
                fixture(&format!("adi/{sub}/{stem}")),
                d.path().join(sub).join(stem),
            )
            .unwrap();
        }
    }
    let ann = d.path().join("annotations").join(ADI_STEM);
    let bytes = std::fs::read(&ann).unwrap();
    let cut = (scan_start(&bytes) + bytes.len()) / 2;
    std::fs::write(&ann, &bytes[..cut]).unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(
        file.ends_with(ADI_STEM) && file.contains("annotations"),
        "{file}"
    );
    assert!(msg.contains("truncated"), "{msg}");
    let ds = Dataset::open(
        d.path(),
        &DataOptions {
            skip_bad: true,
            ..DataOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ds.images().len(), 1);
    assert_eq!(ds.images()[0].count, 71);
    assert!(ds.skipped()[0].0.ends_with(ADI_STEM));
}

/// Headers declaring huge images are refused before their pixels are allocated.
#[test]
fn huge_declared_sizes_are_refused_by_the_limits() {
    // a PNG header declaring 100000 x 100000 RGB
    let mut png = Vec::new();
    ImageBuffer::from_fn(4, 4, |x, _| Luma([x as u8]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let ihdr = 16; // width at 16..20, height at 20..24, CRC after the 13 data bytes
    png[ihdr..ihdr + 4].copy_from_slice(&100_000u32.to_be_bytes());
    png[ihdr + 4..ihdr + 8].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = decode_bytes(&png, &DecodeLimits::default()).unwrap_err();
    assert!(e.contains("too large"), "{e}");
    let small = DecodeLimits {
        max_side: 2,
        max_bytes: 1 << 20,
    };
    let mut ok = Vec::new();
    ImageBuffer::from_fn(4, 4, |x, _| Luma([x as u8]))
        .write_to(&mut std::io::Cursor::new(&mut ok), image::ImageFormat::Png)
        .unwrap();
    assert!(decode_bytes(&ok, &small).unwrap_err().contains("too large"));
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The CSV cases of the reliability issue: a first row that is not numeric is no header unless
/// it names x and y; garbage, JSON and empty files are errors naming the line.
#[test]
fn points_csv_is_parsed_strictly() {
    let p = |t: &str| parse_points_csv(t, 40, 30);
    // a typo in the first row: not silently taken as a header (3 cells, not 2)
    let e = p("1O,20\n3,4\n5,6\n").unwrap_err();
    assert!(e.starts_with("line 1:") && e.contains("1O,20"), "{e}");
    for (text, want) in [
        ("", "empty annotation"),
        ("\n\n# nothing\n", "empty annotation"),
        ("garbage\n", "line 1:"),
        ("{\"points\": [[1, 2]]}\n", "line 1:"),
        ("a,b\n1,2\n", "line 1:"),
        ("x,y\n1,2\n3\n", "line 3: expected 2 fields"),
        ("1,2\n3,4,5\n", "line 2: expected x,y"),
        ("1,2,3\n", "line 1:"),
        ("x,y\n1,2\n1O,2\n", "line 3: '1O' is not a number"),
        ("1,2\ninf,1\n", "line 2: point (inf, 1) lies outside"),
        ("1,2\n39.5,1\n", "outside the 40x30 image"),
    ] {
        let e = p(text).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
    }
    // what stays valid: headers naming x and y among other columns, quotes, a byte-order
    // mark, CRLF, comments, and a header alone (an image without cells)
    assert_eq!(
        p("\u{feff}id,Y,X\r\n7,\"2\",1\r\n# c\r\n8,3,4.5\r\n").unwrap(),
        [(1.5, 2.5), (5.0, 3.5)]
    );
    assert_eq!(p("x,y\n").unwrap(), []);
    assert_eq!(p("1,2\n\n3,4\n").unwrap().len(), 2);
}

/// The same through a data set: the file and the line are named.
#[test]
fn csv_annotations_of_a_folder_are_checked() {
    let d = tempfile::tempdir().unwrap();
    ImageBuffer::from_fn(20, 10, |_, _| Luma([7u8]))
        .save(d.path().join("a.png"))
        .unwrap();
    for (text, want) in [
        ("1O,5\n3,4\n5,6\n", "line 1"),
        ("", "empty annotation"),
        ("[1, 2]", "line 1"),
    ] {
        std::fs::write(d.path().join("a.csv"), text).unwrap();
        let (file, msg) = open_err(d.path(), &DataOptions::default());
        assert!(
            file.ends_with("a.csv") && msg.contains(want),
            "{file}: {msg}"
        );
    }
}

/// A file name that is not UTF-8 is refused with the file named (its outputs and CSV rows
/// could not name it losslessly); `--skip-bad` skips it.
#[cfg(unix)]
#[test]
fn non_utf8_names_are_refused_clearly() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let save = |name: &std::ffi::OsStr| {
        ImageBuffer::from_fn(8, 8, |_, _| Luma([7u8]))
            .save_with_format(d.path().join(name), image::ImageFormat::Png)
            .unwrap();
    };
    save(std::ffi::OsStr::new("good.png"));
    std::fs::write(d.path().join("good.csv"), "1,2\n").unwrap();
    save(std::ffi::OsStr::from_bytes(b"bad\xff.png"));
    std::fs::write(
        d.path().join(std::ffi::OsStr::from_bytes(b"bad\xff.csv")),
        "1,2\n",
    )
    .unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(
        file.contains("bad") && msg.contains("UTF-8"),
        "{file}: {msg}"
    );
    let ds = Dataset::open(
        d.path(),
        &DataOptions {
            skip_bad: true,
            ..DataOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ds.images().len(), 1);
    assert!(!ds.skipped().is_empty());
}

/// An annotation that marks more than one pixel in four (here the image itself given as its
/// dots, or a CSV of every pixel) is refused: it is not a dot annotation.
#[test]
fn annotations_marking_most_pixels_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let img = ImageBuffer::from_fn(32, 32, |x, y| {
        image::Rgb([200u8, (x * 4) as u8, (y * 4) as u8])
    });
    img.save(d.path().join("001cell.png")).unwrap();
    let red = ImageBuffer::from_fn(32, 32, |_, _| image::Rgb([255u8, 0, 0]));
    red.save(d.path().join("001dots.png")).unwrap();
    let (file, msg) = open_err(d.path(), &DataOptions::default());
    assert!(
        file.ends_with("001dots.png") && msg.contains("not a dot annotation"),
        "{msg}"
    );
    let rows: String = (0..301)
        .map(|i| format!("{},{}\n", i % 40, i / 40))
        .collect();
    let e = parse_points_csv(&rows, 40, 30).unwrap_err();
    assert!(
        e.contains("line 301") && e.contains("not a dot annotation"),
        "{e}"
    );
}
